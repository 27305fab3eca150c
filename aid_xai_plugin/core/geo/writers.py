"""GeoTIFF outputs that receive windows and appear at their path only when complete.

`GeoTiffSink` is a context manager: on entry it creates a tiled, compressed GeoTIFF under a
temporary name; on a clean exit it closes the file and moves it (and any GDAL sidecar) into place;
on an error or cancel it closes and removes it. Pipelines hold their sinks in one ExitStack, so
every output of a run is committed or removed together.
"""

import sys

from ..common.atomic import atomic_output
from ..common.errors import AidXaiError
from ..common.failures import write_failure_message
from .gdal_context import gdal_error_details, gdal_exceptions

BLOCK_SIZE = 256
GEOTIFF_EXTENSIONS = (".tif", ".tiff")


def check_geotiff_path(path):
    if not path.lower().endswith(GEOTIFF_EXTENSIONS):
        raise AidXaiError(f"Cannot write the raster output '{path}': AID-XAI writes GeoTIFF; give a .tif file name.")


def create_geotiff(path, width, height, band_count, data_type, geotransform, projection, nodata=None, band_names=None, tags=None):
    """A tiled, compressed, sparse GeoTIFF, ready to receive windows: blocks never written take no
    space and read back as nodata, so a few tiles far apart make a small file."""
    from osgeo import gdal

    check_geotiff_path(path)
    options = ["COMPRESS=DEFLATE", "TILED=YES", f"BLOCKXSIZE={BLOCK_SIZE}", f"BLOCKYSIZE={BLOCK_SIZE}", "SPARSE_OK=TRUE", "BIGTIFF=IF_SAFER"]
    if data_type == gdal.GDT_Float32:
        options.append("PREDICTOR=3")
    dataset = gdal.GetDriverByName("GTiff").Create(path, width, height, band_count, data_type, options)
    dataset.SetGeoTransform(geotransform)
    dataset.SetProjection(projection)
    for index in range(band_count):
        band = dataset.GetRasterBand(index + 1)
        if nodata is not None:
            band.SetNoDataValue(nodata)
        if band_names:
            band.SetDescription(band_names[index])
    if tags:
        dataset.SetMetadata({key: str(value) for key, value in tags.items()})
    return dataset


class GeoTiffSink:
    """A GeoTIFF output (see the module docstring); `write(bands_hw…, x, y)` puts a window in place."""

    def __init__(self, path, width, height, band_count, data_type, geotransform, projection, nodata=None, band_names=None, tags=None):
        check_geotiff_path(path)
        self.path = path
        self._create = (width, height, band_count, data_type, geotransform, projection, nodata, band_names, tags)
        self._atomic = atomic_output(path)
        self.dataset = None

    def __enter__(self):
        temporary = self._temporary = self._atomic.__enter__()
        try:
            with self._writing():
                self.dataset = create_geotiff(temporary, *self._create)
        except BaseException:
            self.dataset = None
            self._atomic.__exit__(*sys.exc_info())
            raise
        return self

    def _writing(self):
        return writing(self.path)

    def write(self, bands, x, y):
        """`bands`: band_count × h × w values for the window whose top-left pixel is (x, y)."""
        with self._writing():
            for index, values in enumerate(bands):
                self.dataset.GetRasterBand(index + 1).WriteArray(values, x, y)

    def flush(self):
        """Write finished blocks out of GDAL's cache, so the cache doesn't grow with the output."""
        with self._writing():
            self.dataset.FlushCache()

    def __exit__(self, exc_type, exc, traceback):
        if exc_type is None and self.dataset is not None:
            try:  # the last blocks are written on close: a full disk shows here, and the file must not move into place
                with self._writing() as messages:
                    self.dataset.FlushCache()
                    close = getattr(self.dataset, "Close", None)  # GDAL ≥ 3.8: reports a failed close
                    if close is not None:
                        close()
                    self.dataset = None
                    if messages.errors:
                        raise RuntimeError(messages.errors[-1])
                    check_blocks_on_disk(self._temporary)
            except AidXaiError:
                self.dataset = None
                self._atomic.__exit__(*sys.exc_info())
                raise
        self.dataset = None  # closes the file before it moves into place (or is removed): no stray sidecar
        return self._atomic.__exit__(exc_type, exc, traceback)


def check_blocks_on_disk(path):
    """Raise OSError(EFBIG) when a block the TIFF directory lists lies past the end of the file. Some
    GDAL/libtiff versions (GDAL 3.10) report a write cut short by a file-size limit or a full disk
    only on stderr and close the file as if complete: its directory then points past the end."""
    import errno
    import os

    from osgeo import gdal

    size = os.path.getsize(path)
    dataset = gdal.Open(path)
    for band_number in range(1, dataset.RasterCount + 1):
        band = dataset.GetRasterBand(band_number)
        block_w, block_h = band.GetBlockSize()
        for by in range((dataset.RasterYSize + block_h - 1) // block_h):
            for bx in range((dataset.RasterXSize + block_w - 1) // block_w):
                offset = band.GetMetadataItem(f"BLOCK_OFFSET_{bx}_{by}", "TIFF")
                if offset and int(offset) + int(band.GetMetadataItem(f"BLOCK_SIZE_{bx}_{by}", "TIFF") or 0) > size:
                    raise OSError(errno.EFBIG, f"the file was cut short at {size} bytes (band {band_number}, block {bx},{by} is missing)")


class writing:  # noqa: N801 - used like a function: `with writing(path):`
    """GDAL/OGR write calls for the output `path` inside the plugin's GDAL mode; a failure (disk full,
    file-size limit, permission, folder gone) becomes one AidXaiError naming the output and the fix."""

    def __init__(self, path, what="output"):
        self.path, self.what = path, what
        self._context = gdal_exceptions()

    def __enter__(self):
        return self._context.__enter__()

    def __exit__(self, exc_type, exc, traceback):
        message = None
        if exc_type is not None and issubclass(exc_type, (RuntimeError, OSError)) and not issubclass(exc_type, AidXaiError):
            message = write_failure_message(self.path, _WriteFailure(exc, gdal_error_details(exc)), self.what)
        self._context.__exit__(exc_type, exc, traceback)
        if message is not None:
            raise AidXaiError(message) from exc
        return False


class _WriteFailure(Exception):
    """An error with GDAL's collected messages as its text and the original errno (if any)."""

    def __init__(self, error, details):
        super().__init__(details or str(error))
        self.errno = getattr(error, "errno", None)
        self.strerror = None

