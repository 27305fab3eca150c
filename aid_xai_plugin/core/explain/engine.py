"""The engine interface: explain one model-input tile for chosen classes.

An engine receives the tile exactly as the model sees it (H×W×C float32 in [0, 1], channels last),
the `Classifier`, the class indices to explain, a masker spec and shap's settings, and returns
SHAP values per model-input pixel and channel, in the settings' output space (logit, probability or
log-probability): per class they sum to f(tile) − f(fully masked tile) in that space. The explain algorithm depends only on this, so a
faster engine can replace shap without touching it.
"""

import dataclasses
import re

import numpy as np

from ..common.errors import AidXaiError
from .owen import OwenTraversal, walk
from .partition import Box, lower_credit, masked_background


@dataclasses.dataclass
class TileExplanation:
    values: np.ndarray  # H×W×C×K SHAP values on model-input pixels (units of the output space)
    base_values: np.ndarray  # K: f(fully masked tile)
    output_values: np.ndarray  # K: f(tile)
    class_indices: np.ndarray  # K: which model outputs were explained
    rival_indices: np.ndarray = None  # K: OUTPUT_SPACE contrast: each explained against this class (logit difference)
    fallback_reason: str = None  # why the engine evaluated this tile another way (e.g. fast → exact)
    flop_bound: float = None  # FLOPs of full evaluations / FLOPs the engine executed (incremental engines)


@dataclasses.dataclass(frozen=True)
class ExplainSettings:
    masker: str = "blur(256,256)"
    max_evals: int = 500
    batch_size: int = 128
    seed: int = 0
    output_space: str = "logit"  # what is explained: the model's logits, probabilities, log-probabilities or logit differences (contrast)


_BLUR = re.compile(r"^blur\(\s*(\d+)\s*,\s*(\d+)\s*\)$")


def masker_value(spec):
    """A masker spec ('blur(k,k)', 'inpaint_telea', 'inpaint_ns' or a constant in [0, 1]) as the
    `mask_value` of shap's Image masker; anything else is a clear error."""
    text = str(spec).strip().lower().replace(" ", "")
    match = _BLUR.match(text)
    if match:
        if int(match.group(1)) < 1 or int(match.group(2)) < 1:
            raise AidXaiError(f"MASKER '{spec}': blur kernel sizes must be at least 1.")
        return f"blur({int(match.group(1))},{int(match.group(2))})"
    if text in ("inpaint_telea", "inpaint_ns"):
        return text
    try:
        return float(text)
    except ValueError:
        raise AidXaiError(
            f"MASKER '{spec}' is not understood; use blur(k,k) (e.g. blur(256,256)), inpaint_telea, inpaint_ns, or a constant such as 0.5 (model-input scale 0..1)."
        ) from None


def shap_image_masker(spec, shape):
    import shap

    return shap.maskers.Image(masker_value(spec), shape)


class ExplanationEngine:
    """An engine overrides `explain` (one tile at a time) or `explain_tiles` (many tiles in flight)."""

    name = ""

    def explain(self, image_hwc, classifier, class_indices, settings, progress=None, rivals=None, background=None):
        """Return a TileExplanation for `image_hwc` and the outputs `class_indices` (OUTPUT_SPACE
        contrast: each against the class `rivals[k]`); `progress` (a core Progress) gets the fraction
        of `max_evals` spent and may cancel between model calls. `background` (H×W×C float32) is
        what hidden pixels show instead of the masker's (band groups: some bands hidden everywhere)."""
        backgrounds = None if background is None else [background]
        return self.explain_tiles([image_hwc], classifier, [class_indices], settings, progress, None if rivals is None else [rivals], backgrounds)[0]

    def explain_tiles(self, images_hwc, classifier, class_indices, settings, progress=None, rivals=None, backgrounds=None):
        """TileExplanations of several tiles of one shape (`class_indices`, and `rivals` in the
        contrast space, and `backgrounds`: one per tile), each as `explain` gives it; here one tile
        after the other."""
        count = len(images_hwc)
        rivals = rivals or [None] * count
        backgrounds = [None] * count if backgrounds is None else backgrounds
        return [
            self.explain(image, classifier, indices, settings, progress.part(number / count, (number + 1) / count) if progress else None, tile_rivals, background)
            for number, (image, indices, tile_rivals, background) in enumerate(zip(images_hwc, class_indices, rivals, backgrounds))
        ]

    def cost_per_evaluation(self, classifier, shape, settings):
        """Model time of one evaluation on an H×W×C `shape` tile, relative to a full model call: what
        the automatic MAX_TILES limit prices a tile at."""
        return 1.0


def needs_shap_masking(masker):
    """Inpainting depends on the whole mask at once, so there is no box-painting shortcut: only shap
    masks with it."""
    mask_value = masker_value(masker)
    return isinstance(mask_value, str) and mask_value.startswith("inpaint")


def stacked_tiles_and_backgrounds(images_hwc, settings, backgrounds=None):
    """The tiles as one T×H×W×C float32 array and their masked backgrounds (the masker's, or the
    `backgrounds` given), or None for inpainting maskers (shap only)."""
    if backgrounds is None and needs_shap_masking(settings.masker):
        return None
    images = np.stack([np.asarray(image, dtype=np.float32) for image in images_hwc])
    if backgrounds is not None:
        return images, np.stack([np.asarray(background, dtype=np.float32) for background in backgrounds])
    mask_value = masker_value(settings.masker)
    return images, np.stack([masked_background(image, mask_value) for image in images])


def explained_by_traversals(evaluator, images_hwc, class_indices, settings, progress, rivals=None):
    """Walk shap's traversal of every tile in flight with `evaluator` (all tiles' rounds in its
    calls): a TileExplanation per tile."""
    root = Box(0, images_hwc.shape[1], 0, images_hwc.shape[2], 0, images_hwc.shape[3])
    starts = evaluator.start(root)
    rivals = rivals or [None] * len(starts)
    traversals = [
        OwenTraversal(root, base, full, indices, settings.max_evals - 2, settings.batch_size, np.random.RandomState(settings.seed), tile, tile_rivals)  # shap's seeded global RNG, per tile
        for tile, ((base, full), indices, tile_rivals) in enumerate(zip(starts, class_indices, rivals))
    ]
    walk(evaluator, traversals, progress)
    explanations = []
    for traversal, image_hwc, ((base_all, _), full_all) in zip(traversals, images_hwc, starts):
        values = lower_credit(traversal.node_values, root, image_hwc.shape, len(traversal.indices))
        explanations.append(
            TileExplanation(
                values=values,
                base_values=traversal.explained(base_all),
                output_values=traversal.explained(full_all),
                class_indices=traversal.indices,
                rival_indices=traversal.rivals,
            )
        )
    return explanations
