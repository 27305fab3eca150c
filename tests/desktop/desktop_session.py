"""What a GIS analyst sees in QGIS desktop: run inside the real QGIS main window by tests/test_desktop.py.

    xvfb-run -a -s "-screen 0 1280x1024x24" qgis --profiles-path TMP --nologo --noversioncheck --code tests/desktop/desktop_session.py

(tests/test_desktop.py prepares the throwaway profile with the plugin enabled and the environment.)
Environment: AID_XAI_DESKTOP_OUT (folder for session.json and the screenshots), AID_XAI_DESKTOP_MODEL
(an AID-XAI model file trained on synthetic scenes of 64 px), AID_XAI_DESKTOP_MODEL3 (the .model3 to run).

With the real `iface`, as a user would: opens each AID-XAI algorithm's dialog (screenshot); creates a
small synthetic mosaic, classifies it and explains its tiles by filling each dialog's widgets and
pressing Run (outputs loaded into the project, so the plugin's post-processors style them); adds the
shipped model to the toolbox and runs it from its dialog; opens the model in the graphical modeler.
Then it writes session.json: each layer's renderer as QGIS holds it, the SHAP layer's symbology as the
renderer widget shows it for band 1 and band 2, the modeler's validation and component boxes, every
message logged (the Log Messages panel, including what was logged while QGIS started) and every modal
message box that popped up (closed by a watchdog so the session never hangs). Screenshots: PNGs beside it.
Exits QGIS with os._exit once written (a timer ends the session after AID_XAI_DESKTOP_TIMEOUT seconds).
"""

import faulthandler
import json
import os
import sys
import tempfile
import time
import traceback

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsProcessingModelAlgorithm,
    QgsProject,
    QgsRenderContext,
)
from qgis.PyQt.QtCore import QTimer
from qgis.PyQt.QtWidgets import QApplication, QDialog, QDockWidget, QMessageBox, QPlainTextEdit, QTabWidget, QTextEdit, QVBoxLayout
from qgis.utils import iface

sys.path.insert(0, os.environ["AID_XAI_DESKTOP_HELPERS"])  # this folder: `qgis --code` runs the file without it
from dialogs import KEEP as _KEEP  # noqa: E402
from dialogs import new_dialog as _new_dialog  # noqa: E402
from dialogs import pump, run_in_dialog  # noqa: E402
from dialogs import wait_until as _wait_until  # noqa: E402

OUT = os.path.abspath(os.environ.get("AID_XAI_DESKTOP_OUT", "build/desktop"))
MODEL = os.environ.get("AID_XAI_DESKTOP_MODEL", "")
MODEL3 = os.environ.get("AID_XAI_DESKTOP_MODEL3", "")
TIMEOUT = float(os.environ.get("AID_XAI_DESKTOP_TIMEOUT", "150"))
ALGORITHMS = ("synthetic_scenes", "synthetic_mosaic", "train", "evaluate", "classify", "explain", "explanation_quality")

os.makedirs(OUT, exist_ok=True)
_FAULTS = open(os.path.join(OUT, "python_faults.txt"), "w")  # a crash inside QGIS leaves the Python stack here
faulthandler.enable(_FAULTS)
WORK = os.environ.get("AID_XAI_DESKTOP_WORK") or tempfile.mkdtemp(prefix="aid_xai_desktop_")
os.makedirs(WORK, exist_ok=True)
# Qgis.LayerType (QGIS ≥ 3.30) or QgsMapLayerType (3.22)
_LAYER_TYPES = getattr(Qgis, "LayerType", None)
if _LAYER_TYPES is not None:
    RASTER, VECTOR = _LAYER_TYPES.Raster, _LAYER_TYPES.Vector
else:
    from qgis.core import QgsMapLayerType

    RASTER, VECTOR = QgsMapLayerType.RasterLayer, QgsMapLayerType.VectorLayer
REPORT = {"steps": [], "errors": [], "message_boxes": [], "messages_live": [], "screenshots": {}}
STARTED = time.time()


