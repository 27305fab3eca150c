"""Classification scores from a confusion matrix (numpy only).

Macro-F1 averages the per-class F1 over the classes that occur in the truth or the predictions (as
scikit-learn does), so a folder holding a subset of the model's classes is scored on that subset.
"""

import numpy as np


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
