"""aid_xai:explanation_quality — how faithful the partition-SHAP maps of chosen tiles are, measured."""

from qgis.core import (
    QgsProcessingOutputNumber,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
)

from ..core.ml.randomisation import RANDOMISE_SCOPES
from ..core.pipelines.explain import ExplainRequest
from ..core.pipelines.quality import QualityOutputs, QualitySpec, explanation_quality
from ..qgis_compat import NUMBER_INTEGER
from ..styling import apply_on_load, style_explained_tile_table
from .base import AidXaiAlgorithm, choice_parameter
from .explain_parameters import add_band_group_parameters, add_shap_parameters, add_tile_choice_parameters, read_band_groups, read_shap_settings, tile_selector
from .tiling_parameters import add_raster_and_model_parameters, add_tiling_parameters, raster_input, read_tiling_options

# numeric outputs: QualityResult field → (output name, description)
_MEANS = {
    "deletion_auc": ("DELETION_AUC", "Mean deletion AUC, SHAP order (lower = more faithful)"),
    "random_deletion_auc": ("RANDOM_DELETION_AUC", "Mean deletion AUC, random order"),
    "insertion_auc": ("INSERTION_AUC", "Mean insertion AUC, SHAP order (higher = more faithful)"),
    "random_insertion_auc": ("RANDOM_INSERTION_AUC", "Mean insertion AUC, random order"),
    "abs_rank_correlation": ("ABS_RANK_CORRELATION", "Mean |rank correlation|, trained vs randomised model (near 0 = depends on the weights)"),
}


