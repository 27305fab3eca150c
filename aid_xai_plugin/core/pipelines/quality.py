"""How far to trust the partition-SHAP maps of chosen tiles, measured on those tiles.

Per tile: explain the chosen classes with the trained model (the same step as aid_xai:explain), then
the same classes on the same model-input tile with a copy whose layers are re-initialised; draw
deletion/insertion curves of the trained map against random orders (`explain/faithfulness.py`) and
rank-correlate the two maps. Rows go to the table and the report as each tile is done, and only
running sums are kept, so memory does not grow with the number of tiles.
"""

import contextlib
import dataclasses
import math

from ..common.errors import AidXaiError
from ..explain.engine import ExplainSettings
from ..explain.faithfulness import faithfulness_curves, rank_correlation
from ..explain.registry import engine_by_name
from ..geo.gdal_context import raising_gdal_errors
from ..geo.vector import PolygonWriter
from ..ml.randomisation import RANDOMISE_SCOPES, randomised_classifier
from ..reports.quality_report import QualityReport, correlation_text
from .explain import ExplainRequest, check_settings, requested_class_indices, tiles_to_explain
from .run import check_outputs, with_progress
from .steps import ExplainJob, TileExplainer
from .tile_table import TILE_CLASS_FIELDS, class_columns
from .tiles import TileSource, TilingOptions

QUALITY_TABLE_FIELDS = TILE_CLASS_FIELDS + [
    ("deletion_auc", float),
    ("insertion_auc", float),
    ("random_deletion_auc", float),
    ("random_insertion_auc", float),
    ("randomised_rank_correlation", float),
]
_MEASURES = ("deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc", "abs_rank_correlation")


@dataclasses.dataclass(frozen=True)
class QualityOutputs:
    table: str = None
    report: str = None


@dataclasses.dataclass(frozen=True)
class QualitySpec:
    """What an explanation-quality run is: the tiles and explanations of an explain run, and how
    they are assessed."""

    raster: str
    model: str
    tiling: TilingOptions = dataclasses.field(default_factory=TilingOptions)
    request: ExplainRequest = dataclasses.field(default_factory=ExplainRequest)
    settings: ExplainSettings = dataclasses.field(default_factory=ExplainSettings)
    outputs: QualityOutputs = dataclasses.field(default_factory=QualityOutputs)
    engine: str = "fast"
    device: str = "auto"
    randomise: str = "head"  # layers re-initialised for the randomisation check: head | all
    steps: int = 20  # curve points at 0, 1/steps, …, 1 of the pixels
    random_orders: int = 3  # random orders averaged for the baseline


@dataclasses.dataclass(frozen=True)
class QualityResult:
    """Means over all assessed (tile, class) pairs; the rank correlation's is of |ρ|, as signs would
    cancel, and NaN when every randomised map was constant (no ranks to compare)."""

    assessed: int  # tiles assessed
    requested: int  # tiles selected (some may lack valid pixels)
    deletion_auc: float
    insertion_auc: float
    random_deletion_auc: float
    random_insertion_auc: float
    abs_rank_correlation: float
    class_names: list = dataclasses.field(default_factory=list)  # the model's, for styling the table


class _RunningMeans:
    """Sums and counts of each measure, skipping NaN (a constant map has no rank correlation)."""

    def __init__(self):
        self.sums = dict.fromkeys(_MEASURES, 0.0)
        self.counts = dict.fromkeys(_MEASURES, 0)

    def add(self, **values):
        for name, value in values.items():
            if not math.isnan(value):
                self.sums[name] += value
                self.counts[name] += 1

    def means(self):
        return {name: self.sums[name] / self.counts[name] if self.counts[name] else float("nan") for name in _MEASURES}