# --- plumbing ----------------------------------------------------------------------------------


def step(name):
    REPORT["steps"].append({"step": name, "t": round(time.time() - STARTED, 2)})


def wait_until(predicate, timeout, what):
    if _wait_until(predicate, timeout):
        return True
    REPORT["errors"].append(f"timed out after {timeout} s waiting for {what}")
    return False


def shot(widget, name, what):
    path = os.path.join(OUT, name + ".png")
    pump(0.3)
    widget.grab().save(path)
    REPORT["screenshots"][name] = {"path": path, "shows": what}
    return path


def close_modal_boxes():
    """Watchdog: a modal message box would block the session; record its text and close it."""
    widget = QApplication.activeModalWidget()
    if isinstance(widget, QMessageBox):
        REPORT["message_boxes"].append({"title": widget.windowTitle(), "text": widget.text(), "details": widget.detailedText()})
        widget.done(QMessageBox.StandardButton.Cancel)


def on_message(message, tag, level):
    REPORT["messages_live"].append({"tag": tag, "level": int(level), "message": message})


def log_panel_messages():
    """Everything in the Log Messages panel, one entry per tab (tag), as the user reads it there:
    it also holds what was logged while QGIS started, before this script ran."""
    tabs = {}
    for dock in iface.mainWindow().findChildren(QDockWidget):
        if dock.objectName() != "MessageLog":
            continue
        for tab_widget in dock.findChildren(QTabWidget):
            for index in range(tab_widget.count()):
                page = tab_widget.widget(index)
                editors = [page] if isinstance(page, QPlainTextEdit) else page.findChildren(QPlainTextEdit)
                text = "\n".join(editor.toPlainText() for editor in editors)
                tabs[tab_widget.tabText(index)] = text
    return tabs


def layer_by_source(path):
    for layer in QgsProject.instance().mapLayers().values():
        if os.path.abspath(layer.source().split("|")[0]) == os.path.abspath(path):
            return layer
    return None


# --- renderers as QGIS holds them --------------------------------------------------------------


def colour(shader_function, value):
    result = shader_function.shade(value)
    ok, r, g, b, a = result[:5]
    return {"ok": bool(ok), "r": r, "g": g, "b": b, "a": a}


def pseudocolor_details(renderer):
    details = {"type": renderer.type(), "band": renderer.inputBand() if hasattr(renderer, "inputBand") else renderer.band()}
    if renderer.type() != "singlebandpseudocolor":
        return details
    shader = renderer.shader()
    function = shader.rasterShaderFunction() if shader else None
    minimum, maximum = renderer.classificationMin(), renderer.classificationMax()
    details.update(minimum=minimum, maximum=maximum)
    if function is not None:
        ramp = function.sourceColorRamp()
        details["source_ramp"] = None if ramp is None else {"type": ramp.type(), "properties": {k: str(v) for k, v in ramp.properties().items()}}
        details["ramp_items"] = [{"value": item.value, "label": item.label, "rgba": list(item.color.getRgb())} for item in function.colorRampItemList()]
        details["shader_min_max"] = [function.minimumValue(), function.maximumValue()]
        details["colour_at"] = {"-max": colour(function, minimum), "0": colour(function, 0.0), "+max": colour(function, maximum)}
    return details


def raster_details(layer):
    renderer = layer.renderer()
    details = {
        "name": layer.name(),
        "source": layer.source(),
        "band_count": layer.bandCount(),
        "band_names": [layer.bandName(i) for i in range(1, layer.bandCount() + 1)],
        "provider_band_names": [layer.dataProvider().generateBandName(i) for i in range(1, layer.bandCount() + 1)],
        "band_descriptions": [layer.dataProvider().bandDescription(i) if hasattr(layer.dataProvider(), "bandDescription") else "" for i in range(1, layer.bandCount() + 1)],
        "renderer": renderer.type() if renderer else None,
    }
    if renderer is None:
        return details
    if renderer.type() == "paletted":
        details["classes"] = [{"value": c.value, "label": c.label, "rgba": list(c.color.getRgb())} for c in renderer.classes()]
    if renderer.type() == "singlebandpseudocolor":
        details["pseudocolor"] = pseudocolor_details(renderer)
    if renderer.type() == "multibandcolor":
        details["rgb_bands"] = [renderer.redBand(), renderer.greenBand(), renderer.blueBand()]
    if renderer.type() == "singlebandgray":
        details["gray_band"] = renderer.grayBand()
    return details


