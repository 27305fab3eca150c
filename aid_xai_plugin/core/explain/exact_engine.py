"""The exact engine: shap's PartitionExplainer values bit for bit, with full model evaluations.

It walks shap's tree in shap's order (`partition.py`) and runs the whole model on every masked tile,
in the same calls and chunks as shap. The model must see bit-identical float32 inputs in the same
chunks as under shap: measured on CPU with Net, the same image's probabilities change in the last
bits with the chunk size (chunks of 1, 7 or 127 differ from 128; 32 and 64 agree) and, with one
band, with the tensor strides. One shap model call is split into `batch_size` chunks by
`Classifier.predict_outputs`, so this engine makes the same calls and chunks and lays tiles
out as that method does; then the outputs, the queue order and the values match shap's (measured
max |Δ| 0 to 1e-20 with the cv2 blur, on CPU). Inpainting maskers go to shap itself.
"""

import numpy as np

from ..ml.classifier import outputs_from_logits
from .box_painter import BoxPainter
from .engine import ExplanationEngine, explanation_from_nodes, tile_and_background
from .partition import Box, owen_node_values
from .shap_engine import explained_by_shap


class FullEvaluator:
    """The classifier on whole masked tiles (linked box lists of visible regions), in `batch_size`
    chunks exactly like `Classifier.predict_outputs` chunks one shap model call."""

    def __init__(self, image_hwc, background_hwc, classifier, batch_size, output_space):
        self.painter = BoxPainter(image_hwc, background_hwc, classifier.device)
        self.classifier = classifier
        self.batch_size = batch_size
        self.output_space = output_space

    def scores(self, box_lists):
        """Float64 scores (N×classes, in the output space) of the masked tiles."""
        import torch

        outputs = []
        with torch.inference_mode():
            for start in range(0, len(box_lists), self.batch_size):
                logits = self.classifier.logits_nchw(self.painter.tiles(box_lists[start : start + self.batch_size]))
                outputs.append(outputs_from_logits(logits, self.output_space))
        return np.concatenate(outputs).astype(np.float64)


class ExactPartitionEngine(ExplanationEngine):
    """Full model evaluations in shap's chunks; needs only `classifier.logits_nchw` and `.device`."""

    name = "exact"
    evaluator_type = FullEvaluator  # the tests' float64 reference evaluates with a float64 one

    def explain(self, image_hwc, classifier, class_indices, settings, progress=None):
        tile = tile_and_background(image_hwc, settings)
        if tile is None:
            return explained_by_shap(image_hwc, classifier, class_indices, settings, progress)
        image_hwc, background_hwc = tile
        indices = np.asarray(class_indices, dtype=int)
        evaluator = self.evaluator_type(image_hwc, background_hwc, classifier, settings.batch_size, settings.output_space)
        base_all = evaluator.scores([None])[0]
        root = Box(0, image_hwc.shape[0], 0, image_hwc.shape[1], 0, image_hwc.shape[2])
        full_all = evaluator.scores([(root, None)])[0]

        def evaluate(requests):
            return evaluator.scores([(box, visible) for visible, _, box, _ in requests])[:, indices], [None] * len(requests)

        node_values = owen_node_values(evaluate, root, (base_all[indices], None), full_all[indices], settings.max_evals - 2, settings.batch_size, np.random.RandomState(settings.seed), progress)
        return explanation_from_nodes(node_values, root, image_hwc, base_all, full_all, indices)
