"""The exact engine must give shap's PartitionExplainer values bit for bit (same traversal, same
tie-breaks, the same model calls in the same chunks, the same float64 arithmetic) for the blur and
constant maskers, on real Classifiers around small random-weight models; the fast (incremental)
engine must give the float64 reference's values up to float32 rounding as large as shap's own
(tests/numerics.py), and fall back to the exact engine for models it can't analyse."""

import numpy as np
import pytest
import torch
from helpers import in_memory_classifier, random_net_classifier, random_tile, tied_classifier_and_tile
from numerics import assert_efficient, assert_within_float32_rounding, explain_recorded, float64_yardstick
from torch import nn

from aid_xai_plugin.core.common.errors import AidXaiError
from aid_xai_plugin.core.explain.engine import ExplainSettings
from aid_xai_plugin.core.explain.exact_engine import ExactPartitionEngine
from aid_xai_plugin.core.explain.fast_engine import FastPartitionEngine
from aid_xai_plugin.core.explain.registry import engine_by_name
from aid_xai_plugin.core.explain.shap_engine import ShapPartitionEngine

pytestmark = pytest.mark.numerics

NUM_CLASSES = 6


class TinyConvNet(nn.Module):
    """Works on any tile size (even 7×9), unlike Net, so odd shapes and single-pixel budgets are
    testable; its padded convolution and adaptive pooling take the fast engine's general planner."""

    def __init__(self, bands, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(bands, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


def valid_conv_net(bands, num_classes, height, width):
    """An unpadded CNN with a stride-2 convolution, batch norm, average pooling and assorted
    activations, so the fast engine's receptive-field analysis is exercised beyond Net's layers."""
    front = [nn.Conv2d(bands, 8, 3, stride=2), nn.BatchNorm2d(8), nn.LeakyReLU(0.1), nn.Conv2d(8, 12, 3), nn.GELU(), nn.AvgPool2d(2)]
    if min(height, width) < 14:
        front = [nn.Conv2d(bands, 8, 3), nn.ReLU()]
    probe = nn.Sequential(*front)(torch.zeros(1, bands, height, width))
    module = nn.Sequential(*front, nn.Flatten(), nn.Linear(probe[0].numel(), 16), nn.Tanh(), nn.Linear(16, num_classes))
    with torch.no_grad():
        module[-1].weight.mul_(6.0)
        for layer in module:
            if isinstance(layer, nn.BatchNorm2d):
                layer.running_mean.uniform_(-0.2, 0.2)
                layer.running_var.uniform_(0.5, 2.0)
    return module


def make_classifier(module, bands, input_size):
    """This file's classifiers: NUM_CLASSES classes, mean 0.45 and std 0.25 on every band."""
    return in_memory_classifier(module, input_size, NUM_CLASSES, bands, mean=0.45, std=0.25)


@pytest.fixture(scope="module", autouse=True)
def two_threads():
    """Two torch threads (CI's cores), or AID_XAI_TEST_THREADS (`make test-numerics` varies it)."""
    import os

    previous = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("AID_XAI_TEST_THREADS", "2")))
    yield
    torch.set_num_threads(previous)


def tiny_classifier(bands, seed=0):
    torch.manual_seed(seed)
    # a larger output scale keeps probabilities away from uniform so priorities differ
    module = TinyConvNet(bands, NUM_CLASSES)
    with torch.no_grad():
        module.fc.weight.mul_(8.0)
    return make_classifier(module, bands, 0)


def net_classifier(input_size, seed=0):
    return random_net_classifier(input_size, NUM_CLASSES, seed=seed, mean=0.45, std=0.25)


def top_classes(classifier, tile, count):
    return np.argsort(-classifier.predict_probabilities(tile[None])[0])[:count]


def assert_same_explanation(classifier, tile, class_indices, settings):
    """The exact engine's explanation is shap's, bit for bit: it evaluates the same float32 tiles in
    the same chunks (so the model returns the same bits on any CPU) and accumulates and spreads the
    credit in shap's order and precision. Returns the exact engine's explanation."""
    reference = ShapPartitionEngine().explain(tile, classifier, class_indices, settings)
    exact = ExactPartitionEngine().explain(tile, classifier, class_indices, settings)
    assert exact.values.shape == reference.values.shape == tile.shape + (len(class_indices),)
    assert exact.values.dtype == np.float64
    for name in ("values", "base_values", "output_values", "class_indices"):
        np.testing.assert_array_equal(getattr(exact, name), getattr(reference, name), err_msg=name)
    assert_efficient(exact, settings.max_evals)
    return exact


def assert_fast_matches_shap(classifier, tile, class_indices, settings):
    """The fast engine walks shap's traversal and its values are the float64 reference's up to
    float32 rounding no larger than shap's own (tests/numerics.py); returns its explanation."""
    yardstick = float64_yardstick(classifier, tile, class_indices, settings)
    fast, traversal = explain_recorded(FastPartitionEngine(), tile, classifier, class_indices, settings)
    assert fast.fallback_reason is None  # the values came from incremental evaluations
    assert fast.values.shape == tile.shape + (len(class_indices),) and fast.values.dtype == np.float64
    assert_within_float32_rounding(fast, traversal, yardstick, "the fast engine")
    assert_efficient(fast, settings.max_evals)
    return fast


