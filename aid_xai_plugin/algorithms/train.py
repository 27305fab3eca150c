"""aid_xai:train — train a scene classifier (the source's Net or a torchvision backbone) on a folder-per-class image set."""

from qgis.core import (
    QgsProcessingOutputNumber,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
)

from ..core.ml.training import ARCHITECTURES, MIN_INPUT_SIZE, OPTIMIZERS, SCHEDULES, TrainingConfig, train_model
from ..qgis_compat import FILE_BEHAVIOR_FOLDER, NUMBER_DOUBLE, NUMBER_INTEGER, with_advanced_flag
from .base import AidXaiAlgorithm, choice_parameter


class TrainAlgorithm(AidXaiAlgorithm):
    algorithm_id = "train"
    display_name = "Train scene classifier"
    required_imports = AidXaiAlgorithm.required_imports + ("sklearn",)  # the metrics
    group_id = "model"
    group_name = "Model"
    help_text = (
        "Trains a scene classifier on a labelled image folder and writes an AID-XAI model file (.aidx.pt) "
        "that Classify, Explain and Evaluate read.\n\n"
        "Architecture: Net (the source document's: three convolution + max-pool stages and a 256-128-classes "
        "head; 29.6 M parameters at 256×256 px and 30 classes; Explain's fast engine analyses it) or "
        "torchvision's resnet18, resnet50, mobilenet_v3_large, efficientnet_b0, convnext_tiny, for any "
        "number of bands (the first convolution takes the bands). They start from random weights, or from "
        "\"Initial weights\": a weights file you downloaded (e.g. torchvision's ImageNet weights; read as "
        "plain tensors, never code; the plugin never downloads). With other than 3 bands, bands beyond the "
        "third start from the mean of the RGB filters.\n\n"
        "Image folder: one sub-folder per class named after the class (AID's layout), holding PNG/JPEG/TIFF images. "
        "Images are resized to the model input size exactly as Classify resizes raster tiles. The validation fraction of each "
        "class is held out (stratified, chosen by the random seed) to report accuracy and macro-F1 after every epoch. "
        "Recipe: optimizer (adam, adamw, or sgd with Nesterov momentum), learning-rate schedule (constant, or "
        "cosine decay to zero, after an optional linear warm-up), weight decay and label smoothing; \"Augment\" "
        "adds random flips and 90° rotations; \"Balanced sampling\" draws every class equally often; the backbone "
        "can stay frozen for the first epochs (with initial weights); early stopping ends the run after that "
        "many epochs without a better validation macro-F1.\n\n"
        "The model file holds the best epoch by validation macro-F1, and records class names, input size, "
        "per-band normalisation (computed on the training images) and provenance (dataset, recipe, best epoch, "
        "scores, date). It is written when training ends, so a cancelled run leaves none; with \"Save the "
        "model after every epoch\" it is also rewritten after each epoch with a hidden training state beside "
        "it, and \"Resume\" continues such a run where it stopped (same settings; more epochs allowed). "
        "Training metrics (optional) gets a JSON summary and a CSV of per-epoch losses and scores beside it.\n\n"
        "Time: see the README's table of recipes on AID (accuracy per CPU time)."
    )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterFile("DATASET", "Image folder (one sub-folder per class)", behavior=FILE_BEHAVIOR_FOLDER))
        self.addParameter(choice_parameter("ARCHITECTURE", "Architecture", ARCHITECTURES, "Net"))
        self.addParameter(
            QgsProcessingParameterFile("INIT_WEIGHTS", "Initial weights (a downloaded .pth state dict; not set: random)", fileFilter="PyTorch weights (*.pth *.pt);;All files (*.*)", optional=True)
        )
        self.addParameter(QgsProcessingParameterNumber("INPUT_SIZE", "Model input size (pixels)", NUMBER_INTEGER, 256, minValue=MIN_INPUT_SIZE, maxValue=2048))
        self.addParameter(QgsProcessingParameterNumber("VALIDATION_FRACTION", "Validation fraction (per class)", NUMBER_DOUBLE, 0.10, minValue=0.01, maxValue=0.9))
        self.addParameter(QgsProcessingParameterNumber("EPOCHS", "Epochs", NUMBER_INTEGER, 10, minValue=1))
        self.addParameter(QgsProcessingParameterNumber("BATCH_SIZE", "Batch size", NUMBER_INTEGER, 32, minValue=1))
        self.addParameter(QgsProcessingParameterNumber("LEARNING_RATE", "Learning rate", NUMBER_DOUBLE, 0.001, minValue=1e-7, maxValue=1.0))
        self.addParameter(choice_parameter("OPTIMIZER", "Optimizer", OPTIMIZERS, "adam"))
        self.addParameter(choice_parameter("SCHEDULE", "Learning-rate schedule", SCHEDULES, "constant"))
        self.addParameter(QgsProcessingParameterBoolean("AUGMENT", "Augment with random flips and 90° rotations", False))
        self.addParameter(QgsProcessingParameterBoolean("BALANCED", "Balanced sampling (every class equally often)", False))
        self.add_device_parameter()
        self.addParameter(QgsProcessingParameterBoolean("CHECKPOINTS", "Save the model after every epoch", False))
        self.addParameter(QgsProcessingParameterBoolean("RESUME", "Resume the interrupted run that wrote this model file", False))
        for parameter in (
            QgsProcessingParameterNumber("WARMUP_EPOCHS", "Warm-up epochs (linear)", NUMBER_DOUBLE, 0.0, minValue=0.0),
            QgsProcessingParameterNumber("WEIGHT_DECAY", "Weight decay", NUMBER_DOUBLE, 0.0, minValue=0.0),
            QgsProcessingParameterNumber("LABEL_SMOOTHING", "Label smoothing", NUMBER_DOUBLE, 0.0, minValue=0.0, maxValue=0.99),
            QgsProcessingParameterNumber("FREEZE_EPOCHS", "Epochs with the backbone frozen (head only)", NUMBER_INTEGER, 0, minValue=0),
            QgsProcessingParameterNumber("EARLY_STOPPING", "Stop after this many epochs without a better macro-F1 (0: never)", NUMBER_INTEGER, 0, minValue=0),
            QgsProcessingParameterNumber("SEED", "Random seed", NUMBER_INTEGER, 0),
        ):
            self.addParameter(with_advanced_flag(parameter))
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT", "Model file", fileFilter="AID-XAI model (*.aidx.pt)"))
        self.addParameter(QgsProcessingParameterFileDestination("METRICS", "Training metrics (JSON)", fileFilter="JSON (*.json)", optional=True, createByDefault=False))
        self.addOutput(QgsProcessingOutputNumber("ACCURACY", "Validation accuracy"))
        self.addOutput(QgsProcessingOutputNumber("MACRO_F1", "Validation macro-F1"))

    def process(self, parameters, context, feedback, progress):
        init_weights = self.parameterAsFile(parameters, "INIT_WEIGHTS", context)
        config = TrainingConfig(
            dataset=self.existing_folder(parameters, "DATASET", context, "image folder"),
            output=self.parameterAsFileOutput(parameters, "OUTPUT", context),
            architecture=self.choice(parameters, "ARCHITECTURE", context),
            init_weights=self.existing_file(parameters, "INIT_WEIGHTS", context, "initial weights file") if init_weights else None,
            input_size=self.parameterAsInt(parameters, "INPUT_SIZE", context),
            validation_fraction=self.parameterAsDouble(parameters, "VALIDATION_FRACTION", context),
            epochs=self.parameterAsInt(parameters, "EPOCHS", context),
            batch_size=self.parameterAsInt(parameters, "BATCH_SIZE", context),
            learning_rate=self.parameterAsDouble(parameters, "LEARNING_RATE", context),
            optimizer=self.choice(parameters, "OPTIMIZER", context),
            schedule=self.choice(parameters, "SCHEDULE", context),
            warmup_epochs=self.parameterAsDouble(parameters, "WARMUP_EPOCHS", context),
            weight_decay=self.parameterAsDouble(parameters, "WEIGHT_DECAY", context),
            label_smoothing=self.parameterAsDouble(parameters, "LABEL_SMOOTHING", context),
            freeze_epochs=self.parameterAsInt(parameters, "FREEZE_EPOCHS", context),
            balanced_sampling=self.parameterAsBoolean(parameters, "BALANCED", context),
            early_stopping=self.parameterAsInt(parameters, "EARLY_STOPPING", context),
            seed=self.parameterAsInt(parameters, "SEED", context),
            device=self.device(parameters, context),
            augment=self.parameterAsBoolean(parameters, "AUGMENT", context),
            checkpoints=self.parameterAsBoolean(parameters, "CHECKPOINTS", context),
            resume=self.parameterAsBoolean(parameters, "RESUME", context),
            metrics_path=self.optional_output(parameters, "METRICS", context),
        )
        metrics = train_model(config, progress)
        return {"OUTPUT": config.output, "METRICS": config.metrics_path, "ACCURACY": metrics["accuracy"], "MACRO_F1": metrics["macro_f1"]}