def label_field(layer):
    labeling = layer.labeling()
    if not layer.labelsEnabled() or labeling is None or not hasattr(labeling, "settings"):
        return None
    settings = labeling.settings()  # keep the copy alive while reading it
    return settings.fieldName


def vector_details(layer):
    renderer = layer.renderer()
    symbols = []
    context = QgsRenderContext()
    for symbol in (renderer.symbols(context) if renderer else []):
        for index in range(symbol.symbolLayerCount()):
            symbol_layer = symbol.symbolLayer(index)
            entry = {"layer_type": symbol_layer.layerType(), "symbol_colour_alpha": symbol.color().alpha()}
            if hasattr(symbol_layer, "brushStyle"):
                entry["brush_style"] = int(symbol_layer.brushStyle())
            if hasattr(symbol_layer, "fillColor"):
                entry["fill_alpha"] = symbol_layer.fillColor().alpha()
            if hasattr(symbol_layer, "strokeColor"):
                entry["stroke_rgba"] = list(symbol_layer.strokeColor().getRgb())
            symbols.append(entry)
    return {
        "name": layer.name(),
        "source": layer.source(),
        "feature_count": layer.featureCount(),
        "renderer": renderer.type() if renderer else None,
        "symbols": symbols,
        "labels_enabled": layer.labelsEnabled(),
        "label_field": label_field(layer),
        "opacity": layer.opacity(),
    }


def project_layers():
    layers = []
    for node in QgsProject.instance().layerTreeRoot().findLayers():  # top to bottom, as the Layers panel lists them
        layer = node.layer()
        if layer is None:
            continue
        if layer.type() == RASTER:
            entry = raster_details(layer)
        elif layer.type() == VECTOR:
            entry = vector_details(layer)
        else:
            entry = {"name": layer.name()}
        entry.update(kind=int(layer.type()), visible=node.isVisible())
        layers.append(entry)
    return layers


# --- dialogs -----------------------------------------------------------------------------------


def new_dialog(algorithm):
    return _new_dialog(algorithm, iface.mainWindow())


def run_from_dialog(algorithm, parameters, name, timeout=90):
    """Run the algorithm from its dialog (dialogs.run_in_dialog); screenshots before and after."""
    step(f"run {name}")
    ok, results, log = run_in_dialog(
        algorithm,
        parameters,
        iface.mainWindow(),
        timeout,
        filled=lambda dialog: shot(dialog, f"run_{name}_parameters", f"{algorithm.displayName()}: the dialog filled in, before Run"),
        ran=lambda dialog: shot(dialog, f"run_{name}_log", f"{algorithm.displayName()}: the dialog's Log after the run"),
    )
    if ok is None:
        REPORT["errors"].append(f"timed out after {timeout} s waiting for {name} to finish")
    entry = {
        "ok": bool(ok),
        "results": {k: str(v) for k, v in results.items() if k not in ("CHILD_RESULTS", "CHILD_INPUTS")},
        "log": log[-6000:],
    }
    REPORT.setdefault("runs", {})[name] = entry
    return ok, results


