"""HTML report of explained tiles in shap.image_plot's layout: the tile, then one map per class.

The report is a sink: each tile's row is drawn and written as soon as it is explained, so memory
stays flat however many tiles a run explains. Drawing uses matplotlib's object API with the Agg
canvas, never pyplot or matplotlib.use, so a running QGIS keeps its backend and its open figures.
"""

import base64
import contextlib
import html
import io
import os

import numpy as np

from ..common.atomic import atomic_output

# shap's red_transparent_blue (importing shap.plots imports pyplot): blue = lowers the class,
# red = raises it, both fading to transparent at 0 so the grey tile shows through
_BLUE = (30 / 255, 136 / 255, 229 / 255)
_RED = (255 / 255, 13 / 255, 87 / 255)
_COLOUR_STOPS = [(0.0, (*_BLUE, 1.0)), (0.5, (*_BLUE, 0.0)), (0.5, (*_RED, 0.0)), (1.0, (*_RED, 1.0))]
_SMALLEST_LIMIT = 1e-12  # colour limit of an all-zero row: everything maps to the transparent middle
_MAX_FIGURE_WIDTH = 20.0  # inches, as shap.image_plot's default width

_FOOTER = "</body></html>\n"


class ExplanationReport:
    """Context manager: HTML written tile by tile to a temporary file beside `path`, moved into
    place on success, removed on error or cancel (so no half report looks finished)."""

    def __init__(self, path, class_names, settings, engine):
        self.path = os.path.abspath(path)
        self._class_names = list(class_names)
        self._header = _header(settings, engine)
        self._stream = None
        self._cleanup = None

    def __enter__(self):
        with contextlib.ExitStack() as stack:  # a failing header write still removes the temporary file
            temporary = stack.enter_context(atomic_output(self.path))
            self._stream = stack.enter_context(open(temporary, "w", encoding="utf-8"))
            self._stream.write(self._header)
            self._cleanup = stack.pop_all()
        return self

    def add(self, tile_index, row, col, image_hwc, values_hwk, class_indices, probabilities, base_values, label=""):
        """Write one tile: its heading, a facts line per explained class and its figure; keeps nothing.

        image_hwc: model-input tile in [0, 1] with 1..N bands; values_hwk: H×W×K SHAP values summed
        over channels for the K classes `class_indices`; probabilities, base_values: length K."""
        values = np.asarray(values_hwk)
        names = [self._class_names[c] for c in class_indices]
        facts = ", ".join(
            f"{html.escape(name)}: p={float(p):.3f}, base={float(b):.3f}, ΣSHAP={values[..., k].sum():+.3f}"
            for k, (name, p, b) in enumerate(zip(names, probabilities, base_values))
        )
        true_label = f" — true label: <b>{html.escape(label)}</b>" if label else ""
        png = base64.b64encode(_row_png(image_hwc, values, names, probabilities, label)).decode("ascii")
        self._stream.write(f"<h3>Tile {tile_index} (row {row}, col {col}){true_label}</h3><p>{facts}</p><img src='data:image/png;base64,{png}'/>\n")
        self._stream.flush()  # the report grows on disk as the run goes, not in memory

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            with self._cleanup:  # closes the file, then moves it into place (or removes it if the footer fails)
                self._stream.write(_FOOTER)
            return False
        return self._cleanup.__exit__(exc_type, exc, tb)


def _header(settings, engine):
    """Title, run settings and how to read the colours, written before the first tile."""
    return f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>AID-XAI explanation report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:80em}} img{{max-width:100%}}</style></head><body>
<h1>Partition-SHAP explanations</h1>
<p>Engine {html.escape(engine)}, masker {html.escape(settings.masker)}, max_evals {settings.max_evals}, batch size {settings.batch_size}, seed {settings.seed}.
Red pixels raise the class probability, blue pixels lower it, pixels near 0 stay transparent over the grey tile;
the colour scale is symmetric around 0 and shared by the maps of a tile. Per tile and class the values sum to
p − base (base = the probability for the fully masked tile).</p>
"""


def _row_png(image_hwc, values, names, probabilities, label):
    """One row as shap.image_plot draws it: the tile (titled with its true label), then per class the
    tile in light grey under the SHAP map, and one colorbar under the maps."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LinearSegmentedColormap
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    image = np.clip(np.asarray(image_hwc, dtype=np.float32), 0.0, 1.0)
    rgb = image[..., :3] if image.shape[2] >= 3 else np.repeat(image[..., :1], 3, axis=2)
    grey = 0.2989 * rgb[..., 0] + 0.5870 * rgb[..., 1] + 0.1140 * rgb[..., 2]
    limit = float(np.max(np.abs(values), initial=0.0, where=np.isfinite(values))) or _SMALLEST_LIMIT
    colours = LinearSegmentedColormap.from_list("red_transparent_blue", _COLOUR_STOPS)

    # laid out in inches, so the colorbar sits right under the maps whatever the number of classes
    panels = len(names) + 1
    gap, title, bar, below_bar = 0.25, 0.4, 0.15, 0.55
    side = min(2.5, (_MAX_FIGURE_WIDTH - (panels + 1) * gap) / panels)
    width, height = panels * side + (panels + 1) * gap, below_bar + bar + gap + side + title
    figure = Figure(figsize=(width, height), dpi=90)
    FigureCanvasAgg(figure)

    def panel(left, bottom, panel_width, panel_height):
        return figure.add_axes([left / width, bottom / height, panel_width / width, panel_height / height], frameon=False, xticks=[], yticks=[])

    image_bottom = below_bar + bar + gap
    tile_axes = panel(gap, image_bottom, side, side)
    tile_axes.imshow(rgb)
    tile_axes.set_title(label or " ")
    rows, columns = values.shape[:2]
    for k, (name, probability) in enumerate(zip(names, probabilities)):
        axes = panel(gap + (k + 1) * (side + gap), image_bottom, side, side)
        axes.imshow(grey, cmap="gray", vmin=0.0, vmax=1.0, alpha=0.15, extent=(-0.5, columns - 0.5, rows - 0.5, -0.5))
        shap_map = axes.imshow(values[..., k], cmap=colours, vmin=-limit, vmax=limit)
        axes.set_title(f"{name} ({float(probability):.2f})")
    colorbar = figure.colorbar(shap_map, cax=panel(2 * gap + side, below_bar, width - 3 * gap - side, bar), orientation="horizontal", label="SHAP value")
    colorbar.outline.set_visible(False)
    colorbar.ax.xaxis.set_major_locator(MaxNLocator(5, symmetric=True))
    colorbar.ax.tick_params(labelsize=8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()
