"""A training run's metrics files: the JSON summary and the per-epoch CSV beside it."""

import csv
import json
import os

from ..common.atomic import atomic_output


def metrics_csv_path(metrics_path):
    """Where the per-epoch CSV goes: beside the JSON, same name with .csv."""
    root, extension = os.path.splitext(metrics_path)
    return (root if extension.lower() == ".json" else metrics_path) + ".csv"


def write_metrics(metrics_path, metrics):
    """The metrics as JSON, and the per-epoch history as CSV beside it (both atomic)."""
    with atomic_output(metrics_path) as temporary:
        with open(temporary, "w", encoding="utf-8") as stream:
            json.dump(metrics, stream, indent=2)
    with atomic_output(metrics_csv_path(metrics_path)) as temporary:
        with open(temporary, "w", encoding="utf-8", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=list(metrics["history"][0]))
            writer.writeheader()
            writer.writerows(metrics["history"])
