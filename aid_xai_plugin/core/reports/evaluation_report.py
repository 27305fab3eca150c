"""Evaluation figures and report: confusion-matrix PNG, HTML summary and per-class CSV.

matplotlib is used through its object API with the Agg canvas (imported inside the functions), so
nothing switches the backend or touches pyplot state of a running QGIS desktop.
"""

import base64
import csv
import html
import os

import numpy as np

from ..common.atomic import atomic_output


def write_confusion_matrix_png(path, matrix, class_names, title="Confusion matrix (rows normalised to the true class)"):
    """Row-normalised confusion matrix with class names on both axes, written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    matrix = np.asarray(matrix, dtype=np.float64)
    row_sums = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, row_sums, out=np.zeros_like(matrix), where=row_sums > 0)
    count = len(class_names)
    side = max(5.0, 0.38 * count + 2.5)
    figure = Figure(figsize=(side + 1.0, side), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="fraction of the true class")
    axes.set_xticks(range(count))
    axes.set_yticks(range(count))
    axes.set_xticklabels(class_names, rotation=90, fontsize=8)
    axes.set_yticklabels(class_names, fontsize=8)
    axes.set_xlabel("Predicted class")
    axes.set_ylabel("True class")
    axes.set_title(title, fontsize=10)
    if count <= 15:
        for row in range(count):
            for column in range(count):
                value = normalised[row, column]
                if value > 0:
                    axes.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=7, color="white" if value > 0.5 else "black")
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format="png")
    return path


def write_per_class_csv(path, results):
    """precision, recall, F1 and support per class, written atomically."""
    with atomic_output(path) as temporary:
        with open(temporary, "w", encoding="utf-8", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=["class_name", "precision", "recall", "f1", "support"])
            writer.writeheader()
            writer.writerows(results["per_class"])
    return path


def write_evaluation_report(html_path, results, csv_path=None):
    """HTML report (scores, per-class table, embedded confusion matrix) with its PNG and CSV beside it.

    `results` is what `metrics.evaluate_folder` returns. The PNG is also embedded, so the HTML stays
    complete when it is moved on its own. Returns the paths written.
    """
    root = os.path.splitext(html_path)[0]
    png_path = root + "_confusion.png"
    csv_path = csv_path or root + ".csv"
    write_confusion_matrix_png(png_path, results["confusion_matrix"], results["class_names"])
    write_per_class_csv(csv_path, results)
    with open(png_path, "rb") as stream:
        png_base64 = base64.b64encode(stream.read()).decode("ascii")
    rows = "\n".join(
        f"<tr><td>{html.escape(entry['class_name'])}</td><td>{entry['precision']:.3f}</td><td>{entry['recall']:.3f}</td>"
        f"<td>{entry['f1']:.3f}</td><td>{entry['support']}</td></tr>"
        for entry in results["per_class"]
    )
    details = "".join(
        f"<tr><th>{html.escape(label)}</th><td>{html.escape(str(results[key]))}</td></tr>"
        for label, key in (("Model", "model"), ("Model SHA-256", "model_sha256"), ("Image folder", "folder"), ("Images", "n_images"), ("Input size", "input_size"))
        if key in results
    )
    csv_link = os.path.relpath(os.path.abspath(csv_path), os.path.dirname(os.path.abspath(html_path)))
    document = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>AID-XAI evaluation</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}</style>
</head><body>
<h1>AID-XAI evaluation</h1>
<p><b>Overall accuracy:</b> {results['accuracy']:.4f} &nbsp; <b>Macro-F1:</b> {results['macro_f1']:.4f}</p>
<table>{details}</table>
<h2>Per class</h2>
<table><tr><th>Class</th><th>Precision</th><th>Recall</th><th>F1</th><th>Support</th></tr>
{rows}
</table>
<p>Also as CSV: <a href="{html.escape(csv_link)}">{html.escape(csv_link)}</a></p>
<h2>Confusion matrix</h2>
<p><a href="{html.escape(os.path.basename(png_path))}">{html.escape(os.path.basename(png_path))}</a></p>
<img alt="Confusion matrix" src="data:image/png;base64,{png_base64}">
</body></html>
"""
    with atomic_output(html_path) as temporary:
        with open(temporary, "w", encoding="utf-8") as stream:
            stream.write(document)
    return {"html": html_path, "png": png_path, "csv": csv_path}
