"""QML styles for AID-XAI outputs, written as `<name>.qml` sidecars and applied on load.

qgis_process runs no layer post-processors, so every styled output also gets a sidecar QML next to
it (QGIS picks it up when the file is opened); inside QGIS a post-processor applies the same file.
"""

import os

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsColorRampShader,
    QgsFillSymbol,
    QgsPalettedRasterRenderer,
    QgsProcessingLayerPostProcessorInterface,
    QgsRasterLayer,
    QgsRasterShader,
    QgsRendererCategory,
    QgsSingleBandPseudoColorRenderer,
    QgsVectorLayer,
)
from qgis.PyQt.QtGui import QColor

from .core.common.palette import class_colors
from .qgis_compat import RAMP_INTERPOLATED

PENDING_POST_PROCESSORS = set()  # QGIS holds post-processors weakly: alive here until each has run


def sidecar_path(path):
    return os.path.splitext(path)[0] + ".qml"


def _save(layer, path):
    qml = sidecar_path(path)
    message, ok = layer.saveNamedStyle(qml)
    if not ok:
        raise OSError(f"Could not write the style '{qml}': {message}")
    return qml


def style_class_raster(path, class_names):
    layer = QgsRasterLayer(path, "classes", "gdal")
    classes = [
        QgsPalettedRasterRenderer.Class(index, QColor(*color), name)
        for index, (name, color) in enumerate(zip(class_names, class_colors(len(class_names))))
    ]
    layer.setRenderer(QgsPalettedRasterRenderer(layer.dataProvider(), 1, classes))
    return _save(layer, path)


def style_tile_layer(path, class_names, field="class_name"):
    layer = QgsVectorLayer(path, "tiles", "ogr")
    categories = []
    for name, (r, g, b) in zip(class_names, class_colors(len(class_names))):
        symbol = QgsFillSymbol.createSimple({"color": f"{r},{g},{b},90", "outline_color": f"{r},{g},{b},255", "outline_width": "0.4"})
        categories.append(QgsRendererCategory(name, symbol, name))
    layer.setRenderer(QgsCategorizedSymbolRenderer(field, categories))
    return _save(layer, path)


def style_shap_raster(path, max_abs, output_space, band=1):
    """Diverging blue (pushes the class down) – transparent at 0 – red (pushes it up), symmetric, with
    stops about a decade apart (transparent up to ±m/300, then ±m/100, ±m/10, ±m): SHAP maps of one layer span orders of
    magnitude between tiles, and a linear ramp hides the weaker tiles under the strongest one. The
    legend names the output space the values are in."""
    layer = QgsRasterLayer(path, "shap", "gdal")
    unit = output_space.replace("_", "-")
    m = max(float(max_abs), 1e-12)
    blues = [(5, 48, 97, 255), (33, 102, 172, 210), (146, 197, 222, 120), (209, 229, 240, 0)]
    reds = [(103, 0, 31, 255), (178, 24, 43, 210), (244, 165, 130, 120), (253, 219, 199, 0)]
    decades = [1.0, 0.1, 0.01, 0.003]
    items = [QgsColorRampShader.ColorRampItem(-m * d, QColor(*colour), f"{-m * d:.2g} {unit}" + (" (pushes the class down)" if d == 1.0 else "")) for d, colour in zip(decades, blues)]
    items.append(QgsColorRampShader.ColorRampItem(0.0, QColor(255, 255, 255, 0), "0"))
    items += [QgsColorRampShader.ColorRampItem(m * d, QColor(*colour), f"+{m * d:.2g} {unit}" + (" (pushes the class up)" if d == 1.0 else "")) for d, colour in reversed(list(zip(decades, reds)))]
    ramp = QgsColorRampShader(-m, m)
    ramp.setColorRampType(RAMP_INTERPOLATED)
    ramp.setColorRampItemList(items)
    shader = QgsRasterShader()
    shader.setRasterShaderFunction(ramp)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), band, shader)
    renderer.setClassificationMin(-m)
    renderer.setClassificationMax(m)
    layer.setRenderer(renderer)
    return _save(layer, path)


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
