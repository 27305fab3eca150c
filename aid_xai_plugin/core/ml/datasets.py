"""Folder-per-class image sets (AID's layout) as the model sees them, how they are split and augmented,
and their per-band statistics.

Images are read with `preprocess.load_image_file`, the resize the raster path uses, so a model sees
the same arrays when it is trained, evaluated and when it classifies tiles.
"""

import functools
import os

import numpy as np

from ..common.errors import AidXaiError
from .preprocess import load_image_file


def _chw_tensor(image_hwc):
    import torch

    return torch.from_numpy(np.ascontiguousarray(image_hwc.transpose(2, 0, 1)))


def image_folder(folder, input_size):
    """A torchvision ImageFolder whose images are loaded exactly as classification loads tiles."""
    from torchvision.datasets import ImageFolder

    if not folder or not os.path.isdir(folder):
        raise AidXaiError(f"Dataset folder '{folder}' does not exist; give a folder with one sub-folder of images per class (AID's layout).")
    try:
        return ImageFolder(folder, loader=functools.partial(load_image_file, size=input_size), transform=_chw_tensor)
    except FileNotFoundError as error:
        raise AidXaiError(
            f"Dataset folder '{folder}': {error}. It needs one sub-folder per class, each holding images (PNG, JPEG, TIFF…)."
        ) from error


def stratified_split(targets, validation_fraction, seed, class_names):
    """Seeded per-class split: round(fraction × n) validation images per class, at least one each way."""
    targets = np.asarray(targets)
    counts = np.bincount(targets, minlength=len(class_names))
    too_small = [f"{name} ({count})" for name, count in zip(class_names, counts) if count < 2]
    if too_small:
        raise AidXaiError(
            f"Class folder(s) {', '.join(too_small)} have fewer than 2 images; each class needs at least one training and one "
            "validation image. Add images or remove those folders."
        )
    # not sklearn's StratifiedShuffleSplit: it rounds the validation size over all classes, which split
    # AID 7,200/800 instead of the README's 7,199/801 (89 validation images in common), left classes of 2
    # and 3 images out of validation and refuses fewer validation images than classes
    rng = np.random.default_rng(seed)
    train_indices, validation_indices = [], []
    for label, count in enumerate(counts):
        members = rng.permutation(np.flatnonzero(targets == label))
        n_validation = min(max(1, int(round(validation_fraction * count))), count - 1)
        validation_indices.extend(members[:n_validation].tolist())
        train_indices.extend(members[n_validation:].tolist())
    return sorted(train_indices), sorted(validation_indices)


def augment_batch(images, generator):
    """Random flips and 90° rotations: aerial scenes have no canonical 'up', so these are label-safe."""
    import torch

    # not torchvision.transforms.v2: its random transforms draw from torch's global RNG (no generator) and
    # once per call, the same flip for the whole batch; this stream is the seeded generator's, per image
    rotations = torch.randint(0, 4, (len(images),), generator=generator).tolist()
    flips = torch.randint(0, 2, (len(images),), generator=generator).tolist()
    augmented = []
    for image, quarter_turns, flip in zip(images, rotations, flips):
        image = torch.rot90(image, quarter_turns, dims=(1, 2))
        augmented.append(torch.flip(image, dims=(2,)) if flip else image)
    return torch.stack(augmented)


def band_statistics(dataset, indices, progress, batch_size=64):
    """Per-band mean and std of the images at `indices` (float64 sums, one read pass)."""
    import torch
    from torch.utils.data import DataLoader, Subset

    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False, num_workers=0)
    total = total_squares = None
    pixels = 0
    for batch_index, (images, _) in enumerate(loader):
        progress.check_cancel()
        images = images.to(torch.float64)
        sums, squares = images.sum(dim=(0, 2, 3)), (images * images).sum(dim=(0, 2, 3))
        total = sums if total is None else total + sums
        total_squares = squares if total_squares is None else total_squares + squares
        pixels += images.shape[0] * images.shape[2] * images.shape[3]
        progress.fraction((batch_index + 1) / len(loader))
    mean = total / pixels
    std = torch.sqrt(torch.clamp(total_squares / pixels - mean * mean, min=0.0))
    return mean.tolist(), torch.clamp(std, min=1e-6).tolist()
