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

    def __init__(self, images_hwc, backgrounds_hwc, device):
        """`images_hwc` and `backgrounds_hwc`: the tiles in flight (T×H×W×C), or one tile (H×W×C)."""
        import torch

        self.torch = torch
        self.device = device
        self.images = self._stacked(images_hwc)
        self.backgrounds = self._stacked(backgrounds_hwc)
        _, self.height, self.width, self.bands = self.images.shape
        self.images_chw = self.images.permute(0, 3, 1, 2).contiguous()
        self.backgrounds_chw = self.backgrounds.permute(0, 3, 1, 2).contiguous()
        self.band_positions = torch.arange(self.bands, device=device)[None]

    def _stacked(self, tiles):
        tiles = self.torch.as_tensor(np.ascontiguousarray(tiles) if isinstance(tiles, np.ndarray) else tiles).to(self.device)
        return tiles[None] if tiles.dim() == 3 else tiles

    def tiles(self, box_lists, tiles):
        """N×C×H×W whole masked tiles; list i is painted on tile `tiles[i]`.

        Built channels-last and then made contiguous like `Classifier.predict_outputs` does with
        numpy: with one band the permuted strides are kept, and torch's convolution rounds
        differently for other strides of the same values (the exact engine must match shap bit for
        bit)."""
        torch = self.torch
        inside = self._inside(box_lists)
        rows = inside(torch.arange(self.height, device=self.device)[None], 0)
        cols_bands = (inside(torch.arange(self.width, device=self.device)[None], 2)[..., :, None] * inside(self.band_positions, 4)[..., None, :]).flatten(2)  # N×B×(W·C)
        visible = torch.bmm(rows.transpose(1, 2), cols_bands).view(len(box_lists), self.height, self.width, self.bands)
        image, background = self._of_tiles(tiles)
        return torch.where(visible > 0.5, image, background).permute(0, 3, 1, 2).contiguous()

    def _of_tiles(self, tiles):
        """The images and backgrounds of `tiles`: broadcast views when all are one tile (no copy of a
        whole batch), else gathered."""
        tiles = np.asarray(tiles, dtype=np.int64)
        if (tiles == tiles[0]).all():
            return self.images[int(tiles[0])], self.backgrounds[int(tiles[0])]
        index = self.torch.from_numpy(tiles).to(self.device)
        return self.images[index], self.backgrounds[index]

    def windows(self, box_lists, rows, cols, tiles):
        """N×C×h×w masked windows at the absolute pixel `rows` (N×h) and `cols` (N×w) of each list
        (on tile `tiles[i]`), gathered band-first (no layout change after the selection)."""
        torch = self.torch
        rows = torch.as_tensor(rows, device=self.device)
        cols = torch.as_tensor(cols, device=self.device)
        inside = self._inside(box_lists)
        bands_rows = (inside(self.band_positions, 4)[..., :, None] * inside(rows, 0)[..., None, :]).flatten(2)  # N×B×(C·h)
        visible = torch.bmm(bands_rows.transpose(1, 2), inside(cols, 2)).view(len(box_lists), self.bands, rows.shape[1], cols.shape[1])
        tile_index, row_index, col_index = torch.as_tensor(tiles, device=self.device)[:, None, None], rows[:, :, None], cols[:, None, :]
        image = self.images_chw.transpose(0, 1)[:, tile_index, row_index, col_index].transpose(0, 1)
        background = self.backgrounds_chw.transpose(0, 1)[:, tile_index, row_index, col_index].transpose(0, 1)
        return torch.where(visible > 0.5, image, background)

    def windows_at(self, box_lists, row_starts, col_starts, height, width, tiles):
        """N×C×height×width masked windows whose first pixel is at (row_starts, col_starts)."""
        rows = np.asarray(row_starts, dtype=np.int64)[:, None] + np.arange(height)
        cols = np.asarray(col_starts, dtype=np.int64)[:, None] + np.arange(width)
        return self.windows(box_lists, self.torch.from_numpy(rows), self.torch.from_numpy(cols), tiles)

    def _inside(self, box_lists):
        """inside(positions, axis): the N×B×length 0/1 indicator that positions ((1 or N)×length) lie
        in [box[axis], box[axis + 1]) for each box of each list."""
        boxes = box_tensor(box_lists, self.torch, self.device)

        def inside(positions, axis):
            return ((positions[:, None, :] >= boxes[..., axis, None]) & (positions[:, None, :] < boxes[..., axis + 1, None])).float()

        return inside


def normalised_hwc(classifier, tiles_hwc):
    """The tiles in flight (T×H×W×C, or one H×W×C tile) normalised as the model's input, T×H×W×C
    on its device."""
    import torch

    tiles = np.asarray(tiles_hwc)
    tiles = tiles[None] if tiles.ndim == 3 else tiles
    return torch.stack([classifier.normalised_chw(tile).permute(1, 2, 0) for tile in tiles])
