"""aid_xai:evaluate — score a model file on a labelled image folder and write an HTML report."""

from qgis.core import (
    QgsProcessingOutputNumber,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
)

from ..core.common.atomic import check_writable
from ..core.ml.evaluation import evaluate_folder
from ..core.reports.evaluation_report import write_evaluation_report
from ..qgis_compat import FILE_BEHAVIOR_FILE, FILE_BEHAVIOR_FOLDER, NUMBER_INTEGER
from .base import AidXaiAlgorithm


class EvaluateAlgorithm(AidXaiAlgorithm):
    algorithm_id = "evaluate"
    display_name = "Evaluate scene classifier"
    required_imports = AidXaiAlgorithm.required_imports + ("sklearn",)  # the metrics
    group_id = "model"
    group_name = "Model"
    help_text = (
        "Classifies every image of a labelled folder (one sub-folder per class, named like the model's "
        "classes; a subset of the classes is fine) with the model, resizing exactly as training and Classify "
        "do, and reports overall accuracy, macro-F1 and per-class precision, recall and F1.\n\n"
        "The evaluation report gets a row-normalised confusion matrix (also written as <name>_confusion.png "
        "beside it); the per-class table is written as CSV to \"Per-class scores\", or beside the report when that is "
        "skipped. Use images the model was not trained on."
    )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterFile("MODEL", "Model file", behavior=FILE_BEHAVIOR_FILE, fileFilter="AID-XAI model (*.aidx.pt)"))
        self.addParameter(QgsProcessingParameterFile("DATASET", "Image folder (one sub-folder per class)", behavior=FILE_BEHAVIOR_FOLDER))
        self.add_device_parameter()
        self.addParameter(QgsProcessingParameterNumber("BATCH_SIZE", "Batch size", NUMBER_INTEGER, 64, minValue=1))
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT_HTML", "Evaluation report", fileFilter="HTML files (*.html)"))
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT_CSV", "Per-class scores (CSV)", fileFilter="CSV files (*.csv)", optional=True, createByDefault=False))
        self.addOutput(QgsProcessingOutputNumber("ACCURACY", "Overall accuracy"))
        self.addOutput(QgsProcessingOutputNumber("MACRO_F1", "Macro-F1"))

    def process(self, parameters, context, feedback, progress):
        model = self.existing_file(parameters, "MODEL", context, "model file")
        folder = self.existing_folder(parameters, "DATASET", context, "image folder")
        html_path = self.parameterAsFileOutput(parameters, "OUTPUT_HTML", context)
        csv_path = self.optional_output(parameters, "OUTPUT_CSV", context)
        check_writable(html_path, "report")
        if csv_path:
            check_writable(csv_path, "CSV")
        results = evaluate_folder(
            model, folder, device=self.device(parameters, context), batch_size=self.parameterAsInt(parameters, "BATCH_SIZE", context), progress=progress
        )
        for entry in results["per_class"]:
            feedback.pushInfo(f"{entry['class_name']}: precision {entry['precision']:.3f}, recall {entry['recall']:.3f}, F1 {entry['f1']:.3f}, support {entry['support']}")
        feedback.pushInfo(f"{results['n_images']} images: accuracy {results['accuracy']:.4f}, macro-F1 {results['macro_f1']:.4f}")
        written = write_evaluation_report(html_path, results, csv_path)
        return {"OUTPUT_HTML": written["html"], "OUTPUT_CSV": written["csv"], "ACCURACY": results["accuracy"], "MACRO_F1": results["macro_f1"]}
