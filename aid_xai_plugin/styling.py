"""QML styles for AID-XAI outputs, written as `<name>.qml` sidecars and applied on load.

qgis_process runs no layer post-processors, so every styled output also gets a sidecar QML next to
it (QGIS picks it up when the file is opened); inside QGIS a post-processor applies the same file.
"""

import os

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsColorRampShader,
    QgsFillSymbol,
    QgsGradientColorRamp,
    QgsGradientStop,
    QgsPalettedRasterRenderer,
    QgsPalLayerSettings,
    QgsProcessingLayerPostProcessorInterface,
    QgsRasterLayer,
    QgsRasterMinMaxOrigin,
    QgsRasterShader,
    QgsRendererCategory,
    QgsSingleBandPseudoColorRenderer,
    QgsTextBufferSettings,
    QgsTextFormat,
    QgsVectorLayer,
    QgsVectorLayerSimpleLabeling,
)
from qgis.PyQt.QtGui import QColor

from .core.common.atomic import atomic_output
from .core.common.palette import class_colors
from .core.pipelines.tile_table import ALL_BANDS
from .qgis_compat import RAMP_CONTINUOUS, RAMP_INTERPOLATED, RANGE_LIMIT_NONE

PENDING_POST_PROCESSORS = set()  # QGIS holds post-processors weakly: alive here until each has run

# SHAP: ColorBrewer's RdBu turned round (red = pushes the class up), transparent near zero.
SHAP_NEGATIVE = [(5, 48, 97, 255), (33, 102, 172, 210), (146, 197, 222, 120), (209, 229, 240, 0)]
SHAP_POSITIVE = [(103, 0, 31, 255), (178, 24, 43, 210), (244, 165, 130, 120), (253, 219, 199, 0)]
SHAP_DECADES = [1.0, 0.1, 0.01, 0.003]  # colour stops at ±m·d: about a decade apart
# Probabilities: ColorBrewer's YlGnBu from transparent at 0 to dark blue at 1.
PROBABILITY_STOPS = [(0.0, (255, 255, 204, 0)), (0.25, (161, 218, 180, 110)), (0.5, (65, 182, 196, 170)), (0.75, (44, 127, 184, 220)), (1.0, (37, 52, 148, 255))]


def sidecar_path(path):
    return os.path.splitext(path)[0] + ".qml"


def _save(layer, path):
    """Write the sidecar under a temporary name and move it into place (two runs writing the same
    output never leave a half-written style)."""
    qml = sidecar_path(path)
    with atomic_output(qml) as temporary:
        message, ok = layer.saveNamedStyle(temporary)
        if not ok:
            raise OSError(f"Could not write the style '{qml}': {message}")
    return qml


def style_class_raster(path, class_names):
    """Paletted by class, in colours that mean something (water blue, vegetation green…)."""
    layer = QgsRasterLayer(path, "classes", "gdal")
    classes = [
        QgsPalettedRasterRenderer.Class(index, QColor(*color), name)
        for index, (name, color) in enumerate(zip(class_names, class_colors(class_names)))
    ]
    layer.setRenderer(QgsPalettedRasterRenderer(layer.dataProvider(), 1, classes))
    return _save(layer, path)


def _ramp_renderer(layer, band, stops, minimum, maximum, labels):
    """Single-band pseudocolour on fixed limits from a gradient ramp (saved in the style as the
    ramp the user sees in Symbology). The limits are user-defined, not recomputed from statistics,
    so switching to another band keeps the same ramp and the same scale."""
    (_, first), (_, last) = stops[0], stops[-1]
    gradient = QgsGradientColorRamp(QColor(*first), QColor(*last), False, [QgsGradientStop(position, QColor(*color)) for position, color in stops[1:-1]])
    span = maximum - minimum
    items = [QgsColorRampShader.ColorRampItem(minimum + position * span, QColor(*color), label) for (position, color), label in zip(stops, labels)]
    ramp = QgsColorRampShader(minimum, maximum)
    ramp.setSourceColorRamp(gradient)
    ramp.setColorRampType(RAMP_INTERPOLATED)
    ramp.setClassificationMode(RAMP_CONTINUOUS)
    ramp.setColorRampItemList(items)
    shader = QgsRasterShader(minimum, maximum)
    shader.setRasterShaderFunction(ramp)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), band, shader)
    renderer.setClassificationMin(minimum)
    renderer.setClassificationMax(maximum)
    origin = QgsRasterMinMaxOrigin()
    origin.setLimits(RANGE_LIMIT_NONE)
    renderer.setMinMaxOrigin(origin)
    return renderer


