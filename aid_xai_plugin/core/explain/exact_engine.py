"""The exact engine: shap's PartitionExplainer values bit for bit, with full model evaluations.

It walks shap's tree in shap's order (`owen.py`) and runs the whole model on every masked tile,
in the same calls and chunks as shap. The model must see bit-identical float32 inputs in the same
chunks as under shap: measured on CPU with Net, the same image's probabilities change in the last
bits with the chunk size (chunks of 1, 7 or 127 differ from 128; 32 and 64 agree) and, with one
band, with the tensor strides. One shap model call is split into `batch_size` chunks by
`Classifier.predict_outputs`, so this engine makes the same calls and chunks and lays tiles
out as that method does; then the outputs, the queue order and the values match shap's (measured
max |Δ| 0 to 1e-20 with the cv2 blur, on CPU). With many tiles in flight each tile keeps its own
calls, so on a CPU every tile's values are still shap's bit for bit; on a GPU one call takes the
rounds of all tiles (large batches, values within float32 rounding). Inpainting maskers go to shap itself.
"""

import numpy as np

from ..ml.classifier import outputs_from_logits
from .box_painter import BoxPainter
from .engine import ExplanationEngine, explained_by_traversals, stacked_tiles_and_backgrounds
from .shap_engine import explained_by_shap


def model_calls(tiles, size, merge_tiles):
    """The [start, stop) slices of a request list, on tiles `tiles`, that go to one model call each:
    `size` at most, and, unless `merge_tiles`, never two tiles in one call (a tile's calls are then
    those it makes explained alone, so on a CPU its values stay bit for bit)."""
    calls, start = [], 0
    while start < len(tiles):
        stop = min(start + size, len(tiles))
        if not merge_tiles:
            stop = start + 1 + int(np.argmax(np.append(tiles[start + 1 : stop] != tiles[start], True)))
            stop = min(stop, start + size, len(tiles))
        calls.append((start, stop))
        start = stop
    return calls


class FullEvaluator:
    """The classifier on whole masked tiles (linked box lists of visible regions) of the tiles in
    flight, in `batch_size` chunks exactly like `Classifier.predict_outputs` chunks one shap model
    call, one tile per chunk; with `merge_tiles` (on a GPU) one call takes the round of every tile."""

    def __init__(self, images_hwc, backgrounds_hwc, classifier, batch_size, output_space, merge_tiles=False):
        self.painter = BoxPainter(images_hwc, backgrounds_hwc, classifier.device)
        self.classifier = classifier
        self.batch_size = batch_size
        self.output_space = output_space
        self.merge_tiles = merge_tiles
        self.tile_count = len(self.painter.images)

    def scores(self, box_lists, tiles):
        """Float64 scores (N×classes, in the output space) of the masked tiles; list i on tile `tiles[i]`."""
        import torch

        tiles = np.asarray(tiles, dtype=np.int64)
        size = self.batch_size * (self.tile_count if self.merge_tiles else 1)
        outputs = []
        with torch.inference_mode():
            for start, stop in model_calls(tiles, size, self.merge_tiles):
                logits = self.classifier.logits_nchw(self.painter.tiles(box_lists[start:stop], tiles[start:stop]))
                outputs.append(outputs_from_logits(logits, self.output_space))
        return np.concatenate(outputs).astype(np.float64)

    def start(self, root):
        """Per tile ((f(nothing visible), no state), f(everything visible)), all classes: as shap
        does, each its own call (all in one with `merge_tiles`)."""
        tiles = np.arange(self.tile_count)
        if self.merge_tiles:
            both = self.scores([None] * self.tile_count + [(root, None)] * self.tile_count, np.concatenate([tiles, tiles]))
            base, full = both[: self.tile_count], both[self.tile_count :]
        else:
            base = [self.scores([None], [tile])[0] for tile in tiles]
            full = [self.scores([(root, None)], [tile])[0] for tile in tiles]
        return [((base[tile], None), full[tile]) for tile in tiles]

    def __call__(self, requests):
        """All-class outputs of the requested contexts (no states: every evaluation is in full)."""
        return self.scores([(request.box, request.visible) for request in requests], [request.tile for request in requests]), [None] * len(requests)


class ExactPartitionEngine(ExplanationEngine):
    """Full model evaluations in shap's chunks; needs only `classifier.logits_nchw` and `.device`.
    `merge_tiles` (default: on CUDA) evaluates the rounds of all tiles in flight in one call."""

    name = "exact"
    evaluator_type = FullEvaluator  # the tests' float64 reference evaluates with a float64 one

    def __init__(self, merge_tiles=None):
        self.merge_tiles = merge_tiles

    def explain_tiles(self, images_hwc, classifier, class_indices, settings, progress=None, rivals=None, backgrounds=None):
        tiles = stacked_tiles_and_backgrounds(images_hwc, settings, backgrounds)
        if tiles is None:
            return explained_by_shap(images_hwc, classifier, class_indices, settings, progress, rivals)
        merge_tiles = str(classifier.device).startswith("cuda") if self.merge_tiles is None else self.merge_tiles
        evaluator = self.evaluator_type(*tiles, classifier, settings.batch_size, settings.output_space, merge_tiles)
        return explained_by_traversals(evaluator, tiles[0], class_indices, settings, progress, rivals)