@pytest.mark.parametrize(
    "shape, masker, max_evals, batch_size",
    [
        ((7, 9, 3), "blur(3,3)", 40, 16),
        ((7, 9, 3), "blur(3,3)", 500, 16),
        ((7, 9, 3), "0.5", 4000, 64),  # deep enough to split down to single pixels and channels
        ((7, 9, 3), "blur(2,5)", 4000, 7),  # odd batch: shap's batches may run one evaluation over
        ((5, 4, 2), "0", 3000, 8),
        ((6, 5, 1), "blur(3,3)", 300, 16),  # one band: cv2.blur returns a 2-D array
        ((64, 48, 3), "blur(16,16)", 800, 32),
        ((64, 48, 3), "0.25", 300, 128),
    ],
)
def test_matches_shap_on_odd_shapes(shape, masker, max_evals, batch_size):
    classifier = tiny_classifier(shape[2])
    tile = random_tile(shape)
    settings = ExplainSettings(masker=masker, max_evals=max_evals, batch_size=batch_size, seed=7)
    fast = assert_same_explanation(classifier, tile, top_classes(classifier, tile, 4), settings)
    if max_evals >= 3000:  # the budget reached single channels, which then get different credit
        assert np.abs(np.diff(fast.values, axis=2)).max() > 0


@pytest.mark.parametrize(
    "size, classes, masker, max_evals, batch_size",
    [
        (32, "top1", "blur(32,32)", 500, 64),
        (32, "top4", "blur(8,8)", 1200, 64),
        (32, [5, 0, 3], "0.5", 700, 64),
        (32, [2], "blur(5,5)", 3, 64),  # no room for any split: everything stays on the root
        (48, "top4", "blur(48,48)", 2000, 128),
    ],
)
def test_matches_shap_on_net(size, classes, masker, max_evals, batch_size):
    classifier = net_classifier(size)
    tile = random_tile((size, size, 3), seed=3)
    indices = top_classes(classifier, tile, int(classes[3:])) if isinstance(classes, str) else np.array(classes)
    settings = ExplainSettings(masker=masker, max_evals=max_evals, batch_size=batch_size, seed=11)
    assert_same_explanation(classifier, tile, indices, settings)


def test_ties_follow_shaps_random_draws():
    """A pixel-symmetric model on a uniform tile, with dyadic values so every sum is exact: boxes of
    a level tie exactly, only the seeded np.random draws order shap's queue, and shap's values change
    with the seed. Both engines must reproduce each seed's values bit for bit."""
    classifier, tile = tied_classifier_and_tile(7, 9)
    for max_evals in (20, 40):
        by_seed = []
        for seed in (0, 1, 2):
            # probabilities: the softmax makes the model non-additive, so the order of the tied boxes matters
            settings = ExplainSettings(masker="0.25", max_evals=max_evals, batch_size=4, seed=seed, output_space="probability")
            reference = ShapPartitionEngine().explain(tile, classifier, [0], settings).values
            for engine in (ExactPartitionEngine(), FastPartitionEngine()):
                explanation = engine.explain(tile, classifier, [0], settings)
                np.testing.assert_array_equal(explanation.values, reference)
                assert explanation.fallback_reason is None  # the fast engine did evaluate incrementally
            by_seed.append(reference)
        assert any(not np.array_equal(by_seed[0], other) for other in by_seed[1:])


def test_inpaint_is_delegated_to_shap():
    classifier = tiny_classifier(3)
    tile = random_tile((7, 9, 3))
    settings = ExplainSettings(masker="inpaint_telea", max_evals=60, batch_size=16, seed=0)
    reference = ShapPartitionEngine().explain(tile, classifier, [1], settings)
    for engine in (ExactPartitionEngine(), FastPartitionEngine()):
        explanation = engine.explain(tile, classifier, [1], settings)
        np.testing.assert_array_equal(explanation.values, reference.values)
        assert "inpaint_telea needs shap's own masking" in explanation.fallback_reason


@pytest.mark.parametrize(
    "size, classes, masker, max_evals, batch_size",
    [
        (48, "top4", "blur(48,48)", 2000, 128),
        (64, "top1", "0.5", 3000, 64),
        (64, [5, 0, 3], "blur(8,8)", 1500, 32),
        (96, "top4", "blur(96,96)", 2500, 128),
        (36, "top4", "blur(36,36)", 2000, 64),  # 36 = 4·8 + 4: boxes in the last 4 rows/columns reach no cell
    ],
)
def test_fast_engine_matches_shap_on_net(size, classes, masker, max_evals, batch_size):
    classifier = net_classifier(size)
    tile = random_tile((size, size, 3), seed=3)
    indices = top_classes(classifier, tile, int(classes[3:])) if isinstance(classes, str) else np.array(classes)
    assert_fast_matches_shap(classifier, tile, indices, ExplainSettings(masker=masker, max_evals=max_evals, batch_size=batch_size, seed=11))


