"""A new user's first start, inside the real QGIS main window (run by tests/test_desktop_install.py):

    xvfb-run -a qgis --profiles-path EMPTY_PROFILE --nologo --noversioncheck --code tests/desktop/install_session.py

QGIS's Python has no torch and no venv on its path. The session installs the plugin from its zip with
QGIS's own plugin installer code (pyplugin_installer, as "Install from ZIP" does), looks for the
message bar's "Install…" button and the Plugins › AID-XAI menu entry, opens the dependency dialog from
the button (the full pinned set, not installed here), then drives the same dialog class with a small
package set from a local wheel folder: Install, screenshots while and after it runs, and checks the
package imports in QGIS's Python without a restart. Writes install_session.json and PNGs to
AID_XAI_DESKTOP_OUT and ends QGIS with os._exit.

With AID_XAI_INSTALL_FULL=1 (`make test-install`) the dialog opened from the button installs the
plugin's full pinned set instead (torch build AID_XAI_INSTALL_BUILD: CPU or PYPI), and the session then
runs synthetic mosaic → classify → explain from their Processing dialogs in the same QGIS.

Environment: AID_XAI_INSTALL_ZIP (the plugin zip), AID_XAI_INSTALL_WHEELS (a folder of wheels),
AID_XAI_INSTALL_REQUIREMENTS (the small requirements file), AID_XAI_INSTALL_IMPORT (a module of it),
AID_XAI_INSTALL_MODEL (full run: a model file), AID_XAI_DESKTOP_HELPERS (this folder),
AID_XAI_DESKTOP_OUT, AID_XAI_DESKTOP_TIMEOUT.
"""

import faulthandler
import importlib
import json
import os
import sys
import time
import traceback

from qgis.core import QgsApplication
from qgis.PyQt.QtCore import QTimer
from qgis.PyQt.QtWidgets import QApplication, QMessageBox, QPushButton
from qgis.utils import iface

sys.path.insert(0, os.environ["AID_XAI_DESKTOP_HELPERS"])  # this folder: `qgis --code` runs the file without it
from dialogs import KEEP, run_in_dialog, wait_until  # noqa: E402

OUT = os.path.abspath(os.environ.get("AID_XAI_DESKTOP_OUT", "build/desktop-install"))
TIMEOUT = float(os.environ.get("AID_XAI_DESKTOP_TIMEOUT", "150"))
os.makedirs(OUT, exist_ok=True)
_FAULTS = open(os.path.join(OUT, "python_faults.txt"), "w")
faulthandler.enable(_FAULTS)
FULL = os.environ.get("AID_XAI_INSTALL_FULL") == "1"
REPORT = {"errors": [], "message_boxes": [], "screenshots": {}, "full": FULL}
STARTED = time.time()


def screenshot(name, widget=None):
    QApplication.processEvents()
    target = widget or iface.mainWindow()
    path = os.path.join(OUT, f"install_{name}.png")
    target.grab().save(path)
    REPORT["screenshots"][name] = path


def close_message_boxes():
    widget = QApplication.activeModalWidget()
    if isinstance(widget, QMessageBox):
        REPORT["message_boxes"].append({"title": widget.windowTitle(), "text": widget.text()})
        widget.done(QMessageBox.StandardButton.Cancel)


def finish():
    REPORT["seconds"] = round(time.time() - STARTED, 1)
    with open(os.path.join(OUT, "install_session.json"), "w", encoding="utf-8") as handle:
        json.dump(REPORT, handle, indent=1)
    _FAULTS.flush()
    os._exit(0)


def plugin_module(name):
    """A module of the plugin as QGIS loaded it (package aid_xai.aid_xai_plugin from the zip)."""
    import qgis.utils

    package = type(qgis.utils.plugins["aid_xai"]).__module__.rsplit(".", 1)[0]
    return importlib.import_module(f"{package}.{name}")


def install_plugin_from_zip():
    import pyplugin_installer
    import qgis.utils

    pyplugin_installer.instance().installFromZipFile(os.environ["AID_XAI_INSTALL_ZIP"])
    plugin = qgis.utils.plugins.get("aid_xai")
    REPORT["plugin_active"] = "aid_xai" in qgis.utils.active_plugins
    REPORT["plugin_file"] = sys.modules[type(plugin).__module__].__file__ if plugin else None
    REPORT["plugins_folder"] = os.path.join(QgsApplication.qgisSettingsDirPath(), "python", "plugins")
    REPORT["provider_loaded"] = QgsApplication.processingRegistry().providerById("aid_xai") is not None
    REPORT["torch_importable"] = importlib.util.find_spec("torch") is not None
    return plugin


def check_offer(plugin):
    bar = iface.messageBar()
    buttons = [button for button in bar.findChildren(QPushButton) if button.text() == "Install…"]
    REPORT["message_bar_button"] = bool(buttons)
    REPORT["message_bar_text"] = [item.text() for item in bar.items()] if hasattr(bar, "items") else []
    menu_texts = []
    for action in iface.pluginMenu().actions():
        if action.menu() is not None and "AID-XAI" in action.text():
            menu_texts += [entry.text() for entry in action.menu().actions()]
    REPORT["plugin_menu"] = menu_texts
    screenshot("message_bar")
    if buttons:
        buttons[0].click()
        QApplication.processEvents()
    dialog = plugin.dialog
    REPORT["dialog_from_button"] = bool(dialog is not None and dialog.isVisible())
    if dialog is not None:
        REPORT["full_set"] = {
            "packages": dialog.packages.toPlainText().splitlines(),
            "builds": [dialog.build.itemText(index) for index in range(dialog.build.count())],
            "where": dialog.where.text(),
            "status": dialog.status.text(),
        }
        screenshot("dialog_full_set", dialog)
        dialog.close()


