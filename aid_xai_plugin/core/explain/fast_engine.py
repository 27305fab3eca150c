"""The fast engine (the default): shap's PartitionExplainer values by incremental evaluation.

It walks shap's tree in shap's order (`owen.py`) like the exact engine, but evaluates each
masked tile incrementally: every masked tile is an already evaluated context plus one revealed box,
so only the features near that box are recomputed. `model_plan.py` analyses the model once per tile
shape and budget (BatchNorm folded into the convolutions) and plans one of two evaluators:
- a chain of unpadded layers, a flatten and a Linear layer (the source's Net): `linear_update.py`
  runs the front on a window around the box and updates the first Linear layer's output;
- any other CNN torch.fx can trace (ResNet, MobileNet, EfficientNet, ConvNeXt, …):
  `region_evaluator.py` recomputes the planned layers on the changed region, the layers after the
  plan's frontier in full (channels-last).
Values agree with shap's to float32 rounding (tested: every evaluation and value within 4× shap's
own float32 error against a float64 reference, tests/numerics.py) while both expand the same nodes;
at a near-tie of priorities within float32 rounding they may expand different ones. Models that can't
be traced, or where incremental evaluation would save next to nothing (a revealed box soon changes
whole maps, or a squeeze-and-excitation block comes first), fall back to the exact engine (shap's
values bit for bit), inpainting maskers to shap; the explanation then carries the reason. Within a
plan, a request whose changed region would cost more than the whole model runs the whole model.
With many tiles in flight, one evaluator takes the rounds of all of them, so each layer runs once
per box shape for every tile's requests.
"""

import dataclasses

import numpy as np

from .engine import ExplanationEngine, explained_by_traversals, needs_shap_masking, stacked_tiles_and_backgrounds
from .exact_engine import ExactPartitionEngine
from .layer_kinds import CannotSplit
from .linear_update import LinearUpdateEvaluator, WindowedLinear
from .model_plan import make_plan
from .region_evaluator import RegionEvaluator
from .shap_engine import ShapPartitionEngine, explained_by_shap


@dataclasses.dataclass
class _PreparedModel:
    key: tuple
    plan: object = None  # the plan for this model, tile shape and budget …
    windowed: WindowedLinear = None  # … with its first Linear weight by window for a first-Linear plan
    cannot_split: str = None  # … or why there is none


class FastPartitionEngine(ExplanationEngine):
    """Incremental evaluations where the model can be analysed, else the exact engine."""

    name = "fast"

    def __init__(self):
        self._prepared = None
        self.anchored_evaluations = 0  # in the last tiles explained: evaluations from an earlier context's state (theirs was released)
        self.whole_evaluations = 0  # … and evaluations in full, where the changed region would have cost more

    def _prepare(self, module, shape, max_evals, device):
        """Analyse the model once for all the tiles of one shape and budget this engine explains
        (only the latest model is kept: its analysis holds a copy of the weights)."""
        key = (id(module), module, tuple(shape), max_evals)
        if self._prepared is None or self._prepared.key[1] is not module or self._prepared.key[2:] != key[2:]:
            try:
                plan = make_plan(module, shape[0], shape[1], shape[2], max_evals, device)
            except CannotSplit as reason:
                self._prepared = _PreparedModel(key, cannot_split=str(reason))
            else:
                self._prepared = _PreparedModel(key, plan, WindowedLinear(plan.linear_step) if plan.linear_step is not None else None)
        return self._prepared

    def cost_per_evaluation(self, classifier, shape, settings):
        """As the evaluation this tile shape will really take: the plan's expected share of a full
        evaluation, or the engine it falls back to."""
        if needs_shap_masking(settings.masker):
            return ShapPartitionEngine().cost_per_evaluation(classifier, shape, settings)
        prepared = self._prepare(classifier.module, shape, settings.max_evals, classifier.device)
        if prepared.plan is not None:
            return prepared.plan.expected_fraction
        return ExactPartitionEngine().cost_per_evaluation(classifier, shape, settings)

    def plan_summary(self):
        """How the last prepared model is evaluated, in one line (for logs and benchmarks)."""
        prepared = self._prepared
        if prepared is None:
            return "no model prepared yet"
        if prepared.plan is None:
            return f"exact engine: {prepared.cannot_split}"
        plan = prepared.plan
        if plan.linear_step is not None:
            return f"incremental: convolutional front ({len(plan.layers) - 1} layers) on windows, first Linear layer updated"
        frontier = ", ".join(plan.layers[position].node.name for position in plan.frontier)
        return f"incremental through {len(plan.layers) - 1} layers up to {frontier}, then in full ({plan.ends_because}); expected FLOP share {plan.expected_fraction:.2f}"

    def explain_tiles(self, images_hwc, classifier, class_indices, settings, progress=None, rivals=None, backgrounds=None):
        tiles = stacked_tiles_and_backgrounds(images_hwc, settings, backgrounds)
        if tiles is None:
            return explained_by_shap(images_hwc, classifier, class_indices, settings, progress, rivals)
        prepared = self._prepare(classifier.module, tiles[0].shape[1:], settings.max_evals, classifier.device)
        if prepared.cannot_split is not None:
            results = ExactPartitionEngine().explain_tiles(images_hwc, classifier, class_indices, settings, progress, rivals, backgrounds)
            return [dataclasses.replace(result, fallback_reason=prepared.cannot_split) for result in results]
        if prepared.windowed is not None:
            evaluator = LinearUpdateEvaluator(prepared.windowed, *tiles, classifier, settings.output_space)
        else:
            evaluator = RegionEvaluator(prepared.plan, *tiles, classifier, settings.output_space)
        results = explained_by_traversals(evaluator, tiles[0], class_indices, settings, progress, rivals)
        self.anchored_evaluations = getattr(evaluator, "anchored_evaluations", 0)
        self.whole_evaluations = getattr(evaluator, "whole_evaluations", 0)
        return [dataclasses.replace(result, flop_bound=evaluator.flop_bound()) for result in results]
