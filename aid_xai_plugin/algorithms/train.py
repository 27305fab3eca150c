"""aid_xai:train — train the source document's Net on a folder-per-class image set."""

from qgis.core import (
    QgsProcessingOutputNumber,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
)

from ..core.ml.training import MIN_INPUT_SIZE, TrainingConfig, train_model
from ..qgis_compat import NUMBER_DOUBLE, NUMBER_INTEGER
from .base import AidXaiAlgorithm


class TrainAlgorithm(AidXaiAlgorithm):
    algorithm_id = "train"
    display_name = "Train scene classifier"
    group_id = "model"
    group_name = "Model"
    help_text = (
        "Trains the scene classifier of the source document (Net: three convolution + max-pool stages and a "
        "256-128-classes head; 29.6 M parameters at 256×256 px and 30 classes) on a labelled image folder "
        "and writes an AID-XAI model file (.aidx.pt) that Classify, Explain and Evaluate read.\n\n"
        "DATASET: one sub-folder per class named after the class (AID's layout), holding PNG/JPEG/TIFF images. "
        "Images are resized to INPUT_SIZE exactly as Classify resizes raster tiles. VALIDATION_FRACTION of each "
        "class is held out (stratified, chosen by SEED) to report accuracy and macro-F1 after every epoch. "
        "Training uses Adam at LEARNING_RATE; AUGMENT adds random flips and 90° rotations. The model file "
        "records class names, input size, per-band normalisation (computed on the training images) and "
        "provenance (dataset, epochs, seed, scores, date).\n\n"
        "The model file is written when training ends, so a cancelled run leaves none; with CHECKPOINTS it is "
        "also rewritten after each epoch, so stopping keeps the last finished epoch. METRICS (optional) gets "
        "a JSON summary and a CSV of per-epoch losses and scores beside it.\n\n"
        "Time: at 256 px the source's 8,000-image AID run needs a GPU; on a CPU try 64–128 px first."
    )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterFile("DATASET", "Image folder (one sub-folder per class)", behavior=QgsProcessingParameterFile.Folder))
        self.addParameter(QgsProcessingParameterNumber("INPUT_SIZE", "Model input size (pixels)", NUMBER_INTEGER, 256, minValue=MIN_INPUT_SIZE, maxValue=2048))
        self.addParameter(QgsProcessingParameterNumber("VALIDATION_FRACTION", "Validation fraction (per class)", NUMBER_DOUBLE, 0.10, minValue=0.01, maxValue=0.9))
        self.addParameter(QgsProcessingParameterNumber("EPOCHS", "Epochs", NUMBER_INTEGER, 10, minValue=1))
        self.addParameter(QgsProcessingParameterNumber("BATCH_SIZE", "Batch size", NUMBER_INTEGER, 32, minValue=1))
        self.addParameter(QgsProcessingParameterNumber("LEARNING_RATE", "Learning rate (Adam)", NUMBER_DOUBLE, 0.001, minValue=1e-7, maxValue=1.0))
        self.addParameter(QgsProcessingParameterNumber("SEED", "Random seed", NUMBER_INTEGER, 0))
        self.add_device_parameter()
        self.addParameter(QgsProcessingParameterBoolean("AUGMENT", "Augment with random flips and 90° rotations", False))
        self.addParameter(QgsProcessingParameterBoolean("CHECKPOINTS", "Save the model after every epoch", False))
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT", "Model file", fileFilter="AID-XAI model (*.aidx.pt)"))
        self.addParameter(QgsProcessingParameterFileDestination("METRICS", "Training metrics (JSON)", fileFilter="JSON (*.json)", optional=True, createByDefault=False))
        self.addOutput(QgsProcessingOutputNumber("ACCURACY", "Validation accuracy"))
        self.addOutput(QgsProcessingOutputNumber("MACRO_F1", "Validation macro-F1"))

    def process(self, parameters, context, feedback, progress):
        config = TrainingConfig(
            dataset=self.existing_folder(parameters, "DATASET", context, "image folder"),
            output=self.parameterAsFileOutput(parameters, "OUTPUT", context),
            input_size=self.parameterAsInt(parameters, "INPUT_SIZE", context),
            validation_fraction=self.parameterAsDouble(parameters, "VALIDATION_FRACTION", context),
            epochs=self.parameterAsInt(parameters, "EPOCHS", context),
            batch_size=self.parameterAsInt(parameters, "BATCH_SIZE", context),
            learning_rate=self.parameterAsDouble(parameters, "LEARNING_RATE", context),
            seed=self.parameterAsInt(parameters, "SEED", context),
            device=self.device(parameters, context),
            augment=self.parameterAsBoolean(parameters, "AUGMENT", context),
            checkpoints=self.parameterAsBoolean(parameters, "CHECKPOINTS", context),
            metrics_path=self.optional_output(parameters, "METRICS", context),
        )
        metrics = train_model(config, progress)
        return {"OUTPUT": config.output, "METRICS": config.metrics_path, "ACCURACY": metrics["accuracy"], "MACRO_F1": metrics["macro_f1"]}
