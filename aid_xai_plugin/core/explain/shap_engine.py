"""The reference engine: shap's PartitionExplainer with an Image masker, called as the source does."""

import dataclasses
import threading

import numpy as np

from ..ml.classifier import explained_outputs
from .engine import ExplanationEngine, TileExplanation, shap_image_masker


# shap breaks priority ties with numpy's global RNG: one seeded shap call at a time per process, or
# two runs (threads of a Dask worker, two runs in one QGIS) would draw from each other's stream and
# restore each other's state
_GLOBAL_RNG = threading.Lock()


class ShapPartitionEngine(ExplanationEngine):
    name = "shap"

    def cost_per_evaluation(self, classifier, shape, settings):
        return 2.0  # its masking and bookkeeping per evaluation come on top of the model call

    def explain(self, image_hwc, classifier, class_indices, settings, progress=None, rivals=None, background=None):
        """With `rivals` (OUTPUT_SPACE contrast) shap's predict function is the K differences
        logit(class) − logit(rival), as a user would write it for shap; a `background` is the
        array the Image masker puts in hidden pixels."""
        import shap

        image_hwc = np.asarray(image_hwc, dtype=np.float32)
        if background is None:
            masker = shap_image_masker(settings.masker, image_hwc.shape)
        else:
            masker = shap.maskers.Image(np.asarray(background, dtype=np.float32), image_hwc.shape)

        evaluated = [0]
        indices = np.asarray(class_indices, dtype=int)

        def predict(batch_nhwc):  # shap hands channels-last arrays; the Classifier transposes for torch
            if progress is not None:
                progress.check_cancel()
                progress.fraction(evaluated[0] / settings.max_evals)
            evaluated[0] += len(batch_nhwc)
            scores = classifier.predict_outputs(batch_nhwc, settings.output_space, batch_size=settings.batch_size)
            return scores if rivals is None else explained_outputs(scores, indices, rivals)

        explainer = shap.PartitionExplainer(predict, masker)
        outputs = indices if rivals is None else np.arange(len(indices))  # which columns of predict's output
        with _GLOBAL_RNG:
            global_state = np.random.get_state()  # seed it for this call only, then give the process its own state back
            try:
                np.random.seed(settings.seed)
                result = explainer(image_hwc[None], max_evals=settings.max_evals, batch_size=settings.batch_size, outputs=outputs, silent=True)
            finally:
                np.random.set_state(global_state)
        values = np.asarray(result.values[0], dtype=np.float64).reshape(image_hwc.shape + (len(indices),))
        base_values = np.asarray(result.base_values[0], dtype=np.float64).reshape(len(indices))
        output_values = explained_outputs(classifier.predict_outputs(image_hwc[None], settings.output_space)[0], indices, rivals)
        rival_indices = None if rivals is None else np.asarray(rivals, dtype=int)
        return TileExplanation(values=values, base_values=base_values, output_values=output_values, class_indices=indices, rival_indices=rival_indices)


def explained_by_shap(images_hwc, classifier, class_indices, settings, progress=None, rivals=None):
    """For maskers only shap can apply (inpainting, never with given backgrounds): shap's
    explanations, saying why it was used."""
    reason = f"masker {settings.masker} needs shap's own masking"
    results = ShapPartitionEngine().explain_tiles(images_hwc, classifier, class_indices, settings, progress, rivals)
    return [dataclasses.replace(result, fallback_reason=reason) for result in results]
