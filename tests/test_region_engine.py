"""The fast engine on modern CNNs (ResNet, MobileNet, EfficientNet, ConvNeXt and small models with
the layers they are built from): its plan's geometry, each incremental evaluation against a full
one, and whole explanations against shap's PartitionExplainer itself."""

import numpy as np
import pytest
import torch
from helpers import in_memory_classifier, random_tile, random_torchvision_classifier
from numerics import FLOOR_ULPS, ROUNDING_MULTIPLE, Float64Evaluator, assert_efficient, assert_within_float32_rounding, explain_recorded, float32_ulp, float64_yardstick
from test_fast_engine import top_classes, two_threads  # noqa: F401 - the module's autouse fixture
from torch import nn

from aid_xai_plugin.core.explain.engine import ExplainSettings, stacked_tiles_and_backgrounds
from aid_xai_plugin.core.explain.exact_engine import FullEvaluator
from aid_xai_plugin.core.explain.fast_engine import FastPartitionEngine
from aid_xai_plugin.core.explain.owen import OwenTraversal, walk
from aid_xai_plugin.core.explain.region_evaluator import RegionEvaluator
from aid_xai_plugin.core.explain.geometry import Geometry
from aid_xai_plugin.core.explain.layer_kinds import CannotSplit
from aid_xai_plugin.core.explain.model_plan import make_plan
from aid_xai_plugin.core.explain.shap_engine import ShapPartitionEngine

NUM_CLASSES = 6

pytestmark = pytest.mark.numerics


class SqueezeExcite(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, 4, 1)
        self.expand = nn.Conv2d(4, channels, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.expand(torch.relu(self.reduce(self.pool(x)))))


