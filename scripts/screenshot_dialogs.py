"""Screenshot the Processing Toolbox dialogs of aid_xai:classify and aid_xai:explain.

Why: the tests check parameter definitions, not what a user sees. This opens QGIS's own algorithm
dialog (processing.gui.AlgorithmDialog, the one the Toolbox opens; shown, never exec'd), expands
"Advanced Parameters", saves a PNG of each window (as it opens, and with the advanced parameters
expanded) and a dialogs.json listing each dialog's parameters
and the Qt widget class of ENGINE, DEVICE, MASKER and SCALING. It exits 1 if any of those is not a
drop-down (QComboBox), so a regression to free-text fields is caught.

Usage, on a virtual X screen (apt-get install xvfb xauth), from the repository root:

    xvfb-run -a -s "-screen 0 1280x1024x24" .venv/bin/python scripts/screenshot_dialogs.py [OUT_DIR]

OUT_DIR defaults to build/screenshots/. QGIS settings go to .qgis/config (as with bin/qgis_process)
unless QGIS_CUSTOM_CONFIG_PATH is set.
"""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("QGIS_CUSTOM_CONFIG_PATH", os.path.join(ROOT, ".qgis", "config"))
sys.path.insert(0, ROOT)
sys.path.append("/usr/share/qgis/python/plugins")

from qgis.core import QgsApplication  # noqa: E402 (after the environment is set)
from qgis.gui import QgsCollapsibleGroupBoxBasic  # noqa: E402
from qgis.PyQt import sip  # noqa: E402
from qgis.PyQt.QtWidgets import QComboBox, QGroupBox  # noqa: E402

ALGORITHMS = ("aid_xai:classify", "aid_xai:explain")
CHOICES = ("ENGINE", "DEVICE", "MASKER", "SCALING", "OUTPUT_FORMAT")


def wrapped_widget(wrapper):
    # C++ wrappers (QgsAbstractProcessingParameterWidgetWrapper) vs. the legacy Python WidgetWrapper.
    return wrapper.wrappedWidget() if hasattr(wrapper, "wrappedWidget") else wrapper.widget


def screenshot(app, algorithm_id, out_dir):
    from processing.gui.AlgorithmDialog import AlgorithmDialog

    algorithm = QgsApplication.processingRegistry().createAlgorithmById(algorithm_id)
    if algorithm is None:  # AlgorithmDialog(None) segfaults
        sys.exit(f"{algorithm_id} is not registered (did the provider fail to load?)")
    dialog = AlgorithmDialog(algorithm)
    dialog.resize(1200, 900)
    dialog.show()
    for _ in range(5):
        app.processEvents()
    png = os.path.join(out_dir, algorithm_id.replace(":", "_") + ".png")
    dialog.grab().save(png)  # as it opens: the main parameters, advanced ones collapsed
    for box in dialog.findChildren(QGroupBox):  # "Advanced Parameters"; sip only knows it as a QGroupBox
        if box.inherits("QgsCollapsibleGroupBoxBasic"):
            sip.cast(box, QgsCollapsibleGroupBoxBasic).setCollapsed(False)
    for _ in range(5):
        app.processEvents()
    dialog.grab().save(png.replace(".png", "_advanced.png"))
    wrappers = dialog.mainWidget().wrappers
    widgets = {name: wrapped_widget(wrappers[name]) for name in CHOICES if name in wrappers}
    listing = {
        "png": png,
        "parameters": list(wrappers),
        "widgets": {name: widget.metaObject().className() for name, widget in widgets.items()},
        "not_combo_box": [name for name, widget in widgets.items() if not isinstance(widget, QComboBox)],
    }
    dialog.close()
    return listing


def main():
    out_dir = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build", "screenshots"))
    os.makedirs(out_dir, exist_ok=True)
    app = QgsApplication([], True)
    app.initQgis()
    from processing.core.Processing import Processing

    from aid_xai_plugin.provider import AidXaiProvider

    Processing.initialize()
    provider = AidXaiProvider()  # keep a Python reference: else its Python half is collected and ids read ":"
    QgsApplication.processingRegistry().addProvider(provider)
    listings = {algorithm_id: screenshot(app, algorithm_id, out_dir) for algorithm_id in ALGORITHMS}
    with open(os.path.join(out_dir, "dialogs.json"), "w", encoding="utf-8") as handle:
        json.dump(listings, handle, indent=2)
    print(json.dumps(listings, indent=2))
    shown = {name for listing in listings.values() for name in listing["widgets"]}
    failures = [f"{a}: {n} is not a combo box" for a, listing in listings.items() for n in listing["not_combo_box"]]
    failures += [f"{name} is in neither dialog" for name in CHOICES if name not in shown]
    app.exitQgis()
    if failures:
        sys.exit("\n".join(failures))


if __name__ == "__main__":
    main()
