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
        "Writes an AID-XAI model file as ONNX (opset 17, dynamic batch axis): a scene classifier taking "
        "(batch, bands, size, size) images and returning (batch, classes) logits, which onnxruntime or "
        "any ONNX runtime can run and Import model reads back. Its metadata uses the keys Deepness "
        "reads, each value JSON as Deepness parses it: class_names ({\"0\": name, …}), "
        "standardization_mean and standardization_std (per band; the model expects (value/255 − "
        "mean)/std for 8-bit imagery, i.e. values scaled to 0..1 first), tile_size and tiles_size (the "
        "input size in pixels), and the band order (aid_xai_bands). Deepness and GeoDeep can't use it "
        "as a classifier: neither has a scene-classifier model type, so no model_type is written.\n\n"
        "Every export is checked on a seeded random batch: onnxruntime's logits may be at most 4× as "
        "far from the model's logits computed in float64 as torch's own float32 logits are, or nothing "
        "is written. The largest |logit difference| between onnxruntime and torch is returned."
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
