"""The raster output format shared by classify and explain: GeoTIFF or Cloud Optimized GeoTIFF."""

from .base import choice_parameter

# the drop-down's words (what qgis_process and saved models take) → the core's format (geo/writers.py)
OUTPUT_FORMATS = {"GeoTIFF": "GTiff", "COG": "COG"}


def add_output_format_parameter(algorithm):
    algorithm.addParameter(choice_parameter("OUTPUT_FORMAT", "Raster output format (COG: Cloud Optimized GeoTIFF, with overviews, for web viewers and HTTP range reads)", tuple(OUTPUT_FORMATS), "GeoTIFF"))


def read_output_format(algorithm, parameters, context):
    return OUTPUT_FORMATS[algorithm.choice(parameters, "OUTPUT_FORMAT", context)]
