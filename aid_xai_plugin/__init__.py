"""AID-XAI: explainable scene classification for QGIS.

`core` is QGIS-free (model, raster I/O, tiling, inference, explanations); the rest is the thin
Processing layer on top of it.
"""

from .core import __version__  # noqa: F401 (the plugin's version, also in metadata.txt)


def classFactory(iface):  # noqa: N802 (QGIS's name)
    from .plugin import AidXaiPlugin

    return AidXaiPlugin(iface)
