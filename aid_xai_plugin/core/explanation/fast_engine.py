"""A fast partition-SHAP engine that reproduces shap's PartitionExplainer with an Image masker.

shap's Image masker splits the image into a binary tree of axis-aligned boxes (halving the longer
of rows and columns, channels once a box is one pixel) and its explainer walks that tree with a priority
queue, keeping a full boolean mask of M = H·W·C entries for every queued node and rebuilding every
masked image in numpy. This engine walks the same tree in the same order, with the same
`np.random.randn` tie-break draws after `np.random.seed(seed)`, but a queued node only holds its box,
its two model outputs and a link to the box list of its context (shared with its parent's); masked
tiles are composed on the classifier's device from a background computed once per tile.

The model must see bit-identical float32 inputs in the same chunks as under shap: measured on CPU
with Net, the same image's probabilities change in the last bits with the chunk size (chunks of 1, 7
or 127 differ from 128; 32 and 64 agree) and, with one band, with the tensor strides. One shap model
call is split into `batch_size` chunks by `Classifier.predict_probabilities`, so this engine makes the
same calls and chunks, and lays tiles out as that method does; then the outputs, the queue order and
the values match shap's (measured max |Δ| 0 to 1e-20 with the cv2 blur, on CPU).
"""

import heapq

import numpy as np

from ..errors import AidXaiError
from .engine import ExplanationEngine, TileExplanation, masker_value
from .shap_engine import ShapPartitionEngine


def box_size(box):
    x0, x1, y0, y1, z0, z1 = box
    return (x1 - x0) * (y1 - y0) * (z1 - z0)


def split_box(box):
    """The (left, right) children of a box as in shap's Image masker tree.

    `_jit_build_partition_tree` halves the widest of rows/columns (channels last) with the smaller half
    on the left, but numbers its leaves in reverse flat order, so on the actual tile every box is
    mirrored on all three axes: the left child is the upper part, of width w // 2.
    """
    x0, x1, y0, y1, z0, z1 = box
    if x1 - x0 >= y1 - y0 and x1 - x0 > 1:
        mid = x1 - (x1 - x0) // 2
        return (mid, x1, y0, y1, z0, z1), (x0, mid, y0, y1, z0, z1)
    if y1 - y0 > 1:
        mid = y1 - (y1 - y0) // 2
        return (x0, x1, mid, y1, z0, z1), (x0, x1, y0, mid, z0, z1)
    mid = z1 - (z1 - z0) // 2
    return (x0, x1, y0, y1, mid, z1), (x0, x1, y0, y1, z0, mid)


def masked_background(image_hwc, mask_value):
    """What shap's Image masker puts in hidden pixels: cv2.blur of the tile, or the constant cast to
    the tile's float32 (as `out[~mask] = mask_value[~mask]` does)."""
    if isinstance(mask_value, str):
        import cv2

        kernel = tuple(int(size) for size in mask_value[5:-1].split(","))
        return cv2.blur(image_hwc, kernel).reshape(image_hwc.shape)  # cv2 drops a single channel axis
    return np.full(image_hwc.shape, mask_value, dtype=np.float64).astype(image_hwc.dtype)


class BoxPainter:
    """Evaluates the classifier on masked tiles given as linked box lists (box, rest) of visible regions.

    A chunk's visibility mask is built on the device from its box coordinates (one batched matrix
    product of row and column·channel indicators; the boxes of one list are disjoint, so it is 0/1),
    so painting costs a few kernel launches per chunk rather than one per box."""

    def __init__(self, image_hwc, background_hwc, classifier, batch_size):
        import torch

        self.classifier = classifier
        self.batch_size = batch_size
        self.device = classifier.device
        self.image = torch.from_numpy(np.ascontiguousarray(image_hwc)).to(self.device)
        self.background = torch.from_numpy(np.ascontiguousarray(background_hwc)).to(self.device)
        height, width, bands = self.image.shape
        self.rows = torch.arange(height, device=self.device)
        self.cols = torch.arange(width, device=self.device)
        self.bands = torch.arange(bands, device=self.device)

    def masked_tiles(self, box_lists):
        """N×C×H×W float32 tiles: the image inside each list's boxes, the background elsewhere.

        Built channels-last and then made contiguous like `predict_probabilities` does with numpy:
        with one band the permuted strides are kept, and torch's convolution rounds differently
        for other strides of the same values."""
        import torch

        chains = []
        for visible in box_lists:
            boxes = []
            while visible is not None:
                box, visible = visible
                boxes.append(box)
            chains.append(boxes)
        boxes = np.zeros((len(chains), max(1, max(len(chain) for chain in chains)), 6), dtype=np.int64)
        for row, chain in enumerate(chains):
            if chain:
                boxes[row, : len(chain)] = chain
        boxes = torch.from_numpy(boxes).to(self.device)

        def inside(positions, low, high):  # N×B×len(positions) indicator of low <= position < high
            return ((positions >= boxes[..., low, None]) & (positions < boxes[..., high, None])).float()

        rows, cols, bands = inside(self.rows, 0, 1), inside(self.cols, 2, 3), inside(self.bands, 4, 5)
        cols_bands = (cols[..., :, None] * bands[..., None, :]).flatten(2)  # N×B×(W·C)
        visible = torch.bmm(rows.transpose(1, 2), cols_bands).view(len(chains), *self.image.shape)
        return torch.where(visible > 0.5, self.image, self.background).permute(0, 3, 1, 2).contiguous()

    def probabilities(self, box_lists):
        """Float64 probabilities (N×classes) of the masked tiles, computed in `batch_size` chunks
        exactly like `Classifier.predict_probabilities` chunks one shap model call."""
        import torch

        outputs = []
        with torch.inference_mode():
            for start in range(0, len(box_lists), self.batch_size):
                logits = self.classifier.logits_nchw(self.masked_tiles(box_lists[start : start + self.batch_size]))
                outputs.append(torch.softmax(logits, dim=1).float().cpu().numpy())
        return np.concatenate(outputs).astype(np.float64)


