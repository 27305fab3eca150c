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
from ..styling import apply_on_load, style_class_raster, style_tile_layer
from .base import AidXaiAlgorithm
from .execution_parameters import add_execution_parameters, read_execution
from .tiling_parameters import add_raster_and_model_parameters, add_tiling_parameters, read_tiling_options


class ClassifyAlgorithm(AidXaiAlgorithm):
    algorithm_id = "classify"
    display_name = "Classify raster tiles"
    group_id = "maps"
    group_name = "Maps"
    help_text = (
        "Cuts the raster into tiles (default: the model's input size in source pixels, no overlap), resizes "
        "each tile to the model input exactly as training did, and classifies it.\n\n"
        "Outputs: a class raster (uint8, nodata 255, class names as categories) and a probability raster "
        "(float32, one band per class named after it) with one cell per tile: the cell is the tile's "
        "footprint (with a stride, the stride-sized block at the tile's centre), on edges of the source "
        "pixels; and a tile layer (.gpkg, .geojson or .shp) with the top-k classes, probabilities, margin (p1 − p2) and "
        "normalised entropy, so low-confidence tiles are one filter away. Each output gets a .qml style "
        "sidecar.\n\nValues are scaled to 0..1 by the value scaling (auto: 8-bit /255, other types a 2–98 % "
        "stretch; percentile or minmax with the low/high numbers; none); nodata, alpha and pixels outside "
        "the raster are invalid, and tiles with less than the minimum fraction of valid pixels are skipped."
    )

    def initAlgorithm(self, config=None):  # noqa: N802
        add_raster_and_model_parameters(self)
        add_tiling_parameters(self)
        self.addParameter(QgsProcessingParameterNumber("TOP_K", "Classes listed per tile (top-k)", NUMBER_INTEGER, 4, minValue=1))
        self.add_device_parameter()
        add_execution_parameters(self)
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT_CLASSES", "Class raster", optional=True, createByDefault=True))
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT_PROBABILITIES", "Probability raster", optional=True, createByDefault=True))
        self.addParameter(QgsProcessingParameterVectorDestination("OUTPUT_TILES", "Tile layer", optional=True, createByDefault=True))
        self.addOutput(QgsProcessingOutputNumber("TILES_CLASSIFIED", "Tiles classified"))
        self.addOutput(QgsProcessingOutputNumber("TILES_SKIPPED", "Tiles skipped (too few valid pixels)"))

    def process(self, parameters, context, feedback, progress):
        layer = self.raster_layer(parameters, "INPUT", context)
        model = self.existing_file(parameters, "MODEL", context, "model file")
        outputs = ClassifyOutputs(
            class_raster=self.optional_output(parameters, "OUTPUT_CLASSES", context, layer=True),
            probability_raster=self.optional_output(parameters, "OUTPUT_PROBABILITIES", context, layer=True),
            tile_layer=self.optional_output(parameters, "OUTPUT_TILES", context, layer=True),
        )
        if not any((outputs.class_raster, outputs.probability_raster, outputs.tile_layer)):
            raise AidXaiError("All outputs are skipped; choose at least one of OUTPUT_CLASSES, OUTPUT_PROBABILITIES, OUTPUT_TILES.")
        options = read_tiling_options(self, parameters, context, layer)
        execution, dask = read_execution(self, parameters, context)
        summary = classify_raster(
            layer.source(),
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
            ("OUTPUT_PROBABILITIES", outputs.probability_raster, None),
            ("OUTPUT_TILES", outputs.tile_layer, style_tile_layer),
        ):
            if path:
                results[key] = path
                if styler is not None:
                    apply_on_load(context, path, styler(path, names))
        return results
