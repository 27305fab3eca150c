"""Explain chosen tiles of a raster with partition SHAP and write the maps where the tiles lie.

An engine explains the tile as the model sees it (input_size² pixels), in the chosen output space
(logit, probability or log-probability). The SHAP raster is on the source's own pixel grid: each
tile's channel-summed map is spread over the tile's source pixels by area overlap, preserving sums
(`geo/placement.py`).

Source pixels the model saw as 0 because they are invalid (nodata, alpha, outside the raster) are
nodata in the SHAP raster, which ends at the raster's edge: a value there would explain no image.
Without overlap, per tile and class Σ(SHAP raster over the tile) = f(x) − f(masked base) (SHAP's
efficiency) is checkable from the written file for tiles without invalid pixels; the tile table
always holds each tile's exact sum.
With overlapping tiles (stride < tile size) the tiles' maps are combined per source pixel by the
mosaic (`geo/mosaic.py`): `blend` (a weighted mean, seamless) or `last` (the later tile overwrites).
"""

import contextlib
import dataclasses

import numpy as np

from ..common.errors import AidXaiError
from ..common.gdal_context import raising_gdal_errors
from ..explain.band_groups import check_group_masker, group_games, parse_band_groups
from ..explain.engine import ExplainSettings, masker_value
from ..explain.in_flight import check_tiles_in_flight, tiles_in_flight
from ..explain.registry import engine_by_name
from ..geo.mosaic import OVERLAP_MODES, TileMosaic
from ..geo.placement import to_source_pixels, window_in
from ..geo.vector import PolygonWriter
from ..geo.writers import GeoTiffSink, check_geotiff_path
from ..ml.classifier import check_output_space
from ..reports.explanation_report import ExplanationReport
from .budget import check_tile_budget, seconds_per_tile
from .checkpoint import TileCheckpoint, file_identity, run_key
from .execution import EXECUTION_MODES, DaskSettings, dask_client, job_key, run_ordered, step_for
from .run import check_outputs
from .steps import ExplainJob, TileExplainer
from .tile_table import TILE_TABLE_FIELDS, explained_rows
from .tiles import TileSource, TilingOptions, chunks

SHAP_NODATA = -9999.0


@dataclasses.dataclass(frozen=True)
class ExplainRequest:
    # callable(tile footprint corners) → (selected, true label or ""); None → every tile of the grid
    tile_selector: object = None
    top_k: int = 4
    class_names: list = None  # explain these classes instead of the top-k
    contrast_class: str = None  # OUTPUT_SPACE contrast: each explained class against this one; None: against its strongest rival
    by_band_group: bool = False  # evidence per group of bands: a band per (class, group) and the groups' values (explain/band_groups.py)
    band_groups: str = ""  # the groups, 'RGB=1,2,3;NIR=4' (model input bands); empty: one group per band
    max_tiles: int = 0  # refuse more tiles than this; 0 → as many as take about an hour (estimated)


@dataclasses.dataclass(frozen=True)
class ExplainOutputs:
    shap_raster: str = None
    tile_table: str = None
    report: str = None
    overlap: str = "blend"  # how overlapping tiles combine in the SHAP raster: blend | last
    report_tiles: int = 50  # the report shows this many least confident tiles (0 = all)
    raster_format: str = "GTiff"  # of the SHAP raster: GTiff or COG (geo/writers.py)


@dataclasses.dataclass(frozen=True)
class ExplainSpec:
    """What an explain run is: which raster and model, which tiles, how they are explained, where
    the results go and where the tiles are computed. Its fields are the run's resume key
    (`resume_key`), all but those in NOT_IN_RESUME_KEY."""

    raster: str
    model: str
    tiling: TilingOptions = dataclasses.field(default_factory=TilingOptions)
    request: ExplainRequest = dataclasses.field(default_factory=ExplainRequest)
    settings: ExplainSettings = dataclasses.field(default_factory=ExplainSettings)
    outputs: ExplainOutputs = dataclasses.field(default_factory=ExplainOutputs)
    engine: str = "fast"
    device: str = "auto"
    execution: str = "local"  # where tiles are computed: local | dask
    dask: DaskSettings = dataclasses.field(default_factory=DaskSettings)
    tiles_in_flight: int = 0  # tiles explained together (0: automatic, explain/in_flight.py)


