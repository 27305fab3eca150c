"""aid_xai:classify — scene class, probabilities and confidence per tile, aligned with the imagery."""

from qgis.core import (
    QgsProcessingOutputNumber,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterVectorDestination,
)

from ..core.common.errors import AidXaiError
from ..core.pipelines.classify import ClassifyOutputs, classify_raster
from ..qgis_compat import NUMBER_INTEGER
from ..styling import apply_on_load, style_class_raster, style_probability_raster, style_tile_layer
from .base import AidXaiAlgorithm, open_raster_output
from .execution_parameters import add_execution_parameters, read_execution
from .output_parameters import add_output_format_parameter, read_output_format
from .tiling_parameters import add_extent_parameter, add_raster_and_model_parameters, add_tiling_parameters, raster_input, read_tiling_options


class ClassifyAlgorithm(AidXaiAlgorithm):
    algorithm_id = "classify"
    display_name = "Classify raster tiles"
    group_id = "maps"
    group_name = "Maps"
    help_text = (
        "Cuts the raster into tiles of its own grid (anchored at the raster's top-left pixel: the processing "
        "extent selects tiles of that grid, so Classify and Explain tiles always agree), resizes each tile to "
        "the model input exactly as training did, and classifies it. Tile size not set: the model's input "
        "size in source pixels; stride not set: the tile size (no overlap). A size in metres is ground metres at "
        "the centre of the processing extent (of the layer without one) in any CRS: in Web Mercator a map "
        "metre is cos(latitude) ground metres, in EPSG:4326 a degree of longitude 111 km × cos(latitude). "
        "The outputs are in the layer's CRS, a CRS assigned to it in QGIS included.\n\n"
        "Outputs, each with a .qml style beside it: the class raster (uint8, nodata 255; classes in fixed "
        "colours that mean something: water blue, vegetation green, built-up red and grey, bare land tan); "
        "the probability raster (float32, one band per class named after it, each drawn as a 0-1 ramp: "
        "transparent where the class is unlikely); both with one cell per tile (with a stride, the "
        "stride-sized block at the tile's centre), on edges of the source pixels; and the tile layer (.gpkg, "
        ".geojson or .shp; drawn as class-coloured outlines labelled with class and probability) with the "
        "top-k classes, probabilities, margin (p1 − p2) and normalised entropy, so low-confidence tiles are "
        "one filter away. \"Raster output format\" = Cloud Optimized GeoTIFF writes both rasters as COGs "
        "(overviews by the most frequent class and by the mean probability; the same values as a GeoTIFF).\n\n"
        "Values are scaled to 0..1 by \"Value scaling\" (auto: 8-bit /255, other types a 2–98 % stretch; "
        "percentile or minmax with the low/high numbers; none); nodata, alpha and pixels outside the raster "
        "are invalid, and tiles with less than the minimum valid fraction are skipped (advanced parameters).\n\n"
        "The input raster may be a URL (/vsicurl/https://…, /vsis3/…, or a layer with such a source): GDAL fetches "
        "only the blocks the tiles need. The model may be an http(s):// URL: it is downloaded into a per-user cache "
        "(on Dask, once per worker machine, checked against the run's SHA-256)."
    )

    def initAlgorithm(self, config=None):  # noqa: N802
        add_raster_and_model_parameters(self)
        add_extent_parameter(self)
        add_tiling_parameters(self)
        self.addParameter(QgsProcessingParameterNumber("TOP_K", "Classes listed per tile (top-k)", NUMBER_INTEGER, 4, minValue=1))
        self.add_device_parameter()
        add_execution_parameters(self)
        add_output_format_parameter(self)
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT_CLASSES", "Class raster", optional=True, createByDefault=True))
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT_PROBABILITIES", "Probability raster", optional=True, createByDefault=True))
        self.addParameter(QgsProcessingParameterVectorDestination("OUTPUT_TILES", "Tile layer", optional=True, createByDefault=True))
        self.addOutput(QgsProcessingOutputNumber("TILES_CLASSIFIED", "Tiles classified"))
        self.addOutput(QgsProcessingOutputNumber("TILES_SKIPPED", "Tiles skipped (too few valid pixels)"))

    def process(self, parameters, context, feedback, progress):
        layer = self.raster_layer(parameters, "INPUT", context)
        model = self.model_file(parameters, context)
        outputs = ClassifyOutputs(
            class_raster=self.optional_output(parameters, "OUTPUT_CLASSES", context, layer=True),
            probability_raster=self.optional_output(parameters, "OUTPUT_PROBABILITIES", context, layer=True),
            tile_layer=self.optional_output(parameters, "OUTPUT_TILES", context, layer=True),
            raster_format=read_output_format(self, parameters, context),
        )
        if not any((outputs.class_raster, outputs.probability_raster, outputs.tile_layer)):
            raise AidXaiError("All outputs are skipped; choose at least one of OUTPUT_CLASSES, OUTPUT_PROBABILITIES, OUTPUT_TILES.")
        execution, dask = read_execution(self, parameters, context)
        with raster_input(self, parameters, context, layer, read_tiling_options(self, parameters, context, layer), feedback) as (path, options):
            summary = classify_raster(
                path,
                model,
                options,
                outputs,
                k=self.parameterAsInt(parameters, "TOP_K", context),
                batch_size=self.parameterAsInt(parameters, "BATCH_SIZE", context),
                device=self.device(parameters, context),
                progress=progress,
                execution=execution,
                dask=dask,
            )
        feedback.pushInfo(f"Grid: {summary.rows} × {summary.cols} tiles of {summary.tile_px[0]}×{summary.tile_px[1]} px, stride {summary.stride_px[0]}×{summary.stride_px[1]} px")
        feedback.pushInfo(f"Classes: {summary.class_counts}")
        results = {"TILES_CLASSIFIED": summary.classified, "TILES_SKIPPED": summary.skipped}
        names = summary.class_names
        for key, path, styler in (
            ("OUTPUT_CLASSES", outputs.class_raster, style_class_raster),
            ("OUTPUT_PROBABILITIES", outputs.probability_raster, style_probability_raster),
            ("OUTPUT_TILES", outputs.tile_layer, style_tile_layer),
        ):
            if path:
                results[key] = path
                apply_on_load(context, path, styler(path, names))
                if key != "OUTPUT_TILES":
                    open_raster_output(context, path)
        return results
