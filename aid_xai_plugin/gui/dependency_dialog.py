"""The dependency dialog: what AID-XAI's Python packages are, where they go, which torch build, an
optional offline wheel folder; Install runs pip in the background with a live log, progress and
Cancel, then puts the folder on sys.path so the algorithms work without a restart where Python can
(a package already imported from elsewhere needs one, and the dialog says so)."""

import os
from pathlib import Path

from qgis.core import QgsApplication, QgsSettings
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QVBoxLayout,
)

from ..core.common.dependencies import missing_packages
from ..install.interpreter import InterpreterNotFound, qgis_python
from ..install.plan import DOWNLOAD_MB, InstallPlan, TorchBuild, dependencies_folder, nvidia_driver_present, plugin_constraints, read_requirements
from ..install.runner import activate, installed_record
from .install_task import InstallTask


def qgis_proxy():
    """QGIS's own proxy (Settings › Options › Network) as pip's --proxy URL, or None."""
    settings = QgsSettings()
    if not settings.value("proxy/proxyEnabled", False, bool):
        return None
    if "Socks" in str(settings.value("proxy/proxyType", "")):
        return None  # pip cannot use a SOCKS proxy without PySocks; the system's settings apply
    host, port = settings.value("proxy/proxyHost", ""), settings.value("proxy/proxyPort", "")
    user, password = settings.value("proxy/proxyUser", ""), settings.value("proxy/proxyPassword", "")
    if not host:
        return None
    credentials = f"{user}:{password}@" if user else ""
    return f"http://{credentials}{host}{':' + str(port) if port else ''}"


def profile_dependencies_folder():
    return dependencies_folder(QgsApplication.qgisSettingsDirPath())


class DependencyDialog(QDialog):
    """`requirements`: the pinned lines to install (default: the plugin's requirements.txt)."""

    def __init__(self, parent=None, requirements=None, target=None):
        super().__init__(parent)
        self.setWindowTitle("AID-XAI: Python packages")
        self.requirements = tuple(requirements) if requirements is not None else read_requirements()
        self.target = Path(target) if target else profile_dependencies_folder()
        self.task = None

        self.status = QLabel()
        self.status.setWordWrap(True)
        self.packages = QPlainTextEdit("\n".join(self.requirements))
        self.packages.setReadOnly(True)
        self.packages.setMaximumHeight(110)
        self.where = QLabel(str(self.target))
        self.where.setWordWrap(True)
        self.build = QComboBox()
        builds = [TorchBuild.PYPI, TorchBuild.CPU] + ([TorchBuild.CUDA] if nvidia_driver_present() else [])
        for build in builds:
            size = f"{DOWNLOAD_MB[build]:,}".replace(",", " ")
            self.build.addItem(f"{build.value} — about {size} MB", build)
        self.wheels = QgsFileWidget()
        self.wheels.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.wheels.setDialogTitle("Folder of wheels (pip download them on a connected machine)")
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMinimumHeight(180)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(False)
        self.step = QLabel()
        self.step.setWordWrap(True)
        self.buttons = QDialogButtonBox()
        self.install_button = self.buttons.addButton("Install", QDialogButtonBox.ButtonRole.AcceptRole)
        self.cancel_button = self.buttons.addButton("Cancel", QDialogButtonBox.ButtonRole.RejectRole)
        self.close_button = self.buttons.addButton("Close", QDialogButtonBox.ButtonRole.RejectRole)
        self.cancel_button.setEnabled(False)
        self.install_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.close_button.clicked.connect(self.close)

        form = QFormLayout()
        form.addRow("Packages (pinned)", self.packages)
        form.addRow("Installed into", self.where)
        form.addRow("torch build", self.build)
        form.addRow("Offline: wheels folder", self.wheels)
        layout = QVBoxLayout(self)
        layout.addWidget(self.status)
        layout.addLayout(form)
        layout.addWidget(self.step)
        layout.addWidget(self.progress)
        layout.addWidget(self.log)
        layout.addWidget(self.buttons)
        self.resize(720, 560)
        self.show_status()

    def show_status(self):
        record = installed_record(self.target)
        missing = missing_packages()
        if missing:
            text = f"Missing in QGIS's Python: {', '.join(missing)}. Install adds them here, without changing QGIS's own packages."
        else:
            text = "All of AID-XAI's packages can be imported."
        if record:
            text += f" Last install: {record['installed']} ({TorchBuild[record['torch_build']].value}); Install again to update."
        self.status.setText(text)

    def plan(self):
        wheels = self.wheels.filePath().strip()
        if wheels and not os.path.isdir(wheels):
            raise ValueError(f"The wheels folder '{wheels}' does not exist: choose a folder of .whl files or leave it empty.")
        return InstallPlan(
            python=qgis_python(),
            target=self.target,
            requirements=self.requirements,
            constraints=plugin_constraints(),
            torch_build=self.build.currentData(),
            wheels=Path(wheels) if wheels else None,
            proxy=qgis_proxy(),
        )

    def start(self):
        try:
            plan = self.plan()
        except (ValueError, InterpreterNotFound, RuntimeError) as error:
            self.finish(False, str(error))
            return
        self.log.clear()
        self.task = InstallTask(plan)
        self.task.line.connect(self.add_line)
        self.task.done.connect(self.finish)
        self.set_running(True)
        QgsApplication.taskManager().addTask(self.task)

    def add_line(self, line):
        self.log.appendPlainText(line)
        stripped = line.strip()
        if stripped.startswith(("Collecting", "Downloading", "Processing", "Installing collected", "Successfully")):
            self.step.setText(stripped[:120])

    def cancel(self):
        if self.task is not None:
            self.task.cancel()
            self.step.setText("Cancelling…")

    def set_running(self, running):
        self.install_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.close_button.setEnabled(not running)
        self.build.setEnabled(not running)
        self.wheels.setEnabled(not running)
        self.progress.setRange(0, 0 if running else 1)
        self.progress.setValue(0)

    def finish(self, succeeded, outcome):
        self.set_running(False)
        self.task = None
        if succeeded:
            stale = activate(self.target)
            self.progress.setValue(1)
            missing = missing_packages()
            if stale:
                outcome += f". Restart QGIS to use the new {', '.join(stale)}: Python keeps the version it already imported."
            elif missing:
                outcome += f"; no restart is needed, but QGIS's Python still lacks {', '.join(missing)}."
            else:
                outcome += ". The AID-XAI algorithms can run now; no restart is needed."
        self.step.setText(("✔ " if succeeded else "✘ ") + outcome)
        self.show_status()

    def closeEvent(self, event):  # noqa: N802 (Qt's name)
        if self.task is not None:
            event.ignore()  # Cancel first: closing would leave pip running unseen
            return
        super().closeEvent(event)
