"""HTML report of explanation quality: a summary of the means, then per tile the deletion and
insertion curves (SHAP order vs random orders) and the trained vs randomised model's maps.

The summary comes first but is known only at the end, so tile sections are streamed to an unnamed
temporary file as each tile is done and copied after the summary when the run succeeds: memory
stays flat however many tiles are assessed, and a failed or cancelled run leaves nothing. Figures
are PNGs inlined as base64 (one self-contained file), drawn with matplotlib's object API and the Agg
canvas, never pyplot or matplotlib.use, so a running QGIS keeps its backend and figures.
"""

import base64
import html
import io
import math
import os
import shutil
import tempfile

import numpy as np

from ..common.atomic import atomic_output
from .explanation_report import _COLOUR_STOPS

_SHAP_COLOUR = "#d62728"
_RANDOM_COLOUR = "#7f7f7f"
_SMALLEST_LIMIT = 1e-12  # colour limit of an all-zero map
_FOOTER = "</body></html>\n"


class QualityReport:
    """Context manager: `add` a tile at a time, `summarise` the means, and the file appears at
    `path` on success (written under a temporary name and moved into place)."""

    def __init__(self, path, settings, engine, randomise, steps, random_orders):
        self.path = os.path.abspath(path)
        self._header = _header(settings, engine, randomise, steps, random_orders)
        self._summary = ""
        self._body = None

    def __enter__(self):
        folder = os.path.dirname(self.path)
        os.makedirs(folder, exist_ok=True)
        self._body = tempfile.TemporaryFile("w+", encoding="utf-8", dir=folder)  # no name: gone when closed
        return self

    def add(self, tile_index, row, col, image_hwc, class_names, probabilities, curves, trained_values, randomised_values, correlations, label=""):
        """Write one tile's section and keep nothing. `curves` is a FaithfulnessCurves for the K
        classes `class_names`; trained/randomised values: H×W×K channel-summed maps; correlations: K."""
        facts = "; ".join(
            f"{html.escape(name)} (p={float(p):.3f}): deletion AUC {curves.deletion_auc[k]:.3f} vs random {curves.random_deletion_auc[k]:.3f}, "
            f"insertion AUC {curves.insertion_auc[k]:.3f} vs random {curves.random_insertion_auc[k]:.3f}, ρ {correlation_text(correlations[k])}"
            for k, (name, p) in enumerate(zip(class_names, probabilities))
        )
        true_label = f" — true label: <b>{html.escape(label)}</b>" if label else ""
        png = base64.b64encode(_tile_png(image_hwc, class_names, probabilities, curves, np.asarray(trained_values), np.asarray(randomised_values), correlations)).decode("ascii")
        self._body.write(f"<h3>Tile {tile_index} (row {row}, col {col}){true_label}</h3><p>{facts}</p><img src='data:image/png;base64,{png}'/>\n")

    def summarise(self, summary):
        """The means over all assessed tiles and classes (a QualityResult), shown before the tiles."""
        self._summary = _summary_html(summary)

    def __exit__(self, exc_type, exc, tb):
        with self._body:
            if exc_type is None:
                with atomic_output(self.path) as temporary, open(temporary, "w", encoding="utf-8") as stream:
                    stream.write(self._header + self._summary)
                    self._body.seek(0)
                    shutil.copyfileobj(self._body, stream)
                    stream.write(_FOOTER)
        return False


def correlation_text(correlation):
    """ρ for people: signed, or why there is none."""
    return "undefined (constant map)" if math.isnan(correlation) else f"{correlation:+.2f}"


def _header(settings, engine, randomise, steps, random_orders):
    return f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>AID-XAI explanation quality</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:80em}} img{{max-width:100%}} td,th{{padding:0.2em 0.8em;text-align:right}} th:first-child,td:first-child{{text-align:left}}</style></head><body>
<h1>Explanation quality (partition SHAP)</h1>
<p>Engine {html.escape(engine)}, masker {html.escape(settings.masker)}, max_evals {settings.max_evals}, explained space {html.escape(settings.output_space)},
seed {settings.seed}; curves at {steps + 1} points, {random_orders} random order(s); sanity check: model with its {html.escape(randomise)} layer(s) re-initialised.</p>
"""


def _summary_html(summary):
    def number(value):
        return "–" if math.isnan(value) else f"{value:.3f}"

    return f"""<h2>Summary over {summary.assessed} tile(s)</h2>
