"""shap's partition tree and Owen traversal for the Image masker, on boxes instead of pixel masks.

shap's Image masker splits the image into a binary tree of axis-aligned boxes (halving the longer
of rows and columns, channels once a box is one pixel) and its explainer walks that tree with a
priority queue, keeping a full boolean mask of M = H·W·C entries for every queued node. Here a queued
node only holds its box, its two model outputs, its context as a linked list of visible boxes
(shared with its parent's) and an evaluator-defined state of that context; the traversal order and
the tie-break draws are shap's `np.random.randn` stream (from a RandomState seeded as shap's global
RNG would be), so the same outputs give the same values.
"""

import heapq
import typing

import numpy as np


class Box(typing.NamedTuple):
    """A box of shap's tree: rows [row0, row1), columns [col0, col1), bands [band0, band1) of the tile."""

    row0: int
    row1: int
    col0: int
    col1: int
    band0: int
    band1: int

    @property
    def size(self):
        return (self.row1 - self.row0) * (self.col1 - self.col0) * (self.band1 - self.band0)


def split_box(box):
    """The (left, right) children of a box as in shap's Image masker tree.

    `_jit_build_partition_tree` halves the widest of rows/columns (bands last) with the smaller half
    on the left, but numbers its leaves in reverse flat order, so on the actual tile every box is
    mirrored on all three axes: the left child is the upper part, of width w // 2.
    """
    row0, row1, col0, col1, band0, band1 = box
    if row1 - row0 >= col1 - col0 and row1 - row0 > 1:
        mid = row1 - (row1 - row0) // 2
        return Box(mid, row1, col0, col1, band0, band1), Box(row0, mid, col0, col1, band0, band1)
    if col1 - col0 > 1:
        mid = col1 - (col1 - col0) // 2
        return Box(row0, row1, mid, col1, band0, band1), Box(row0, row1, col0, mid, band0, band1)
    mid = band1 - (band1 - band0) // 2
    return Box(row0, row1, col0, col1, mid, band1), Box(row0, row1, col0, col1, band0, mid)


def boxes_of(visible):
    """The boxes of a linked visible-box list (box, rest), newest first."""
    boxes = []
    while visible is not None:
        box, visible = visible
        boxes.append(box)
    return boxes


def box_tensor(box_lists, torch, device):
    """N×B×6 int64 tensor of the boxes of each linked list, zero-padded (empty boxes), on `device`."""
    chains = [boxes_of(visible) for visible in box_lists]
    boxes = np.zeros((len(chains), max(1, max(len(chain) for chain in chains)), 6), dtype=np.int64)
    for row, chain in enumerate(chains):
        if chain:
            boxes[row, : len(chain)] = chain
    return torch.from_numpy(boxes).to(device)


def masked_background(image_hwc, mask_value):
    """What shap's Image masker puts in hidden pixels: cv2.blur of the tile, or the constant cast to
    the tile's float32 (as `out[~mask] = mask_value[~mask]` does)."""
    if isinstance(mask_value, str):
        import cv2

        kernel = tuple(int(size) for size in mask_value[5:-1].split(","))
        return cv2.blur(image_hwc, kernel).reshape(image_hwc.shape)  # cv2 drops a single channel axis
    return np.full(image_hwc.shape, mask_value, dtype=np.float64).astype(image_hwc.dtype)


