"""Evidence per band group (e.g. RGB and NIR): how much each group of bands adds to a class, per
tile and per pixel.

A group is hidden by showing the masker's background in its bands; the other bands keep what they
show, and bands in no group are never hidden. With v(S) = f(tile with the groups in S visible):
- per tile, the groups' exact Shapley values, from the 2^G tiles of every subset S. They sum to
  v(all) − v(none) = f(tile) − f(all groups hidden);
- per pixel, group g's map is the Shapley-weighted sum, over the subsets T of the other groups, of
  partition SHAP maps of the game "reveal pixels of g on the tile where T is visible and the rest
  hidden" (the engine's explanation of the tile with T ∪ {g} visible against the background with T
  visible). Each such map sums to v(T ∪ {g}) − v(T), so group g's map sums to its Shapley value and
  all groups' maps to f(tile) − f(all groups hidden). One group holding every band is the ordinary
  map. It costs G · 2^(G−1) explanations per tile (4 for two groups).
"""

import dataclasses
import itertools
import math
import re

import numpy as np

from ..common.errors import AidXaiError
from ..ml.classifier import explained_outputs
from .engine import needs_shap_masking

MAX_BAND_GROUPS = 8  # 2^8 = 256 model evaluations per tile for the exact group values
_GROUP = re.compile(r"^\s*([^=;,]+?)\s*=\s*([\d\s,\-]+)\s*$")


@dataclasses.dataclass(frozen=True)
class BandGroup:
    name: str
    bands: tuple  # 0-based model-input channels


def parse_band_groups(text, band_count):
    """BAND_GROUPS text ('RGB=1,2,3;NIR=4'; bands are the model's input bands from 1, ranges like
    1-3 allowed) as BandGroups; empty text: one group per band ('band 1', …). Clear errors for
    anything else."""
    if not (text or "").strip():
        groups = [BandGroup(f"band {band + 1}", (band,)) for band in range(band_count)]
    else:
        groups = [_parsed_group(part, band_count) for part in text.split(";") if part.strip()]
    names = [group.name for group in groups]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise AidXaiError(f"BAND_GROUPS names {', '.join(repeated)} more than once; give each group its own name.")
    bands = [band for group in groups for band in group.bands]
    shared = sorted({band + 1 for band in bands if bands.count(band) > 1})
    if shared:
        raise AidXaiError(f"BAND_GROUPS puts band(s) {', '.join(map(str, shared))} in two groups; a band belongs to one group (or none: it is then never hidden).")
    if len(groups) > MAX_BAND_GROUPS:
        raise AidXaiError(
            f"BAND_GROUPS has {len(groups)} groups; at most {MAX_BAND_GROUPS} (the exact group values take 2^G model evaluations per tile and the maps "
            f"G·2^(G−1) explanations). Join bands into fewer groups, e.g. RGB=1,2,3;NIR=4."
        )
    return tuple(groups)


def _parsed_group(part, band_count):
    match = _GROUP.match(part)
    if not match:
        raise AidXaiError(f"BAND_GROUPS part '{part.strip()}' is not NAME=bands; write groups as NAME=bands separated by ';', e.g. RGB=1,2,3;NIR=4.")
    name, bands = match.group(1), []
    for item in filter(None, (item.strip() for item in match.group(2).split(","))):
        first, _, last = item.partition("-")
        try:
            bands.extend(range(int(first), int(last or first) + 1))
        except ValueError:
            raise AidXaiError(f"BAND_GROUPS group '{name}': '{item}' is not a band number or a range like 1-3.") from None
    outside = [band for band in bands if not 1 <= band <= band_count]
    if not bands or outside:
        raise AidXaiError(f"BAND_GROUPS group '{name}' names band(s) {', '.join(map(str, outside)) or '(none)'}; this model takes {band_count} band(s), numbered 1 to {band_count}.")
    return BandGroup(name, tuple(sorted(set(band - 1 for band in bands))))


def check_group_masker(masker):
    if needs_shap_masking(masker):
        raise AidXaiError(
            f"BAND_GROUPS needs a blur or constant MASKER, not {masker}: inpainting fills a hidden region from its surroundings in all bands at once, "
            "so one group's bands cannot be hidden alone."
        )


def shapley_weight(others_visible, group_count):
    """|T|! (G − |T| − 1)! / G!: the Shapley weight of a group joining the T others visible."""
    return math.factorial(others_visible) * math.factorial(group_count - others_visible - 1) / math.factorial(group_count)


