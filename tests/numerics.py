"""Float64 references for the engine tests, and tolerances grounded in them rather than in one machine.

Every engine computes in float32, and float32 results differ between CPUs, kernel choices (ATen's
vector width, oneDNN's ISA) and thread counts. So instead of comparing two float32 results with a
tolerance measured on one machine, the tests compare each engine with the **same traversal in
float64** (the exact engine painting the same masked tiles, the model copied to float64) and ask that
its error be within `ROUNDING_MULTIPLE` times shap's own float32 error against that reference, plus a
floor of `FLOOR_ULPS` float32 ulps of the largest output:

- outputs (f(tile), f(masked tile)) against `evaluation_error`: the largest float32-vs-float64
  difference over all the masked tiles shap's traversal evaluates (a maximum over thousands of
  evaluations, so it measures this network's rounding on this machine, not one lucky number);
- values against the largest error of shap's own values (the exact engine in float32 walks shap's
  traversal and evaluates shap's model calls, bit for bit: tests/test_fast_engine.py).

Both yardsticks are measured in the same run, on the same kernels, so the bound moves with the
machine. A real error does not: a stale context or a wrong box changes outputs by the size of the
fault, orders of magnitude above rounding (tests/test_engine_faults.py injects such faults).

The bound only holds while every engine expands the nodes the float64 traversal expands: a flipped
near-tie sends the traversal elsewhere, which is not rounding. So the traversals are recorded and
their divergence is reported (and must be zero) before the values are compared.
"""

import contextlib
import copy
import dataclasses
import hashlib
import os
import pickle

import numpy as np

from aid_xai_plugin.core.explain import engine as engine_module
from aid_xai_plugin.core.explain.exact_engine import ExactPartitionEngine, FullEvaluator, model_calls
from aid_xai_plugin.core.explain.partition import boxes_of

# Each engine's float32 error may be this many times shap's: both round the same sums in float32, in
# other orders (folded BatchNorm, windows, channels-last), so their errors are of one size and 4×
# leaves room for the spread of two such maxima (resnet18 64², 2 000 evaluations, on a Zen 3: the
# fast engine's largest evaluation error 5.7e-5 against shap's 4.3e-5, 1.3×), while a stale
# context or a wrong box is ≥ 10× above the bound (tests/test_engine_faults.py).
ROUNDING_MULTIPLE = 4.0
# For outputs that happen to round exactly in shap's evaluations (dyadic test models): a few float32
# ulps of the largest output are still rounding.
FLOOR_ULPS = 4
# Georeferencing is float64 arithmetic on a few exact numbers (origin + index × pixel size, a
# window's bounds): its rounding is ~1e-16 relative on any machine, and 1e-12 relative is still
# 1e-5 m at 1e7 m, far below any pixel, where pytest.approx's default (1e-6) would let 10 m through.
GEO_REL = 1e-12


def float32_ulp(value):
    """The spacing of float32 numbers at |value| (2^-23 relative)."""
    return float(np.spacing(np.float32(max(abs(float(value)), np.finfo(np.float32).tiny))))


class Float64Model:
    """A classifier's model and normalisation copied to float64: the reference for any path that
    evaluates tiles in float32 (engines, classify, exported and imported models, Dask workers)."""

    def __init__(self, classifier):
        import torch

        self.module = copy.deepcopy(classifier.module).cpu().double().eval()
        self.mean, self.std = classifier.mean.cpu().double(), classifier.std.cpu().double()
        self.torch = torch

    def scores_nchw(self, tiles, space):
        """N×classes float64 scores in `space` for an N×C×H×W tensor in [0, 1]."""
        torch = self.torch
        with torch.inference_mode():
            logits = self.module((tiles.cpu().double() - self.mean) / self.std)
            if space == "probability":
                logits = torch.softmax(logits, dim=1)
            elif space == "log_probability":
                logits = torch.log_softmax(logits, dim=1)
            return logits.numpy()

    def scores(self, images_nhwc, space):
        """The same for N×H×W×C arrays, like Classifier.predict_outputs."""
        images = np.ascontiguousarray(np.asarray(images_nhwc, dtype=np.float32).transpose(0, 3, 1, 2))
        return self.scores_nchw(self.torch.from_numpy(images), space)


