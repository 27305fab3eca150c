"""The time budget of an explain run: estimated before any work, so one click on a large raster
cannot start days of computation."""

import time

import numpy as np

from ..common.errors import AidXaiError

AUTOMATIC_TILE_BUDGET_S = 3600.0


def seconds_per_tile(classifier, settings, engine):
    """Time one model batch and extrapolate to one tile's MAX_EVALS evaluations as `engine` will
    evaluate them (a fast engine that falls back is priced as what it falls back to)."""
    size, bands = classifier.info.input_size, classifier.info.num_bands
    probe = np.random.default_rng(0).random((min(settings.batch_size, 32), size, size, bands), dtype=np.float32)
    classifier.predict_probabilities(probe[:1], batch_size=1)  # warm-up: first calls pay set-up costs
    start = time.perf_counter()
    classifier.predict_probabilities(probe, batch_size=len(probe))
    per_eval = (time.perf_counter() - start) / len(probe)
    return settings.max_evals * per_eval * engine.cost_per_evaluation(classifier, (size, size, bands), settings)


def check_tile_budget(tile_count, per_tile, max_evals, max_tiles, progress=None):
    """Refuse a run over MAX_TILES tiles (0: as many as take about an hour) before any work, with the
    estimate."""
    estimate = _duration(tile_count * per_tile)
    limit = max_tiles if max_tiles > 0 else max(1, int(AUTOMATIC_TILE_BUDGET_S // max(per_tile, 1e-9)))
    if tile_count > limit:
        why = f"MAX_TILES = {max_tiles}" if max_tiles > 0 else f"about an hour at MAX_EVALS = {max_evals}: MAX_TILES is automatic"
        raise AidXaiError(
            f"{tile_count} tiles are selected, which would take about {estimate}; the limit is {limit} tiles ({why}). "
            f"Choose fewer tiles (FEATURES or EXTENT), lower MAX_EVALS, or set MAX_TILES to {tile_count} or more to run anyway."
        )
    if progress is not None:
        progress.log(f"Explaining {tile_count} tile(s) × {max_evals} evaluations: about {estimate} (model-time estimate). Fewer MAX_EVALS = coarser maps, faster.")


def _duration(seconds):
    """Seconds as a person reads a duration: s, min or h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
