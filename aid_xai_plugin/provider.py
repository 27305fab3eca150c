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
        from .core import __version__

        return f"AID XAI {__version__}: explainable scene classification"

    def icon(self):
        return QIcon(ICON_PATH)

    def svgIconPath(self):  # noqa: N802 (QGIS's name)
        return ICON_PATH

    # The formats the algorithms write: the dialogs offer these, and a file name says which one.
    def supportedOutputRasterLayerExtensions(self):  # noqa: N802 (QGIS's name)
        return ["tif"]

    def supportedOutputVectorLayerExtensions(self):  # noqa: N802 (QGIS's name)
        return ["gpkg", "geojson", "shp"]

    def defaultRasterFileExtension(self):  # noqa: N802 (QGIS's name)
        return "tif"

    def defaultVectorFileExtension(self, hasGeometry=True):  # noqa: N802,N803 (QGIS's names)
        return "gpkg"

    def loadAlgorithms(self):  # noqa: N802 (QGIS's name)
        for algorithm in all_algorithms():
            self.addAlgorithm(algorithm)