def assert_float32_outputs(outputs, reference, yardstick, what):
    """Each of `outputs` (name → float32 scores of the tiles `reference` scored in float64) within
    ROUNDING_MULTIPLE × the float32 error of `yardstick` (the plain torch path's scores of the same
    tiles) + FLOOR_ULPS ulps of the largest score: two float32 evaluations of one network differ by
    rounding in other orders (batch size, threads, another runtime), never by more than a few times
    the rounding itself; a wrong tile, band or weight is orders of magnitude above it."""
    reference = np.asarray(reference, dtype=np.float64)
    yardstick_error = float(np.abs(np.asarray(yardstick, dtype=np.float64) - reference).max())
    bound = ROUNDING_MULTIPLE * yardstick_error + FLOOR_ULPS * float32_ulp(np.abs(reference).max())
    for name, scores in outputs.items():
        error = float(np.abs(np.asarray(scores, dtype=np.float64) - reference).max())
        assert error <= bound, f"{what}: {name} is {error:.3g} from float64, bound {bound:.3g} (torch's own float32 error: {yardstick_error:.3g})"


def tile_scores(raster_path, model_path, space="probability"):
    """(float64, float32) scores, classes × rows × cols like a probability raster, of an 8-bit
    raster cut into tiles of the model's input size (classify's defaults: no resampling, value/255):
    the float64 reference and the yardstick for the rasters the pipelines write."""
    import rasterio

    from aid_xai_plugin.core.ml.classifier import Classifier
    from aid_xai_plugin.core.ml.model_file import load_model

    classifier = Classifier(load_model(model_path), "cpu")
    side = classifier.info.input_size
    with rasterio.open(raster_path) as raster:
        pixels = raster.read()
    bands, height, width = pixels.shape
    rows, cols = height // side, width // side
    tiles = pixels[:, : rows * side, : cols * side].reshape(bands, rows, side, cols, side).transpose(1, 3, 2, 4, 0).reshape(rows * cols, side, side, bands)
    tiles = tiles.astype(np.float32) / np.float32(255.0)
    as_raster = lambda scores: scores.reshape(rows, cols, -1).transpose(2, 0, 1)  # noqa: E731
    return as_raster(Float64Model(classifier).scores(tiles, space)), as_raster(classifier.predict_outputs(tiles, space))


class Float64Evaluator(FullEvaluator):
    """The exact engine's evaluator with the model and its normalisation in float64: the same masked
    tiles (composed exactly from the float32 tile and background), evaluated without float32 rounding."""

    def __init__(self, images_hwc, backgrounds_hwc, classifier, batch_size, output_space, merge_tiles=False):
        super().__init__(images_hwc, backgrounds_hwc, classifier, batch_size, output_space, merge_tiles)
        self.model64 = Float64Model(classifier)

    def scores(self, box_lists, tiles):
        tiles = np.asarray(tiles)
        calls = model_calls(tiles, self.batch_size, False)
        return np.concatenate([self.model64.scores_nchw(self.painter.tiles(box_lists[start:stop], tiles[start:stop]), self.output_space) for start, stop in calls])


class Float64ExactEngine(ExactPartitionEngine):
    """shap's traversal with every masked tile evaluated in float64: the reference."""

    evaluator_type = Float64Evaluator


class Traversal:
    """The evaluations one traversal made: request (box, visible boxes) → the K outputs it got."""

    def __init__(self):
        self.outputs = {}

    def record(self, request, outputs):
        self.outputs[(request.box, tuple(boxes_of(request.visible)))] = np.asarray(outputs, dtype=np.float64)

    def diverging(self, other):
        """How many evaluations one of the two traversals made and the other did not."""
        return len(self.outputs.keys() ^ other.outputs.keys())

    def largest_error(self, reference):
        """max |output − reference output| over the evaluations both made."""
        common = self.outputs.keys() & reference.outputs.keys()
        return max((float(np.abs(self.outputs[key] - reference.outputs[key]).max()) for key in common), default=0.0)


