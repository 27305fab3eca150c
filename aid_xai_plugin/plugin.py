"""Plugin object: registers the Processing provider (also under qgis_process, where iface is None),
puts the packages installed by the dependency dialog on sys.path, and in the desktop offers that
dialog (a message bar button when packages are missing, and Plugins › AID-XAI)."""

from qgis.core import Qgis, QgsApplication
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction, QPushButton

from .core.common.dependencies import missing_packages
from .install.plan import dependencies_folder
from .install.runner import activate
from .provider import AidXaiProvider
from .provider_paths import ICON_PATH

MENU = "&AID-XAI"


class AidXaiPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.provider = None
        self.action = None
        self.dialog = None
        activate(dependencies_folder(QgsApplication.qgisSettingsDirPath()))

    def initProcessing(self):  # noqa: N802 (QGIS's name)
        if self.provider is None:
            self.provider = AidXaiProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802 (QGIS's name)
        self.initProcessing()
        self.action = QAction(QIcon(ICON_PATH), "Install or update Python packages…", self.iface.mainWindow())
        self.action.triggered.connect(self.show_dependency_dialog)
        self.iface.addPluginToMenu(MENU, self.action)
        missing = missing_packages()
        if missing:
            bar = self.iface.messageBar()
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            item = bar.createMessage("AID-XAI", f"needs Python packages QGIS does not have: {shown}.")
            button = QPushButton("Install…")
            button.clicked.connect(self.show_dependency_dialog)
            button.clicked.connect(lambda: bar.popWidget(item))
            item.layout().addWidget(button)
            bar.pushWidget(item, Qgis.MessageLevel.Warning)

    def show_dependency_dialog(self):
        from .gui.dependency_dialog import DependencyDialog  # Qt widgets only when asked for

        if self.dialog is None:
            self.dialog = DependencyDialog(self.iface.mainWindow())
        self.dialog.show_status()
        self.dialog.show()
        self.dialog.raise_()

    def unload(self):
        if self.action is not None:
            self.iface.removePluginMenu(MENU, self.action)
            self.action = None
        if self.dialog is not None:
            self.dialog.close()
            self.dialog = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
