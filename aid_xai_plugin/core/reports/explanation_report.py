"""HTML report of explained tiles in shap.image_plot's layout: the tile, then one map per class.

The report is a sink with a cap: it shows the `max_tiles` least confident tiles (smallest margin
p1 − p2, where an explanation helps most), or every tile when the cap is 0. A tile that can still be
among those is written to a spool folder on disk at once (its arrays, not kept in memory) and
deleted when a less confident tile displaces it; at the end the kept tiles are drawn, in tile order.
So memory stays flat however many tiles a run explains, the report's size is bounded by the cap,
and no time goes into drawing rows that won't be shown. Drawing uses
matplotlib's object API with the Agg canvas, never pyplot or matplotlib.use, so a running QGIS keeps
its backend and its open figures.
"""

import base64
import heapq
import html
import io
import os
import shutil
import tempfile

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
_SPOOLED = ("image", "values", "class_indices", "output_values", "base_values", "probabilities")
SPACE_WORDS = {"logit": "logit", "probability": "probability", "log_probability": "log-probability", "contrast": "logit difference"}


class ExplanationReport:
    """Context manager: rows spooled to a hidden folder beside `path`, the report written under a
    temporary name and moved into place on success; on error or cancel nothing is left."""

    def __init__(self, path, class_names, settings, engine, max_tiles=50, group_names=None):
        self.path = os.path.abspath(path)
        self._class_names = list(class_names)
        self._group_names = group_names  # explained by band group: each class's map is the sum of its groups' maps
        self._settings = settings
        self._engine = engine
        self._max_tiles = max_tiles
        self._kept = []  # heap of (-margin, -tile_index, row file): the least confident tiles so far
        self._seen = 0
        self._spool = None

    def __enter__(self):
        folder, name = os.path.split(self.path)
        os.makedirs(folder, exist_ok=True)
        self._spool = tempfile.mkdtemp(prefix=f".{name}.", suffix=".rows", dir=folder)
        return self

    def add(self, tile_index, row, col, tile, label=""):
        """Offer one explained tile (a steps.ExplainedTile); it is spooled only if it makes the cut."""
        self._seen += 1
        key = (-tile.margin, -tile_index)
        if self._max_tiles and len(self._kept) >= self._max_tiles and key <= self._kept[0][:2]:
            return
        spooled = os.path.join(self._spool, f"{tile_index:012d}.npz")
        arrays = {name: np.asarray(getattr(tile, name)) for name in _SPOOLED}
        for optional in ("rival_indices", "group_values"):
            if getattr(tile, optional) is not None:
                arrays[optional] = np.asarray(getattr(tile, optional))
        np.savez(spooled, values=arrays.pop("values").astype(np.float32), **arrays)  # float32 is plenty to draw
        heapq.heappush(self._kept, (*key, spooled, tile_index, row, col, tile.margin, label))
        if self._max_tiles and len(self._kept) > self._max_tiles:
            os.remove(heapq.heappop(self._kept)[2])

    def _row_html(self, painter, tile_index, row, col, margin, label, tile):
        values = tile["values"]
        names = [self._class_names[c] for c in tile["class_indices"]]
        if "rival_indices" in tile:
            names = [f"{name} vs {self._class_names[rival]}" for name, rival in zip(names, tile["rival_indices"])]
        space = SPACE_WORDS[self._settings.output_space]
        facts = ", ".join(
            f"{html.escape(name)}: p={float(p):.3f}, f={float(f):.3f}, base={float(b):.3f}, ΣSHAP={values[..., k].sum():+.3f}{self._group_facts(tile, k)}"
            for k, (name, p, f, b) in enumerate(zip(names, tile["probabilities"], tile["output_values"], tile["base_values"]))
        )
        true_label = f" — true label: <b>{html.escape(label)}</b>" if label else ""
        png = base64.b64encode(painter.png(tile["image"], values, names, tile["probabilities"], label, f"SHAP value ({space})")).decode("ascii")
        return f"<h3>Tile {tile_index} (row {row}, col {col}), margin {margin:.3f}{true_label}</h3><p>{facts}</p><img src='data:image/png;base64,{png}'/>\n"

    def _group_facts(self, tile, rank):
        """' (RGB +1.234, NIR +2.100)': each band group's value, when explained by band group."""
        if "group_values" not in tile:
            return ""
        return " (" + ", ".join(f"{html.escape(name)} {float(value):+.3f}" for name, value in zip(self._group_names, tile["group_values"][rank])) + ")"

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                with atomic_output(self.path) as temporary, open(temporary, "w", encoding="utf-8") as stream:
                    stream.write(_header(self._settings, self._engine, len(self._kept), self._seen, self._max_tiles))
                    painter = RowPainter()
                    for _, _, spooled, *facts in sorted(self._kept, key=lambda kept: kept[3]):
                        with np.load(spooled) as tile:
                            stream.write(self._row_html(painter, *facts, tile))
                    stream.write(_FOOTER)
        finally:
            shutil.rmtree(self._spool, ignore_errors=True)
        return False


