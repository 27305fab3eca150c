"""Classification scores (numpy only) and evaluation of a model file on a labelled image folder.

Macro-F1 averages the per-class F1 over the classes that occur in the truth or the predictions (as
scikit-learn does), so a folder holding a subset of the model's classes is scored on that subset.
"""

import os

import numpy as np

from .errors import AidXaiError
from .progress import Progress


def confusion_matrix(true_labels, predicted_labels, num_classes):
    """Counts: rows are the true class, columns the predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(true_labels, dtype=np.int64), np.asarray(predicted_labels, dtype=np.int64)), 1)
    return matrix


def accuracy(matrix):
    total = matrix.sum()
    return float(np.trace(matrix) / total) if total else 0.0


def _safe_divide(numerator, denominator):
    """Element-wise ratio that is 0 where the denominator is 0 (no predictions or no support)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def per_class_scores(matrix):
    """Per-class precision, recall, F1 and support (true count), as float/int arrays."""
    true_positives = np.diag(matrix)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    precision = _safe_divide(true_positives, predicted)
    recall = _safe_divide(true_positives, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    return precision, recall, f1, support


def macro_f1(matrix):
    """Mean F1 over the classes present in the truth or the predictions."""
    _, _, f1, support = per_class_scores(matrix)
    present = (support + matrix.sum(axis=0)) > 0
    return float(f1[present].mean()) if present.any() else 0.0


def summarize(matrix, class_names):
    """JSON-ready scores of a confusion matrix whose rows/columns follow `class_names`."""
    precision, recall, f1, support = per_class_scores(matrix)
    return {
        "accuracy": accuracy(matrix),
        "macro_f1": macro_f1(matrix),
        "class_names": list(class_names),
        "confusion_matrix": matrix.tolist(),
        "per_class": [
            {"class_name": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(class_names, precision, recall, f1, support)
        ],
    }


def evaluate_folder(model_path, folder, device="auto", batch_size=64, progress=None):
    """Score a model file on a folder-per-class image set whose folder names are model class names.

    Images go through the same loader and resize as training. The confusion matrix covers the
    folder's classes plus any other class the model predicted, in the model's class order.
    """
    import torch
    from torch.utils.data import DataLoader

    from .inference import Classifier
    from .model_file import load_model
    from .training import image_folder

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
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
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
    position = {model_index: i for i, model_index in enumerate(used)}
    matrix = confusion_matrix(
        [position[label] for label in true_labels], [position[label] for label in predicted_labels], len(used)
    )
    results = summarize(matrix, [info.class_names[i] for i in used])
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
