"""Reading model-ready tiles from any GDAL raster.

Tiles are read window by window (memory does not grow with the raster), validity comes from GDAL's
mask bands (nodata, alpha, per-dataset masks), and values are scaled to [0, 1] the same way for
every tile: 8-bit imagery by /255, other types by a per-band 2–98 % stretch sampled once from a
decimated read, or by fixed min/max the user gives.
"""

import dataclasses
import re

import numpy as np

from ..common.errors import AidXaiError
from ..common.gdal_context import gdal_error_details, gdal_exceptions, raising_gdal_errors
from .remote import gdal_path, is_network_path, network_hint, network_reading

SCALING_HELP = (
    "auto (8-bit: value/255; other types: per-band 2-98 % stretch), percentile(LOW,HIGH), "
    "minmax(MIN,MAX) (same for all bands) or none (values already in 0..1)"
)


@raising_gdal_errors
def open_raster(path):
    """Open `path` read-only: a file, or a raster on the network (a URL, /vsicurl/, /vsis3/ …), which
    GDAL then reads block by block."""
    from osgeo import gdal

    fix = f"The server did not answer or has no raster there: {network_hint(path)}." if is_network_path(path) else "Give a GDAL-readable raster."
    try:
        with network_reading(path):
            dataset = gdal.Open(gdal_path(path), gdal.GA_ReadOnly)
    except RuntimeError as error:
        raise AidXaiError(f"Cannot open raster '{path}': {gdal_error_details(error)}. {fix}") from error
    if dataset is None:
        raise AidXaiError(f"Cannot open raster '{path}'. {fix}")
    return dataset


@dataclasses.dataclass
class BandScaling:
    """value01 = (value - offset) / span, clipped to [0, 1], per band."""

    offsets: np.ndarray
    spans: np.ndarray
    description: str

    def apply(self, values):
        """Values in [0, 1], in float32 arithmetic (the same values training and earlier runs saw); a
        difference of two extreme values that overflows to ±inf is clipped to 0/1, a NaN becomes 0."""
        with np.errstate(over="ignore", invalid="ignore"):
            scaled = (values.astype(np.float32) - self.offsets) / self.spans
        np.clip(scaled, 0.0, 1.0, out=scaled)
        return np.nan_to_num(scaled, nan=0.0, copy=False)


def check_bands(dataset, bands, model_bands):
    count = dataset.RasterCount
    if len(bands) != model_bands:
        raise AidXaiError(
            f"The model expects {model_bands} band(s) but BANDS selects {len(bands)} ({bands}); choose {model_bands} band numbers of the raster."
        )
    bad = [band for band in bands if band < 1 or band > count]
    if bad:
        raise AidXaiError(f"Band(s) {bad} do not exist: the raster has {count} band(s). Set BANDS to {model_bands} numbers between 1 and {count}.")


def parse_bands(text, default):
    if text is None or str(text).strip() == "":
        return list(default)
    try:
        return [int(part) for part in re.split(r"[,\s]+", str(text).strip()) if part]
    except ValueError:
        raise AidXaiError(f"BANDS '{text}' must be band numbers separated by commas, e.g. 1,2,3.") from None


def band_scaling(dataset, bands, spec, window):
    """Work out the scaling for `bands` from `spec` (see SCALING_HELP) over the pixel `window`."""
    from osgeo import gdal

    text = (spec or "auto").strip().lower().replace(" ", "")
    count = len(bands)
    all_byte = all(dataset.GetRasterBand(b).DataType == gdal.GDT_Byte for b in bands)
    if text == "none":
        return BandScaling(np.zeros(count, np.float32), np.ones(count, np.float32), "none")
    if text == "auto" and all_byte:
        return BandScaling(np.zeros(count, np.float32), np.full(count, 255.0, np.float32), "8-bit/255")
    match = re.match(r"^minmax\(([-+0-9.e]+),([-+0-9.e]+)\)$", text)
    if match:
        low, high = float(match.group(1)), float(match.group(2))
        if high <= low:
            raise AidXaiError(f"SCALING '{spec}': the maximum (SCALING_HIGH) must be greater than the minimum (SCALING_LOW).")
        if not (np.isfinite(low) and np.isfinite(high)) or max(abs(low), abs(high), high - low) > _FLOAT32_MAX:
            raise AidXaiError(f"SCALING '{spec}': the minimum and maximum must be finite numbers within ±3.4e38.")
        return BandScaling(np.full(count, low, np.float32), np.full(count, high - low, np.float32), f"minmax({low:g},{high:g})")
    match = re.match(r"^percentile\(([0-9.]+),([0-9.]+)\)$", text)
    if text == "auto" or match:
        low_pct, high_pct = (2.0, 98.0) if text == "auto" else (float(match.group(1)), float(match.group(2)))
        if not 0 <= low_pct < high_pct <= 100:
            raise AidXaiError(f"SCALING '{spec}': percentiles must satisfy 0 <= SCALING_LOW < SCALING_HIGH <= 100.")
        return _percentile_scaling(dataset, bands, window, low_pct, high_pct)
    raise AidXaiError(f"SCALING '{spec}' is not understood; use {SCALING_HELP}.")


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def read_error(dataset, bands, window, error):
    """The AidXaiError for a failed read: names the file, band(s), pixel window and the check to run."""
    path = dataset.GetDescription()
    x, y, width, height = window
    detail = gdal_error_details(error) or "GDAL could not read the pixels"
    if is_network_path(path):
        detail = detail.rstrip(".")
        return AidXaiError(
            f"Cannot read raster '{path}', band(s) {','.join(map(str, bands))}, pixel window x={x}, y={y}, width={width}, height={height}: "
            f"{detail}. The server stopped answering or failed; {network_hint(path)}, then run the same command again: "
            "no output was written, and an explain run resumes from the tiles it finished."
        )
    return AidXaiError(
        f"Cannot read raster '{path}', band(s) {','.join(map(str, bands))}, pixel window x={x}, y={y}, width={width}, height={height}: "
        f"{detail}. The file is damaged or unreadable there; check it with `gdal_translate -of null '{path}' /dev/null` "
        f"(or `gdalinfo -checksum '{path}'`) and re-create or re-download it."
    )


