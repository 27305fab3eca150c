"""The pip run of the dependency dialog as a QgsTask: in the background, QGIS stays responsive, the
task manager shows it and its Cancel ends pip."""

from qgis.core import QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from ..install.interpreter import ensure_pip
from ..install.runner import InstallCancelled, install


class InstallTask(QgsTask):
    line = pyqtSignal(str)  # each line of pip's output, delivered to the dialog in the main thread
    done = pyqtSignal(bool, str)  # succeeded, and the one-line outcome

    def __init__(self, plan):
        super().__init__("AID-XAI: installing Python packages", QgsTask.Flag.CanCancel)
        self.plan = plan
        self.outcome = ""

    def run(self):
        try:
            self.line.emit(ensure_pip(self.plan.python))
            install(self.plan, self.line.emit, self.isCanceled)
            self.outcome = f"Installed into {self.plan.target}"
            return True
        except InstallCancelled as cancelled:
            self.outcome = str(cancelled)
        except Exception as error:  # noqa: BLE001 - any failure ends as one line; pip's log is already shown
            self.outcome = str(error).splitlines()[0] if str(error) else type(error).__name__
        return False

    def finished(self, result):
        self.done.emit(bool(result), self.outcome)