<table><tr><th></th><th>SHAP order</th><th>random order</th></tr>
<tr><td>deletion AUC</td><td>{number(summary.deletion_auc)}</td><td>{number(summary.random_deletion_auc)}</td></tr>
<tr><td>insertion AUC</td><td>{number(summary.insertion_auc)}</td><td>{number(summary.random_insertion_auc)}</td></tr>
<tr><td>mean |ρ|, trained vs randomised model</td><td>{number(summary.abs_rank_correlation)}</td><td></td></tr></table>
<p><b>Deletion</b>: the class probability as the most important pixels (by the map) are hidden first with the explanation's masker.
A faithful map makes it fall fast: its area (AUC) is <i>lower</i> than with pixels hidden in random order.</p>
<p><b>Insertion</b>: the probability as those pixels are revealed first on the fully masked tile. A faithful map makes it rise fast:
its AUC is <i>higher</i> than random. Curves are in probability whatever space was explained; compare settings (MAX_EVALS, masker, space)
by these gaps on the same tiles.</p>
<p><b>Randomisation check</b>: Spearman's ρ between the map of the trained model and that of a copy with re-initialised weights.
|ρ| near 0 means the explanation depends on the learned weights, as it should; |ρ| near 1 means it mostly shows the image, whatever the model learned.
ρ ranks every pixel, so a randomised map that still lights up the same object but orders the rest differently can have a small ρ: look at the maps too.</p>
<h2>Tiles</h2>
"""


def _tile_png(image_hwc, names, probabilities, curves, trained, randomised, correlations):
    """One row per class: the tile, the trained and the randomised model's maps (each with its own
    symmetric colour scale: their magnitudes differ), the deletion and the insertion curves."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LinearSegmentedColormap
    from matplotlib.figure import Figure

    image = np.clip(np.asarray(image_hwc, dtype=np.float32), 0.0, 1.0)
    rgb = image[..., :3] if image.shape[2] >= 3 else np.repeat(image[..., :1], 3, axis=2)
    grey = 0.2989 * rgb[..., 0] + 0.5870 * rgb[..., 1] + 0.1140 * rgb[..., 2]
    colours = LinearSegmentedColormap.from_list("red_transparent_blue", _COLOUR_STOPS)
    figure = Figure(figsize=(13.5, 2.9 * len(names)), dpi=80)
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(len(names), 5, width_ratios=[1, 1, 1, 1.3, 1.3], wspace=0.35, hspace=0.45)
    for k, (name, probability) in enumerate(zip(names, probabilities)):
        axes = figure.add_subplot(grid[k, 0], xticks=[], yticks=[])
        axes.imshow(rgb)
        axes.set_title(f"{name} (p={float(probability):.2f})", fontsize=9)
        for column, (values, title) in enumerate(((trained[..., k], "trained model"), (randomised[..., k], f"randomised, ρ {correlation_text(correlations[k])}")), start=1):
            axes = figure.add_subplot(grid[k, column], xticks=[], yticks=[])
            limit = float(np.max(np.abs(values), initial=0.0)) or _SMALLEST_LIMIT
            axes.imshow(grey, cmap="gray", vmin=0.0, vmax=1.0, alpha=0.15)
            axes.imshow(values, cmap=colours, vmin=-limit, vmax=limit)
            axes.set_title(title, fontsize=9)
        for column, (kind, shap_curve, random_curve) in enumerate(
            (("deletion", curves.deletion[k], curves.random_deletion[k]), ("insertion", curves.insertion[k], curves.random_insertion[k])), start=3
        ):
            axes = figure.add_subplot(grid[k, column])
            shap_auc, random_auc = getattr(curves, f"{kind}_auc")[k], getattr(curves, f"random_{kind}_auc")[k]
            axes.plot(curves.fractions, shap_curve, color=_SHAP_COLOUR, label=f"SHAP order (AUC {shap_auc:.3f})")
            axes.plot(curves.fractions, random_curve, color=_RANDOM_COLOUR, linestyle="--", label=f"random (AUC {random_auc:.3f})")
            axes.set_ylim(-0.02, 1.02)
            axes.set_xlim(0.0, 1.0)
            axes.set_title(kind, fontsize=9)
            axes.set_xlabel(f"fraction of pixels {'hidden' if kind == 'deletion' else 'revealed'}", fontsize=8)
            axes.set_ylabel(f"p({name})", fontsize=8)
            axes.tick_params(labelsize=7)
            axes.legend(fontsize=7, loc="upper right" if kind == "deletion" else "lower right")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()