def _header(settings, engine, shown, explained, max_tiles):
    """Title, run settings and how to read the colours and numbers."""
    space = SPACE_WORDS[settings.output_space]
    if max_tiles and explained > shown:
        selection = f"The {shown} least confident of {explained} explained tiles (smallest margin p1 − p2), in tile order; the SHAP raster and the tile table hold every tile."
    else:
        selection = f"All {explained} explained tiles, in tile order."
    if settings.output_space == "contrast":
        colours = "Each map explains why the tile is class A rather than class B (“A vs B”): red pixels push the model towards A rather than B (they raise logit(A) − logit(B)), blue pixels towards B"
        f_is = "logit(A) − logit(B) for the tile"
        p_is = "the probability of A"
    else:
        colours = f"Red pixels raise the model's {space} of the class, blue pixels lower it"
        f_is = f"the model's {space} for the tile"
        p_is = "the probability"
    return f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>AID-XAI explanation report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:80em}} img{{max-width:100%}}</style></head><body>
<h1>Partition-SHAP explanations</h1>
<p>Engine {html.escape(engine)}, masker {html.escape(settings.masker)}, max_evals {settings.max_evals}, batch size {settings.batch_size}, seed {settings.seed}, output space <b>{space}</b>.
{colours}, pixels near 0 stay transparent over the grey tile;
the colour scale is symmetric around 0 and shared by the maps of a tile. Per tile and class the values sum to
f − base, where f is {f_is} and base the same for the fully masked tile; p is {p_is}.</p>
<p>{selection}</p>
"""


class RowPainter:
    """Draws rows as shap.image_plot does: the tile (titled with its true label), then per class the
    tile in light grey under the SHAP map, and one colorbar under the maps.

    The figure is built once for a row shape (tile size, number of classes) and redrawn with each
    row's data: building matplotlib's axes costs about as much as drawing them."""

    def __init__(self):
        self._shape = None

    def png(self, image_hwc, values, names, probabilities, label, value_label="SHAP value"):
        image = np.clip(np.asarray(image_hwc, dtype=np.float32), 0.0, 1.0)
        rgb = image[..., :3] if image.shape[2] >= 3 else np.repeat(image[..., :1], 3, axis=2)
        grey = 0.2989 * rgb[..., 0] + 0.5870 * rgb[..., 1] + 0.1140 * rgb[..., 2]
        limit = float(np.max(np.abs(values), initial=0.0, where=np.isfinite(values))) or _SMALLEST_LIMIT
        if self._shape != values.shape:
            self._build(values.shape)
        self._tile.set_data(rgb)
        self._tile.axes.set_title(label or " ")
        for k, (name, probability) in enumerate(zip(names, probabilities)):
            self._greys[k].set_data(grey)
            self._maps[k].set_data(values[..., k])
            self._maps[k].set_clim(-limit, limit)
            self._maps[k].axes.set_title(f"{name} ({float(probability):.2f})")
        self._colorbar.set_label(value_label)
        buffer = io.BytesIO()
        self._figure.savefig(buffer, format="png", pil_kwargs={"compress_level": 1})  # fast; rows are small
        return buffer.getvalue()

    def _build(self, shape):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.colors import LinearSegmentedColormap
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        rows, columns, count = shape
        colours = LinearSegmentedColormap.from_list("red_transparent_blue", _COLOUR_STOPS)
        # laid out in inches, so the colorbar sits right under the maps whatever the number of classes
        panels = count + 1
        gap, title, bar, below_bar = 0.25, 0.4, 0.15, 0.55
        side = min(2.5, (_MAX_FIGURE_WIDTH - (panels + 1) * gap) / panels)
        width, height = panels * side + (panels + 1) * gap, below_bar + bar + gap + side + title
        figure = Figure(figsize=(width, height), dpi=90)
        FigureCanvasAgg(figure)

        def panel(left, bottom, panel_width, panel_height):
            return figure.add_axes([left / width, bottom / height, panel_width / width, panel_height / height], frameon=False, xticks=[], yticks=[])

        image_bottom = below_bar + bar + gap
        blank = np.zeros((rows, columns))
        self._tile = panel(gap, image_bottom, side, side).imshow(np.zeros((rows, columns, 3)))
        self._greys, self._maps = [], []
        for k in range(count):
            axes = panel(gap + (k + 1) * (side + gap), image_bottom, side, side)
            self._greys.append(axes.imshow(blank, cmap="gray", vmin=0.0, vmax=1.0, alpha=0.15, extent=(-0.5, columns - 0.5, rows - 0.5, -0.5)))
            self._maps.append(axes.imshow(blank, cmap=colours, vmin=-1.0, vmax=1.0))
        # every map of a row shares one limit, so the colorbar follows the last one
        self._colorbar = figure.colorbar(self._maps[-1], cax=panel(2 * gap + side, below_bar, width - 3 * gap - side, bar), orientation="horizontal")
        self._colorbar.outline.set_visible(False)
        self._colorbar.ax.xaxis.set_major_locator(MaxNLocator(5, symmetric=True))
        self._colorbar.ax.tick_params(labelsize=8)
        self._figure, self._shape = figure, shape
