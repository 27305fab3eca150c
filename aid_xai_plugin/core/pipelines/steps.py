"""The per-tile work of the pipelines, as steps from arrays (or a tile window) to arrays.

Nothing here writes an output: a step's result goes back to the pipeline, whose sinks write it in
the process that owns the outputs. `TileExplainer` is built from an `ExplainJob` of plain values
(paths, bands, scaling, settings), so the same step can run in another process or on another
machine that opens the raster and the model itself.
"""

import dataclasses

import numpy as np

from ..common.failures import out_of_memory_as_error
from ..explain.band_groups import explain_band_groups
from ..explain.engine import ExplainSettings, masker_value
from ..explain.partition import masked_background
from ..explain.registry import engine_by_name
from ..ml.classifier import Classifier, top_k
from ..ml.model_file import load_model
from .tiles import TileInputs, TileReader


@dataclasses.dataclass(frozen=True)
class ClassifiedImages:
    probabilities: np.ndarray  # N × classes
    ranks: np.ndarray  # N × k class indices, most probable first
    margins: np.ndarray  # N: p1 − p2 (low = unsure)
    entropies: np.ndarray  # N: normalised to [0, 1] (high = unsure)


def confidence(probabilities):
    """Margin (p1 − p2) and entropy normalised to [0, 1] per row: low margin / high entropy = unsure."""
    ordered = -np.sort(-probabilities, axis=1)
    margin = ordered[:, 0] - (ordered[:, 1] if probabilities.shape[1] > 1 else 0.0)
    p = np.clip(probabilities, 1e-12, 1.0)
    entropy = -(p * np.log(p)).sum(axis=1) / np.log(max(probabilities.shape[1], 2))
    return margin, entropy


def classify_images(classifier, images, k, batch_size):
    """The classify step: N model-input images → probabilities, top-k ranks and confidence."""
    probabilities = classifier.predict_probabilities(images, batch_size)
    margins, entropies = confidence(probabilities)
    return ClassifiedImages(probabilities, top_k(probabilities, k), margins, entropies)


@dataclasses.dataclass(frozen=True)
class ClassifyJob:
    """Everything the classify step needs, as plain values."""

    inputs: TileInputs
    model_path: str
    device: str
    k: int
    batch_size: int
    model_sha256: str = ""  # the model this run loaded: a worker reading another file at model_path refuses


class ClassifyStep:
    """The classify step from tile windows: reads them and classifies the usable ones. Opens the
    raster and the model named by the job (for a process that doesn't hold them, e.g. a Dask worker)."""

    def __init__(self, job):
        self.job = job
        self.classifier = Classifier(load_model(job.model_path, expected_sha256=job.model_sha256), job.device)
        self.reader = TileReader(job.inputs)

    def __call__(self, windows):
        """(valid fraction per window, usable flag per window, ClassifiedImages of the usable tiles or None)."""
        read = [self.reader.read(window) for window in windows]
        images = [image for image, _ in read if image is not None]
        result = classify_images(self.classifier, np.stack(images), self.job.k, self.job.batch_size) if images else None
        return [fraction for _, fraction in read], [image is not None for image, _ in read], result


@dataclasses.dataclass(frozen=True)
class ExplainJob:
    """Everything the explain step needs, as plain values."""

    inputs: TileInputs
    model_path: str
    device: str
    engine: str
    settings: ExplainSettings
    class_indices: tuple = None  # explain these model outputs …
    top_k: int = 4  # … or the k most probable classes of each tile
    contrast_class: int = None  # OUTPUT_SPACE contrast: each class against this one (None: against its strongest rival)
    band_groups: tuple = None  # BandGroups: evidence per group of bands (explain/band_groups.py); None: bands together
    model_sha256: str = ""  # the model this run loaded: a worker reading another file at model_path refuses


@dataclasses.dataclass(frozen=True)
class ExplainedTile:
    image: np.ndarray  # the tile as the model saw it (S×S×C)
    values: np.ndarray  # S×S×K SHAP values, channels summed (as shap.image_plot shows them)
    class_indices: np.ndarray  # K
    output_values: np.ndarray  # K: f(tile) in the output space
    base_values: np.ndarray  # K: f(fully masked tile) in the output space
    probabilities: np.ndarray  # K: the explained classes' probabilities
    margin: float  # p1 − p2 of the tile (low = the model is unsure)
    valid: np.ndarray  # h×w bool: the source pixels inside the raster and not masked (nodata, alpha)
    fallback_reason: str = None
    rival_indices: np.ndarray = None  # K: OUTPUT_SPACE contrast: the class each was explained against
    group_maps: np.ndarray = None  # S×S×K×G: with band groups, each group's evidence (`values` is their sum)
    group_values: np.ndarray = None  # K×G: with band groups, each group's exact Shapley value