class _RecordingEvaluate:
    """An engine's `evaluate` callback that records what it returns for each tile's explained
    outputs (attributes such as the region evaluator's `max_states` are read through to the real one)."""

    def __init__(self, evaluate, records):
        self._evaluate, self._records = evaluate, records  # tile → (Traversal, the explained outputs of all-class rows)

    def __call__(self, requests):
        outputs, states = self._evaluate(requests)
        for request, row in zip(requests, outputs):
            traversal, explained = self._records[request.tile]
            traversal.record(request, explained(np.asarray(row)))
        return outputs, states

    def __getattr__(self, name):
        return getattr(self._evaluate, name)


@contextlib.contextmanager
def recorded_traversals(fault=None):
    """Record the evaluations of every traversal the exact and fast engines walk inside the block
    (a list of Traversal, one per tile, in call order); the engines themselves run unchanged, unless
    `fault` (evaluate → evaluate) wraps their evaluations to inject an error (tests/test_engine_faults.py)."""
    traversals = []
    original = engine_module.walk

    def recording(evaluate, owen_traversals, progress=None):
        records = {}
        for owen_traversal in owen_traversals:
            traversals.append(Traversal())
            records[owen_traversal.tile] = (traversals[-1], owen_traversal.explained)
        return original(_RecordingEvaluate(fault(evaluate) if fault else evaluate, records), owen_traversals, progress)

    engine_module.walk = recording
    try:
        yield traversals
    finally:
        engine_module.walk = original


def explain_recorded(engine, tile, classifier, indices, settings, fault=None, rivals=None, background=None):
    """(explanation, its traversal) of one engine on one tile (hidden pixels: the masker's, or `background`)."""
    with recorded_traversals(fault) as traversals:
        explanation = engine.explain(tile, classifier, indices, settings, rivals=rivals, background=background)
    assert len(traversals) == 1, "the engine did not walk the traversal itself (it delegated to shap)"
    return explanation, traversals[0]


@dataclasses.dataclass
class Float64Yardstick:
    """The float64 reference of one explanation and shap's own float32 errors against it."""

    reference: object  # TileExplanation in float64
    traversal: Traversal
    evaluation_error: float  # max |shap's float32 output − float64| over its traversal's evaluations
    values_error: float  # max |shap's float32 values − float64 values|
    floor: float  # FLOOR_ULPS float32 ulps of the largest output

    def output_bound(self):
        return ROUNDING_MULTIPLE * self.evaluation_error + self.floor

    def values_bound(self):
        return ROUNDING_MULTIPLE * self.values_error + self.floor


def float64_reference(classifier, tile, indices, settings, rivals=None, background=None):
    """(explanation, traversal) of `tile` in float64. It does not depend on the float32 kernels
    `make test-numerics` varies (float64 rounding is ~1e-16, nine orders below the float32 bounds),
    so that script keeps each one in AID_XAI_FLOAT64_CACHE for its later runs."""
    folder = os.environ.get("AID_XAI_FLOAT64_CACHE")
    if not folder:
        return explain_recorded(Float64ExactEngine(), tile, classifier, indices, settings, rivals=rivals, background=background)
    key = hashlib.sha256()
    for tensor in classifier.module.state_dict().values():
        key.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    for part in (classifier.mean, classifier.std):
        key.update(part.cpu().numpy().tobytes())
    key.update(np.ascontiguousarray(tile, dtype=np.float32).tobytes() + np.asarray(indices).tobytes() + repr((settings, tile.shape, None if rivals is None else list(rivals))).encode())
    if background is not None:
        key.update(np.ascontiguousarray(background, dtype=np.float32).tobytes())
    path = os.path.join(folder, key.hexdigest() + ".pickle")
    if os.path.exists(path):
        with open(path, "rb") as stream:
            return pickle.load(stream)  # written by this script's own first run, in a folder it made
    result = explain_recorded(Float64ExactEngine(), tile, classifier, indices, settings, rivals=rivals, background=background)
    with open(path + ".partial", "wb") as stream:
        pickle.dump(result, stream)
    os.replace(path + ".partial", path)
    return result


