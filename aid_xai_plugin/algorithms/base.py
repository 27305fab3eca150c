"""Base class of every AID-XAI algorithm: metadata, dependency checks, typed parameter helpers.

Algorithms stay thin: they read typed parameters here, call one core function with a `Progress`
adapter, and turn core errors into `QgsProcessingException` with the core's actionable message.
"""

import os

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingUtils,
    QgsProcessingException,
    QgsProcessingParameterEnum,
    QgsProcessingParameterRasterLayer,
    QgsRasterLayer,
)
from qgis.PyQt.QtGui import QIcon

from ..core.common.dependencies import missing_packages_message
from ..core.common.errors import AidXaiError, Cancelled
from ..core.common.failures import unexpected_error_message, write_failure_message
from ..core.common.progress import Progress
from ..core.common.gdal_context import collected_gdal_messages
from ..core.geo.remote import is_network_path, network_hint, network_reading
from ..core.ml.model_source import is_model_url
from ..provider_paths import HELP_URL, ICON_PATH

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def choice_parameter(name, description, choices, default, optional=False):
    """A drop-down whose values are the choices' own words (static strings), so the Toolbox shows a
    list while `qgis_process run … -- ENGINE=fast` and saved models keep working with the word."""
    parameter = QgsProcessingParameterEnum(name, description, options=list(choices), defaultValue=default, optional=optional)
    parameter.setUsesStaticStrings(True)
    return parameter


def open_raster_output(context, path):
    """Open a written raster output as a raster in the context's layer store. A model then finds it
    there when it hands this step's outputs to the next steps, where QGIS 3.22 would otherwise try
    the path as a vector first and log "[OGR] Cannot open …/OUTPUT.tif"."""
    QgsProcessingUtils.mapLayerFromString(path, context, True, QgsProcessingUtils.LayerHint.Raster)


def network_raster_layer(text, context):
    """A raster layer for `text`, a raster on the network (/vsicurl/https://…, /vsis3/…), kept in the
    context's temporary layer store under that text as its name, so QGIS's own look-ups of the parameter
    find it; None if GDAL cannot open it. QGIS 3.22 loads only files that exist on disk from text."""
    layer = QgsProcessingUtils.mapLayerFromString(text, context, False, QgsProcessingUtils.LayerHint.Raster)
    if layer is not None:
        return layer
    with network_reading(text), collected_gdal_messages():  # GDAL's messages go into the plugin's one, not raw to the log
        layer = QgsRasterLayer(text, text, "gdal")
    if not layer.isValid():
        return None
    context.temporaryLayerStore().addMapLayer(layer)
    return layer


def _network_raster_parameters(algorithm, parameters):
    """{name: text} of the raster layer parameters given as a raster on the network."""
    found = {}
    for definition in algorithm.parameterDefinitions():
        value = parameters.get(definition.name())
        if definition.type() == QgsProcessingParameterRasterLayer.typeName() and isinstance(value, str) and is_network_path(value):
            found[definition.name()] = value
    return found


