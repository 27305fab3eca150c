"""HTML report of explained tiles in shap.image_plot's layout: the tile, then one map per class."""

import base64
import html
import io
import os

import numpy as np

from .atomic import atomic_output


def _figure_png(item, names):
    """One row: the tile (with its true label) and its SHAP maps, red = pushes the class up."""
    import matplotlib

    matplotlib.use("Agg")
    import shap
    from matplotlib import pyplot

    image = item["image"][..., :3] if item["image"].shape[2] >= 3 else np.repeat(item["image"][..., :1], 3, axis=2)
    shap_maps = [item["values"][None, ..., k : k + 1] for k in range(item["values"].shape[2])]
    labels = np.array([[f"{names[c]} ({p:.2f})" for c, p in zip(item["indices"], item["probabilities"])]])
    shap.image_plot(shap_maps, image[None], labels=labels, true_labels=[item["label"] or " "], show=False)
    buffer = io.BytesIO()
    pyplot.gcf().savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    pyplot.close("all")
    return buffer.getvalue()


def write_explanation_report(path, explained, names, settings, engine):
    rows = []
    for item in explained:
        tile = item["tile"]
        png = base64.b64encode(_figure_png(item, names)).decode("ascii")
        facts = ", ".join(
            f"{html.escape(names[c])}: p={p:.3f}, base={b:.3f}, ΣSHAP={item['values'][..., k].sum():+.3f}"
            for k, (c, p, b) in enumerate(zip(item["indices"], item["probabilities"], item["base_values"]))
        )
        label = f" — true label: <b>{html.escape(item['label'])}</b>" if item["label"] else ""
        rows.append(f"<h3>Tile {tile.index} (row {tile.row}, col {tile.col}){label}</h3><p>{facts}</p><img src='data:image/png;base64,{png}'/>")
    document = f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>AID-XAI explanation report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:80em}} img{{max-width:100%}}</style></head><body>
<h1>Partition-SHAP explanations</h1>
<p>Engine {html.escape(engine)}, masker {html.escape(settings.masker)}, max_evals {settings.max_evals}, batch size {settings.batch_size}, seed {settings.seed}.
Red pixels raise the class probability, blue pixels lower it; per tile and class the values sum to
p − base (base = the probability for the fully masked tile).</p>
{''.join(rows)}</body></html>"""
    with atomic_output(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as stream:
            stream.write(document)
    return os.path.abspath(path)
