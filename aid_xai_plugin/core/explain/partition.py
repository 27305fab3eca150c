"""shap's partition tree for the Image masker, on boxes instead of pixel masks, and the way a
traversal's credit per box becomes values per pixel.

shap's Image masker splits the image into a binary tree of axis-aligned boxes (halving the longer
of rows and columns, channels once a box is one pixel); its explainer walks that tree keeping a full
boolean mask of M = H·W·C entries for every queued node. Here a context is a linked list of visible
boxes (shared with its parent's); `owen.py` walks the tree in shap's order."""

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