def install_with(dialog, wheels, build, timeout):
    """Choose the build (and wheel folder), press Install, wait; what the dialog shows during and after."""
    dialogs = plugin_module("gui.dependency_dialog")
    if wheels:
        dialog.wheels.setFilePath(wheels)
    dialog.build.setCurrentIndex(dialog.build.findData(dialogs.TorchBuild[build]))
    dialog.show()
    started = time.time()
    dialog.install_button.click()
    REPORT["while_running"] = {"install_enabled": dialog.install_button.isEnabled(), "cancel_enabled": dialog.cancel_button.isEnabled(), "busy": dialog.progress.maximum() == 0}
    screenshot("installing", dialog)
    wait_until(lambda: dialog.task is None, timeout)
    REPORT["after"] = {
        "finished": dialog.task is None,
        "seconds": round(time.time() - started, 1),
        "step": dialog.step.text(),
        "status": dialog.status.text(),
        "log": dialog.log.toPlainText().splitlines(),
        "target": str(dialog.target),
        "target_files": sorted(os.listdir(dialog.target)) if dialog.target.is_dir() else None,
        "target_mb": round(sum(os.path.getsize(os.path.join(folder, name)) for folder, _, names in os.walk(dialog.target) for name in names) / 1e6) if dialog.target.is_dir() else None,
    }
    screenshot("installed", dialog)
    dialog.close()


def install_small_set():
    dialogs = plugin_module("gui.dependency_dialog")
    requirements = dialogs.read_requirements(os.environ["AID_XAI_INSTALL_REQUIREMENTS"])
    dialog = dialogs.DependencyDialog(iface.mainWindow(), requirements=requirements)
    KEEP.append(dialog)
    install_with(dialog, os.environ["AID_XAI_INSTALL_WHEELS"], "CPU", 90)
    name = os.environ["AID_XAI_INSTALL_IMPORT"]
    try:
        module = importlib.import_module(name)  # in QGIS's own Python, no restart
        REPORT["imported"] = {"file": module.__file__, "value": getattr(module, "VALUE", None)}
    except ImportError as error:
        REPORT["imported"] = {"error": str(error)}


def install_full_set_and_run(plugin):
    """The full pinned set through the dialog the message bar opens, then the algorithms from their dialogs."""
    plugin.show_dependency_dialog()
    install_with(plugin.dialog, None, os.environ.get("AID_XAI_INSTALL_BUILD", "PYPI"), TIMEOUT - 300)
    REPORT["torch_importable_after"] = importlib.util.find_spec("torch") is not None
    registry = QgsApplication.processingRegistry()
    work = os.path.join(OUT, "work")
    os.makedirs(work, exist_ok=True)
    mosaic = os.path.join(work, "mosaic.tif")
    runs = REPORT["runs"] = {}
    for name, parameters in (
        ("synthetic_mosaic", {"ROWS": 2, "COLUMNS": 3, "SCENE_SIZE": 64, "SEED": 3, "OUTPUT": mosaic, "TRUTH": os.path.join(work, "truth.gpkg")}),
        ("classify", {"INPUT": mosaic, "MODEL": os.environ["AID_XAI_INSTALL_MODEL"], "OUTPUT_CLASSES": os.path.join(work, "classes.tif"), "OUTPUT_PROBABILITIES": os.path.join(work, "probabilities.tif"), "OUTPUT_TILES": os.path.join(work, "tiles.gpkg")}),
        ("explain", {"INPUT": mosaic, "MODEL": os.environ["AID_XAI_INSTALL_MODEL"], "FEATURES": os.path.join(work, "tiles.gpkg"), "MAX_EVALS": 60, "TOP_K": 2, "OUTPUT": os.path.join(work, "shap.tif"), "OUTPUT_TABLE": "", "OUTPUT_REPORT": ""}),
    ):
        ok, results, log = run_in_dialog(registry.createAlgorithmById(f"aid_xai:{name}"), parameters, iface.mainWindow(), 240, ran=lambda dialog, name=name: screenshot(f"run_{name}", dialog))
        runs[name] = {"ok": bool(ok), "outputs": {key: str(value) for key, value in results.items()}, "log": log[-4000:]}
    screenshot("map_after_runs")


def run():
    try:
        plugin = install_plugin_from_zip()
        if plugin is None:
            REPORT["errors"].append("QGIS's installer did not load aid_xai from the zip")
        else:
            check_offer(plugin)
            if FULL:
                install_full_set_and_run(plugin)
            else:
                install_small_set()
    except Exception:  # noqa: BLE001 - the report carries it to the test
        REPORT["errors"].append(traceback.format_exc())
    finish()


_WATCHDOG = QTimer()
_WATCHDOG.timeout.connect(close_message_boxes)
_WATCHDOG.start(200)
QTimer.singleShot(int(TIMEOUT * 1000), lambda: (REPORT["errors"].append(f"timed out after {TIMEOUT} s"), finish()))
QTimer.singleShot(1500, run)
