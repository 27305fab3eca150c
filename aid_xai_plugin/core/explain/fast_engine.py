"""The fast engine (the default): shap's PartitionExplainer values by incremental evaluation.

It walks shap's tree in shap's order (`partition.py`) like the exact engine, but evaluates each
masked tile incrementally: every masked tile is an already evaluated context plus one revealed box,
so only the features near that box are recomputed. Two evaluators do that:
- models with an unpadded convolutional front, a flatten and a Linear layer (the source's Net):
  `incremental.py` updates the first Linear layer's output from the changed features;
- any other CNN torch.fx can trace (ResNet, MobileNet, EfficientNet, ConvNeXt, …): `region_plan.py`
  plans which layers are recomputed on the changed region (BatchNorm folded into the convolutions)
  and `region_evaluator.py` runs them, the layers after the plan's frontier in full (channels-last).
Values agree with shap's to float32 rounding (tested: every evaluation and value within 4× shap's
own float32 error against a float64 reference, tests/numerics.py) while both expand the same nodes;
at a near-tie of priorities within float32 rounding they may expand different ones. Models that can't
be traced, or where incremental evaluation would save next to nothing (a revealed box soon changes
whole maps, or a squeeze-and-excitation block comes first), fall back to the exact engine (shap's
values bit for bit), inpainting maskers to shap; the explanation then carries the reason.
"""

import dataclasses

import numpy as np

from .box_painter import explanation_from_nodes, needs_shap_masking, tile_and_background
from .engine import ExplanationEngine
from .exact_engine import ExactPartitionEngine
from .incremental import IncrementalEvaluator, WindowedLinear
from .partition import owen_node_values
from .receptive_field import CannotSplit, split_model
from .region_evaluator import RegionEvaluator
from .region_plan import make_plan
from .shap_engine import ShapPartitionEngine, explained_by_shap

# Model time per evaluation of Net-like models' windowed front and first-Linear update, relative to a
# full call (measured 17–41× faster than shap, which spends 2 full calls' time per evaluation)
WINDOWED_COST = 0.1


@dataclasses.dataclass
class _PreparedModel:
    key: tuple
    windowed: WindowedLinear = None  # models with a Net-like front …
    plan: object = None  # … or any other traceable model …
    cannot_split: str = None  # … or why neither applies


class FastPartitionEngine(ExplanationEngine):
    """Incremental evaluations where the model can be analysed, else the exact engine."""

    name = "fast"

    def __init__(self):
        self._prepared = None
        self.dropped_state_evaluations = 0  # in the last tile: evaluations in full because a context's state was dropped

    def _prepare(self, module, shape, max_evals, device):
        """Analyse the model once for all the tiles of one shape and budget this engine explains
        (only the latest model is kept: its analysis holds a copy of the weights)."""
        key = (id(module), module, tuple(shape), max_evals)
        if self._prepared is None or self._prepared.key[1] is not module or self._prepared.key[2:] != key[2:]:
            try:
                self._prepared = _PreparedModel(key, windowed=WindowedLinear(split_model(module, *shape)))
            except CannotSplit:
                try:
                    self._prepared = _PreparedModel(key, plan=make_plan(module, shape[0], shape[1], shape[2], max_evals, device))
                except CannotSplit as reason:
                    self._prepared = _PreparedModel(key, cannot_split=str(reason))
        return self._prepared

    def cost_per_evaluation(self, classifier, shape, settings):
        """As the evaluation this tile shape will really take: the windowed front, the plan's expected
        FLOP share, or the engine it falls back to."""
        if needs_shap_masking(settings.masker):
            return ShapPartitionEngine().cost_per_evaluation(classifier, shape, settings)
        prepared = self._prepare(classifier.module, shape, settings.max_evals, classifier.device)
        if prepared.windowed is not None:
            return WINDOWED_COST
        if prepared.plan is not None:
            return prepared.plan.expected_fraction
        return ExactPartitionEngine().cost_per_evaluation(classifier, shape, settings)

    def plan_summary(self):
        """How the last prepared model is evaluated, in one line (for logs and benchmarks)."""
        prepared = self._prepared
        if prepared is None:
            return "no model prepared yet"
        if prepared.windowed is not None:
            return "incremental: convolutional front on windows, first Linear layer updated"
        if prepared.plan is None:
            return f"exact engine: {prepared.cannot_split}"
        plan = prepared.plan
        frontier = ", ".join(plan.layers[position].node.name for position in plan.frontier)
        return f"incremental through {len(plan.layers) - 1} layers up to {frontier}, then in full ({plan.ends_because}); expected FLOP share {plan.expected_fraction:.2f}"

    def explain(self, image_hwc, classifier, class_indices, settings, progress=None):
        tile = tile_and_background(image_hwc, settings)
        if tile is None:
            return explained_by_shap(image_hwc, classifier, class_indices, settings, progress)
        image_hwc, background_hwc = tile
        prepared = self._prepare(classifier.module, image_hwc.shape, settings.max_evals, classifier.device)
        if prepared.cannot_split is not None:
            result = ExactPartitionEngine().explain(image_hwc, classifier, class_indices, settings, progress)
            return dataclasses.replace(result, fallback_reason=prepared.cannot_split)
        indices = np.asarray(class_indices, dtype=int)
        if prepared.windowed is not None:
            evaluator = IncrementalEvaluator(prepared.windowed, image_hwc, background_hwc, classifier, indices, settings.output_space)
        else:
            evaluator = RegionEvaluator(prepared.plan, image_hwc, background_hwc, classifier, indices, settings.output_space)
        root = (0, image_hwc.shape[0], 0, image_hwc.shape[1], 0, image_hwc.shape[2])
        (base_all, base_state), full_all = evaluator.start(root)
        random_state = np.random.RandomState(settings.seed)  # the tie-break draws of shap's seeded global RNG
        node_values = owen_node_values(evaluator, root, (base_all[indices], base_state), full_all[indices], settings.max_evals - 2, settings.batch_size, random_state, progress)
        result = explanation_from_nodes(node_values, root, image_hwc, base_all, full_all, indices)
        self.dropped_state_evaluations = getattr(evaluator, "full_evaluations", 0)
        return dataclasses.replace(result, flop_bound=evaluator.flop_bound())
