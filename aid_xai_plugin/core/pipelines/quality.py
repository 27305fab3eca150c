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
from ..common.gdal_context import raising_gdal_errors
from ..explain.band_groups import explain_band_groups
from ..explain.engine import ExplainSettings, masker_value
from ..explain.faithfulness import faithfulness_curves, rank_correlation
from ..explain.partition import masked_background
from ..explain.registry import engine_by_name
from ..geo.vector import PolygonWriter
from ..ml.randomisation import RANDOMISE_SCOPES, randomised_classifier
from ..reports.quality_report import QualityReport, correlation_text
from .explain import ExplainRequest, check_settings, requested_band_groups, requested_class_indices, tiles_to_explain
from .run import check_outputs, with_progress
from .steps import ExplainJob, TileExplainer
from .tile_table import ALL_BANDS, TILE_CLASS_FIELDS, class_columns
from .tiles import TileSource, TilingOptions

QUALITY_TABLE_FIELDS = TILE_CLASS_FIELDS + [
    ("deletion_auc", float),
    ("insertion_auc", float),
    ("random_deletion_auc", float),
    ("random_insertion_auc", float),
    ("randomised_rank_correlation", float),
    ("band_group", str),  # by band group: the group whose map (and bands) the row assesses
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
    band_groups: list = None  # names of the band groups assessed (None: the bands together)


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
    groups = requested_band_groups(request, settings, classifier.info.num_bands)
    randomised = randomised_classifier(classifier, randomise, settings.seed)
    tiles_and_labels = tiles_to_explain(source, request)
    job = ExplainJob(source.inputs, spec.model, classifier.device, engine, settings, fixed_indices, request.top_k, band_groups=groups, model_sha256=classifier.sha256)
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
            maps = _assessed_maps(result, groups)
            randomised_values = _randomised_maps(randomised_engine, result, randomised, settings, groups, tile_progress.part(0.45, 0.9) if tile_progress else None)
            curves = faithfulness_curves(
                result.image, maps.values, maps.class_indices, classifier, settings.masker, steps, random_orders, settings.seed, settings.batch_size, maps.hidden_bands
            )
            correlations = [rank_correlation(maps.values[..., k], randomised_values[..., k]) for k in range(len(maps.class_indices))]
            for k, (class_index, rank, group_name) in enumerate(zip(maps.class_indices, maps.ranks, maps.group_names)):
                aucs = dict(
                    deletion_auc=float(curves.deletion_auc[k]),
                    insertion_auc=float(curves.insertion_auc[k]),
                    random_deletion_auc=float(curves.random_deletion_auc[k]),
                    random_insertion_auc=float(curves.random_insertion_auc[k]),
                )
                running.add(**aucs, abs_rank_correlation=abs(correlations[k]))
                if table is not None:
                    columns = class_columns(tile, rank + 1, names[class_index], result.probabilities[rank], settings.output_space)
                    table.add(columns + [*aucs.values(), _or_null(correlations[k]), group_name], grid.footprint(tile))
                if progress:
                    progress.log(
                        f"Tile row {tile.row}, col {tile.col}, {maps.names(names)[k]}: deletion AUC {aucs['deletion_auc']:.3f} (random {aucs['random_deletion_auc']:.3f}), "
                        f"insertion AUC {aucs['insertion_auc']:.3f} (random {aucs['random_insertion_auc']:.3f}), rank correlation with the randomised model {correlation_text(correlations[k])}"
                    )
            if report is not None:
                report.add(tile.index, tile.row, tile.col, result.image, maps.names(names), result.probabilities[maps.ranks], curves, maps.values, randomised_values, correlations, label)
            assessed += 1
        if not assessed:
            raise AidXaiError("No selected tile had enough valid pixels to assess; lower the minimum valid fraction or choose other tiles.")
        summary = QualityResult(assessed, len(tiles_and_labels), **running.means(), class_names=list(names), band_groups=None if groups is None else [group.name for group in groups])
        if report is not None:
            report.summarise(summary)
    return summary


@dataclasses.dataclass(frozen=True)
class _AssessedMaps:
    """The maps a tile's rows assess: one per class, or per class and band group (class by class)."""

    values: object  # H×W×M channel-summed maps
    class_indices: list  # M: the class of each map
    ranks: list  # M: its position among the tile's explained classes
    group_names: list  # M: its band group (ALL_BANDS without groups)
    hidden_bands: list = None  # M band lists that each map's curves hide (None: all bands)

    def names(self, class_names):
        return [class_names[index] + ("" if group == ALL_BANDS else f" · {group}") for index, group in zip(self.class_indices, self.group_names)]


def _assessed_maps(result, groups):
    classes = list(result.class_indices)
    if groups is None:
        return _AssessedMaps(result.values, classes, list(range(len(classes))), [ALL_BANDS] * len(classes))
    pairs = [(rank, group) for rank in range(len(classes)) for group in groups]
    return _AssessedMaps(
        result.group_maps.reshape(result.group_maps.shape[:2] + (-1,)),
        [classes[rank] for rank, _ in pairs],
        [rank for rank, _ in pairs],
        [group.name for _, group in pairs],
        [group.bands for _, group in pairs],
    )


def _randomised_maps(engine, result, randomised, settings, groups, progress):
    """The same maps of the model with re-initialised layers (H×W×M, as `_assessed_maps`)."""
    if groups is None:
        return engine.explain(result.image, randomised, result.class_indices, settings, progress).values.sum(axis=2)
    background = masked_background(result.image, masker_value(settings.masker))
    maps = explain_band_groups(engine, [result.image], [background], randomised, [result.class_indices], settings, groups, progress)[0].maps
    return maps.reshape(maps.shape[:2] + (-1,))


def _or_null(value):
    """NaN as a NULL field: GeoPackage and shapefiles would store NaN differently, GeoJSON drops it."""
    return None if math.isnan(value) else value
