"""Driving QGIS's Processing dialogs from a session script run inside the QGIS desktop (`qgis --code`):
shared by desktop_session.py and install_session.py, which put this folder on sys.path."""

import time

from qgis.PyQt.QtWidgets import QApplication, QTextEdit

KEEP = []  # Python references the Qt side must not outlive (dialogs, signal handlers)


def pump(seconds=0.2):
    end = time.time() + seconds
    while time.time() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def wait_until(predicate, timeout):
    """True once `predicate()` holds, False after `timeout` seconds; Qt's events keep flowing."""
    end = time.time() + timeout
    while time.time() < end:
        QApplication.processEvents()
        if predicate():
            return True
        time.sleep(0.02)
    return False


def new_dialog(algorithm, parent):
    from processing.gui.AlgorithmDialog import AlgorithmDialog

    dialog = AlgorithmDialog(algorithm, parent=parent)
    KEEP.append(dialog)
    dialog.resize(1000, 800)
    dialog.show()
    pump(0.3)
    return dialog


def dialog_log(dialog):
    log = dialog.findChild(QTextEdit, "txtLog")  # the Log tab (the help panel is a QTextEdit too)
    return log.toPlainText() if log is not None else "\n".join(editor.toPlainText() for editor in dialog.findChildren(QTextEdit))


def run_in_dialog(algorithm, parameters, parent, timeout, filled=lambda dialog: None, ran=lambda dialog: None):
    """Open the algorithm's dialog, fill its widgets, press Run (runAlgorithm, as the Run button does)
    and wait; outputs with "Open output file after running" (the default) load into the project.
    `filled`/`ran` see the dialog before Run and after (its Log shown). Returns (ok, results, log),
    ok None when it did not finish within `timeout`."""
    dialog = new_dialog(algorithm, parent)
    dialog.setParameters(parameters)
    pump(0.3)
    filled(dialog)
    finished = []
    handler = lambda ok, results: finished.append((ok, dict(results)))  # noqa: E731
    KEEP.append(handler)
    dialog.algorithmFinished.connect(handler)
    dialog.runAlgorithm()
    wait_until(lambda: finished, timeout)
    if hasattr(dialog, "showLog"):
        dialog.showLog()
    pump(0.5)
    ran(dialog)
    ok, results = finished[0] if finished else (None, {})
    log = dialog_log(dialog)
    dialog.close()
    return ok, results, log