@raising_gdal_errors
def explanation_quality(spec, progress=None):
    """Assess the explanations of the tiles `spec.request` selects; returns a QualityResult."""
    request, settings, outputs, engine = spec.request, spec.settings, spec.outputs, spec.engine
    steps, random_orders, randomise = spec.steps, spec.random_orders, spec.randomise
    source = TileSource(spec.raster, spec.model, spec.tiling, spec.device)
    classifier, grid = source.classifier, source.grid
    names = classifier.class_names
    check_settings(settings)
    if settings.output_space == "contrast":
        raise AidXaiError("Explanation quality measures one class's output as pixels are hidden; it does not take OUTPUT_SPACE=contrast yet. Use OUTPUT_SPACE=logit.")
    if steps < 2:
        raise AidXaiError(f"STEPS must be at least 2 (got {steps}): a curve needs points between all pixels shown and none; 20 is a good start.")
    if random_orders < 1:
        raise AidXaiError(f"RANDOM_ORDERS must be at least 1 (got {random_orders}): the random baseline needs one order; 3 is a good start.")
    if randomise not in RANDOMISE_SCOPES:
        raise AidXaiError(f"Unknown RANDOMISE '{randomise}'; use one of: {', '.join(RANDOMISE_SCOPES)}.")
    check_outputs(outputs.table, outputs.report)
    fixed_indices = requested_class_indices(request, names)
    randomised = randomised_classifier(classifier, randomise, settings.seed)
    tiles_and_labels = tiles_to_explain(source, request)
    job = ExplainJob(source.inputs, spec.model, classifier.device, engine, settings, fixed_indices, request.top_k, model_sha256=classifier.sha256)
    explain_tile = TileExplainer(job, classifier, source.reader)
    randomised_engine = engine_by_name(engine)

    running = _RunningMeans()
    assessed = 0
    with contextlib.ExitStack() as sinks:
        table = sinks.enter_context(PolygonWriter(outputs.table, source.projection, QUALITY_TABLE_FIELDS)) if outputs.table else None
        report = sinks.enter_context(QualityReport(outputs.report, settings, engine, randomise, steps, random_orders)) if outputs.report else None
        count = len(tiles_and_labels)
        for number, (tile, label) in with_progress(enumerate(tiles_and_labels), count, progress):
            tile_progress = progress.part(number / count, (number + 1) / count) if progress else None
            result, fraction = explain_tile(tile.window, tile_progress.part(0.0, 0.45) if tile_progress else None)
            if result is None:
                if progress:
                    progress.log(f"Tile row {tile.row}, col {tile.col} skipped: only {fraction:.0%} valid pixels.")
                continue
            indices = result.class_indices
            on_random = randomised_engine.explain(result.image, randomised, indices, settings, tile_progress.part(0.45, 0.9) if tile_progress else None)
            randomised_values = on_random.values.sum(axis=2)
            curves = faithfulness_curves(result.image, result.values, indices, classifier, settings.masker, steps, random_orders, settings.seed, settings.batch_size)
            correlations = [rank_correlation(result.values[..., k], randomised_values[..., k]) for k in range(len(indices))]
            for k, class_index in enumerate(indices):
                aucs = dict(
                    deletion_auc=float(curves.deletion_auc[k]),
                    insertion_auc=float(curves.insertion_auc[k]),
                    random_deletion_auc=float(curves.random_deletion_auc[k]),
                    random_insertion_auc=float(curves.random_insertion_auc[k]),
                )
                running.add(**aucs, abs_rank_correlation=abs(correlations[k]))
                if table is not None:
                    table.add(class_columns(tile, k + 1, names[class_index], result.probabilities[k], settings.output_space) + [*aucs.values(), _or_null(correlations[k])], grid.footprint(tile))
                if progress:
                    progress.log(
                        f"Tile row {tile.row}, col {tile.col}, {names[class_index]}: deletion AUC {aucs['deletion_auc']:.3f} (random {aucs['random_deletion_auc']:.3f}), "
                        f"insertion AUC {aucs['insertion_auc']:.3f} (random {aucs['random_insertion_auc']:.3f}), rank correlation with the randomised model {correlation_text(correlations[k])}"
                    )
            if report is not None:
                report.add(tile.index, tile.row, tile.col, result.image, [names[c] for c in indices], result.probabilities, curves, result.values, randomised_values, correlations, label)
            assessed += 1
        if not assessed:
            raise AidXaiError("No selected tile had enough valid pixels to assess; lower the minimum valid fraction or choose other tiles.")
        summary = QualityResult(assessed, len(tiles_and_labels), **running.means(), class_names=list(names))
        if report is not None:
            report.summarise(summary)
    return summary


def _or_null(value):
    """NaN as a NULL field: GeoPackage and shapefiles would store NaN differently, GeoJSON drops it."""
    return None if math.isnan(value) else value