def screenshot_algorithm_dialogs():
    from qgis.gui import QgsCollapsibleGroupBoxBasic
    from qgis.PyQt import sip
    from qgis.PyQt.QtWidgets import QGroupBox

    registry = QgsApplication.processingRegistry()
    REPORT["provider_loaded"] = registry.providerById("aid_xai") is not None
    REPORT["algorithm_dialogs"] = {}
    for name in ALGORITHMS:
        algorithm = registry.createAlgorithmById(f"aid_xai:{name}")
        if algorithm is None:  # AlgorithmDialog(None) crashes
            REPORT["errors"].append(f"aid_xai:{name} is not registered")
            continue
        dialog = new_dialog(algorithm)
        for box in dialog.findChildren(QGroupBox):  # "Advanced Parameters"
            if box.inherits("QgsCollapsibleGroupBoxBasic"):
                sip.cast(box, QgsCollapsibleGroupBoxBasic).setCollapsed(False)
        shot(dialog, f"dialog_{name}", f"Processing dialog of aid_xai:{name} ({algorithm.displayName()}), advanced parameters expanded")
        REPORT["algorithm_dialogs"][name] = {"title": dialog.windowTitle(), "parameters": list(dialog.mainWidget().wrappers)}
        dialog.close()


def add_model_to_toolbox():
    """As Processing Toolbox › Models › "Add Model to Toolbox…" does: copy the file into the models
    folder and refresh the model provider."""
    import shutil

    from processing.modeler.ModelerUtils import ModelerUtils

    model = QgsProcessingModelAlgorithm()
    if not model.fromFile(MODEL3):
        REPORT["errors"].append(f"could not load {MODEL3}")
        return None
    shutil.copyfile(MODEL3, os.path.join(ModelerUtils.modelsFolders()[0], os.path.basename(MODEL3)))
    QgsApplication.processingRegistry().providerById("model").refreshAlgorithms()
    model_id = f"model:{model.id()}"
    return model_id if QgsApplication.processingRegistry().algorithmById(model_id) is not None else None


def modeler(model3):
    from processing.modeler.ModelerDialog import ModelerDialog
    from qgis.gui import QgsModelGraphicsView
    from qgis.PyQt import sip
    from qgis.PyQt.QtWidgets import QGraphicsView

    step("modeler")
    dialog = ModelerDialog()
    _KEEP.append(dialog)
    dialog.loadModel(model3)
    dialog.resize(1280, 800)
    dialog.show()
    pump(0.5)
    view = sip.cast(dialog.findChild(QGraphicsView), QgsModelGraphicsView)
    scene = view.scene()
    boxes, debug = [], []
    for item in scene.items():
        debug.append({"class": type(item).__name__, "type": item.type(), "top": item.parentItem() is None, "rect": [round(v, 1) for v in item.sceneBoundingRect().getRect()]})
        if item.parentItem() is None and hasattr(item, "component") and item.isVisible():
            rect = item.sceneBoundingRect()
            boxes.append({"kind": type(item).__name__, "label": item.label() if hasattr(item, "label") else "", "rect": [rect.x(), rect.y(), rect.width(), rect.height()]})
    view.fitInView(scene.itemsBoundingRect().adjusted(-40, -40, 40, 40), 1)  # Qt.KeepAspectRatio
    pump(0.5)
    shot(dialog, "modeler", "Graphical modeler with the shipped model loaded, zoomed to all items")
    ok, issues = dialog.model().validate()
    REPORT["modeler"] = {"valid": ok, "issues": list(issues), "boxes": boxes, "items": debug}
    dialog.close()


