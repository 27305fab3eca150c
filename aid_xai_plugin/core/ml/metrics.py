"""Classification scores of predicted against true class indices, by scikit-learn.

Macro-F1 averages the per-class F1 over the classes that occur in the truth or the predictions, so a
folder holding a subset of the model's classes is scored on that subset.
"""


def summarize(true_labels, predicted_labels, class_names, labels=None):
    """JSON-ready scores. The confusion matrix (rows: truth, columns: prediction) and the per-class
    scores follow `labels` (class indices; default 0…n−1), named by `class_names`; a class with no
    predictions or no support scores 0 there."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    labels = list(range(len(class_names)) if labels is None else labels)
    precision, recall, f1, support = precision_recall_fscore_support(true_labels, predicted_labels, labels=labels, zero_division=0)
    return {
        "accuracy": float(accuracy_score(true_labels, predicted_labels)),
        "macro_f1": float(f1_score(true_labels, predicted_labels, average="macro", zero_division=0)),  # no labels=: the classes present
        "class_names": list(class_names),
        "confusion_matrix": confusion_matrix(true_labels, predicted_labels, labels=labels).tolist(),
        "per_class": [
            {"class_name": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(class_names, precision, recall, f1, support)
        ],
    }
