"""Whole masked tiles from linked box lists, evaluated on the classifier's device in shap's chunks.

Shared by the exact engine (every masked tile) and the fast engine (a tile's background and
context), together with the tile/background set-up and the final credit step both need.
"""

import numpy as np

from ..ml.classifier import outputs_from_logits
from .engine import TileExplanation, masker_value
from .partition import box_tensor, lower_credit, masked_background


class BoxPainter:
    """Evaluates the classifier on whole masked tiles given as linked box lists of visible regions.

    A chunk's visibility mask is built on the device from its box coordinates (one batched matrix
    product of row and column·channel indicators; the boxes of one list are disjoint, so it is 0/1),
    so painting costs a few kernel launches per chunk rather than one per box."""

    def __init__(self, image_hwc, background_hwc, classifier, batch_size, output_space):
        import torch

        self.classifier = classifier
        self.output_space = output_space
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

        Built channels-last and then made contiguous like `predict_outputs` does with numpy:
        with one band the permuted strides are kept, and torch's convolution rounds differently
        for other strides of the same values."""
        import torch

        boxes = box_tensor(box_lists, torch, self.device)

        def inside(positions, low, high):  # N×B×len(positions) indicator of low <= position < high
            return ((positions >= boxes[..., low, None]) & (positions < boxes[..., high, None])).float()

        rows, cols, bands = inside(self.rows, 0, 1), inside(self.cols, 2, 3), inside(self.bands, 4, 5)
        cols_bands = (cols[..., :, None] * bands[..., None, :]).flatten(2)  # N×B×(W·C)
        visible = torch.bmm(rows.transpose(1, 2), cols_bands).view(len(box_lists), *self.image.shape)
        return torch.where(visible > 0.5, self.image, self.background).permute(0, 3, 1, 2).contiguous()

    def scores(self, box_lists):
        """Float64 scores (N×classes, in the output space) of the masked tiles, computed in
        `batch_size` chunks exactly like `Classifier.predict_outputs` chunks one shap model call."""
        import torch

        outputs = []
        with torch.inference_mode():
            for start in range(0, len(box_lists), self.batch_size):
                logits = self.classifier.logits_nchw(self.masked_tiles(box_lists[start : start + self.batch_size]))
                outputs.append(outputs_from_logits(logits, self.output_space))
        return np.concatenate(outputs).astype(np.float64)


def needs_shap_masking(masker):
    """Inpainting depends on the whole mask at once, so there is no box-painting shortcut: only shap
    masks with it."""
    mask_value = masker_value(masker)
    return isinstance(mask_value, str) and mask_value.startswith("inpaint")


def tile_and_background(image_hwc, settings):
    """The tile as float32 and its masked background, or None for inpainting maskers (shap only)."""
    if needs_shap_masking(settings.masker):
        return None
    image_hwc = np.asarray(image_hwc, dtype=np.float32)
    return image_hwc, masked_background(image_hwc, masker_value(settings.masker))


def explanation_from_nodes(node_values, root, image_hwc, base_all, full_all, indices):
    values = lower_credit(node_values, root, image_hwc.shape, len(indices))
    return TileExplanation(values=values, base_values=base_all[indices], output_values=full_all[indices], class_indices=indices)