def _read(dataset, bands, window, read):
    """`read()` inside the plugin's GDAL mode; any failure → read_error. A None result (a driver that
    reports no error) is a failure too."""
    # the message is made inside the block, while its GDAL messages are at hand
    with gdal_exceptions(), network_reading(dataset.GetDescription()):
        try:
            values = read()
        except (RuntimeError, SystemError) as error:
            raise read_error(dataset, bands, window, error) from error
    if values is None:
        raise read_error(dataset, bands, window, None)
    return values


def _percentile_scaling(dataset, bands, window, low_pct, high_pct, sample_side=1024):
    """Percentiles from one decimated read (at most sample_side² pixels), masked pixels ignored."""
    x, y, width, height = window
    factor = max(1.0, max(width, height) / sample_side)
    buf_w, buf_h = max(1, int(width / factor)), max(1, int(height / factor))
    offsets, spans = [], []
    for band_number in bands:
        band = dataset.GetRasterBand(band_number)
        values = _read(dataset, [band_number], window, lambda: band.ReadAsArray(x, y, width, height, buf_xsize=buf_w, buf_ysize=buf_h)).astype(np.float64)
        valid = _read(dataset, [band_number], window, lambda: band.GetMaskBand().ReadAsArray(x, y, width, height, buf_xsize=buf_w, buf_ysize=buf_h)) > 0
        sample = values[valid & np.isfinite(values)]
        if sample.size == 0:
            raise AidXaiError(f"Band {band_number} has no valid pixels in the processing extent; choose another extent or band.")
        low, high = np.clip(np.percentile(sample, [low_pct, high_pct]), -_FLOAT32_MAX, _FLOAT32_MAX)
        offsets.append(low)
        spans.append(min(max(high - low, 1e-12), _FLOAT32_MAX))
    description = f"percentile({low_pct:g},{high_pct:g}) offsets={np.round(offsets, 6).tolist()} spans={np.round(spans, 6).tolist()}"
    return BandScaling(np.asarray(offsets, np.float32), np.asarray(spans, np.float32), description)


def read_tile(dataset, bands, window, scaling):
    """Read pixel `window` (x, y, w, h; may reach past the raster) → (H×W×C float32 in [0, 1], valid H×W bool).

    Pixels outside the raster or masked (nodata/alpha) are invalid and set to 0.
    """
    x, y, width, height = window
    image = np.zeros((height, width, len(bands)), np.float32)
    valid = np.zeros((height, width), bool)
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + width, dataset.RasterXSize), min(y + height, dataset.RasterYSize)
    if x1 <= x0 or y1 <= y0:
        return image, valid
    inside = (slice(y0 - y, y1 - y), slice(x0 - x, x1 - x))
    inside_window = (x0, y0, x1 - x0, y1 - y0)
    raw = _read(dataset, bands, inside_window, lambda: dataset.ReadAsArray(*inside_window, band_list=list(bands)))
    raw = raw.reshape(len(bands), y1 - y0, x1 - x0).transpose(1, 2, 0).astype(np.float64)
    mask = np.ones((y1 - y0, x1 - x0), bool)
    for band_mask in _mask_bands(dataset, bands):
        mask &= _read(dataset, bands, inside_window, lambda: band_mask.ReadAsArray(*inside_window)) > 0
    mask &= np.isfinite(raw).all(axis=2)
    scaled = scaling.apply(np.nan_to_num(raw))
    scaled[~mask] = 0.0
    image[inside] = scaled
    valid[inside] = mask
    return image, valid


def _mask_bands(dataset, bands):
    """The mask bands that can hide pixels: none when all are valid, one for a per-dataset mask."""
    from osgeo import gdal

    masks = []
    for band_number in bands:
        band = dataset.GetRasterBand(band_number)
        flags = band.GetMaskFlags()
        if flags & gdal.GMF_ALL_VALID:
            continue
        masks.append(band.GetMaskBand())
        if flags & gdal.GMF_PER_DATASET:
            break
    return masks
