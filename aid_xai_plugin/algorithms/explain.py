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
from ..core.pipelines.explain import ExplainOutputs, ExplainRequest, ExplainSpec, explain_raster
from ..qgis_compat import NUMBER_INTEGER, with_advanced_flag
from ..styling import apply_on_load, style_explained_tile_table, style_shap_raster
from .base import AidXaiAlgorithm, choice_parameter, open_raster_output
from .execution_parameters import add_execution_parameters, read_execution
from .explain_parameters import add_band_group_parameters, add_shap_parameters, add_tile_choice_parameters, read_band_groups, read_shap_settings, tile_selector
from .output_parameters import add_output_format_parameter, read_output_format
from .tiling_parameters import add_raster_and_model_parameters, add_tiling_parameters, raster_input, read_tiling_options


class ExplainAlgorithm(AidXaiAlgorithm):
    algorithm_id = "explain"
    display_name = "Explain tiles (partition SHAP)"
    group_id = "maps"
    group_name = "Maps"
    required_imports = ("torch", "shap", "cv2")
    help_text = (
        "Explains why the model classified tiles as it did, with partition SHAP (shap's PartitionExplainer "
        "with an Image masker, as in the source workflow).\n\n"
        "Which tiles: the tiles of the raster's own grid (the same tiles Classify cuts) under "
        "\"Explain the tiles under these features\" (a point picks the one tile under it: on a shared edge or where "
        "tiles overlap, the one whose centre is nearest; a polygon the tiles whose centre it contains, e.g. Classify's tile layer filtered to low margins), within the processing "
        "extent; with no features, every tile in the extent. An extent smaller than a tile picks the tile "
        "under it. A run refuses to start on more than \"Maximum tiles to explain\" tiles; not set, that is "
        "as many as take about an hour at this number of evaluations (the estimate is in the message).\n\n"
        "What: \"Explain the k most probable classes\" of each tile (band k = the tile's k-th class, "
        "named in the explained tiles table), or the classes listed under \"…or these classes\". \"Explain "
        "the model's\": logit (default; the raw class scores, as the source explains them: they don't "
        "saturate, so a tile the model is sure of still gets a map), probability (blank where p is ≈1 or ≈0 "
        "for the tile and its masked versions) or log_probability.\n\n"
        "Band groups: with \"Explain by band group\" each class gets one band per group of input bands "
        "(\"Band groups\", e.g. RGB=1,2,3;NIR=4 with the model's band numbers; empty: one group per band; bands "
        "in no group are never hidden). A hidden group shows the masker's background in its bands. The "
        "explained tiles table gets a row per class and group with the group's exact Shapley value "
        "(group_value: from the model on the tile with every subset of groups hidden; the groups' values sum to "
        "f(tile) − f(all groups hidden)), so \"NIR adds +2.1 logits to Farmland here\" is read off directly; "
        "each group's map sums to its value. The maps take G·2^(G−1) explanations per tile (4 for two groups).\n\n"
        "How: \"Model evaluations per tile\" sets detail against time: each evaluation is one model "
        "call on a masked tile; 500 gives coarse blocks, 5 000 object-level detail, 50 000 (the source's "
        "setting) near-pixel detail. Masker: blur (hidden pixels become the tile blurred with the kernel "
        "size; 256 as the source's blur(256,256)), inpaint_telea, inpaint_ns, or constant (the value on the "
        "model's 0..1 scale). Engine: fast (default: shap's values to float32 rounding, recomputing only the "
        "CNN features near each masked box; on 2 CPU cores 17-41× faster than shap with the source's Net, "
        "2.7-5× with ResNet-18, MobileNetV3 and EfficientNet-B0 at 224²), exact (shap's values "
        "bit for bit, full model evaluations) or shap (the reference itself).\n\n"
        "Outputs: the SHAP raster, float32 on the source pixel grid with one band per class explained, "
        "styled red = pushes the class up, blue = pushes it down, transparent near zero, every band on one "
        "scale: the run's robust maximum, in the units of the output space (shown in the legend). Per tile "
        "and band the values sum to f(tile) − f(fully masked tile) (SHAP efficiency); a tile resized for "
        "the model has each model pixel's value spread over the source pixels it covers, preserving that "
        "sum. Overlapping tiles (stride < tile size) are blended into a seamless map of the CLASSES named "
        "(with top-k ranks, each tile's rank k is another class, so blending them is refused), or with "
        "\"Overlapping tiles combine by\" = last, the later tile overwrites. The explained tiles table (outlines, one "
        "label per tile) holds per tile and class the probability, f, base value and ΣSHAP; the report "
        "shows the least confident tiles in shap.image_plot's layout. \"Raster output format\" = Cloud "
        "Optimized GeoTIFF writes the SHAP raster as a COG (overviews by the mean value; the same values "
        "as a GeoTIFF).\n\n"
        "Long runs: finished tiles are kept in a hidden .resume folder beside the output until the run "
        "completes; running the same command again after a cancel or crash explains only the missing "
        "tiles. \"Run tiles\" = dask spreads tiles over a Dask cluster: a local one started for the run or a "
        "running scheduler whose workers can read the raster and the model at the same paths or URLs (advanced "
        "parameters).\n\n"
        "Inputs on the network: the input raster may be a URL (/vsicurl/https://…, /vsis3/…, or a layer with such a "
        "source; GDAL fetches only the blocks the tiles need, e.g. of a Cloud Optimized GeoTIFF) and the model an "
        "http(s):// URL (downloaded once per machine, checked against the run's SHA-256), so Dask workers need no "
        "shared disk."
    )

    def initAlgorithm(self, config=None):  # noqa: N802
        add_raster_and_model_parameters(self)
        add_tile_choice_parameters(self)
        self.addParameter(
            QgsProcessingParameterNumber("MAX_TILES", "Maximum tiles to explain (not set: about an hour of work)", NUMBER_INTEGER, None, optional=True, minValue=0)
        )
        add_tiling_parameters(self, default_batch=128)
        self.addParameter(QgsProcessingParameterNumber("TOP_K", "Explain the k most probable classes", NUMBER_INTEGER, 4, minValue=1))
        self.addParameter(QgsProcessingParameterString("CLASSES", "…or these classes (comma-separated names)", optional=True))
        self.addParameter(
            QgsProcessingParameterString("CONTRAST_CLASS", "OUTPUT_SPACE contrast: explain against this class (empty: each class's strongest rival)", optional=True)
        )
        add_band_group_parameters(self)
        add_shap_parameters(self)
        self.add_device_parameter()
        self.addParameter(
            with_advanced_flag(QgsProcessingParameterNumber("TILES_IN_FLIGHT", "Tiles explained together (0: automatic, from GPU memory; 1 on a CPU)", NUMBER_INTEGER, 0, minValue=0))
        )
        add_execution_parameters(self)
        self.addParameter(with_advanced_flag(choice_parameter("OVERLAP", "Overlapping tiles combine by", OVERLAP_MODES, "blend")))
        self.addParameter(with_advanced_flag(QgsProcessingParameterNumber("REPORT_TILES", "Least confident tiles in the report (0: all)", NUMBER_INTEGER, 50, minValue=0)))
        add_output_format_parameter(self)
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "SHAP raster"))
        self.addParameter(QgsProcessingParameterVectorDestination("OUTPUT_TABLE", "Explained tiles table", optional=True, createByDefault=True))
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT_REPORT", "Report", "HTML files (*.html)", optional=True, createByDefault=True))
        self.addOutput(QgsProcessingOutputNumber("TILES_EXPLAINED", "Tiles explained"))

    def process(self, parameters, context, feedback, progress):
        layer = self.raster_layer(parameters, "INPUT", context)
        model = self.model_file(parameters, context)
        engine = self.choice(parameters, "ENGINE", context)
        classes_text = self.parameterAsString(parameters, "CLASSES", context)
        request = ExplainRequest(
            tile_selector=tile_selector(self, parameters, context, layer),
            top_k=self.parameterAsInt(parameters, "TOP_K", context),
            class_names=[name.strip() for name in classes_text.split(",") if name.strip()] if classes_text else None,
            contrast_class=(self.parameterAsString(parameters, "CONTRAST_CLASS", context) or "").strip() or None,
            **read_band_groups(self, parameters, context),
            max_tiles=self.parameterAsInt(parameters, "MAX_TILES", context) or 0,
        )
        settings = read_shap_settings(self, parameters, context)
        outputs = ExplainOutputs(
            shap_raster=self.parameterAsOutputLayer(parameters, "OUTPUT", context),
            tile_table=self.optional_output(parameters, "OUTPUT_TABLE", context, layer=True),
            report=self.optional_output(parameters, "OUTPUT_REPORT", context),
            overlap=self.choice(parameters, "OVERLAP", context),
            report_tiles=self.parameterAsInt(parameters, "REPORT_TILES", context),
            raster_format=read_output_format(self, parameters, context),
        )
        execution, dask = read_execution(self, parameters, context)
        with raster_input(self, parameters, context, layer, read_tiling_options(self, parameters, context, layer), feedback) as (path, options):
            spec = ExplainSpec(
                path, model, options, request, settings, outputs, engine=engine, device=self.device(parameters, context), execution=execution, dask=dask,
                tiles_in_flight=self.parameterAsInt(parameters, "TILES_IN_FLIGHT", context),
            )
            summary = explain_raster(spec, progress)
        feedback.pushInfo(f"Explained {summary.explained} of {summary.requested} selected tile(s); bands: {', '.join(summary.band_names)}")
        results = {"OUTPUT": outputs.shap_raster, "TILES_EXPLAINED": summary.explained}
        apply_on_load(context, outputs.shap_raster, style_shap_raster(outputs.shap_raster, summary.style_scale, summary.output_space))
        open_raster_output(context, outputs.shap_raster)
        if outputs.tile_table:
            results["OUTPUT_TABLE"] = outputs.tile_table
            apply_on_load(context, outputs.tile_table, style_explained_tile_table(outputs.tile_table, summary.class_names, summary.band_groups))
        if outputs.report:
            results["OUTPUT_REPORT"] = outputs.report
        return results
