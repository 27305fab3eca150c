"""The planner's first-Linear update (the source's Net): its receptive field, cropped features equal to
the full ones, incremental updates equal to full evaluations, and clear reasons for the models whose
first Linear layer can't be updated (the region evaluator takes those)."""

import copy

import numpy as np
import pytest
import torch
from helpers import random_net_classifier, random_tile
from numerics import Float64Model, assert_float32_outputs
from torch import nn

from aid_xai_plugin.core.explain.layer_kinds import CannotSplit
from aid_xai_plugin.core.explain.linear_update import LinearUpdateEvaluator, WindowedLinear
from aid_xai_plugin.core.explain.model_plan import analyse, linear_step, make_plan
from aid_xai_plugin.core.explain.owen import Request
from aid_xai_plugin.core.explain.partition import masked_background
from aid_xai_plugin.core.ml.net import Net


@pytest.fixture(scope="module")
def net256():
    torch.manual_seed(0)
    return Net(num_classes=30, input_size=256).eval()


def split_model(module, height, width, bands):
    """The first-Linear step of `module`'s plan (CannotSplit where it has none)."""
    return linear_step(analyse(module, height, width, bands, "cpu"))


def test_net_front_geometry_and_split(net256):
    assert make_plan(net256, 256, 256, 3, 5000, "cpu").linear_step is not None  # Net gets the first-Linear update
    split = split_model(net256, 256, 256, 3)
    # 5×5 conv, pool 2, 3×3 conv, pool 2, 3×3 conv, pool 2: each final cell sees 24×24 pixels, 8 apart
    assert (split.rows.jump, split.rows.field, split.rows.cells) == (8, 24, 30)
    assert split.cols == split.rows and split.features == 128
    x = torch.rand(2, 3, 256, 256)
    with torch.inference_mode():
        np.testing.assert_array_equal(split.rest(split.first_linear(torch.flatten(split.front(x), 1))).numpy(), net256(x).numpy())


@pytest.mark.numerics
def test_cropped_front_equals_the_full_front(net256):
    """In float64, so that the only difference left is rounding: torch may pick another convolution
    algorithm for the smaller shape, which reorders each output's sum of (channels × 3 × 3) products,
    layer after layer; 1e-12 of the largest feature is ~4 000 float64 epsilons, while a crop one
    pixel off changes features by their own size."""
    split = split_model(copy.deepcopy(net256).double(), 256, 256, 3)
    x = torch.rand(1, 3, 256, 256, dtype=torch.float64)
    with torch.inference_mode():
        full = split.front(x)
        bound = 1e-12 * float(full.abs().max())
        for first, stop in [(0, 4), (7, 12), (26, 30), (0, 30)]:
            start, end = split.rows.input_span(first, stop)
            crop = split.front(x[:, :, start:end, start:end])
            np.testing.assert_allclose(crop.numpy(), full[:, :, first:stop, first:stop].numpy(), rtol=0, atol=bound)


def test_affected_cells_are_exactly_those_whose_field_meets_the_box(net256):
    rows = split_model(net256, 256, 256, 3).rows
    for start, stop in [(0, 1), (23, 24), (24, 25), (100, 132), (255, 256), (0, 256)]:
        expected = [cell for cell in range(rows.cells) if cell * 8 < stop and cell * 8 + 24 > start]
        first, end = rows.affected_cells(start, stop)
        assert list(range(first, end)) == expected


@pytest.mark.numerics
@pytest.mark.parametrize("size", [96, 100, 250])
def test_incremental_updates_match_full_evaluations(size):
    """At 100 and 250 px (not multiples of Net's 8 px jump) the last rows and columns lie in no
    cell's field: boxes there change no feature (before, they reached the front as windows too small
    for its convolutions and crashed the explanation), and boxes across that strip change only the
    cells they meet."""
    classifier = random_net_classifier(size, 6, seed=1, mean=0.45, std=0.25)
    tile = random_tile((size, size, 3))
    background = masked_background(tile, "blur(9,9)")
    split = split_model(classifier.module, size, size, 3)
    evaluator = LinearUpdateEvaluator(WindowedLinear(split), tile, background, classifier, "probability")
    root = (0, size, 0, size, 0, 3)
    [((_, state), _)] = evaluator.start(root)
    half = size // 2
    context = ((0, half, 0, size, 0, 3), None)  # the top half revealed
    context_state = evaluator([Request(None, state, context[0], (half, size, 0, size, 0, 3), 0)])[1][0]
    unseen = split.rows.cells * 8 + 16  # the first row no cell's 24 px field reaches
    boxes = [(60, 64, 10, 14, 0, 3), (90, 96, 90, 96, 1, 2), (48, 56, 40, 41, 0, 3), (0, size, half, size, 0, 3)]
    if unseen < size:
        boxes += [(unseen, size, 0, size, 0, 3), (half, size, unseen, size, 1, 3), (unseen - 3, size, unseen - 3, size, 0, 3)]
    outputs, states = evaluator([Request(context, context_state, box, box, 0) for box in boxes])  # (the sibling doesn't matter here)
    composed = []
    for box in boxes:
        visible = np.zeros(tile.shape, dtype=bool)
        for row0, row1, col0, col1, band0, band1 in (box, context[0]):
            visible[row0:row1, col0:col1, band0:band1] = True
        composed.append(np.where(visible, tile, background))
    expected = classifier.predict_probabilities(np.stack(composed))
    # float32 both, summed in other orders: each within 4× plain torch's error against float64
    assert_float32_outputs({"incremental": outputs}, Float64Model(classifier).scores(np.stack(composed), "probability"), expected, "incremental updates")
    assert len(states) == len(boxes) and states[0].dtype == torch.float32
    context_outputs = evaluator([Request(None, state, context[0], None, 0)])[0][0]
    for box, output, box_state in zip(boxes, outputs, states):
        if box[0] >= unseen or box[2] >= unseen:  # changes no feature: exactly the context's
            np.testing.assert_array_equal(box_state.numpy(), context_state.numpy())
            np.testing.assert_array_equal(output, context_outputs)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 16 * 16, 2)

    def forward(self, x):
        return self.fc(torch.flatten(x + self.conv(x), 1))


class LateSkip(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc1 = nn.Linear(4 * 14 * 14, 8)
        self.fc2 = nn.Linear(8 + 4 * 14 * 14, 2)

    def forward(self, x):
        features = torch.flatten(self.conv(x), 1)
        return self.fc2(torch.cat([self.fc1(features), features], 1))


@pytest.mark.parametrize(
    "module, reason",
    [
        (nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 16 * 16, 2)), "padding"),
        (nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 2)), "AdaptiveAvgPool2d"),
        (nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2)), "no convolutional layers"),
        (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.ReLU(), nn.Linear(4 * 14 * 14, 2)), "not followed by a Linear"),
        (Residual(), "feeds more than one layer"),
        (LateSkip(), "flattened features feed more than one layer"),
    ],
)
def test_models_whose_first_linear_cannot_be_updated_say_why(module, reason):
    with pytest.raises(CannotSplit, match=reason):
        split_model(module.eval(), 16, 16, 3)
