"""What incremental evaluation is expected to cost, relative to full evaluations, for the boxes a
budget reaches: the planner keeps the layers where it pays and prices tiles for MAX_TILES.

The constants, and what `benchmarks/bench_engine.py --engines exact fast` measures for them (its
"cost per evaluation" line: the fast engine's seconds per evaluation over the exact engine's on the
same tile and budget, and that times the FLOP bound: the time per executed FLOP relative to full
evaluations). Figures from 2 CPU cores (AMD, AVX-512), 5 000 evaluations:
- REGIONAL_COST, the time per FLOP of layers run on assembled windows relative to whole maps, a
  planning margin for window assembly, uniform group windows and no channels-last speed-up. The
  whole fast evaluation measured 0.83 for resnet18 at 96² (`--model resnet18 --size 96`): the margin
  errs on the side of planning fewer layers. The region evaluator prices each request with it too,
  and runs the whole model where a request's region would cost more.
- LINEAR_UPDATE_COST, the cost per evaluation of the first-Linear update (Net-like models) for
  MAX_TILES: measured 0.046 for Net at 256² (the default run); 0.1 prices tiles on the safe side.
- GPU_MINIMUM_SAVING: on a GPU a full evaluation costs little next to the regional work's many
  small kernels: on an H200 at 224², a plan saving 49 % of the FLOPs ran 2.1× shap (ResNet-18), one
  saving 22 % ran 0.44× (MobileNetV3) and one saving 4 % 0.87× (EfficientNet-B0).
- MINIMUM_SAVING, 3 %: about the spread of identical whole-process runs (paired ratios 0.97–1.04
  measured for Net at 256²), so a smaller saving would not show.
"""

import numpy as np

from .geometry import exact_regions
from .layer_kinds import CannotSplit, describe
from .partition import Box, split_box

REGIONAL_COST = 1.25
LINEAR_UPDATE_COST = 0.1
GPU_MINIMUM_SAVING = 0.4
MINIMUM_SAVING = 0.03


def typical_boxes(height, width, bands, max_evals):
    """The boxes a breadth-first Owen traversal reveals within `max_evals`, level by level, and how
    many evaluations each level gets: depth d of shap's tree has 2^d boxes, each revealed in 2^(d−1)
    contexts. Returns [(B×6 boxes of a level (a sample of it), evaluations)]."""
    level = [Box(0, height, 0, width, 0, bands)]
    levels = []
    remaining = max(max_evals, 2)
    depth = 0
    while remaining > 0:
        level = [child for box in level if box.size > 1 for child in split_box(box)]
        depth += 1
        if not level:
            break
        evaluations = min(remaining, len(level) * 2 ** (depth - 1))
        levels.append((np.array(level[:: max(1, len(level) // 256)], dtype=np.int64), evaluations))
        remaining -= evaluations
    return levels


def probe_boxes(height, width, bands):
    """Boxes of every size and place the tree has down to single pixels (a sample per level)."""
    return np.concatenate([boxes for boxes, _ in typical_boxes(height, width, bands, 4 * height * width * bands)])


def expected_fractions(layers, levels):
    """Per layer, the expected share of its map an incremental evaluation computes: each level's
    boxes run in groups with one window size, the largest of their changed regions."""
    totals = np.zeros(len(layers))
    evaluations = 0
    for boxes, count in levels:
        for position, (starts, stops) in enumerate(exact_regions(layers, boxes)):
            cells = np.clip((stops - starts).max(0), 1, layers[position].size)
            totals[position] += count * float(np.prod(cells)) / float(np.prod(layers[position].size))
        evaluations += count
    return totals / max(evaluations, 1)


def cheapest_prefix(candidates, fractions, full_flops, device, ends_because, modules):
    """(count, expected FLOPs, why it ends there) for the prefix of the regional `candidates` that
    is cheapest to evaluate incrementally. Prefix k keeps layers [0, k) on their changed regions and
    runs all other FLOPs in full. Only prefixes whose frontier is one map (a block's output) are
    taken where there are any: every context keeps the frontier's changed region, so one map costs
    the least memory. CannotSplit where the saving is too small to pay."""
    choices = {1: (full_flops, 1)}
    saved, spent = 0.0, 0.0
    for count in range(2, len(candidates) + 1):
        layer = candidates[count - 1]
        saved += layer.flops * (1.0 - REGIONAL_COST * fractions[count - 1])
        spent += layer.flops
        choices[count] = (full_flops - saved, frontier_size(candidates, count))
    single = [count for count, (_, size) in choices.items() if size == 1 and count > 1]
    best_count = max(single or choices, key=lambda count: (-choices[count][0], count))  # the longest among ties: layers without FLOPs come along
    best_cost = choices[best_count][0]
    if best_cost > (1.0 - MINIMUM_SAVING) * full_flops:
        raise CannotSplit(
            f"incremental evaluation would save under {MINIMUM_SAVING * 100:.0f} % of the FLOPs: the layers before {ends_because} hold {spent / max(full_flops, 1):.0%} of them, "
            "and at this tile size and budget a revealed box changes most of their maps"
        )
    if str(device).startswith("cuda") and best_cost > (1.0 - GPU_MINIMUM_SAVING) * full_flops:
        raise CannotSplit(
            f"incremental evaluation would save only {1.0 - best_cost / full_flops:.0%} of the FLOPs ({ends_because}); on a GPU, full evaluations are cheaper below {GPU_MINIMUM_SAVING:.0%}"
        )
    if best_count < len(candidates):
        ends_because = f"the changed region covers {fractions[best_count]:.0%} of the map at {describe(candidates[best_count].node, modules)}"
    return best_count, best_cost, ends_because


def regional_flops(layers, boxes):
    """FLOPs of the planned `layers` on each box's exact changed cells (B×6 boxes): what evaluating
    a request on that region computes at the least (its group's uniform windows may be larger)."""
    flops = np.zeros(len(boxes))
    for layer, (starts, stops) in zip(layers, exact_regions(layers, boxes)):
        if layer.flops:
            cells = np.clip(stops - starts, 0, None).prod(1)
            flops += layer.flops * cells / float(np.prod(layer.size))
    return flops


def frontier_size(candidates, count):
    """How many of the first `count` layers are read by later layers or the output."""
    planned = {layer.node for layer in candidates[:count]}
    return sum(any(user not in planned for user in layer.node.users) for layer in candidates[:count])
