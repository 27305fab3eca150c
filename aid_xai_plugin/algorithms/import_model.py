"""aid_xai:import_model — an ONNX or TorchScript classifier as an AID-XAI model file."""

from qgis.core import (
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from ..core.common.errors import AidXaiError
from ..core.geo.raster import parse_bands
from ..qgis_compat import NUMBER_INTEGER
from .base import AidXaiAlgorithm


class ImportModelAlgorithm(AidXaiAlgorithm):
    algorithm_id = "import_model"
    display_name = "Import ONNX or TorchScript model"
    group_id = "model"
    group_name = "Model"
    required_imports = ("torch", "onnx", "onnxruntime")
    help_text = (
        "Makes a scene classifier trained elsewhere usable by Classify, Explain and Evaluate: an ONNX "
        "file (run with onnxruntime) or a TorchScript file (torch.jit.save), taking (batch, bands, "
        "size, size) images and returning one score per class, (batch, classes). The result is a "
        "self-describing AID-XAI model file.\n\n"
        "Class names, input size and normalisation come from the ONNX file's metadata when it has them "
        "(Deepness's keys class_names, tile_size, standardization_mean and standardization_std, and "
        "tiles_size as Deepness's documentation and earlier AID-XAI exports name it; JSON values or "
        "the plain text earlier exports wrote), or from "
        "the parameters here, which win: class names comma-separated or as a file (one per line, a "
        "CSV's first column, or JSON). The model is fed values scaled to 0..1 (8-bit imagery / 255), "
        "then (value − mean)/std per band; not set, mean 0 and std 1 (the graph takes 0..1 as it is).\n\n"
        "Safety: an ONNX file describes tensor operators that onnxruntime interprets, and a TorchScript "
        "file holds TorchScript, which runs in torch's own interpreter without access to Python "
        "modules or files; neither runs arbitrary Python when loaded. The import checks the model on "
        "a batch of two images: a fixed batch size, a wrong output shape or an operator onnxruntime "
        "doesn't know end in a clear message. Explain's fast engine can't analyse imported graphs: "
        "it evaluates them in full (the exact engine)."
    )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterFile("INPUT", "ONNX or TorchScript file", fileFilter="Models (*.onnx *.pt *.pth *.ts);;All files (*.*)"))
        self.addParameter(QgsProcessingParameterString("CLASS_NAMES", "Class names, comma-separated (not set: from the file's metadata)", optional=True))
        self.addParameter(QgsProcessingParameterFile("CLASS_NAMES_FILE", "…or a file of class names (text, CSV or JSON)", optional=True))
        self.addParameter(QgsProcessingParameterNumber("INPUT_SIZE", "Input size in pixels (not set: from the graph or metadata)", NUMBER_INTEGER, None, optional=True, minValue=1))
        self.addParameter(QgsProcessingParameterString("BANDS", "Raster bands in model order, e.g. 1,2,3 (not set: 1, 2, …)", optional=True))
        self.addParameter(QgsProcessingParameterString("MEAN", "Per-band mean on the 0..1 scale (not set: metadata, or 0)", optional=True))
        self.addParameter(QgsProcessingParameterString("STD", "Per-band std on the 0..1 scale (not set: metadata, or 1)", optional=True))
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT", "AID-XAI model file", fileFilter="AID-XAI model (*.aidx.pt)"))

    def process(self, parameters, context, feedback, progress):
        from ..core.ml.interchange import float_list, import_model, parse_class_names, read_class_names_file

        source = self.existing_file(parameters, "INPUT", context, "model to import")
        names = parse_class_names(self.parameterAsString(parameters, "CLASS_NAMES", context))
        names_file = self.parameterAsFile(parameters, "CLASS_NAMES_FILE", context)
        if names and names_file:
            raise AidXaiError("Give the class names either as text or as a file, not both.")
        if names_file:
            names = read_class_names_file(names_file)
        bands_text = self.parameterAsString(parameters, "BANDS", context)
        mean_text, std_text = (self.parameterAsString(parameters, name, context) for name in ("MEAN", "STD"))
        output = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        import_model(
            source,
            output,
            class_names=names,
            input_size=self.parameterAsInt(parameters, "INPUT_SIZE", context) or 0,
            bands=parse_bands(bands_text, []) if bands_text else None,
            mean=float_list(mean_text, "MEAN") if mean_text else None,
            std=float_list(std_text, "STD") if std_text else None,
            progress=progress,
        )
        return {"OUTPUT": output}
