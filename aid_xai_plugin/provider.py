"""The "AID XAI" Processing provider: one algorithm per module in `algorithms/`."""

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .algorithms import all_algorithms
from .provider_paths import ICON_PATH


class AidXaiProvider(QgsProcessingProvider):
    def id(self):
        return "aid_xai"

    def name(self):
        return "AID XAI"

    def longName(self):  # noqa: N802 (QGIS's name)
        from . import __version__

        return f"AID XAI {__version__}: explainable scene classification"

    def icon(self):
        return QIcon(ICON_PATH)

    def svgIconPath(self):  # noqa: N802 (QGIS's name)
        return ICON_PATH

    def loadAlgorithms(self):  # noqa: N802 (QGIS's name)
        for algorithm in all_algorithms():
            self.addAlgorithm(algorithm)