@pytest.mark.parametrize(
    "shape, masker, max_evals, batch_size",
    [
        ((7, 9, 3), "blur(3,3)", 4000, 64),  # deep enough to split down to single pixels and channels
        ((7, 9, 3), "0.5", 300, 16),
        ((64, 48, 3), "blur(16,16)", 1500, 128),
        ((45, 37, 3), "0.25", 1000, 64),
        ((40, 40, 1), "blur(5,5)", 800, 32),
    ],
)
def test_fast_engine_matches_shap_on_other_cnns(shape, masker, max_evals, batch_size):
    torch.manual_seed(2)
    classifier = make_classifier(valid_conv_net(shape[2], NUM_CLASSES, *shape[:2]).eval(), shape[2], 0)
    tile = random_tile(shape)
    fast = assert_fast_matches_shap(classifier, tile, top_classes(classifier, tile, 4), ExplainSettings(masker=masker, max_evals=max_evals, batch_size=batch_size, seed=5))
    if max_evals >= 3000:
        assert np.abs(np.diff(fast.values, axis=2)).max() > 0


def test_the_tile_budget_prices_the_evaluation_the_fast_engine_will_run():
    """The automatic MAX_TILES limit prices a tile by what the fast engine will really do: Net's
    windowed front, a planned model's expected FLOP share, shap's cost where only shap can mask
    (and the exact engine's for models it can't analyse: test_region_engine)."""
    settings = ExplainSettings(masker="blur(8,8)", max_evals=1000)
    engine = FastPartitionEngine()
    assert engine.cost_per_evaluation(net_classifier(64), (64, 64, 3), settings) == 0.1
    planned = engine.cost_per_evaluation(tiny_classifier(3), (64, 48, 3), settings)
    assert planned == engine._prepared.plan.expected_fraction and 0.0 < planned < 1.0
    inpainting = ExplainSettings(masker="inpaint_telea", max_evals=1000)
    assert engine.cost_per_evaluation(net_classifier(64), (64, 64, 3), inpainting) == ShapPartitionEngine().cost_per_evaluation(None, (64, 64, 3), inpainting) == 2.0
    assert ExactPartitionEngine().cost_per_evaluation(None, (64, 64, 3), settings) == 1.0


def test_engine_by_name():
    assert isinstance(engine_by_name("fast"), FastPartitionEngine)
    assert isinstance(engine_by_name("Exact"), ExactPartitionEngine)
    assert isinstance(engine_by_name(" SHAP "), ShapPartitionEngine)
    with pytest.raises(AidXaiError, match="Unknown explanation engine"):
        engine_by_name("lime")


def test_one_fast_engine_serves_many_tiles_and_models():
    """The engine analyses a model once per tile shape; later tiles and another model must give the
    same values as a fresh engine would."""
    settings = ExplainSettings(masker="blur(8,8)", max_evals=400, batch_size=32, seed=1)
    first, second = net_classifier(48, seed=0), net_classifier(48, seed=1)
    tiles = [random_tile((48, 48, 3), seed=seed) for seed in (1, 2)]
    shared = FastPartitionEngine()
    for classifier in (first, second):
        for tile in tiles:
            np.testing.assert_array_equal(
                shared.explain(tile, classifier, [0, 1], settings).values, FastPartitionEngine().explain(tile, classifier, [0, 1], settings).values
            )


@pytest.mark.parametrize("space", ["logit", "probability", "log_probability"])
@pytest.mark.parametrize("model", ["tiny", "net", "valid_conv"])
def test_every_engine_matches_shap_in_every_output_space(space, model):
    """Each engine explains the same predict function as shap does in each space, and the values add
    up to f(tile) − f(masked tile) in that space."""
    if model == "tiny":
        classifier, tile = tiny_classifier(3), random_tile((7, 9, 3))
    elif model == "net":
        classifier, tile = net_classifier(48), random_tile((48, 48, 3), seed=4)
    else:
        torch.manual_seed(2)
        classifier, tile = make_classifier(valid_conv_net(3, NUM_CLASSES, 40, 36).eval(), 3, 0), random_tile((40, 36, 3))
    settings = ExplainSettings(masker="blur(8,8)", max_evals=900, batch_size=64, seed=3, output_space=space)
    indices = top_classes(classifier, tile, 3)
    exact = assert_same_explanation(classifier, tile, indices, settings)
    assert_fast_matches_shap(classifier, tile, indices, settings)
    expected_outputs = classifier.predict_outputs(tile[None], space)[0][indices]
    np.testing.assert_array_equal(exact.output_values, expected_outputs)  # the same model call
    if space == "probability":
        assert np.all((exact.output_values >= 0) & (exact.output_values <= 1))
    elif space == "log_probability":
        assert np.all(exact.output_values <= 0)


def test_unknown_output_space_is_a_clear_error():
    classifier = tiny_classifier(3)
    with pytest.raises(AidXaiError, match="Unknown output space 'odds'"):
        classifier.predict_outputs(random_tile((7, 9, 3))[None], "odds")
