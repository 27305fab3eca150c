"""Raster, model and tiling parameters shared by classify and explain (one definition, one reader)."""

import contextlib

from qgis.core import (
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

from ..core.pipelines.tiles import DEFAULT_MIN_VALID_FRACTION, TilingOptions, tile_and_stride_pixels
from ..raster_layers import readable_raster
from ..qgis_compat import CRS_WKT_PREFERRED_GDAL, NUMBER_DOUBLE, NUMBER_INTEGER, with_advanced_flag
from .base import choice_parameter

TILE_UNITS = ["pixels", "map units", "metres"]
SCALING_MODES = ("auto", "percentile", "minmax", "none")
MODEL_FILTER = "AID-XAI model (*.aidx.pt *.pt);;All files (*.*)"


def add_raster_and_model_parameters(algorithm):
    algorithm.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Input raster"))
    algorithm.addParameter(QgsProcessingParameterFile("MODEL", "Model file (from Train), or its http(s):// URL", fileFilter=MODEL_FILTER))


def add_extent_parameter(algorithm):
    algorithm.addParameter(QgsProcessingParameterExtent("EXTENT", "Processing extent (not set: the whole raster)", optional=True))
    algorithm.addParameter(
        QgsProcessingParameterNumber(
            "RESOLUTION", "Resolution for web and other non-file layers, map units per pixel (not set: a file's own pixels)", NUMBER_DOUBLE, None, optional=True, minValue=0.0
        )
    )


@contextlib.contextmanager
def raster_input(algorithm, parameters, context, layer, options, feedback):
    """(path GDAL reads, tiling options) for the INPUT layer: a file layer as it is, any other layer
    (XYZ/WMS, WCS, memory…) read through QGIS at RESOLUTION over the extent into a temporary GeoTIFF,
    whose own grid the tiles then follow (its pixels and tiles are those the core converts to here)."""
    resolution = algorithm.parameterAsDouble(parameters, "RESOLUTION", context) if parameters.get("RESOLUTION") not in (None, "") else 0.0
    tile_px = stride_px = (1, 1)
    if resolution > 0:
        model_size = _model_input_size(algorithm, parameters, context) if not options.tile_size else 0
        pixel_grid = (0.0, resolution, 0.0, 0.0, 0.0, -resolution)
        tile, stride = tile_and_stride_pixels(options, pixel_grid, options.crs, options.metres_at, model_size)
        tile_px = tuple(max(1, int(round(v))) for v in tile)  # under a pixel: the core refuses it, clearly
        stride_px = tuple(max(1, int(round(v))) for v in stride) if stride else tile_px
    with readable_raster(layer, options.extent, resolution, context, feedback, tile_px, stride_px) as path:
        yield path, options


def _model_input_size(algorithm, parameters, context):
    from ..core.ml.model_file import load_model

    return load_model(algorithm.parameterAsFile(parameters, "MODEL", context)).info.input_size


def add_tiling_parameters(algorithm, default_batch=32):
    """Tile size and stride read "Not set" for automatic (not 0.000000); 0 still means automatic
    from qgis_process and saved models."""
    algorithm.addParameter(
        QgsProcessingParameterNumber("TILE_SIZE", "Tile size (not set: the model's input size in pixels)", NUMBER_DOUBLE, None, optional=True, minValue=0.0)
    )
    algorithm.addParameter(QgsProcessingParameterNumber("STRIDE", "Stride between tiles (not set: the tile size, no overlap)", NUMBER_DOUBLE, None, optional=True, minValue=0.0))
    algorithm.addParameter(QgsProcessingParameterEnum("TILE_UNIT", "Unit of tile size and stride (metres: on the ground at the extent's centre)", TILE_UNITS, defaultValue=0))
    advanced = [
        QgsProcessingParameterString("BANDS", "Bands in model order, e.g. 1,2,3 (not set: as the model records)", optional=True),
        choice_parameter("SCALING", "Value scaling to 0..1", SCALING_MODES, "auto"),
        QgsProcessingParameterNumber("SCALING_LOW", "Scaling low (percentile or minimum)", NUMBER_DOUBLE, 2.0),
        QgsProcessingParameterNumber("SCALING_HIGH", "Scaling high (percentile or maximum)", NUMBER_DOUBLE, 98.0),
        QgsProcessingParameterNumber("MIN_VALID_FRACTION", "Minimum valid fraction of a tile", NUMBER_DOUBLE, DEFAULT_MIN_VALID_FRACTION, minValue=0.0, maxValue=1.0),
        QgsProcessingParameterNumber("BATCH_SIZE", "Batch size (tiles per model call)", NUMBER_INTEGER, default_batch, minValue=1),
    ]
    for parameter in advanced:
        algorithm.addParameter(with_advanced_flag(parameter))


def read_tiling_options(algorithm, parameters, context, layer):
    """The layer's CRS (QGIS's: assigned by the user or the file's own) is the raster's CRS for the
    extent, metres and outputs; sizes in metres are ground metres at the centre of the processing
    extent, or of the layer without one."""
    crs = layer.crs()
    extent, centre = None, layer.extent().center()
    if parameters.get("EXTENT"):
        rectangle = algorithm.parameterAsExtent(parameters, "EXTENT", context, crs)
        if not rectangle.isNull() and not rectangle.isEmpty():
            extent = (rectangle.xMinimum(), rectangle.yMinimum(), rectangle.xMaximum(), rectangle.yMaximum())
            centre = rectangle.center()
    return TilingOptions(
        tile_size=algorithm.parameterAsDouble(parameters, "TILE_SIZE", context) or 0.0,
        tile_unit=TILE_UNITS[algorithm.parameterAsEnum(parameters, "TILE_UNIT", context)],
        stride=algorithm.parameterAsDouble(parameters, "STRIDE", context) or 0.0,
        extent=extent,
        crs=crs.toWkt(CRS_WKT_PREFERRED_GDAL) if crs.isValid() else "",
        metres_at=(centre.x(), centre.y()),
        bands=algorithm.parameterAsString(parameters, "BANDS", context),
        scaling=scaling_spec(algorithm, parameters, context),
        min_valid_fraction=algorithm.parameterAsDouble(parameters, "MIN_VALID_FRACTION", context),
    )


def scaling_spec(algorithm, parameters, context):
    """The core's scaling spec from the drop-down and its two numbers, e.g. 'percentile(2,98)'."""
    mode = algorithm.choice(parameters, "SCALING", context)
    if mode in ("percentile", "minmax"):
        low = algorithm.parameterAsDouble(parameters, "SCALING_LOW", context)
        high = algorithm.parameterAsDouble(parameters, "SCALING_HIGH", context)
        return f"{mode}({low!r},{high!r})"
    return mode
