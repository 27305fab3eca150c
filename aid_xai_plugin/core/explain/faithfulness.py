"""How faithful an explanation is to the model: deletion/insertion curves and a sanity check.

Deletion and insertion (Petsiuk et al., RISE, 2018): hide the tile's model-input pixels in order of
attribution for a class, most positive first, and follow the class probability (deletion: it should
fall fast, so a low area under the curve); or start from the fully hidden tile and reveal pixels in
that order (insertion: it should rise fast, a high area). Pixels are hidden with the explanation's
own masker, so the curves measure the explanation against the perturbation it was computed with.
Random orders give the baseline an explanation has to beat.

The model-randomisation check (Adebayo et al., 2018) compares the map of the trained model with the
map of a copy with re-initialised layers by Spearman rank correlation: an explanation that depends
on what the model learned changes (|ρ| near 0); one that mostly shows the image (edges, contrast)
does not.

Curves are in probability whatever space the attributions were computed in (as RISE does), so AUCs
of different settings compare on one scale. Only `classifier.predict_probabilities` is used.
"""

import dataclasses

import numpy as np

from .engine import masker_value
from .partition import masked_background


@dataclasses.dataclass(frozen=True)
class FaithfulnessCurves:
    """Curves of K classes at P = steps + 1 fractions of pixels hidden (deletion) or revealed (insertion)."""

    fractions: np.ndarray  # P: 0 … 1
    deletion: np.ndarray  # K×P class probability, pixels hidden in attribution order
    insertion: np.ndarray  # K×P class probability, pixels revealed in attribution order
    random_deletion: np.ndarray  # K×P mean over random orders
    random_insertion: np.ndarray  # K×P

    @property
    def deletion_auc(self):
        return area_under(self.fractions, self.deletion)

    @property
    def insertion_auc(self):
        return area_under(self.fractions, self.insertion)

    @property
    def random_deletion_auc(self):
        return area_under(self.fractions, self.random_deletion)

    @property
    def random_insertion_auc(self):
        return area_under(self.fractions, self.random_insertion)


def area_under(fractions, curves):
    """Trapezoid-rule area of each row of `curves` over `fractions`, in float64. scipy's trapezoid:
    numpy's is np.trapz before 2.0 and np.trapezoid from 2.0; scipy (which shap needs) is imported
    here, not when the plugin loads."""
    from scipy.integrate import trapezoid

    return trapezoid(np.asarray(curves, dtype=np.float64), fractions, axis=-1)


class PixelHider:
    """Model-input tiles with chosen pixels hidden exactly as the explanation's masker hides them.

    blur and constant maskers replace a hidden pixel by a fixed background (cv2.blur of the tile or
    the constant), in every band or only in `bands` (a band group's map hides that group's bands);
    inpainting fills hidden pixels from the visible ones, so each mask goes through shap's own Image
    masker."""

    def __init__(self, image_hwc, masker, bands=None):
        self.image = np.asarray(image_hwc, dtype=np.float32)
        mask_value = masker_value(masker)
        self._shap_masker = None
        if isinstance(mask_value, str) and mask_value.startswith("inpaint"):
            import shap

            self._shap_masker = shap.maskers.Image(mask_value, self.image.shape)
        else:
            self.background = masked_background(self.image, mask_value)
            if bands is not None:
                self.background = np.where(np.isin(np.arange(self.image.shape[2]), bands), self.background, self.image)

    def compose(self, visible):
        """N×H×W×C float32 tiles from N×H×W booleans (True = the tile's own pixel is shown)."""
        visible = np.asarray(visible, dtype=bool)
        if self._shap_masker is None:
            return np.where(visible[..., None], self.image, self.background)
        bands = self.image.shape[2]
        return np.stack([self._shap_masker(np.repeat(mask.ravel(), bands), self.image)[0][0] for mask in visible])


def pixel_order(values_hw):
    """Flat model-input pixel indices by attribution, most positive first (ties keep raster order)."""
    return np.argsort(-np.asarray(values_hw, dtype=np.float64).ravel(), kind="stable")


def curve_masks(order, shape, steps):
    """(deletion, insertion) visibility masks, each (steps+1)×H×W: at step i the first round(i/steps
    · pixels) pixels of `order` are hidden (deletion) or are the only ones shown (insertion)."""
    pixels = shape[0] * shape[1]
    counts = np.rint(np.linspace(0.0, 1.0, steps + 1) * pixels).astype(int)
    position = np.empty(pixels, dtype=int)
    position[order] = np.arange(pixels)  # where each pixel comes in the order
    first = position[None, :] < counts[:, None]  # (steps+1)×pixels: among the first `count`
    insertion = first.reshape(steps + 1, *shape)
    return ~insertion, insertion


def faithfulness_curves(image_hwc, values_hwk, class_indices, classifier, masker, steps=20, random_orders=3, seed=0, batch_size=64, hidden_bands=None):
    """Deletion/insertion curves of the attribution maps `values_hwk` (H×W×K, channels summed) for
    the model outputs `class_indices`, and the mean curves of `random_orders` random orders drawn
    from a generator seeded with `seed` (the same orders for every map). With `hidden_bands` (K
    band lists: band groups) map k hides and reveals only those bands of its pixels."""
    values = np.asarray(values_hwk)
    shape = values.shape[:2]
    indices = np.asarray(class_indices, dtype=int)
    bands = [None] * len(indices) if hidden_bands is None else [tuple(group) for group in hidden_bands]
    hiders = {group: PixelHider(image_hwc, masker, group) for group in dict.fromkeys(bands)}

    def probabilities(group, masks):  # (steps+1)×K probabilities of the explained classes
        return classifier.predict_probabilities(hiders[group].compose(masks), batch_size)[:, indices].astype(np.float64)

    random_means = {}
    for group in hiders:  # one model call per order and kind serves every class hiding these bands
        rng = np.random.default_rng(seed)
        random_curves = [[probabilities(group, masks) for masks in curve_masks(rng.permutation(shape[0] * shape[1]), shape, steps)] for _ in range(random_orders)]
        random_means[group] = np.mean(random_curves, axis=0).transpose(0, 2, 1)  # (deletion, insertion) × K × (steps+1)
    random_deletion = np.stack([random_means[group][0][k] for k, group in enumerate(bands)])
    random_insertion = np.stack([random_means[group][1][k] for k, group in enumerate(bands)])
    deletion, insertion = np.zeros_like(random_deletion), np.zeros_like(random_insertion)
    for k, group in enumerate(bands):
        deletion_masks, insertion_masks = curve_masks(pixel_order(values[..., k]), shape, steps)
        deletion[k], insertion[k] = probabilities(group, deletion_masks)[:, k], probabilities(group, insertion_masks)[:, k]
    return FaithfulnessCurves(np.linspace(0.0, 1.0, steps + 1), deletion, insertion, random_deletion, random_insertion)


def rank_correlation(map_a, map_b):
    """Spearman's ρ between two maps of the same shape (ties ranked by their mean rank); NaN when
    either map is constant (no order to compare)."""
    from scipy.stats import spearmanr

    a, b = np.ravel(map_a).astype(np.float64), np.ravel(map_b).astype(np.float64)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b)[0])