class LayerNorm2d(nn.LayerNorm):
    """ConvNeXt's channel LayerNorm: permute to channels-last, normalise, permute back."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Zoo(nn.Module):
    """One small network with every regional layer kind the planner knows: 'same', strided, dilated
    and depthwise convolutions, padded max and average pooling, BatchNorm, ReLU6/Hardswish/SiLU/GELU,
    a residual sum, a channel concatenation, a ConvNeXt-style channels-last block with a layer scale,
    and a squeeze-and-excitation block before the global pooling head."""

    def __init__(self, bands, num_classes):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(bands, 8, 3, padding="same"), nn.BatchNorm2d(8), nn.ReLU6())
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.dilated = nn.Sequential(nn.Conv2d(8, 8, 3, padding=2, dilation=2), nn.BatchNorm2d(8), nn.Hardswish())
        self.depthwise = nn.Sequential(nn.Conv2d(16, 16, 5, stride=2, padding=2, groups=16), nn.BatchNorm2d(16), nn.SiLU())
        self.average = nn.AvgPool2d(3, stride=1, padding=1)
        self.norm = LayerNorm2d(16)
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.scale = nn.Parameter(torch.full((16, 1, 1), 0.5))
        self.excite = SqueezeExcite(16)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.pool(self.stem(x))
        x = torch.cat([x, self.dilated(x) + x], 1)
        x = self.average(self.depthwise(x))
        x = x + self.scale * self.mlp(self.norm(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.excite(x)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def zoo_classifier(bands, height, width, seed=0):
    torch.manual_seed(seed)
    module = Zoo(bands, NUM_CLASSES)
    module.train()
    with torch.no_grad():  # BatchNorm statistics of real activations, then a spread of logits
        module(torch.randn(8, bands, height, width))
    module.eval()
    with torch.no_grad():
        spread = float(module(torch.randn(8, bands, height, width)).std())
        module.head.weight.mul_(3.0 / spread)
    return in_memory_classifier(module, height, NUM_CLASSES, bands, mean=0.45, std=0.25)


def family_classifier(family, height, width, bands=3):
    if family == "zoo":
        return zoo_classifier(bands, height, width)
    return random_torchvision_classifier(family, (height, width), NUM_CLASSES, bands=bands)


# --- geometry ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel, stride, padding, dilation", [(3, 1, 1, 1), (7, 2, 3, 1), (3, 2, 1, 1), (5, 1, 4, 2), (3, 3, 0, 1), (2, 2, 0, 1), (1, 2, 0, 1)])
def test_changed_and_needed_cells_match_a_real_convolution(kernel, stride, padding, dilation):
    """Changing input cells [a, b) changes only the output cells `changed` names, and the output
    cells of any interval are reproduced exactly from the input cells `needed` says they read
    (zero padding put in explicitly)."""
    generator = torch.Generator().manual_seed(kernel * 100 + stride * 10 + padding)
    size = 23
    conv = nn.Conv2d(1, 1, (kernel, 1), stride=(stride, 1), padding=(padding, 0), dilation=(dilation, 1), bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.rand(conv.weight.shape, generator=generator) + 0.5)
    x = torch.rand((1, 1, size, 1), generator=generator) + 0.5
    with torch.no_grad():
        reference = conv(x)
    geometry = Geometry(kernel, stride, padding, dilation, reference.shape[2])
    for start in range(size):
        for stop in range(start + 1, min(size, start + 6) + 1):
            changed_x = x.clone()
            changed_x[0, 0, start:stop] += 1.0
            with torch.no_grad():
                differs = (conv(changed_x) != reference)[0, 0, :, 0].numpy()
            first, last = (int(value.item()) for value in geometry.changed(np.array([start]), np.array([stop])))
            assert not differs[:first].any() and not differs[last:].any()
            assert differs[first:last].any() or first == last
    for start in range(reference.shape[2]):
        for stop in range(start + 1, reference.shape[2] + 1):
            low, high = geometry.needed(start, stop)
            window = torch.zeros((1, 1, high - low, 1))
            inside = slice(max(low, 0), min(high, size))
            window[0, 0, inside.start - low : inside.stop - low] = x[0, 0, inside]
            with torch.no_grad():
                cropped = nn.functional.conv2d(window, conv.weight, None, (stride, 1), 0, (dilation, 1))
            # two float32 sums of at most 7 positive products (weights and inputs in [0.5, 1.5]), each within
            # 7·2^-24 ≈ 4.2e-7 of the exact sum relative to itself, whatever order a kernel adds them in
            np.testing.assert_allclose(cropped[0, 0, :, 0].numpy(), reference[0, 0, start:stop, 0].numpy(), rtol=2 * 7 * 2.0**-24, atol=0)


# --- plans ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "family, stops_at",
    [
        ("resnet18", "changed region covers"),
        ("mobilenet_v3_large", "AdaptiveAvgPool2d at features.4.block.2.avgpool (global pooling reads the whole map)"),
        ("efficientnet_b0", "AdaptiveAvgPool2d at features.1.0.block.1.avgpool (global pooling reads the whole map)"),
        ("convnext_tiny", "changed region covers"),
        ("zoo", "AdaptiveAvgPool2d at excite.pool (global pooling reads the whole map)"),
    ],
)
def test_plans_say_where_incremental_evaluation_ends(family, stops_at):
    classifier = family_classifier(family, 224, 224) if family != "zoo" else zoo_classifier(3, 224, 224)
    plan = make_plan(classifier.module, 224, 224, 3, 5000, "cpu")
    assert stops_at in plan.ends_because
    assert 0 < plan.expected_fraction < 0.97
    assert plan.rest_flops < plan.full_flops


def test_models_torch_fx_cannot_trace_fall_back_to_the_exact_engine():
    class Branching(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4, NUM_CLASSES)

        def forward(self, x):
            x = self.conv(x)
            if x.mean() > 0:  # data-dependent control flow: no static graph
                x = torch.relu(x)
            return self.fc(x.mean((2, 3)))

    torch.manual_seed(0)
    classifier = in_memory_classifier(Branching().eval(), 0, NUM_CLASSES, 3, mean=0.45, std=0.25)
    tile = random_tile((9, 11, 3))
    settings = ExplainSettings(masker="blur(3,3)", max_evals=120, batch_size=16)
    explanation = FastPartitionEngine().explain(tile, classifier, [0, 1], settings)
    assert "can't be traced with torch.fx" in explanation.fallback_reason
    assert FastPartitionEngine().cost_per_evaluation(classifier, tile.shape, settings) == 1.0  # MAX_TILES prices it as exact
    with pytest.raises(CannotSplit, match="can't be traced"):
        make_plan(classifier.module, 9, 11, 3, 120, "cpu")


# --- incremental evaluations against full ones ------------------------------------------------


# convnext_tiny's float64 evaluations are the suite's slowest (~0.1 s each here): half the evaluations
@pytest.mark.parametrize("family, shape, max_evals", [("resnet18", (64, 57, 3), 3000), ("mobilenet_v3_large", (61, 64, 3), 3000), ("convnext_tiny", (64, 64, 3), 1500), ("zoo", (45, 37, 2), 3000)])
def test_every_incremental_evaluation_equals_a_full_one(family, shape, max_evals):
    """Run shap's traversal with the region evaluator and check every batch of its outputs against
    float64 evaluations of the same masked tiles (the original module, unfolded): each is within
    ROUNDING_MULTIPLE × the float32 error of shap's own full evaluations of those tiles (+ the floor)."""
    evaluator, _ = check_every_evaluation(family, shape, max_evals)
    assert 1.0 < evaluator.flop_bound()


