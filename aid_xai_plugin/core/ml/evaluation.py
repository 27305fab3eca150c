"""Evaluate a model file on a labelled folder-per-class image set."""

import os

import numpy as np

from ..common.errors import AidXaiError
from ..common.progress import Progress
from .classifier import Classifier
from .datasets import image_folder
from .metrics import summarize
from .model_file import load_model


def evaluate_folder(model_path, folder, device="auto", batch_size=64, progress=None):
    """Score a model file on a folder-per-class image set whose folder names are model class names.

    Images go through the same loader and resize as training. The confusion matrix covers the
    folder's classes plus any other class the model predicted, in the model's class order.
    """
    import torch
    from torch.utils.data import DataLoader

    progress = progress or Progress()
    if batch_size < 1:
        raise AidXaiError(f"Batch size must be at least 1 (got {batch_size}).")
    classifier = Classifier(load_model(model_path), device)
    info = classifier.info
    if info.num_bands != 3:
        raise AidXaiError(
            f"The model expects {info.num_bands} bands but image folders are read as RGB; evaluate it with a model trained on RGB images."
        )
    dataset = image_folder(folder, info.input_size)
    unknown = [name for name in dataset.classes if name not in info.class_names]
    if unknown:
        raise AidXaiError(
            f"Class folder(s) {', '.join(unknown)} in '{folder}' are not classes of the model "
            f"({', '.join(info.class_names)}); rename or remove them so every folder name is a model class."
        )
    folder_to_model = np.array([info.class_names.index(name) for name in dataset.classes])
    true_labels, predicted_labels = [], []
    # its own generator: iterating a DataLoader otherwise draws a seed from torch's global RNG
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0, generator=torch.Generator())
    with torch.inference_mode():
        for batch_index, (images, targets) in enumerate(loader):
            progress.check_cancel()
            logits = classifier.logits_nchw(images.to(classifier.device))
            predicted_labels.append(logits.argmax(dim=1).cpu().numpy())
            true_labels.append(folder_to_model[targets.numpy()])
            progress.fraction((batch_index + 1) / len(loader))
    true_labels = np.concatenate(true_labels)
    predicted_labels = np.concatenate(predicted_labels)
    used = np.union1d(true_labels, predicted_labels)
    results = summarize(true_labels, predicted_labels, [info.class_names[i] for i in used], labels=used)
    results.update(
        {
            "model": os.path.abspath(model_path),
            "model_sha256": classifier.sha256,
            "folder": folder,
            "n_images": int(len(true_labels)),
            "input_size": info.input_size,
        }
    )
    return results