class TileExplainer:
    """The explain step: tile windows → their partition-SHAP values (None for a tile with too few
    valid pixels), the tiles explained together (`engine.explain_tiles`: many tiles in flight).
    Opens the raster, model and engine named by the job unless this process already holds them
    (pass them in to share)."""

    def __init__(self, job, classifier=None, reader=None, engine=None):
        self.job = job
        self.engine = engine or engine_by_name(job.engine)
        self.classifier = classifier or Classifier(load_model(job.model_path, expected_sha256=job.model_sha256), job.device)
        self.reader = reader or TileReader(job.inputs)

    def __call__(self, window, progress=None):
        """(ExplainedTile or None, fraction of valid source pixels) of one window."""
        return self.explain_windows([window], progress)[0]

    def explain_windows(self, windows, progress=None):
        """[(ExplainedTile or None, fraction of valid source pixels)] of the windows, explained together."""
        return self.explain_read([self.reader.read_masked(window) for window in windows], progress)

    def explain_read(self, read, progress=None):
        """As explain_windows, for tiles already read ((image or None, valid, fraction) each)."""
        job, classifier, settings = self.job, self.classifier, self.job.settings
        usable = [number for number, (image, _, _) in enumerate(read) if image is not None]
        results = [(None, fraction) for _, _, fraction in read]
        if not usable:
            return results
        images = [read[number][0] for number in usable]
        probabilities = classifier.predict_probabilities(np.stack(images), batch_size=1)  # each tile alone, as when explained one at a time
        contrast = settings.output_space == "contrast"
        if job.class_indices is not None:
            indices = [np.asarray(job.class_indices)] * len(images)
        else:
            candidates = probabilities.copy()
            if contrast and job.contrast_class is not None:
                candidates[:, job.contrast_class] = -np.inf  # a class against itself explains nothing
            indices = list(top_k(candidates, job.top_k))
        rivals = [contrast_rivals(row, tile_indices, job.contrast_class) for row, tile_indices in zip(probabilities, indices)] if contrast else None
        with out_of_memory_as_error(
            f"explaining {len(images)} tile(s) at once on {classifier.device}", f"TILES_IN_FLIGHT, BATCH_SIZE (now {settings.batch_size}), MAX_EVALS (now {settings.max_evals}) or TILE_SIZE"
        ):
            if job.band_groups is None:
                explanations = self.engine.explain_tiles(images, classifier, indices, settings, progress, rivals)
            else:
                backgrounds = [masked_background(image, masker_value(settings.masker)) for image in images]
                explanations = explain_band_groups(self.engine, images, backgrounds, classifier, indices, settings, job.band_groups, progress, rivals, in_flight=len(images))
        margins = confidence(probabilities)[0]
        for row, (number, result, tile_indices) in enumerate(zip(usable, explanations, indices)):
            image, valid, fraction = read[number]
            grouped = job.band_groups is not None
            explained = ExplainedTile(
                image, result.maps.sum(axis=3) if grouped else result.values.sum(axis=2), tile_indices, result.output_values, result.base_values, probabilities[row][tile_indices],
                float(margins[row]), valid, result.fallback_reason, result.rival_indices, result.maps if grouped else None, result.shapley if grouped else None,
            )
            results[number] = (explained, fraction)
        return results


def contrast_rivals(probabilities, indices, contrast_class=None):
    """The class each of `indices` is explained against in the contrast space: `contrast_class`, or
    each class's strongest rival, the most probable other class of the tile (the runner-up for the
    top class, the top class for the others)."""
    if contrast_class is not None:
        return np.full(len(indices), contrast_class, dtype=int)
    others = np.tile(np.asarray(probabilities, dtype=np.float64), (len(indices), 1))  # one row per explained class …
    others[np.arange(len(indices)), indices] = -np.inf  # … without that class
    return np.argmax(others, axis=1).astype(int)