def _modified(path):
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


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

    def checkParameterValues(self, parameters, context):  # noqa: N802
        """QGIS's checks, after a raster on the network given as text is opened (so an unreachable URL
        is named before any work, and QGIS's check of the parameter finds the layer)."""
        for name, text in _network_raster_parameters(self, parameters).items():
            if network_raster_layer(text, context) is None:
                return False, f"{name}: could not open '{text}': the server did not answer or has no raster there; {network_hint(text)}."
        return super().checkParameterValues(parameters, context)

    def canExecute(self):  # noqa: N802
        message = missing_packages_message(self.required_imports)
        return (message is None, message or "")

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        message = missing_packages_message(self.required_imports)
        if message:
            raise QgsProcessingException(message)
        progress = Progress(feedback.setProgress, feedback.isCanceled, feedback.pushInfo)
        outputs_before = self._output_files(parameters)
        try:
            # GDAL messages of this thread (also those of QGIS loading the input layer) are collected, not
            # printed raw: a failure's message carries what matters, a success logs them as GDAL warnings
            with collected_gdal_messages() as gdal_messages:
                result = self.process(parameters, context, feedback, progress)
            for message in list(dict.fromkeys(gdal_messages.errors + gdal_messages.warnings))[:10]:
                feedback.pushInfo(f"GDAL reported: {message}")
            return result
        except AidXaiError as error:
            raise QgsProcessingException(str(error)) from error
        except Cancelled as cancelled:
            raise QgsProcessingException(f"{self.display_name} was cancelled; no output was written.") from cancelled
        except QgsProcessingException:
            raise
        except OSError as error:  # a file the core did not wrap (e.g. a style sidecar): name it and the fix
            raise QgsProcessingException(write_failure_message(getattr(error, "filename", None) or "output", error)) from error
        except Exception as error:  # noqa: BLE001 - last resort: one line for the user, the traceback in the debug log
            import traceback

            feedback.pushDebugInfo("".join(traceback.format_exception(type(error), error, error.__traceback__)))
            written = [path for path, stamp in outputs_before.items() if _modified(path) not in (None, stamp)]
            raise QgsProcessingException(unexpected_error_message(error, self.display_name, written)) from error

    def _output_files(self, parameters):
        """{path: modification time or None} of the named file outputs (temporary ones are new names)."""
        paths = {}
        for definition in self.destinationParameterDefinitions():
            value = parameters.get(definition.name())
            value = value.sink.staticValue() if hasattr(value, "sink") else value
            if isinstance(value, str) and value and value != "TEMPORARY_OUTPUT" and not value.startswith(("memory:", "ogr:")):
                paths[value] = _modified(value)
        return paths

    def process(self, parameters, context, feedback, progress):
        raise NotImplementedError

    # --- typed parameter helpers: each returns a usable value or raises with a clear message ---

    def add_device_parameter(self):
        self.addParameter(choice_parameter("DEVICE", "Device (auto: CUDA when available)", DEVICE_CHOICES, "auto"))

    def device(self, parameters, context):
        return self.choice(parameters, "DEVICE", context)

    def choice(self, parameters, name, context):
        """The chosen word of a `choice_parameter`; anything else names the valid words."""
        options = self.parameterDefinition(name).options()
        given = parameters.get(name)
        value = self.parameterAsEnumString(parameters, name, context)  # falls back to the default silently
        if (isinstance(given, str) and given not in ("", value)) or value not in options:
            raise QgsProcessingException(f"{name} must be one of {', '.join(options)}; got '{given}'.")
        return value

    def raster_layer(self, parameters, name, context):
        """The raster layer `name` names: a loaded layer, a file, or a raster on the network (a URL,
        /vsicurl/https://…, /vsis3/… : GDAL reads only the blocks the tiles need)."""
        given = parameters.get(name)
        given = given if isinstance(given, str) else ""
        with network_reading(given):  # QGIS opens it in this thread: GDAL's HTTP options as the plugin reads it
            layer = self.parameterAsRasterLayer(parameters, name, context)
        if (layer is None or not layer.isValid()) and is_network_path(given):
            layer = network_raster_layer(given, context)
        if layer is None or not layer.isValid():
            if is_network_path(given):
                raise QgsProcessingException(f"{name}: could not open '{given}': the server did not answer or has no raster there; {network_hint(given)}.")
            raise QgsProcessingException(
                f"{name}: could not open '{parameters.get(name)}' as a raster layer; give a GDAL-readable raster file or a loaded raster layer."
            )
        return layer

    def model_file(self, parameters, context):
        """MODEL: an existing model file, or an http(s):// URL of one (downloaded into the model cache
        when the run starts; Dask workers download it too, once per machine)."""
        value = self.parameterAsFile(parameters, "MODEL", context)
        if is_model_url(value):
            return value
        return self.existing_file(parameters, "MODEL", context, "model file")

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