# Fields of ExplainSpec that change no value a run computes or writes, so a resumed run may differ in
# them: where and in which format the outputs go (the checkpoint lies beside the first), where and how
# many at a time the tiles are computed (each tile is explained the same way here or on a cluster, alone
# or with others) and the tile limit, checked before any work.
NOT_IN_RESUME_KEY = ("outputs.shap_raster", "outputs.tile_table", "outputs.report", "outputs.raster_format", "execution", "dask", "tiles_in_flight", "request.max_tiles")


@dataclasses.dataclass(frozen=True)
class ExplainResult:
    explained: int  # tiles explained
    requested: int  # tiles selected (some may lack valid pixels)
    style_scale: float  # robust |value| limit for the colour ramp
    band_names: list
    class_names: list
    output_space: str
    fallback_reason: str = None  # why the engine evaluated tiles another way, if it did
    band_groups: list = None  # names of the band groups explained (None: the bands together)


def check_no_blended_ranks(grid, tiles):
    """In TOP_K mode band "rank k" holds each tile's own k-th class, so blending overlapping tiles
    would average different classes into one pixel: a map that means nothing. Refused, naming the
    two ways that do mean something."""
    reach_x, reach_y = -(-grid.tile_w // grid.stride_x), -(-grid.tile_h // grid.stride_y)  # grid steps a tile spans
    if reach_x == 1 and reach_y == 1:
        return
    positions = {(tile.row, tile.col) for tile in tiles}
    for row, col in positions:
        for step_y in range(reach_y):
            for step_x in range(-reach_x + 1, reach_x):
                if (step_y, step_x) > (0, 0) and (row + step_y, col + step_x) in positions:
                    raise AidXaiError(
                        "OVERLAP=blend averages overlapping tiles per pixel, but with TOP_K each tile's band 'rank k' holds its own k-th class, "
                        "so neighbours' different classes would be mixed into one value. Name the classes to map with CLASSES (blending then "
                        "averages one class), or set OVERLAP=last, or a STRIDE of at least the tile size."
                    )


def tiles_to_explain(source, request):
    """[(tile, true label)] for the tiles the request selects, in grid order. The selector gives each
    tile footprint its (feature, label, distance) hits: a polygon's (distance None) select the tile;
    a point selects only the tile it touches whose centre is nearest (on a shared edge or corner, or
    where tiles overlap, it touches several), the first in grid order among equals."""
    grid = source.grid
    if request.tile_selector is None:
        return [(tile, "") for tile in grid.tiles()]
    chosen = {}  # tile index → (tile, label)
    nearest = {}  # point feature → (distance, tile, label)
    for tile in grid.tiles():
        for feature, label, distance in request.tile_selector(grid.footprint(tile)):
            if distance is None:
                chosen.setdefault(tile.index, (tile, label))
            elif feature not in nearest or distance < nearest[feature][0]:
                nearest[feature] = (distance, tile, label)
    for _, tile, label in nearest.values():
        chosen.setdefault(tile.index, (tile, label))
    if not chosen:
        raise AidXaiError("No tile lies under the chosen features; choose features over the raster (and inside the extent).")
    return [chosen[index] for index in sorted(chosen)]


def check_settings(settings):
    """Clear errors for SHAP settings no engine can use."""
    masker_value(settings.masker)
    check_output_space(settings.output_space)
    if settings.max_evals < 3:
        raise AidXaiError("MAX_EVALS must be at least 3 (the masked and unmasked image take two).")


def requested_class_indices(request, names):
    """The model outputs CLASSES names (checked), or None for the top-k of each tile."""
    if not request.class_names:
        return None
    unknown = [name for name in request.class_names if name not in names]
    if unknown:
        raise AidXaiError(f"CLASSES {unknown} are not classes of this model; it knows: {', '.join(names)}.")
    return tuple(names.index(name) for name in request.class_names)


def contrast_class_index(request, space, names):
    """The model output CONTRAST_CLASS names (checked against the space, the model and CLASSES), or
    None: not the contrast space, or each class against its strongest rival."""
    if request.contrast_class and space != "contrast":
        raise AidXaiError(f"CONTRAST_CLASS '{request.contrast_class}' is only used with OUTPUT_SPACE=contrast; set OUTPUT_SPACE=contrast, or leave CONTRAST_CLASS empty.")
    if space != "contrast":
        return None
    if len(names) < 2:
        raise AidXaiError("OUTPUT_SPACE=contrast explains one class against another, but this model has a single class; use OUTPUT_SPACE=logit.")
    if not request.contrast_class:
        return None
    if request.contrast_class not in names:
        raise AidXaiError(f"CONTRAST_CLASS '{request.contrast_class}' is not a class of this model; it knows: {', '.join(names)}.")
    if request.class_names and request.contrast_class in request.class_names:
        raise AidXaiError(f"CONTRAST_CLASS '{request.contrast_class}' is also in CLASSES: a class against itself explains nothing; remove it from CLASSES.")
    return names.index(request.contrast_class)


def requested_band_groups(request, settings, band_count):
    """The BandGroups of a run by band group (checked against the model's bands and the masker), or
    None: bands explained together."""
    if not request.by_band_group:
        if request.band_groups.strip():
            raise AidXaiError(f"BAND_GROUPS '{request.band_groups}' is only used when explaining by band group; tick BY_BAND_GROUP, or leave BAND_GROUPS empty.")
        return None
    check_group_masker(settings.masker)
    return parse_band_groups(request.band_groups, band_count)


def grouped_band_names(class_band_names, groups):
    """A band per (class, group), class by class: 'Forest · NIR'."""
    if groups is None:
        return class_band_names
    return [f"{name} · {group.name}" for name in class_band_names for group in groups]


def explained_band_names(request, space, class_count):
    """The SHAP raster's band names: the CLASSES, or each tile's rank k (the class differs per tile:
    the band says where to find it); in the contrast space with the class each is explained against."""
    rival = ""
    if space == "contrast":
        rival = f" vs {request.contrast_class}" if request.contrast_class else " vs its strongest rival (tile table: rival_class)"
    if request.class_names:
        return [f"{name}{rival}" for name in request.class_names]
    ranks = min(request.top_k, class_count - (1 if space == "contrast" and request.contrast_class else 0))
    return [f"rank {rank}{rival} (each tile's {'classes' if rival else 'class'}: tile table, rank = {rank})" for rank in range(1, ranks + 1)]


def resume_key(spec, source, windows):
    """The checkpoint key of `spec` (`checkpoint.run_key`): every field but NOT_IN_RESUME_KEY, those of
    `resolved_fields` as this run resolved them."""
    return run_key(spec, NOT_IN_RESUME_KEY, resolved_fields(spec, source, windows))


def resolved_fields(spec, source, windows):
    """{field: what this run resolved it to} for the fields a resume key takes by what they stand for."""
    return {
        "raster": file_identity(spec.raster),  # a rewritten raster at the same path is another input
        "model": source.classifier.sha256,  # its content: the same model at another path resumes
        "device": source.classifier.device,  # 'auto' as it was chosen
        "tiling.bands": source.inputs.bands,  # empty: the model's band order
        "tiling.scaling": source.inputs.scaling,  # 'auto' or percentiles as computed (from overviews, if the file has them)
        "request.tile_selector": windows,  # the features as the tiles they select
    }


@raising_gdal_errors
def explain_raster(spec, progress=None):
    """Explain the tiles `spec.request` selects, here or on a Dask cluster (`spec.execution`,
    `spec.dask`); returns an ExplainResult. Finished tiles are checkpointed beside the outputs, so the
    same spec after an interruption computes only the missing ones."""
    from osgeo import gdal

    request, settings, outputs, engine = spec.request, spec.settings, spec.outputs, spec.engine
    source = TileSource(spec.raster, spec.model, spec.tiling, spec.device)
    classifier, grid = source.classifier, source.grid
    names = classifier.class_names
    check_settings(settings)
    if outputs.overlap not in OVERLAP_MODES:
        raise AidXaiError(f"Unknown OVERLAP '{outputs.overlap}'; use one of: {', '.join(OVERLAP_MODES)}.")
    if outputs.report_tiles < 0:
        raise AidXaiError("REPORT_TILES must be 0 (every tile) or a positive number of tiles.")
    if spec.execution not in EXECUTION_MODES:
        raise AidXaiError(f"Unknown EXECUTION '{spec.execution}'; use one of: {', '.join(EXECUTION_MODES)}.")
    check_tiles_in_flight(spec.tiles_in_flight)
    output_paths = [path for path in (outputs.shap_raster, outputs.tile_table, outputs.report) if path]
    if not output_paths:
        raise AidXaiError("Give at least one output: the SHAP raster, the explained tiles table or the report.")
    if outputs.shap_raster:
        check_geotiff_path(outputs.shap_raster, outputs.raster_format)
    check_outputs(*output_paths)
    fixed_indices = requested_class_indices(request, names)
    contrast_index = contrast_class_index(request, settings.output_space, names)
    class_band_names = explained_band_names(request, settings.output_space, len(names))
    groups = requested_band_groups(request, settings, classifier.info.num_bands)
    band_names = grouped_band_names(class_band_names, groups)
    tiles_and_labels = tiles_to_explain(source, request)
    if fixed_indices is None and outputs.overlap == "blend":
        check_no_blended_ranks(grid, [tile for tile, _ in tiles_and_labels])
    job = ExplainJob(source.inputs, spec.model, classifier.device, engine, settings, fixed_indices, len(class_band_names), contrast_index, groups, model_sha256=classifier.sha256)
    local_engine = engine_by_name(engine)  # analyses the model once: for the estimate and the tiles explained here
    explanations_per_tile = 1 if groups is None else len(list(group_games(len(groups))))
    check_tile_budget(len(tiles_and_labels), explanations_per_tile * seconds_per_tile(classifier, settings, local_engine), settings.max_evals, request.max_tiles, progress)
    if groups is not None and progress:
        progress.log(f"Band groups {', '.join(group.name for group in groups)}: {explanations_per_tile} explanation(s) per tile for the maps, {2 ** len(groups)} model evaluations for the groups' values.")

    windows = [tile.window for tile, _ in tiles_and_labels]
    window = grid.covering_window([tile for tile, _ in tiles_and_labels])
    origin = window[:2]
    tags = dict(
        source.provenance(),
        AIDXAI_ENGINE=engine,
        AIDXAI_MASKER=settings.masker,
        AIDXAI_MAX_EVALS=settings.max_evals,
        AIDXAI_BATCH_SIZE=settings.batch_size,
        AIDXAI_SEED=settings.seed,
        AIDXAI_OUTPUT_SPACE=settings.output_space,
        AIDXAI_OVERLAP=outputs.overlap,
        AIDXAI_MODE="classes" if fixed_indices is not None else f"top-{len(band_names)}",
    )
    if settings.output_space == "contrast":
        tags["AIDXAI_CONTRAST_CLASS"] = request.contrast_class or "each class's strongest rival"
    if groups is not None:
        tags["AIDXAI_BAND_GROUPS"] = ";".join(f"{group.name}={','.join(str(band + 1) for band in group.bands)}" for group in groups)
    explained = 0
    fallback_reason = None
    style_scale = 0.0  # colour-ramp limit: robust to a few extreme pixels, so every tile shows
    checkpoint = TileCheckpoint(output_paths[0], resume_key(spec, source, windows), progress)
    with contextlib.ExitStack() as sinks:
        mosaic = table = report = None
        if outputs.shap_raster:
            shap_raster = sinks.enter_context(
                GeoTiffSink(
                    outputs.shap_raster, window[2], window[3], len(band_names), gdal.GDT_Float32, grid.window_geotransform(window), source.projection, SHAP_NODATA, band_names, tags,
                    outputs.raster_format, "AVERAGE",
                )
            )
            mosaic = TileMosaic(shap_raster, window[2:], [window_in(tile_window, origin) for tile_window in windows], len(band_names), SHAP_NODATA, outputs.overlap, flush=shap_raster.flush)
        if outputs.tile_table:
            table = sinks.enter_context(PolygonWriter(outputs.tile_table, source.projection, TILE_TABLE_FIELDS))
        if outputs.report:
            report = sinks.enter_context(ExplanationReport(outputs.report, names, settings, engine, outputs.report_tiles, None if groups is None else [group.name for group in groups]))
        for tile, label, result, fraction in _explained_tiles(spec, source, job, local_engine, tiles_and_labels, checkpoint, progress):
            _, _, w, h = tile.window
            if result is None:
                if mosaic is not None:
                    mosaic.add(window_in(tile.window, origin), None)
                if progress:
                    progress.log(f"Tile row {tile.row}, col {tile.col} skipped: only {fraction:.0%} valid pixels.")
                continue
            if result.fallback_reason and fallback_reason is None:
                fallback_reason = result.fallback_reason
                if progress:
                    progress.log(f"The {engine} engine evaluates this model another way because {fallback_reason}.")
            mapped = result.values if result.group_maps is None else result.group_maps.reshape(result.group_maps.shape[:2] + (-1,))  # class by class, its groups together
            on_source = to_source_pixels(mapped, h, w).astype(np.float32)
            style_scale = max(style_scale, float(np.percentile(np.abs(on_source[result.valid]), 99)))
            if mosaic is not None:
                mosaic.add(window_in(tile.window, origin), on_source, result.valid)
            if table is not None:
                for row in explained_rows(tile, result, names, settings.output_space, label, groups):
                    table.add(row, grid.footprint(tile))
            if report is not None:
                report.add(tile.index, tile.row, tile.col, result, label)
            explained += 1
        if not explained:
            raise AidXaiError("No selected tile had enough valid pixels to explain; lower the minimum valid fraction or choose other tiles.")
        if mosaic is not None:
            mosaic.close()
    checkpoint.remove()
    group_names = None if groups is None else [group.name for group in groups]
    return ExplainResult(explained, len(tiles_and_labels), style_scale, band_names, names, settings.output_space, fallback_reason, group_names)


def _explained_tiles(spec, source, job, engine, tiles_and_labels, checkpoint, progress):
    """Yield (tile, label, ExplainedTile or None, valid fraction) in order: from the checkpoint when
    an interrupted run finished the tile, else computed here or on the cluster (and checkpointed),
    `spec.tiles_in_flight` tiles at a time."""
    count = len(tiles_and_labels)
    missing = [tile for tile, _ in tiles_and_labels if not checkpoint.has(tile.index)]
    if progress and len(missing) < count:
        progress.log(f"Resuming an interrupted run: {count - len(missing)} of {count} tile(s) reused from its checkpoint, {len(missing)} to explain.")
    positions = {tile.index: number for number, (tile, _) in enumerate(tiles_and_labels)}

    def computed_locally():
        explainer = TileExplainer(job, source.classifier, source.reader, engine)
        in_flight = tiles_in_flight(spec.tiles_in_flight, source.classifier, source.inputs.model_input_shape, spec.settings)
        if progress and len(missing) > 1:
            progress.log(f"Explaining {min(in_flight, len(missing))} tile(s) at a time (TILES_IN_FLIGHT).")
        for batch in source.batches(missing, in_flight, masked=True):  # the next batch is read while this one is explained
            first, last = positions[batch[0][0].index], positions[batch[-1][0].index]
            yield from explainer.explain_read([read for _, *read in batch], progress.part(first / count, (last + 1) / count) if progress else None)

    @contextlib.contextmanager
    def computed():
        if spec.execution == "local" or not missing:
            yield computed_locally()
            return
        with dask_client(spec.dask, progress) as client:
            key = job_key(job)
            in_flight = spec.tiles_in_flight or client.submit(tiles_in_flight_on_worker, key, job, spec.dask.threads, pure=False).result()
            batches = [[tile.window for tile in batch] for batch in chunks(missing, in_flight)]
            yield (result for batch in run_ordered(client, explain_on_worker, [(key, job, spec.dask.threads, windows) for windows in batches], progress) for result in batch)

    with computed() as results:
        results = iter(results)
        done = 0
        for tile, label in tiles_and_labels:
            if checkpoint.has(tile.index):  # read one at a time: memory stays flat however many there are
                result, fraction = checkpoint.load(tile.index)
            else:
                if progress:
                    progress.check_cancel()
                result, fraction = next(results)
                checkpoint.save(tile.index, result, fraction)
            done += 1
            if progress:
                progress.fraction(done / count)
            yield tile, label, result, fraction


def explain_on_worker(key, job, threads, windows):
    """The explain step of tile windows (explained together), run by a Dask worker (opens the job's
    inputs once)."""
    return step_for(key, job, TileExplainer, threads).explain_windows(windows)


def tiles_in_flight_on_worker(key, job, threads):
    """The automatic TILES_IN_FLIGHT for a worker's device (a GPU worker's memory, not this machine's)."""
    step = step_for(key, job, TileExplainer, threads)
    return tiles_in_flight(0, step.classifier, job.inputs.model_input_shape, job.settings)