def style_probability_raster(path, class_names):
    """Each band (one per class) as a 0-1 ramp, transparent where the class is unlikely; band 1
    shown first. Never an RGB composite of three classes' probabilities."""
    layer = QgsRasterLayer(path, "probabilities", "gdal")
    labels = ["0 (unlikely)", "0.25", "0.5", "0.75", "1 (certain)"]
    layer.setRenderer(_ramp_renderer(layer, 1, PROBABILITY_STOPS, 0.0, 1.0, labels))
    return _save(layer, path)


def style_shap_raster(path, max_abs, output_space, band=1):
    """Diverging blue (pushes the class down) – transparent at 0 – red (pushes it up), symmetric, on
    one scale for every band and tile of the run (`max_abs`: the run's robust maximum), with stops
    about a decade apart (transparent up to ±m/300, then ±m/100, ±m/10, ±m): SHAP maps span orders of
    magnitude between tiles, and a linear ramp hides the weaker tiles under the strongest one, while
    a scale per tile would draw noise as dark as a real explanation. The legend names the units."""
    layer = QgsRasterLayer(path, "shap", "gdal")
    unit = "logit difference" if output_space == "contrast" else output_space.replace("_", "-")
    m = max(float(max_abs), 1e-12)
    values = [-m * d for d in SHAP_DECADES] + [0.0] + [m * d for d in reversed(SHAP_DECADES)]
    colours = SHAP_NEGATIVE + [(255, 255, 255, 0)] + list(reversed(SHAP_POSITIVE))
    stops = [((value + m) / (2 * m), colour) for value, colour in zip(values, colours)]
    labels = [f"{value:+.2g} {unit}" if value else "0" for value in values]
    if output_space == "contrast":  # each band is "A vs B"
        labels[0] += " (pushes towards B rather than A)"
        labels[-1] += " (pushes towards A rather than B)"
    else:
        labels[0] += " (pushes the class down)"
        labels[-1] += " (pushes the class up)"
    layer.setRenderer(_ramp_renderer(layer, band, stops, -m, m, labels))
    return _save(layer, path)


def style_tile_layer(path, class_names, label_expression=None, class_expression="class_name"):
    """Tiles as class-coloured outlines with a label (class, probability): never a fill over the
    imagery and the maps underneath. `label_expression` defaults to the top class and its probability."""
    layer = QgsVectorLayer(path, "tiles", "ogr")
    categories = []
    for name, (r, g, b) in zip(class_names, class_colors(class_names)):
        symbol = QgsFillSymbol.createSimple({"style": "no", "color": f"{r},{g},{b},0", "outline_color": f"{r},{g},{b},255", "outline_width": "0.5"})
        categories.append(QgsRendererCategory(name, symbol, name))
    layer.setRenderer(QgsCategorizedSymbolRenderer(class_expression, categories))
    labels = QgsPalLayerSettings()
    labels.fieldName = label_expression or r""""class_name" || '\n' || format_number("probability", 2)"""
    labels.isExpression = True
    text = QgsTextFormat()
    text.setSize(8)
    buffer = QgsTextBufferSettings()
    buffer.setEnabled(True)
    buffer.setSize(0.8)
    text.setBuffer(buffer)
    labels.setFormat(text)
    layer.setLabeling(QgsVectorLayerSimpleLabeling(labels))
    layer.setLabelsEnabled(True)
    return _save(layer, path)


def style_explained_tile_table(path, class_names, band_groups=None):
    """The explained-tile and quality tables have one row per tile, explained class (rank k = band k)
    and band group: each tile is drawn and labelled once, by its rank-1 row of the first of
    `band_groups` (names; None: the bands together), the other rows matching no category."""
    first_group = band_groups[0] if band_groups else ALL_BANDS
    first = f""""rank" = 1 AND "band_group" = '{first_group.replace("'", "''")}'"""
    label = rf"""CASE WHEN {first} THEN 'tile ' || "tile_id" || '\n' || "class_name" || ' ' || format_number("probability", 2) END"""
    return style_tile_layer(path, class_names, label, f"""CASE WHEN {first} THEN "class_name" END""")


class _ApplyQml(QgsProcessingLayerPostProcessorInterface):
    def __init__(self, qml):
        super().__init__()
        self.qml = qml

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802
        if layer is not None and os.path.exists(self.qml):
            layer.loadNamedStyle(self.qml)
            layer.triggerRepaint()
        PENDING_POST_PROCESSORS.discard(self)  # done: nothing accumulates across runs


def apply_on_load(context, output_path, qml):
    """When QGIS will load `output_path` after the run, style it with `qml`."""
    if context.willLoadLayerOnCompletion(output_path):
        post_processor = _ApplyQml(qml)
        PENDING_POST_PROCESSORS.add(post_processor)
        context.layerToLoadOnCompletionDetails(output_path).setPostProcessor(post_processor)