@pytest.mark.parametrize("family, shape", [("resnet18", (64, 57, 3)), ("zoo", (45, 37, 2))])
def test_contexts_evaluated_in_full_are_extended_from_their_full_maps(monkeypatch, family, shape):
    """A request whose changed region would cost more than the whole model is evaluated in full, and
    its context's state is cut from the full maps. Priced at four times their FLOPs, regions covering
    a quarter of the planned maps go in full (measured: 1 221 of 2 002 evaluations for resnet18, 90
    for zoo, whose plan reaches further; 1 592 and 908 requests extended their states). Later
    requests extend those states regionally, and every evaluation still matches the float64 one as
    closely as shap's."""
    from aid_xai_plugin.core.explain import region_evaluator

    monkeypatch.setattr(region_evaluator, "REGIONAL_COST", 4.0)
    evaluator, extended_from_whole = check_every_evaluation(family, shape, 2000)
    assert evaluator.whole_evaluations > 50
    assert evaluator.evaluations - evaluator.whole_evaluations > 500  # … and most were still regional
    assert extended_from_whole > 50, extended_from_whole


def check_every_evaluation(family, shape, max_evals):
    """(the evaluator, how many requests extended a context evaluated in full) of a traversal whose
    every evaluation was checked against the float64 one."""
    classifier = family_classifier(family, *shape)
    tile = random_tile(shape, seed=5)
    image, background = stacked_tiles_and_backgrounds([tile], ExplainSettings(masker="blur(9,9)"))
    plan = make_plan(classifier.module, *shape, max_evals, "cpu")
    classes = np.arange(NUM_CLASSES)
    evaluator = RegionEvaluator(plan, image, background, classifier, "logit")
    full32 = FullEvaluator(image, background, classifier, 64, "logit")
    full64 = Float64Evaluator(image, background, classifier, 64, "logit")
    root = (0, shape[0], 0, shape[1], 0, shape[2])
    [((base, state), full)] = evaluator.start(root)
    errors = {"fast": [np.abs(base - full64.scores([None], [0])[0]).max()], "shap": [np.abs(full32.scores([None], [0])[0] - full64.scores([None], [0])[0]).max()]}
    made_whole, extended_from_whole = set(), [0]
    evaluate_whole = evaluator._evaluate_whole

    def recorded_whole(members):
        results = evaluate_whole(members)
        made_whole.update(id(state) for _, state in results)
        return results

    def checking(requests):
        extended_from_whole[0] += sum(id(request.state) in made_whole for request in requests)
        outputs, states = evaluator(requests)
        box_lists, tiles = [(request.box, request.visible) for request in requests], [0] * len(requests)
        expected = full64.scores(box_lists, tiles)
        errors["fast"].append(np.abs(outputs - expected).max())
        errors["shap"].append(np.abs(full32.scores(box_lists, tiles) - expected).max())
        return outputs, states

    evaluator._evaluate_whole = recorded_whole
    walk(checking, [OwenTraversal(root, (base, state), full, classes, max_evals, 128, np.random.RandomState(0))])
    assert len(errors["fast"]) >= (2 * max_evals // 3) // 128  # the traversal ran: most evaluations were checked
    bound = ROUNDING_MULTIPLE * max(errors["shap"]) + FLOOR_ULPS * float32_ulp(np.abs(full).max())
    assert max(errors["fast"]) <= bound, f"incremental evaluations {max(errors['fast']):.3g} from float64, full float32 ones {max(errors['shap']):.3g}"
    return evaluator, extended_from_whole[0]


# --- whole explanations against shap -----------------------------------------------------------


def assert_fast_matches_shap(classifier, tile, indices, settings, engine):
    """The fast engine walks shap's traversal, and its evaluations, f(tile), f(masked tile) and
    values are the float64 reference's up to float32 rounding no larger than shap's own
    (tests/numerics.py: shap's values and model calls are the exact engine's in float32)."""
    yardstick = float64_yardstick(classifier, tile, indices, settings)
    fast, traversal = explain_recorded(engine, tile, classifier, indices, settings)
    assert fast.values.shape == tile.shape + (len(indices),)
    assert np.abs(yardstick.reference.values).max() > 1e-4  # the model's outputs do depend on the tile: the comparison is not float32 noise
    assert_within_float32_rounding(fast, traversal, yardstick, "the fast engine")
    assert_efficient(fast, settings.max_evals)
    return fast


@pytest.mark.parametrize(
    "family, shape, masker, max_evals, classes, incremental",
    [
        ("resnet18", (33, 47, 3), "blur(33,47)", 800, 4, True),
        ("resnet18", (7, 9, 3), "0.5", 4000, 1, False),  # deep enough to split single pixels into channels
        ("resnet18", (64, 64, 3), "blur(8,8)", 2000, 4, True),
        ("mobilenet_v3_large", (45, 37, 3), "blur(45,37)", 1500, 4, True),
        ("mobilenet_v3_large", (7, 9, 3), "0", 4000, 1, False),
        ("efficientnet_b0", (32, 32, 3), "0.25", 700, 4, True),
        ("efficientnet_b0", (9, 7, 3), "0.5", 4000, 4, False),
        ("convnext_tiny", (64, 61, 3), "blur(64,61)", 800, 1, True),  # convnext: the slowest float64 evaluations
        ("convnext_tiny", (64, 64, 3), "0", 1500, 4, True),
        ("zoo", (7, 9, 2), "blur(5,5)", 4000, 4, True),  # two bands
        ("zoo", (40, 36, 3), "0.5", 900, 1, True),
    ],
)
def test_fast_engine_matches_shap_on_modern_cnns(family, shape, masker, max_evals, classes, incremental):
    """On tiny tiles a revealed box changes whole maps after a few layers, so the engine falls back
    to the exact one; those cases test that path and the single-channel boxes."""
    classifier = family_classifier(family, shape[0], shape[1], shape[2])
    tile = random_tile(shape, seed=3)
    indices = top_classes(classifier, tile, classes)
    settings = ExplainSettings(masker=masker, max_evals=max_evals, batch_size=64, seed=11)
    engine = FastPartitionEngine()
    if incremental:
        fast = assert_fast_matches_shap(classifier, tile, indices, settings, engine)
        assert engine.plan_summary().startswith("incremental through")
        assert fast.fallback_reason is None and fast.flop_bound > 1.0
    else:  # the exact engine: shap's values bit for bit (the same model calls, the same arithmetic)
        fast = engine.explain(tile, classifier, indices, settings)
        assert "incremental evaluation would save under 3 %" in fast.fallback_reason
        reference = ShapPartitionEngine().explain(tile, classifier, indices, settings)
        for name in ("values", "base_values", "output_values"):
            np.testing.assert_array_equal(getattr(fast, name), getattr(reference, name), err_msg=name)
    if max_evals >= 4000:  # the tree reached single channels, which then get different credit
        assert np.abs(np.diff(fast.values, axis=2)).max() > 0


@pytest.mark.parametrize("budget", [1, 48 << 20])
def test_contexts_whose_states_were_released_are_evaluated_from_an_earlier_context(monkeypatch, budget):
    """With little memory for context states (none at all, or a few MB), many expanded nodes have
    lost theirs: they are evaluated from the nearest earlier context of their line that holds one,
    on the box covering everything revealed since, and the values still match the float64 reference
    as closely as shap's do. With a few MB many of those anchors are recent contexts, not the tile's
    background, and their regions stay well inside the tile."""
    from aid_xai_plugin.core.explain import region_evaluator

    anchors = []

    def recorded_anchor_of(context, box):
        anchor, region = anchor_of(context, box)
        if anchor is not context:
            anchors.append((anchor.link is None, (region[1] - region[0]) * (region[3] - region[2])))
        return anchor, region

    anchor_of = region_evaluator.anchor_of
    monkeypatch.setattr(region_evaluator, "STATE_MEMORY_BUDGET", budget)
    monkeypatch.setattr(region_evaluator, "anchor_of", recorded_anchor_of)
    classifier = family_classifier("resnet18", 64, 64)
    tile = random_tile((64, 64, 3), seed=3)
    settings = ExplainSettings(masker="blur(8,8)", max_evals=2000, batch_size=64, seed=11)
    engine = FastPartitionEngine()
    fast = assert_fast_matches_shap(classifier, tile, top_classes(classifier, tile, 4), settings, engine)
    assert fast.fallback_reason is None
    assert engine.anchored_evaluations == len(anchors) > 100
    assert engine.whole_evaluations > 100 and fast.flop_bound > 1.0  # regions reaching far back ran in full (measured 938 with no memory, 466 with 48 MB): no configuration executes more FLOPs than full evaluations
    from_recent_contexts = [area for from_background, area in anchors if not from_background]
    if budget > 1:  # measured: 608 of 1 546 (39 %), median region 384 px (with no memory: 112 of 1 884)
        assert len(from_recent_contexts) > len(anchors) / 4
        assert np.median(from_recent_contexts) <= 64 * 64 / 4
