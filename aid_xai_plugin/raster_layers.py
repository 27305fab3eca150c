"""Any QGIS raster layer as input: GDAL files are read directly; other providers (XYZ/WMS/WMTS, WCS,
memory, virtual rasters) are read through QGIS's raster data provider at a resolution the user
sets, into a temporary GeoTIFF the core then reads like any file.

The temporary raster's pixels and tiles lie on the grids of that resolution and stride anchored at
the CRS origin, so the same area, resolution and tiling always give the same pixels and tiles. QgsRasterFileWriter writes it block by block: memory stays flat; disk holds the
extent at that resolution (4 bytes per pixel for web layers) until the run ends.
"""

import contextlib
import math
import os
import shutil
import tempfile

from qgis.core import QgsRasterBlockFeedback, QgsRasterFileWriter, QgsRasterPipe, QgsRectangle

from .core.common.errors import AidXaiError

MAX_PIXELS = 400_000_000  # ~1.6 GB of RGBA: beyond this the extent or the resolution is surely a mistake


def reads_directly(layer):
    """GDAL reads the layer's source itself (a file, a VRT, a /vsi path)."""
    return layer.providerType() == "gdal"


def aligned_window(extent, resolution, margin=(0, 0), step=(1, 1)):
    """(xmin, ymin, xmax, ymax, columns, rows) of the smallest block of resolution-sized cells that
    covers `extent` (xmin, ymin, xmax, ymax) grown by `margin` (x, y) pixels, with its edges on
    multiples of `step` (x, y) pixels from the CRS origin: the tile grid of that resolution and
    stride, the same for any extent."""
    xmin, ymin, xmax, ymax = extent
    unit_x, unit_y = step[0] * resolution, step[1] * resolution
    grow_x, grow_y = margin[0] * resolution, margin[1] * resolution
    left, bottom = math.floor((xmin - grow_x) / unit_x + 1e-9) * unit_x, math.floor((ymin - grow_y) / unit_y + 1e-9) * unit_y
    right, top = math.ceil((xmax + grow_x) / unit_x - 1e-9) * unit_x, math.ceil((ymax + grow_y) / unit_y - 1e-9) * unit_y
    columns, rows = int(round((right - left) / resolution)), int(round((top - bottom) / resolution))
    if columns < 1 or rows < 1:
        raise AidXaiError("The processing extent is empty at this resolution; draw a larger extent.")
    return left, bottom, right, top, columns, rows


@contextlib.contextmanager
def readable_raster(layer, extent, resolution, context, feedback=None, tile_px=(1, 1), stride_px=(1, 1)):
    """Yield a path GDAL can read for `layer`: its own source, or a temporary GeoTIFF of `extent`
    (the layer's CRS; None = the layer's extent) at `resolution` map units per pixel, removed after.
    `tile_px` and `stride_px` are (x, y) pixels.
    The GeoTIFF reaches a tile further on every side and starts on the stride grid, so the tiles
    whose cells meet the extent lie in it and on the same grid whatever the extent."""
    if reads_directly(layer) and not resolution:
        yield layer.source()
        return
    if not resolution:
        raise AidXaiError(
            f"Layer '{layer.name()}' comes from the '{layer.providerType()}' provider (a web or in-memory layer): set RESOLUTION, "
            "the ground size of a pixel in the layer's map units (e.g. 0.6 for 60 cm imagery in metres), to read it at that resolution."
        )
    if resolution <= 0:
        raise AidXaiError("RESOLUTION must be a positive number of map units per pixel.")
    if extent is None:
        full = layer.extent()
        extent = (full.xMinimum(), full.yMinimum(), full.xMaximum(), full.yMaximum())
    left, bottom, right, top, columns, rows = aligned_window(extent, resolution, tile_px, stride_px)
    if columns * rows > MAX_PIXELS:
        raise AidXaiError(
            f"Reading '{layer.name()}' at {resolution:g} map units per pixel over this extent means {columns} × {rows} pixels; "
            "draw a smaller processing extent (EXTENT) or choose a coarser RESOLUTION."
        )
    folder = tempfile.mkdtemp(prefix="aid_xai_layer_")
    try:
        path = os.path.join(folder, "layer.tif")
        if feedback is not None:
            feedback.pushInfo(f"Reading layer '{layer.name()}' through QGIS at {resolution:g} map units per pixel: {columns} × {rows} pixels")
        provider = layer.dataProvider().clone()  # the layer's own provider belongs to the main thread
        pipe = QgsRasterPipe()
        if not pipe.set(provider):
            raise AidXaiError(f"Layer '{layer.name()}' cannot be read through its data provider.")
        writer = QgsRasterFileWriter(path)
        writer.setOutputFormat("GTiff")
        if hasattr(writer, "setCreationOptions"):  # QGIS 3.44 deprecates setCreateOptions
            writer.setCreationOptions(["COMPRESS=DEFLATE", "TILED=YES"])
        else:
            writer.setCreateOptions(["COMPRESS=DEFLATE", "TILED=YES"])
        blocks = QgsRasterBlockFeedback()
        if feedback is not None:
            feedback.canceled.connect(blocks.cancel)  # Cancel in the dialog stops the read too
        status = writer.writeRaster(pipe, columns, rows, QgsRectangle(left, bottom, right, top), layer.crs(), context.transformContext(), blocks)
        if blocks.isCanceled():
            raise AidXaiError("Reading the layer was cancelled; no output was written.")
        if _failed(status) or not os.path.exists(path):
            raise AidXaiError(f"Layer '{layer.name()}' could not be read through QGIS ({status}); check that it draws in the map at this extent.")
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _failed(status):
    """QgsRasterFileWriter's result: 0 (NoError / Success) in every QGIS version, scoped enum or not."""
    value = getattr(status, "value", status)
    return int(value) != 0