def shap_symbology(layer):
    """The SHAP layer's symbology as the Layer Properties › Symbology page shows it: the singleband
    pseudocolor renderer widget set from the layer's renderer, then switched to band 2."""
    from qgis.gui import QgsSingleBandPseudoColorRendererWidget

    holder = QDialog(iface.mainWindow())
    _KEEP.append(holder)
    holder.setWindowTitle(f"Symbology of {layer.name()}")
    widget = QgsSingleBandPseudoColorRendererWidget(layer, layer.extent())
    widget.setFromRenderer(layer.renderer())
    QVBoxLayout(holder).addWidget(widget)
    holder.resize(700, 700)
    holder.show()
    pump(0.5)
    result = {"band1_widget": pseudocolor_details(widget.renderer())}
    shot(holder, "shap_symbology_band1", "SHAP layer: singleband pseudocolor symbology widget as loaded (band 1)")
    from qgis.gui import QgsRasterBandComboBox
    from qgis.PyQt import sip
    from qgis.PyQt.QtWidgets import QComboBox

    combos = [c for c in widget.findChildren(QComboBox) if c.objectName() == "mBandComboBox"]
    REPORT["symbology_combos"] = [(c.objectName(), c.metaObject().className()) for c in widget.findChildren(QComboBox)]
    combo = sip.cast(combos[0], QgsRasterBandComboBox) if combos else None
    if combo is not None and layer.bandCount() >= 2:
        combo.setBand(2)
        pump(0.5)
        result["band2_widget"] = pseudocolor_details(widget.renderer())
        shot(holder, "shap_symbology_band2", "SHAP layer: the same widget after switching its band to 2")
    else:
        result["band2_widget"] = None
        REPORT["errors"].append("no band combo box in the pseudocolor widget, or fewer than 2 bands")
    holder.close()
    return result


def canvas_screenshots():
    canvas = iface.mapCanvas()
    canvas.zoomToFullExtent()
    canvas.refreshAllLayers()
    pump(0.5)
    wait_until(lambda: not canvas.isDrawing(), 30, "the map canvas to finish drawing")
    pump(0.5)
    path = os.path.join(OUT, "canvas.png")
    canvas.saveAsImage(path)
    REPORT["screenshots"]["canvas"] = {"path": path, "shows": "Map canvas after the runs, zoomed to all layers"}
    shot(iface.mainWindow(), "main_window", "QGIS main window after the runs: Layers panel (with legends) and map canvas")


# --- the session -------------------------------------------------------------------------------