def float64_yardstick(classifier, tile, indices, settings, rivals=None, background=None):
    """Explain `tile` in float64 and measure shap's float32 errors against that (shap's values and
    model calls are the exact engine's in float32, bit for bit)."""
    reference, traversal = float64_reference(classifier, tile, indices, settings, rivals, background)
    shap32, shap_traversal = explain_recorded(ExactPartitionEngine(), tile, classifier, indices, settings, rivals=rivals, background=background)
    diverging = shap_traversal.diverging(traversal)
    assert diverging == 0, f"shap's float32 traversal left the float64 one at {diverging} evaluations: a near-tie, not a portable case"
    largest_output = max(np.abs(reference.output_values).max(), np.abs(reference.base_values).max())
    return Float64Yardstick(
        reference,
        traversal,
        evaluation_error=shap_traversal.largest_error(traversal),
        values_error=float(np.abs(shap32.values - reference.values).max()),
        floor=FLOOR_ULPS * float32_ulp(largest_output),
    )


def assert_within_float32_rounding(explanation, traversal, yardstick, what="the engine"):
    """`explanation` (with the `traversal` it walked) is the float64 reference up to float32
    rounding: the same evaluations, each output, f(tile), f(masked tile) and every value within
    ROUNDING_MULTIPLE × shap's own error (+ the floor)."""
    reference = yardstick.reference
    diverging = traversal.diverging(yardstick.traversal)
    assert diverging == 0, f"{what} left shap's traversal at {diverging} evaluations"
    bound = yardstick.output_bound()
    evaluations = traversal.largest_error(yardstick.traversal)
    assert evaluations <= bound, f"{what}: an evaluation is {evaluations:.3g} from float64, bound {bound:.3g} (shap's own: {yardstick.evaluation_error:.3g})"
    for name in ("output_values", "base_values"):
        error = float(np.abs(getattr(explanation, name) - getattr(reference, name)).max())
        assert error <= bound, f"{what}: {name} {error:.3g} from float64, bound {bound:.3g} (shap's evaluations: {yardstick.evaluation_error:.3g})"
    error = float(np.abs(explanation.values - reference.values).max())
    values_bound = yardstick.values_bound()
    assert error <= values_bound, f"{what}: values {error:.3g} from float64, bound {values_bound:.3g} (shap's own: {yardstick.values_error:.3g})"
    np.testing.assert_array_equal(explanation.class_indices, reference.class_indices)


def assert_efficient(explanation, max_evals):
    """The values add up to f(tile) − f(masked tile) (shap's efficiency). They are float64 sums of
    float64 credits, so the bound is float64 rounding: each of the (features + evaluations) additions
    and splits rounds by at most 2^-52 of the magnitudes summed."""
    values = explanation.values.reshape(-1, explanation.values.shape[-1])
    difference = explanation.output_values - explanation.base_values
    magnitude = np.maximum(np.abs(values).sum(0), np.abs(difference))
    bound = efficiency_bound(len(values), max_evals, magnitude)
    np.testing.assert_array_less(np.abs(values.sum(0) - difference), bound + np.finfo(np.float64).tiny)


def efficiency_bound(features, max_evals, magnitude):
    """float64 rounding of shap's efficiency: (features + evaluations) additions and splits, each
    rounding by at most 2^-52 of the `magnitude` summed."""
    return 2 * np.finfo(np.float64).eps * (features + max_evals) * magnitude


def float32_storage_bound(values):
    """Rounding of float64 values stored as float32 (a GeoTIFF band), summed back: half a float32 ulp
    (2^-24 relative) of each value."""
    return float(np.abs(values).sum(dtype=np.float64)) * 2.0**-24


def assert_maps_within_float32_rounding(maps, classifier, tile, indices, settings, what):
    """Stored SHAP maps of one tile (name → K×H×W, the pipeline's bands: channels summed, float32)
    against the float64 reference: each channel's value within the engines' bound
    (`Float64Yardstick.values_bound`), so their sum over C channels within C times it, plus the
    float32 rounding of storing it (an ulp of the largest value). The maps cover the tile at the
    model's input size, so no resampling is involved."""
    yardstick = float64_yardstick(classifier, tile, indices, settings)
    reference = yardstick.reference.values.sum(axis=2).transpose(2, 0, 1)  # H×W×C×K → K×H×W
    bound = tile.shape[2] * yardstick.values_bound() + float32_ulp(np.abs(reference).max())
    for name, stored in maps.items():
        error = float(np.abs(np.asarray(stored, dtype=np.float64) - reference).max())
        assert error <= bound, f"{what}: the {name} map is {error:.3g} from float64, bound {bound:.3g} (shap's own values: {yardstick.values_error:.3g})"
