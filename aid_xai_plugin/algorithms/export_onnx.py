"""aid_xai:export_onnx — any AID-XAI model as an ONNX file other tools can run."""

from qgis.core import QgsProcessingOutputNumber, QgsProcessingParameterFile, QgsProcessingParameterFileDestination

from .base import AidXaiAlgorithm
from .tiling_parameters import MODEL_FILTER


class ExportOnnxAlgorithm(AidXaiAlgorithm):
    algorithm_id = "export_onnx"
    display_name = "Export model to ONNX"
    group_id = "model"
    group_name = "Model"
    required_imports = ("torch", "torchvision", "onnx", "onnxruntime")
    help_text = (
        "Writes an AID-XAI model file as ONNX (opset 17, dynamic batch axis), so Deepness, GeoDeep, "
        "onnxruntime or any ONNX runtime can run it. The file carries Deepness-style metadata: "
        "class_names ({index: name}), standardization_mean and standardization_std (per band; the "
        "model expects (value/255 − mean)/std for 8-bit imagery, i.e. values scaled to 0..1 first), "
        "tiles_size (the input size in pixels) and the band order.\n\n"
        "Every export is checked: onnxruntime's logits on a random batch must equal the torch model's "
        "within 1e-5, or nothing is written. The largest difference is returned."
    )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterFile("MODEL", "Model file", fileFilter=MODEL_FILTER))
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT", "ONNX file", fileFilter="ONNX model (*.onnx)"))
        self.addOutput(QgsProcessingOutputNumber("MAX_DIFFERENCE", "Largest |logit difference| between ONNX and torch"))

    def process(self, parameters, context, feedback, progress):
        from ..core.ml.interchange import export_onnx

        model = self.existing_file(parameters, "MODEL", context, "model file")
        output = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        difference = export_onnx(model, output, progress)
        return {"OUTPUT": output, "MAX_DIFFERENCE": difference}
