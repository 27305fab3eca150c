"""aid_xai:explain — partition-SHAP maps of chosen tiles as a georeferenced, styled GeoTIFF."""

from qgis.core import (
    QgsProcessingOutputNumber,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
)

from ..core.geo.mosaic import OVERLAP_MODES
from ..core.pipelines.explain import ExplainOutputs, ExplainRequest, explain_raster
from ..qgis_compat import NUMBER_INTEGER
from ..styling import apply_on_load, style_shap_raster
from .base import AidXaiAlgorithm, choice_parameter
from .execution_parameters import add_execution_parameters, read_execution
from .explain_parameters import add_shap_parameters, add_tile_choice_parameters, read_shap_settings, tile_selector
from .tiling_parameters import add_raster_and_model_parameters, add_tiling_parameters, read_tiling_options


class ExplainAlgorithm(AidXaiAlgorithm):
    algorithm_id = "explain"
    display_name = "Explain tiles (partition SHAP)"
    group_id = "maps"
    group_name = "Maps"
    required_imports = ("torch", "shap", "cv2")
    help_text = (
        "Explains why the model classified tiles as it did, with partition SHAP (shap's PartitionExplainer "
        "with an Image masker, as in the source workflow). Tiles are cut exactly as in Classify. Choose tiles "
        "with FEATURES (points: the tile under each point; polygons: the tiles whose centre lies inside, e.g. "
        "Classify's tile layer filtered to low margins) or explain all tiles in the extent.\n\n"
        "Output space: logit (default: the model's raw class scores, as the source explains them; they "
        "don't saturate, so a tile the model is sure of still gets a map), probability (differences in p; "
        "blank where p is ≈1 or ≈0 for both the tile and its masked version) or log_probability.\n\n"
        "Output: a float32 GeoTIFF on the source pixel grid with one band per rank (top-k mode) or per chosen "
        "class (CLASSES), styled red = pushes the class up, blue = pushes it down, near zero transparent. Per "
        "tile and band, the values sum to f(tile) − f(fully masked tile) in the output space (SHAP "
        "efficiency); when a tile is resized for the model, each model pixel's value is spread over the "
        "source pixels it covers by area, preserving that sum. Overlapping tiles (STRIDE < tile size) are "
        "blended into a seamless map (each pixel: the mean of the tiles covering it, weighted towards each "
        "tile's centre) or, with OVERLAP = last, the later tile overwrites. Also a tile table (probability, "
        "f, base value and ΣSHAP per tile and class: the exact per-tile sums) and an HTML report in "
        "shap.image_plot's layout of the REPORT_TILES least confident tiles.\n\n"
        "MAX_EVALS sets resolution against time: each evaluation is one model call on a masked tile; 500 "
        "gives coarse blocks, 5 000 object-level detail, 50 000 (the source's setting) near-pixel detail. "
        "A time estimate is logged before the run. Masker: blur (hidden pixels become the tile blurred with "
        "the kernel size; default 256, as the source's blur(256,256)), inpaint_telea, inpaint_ns, or constant "
        "(the value in model-input scale 0..1). Engine: fast (default: shap's values to float32 rounding, "
        "recomputing only the CNN features near each masked box; 17-41× faster than shap on 2 CPU cores), "
        "exact (shap's values bit for bit, full model evaluations) or shap (the reference itself). The "
        "random seed makes shap's tie-breaks reproducible.\n\n"
        "Long runs: finished tiles are kept in a hidden .resume folder beside the output until the run "
        "completes; running the same command again after a cancel or crash explains only the missing "
        "tiles. EXECUTION = dask spreads tiles over a Dask cluster: a local one started for the run "
        "(DASK_WORKERS processes × DASK_THREADS threads) or a running scheduler (DASK_SCHEDULER, e.g. "
        "tcp://host:8786) whose workers can read the raster and the model at the same paths."
    )

    def initAlgorithm(self, config=None):  # noqa: N802
        add_raster_and_model_parameters(self)
        add_tile_choice_parameters(self)
        add_tiling_parameters(self, default_batch=128)
        add_shap_parameters(self)
        self.addParameter(QgsProcessingParameterNumber("TOP_K", "Explain the k most probable classes", NUMBER_INTEGER, 4, minValue=1))
        self.addParameter(QgsProcessingParameterString("CLASSES", "…or these classes (comma-separated names; overrides TOP_K)", optional=True))
        self.add_device_parameter()
        add_execution_parameters(self)
        self.addParameter(choice_parameter("OVERLAP", "Overlapping tiles (STRIDE < tile size) combine by", OVERLAP_MODES, "blend"))
        self.addParameter(QgsProcessingParameterNumber("REPORT_TILES", "Report shows the N least confident tiles (0 = all)", NUMBER_INTEGER, 50, minValue=0))
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "SHAP raster"))
        self.addParameter(QgsProcessingParameterVectorDestination("OUTPUT_TABLE", "Explained tiles table", optional=True, createByDefault=True))
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT_REPORT", "Report", "HTML files (*.html)", optional=True, createByDefault=True))
        self.addOutput(QgsProcessingOutputNumber("TILES_EXPLAINED", "Tiles explained"))

    def process(self, parameters, context, feedback, progress):
        layer = self.raster_layer(parameters, "INPUT", context)
        model = self.existing_file(parameters, "MODEL", context, "model file")
        engine = self.choice(parameters, "ENGINE", context)
        classes_text = self.parameterAsString(parameters, "CLASSES", context)
        request = ExplainRequest(
            tile_selector=tile_selector(self, parameters, context, layer),
            top_k=self.parameterAsInt(parameters, "TOP_K", context),
            class_names=[name.strip() for name in classes_text.split(",") if name.strip()] if classes_text else None,
        )
        settings = read_shap_settings(self, parameters, context)
        outputs = ExplainOutputs(
            shap_raster=self.parameterAsOutputLayer(parameters, "OUTPUT", context),
            tile_table=self.optional_output(parameters, "OUTPUT_TABLE", context, layer=True),
            report=self.optional_output(parameters, "OUTPUT_REPORT", context),
            overlap=self.choice(parameters, "OVERLAP", context),
            report_tiles=self.parameterAsInt(parameters, "REPORT_TILES", context),
        )
        execution, dask = read_execution(self, parameters, context)
        summary = explain_raster(
            layer.source(), model, read_tiling_options(self, parameters, context, layer), request, settings, outputs, engine, self.device(parameters, context), progress, execution, dask
        )
        feedback.pushInfo(f"Explained {summary.explained} of {summary.requested} selected tile(s); bands: {', '.join(summary.band_names)}")
        results = {"OUTPUT": outputs.shap_raster, "TILES_EXPLAINED": summary.explained}
        apply_on_load(context, outputs.shap_raster, style_shap_raster(outputs.shap_raster, summary.style_scale, summary.output_space))
        if outputs.tile_table:
            results["OUTPUT_TABLE"] = outputs.tile_table
        if outputs.report:
            results["OUTPUT_REPORT"] = outputs.report
        return results
