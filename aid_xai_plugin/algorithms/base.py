"""Base class of every AID-XAI algorithm: metadata, dependency checks, typed parameter helpers.

Algorithms stay thin: they read typed parameters here, call one core function with a `Progress`
adapter, and turn core errors into `QgsProcessingException` with the core's actionable message.
"""

import os

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingParameterString,
)
from qgis.PyQt.QtGui import QIcon

from ..core.dependencies import missing_packages_message
from ..core.errors import AidXaiError, Cancelled
from ..core.progress import Progress
from ..provider_paths import HELP_URL, ICON_PATH

DEVICE_CHOICES = ("auto", "cpu", "cuda")


class AidXaiAlgorithm(QgsProcessingAlgorithm):
    """Subclasses set the class attributes and implement `initAlgorithm` and `process`."""

    algorithm_id = ""
    display_name = ""
    group_id = ""
    group_name = ""
    help_text = ""
    required_imports = ("torch", "torchvision", "cv2")

    def createInstance(self):  # noqa: N802 (QGIS's name)
        return type(self)()

    def name(self):
        return self.algorithm_id

    def displayName(self):  # noqa: N802
        return self.display_name

    def group(self):
        return self.group_name

    def groupId(self):  # noqa: N802
        return self.group_id

    def shortHelpString(self):  # noqa: N802
        return self.help_text

    def helpUrl(self):  # noqa: N802
        return f"{HELP_URL}#{self.algorithm_id}"

    def icon(self):
        return QIcon(ICON_PATH)

    def canExecute(self):  # noqa: N802
        message = missing_packages_message(self.required_imports)
        return (message is None, message or "")

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        message = missing_packages_message(self.required_imports)
        if message:
            raise QgsProcessingException(message)
        progress = Progress(feedback.setProgress, feedback.isCanceled, feedback.pushInfo)
        try:
            return self.process(parameters, context, feedback, progress)
        except AidXaiError as error:
            raise QgsProcessingException(str(error)) from error
        except Cancelled as cancelled:
            raise QgsProcessingException(f"{self.display_name} was cancelled; no output was written.") from cancelled

    def process(self, parameters, context, feedback, progress):
        raise NotImplementedError

    # --- typed parameter helpers: each returns a usable value or raises with a clear message ---

    def add_device_parameter(self):
        self.addParameter(
            QgsProcessingParameterString(
                "DEVICE", "Device: auto (CUDA when available), cpu or cuda", defaultValue="auto"
            )
        )

    def device(self, parameters, context):
        value = (self.parameterAsString(parameters, "DEVICE", context) or "auto").strip().lower()
        if value not in DEVICE_CHOICES:
            raise QgsProcessingException(f"DEVICE must be one of {', '.join(DEVICE_CHOICES)}; got '{value}'.")
        return value

    def raster_layer(self, parameters, name, context):
        layer = self.parameterAsRasterLayer(parameters, name, context)
        if layer is None or not layer.isValid():
            raise QgsProcessingException(
                f"{name}: could not open '{parameters.get(name)}' as a raster layer; give a GDAL-readable raster file or a loaded raster layer."
            )
        if layer.providerType() != "gdal":
            raise QgsProcessingException(
                f"{name}: layer '{layer.name()}' comes from the '{layer.providerType()}' provider; AID-XAI reads rasters through GDAL (files, VRTs, /vsi paths). Export it to GeoTIFF first."
            )
        return layer

    def existing_file(self, parameters, name, context, what):
        path = self.parameterAsFile(parameters, name, context)
        if not path or not os.path.isfile(path):
            raise QgsProcessingException(f"{name}: the {what} '{path}' does not exist; give the path of an existing file.")
        return path

    def existing_folder(self, parameters, name, context, what):
        path = self.parameterAsFile(parameters, name, context)
        if not path or not os.path.isdir(path):
            raise QgsProcessingException(f"{name}: the {what} '{path}' is not an existing folder.")
        return path

    def optional_output(self, parameters, name, context, layer=False):
        """Path of an optional file/layer output, or None when the user skipped it.

        An output left unset (as a model step's or a qgis_process call's unnamed outputs are) goes to
        a temporary file when the parameter is created by default."""
        value = parameters.get(name)
        if value is None:
            if not self.parameterDefinition(name).createByDefault():
                return None
            parameters = dict(parameters, **{name: "TEMPORARY_OUTPUT"})
        elif value == "" or (hasattr(value, "sink") and not value.sink.staticValue()):
            return None
        path = (
            self.parameterAsOutputLayer(parameters, name, context)
            if layer
            else self.parameterAsFileOutput(parameters, name, context)
        )
        return path or None
