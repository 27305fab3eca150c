"""The float64-grounded comparisons of tests/numerics.py must still fail on a real error. Each engine
family gets one realistic fault injected into its own evaluations, where a bug would put it: a
cached context that went stale by 1e-3 (the incremental evaluators: Net's first-Linear state, the
region evaluator's stored windows and frontier deltas) or one box painted a row short (the exact
engine, also the path of imported models). The honest run passes the same comparison first."""

import numpy as np
import pytest
import torch
from helpers import random_tile
from numerics import assert_within_float32_rounding, explain_recorded, float64_yardstick
from test_fast_engine import net_classifier, top_classes, two_threads  # noqa: F401 - the module's autouse fixture
from test_region_engine import family_classifier

from aid_xai_plugin.core.explain.engine import ExplainSettings
from aid_xai_plugin.core.explain.exact_engine import ExactPartitionEngine
from aid_xai_plugin.core.explain.fast_engine import FastPartitionEngine
from aid_xai_plugin.core.explain.region_evaluator import ContextState
from aid_xai_plugin.core.explain.shap_engine import ShapPartitionEngine

pytestmark = pytest.mark.numerics

STALE_BY = 1e-3
FAULTY_CALL = 2  # the third model call: its contexts are expanded again in every case below


class FaultyEvaluate:
    """Wraps an engine's evaluate callback and corrupts call number FAULTY_CALL."""

    def __init__(self, evaluate, corrupt):
        self.evaluate, self.corrupt, self.calls, self.corrupted = evaluate, corrupt, 0, False

    def __call__(self, requests):
        call, self.calls = self.calls, self.calls + 1
        return self.corrupt(self, requests) if call == FAULTY_CALL else self.evaluate(requests)

    def __getattr__(self, name):
        return getattr(self.evaluate, name)


def stale_context(wrapper, requests):
    """The new context states of one model call are off by STALE_BY everywhere they cache values."""
    outputs, states = wrapper.evaluate(requests)
    with torch.inference_mode():
        for state in states:
            if isinstance(state, ContextState):
                for window in state.windows.values():
                    window.add_(STALE_BY)
                for *_, values in state.link[1]:
                    values.add_(STALE_BY)
            else:  # Net: the context's first-Linear output
                state.add_(STALE_BY)
    wrapper.corrupted = True
    return outputs, states


def box_a_row_short(wrapper, requests):
    """The first request's box is painted one row short, as an off-by-one in a painter would."""
    box = requests[0].box
    if box[1] - box[0] > 1:
        requests = [requests[0]._replace(box=(box[0] + 1,) + box[1:])] + list(requests[1:])
        wrapper.corrupted = True
    return wrapper.evaluate(requests)


def injecting(corrupt, made):
    """A `fault` for explain_recorded: wraps the engine's evaluate callback, kept in `made`."""

    def wrap(evaluate):
        made.append(FaultyEvaluate(evaluate, corrupt))
        return made[-1]

    return wrap


CASES = {
    "net": lambda: (net_classifier(96), (96, 96, 3)),  # at 48 px nearly every window is half the tile: evaluated in full
    "resnet18": lambda: (family_classifier("resnet18", 48, 48), (48, 48, 3)),
    "mobilenet_v3_large": lambda: (family_classifier("mobilenet_v3_large", 45, 37), (45, 37, 3)),
    "zoo": lambda: (family_classifier("zoo", 40, 36), (40, 36, 3)),
}


@pytest.mark.parametrize("family", sorted(CASES))
def test_a_stale_context_fails_the_fast_engines_comparison(family):
    classifier, shape = CASES[family]()
    tile = random_tile(shape, seed=3)
    indices = top_classes(classifier, tile, 2)
    settings = ExplainSettings(masker="blur(8,8)", max_evals=600, batch_size=32, seed=11)
    yardstick = float64_yardstick(classifier, tile, indices, settings)
    honest, traversal = explain_recorded(FastPartitionEngine(), tile, classifier, indices, settings)
    assert honest.fallback_reason is None
    assert_within_float32_rounding(honest, traversal, yardstick)
    made = []
    broken, traversal = explain_recorded(FastPartitionEngine(), tile, classifier, indices, settings, fault=injecting(stale_context, made))
    assert made[0].corrupted
    with pytest.raises(AssertionError):
        assert_within_float32_rounding(broken, traversal, yardstick)
    # by a wide margin: the fault is far above the bound, not at its edge
    assert traversal.largest_error(yardstick.traversal) > 10 * yardstick.output_bound()


@pytest.mark.parametrize("family", ["net", "resnet18"])
def test_a_box_painted_a_row_short_fails_the_exact_engines_comparisons(family):
    """The exact engine (also every imported ONNX/TorchScript model's path) is compared with shap bit
    for bit and with the float64 reference: one wrong box fails both."""
    classifier, shape = CASES[family]()
    tile = random_tile(shape, seed=3)
    indices = top_classes(classifier, tile, 2)
    settings = ExplainSettings(masker="blur(8,8)", max_evals=300, batch_size=32, seed=11)
    yardstick = float64_yardstick(classifier, tile, indices, settings)
    reference = ShapPartitionEngine().explain(tile, classifier, indices, settings)
    made = []
    broken, traversal = explain_recorded(ExactPartitionEngine(), tile, classifier, indices, settings, fault=injecting(box_a_row_short, made))
    assert made[0].corrupted
    assert not np.array_equal(broken.values, reference.values)
    with pytest.raises(AssertionError):
        assert_within_float32_rounding(broken, traversal, yardstick)
    assert traversal.largest_error(yardstick.traversal) > 10 * yardstick.output_bound()
