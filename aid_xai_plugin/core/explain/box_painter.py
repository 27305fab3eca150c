"""Masked inputs on the model's device from linked lists of visible boxes: the image inside a
list's boxes, the background elsewhere, for whole tiles or for windows of them.

Every engine paints with this: the exact engine whole tiles in shap's chunks, the incremental
evaluators the windows around revealed boxes (from normalised copies of the tile and background).
"""

import numpy as np

from .partition import box_tensor


class BoxPainter:
    """The visibility mask of a batch is built on the device from its box coordinates (one batched
    matrix product of row and column·band indicators; the boxes of one list are disjoint, so it is
    0/1), so painting costs a few kernel launches per batch rather than one per box."""

    def __init__(self, image_hwc, background_hwc, device):
        import torch

        self.torch = torch
        self.device = device
        self.image = torch.as_tensor(np.ascontiguousarray(image_hwc) if isinstance(image_hwc, np.ndarray) else image_hwc).to(device)
        self.background = torch.as_tensor(np.ascontiguousarray(background_hwc) if isinstance(background_hwc, np.ndarray) else background_hwc).to(device)
        self.height, self.width, self.bands = self.image.shape
        self.image_chw = self.image.permute(2, 0, 1).contiguous()
        self.background_chw = self.background.permute(2, 0, 1).contiguous()
        self.band_positions = torch.arange(self.bands, device=device)[None]

    def tiles(self, box_lists):
        """N×C×H×W whole masked tiles.

        Built channels-last and then made contiguous like `Classifier.predict_outputs` does with
        numpy: with one band the permuted strides are kept, and torch's convolution rounds
        differently for other strides of the same values (the exact engine must match shap bit for
        bit)."""
        torch = self.torch
        inside = self._inside(box_lists)
        rows = inside(torch.arange(self.height, device=self.device)[None], 0)
        cols_bands = (inside(torch.arange(self.width, device=self.device)[None], 2)[..., :, None] * inside(self.band_positions, 4)[..., None, :]).flatten(2)  # N×B×(W·C)
        visible = torch.bmm(rows.transpose(1, 2), cols_bands).view(len(box_lists), self.height, self.width, self.bands)
        return torch.where(visible > 0.5, self.image, self.background).permute(0, 3, 1, 2).contiguous()

    def windows(self, box_lists, rows, cols):
        """N×C×h×w masked windows at the absolute pixel `rows` (N×h) and `cols` (N×w) of each list,
        gathered band-first (no layout change after the selection)."""
        torch = self.torch
        rows = torch.as_tensor(rows, device=self.device)
        cols = torch.as_tensor(cols, device=self.device)
        inside = self._inside(box_lists)
        bands_rows = (inside(self.band_positions, 4)[..., :, None] * inside(rows, 0)[..., None, :]).flatten(2)  # N×B×(C·h)
        visible = torch.bmm(bands_rows.transpose(1, 2), inside(cols, 2)).view(len(box_lists), self.bands, rows.shape[1], cols.shape[1])
        row_index, col_index = rows[:, :, None], cols[:, None, :]
        image = self.image_chw[:, row_index, col_index].transpose(0, 1)
        background = self.background_chw[:, row_index, col_index].transpose(0, 1)
        return torch.where(visible > 0.5, image, background)

    def windows_at(self, box_lists, row_starts, col_starts, height, width):
        """N×C×height×width masked windows whose first pixel is at (row_starts, col_starts)."""
        rows = np.asarray(row_starts, dtype=np.int64)[:, None] + np.arange(height)
        cols = np.asarray(col_starts, dtype=np.int64)[:, None] + np.arange(width)
        return self.windows(box_lists, self.torch.from_numpy(rows), self.torch.from_numpy(cols))

    def _inside(self, box_lists):
        """inside(positions, axis): the N×B×length 0/1 indicator that positions ((1 or N)×length) lie
        in [box[axis], box[axis + 1]) for each box of each list."""
        boxes = box_tensor(box_lists, self.torch, self.device)

        def inside(positions, axis):
            return ((positions[:, None, :] >= boxes[..., axis, None]) & (positions[:, None, :] < boxes[..., axis + 1, None])).float()

        return inside