class ExplanationQualityAlgorithm(AidXaiAlgorithm):
    algorithm_id = "explanation_quality"
    display_name = "Explanation quality (deletion, insertion, randomisation)"
    group_id = "maps"
    group_name = "Maps"
    required_imports = ("torch", "shap", "cv2")  # scipy comes with shap
    help_text = (
        "Measures on chosen tiles how far their partition-SHAP maps can be trusted, so the number of evaluations, "
        "the masker and the output space can be chosen on evidence. Tiles, tiling and SHAP parameters are those of Explain tiles.\n\n"
        "Deletion (Petsiuk et al., RISE, 2018): the model-input pixels are hidden with the explanation's own masker, "
        "most important first (by the map, per class), and the class probability is followed over \"Curve steps\" equal "
        "fractions; its area under the curve (AUC, 0..1) should be LOWER than when the pixels are hidden in random "
        "order (the mean of \"Random orders\" seeded orders). Insertion: the same pixels are revealed first on the fully "
        "masked tile; its AUC should be HIGHER than random. A map whose AUCs equal random's says nothing the "
        "perturbation can confirm; curves flat near 1 mean the model still recognises the fully masked tile (try "
        "another masker, e.g. a constant or a smaller blur). Curves are in probability whatever space was explained.\n\n"
        "Randomisation check (Adebayo et al., 2018): the same classes are explained with a copy of the model whose "
        "head (the layers after the last convolution) or all layers (\"Layers re-initialised\") are re-initialised, and Spearman's "
        "rank correlation ρ with the trained model's map is reported: |ρ| near 0 = the map depends on what the "
        "model learned, as it should; |ρ| near 1 = it mostly shows the image.\n\n"
        "To choose settings: run this on a few typical tiles with each candidate (e.g. 500 vs 5 000 evaluations, blur "
        "vs constant masker, logit vs probability) and keep the cheapest one whose deletion AUC stays clearly below "
        "random, insertion AUC clearly above, and |ρ| small.\n\n"
        "By band group (\"Explain by band group\", \"Band groups\" as in Explain tiles): each class's map of each group "
        "is assessed on its own, hiding and revealing only that group's bands of the pixels, one table row per class and group.\n\n"
        "Outputs: a table per tile and class (AUCs, random AUCs, ρ, probability), an HTML report with the curves and "
        "the trained vs randomised maps, and the means as numbers (of |ρ| for the correlation). Each tile costs two explanations plus "
        "(2 × classes + 2 × random orders) × (curve steps + 1) model calls."
    )

    def initAlgorithm(self, config=None):  # noqa: N802
        add_raster_and_model_parameters(self)
        add_tile_choice_parameters(self)
        add_tiling_parameters(self, default_batch=128)
        add_shap_parameters(self)
        self.addParameter(QgsProcessingParameterNumber("TOP_K", "Assess the k most probable classes", NUMBER_INTEGER, 1, minValue=1))
        self.addParameter(QgsProcessingParameterString("CLASSES", "…or these classes (comma-separated names)", optional=True))
        add_band_group_parameters(self)
        self.addParameter(QgsProcessingParameterNumber("STEPS", "Curve steps (points at 0, 1/steps, …, 1 of the pixels)", NUMBER_INTEGER, 20, minValue=2))
        self.addParameter(QgsProcessingParameterNumber("RANDOM_ORDERS", "Random orders averaged for the baseline", NUMBER_INTEGER, 3, minValue=1))
        self.addParameter(choice_parameter("RANDOMISE", "Layers re-initialised for the randomisation check", RANDOMISE_SCOPES, "head"))
        self.add_device_parameter()
        self.addParameter(QgsProcessingParameterVectorDestination("OUTPUT_TABLE", "Quality table", optional=True, createByDefault=True))
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT_REPORT", "Quality report", "HTML files (*.html)", optional=True, createByDefault=True))
        self.addOutput(QgsProcessingOutputNumber("TILES_ASSESSED", "Tiles assessed"))
        for name, description in _MEANS.values():
            self.addOutput(QgsProcessingOutputNumber(name, description))

    def process(self, parameters, context, feedback, progress):
        layer = self.raster_layer(parameters, "INPUT", context)
        model = self.model_file(parameters, context)
        classes_text = self.parameterAsString(parameters, "CLASSES", context)
        request = ExplainRequest(
            tile_selector=tile_selector(self, parameters, context, layer),
            top_k=self.parameterAsInt(parameters, "TOP_K", context),
            class_names=[name.strip() for name in classes_text.split(",") if name.strip()] if classes_text else None,
            **read_band_groups(self, parameters, context),
        )
        outputs = QualityOutputs(
            table=self.optional_output(parameters, "OUTPUT_TABLE", context, layer=True),
            report=self.optional_output(parameters, "OUTPUT_REPORT", context),
        )
        with raster_input(self, parameters, context, layer, read_tiling_options(self, parameters, context, layer), feedback) as (path, options):
            spec = QualitySpec(
                path,
                model,
                options,
                request,
                read_shap_settings(self, parameters, context),
                outputs,
                engine=self.choice(parameters, "ENGINE", context),
                device=self.device(parameters, context),
                randomise=self.choice(parameters, "RANDOMISE", context),
                steps=self.parameterAsInt(parameters, "STEPS", context),
                random_orders=self.parameterAsInt(parameters, "RANDOM_ORDERS", context),
            )
            summary = explanation_quality(spec, progress)
        feedback.pushInfo(
            f"Assessed {summary.assessed} of {summary.requested} selected tile(s): deletion AUC {summary.deletion_auc:.3f} (random {summary.random_deletion_auc:.3f}), "
            f"insertion AUC {summary.insertion_auc:.3f} (random {summary.random_insertion_auc:.3f}), mean |rank correlation| with the randomised model {summary.abs_rank_correlation:.2f}"
        )
        results = {"TILES_ASSESSED": summary.assessed}
        results.update({name: getattr(summary, field) for field, (name, _) in _MEANS.items()})
        if outputs.table:
            results["OUTPUT_TABLE"] = outputs.table
            apply_on_load(context, outputs.table, style_explained_tile_table(outputs.table, summary.class_names, summary.band_groups))
        if outputs.report:
            results["OUTPUT_REPORT"] = outputs.report
        return results