def session():
    step("start")
    registry = QgsApplication.processingRegistry()
    screenshot_algorithm_dialogs()

    mosaic_path, truth_path = os.path.join(WORK, "mosaic.tif"), os.path.join(WORK, "truth.gpkg")
    run_from_dialog(
        registry.createAlgorithmById("aid_xai:synthetic_mosaic"),
        {"ROWS": 2, "COLUMNS": 3, "SCENE_SIZE": 64, "SEED": 3, "OUTPUT": mosaic_path, "TRUTH": truth_path},
        "synthetic_mosaic",
    )
    mosaic = layer_by_source(mosaic_path)
    REPORT["mosaic_loaded"] = mosaic is not None
    if mosaic is None:
        raise RuntimeError("the mosaic was not loaded into the project")

    paths = {key: os.path.join(WORK, name) for key, name in (("classes", "classes.tif"), ("probabilities", "probabilities.tif"), ("tiles", "tiles.gpkg"), ("shap", "shap.tif"), ("table", "explained_tiles.gpkg"), ("report", "report.html"))}
    run_from_dialog(
        registry.createAlgorithmById("aid_xai:classify"),
        {"INPUT": mosaic, "MODEL": MODEL, "OUTPUT_CLASSES": paths["classes"], "OUTPUT_PROBABILITIES": paths["probabilities"], "OUTPUT_TILES": paths["tiles"]},
        "classify",
    )
    tiles = layer_by_source(paths["tiles"])
    run_from_dialog(
        registry.createAlgorithmById("aid_xai:explain"),
        {"INPUT": mosaic, "MODEL": MODEL, "FEATURES": tiles if tiles is not None else paths["tiles"], "MAX_EVALS": 60, "TOP_K": 2, "OUTPUT": paths["shap"], "OUTPUT_TABLE": paths["table"], "OUTPUT_REPORT": paths["report"]},
        "explain",
    )

    model_id = add_model_to_toolbox()
    REPORT["model_in_toolbox"] = model_id is not None
    if model_id is not None:
        # a dialog owns (and deletes) its algorithm: one fresh instance per dialog
        dialog = new_dialog(registry.createAlgorithmById(model_id))
        wrappers = dialog.mainWidget().wrappers
        REPORT["model_dialog"] = {
            "parameters": [name for name in wrappers],
            "raster_default": None,
        }
        raster_wrapper = wrappers.get("input_raster")
        if raster_wrapper is not None:
            value = raster_wrapper.parameterValue()
            layer = QgsProject.instance().mapLayer(value) if isinstance(value, str) else value
            REPORT["model_dialog"]["raster_default"] = None if value in (None, "") else (layer.name() if layer is not None and hasattr(layer, "name") else str(value))
        shot(dialog, "model_dialog", "Run dialog of the shipped model as opened from the toolbox (with layers in the project)")
        dialog.close()
        model_outputs = {
            "aid_xai:classify_1:Classified tiles": os.path.join(WORK, "model_classified_tiles.gpkg"),
            "aid_xai:explain_1:Least confident tiles": os.path.join(WORK, "model_least_confident_tiles.gpkg"),
            "aid_xai:explain_1:SHAP map of the least confident tiles": os.path.join(WORK, "model_shap.tif"),
            "aid_xai:explain_1:Explanation report": os.path.join(WORK, "model_report.html"),
        }
        run_from_dialog(
            registry.createAlgorithmById(model_id),
            dict({"input_raster": mosaic, "model_file": MODEL, "number_of_tiles": 2, "shap_evaluations": 60}, **model_outputs),
            "model3",
            timeout=120,
        )

    pump(1.0)
    shap = layer_by_source(paths["shap"])
    REPORT["layers"] = project_layers()
    REPORT["roles"] = {
        role: (layer.name() if layer is not None else None)
        for role, layer in (
            ("shap", shap),
            ("classes", layer_by_source(paths["classes"])),
            ("probabilities", layer_by_source(paths["probabilities"])),
            ("tiles", tiles),
            ("table", layer_by_source(paths["table"])),
        )
    }
    REPORT["role_details"] = {}
    for role, path in (("shap", paths["shap"]), ("classes", paths["classes"]), ("probabilities", paths["probabilities"]), ("tiles", paths["tiles"]), ("table", paths["table"])):
        layer = layer_by_source(path)
        if layer is None:
            REPORT["errors"].append(f"{role} ({path}) was not loaded into the project")
            continue
        REPORT["role_details"][role] = raster_details(layer) if layer.type() == RASTER else vector_details(layer)
    if shap is not None:
        REPORT["shap_symbology"] = shap_symbology(shap)
    canvas_screenshots()
    modeler(MODEL3)


def finish():
    try:
        REPORT["log_panel"] = log_panel_messages()
    except Exception:  # noqa: BLE001 - the report must be written whatever happens
        REPORT["errors"].append("reading the Log Messages panel: " + traceback.format_exc())
    REPORT["message_bar"] = [item.text() if hasattr(item, "text") else "" for item in iface.messageBar().items()]
    REPORT["qgis_version"] = Qgis.QGIS_VERSION
    REPORT["elapsed_s"] = round(time.time() - STARTED, 1)
    with open(os.path.join(OUT, "session.json"), "w", encoding="utf-8") as handle:
        json.dump(REPORT, handle, indent=2, default=str)
    os._exit(0)


def main():
    try:
        session()
    except Exception:  # noqa: BLE001
        REPORT["errors"].append(traceback.format_exc())
    finish()


def give_up():
    REPORT["errors"].append(f"the session ran past {TIMEOUT} s")
    finish()


QgsApplication.messageLog().messageReceived.connect(on_message)
_WATCHDOG = QTimer()
_WATCHDOG.timeout.connect(close_modal_boxes)
_WATCHDOG.start(300)
_DEADLINE = QTimer()
_DEADLINE.setSingleShot(True)
_DEADLINE.timeout.connect(give_up)
_DEADLINE.start(int(TIMEOUT * 1000))
iface.mainWindow().resize(1280, 1000)
QTimer.singleShot(1000, main)
_KEEP.extend([_WATCHDOG, _DEADLINE])
