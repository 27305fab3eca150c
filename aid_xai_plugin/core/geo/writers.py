"""GeoTIFF outputs that receive windows and appear at their path only when complete.

`GeoTiffSink` is a context manager: on entry it creates a tiled, compressed GeoTIFF under a
temporary name; on a clean exit it closes the file and moves it (and any GDAL sidecar) into place;
on an error or cancel it closes and removes it. Pipelines hold their sinks in one ExitStack, so
every output of a run is committed or removed together.

A Cloud Optimized GeoTIFF (`output_format="COG"`) is written the same way, windows into a tiled
(sparse) GeoTIFF under a scratch name, and on commit GDAL's COG driver copies that file block by
block into the temporary that moves into place, adding overviews: memory stays flat, and blending
or rewriting windows works as for a GeoTIFF (a COG's blocks can only be written once, in order).
"""

import os
import sys

from ..common.atomic import atomic_output, remove_with_companions, temporary_path
from ..common.errors import AidXaiError
from ..common.failures import write_failure_message
from ..common.gdal_context import gdal_error_details, gdal_exceptions

BLOCK_SIZE = 256
GEOTIFF_EXTENSIONS = (".tif", ".tiff")
OUTPUT_FORMATS = ("GTiff", "COG")
# how overviews of a COG are computed: a class raster's by the most frequent class (never a class
# that isn't there, nor an average of class numbers), values (probabilities, SHAP) by their mean;
# GDAL skips nodata pixels in both
OVERVIEW_RESAMPLINGS = ("MODE", "NEAREST", "AVERAGE")


def check_geotiff_path(path, output_format="GTiff"):
    if output_format not in OUTPUT_FORMATS:
        raise AidXaiError(f"Unknown raster output format '{output_format}'; use one of: {', '.join(OUTPUT_FORMATS)}.")
    if not path.lower().endswith(GEOTIFF_EXTENSIONS):
        if output_format == "COG":
            raise AidXaiError(f"Cannot write the raster output '{path}' as a Cloud Optimized GeoTIFF: a COG is a GeoTIFF file; give a .tif file name.")
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


def cog_options(data_type, resampling):
    """Creation options of GDAL's COG driver (GDAL ≥ 3.1): DEFLATE as the GeoTIFFs, 256² blocks,
    overviews until the smallest fits one block. Every block is stored (no SPARSE_OK): readers other
    than GDAL need not know sparse TIFFs."""
    from osgeo import gdal

    if resampling not in OVERVIEW_RESAMPLINGS:
        raise AidXaiError(f"Unknown overview resampling '{resampling}'; use one of: {', '.join(OVERVIEW_RESAMPLINGS)}.")
    floating = data_type in (gdal.GDT_Float32, gdal.GDT_Float64)
    return [
        "COMPRESS=DEFLATE",
        f"PREDICTOR={'FLOATING_POINT' if floating else 'NO'}",
        f"BLOCKSIZE={BLOCK_SIZE}",
        "BIGTIFF=IF_SAFER",
        "OVERVIEWS=AUTO",
        f"RESAMPLING={resampling}",
    ]


def translate_to_cog(source, destination, resampling):
    """Copy the closed GeoTIFF `source` into a COG at `destination` (georeferencing, nodata, band
    descriptions, metadata, colour table and categories kept; overviews added). GDAL reads the
    source block by block, so memory stays flat however large the raster."""
    from osgeo import gdal

    dataset = gdal.Open(source)
    data_type = dataset.GetRasterBand(1).DataType
    copy = gdal.Translate(destination, dataset, format="COG", creationOptions=cog_options(data_type, resampling))
    dataset = None
    if copy is None:  # outside the plugin's exception mode GDAL returns None on failure
        raise RuntimeError(f"GDAL could not write the Cloud Optimized GeoTIFF {destination}")
    close = getattr(copy, "Close", None)  # GDAL ≥ 3.8: reports a failed close
    if close is not None:
        close()
    copy = None
    for leftover in (destination + ".ovr.tmp", destination + ".msk.ovr.tmp"):  # the COG driver's scratch overviews, normally removed by GDAL
        if os.path.exists(leftover):
            os.remove(leftover)


class GeoTiffSink:
    """A GeoTIFF output (see the module docstring); `write(bands_hw…, x, y)` puts a window in place.
    `output_format`: "GTiff" or "COG"; `resampling`: how a COG's overviews are computed."""

    def __init__(self, path, width, height, band_count, data_type, geotransform, projection, nodata=None, band_names=None, tags=None, output_format="GTiff", resampling="AVERAGE"):
        check_geotiff_path(path, output_format)
        self.path = path
        self._create = (width, height, band_count, data_type, geotransform, projection, nodata, band_names, tags)
        self._cog = output_format == "COG"
        self._resampling = resampling
        if self._cog:
            cog_options(data_type, resampling)  # an unknown resampling is refused before any work
        self._atomic = atomic_output(path)
        self._staging = None  # a COG's windows go to this tiled GeoTIFF first
        self.dataset = None

    def __enter__(self):
        temporary = self._temporary = self._atomic.__enter__()
        try:
            if self._cog:
                self._staging = temporary_path(self.path)
            with self._writing():
                self.dataset = create_geotiff(self._staging or temporary, *self._create)
        except BaseException:
            self.dataset = None
            self._remove_staging()
            self._atomic.__exit__(*sys.exc_info())
            raise
        return self

    def _remove_staging(self):
        if self._staging is not None:
            remove_with_companions(self._staging)

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
                    check_blocks_on_disk(self._staging or self._temporary)
                    if self._cog:
                        translate_to_cog(self._staging, self._temporary, self._resampling)
                        if messages.errors:
                            raise RuntimeError(messages.errors[-1])
                        check_blocks_on_disk(self._temporary)
            except BaseException:  # an AidXaiError naming the output, or an interrupt during the copy
                self.dataset = None
                self._remove_staging()
                self._atomic.__exit__(*sys.exc_info())
                raise
        self.dataset = None  # closes the file before it moves into place (or is removed): no stray sidecar
        self._remove_staging()
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