def owen_node_values(evaluate, root, base, full, max_evals, batch_size, random_state, progress=None):
    """shap's `PartitionExplainer.owen` (fixed_context=None) over the box tree: returns the
    hierarchical credit per box (dict box → K float64), accumulated in shap's order.

    `base` is (f(nothing visible), state of that context) and `full` is f(everything visible).
    `evaluate(requests)` gets (visible, state, box, sibling) tuples — a context, its state, the box
    to reveal on top of it and the box the revealed context will be extended by next — and returns
    the K outputs and the state of each revealed context.
    `random_state` (a numpy RandomState seeded like shap's global one) draws the tie-breaks.
    `progress` (optional) may cancel before each model call and hears the fraction of evaluations done.
    Queued nodes that can no longer be expanded drop their states (see forget_unreachable_states),
    and so do the least urgent ones beyond `evaluate.max_states` if the evaluator sets it."""
    node_values = {}
    root = Box(*root)
    f00, state00 = base
    queue = [(0, 0, 0, (None, state00, f00, full, root, 1.0))]
    pushes = 1
    eval_count = 0
    forget_step = max(batch_size, max_evals // 64)
    next_forget = forget_step
    while queue:
        if eval_count >= next_forget:
            forget_unreachable_states(queue, max_evals - eval_count, getattr(evaluate, "max_states", None))
            next_forget = eval_count + forget_step
        if eval_count >= max_evals:
            while queue:
                _, _, f00, f11, box, weight = heapq.heappop(queue)[3]
                node_values[box] = node_values.get(box, 0.0) + (f11 - f00) * weight
            break

        work = []
        requests = []
        while queue and len(requests) < batch_size and eval_count + len(requests) < max_evals:
            visible, state, f00, f11, box, weight = heapq.heappop(queue)[3]
            if box.size == 1:
                node_values[box] = node_values.get(box, 0.0) + (f11 - f00) * weight
                continue
            left, right = split_box(box)
            work.append((visible, state, f00, f11, box, left, right, weight))
            requests.append((visible, state, left, right))
            requests.append((visible, state, right, left))

        if work:
            if progress is not None:
                progress.check_cancel()
                progress.fraction(eval_count / max_evals)
            outputs, states = evaluate(requests)
            eval_count += len(requests)

        for i, (visible, state, f00, f11, box, left, right, weight) in enumerate(work):
            f10, f01 = outputs[2 * i], outputs[2 * i + 1]
            new_weight = weight / 2  # fixed_context=None: shap leaves no interaction term on the node
            node_values.setdefault(box, 0.0)  # … but it is expanded: lower_credit passes its credit on to the children
            children = (
                (visible, state, f00, f10, left),
                (visible, state, f00, f01, right),
                ((right, visible), states[2 * i + 1], f01, f11, left),
                ((left, visible), states[2 * i], f10, f11, right),
            )
            for child_visible, child_state, low, high, child in children:
                priority = float(-np.max(np.abs(high - low)) * new_weight)
                heapq.heappush(queue, (priority, float(random_state.randn()), pushes, (child_visible, child_state, low, high, child, new_weight)))
                pushes += 1
    return node_values


def forget_unreachable_states(queue, evaluations_left, keep=None):
    """Drop the context states of queued nodes that can no longer be expanded, so their memory is
    freed: every expansion costs two evaluations and nodes leave the queue in key order, so a node
    with (evaluations_left + 1) // 2 or more expandable nodes ahead of it never will be. With `keep`,
    only the first `keep` nodes keep their states (the evaluator then evaluates a node without one in
    full). Keys (and so the traversal) stay as they are."""
    expandable = [(item[0], item[1], item[2], index) for index, item in enumerate(queue) if item[3][1] is not None and item[3][4].size > 1]
    reachable = (evaluations_left + 1) // 2 if keep is None else min((evaluations_left + 1) // 2, keep)
    if len(expandable) <= reachable:
        return
    expandable.sort()
    for *_, index in expandable[reachable:]:
        priority, draw, order, (visible, _, f00, f11, box, weight) = queue[index]
        queue[index] = (priority, draw, order, (visible, None, f00, f11, box, weight))


def lower_credit(node_values, root, shape, num_outputs):
    """shap's `lower_credit`: push each box's credit down to its pixels, a child getting
    `total * child size / size`. Boxes never expanded are spread by the same recursion, level by
    level over arrays of boxes, so every pixel's value is the same float64 product chain as shap's."""
    values = np.zeros(tuple(shape) + (num_outputs,), dtype=np.float64)
    stack = [(Box(*root), np.zeros(num_outputs))]
    unexpanded = []
    while stack:
        box, inherited = stack.pop()
        total = node_values.get(box, 0.0) + inherited
        children = split_box(box) if box.size > 1 else None
        if children is None or children[0] not in node_values:
            unexpanded.append((box, total))
            continue
        for child in children:
            stack.append((child, total * child.size / box.size))
    if unexpanded:
        boxes = np.array([box for box, _ in unexpanded], dtype=np.int64)
        totals = np.array([total for _, total in unexpanded], dtype=np.float64).reshape(len(unexpanded), num_outputs)
        _spread_evenly(values, boxes, totals)
    return values


def _spread_evenly(values, boxes, totals):
    """Write each box's credit to its pixels through shap's recursion (split_box on every level,
    children get total * child size / size), all boxes of a level at once."""
    while len(boxes):
        sizes = (boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2]) * (boxes[:, 5] - boxes[:, 4])
        leaves = sizes == 1
        values[boxes[leaves, 0], boxes[leaves, 2], boxes[leaves, 4], :] = totals[leaves]  # one pixel each, no two alike
        boxes, totals, sizes = boxes[~leaves], totals[~leaves], sizes[~leaves]
        if not len(boxes):
            break
        left, right = _split_boxes(boxes)
        child_boxes, child_totals = [], []
        for child in (left, right):
            child_sizes = (child[:, 1] - child[:, 0]) * (child[:, 3] - child[:, 2]) * (child[:, 5] - child[:, 4])
            child_boxes.append(child)
            child_totals.append(totals * child_sizes[:, None].astype(np.float64) / sizes[:, None].astype(np.float64))
        boxes, totals = np.concatenate(child_boxes), np.concatenate(child_totals)


def _split_boxes(boxes):
    """split_box for an N×6 array of boxes (each of size > 1): (left, right) arrays."""
    row0, row1, col0, col1 = boxes.T[:4]
    rows = (row1 - row0 >= col1 - col0) & (row1 - row0 > 1)
    cols = ~rows & (col1 - col0 > 1)
    bands = ~rows & ~cols
    left, right = boxes.copy(), boxes.copy()
    for axis, chosen in ((0, rows), (2, cols), (4, bands)):
        low, high = boxes[chosen, axis], boxes[chosen, axis + 1]
        mid = high - (high - low) // 2
        left[chosen, axis] = mid  # the upper part, as in split_box
        right[chosen, axis + 1] = mid
    return left, right