def owen_node_values(evaluate, root, f00, f11, max_evals, batch_size):
    """shap's `PartitionExplainer.owen` (fixed_context=None) over the box tree: returns the
    hierarchical credit per box (dict box → K float64), accumulated in shap's order.

    `evaluate` maps a list of visible-box lists to K outputs each; a queue entry holds its context
    as such a list, which its children extend by one box without copying."""
    node_values = {}
    queue = [(0, 0, 0, (None, f00, f11, root, 1.0))]
    pushes = 1
    eval_count = 0
    while queue:
        if eval_count >= max_evals:
            while queue:
                _, f00, f11, box, weight = heapq.heappop(queue)[3]
                node_values[box] = node_values.get(box, 0.0) + (f11 - f00) * weight
            break

        work = []
        visible_lists = []
        while queue and len(visible_lists) < batch_size and eval_count + len(visible_lists) < max_evals:
            visible, f00, f11, box, weight = heapq.heappop(queue)[3]
            if box_size(box) == 1:
                node_values[box] = node_values.get(box, 0.0) + (f11 - f00) * weight
                continue
            left, right = split_box(box)
            with_left = (left, visible)
            with_right = (right, visible)
            work.append((visible, with_left, with_right, f00, f11, box, left, right, weight))
            visible_lists.append(with_left)
            visible_lists.append(with_right)

        if work:
            outputs = evaluate(visible_lists)
            eval_count += len(visible_lists)

        for i, (visible, with_left, with_right, f00, f11, box, left, right, weight) in enumerate(work):
            f10 = outputs[2 * i]
            f01 = outputs[2 * i + 1]
            new_weight = weight / 2
            interaction = (f11 - f10 - f01 + f00) * weight
            # shap leaves the interaction on the node for the 0-context, then removes it for the 1-context
            node_values[box] = node_values.get(box, 0.0) + interaction
            node_values[box] = node_values[box] - interaction
            children = (
                (visible, f00, f10, left),
                (visible, f00, f01, right),
                (with_right, f01, f11, left),
                (with_left, f10, f11, right),
            )
            for child_visible, low, high, child in children:
                priority = float(-np.max(np.abs(high - low)) * new_weight)
                heapq.heappush(queue, (priority, float(np.random.randn()), pushes, (child_visible, low, high, child, new_weight)))
                pushes += 1
    return node_values


def lower_credit(node_values, root, shape, num_outputs):
    """shap's `lower_credit`: push each box's credit down to its pixels in proportion to size.
    Boxes never expanded spread their credit evenly, which is what the recursion does below them."""
    values = np.zeros(tuple(shape) + (num_outputs,), dtype=np.float64)
    stack = [(root, np.zeros(num_outputs))]
    while stack:
        box, inherited = stack.pop()
        total = node_values.get(box, 0.0) + inherited
        size = box_size(box)
        children = split_box(box) if size > 1 else None
        if children is None or children[0] not in node_values:
            x0, x1, y0, y1, z0, z1 = box
            values[x0:x1, y0:y1, z0:z1, :] = total / size
            continue
        for child in children:
            stack.append((child, total * box_size(child) / size))
    return values


class FastPartitionEngine(ExplanationEngine):
    """Needs only `classifier.logits_nchw` and `classifier.device`; inpainting maskers go to shap."""

    name = "fast"

    def explain(self, image_hwc, classifier, class_indices, settings):
        mask_value = masker_value(settings.masker)
        if isinstance(mask_value, str) and mask_value.startswith("inpaint"):
            # inpainting depends on the whole mask at once, so there is no box-painting shortcut
            return ShapPartitionEngine().explain(image_hwc, classifier, class_indices, settings)

        image_hwc = np.asarray(image_hwc, dtype=np.float32)
        indices = np.asarray(class_indices, dtype=int)
        painter = BoxPainter(image_hwc, masked_background(image_hwc, mask_value), classifier, settings.batch_size)
        np.random.seed(settings.seed)  # same tie-break draws as the shap engine
        base_all = painter.probabilities([None])[0]
        root = (0, image_hwc.shape[0], 0, image_hwc.shape[1], 0, image_hwc.shape[2])
        full_all = painter.probabilities([(root, None)])[0]

        def evaluate(visible_lists):
            return painter.probabilities(visible_lists)[:, indices]

        node_values = owen_node_values(evaluate, root, base_all[indices], full_all[indices], settings.max_evals - 2, settings.batch_size)
        values = lower_credit(node_values, root, image_hwc.shape, len(indices))
        return TileExplanation(values=values, base_values=base_all[indices], output_values=full_all[indices], class_indices=indices)


ENGINES = {"shap": ShapPartitionEngine, "fast": FastPartitionEngine}


def engine_by_name(name):
    """The engine called `name` ('shap' or 'fast')."""
    key = str(name).strip().lower()
    if key not in ENGINES:
        raise AidXaiError(f"Unknown explanation engine '{name}'; use one of: {', '.join(ENGINES)}.")
    return ENGINES[key]()