def group_games(group_count):
    """(group, the other groups visible, Shapley weight) of every partition game the maps sum."""
    for group in range(group_count):
        others = [other for other in range(group_count) if other != group]
        for size in range(group_count):
            for visible in itertools.combinations(others, size):
                yield group, visible, shapley_weight(size, group_count)


def coalition_tile(image_hwc, background_hwc, groups, visible):
    """The tile with the groups at positions `visible` (and bands in no group) showing the image,
    the other groups the background (float32, as the model gets it)."""
    shown = np.ones(image_hwc.shape[-1], dtype=bool)
    for position, group in enumerate(groups):
        shown[list(group.bands)] = position in visible
    return np.where(shown, image_hwc, background_hwc).astype(np.float32)


@dataclasses.dataclass
class GroupExplanation:
    maps: np.ndarray  # H×W×K×G: each group's evidence per model-input pixel (channels summed)
    shapley: np.ndarray  # K×G: the groups' exact Shapley values (float64)
    base_values: np.ndarray  # K: v(no group visible)
    output_values: np.ndarray  # K: v(every group visible) = f(tile)
    class_indices: np.ndarray
    rival_indices: np.ndarray = None
    fallback_reason: str = None


def group_shapley_values(classifier, image_hwc, background_hwc, groups, class_indices, settings, rivals=None):
    """(K×G exact Shapley values, K v(none), K v(all)) of one tile, from the model on all 2^G tiles."""
    count = len(groups)
    coalitions = list(itertools.product((False, True), repeat=count))  # position i: group i visible
    tiles = np.stack([coalition_tile(image_hwc, background_hwc, groups, {g for g in range(count) if members[g]}) for members in coalitions])
    # each tile alone, as the engines evaluate a game's f(shown) and f(hidden): the maps then sum to
    # these values up to the partition's own float64 rounding
    scores = classifier.predict_outputs(tiles, settings.output_space, batch_size=1)
    values = dict(zip(coalitions, explained_outputs(scores, np.asarray(class_indices), rivals)))
    shapley = np.zeros((len(class_indices), count))
    for members, value in values.items():
        for group in range(count):
            if not members[group]:
                joined = members[:group] + (True,) + members[group + 1 :]
                shapley[:, group] += shapley_weight(sum(members), count) * (values[joined] - value)
    return shapley, values[(False,) * count], values[(True,) * count]


def explain_band_groups(engine, images_hwc, backgrounds_hwc, classifier, class_indices, settings, groups, progress=None, rivals=None, in_flight=1):
    """GroupExplanations of tiles (each with its masker background): the partition games of all
    tiles, `in_flight` of them explained together by `engine`."""
    check_group_masker(settings.masker)
    tile_rivals = rivals or [None] * len(images_hwc)
    results = []
    for image, background, indices, rival in zip(images_hwc, backgrounds_hwc, class_indices, tile_rivals):
        shapley, base, full = group_shapley_values(classifier, image, background, groups, indices, settings, rival)
        maps = np.zeros(image.shape[:2] + (len(indices), len(groups)))
        results.append(GroupExplanation(maps, shapley, base, full, np.asarray(indices), None if rival is None else np.asarray(rival)))
    work = [(tile, game) for tile in range(len(images_hwc)) for game in group_games(len(groups))]
    step = max(1, in_flight)
    for start in range(0, len(work), step):
        chunk = work[start : start + step]
        part = progress.part(start / len(work), (start + len(chunk)) / len(work)) if progress else None
        shown = [coalition_tile(images_hwc[tile], backgrounds_hwc[tile], groups, set(visible) | {group}) for tile, (group, visible, _) in chunk]
        hidden = [coalition_tile(images_hwc[tile], backgrounds_hwc[tile], groups, set(visible)) for tile, (group, visible, _) in chunk]
        chunk_rivals = None if rivals is None else [rivals[tile] for tile, _ in chunk]
        explanations = engine.explain_tiles(shown, classifier, [class_indices[tile] for tile, _ in chunk], settings, part, chunk_rivals, hidden)
        for (tile, (group, _, weight)), explanation in zip(chunk, explanations):
            results[tile].maps[..., group] += weight * explanation.values.sum(axis=2)
            results[tile].fallback_reason = results[tile].fallback_reason or explanation.fallback_reason
    return results
