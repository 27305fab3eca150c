"""AID-XAI: explainable scene classification for QGIS.

`core` is QGIS-free (model, raster I/O, tiling, inference, explanations); the rest is the thin
Processing layer on top of it.
"""

__version__ = "0.2.0"


def classFactory(iface):  # noqa: N802 (QGIS's name)
    from .plugin import AidXaiPlugin

    return AidXaiPlugin(iface)
