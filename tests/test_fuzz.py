"""Property-based fuzzing of classify and explain with generated GeoTIFFs (hypothesis, fixed seed).

Every generated raster and setting ends in one of two ways: a correct output — read back with GDAL:
the source's CRS, a geotransform on the source's pixel grid, nodata exactly where the tiles had too
few valid pixels, every written value finite; a SHAP map that covers its tiles, ends at the raster's
edge and is nodata exactly where the source pixel is invalid or no explained tile covers it — or an
expected refusal: an AidXaiError / QgsProcessingException with a one-line message, nothing at the
output paths, and a message of a refusal the generated inputs call for (REFUSALS, worked out by the
test from the inputs). Any other error, a refusal the inputs call for that did not come, an
exception other than these, a NaN, or a `.partial` file left behind fails the test. The counts of
cases and outcomes are printed at the end of the module (and asserted, so a silently shrunken run
cannot pass).
"""

import collections
import contextlib
import math
import os
import re
import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from osgeo import gdal, osr

from aid_xai_plugin.core.common.errors import AidXaiError
from aid_xai_plugin.core.data.synthetic import SYNTHETIC_CLASSES
from aid_xai_plugin.core.explain.engine import ExplainSettings
from aid_xai_plugin.core.pipelines.classify import CLASS_NODATA, PROBABILITY_NODATA, ClassifyOutputs, classify_raster
from aid_xai_plugin.core.pipelines.explain import SHAP_NODATA, ExplainOutputs, ExplainRequest, ExplainSpec, explain_raster
from aid_xai_plugin.core.pipelines.tiles import TilingOptions

CORE_CLASSIFY_CASES = 360
CORE_EXPLAIN_CASES = 60
PROCESSING_CASES = 10
MAX_TILES = 120
FUZZ = dict(derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck), print_blob=True)
MODEL_INPUT_PX = 64  # conftest's synthetic_model: a tile size of 0 means 64 source pixels
MODEL_BANDS = (1, 2, 3)  # … and empty BANDS the raster's bands 1, 2, 3

HEADLINE = ("cases", "outputs_checked", "expected_refusals", "unexpected_errors", "missed_refusals", "tracebacks", "partial_files", "non_finite")
OUTCOMES = collections.Counter({key: 0 for key in HEADLINE})
DTYPES = {"uint8": gdal.GDT_Byte, "uint16": gdal.GDT_UInt16, "int16": gdal.GDT_Int16, "float32": gdal.GDT_Float32}

# The refusals the generated inputs can call for: the documented input class, and a fragment of the
# message naming it. A refusal is expected only where the test, from the inputs alone, finds the case
# in that class (expected_refusals); every other error is unexpected and fails the test.
REFUSALS = {
    "tile_over_raster": ("the raster is smaller than one tile", "smaller than one tile"),
    "stride_range": ("the stride is below 1 px or above the tile size", "must be between 1 pixel and the tile size"),
    "bands_text": ("BANDS is not a list of numbers", "must be band numbers separated by commas"),
    "bands_count": ("BANDS names another number of bands than the model's 3", "The model expects 3 band(s) but BANDS selects"),
    "bands_missing": ("BANDS names a band the raster lacks", "do not exist: the raster has"),
    "extent_rotated": ("an extent on a rotated raster", "A processing extent needs a north-up raster"),
    "extent_outside": ("an extent beside the raster", "The processing extent does not overlap the raster"),
    "percentile_range": ("percentiles outside 0 <= low < high <= 100", "percentiles must satisfy 0 <= SCALING_LOW < SCALING_HIGH <= 100"),
    "minmax_range": ("a min-max scaling with max <= min", "the maximum (SCALING_HIGH) must be greater than the minimum"),
    "no_valid_pixels": ("a band the scaling samples has no valid pixel in the extent", "has no valid pixels in the processing extent"),
    "no_usable_tile": ("no explained tile has enough valid pixels", "No selected tile had enough valid pixels to explain"),
    "topk_overlap": ("top-k ranks of overlapping tiles would be blended", "OVERLAP=blend averages overlapping tiles per pixel"),
}
# processing.run's SCALING drop-down with the algorithm's default SCALING_LOW = 2, SCALING_HIGH = 98
PROCESSING_SCALING = {"auto": "auto", "percentile": "percentile(2,98)", "minmax": "minmax(2,98)", "none": "none"}


@pytest.fixture(scope="module", autouse=True)
def outcome_report(request):
    """Prints the cases run and their outcomes on the terminal when the module ends (with or without
    -s: output capture is suspended for the line), and checks nothing slipped through."""
    yield
    rest = sorted(key for key in OUTCOMES if key not in HEADLINE)
    summary = ", ".join(f"{key}={OUTCOMES[key]}" for key in (*HEADLINE, *rest))  # zero counts too
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\nFUZZ SUMMARY: {summary}", flush=True)
    report = os.environ.get("AID_XAI_FUZZ_REPORT")
    if report:
        with open(report, "w", encoding="utf-8") as stream:
            stream.write(summary + "\n")
    assert all(OUTCOMES[key] == 0 for key in ("unexpected_errors", "missed_refusals", "tracebacks", "partial_files", "non_finite")), summary


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return str(tmp_path_factory.mktemp("fuzz"))


# --- generated rasters -------------------------------------------------------------------------


def pick(rng, weighted):
    """One of {choice: weight}: hypothesis draws the seed (so cases are reproducible and derandomized),
    the weights keep the mix of valid and invalid cases where it tests most."""
    choices = list(weighted)
    weights = np.asarray([weighted[c] for c in choices], float)
    return choices[rng.choice(len(choices), p=weights / weights.sum())]


@st.composite
def rasters(draw, max_side=200):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dtype = pick(rng, {"uint8": 1, "uint16": 1, "int16": 1, "float32": 1.5})
    geotransform_kind = pick(rng, {"north-up": 6, "south-up": 1.5, "rotated": 1.5})
    crs = pick(rng, {"projected": 3, "geographic": 1.5, "missing": 1})
    resolution = float(pick(rng, {0.5: 1, 1.0: 1, 2.0: 1, 10.0: 1, 30.0: 1} if crs != "geographic" else {0.0001: 1, 0.001: 1, 0.01: 1}))
    origin = (rng.uniform(-1e6, 1e6), rng.uniform(-1e6, 1e7)) if crs != "geographic" else (rng.uniform(-170, 160), rng.uniform(-60, 80))
    if geotransform_kind == "north-up":
        geotransform = (origin[0], resolution, 0.0, origin[1], 0.0, -resolution)
    elif geotransform_kind == "south-up":
        geotransform = (origin[0], resolution, 0.0, origin[1], 0.0, resolution)
    else:
        angle = rng.uniform(0.05, 0.6)
        geotransform = (origin[0], resolution * np.cos(angle), resolution * np.sin(angle), origin[1], resolution * np.sin(angle), -resolution * np.cos(angle))

    def side():
        kind = pick(rng, {"tiny": 1, "small": 1.5, "tiles": 7})
        return int(rng.integers(1, 9) if kind == "tiny" else rng.integers(9, 64) if kind == "small" else rng.integers(64, max_side + 1))

    return dict(
        dtype=dtype,
        bands=int(pick(rng, {3: 4, 4: 2, 6: 1, 5: 1, 1: 1, 2: 1})),
        width=side(),
        height=side(),
        geotransform=tuple(float(v) for v in geotransform),
        geotransform_kind=geotransform_kind,
        crs=crs,
        nodata=pick(rng, {"none": 3, "zero": 1, "max": 1, "nan": 1}),
        alpha=bool(rng.random() < 0.2),
        mask=bool(rng.random() < 0.2),
        invalid_fraction=float(pick(rng, {0.0: 3, 0.05: 2, 0.3: 2, 0.9: 1, 1.0: 1})),
        non_finite=bool(rng.random() < 0.4),
        constant=bool(rng.random() < 0.1),
        seed=int(rng.integers(0, 2**31)),
    )


def write_raster(path, spec):
    """The GeoTIFF `spec` describes; returns its validity (H×W bool) as GDAL's masks and finiteness say."""
    rng = np.random.default_rng(spec["seed"])
    height, width, count = spec["height"], spec["width"], spec["bands"]
    numpy_type = np.dtype(spec["dtype"])
    if numpy_type.kind == "f":
        values = rng.normal(1000.0, 300.0, (count, height, width)).astype(np.float32)
    else:
        info = np.iinfo(numpy_type)
        values = rng.integers(max(info.min, -3000), min(info.max, 3000 if numpy_type != np.uint8 else 255) + 1, (count, height, width)).astype(numpy_type)
    if spec["constant"]:
        values[:] = values.flat[0]
    invalid = rng.random((height, width)) < spec["invalid_fraction"]
    nodata = None
    if spec["nodata"] == "zero":
        nodata = 0
    elif spec["nodata"] == "max":
        nodata = float(np.finfo(np.float32).max) if numpy_type.kind == "f" else int(np.iinfo(numpy_type).max)
    elif spec["nodata"] == "nan" and numpy_type.kind == "f":
        nodata = float("nan")
    if nodata is not None:
        values[:, invalid] = nodata
    if spec["non_finite"] and numpy_type.kind == "f":
        chosen = rng.random((count, height, width)) < 0.1
        values[chosen] = rng.choice(np.array([np.nan, np.inf, -np.inf], np.float32), chosen.sum())
    dataset = gdal.GetDriverByName("GTiff").Create(path, width, height, count, DTYPES[spec["dtype"]], ["TILED=YES", "BLOCKXSIZE=64", "BLOCKYSIZE=64"] if min(width, height) >= 64 else [])
    dataset.SetGeoTransform(spec["geotransform"])
    if spec["crs"] != "missing":
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(32633 if spec["crs"] == "projected" else 4326)
        dataset.SetProjection(srs.ExportToWkt())
    for index in range(count):
        band = dataset.GetRasterBand(index + 1)
        if nodata is not None:
            band.SetNoDataValue(nodata)
        band.WriteArray(values[index])
    if spec["alpha"] and count > 1:
        alpha = dataset.GetRasterBand(count)
        alpha.SetColorInterpretation(gdal.GCI_AlphaBand)
        alpha.WriteArray(np.where(rng.random((height, width)) < 0.2, 0, 200).astype(numpy_type))
    elif spec["mask"]:
        dataset.CreateMaskBand(gdal.GMF_PER_DATASET)
        dataset.GetRasterBand(1).GetMaskBand().WriteArray(np.where(rng.random((height, width)) < 0.2, 0, 255).astype(np.uint8))
    dataset = None


def band_validity(path, number):
    """Valid pixels of one band by GDAL's own mask and finiteness."""
    dataset = gdal.Open(path)  # held: a band outlives no dataset
    band = dataset.GetRasterBand(number)
    return (band.GetMaskBand().ReadAsArray() > 0) & np.isfinite(band.ReadAsArray().astype(np.float64))


def source_validity(path, bands):
    """Valid pixels of `bands` (valid in each) — the rule read_tile documents."""
    return np.logical_and.reduce([band_validity(path, number) for number in bands])


# --- generated settings ------------------------------------------------------------------------


@st.composite
def tilings(draw, spec):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    tile_size = int(pick(rng, {0: 4, 4: 0.5, 7: 0.5, 16: 1, 32: 1, 50: 1, 64: 0.5, 80: 0.5, 130: 0.3}))
    stride = int(pick(rng, {0: 6, 1: 0.3, 3: 0.5, 8: 1, 16: 1, 33: 0.5}))
    band_text = pick(rng, {"": 8, "random": 2, "3,2,1": 1, "1 2 3": 0.5, "1,1,1": 0.5, "1,2": 0.3, "0,1,2": 0.3, "a,b,c": 0.3})
    if band_text == "random":
        band_text = ",".join(str(int(rng.integers(1, spec["bands"] + 1))) for _ in range(3))
    scaling = pick(rng, {"auto": 4, "none": 1, "percentile(2,98)": 1.5, "percentile(0,100)": 1, "minmax(0,255)": 1, "minmax(-1e3,5e3)": 1, "percentile(50,50)": 0.2, "minmax(5,5)": 0.2})
    extent = None
    g = spec["geotransform"]
    if rng.random() < 0.2:
        fx, fy = np.sort(rng.uniform(-0.5, 1.5, 2)), np.sort(rng.uniform(-0.5, 1.5, 2))
        xs = [g[0] + f * spec["width"] * g[1] for f in fx]
        ys = [g[3] + f * spec["height"] * g[5] for f in fy]
        extent = (min(xs), min(ys), max(xs), max(ys))
    tile_px = tile_size or 64
    while _tile_count(spec, tile_px, stride or tile_px) > MAX_TILES and tile_px <= 512:  # keep a case well under a second
        stride, tile_px = (0, tile_px) if stride else (0, tile_px * 2)
        tile_size = tile_px if tile_size else 0
    unit = "pixels"
    if tile_size and rng.random() < 0.2:
        unit = "map units"
        tile_size, stride = tile_size * abs(g[1]), stride * abs(g[1])
    return TilingOptions(
        tile_size=tile_size,
        tile_unit=unit,
        stride=stride,
        extent=extent,
        bands=band_text,
        scaling=scaling,
        min_valid_fraction=float(pick(rng, {0.5: 4, 0.0: 1, 0.1: 1, 0.99: 1, 1.0: 1})),
    )


def _tile_count(spec, tile, stride):
    return (max(spec["width"] - tile, 0) // stride + 2) * (max(spec["height"] - tile, 0) // stride + 2)


# --- the refusals the inputs call for ----------------------------------------------------------


def selected_bands(text):
    """BANDS as documented: numbers separated by commas or spaces, empty for the model's bands; None
    when it is not numbers."""
    try:
        return [int(part) for part in re.split(r"[,\s]+", text.strip()) if part] or list(MODEL_BANDS)
    except ValueError:
        return None


def pixels(value, unit, geotransform):
    """(width, height) in source pixels of a tile size or stride given in pixels or map units."""
    if unit == "pixels":
        return round(value), round(value)
    return round(value / abs(geotransform[1])), round(value / abs(geotransform[5]))


def scaling_samples(scaling, dtype, refusals):
    """Whether the scaling samples the pixels for statistics; adds the refusal an empty range calls for."""
    match = re.fullmatch(r"(percentile|minmax)\(([-+0-9.e]+),([-+0-9.e]+)\)", scaling)
    if match is None:
        return scaling == "auto" and dtype != "uint8"  # auto: 8-bit data is /255, other types a 2-98 % stretch
    low, high = float(match.group(2)), float(match.group(3))
    if match.group(1) == "minmax":
        if high <= low:
            refusals.add("minmax_range")
        return False
    if not 0 <= low < high <= 100:
        refusals.add("percentile_range")
        return False
    return True


def expected_refusals(raster, spec, options, operation, top_k=False):
    """(certain, possible): REFUSALS keys the inputs call for — the run must end in one of `certain`
    when it is not empty — and those it may end in where the outcome also depends on which tiles
    an extent or an edge selects, which the test does not recompute (`possible` holds `certain`)."""
    certain, possible = set(), set()
    g, width, height = spec["geotransform"], spec["width"], spec["height"]
    tile = pixels(options.tile_size or MODEL_INPUT_PX, options.tile_unit if options.tile_size else "pixels", g)
    stride = pixels(options.stride, options.tile_unit, g) if options.stride else tile
    if not all(1 <= s <= t for s, t in zip(stride, tile)):
        certain.add("stride_range")
    if width < tile[0] or height < tile[1]:
        certain.add("tile_over_raster")
    bands = selected_bands(options.bands)
    if bands is None:
        certain.add("bands_text")
    else:
        if len(bands) != len(MODEL_BANDS):
            certain.add("bands_count")
        if not all(1 <= band <= spec["bands"] for band in bands):
            certain.add("bands_missing")
    inside = (0, 0, width, height)  # pixels certainly inside the processing extent: x0, y0, x1, y1
    if options.extent is not None:
        if g[2] != 0 or g[4] != 0:
            certain.add("extent_rotated")
        else:
            xmin, ymin, xmax, ymax = options.extent
            cols = sorted(((xmin - g[0]) / g[1], (xmax - g[0]) / g[1]))
            rows = sorted(((ymax - g[3]) / g[5], (ymin - g[3]) / g[5]))
            overlap = min(min(cols[1], width) - max(cols[0], 0), min(rows[1], height) - max(rows[0], 0))
            # an edge within 1e-6 px of the raster's may round either way (the extent's own float64 rounding is far smaller)
            if overlap < -1e-6:
                certain.add("extent_outside")
            elif overlap < 1e-6:
                possible.add("extent_outside")
            inside = (math.ceil(max(cols[0], 0)), math.ceil(max(rows[0], 0)), math.floor(min(cols[1], width)), math.floor(min(rows[1], height)))
    samples = scaling_samples(options.scaling, spec["dtype"], certain)
    if bands is not None and all(1 <= band <= spec["bands"] for band in bands):
        valid = [band_validity(raster, band) for band in set(bands)]
        if samples:
            x0, y0, x1, y1 = inside
            if not all(band.any() for band in valid):
                certain.add("no_valid_pixels")
            elif not all(band[y0:y1, x0:x1].any() for band in valid):
                possible.add("no_valid_pixels")  # the tiles an extent selects reach past it
        if operation == "explain":
            combined = np.logical_and.reduce(valid)
            reaches_past_edge = (width - tile[0]) % stride[0] or (height - tile[1]) % stride[1]
            if not combined.any():
                certain.add("no_usable_tile")
            elif not combined.all() or reaches_past_edge:
                possible.add("no_usable_tile")
    if top_k and any(s < t for s, t in zip(stride, tile)):
        possible.add("topk_overlap")
    return certain, possible | certain


def input_classes(kinds):
    return "; ".join(REFUSALS[kind][0] for kind in sorted(kinds)) or "none"


def expect_refusal(message, expected):
    """Counts the refusal under the input class its message names, if the inputs call for that class."""
    _, possible = expected
    kind = next((kind for kind in sorted(possible) if REFUSALS[kind][1] in message), None)
    if kind is None:
        OUTCOMES["unexpected_errors"] += 1
        raise AssertionError(f"unexpected error (the inputs' refusal classes: {input_classes(possible)}): {message}")
    OUTCOMES["expected_refusals"] += 1
    OUTCOMES[f"refused_{kind}"] += 1


def expect_no_refusal(expected):
    certain, _ = expected
    if certain:
        OUTCOMES["missed_refusals"] += 1
        raise AssertionError(f"the run succeeded, but its inputs must be refused: {input_classes(certain)}")


# --- the properties ----------------------------------------------------------------------------


def assert_no_leftovers(folder, outputs):
    names = os.listdir(folder)
    partial = [name for name in names if ".partial" in name]
    if partial:
        OUTCOMES["partial_files"] += 1
    assert not partial, names


def expect_clear_error(error, folder, outputs, operation, expected):
    message = str(error).strip()
    assert message and "Traceback" not in message and "\n" not in message, message
    for path in outputs:
        assert not os.path.exists(path), f"{path} exists after: {message}"
    assert_no_leftovers(folder, outputs)
    expect_refusal(message, expected)
    OUTCOMES[f"{operation}_expected_refusals"] += 1


def assert_on_source_grid(source_gt, output_gt, scale=(1, 1)):
    """The output's origin is a source pixel corner and its pixels are whole multiples of the source's."""
    inverse = gdal.InvGeoTransform(source_gt)
    px, py = gdal.ApplyGeoTransform(inverse, output_gt[0], output_gt[3])
    # float64 inversion errs by ~|origin| / |pixel| × 2^-52 pixels (< 1e-6 for every raster made here);
    # a grid off the source's is off by a whole fraction of a pixel
    assert abs(px - round(px)) < 1e-6 and abs(py - round(py)) < 1e-6, (px, py)
    sx, sy = scale
    expected = (source_gt[1] * sx, source_gt[2] * sy, source_gt[4] * sx, source_gt[5] * sy)
    # float64: the output's pixel size may come from an extent divided by a pixel count rather than
    # this product, a few 2^-52 apart; 1e-9 relative is still a billionth of a pixel (1e-12 absolute
    # for the zero rotation terms)
    np.testing.assert_allclose((output_gt[1], output_gt[2], output_gt[4], output_gt[5]), expected, rtol=1e-9, atol=1e-12)
    return int(round(px)), int(round(py))


def count_finite(values, nodata):
    bad = ~np.isfinite(values)
    if bad.any():
        OUTCOMES["non_finite"] += 1
    assert not bad.any(), "non-finite values written"


def check_classify_outputs(raster, spec, options, result, outputs):
    source = gdal.Open(raster)
    classes = gdal.Open(outputs.class_raster)
    probabilities = gdal.Open(outputs.probability_raster)
    assert classes.GetProjection() == source.GetProjection() == probabilities.GetProjection()
    sx, sy = result.stride_px
    origin = assert_on_source_grid(source.GetGeoTransform(), classes.GetGeoTransform(), (sx, sy))
    assert classes.GetGeoTransform() == probabilities.GetGeoTransform()
    assert (classes.RasterXSize, classes.RasterYSize) == (result.cols, result.rows)
    cells = classes.ReadAsArray()
    scores = probabilities.ReadAsArray().reshape(probabilities.RasterCount, result.rows, result.cols)
    count_finite(scores, PROBABILITY_NODATA)
    written = cells != CLASS_NODATA
    assert written.sum() == result.classified
    assert np.all((scores[:, written] >= 0) & (scores[:, written] <= 1))
    assert np.all(scores[:, ~written] == PROBABILITY_NODATA)
    # nodata exactly where the tile's valid fraction (from GDAL's masks, independently) is too low
    valid = source_validity(raster, selected_bands(options.bands))
    tile_w, tile_h = result.tile_px
    offset = ((tile_w - sx) // 2, (tile_h - sy) // 2)
    for row in range(result.rows):
        for col in range(result.cols):
            x = origin[0] + col * sx - offset[0]
            y = origin[1] + row * sy - offset[1]
            inside = valid[max(y, 0) : max(y + tile_h, 0), max(x, 0) : max(x + tile_w, 0)]
            fraction = inside.sum() / (tile_w * tile_h)
            if abs(fraction - options.min_valid_fraction) < 1e-9:
                continue  # a tie with the threshold: the plugin's own float64 fraction may round to either side
            usable = fraction >= options.min_valid_fraction and fraction > 0
            assert written[row, col] == usable, (row, col, fraction, options.min_valid_fraction)


def check_shap_map(raster, shap_path, bands, tiles, min_valid_fraction):
    """The SHAP map of the explained `tiles` (source pixel windows x, y, w, h): on the source's grid,
    covering the tiles and ending at the raster's edge; a value exactly where a tile with enough
    valid pixels covers a valid source pixel, nodata everywhere else. Returns the number of tiles
    with enough valid pixels (None when one ties with the threshold)."""
    source, shap = gdal.Open(raster), gdal.Open(shap_path)
    assert shap.GetProjection() == source.GetProjection()
    assert shap.GetRasterBand(1).GetNoDataValue() == SHAP_NODATA
    x0, y0 = min(x for x, _, _, _ in tiles), min(y for _, y, _, _ in tiles)
    x1 = min(max(x + w for x, _, w, _ in tiles), source.RasterXSize)
    y1 = min(max(y + h for _, y, _, h in tiles), source.RasterYSize)
    assert assert_on_source_grid(source.GetGeoTransform(), shap.GetGeoTransform()) == (x0, y0), "the map does not start at its first tile"
    assert (shap.RasterXSize, shap.RasterYSize) == (x1 - x0, y1 - y0), "the map does not end at its last tile or the raster's edge"
    values = shap.ReadAsArray().reshape(shap.RasterCount, y1 - y0, x1 - x0)
    count_finite(values, SHAP_NODATA)
    valid = source_validity(raster, bands)
    explained = np.zeros(valid.shape, bool)
    tied = np.zeros(valid.shape, bool)
    usable = 0
    for x, y, w, h in tiles:
        fraction = valid[y : y + h, x : x + w].sum() / (w * h)  # pixels past the edge count as invalid
        if abs(fraction - min_valid_fraction) < 1e-9:
            tied[y : y + h, x : x + w] = True  # as in classify: the plugin's float64 fraction may round to either side
        elif fraction >= min_valid_fraction and fraction > 0:
            explained[y : y + h, x : x + w] = True
            usable += 1
    window = (slice(y0, y1), slice(x0, x1))
    has_value = (explained & valid)[window]
    checked = has_value | ~tied[window] | ~valid[window]
    written = values != SHAP_NODATA
    stray, missing = written & ~has_value & checked, ~written & has_value
    assert not stray.any() and not missing.any(), f"{stray.sum()} values where the source is invalid or no explained tile lies, {missing.sum()} nodata pixels where a valid pixel was explained"
    return None if tied.any() else usable


def check_explain_outputs(raster, spec, options, result, outputs, selector):
    inverse = gdal.InvGeoTransform(spec["geotransform"])
    tiles = []
    for corners in selector.taken:  # a tile's footprint → its source pixel window
        (x, y), (right, bottom) = (gdal.ApplyGeoTransform(inverse, *corners[index]) for index in (0, 2))
        tiles.append((round(x), round(y), round(right - x), round(bottom - y)))
    assert result.requested == len(tiles)
    usable = check_shap_map(raster, outputs.shap_raster, selected_bands(options.bands), tiles, options.min_valid_fraction)
    assert result.explained >= 1
    if usable is not None:
        assert result.explained == usable


def grid_tiles(width, height, tile, stride):
    """Every tile window of a whole raster: stepped by the stride from its top-left pixel until one reaches its edge."""
    columns, rows = (-(-(size - t) // s) + 1 for size, t, s in ((width, tile[0], stride[0]), (height, tile[1], stride[1])))
    return [(col * stride[0], row * stride[1], *tile) for row in range(rows) for col in range(columns)]


class FirstTiles:
    """A tile selector taking the first `limit` tiles of the grid (explain runs stay short); `taken`:
    their footprints, as the selector was given them."""

    def __init__(self, limit):
        self.limit = limit
        self.taken = []

    def __call__(self, corners):
        if len(self.taken) < self.limit:
            self.taken.append(corners)
            return [(0, "", None)]
        return []


def run_case(work, synthetic_model, spec, options, operation, explain_settings=None):
    folder = tempfile.mkdtemp(dir=work)
    raster = os.path.join(folder, "input.tif")
    write_raster(raster, spec)
    out = os.path.join(folder, "out")
    os.makedirs(out)
    OUTCOMES["cases"] += 1
    OUTCOMES[f"cases_{operation}"] += 1
    expected = expected_refusals(raster, spec, options, operation)
    try:
        if operation == "classify":
            outputs = ClassifyOutputs(os.path.join(out, "classes.tif"), os.path.join(out, "probabilities.tif"), os.path.join(out, "tiles.gpkg"))
            paths = [outputs.class_raster, outputs.probability_raster, outputs.tile_layer]
            try:
                result = classify_raster(raster, synthetic_model, options, outputs, k=2, batch_size=16, device="cpu")
            except AidXaiError as error:
                expect_clear_error(error, out, paths, operation, expected)
                return
            expect_no_refusal(expected)
            check_classify_outputs(raster, spec, options, result, outputs)
        else:
            outputs = ExplainOutputs(shap_raster=os.path.join(out, "shap.tif"), tile_table=os.path.join(out, "table.gpkg"))
            paths = [outputs.shap_raster, outputs.tile_table]
            selector = FirstTiles(2)
            try:
                # two named classes: overlapping tiles blend only for fixed classes (top-k ranks are refused)
                request = ExplainRequest(tile_selector=selector, class_names=list(SYNTHETIC_CLASSES[:2]))
                result = explain_raster(ExplainSpec(raster, synthetic_model, options, request, explain_settings, outputs, engine="fast", device="cpu"))
            except AidXaiError as error:
                expect_clear_error(error, out, paths, operation, expected)
                return
            expect_no_refusal(expected)
            check_explain_outputs(raster, spec, options, result, outputs, selector)
        assert_no_leftovers(out, paths)
        OUTCOMES["outputs_checked"] += 1
        OUTCOMES[f"{operation}_outputs_checked"] += 1
    except (AssertionError, AidXaiError):
        raise
    except Exception:
        OUTCOMES["tracebacks"] += 1
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@settings(max_examples=CORE_CLASSIFY_CASES, **FUZZ)
@given(data=st.data())
def test_fuzz_core_classify(work, synthetic_model, data):
    spec = data.draw(rasters())
    options = data.draw(tilings(spec))
    run_case(work, synthetic_model, spec, options, "classify")


@settings(max_examples=CORE_EXPLAIN_CASES, **FUZZ)
@given(data=st.data())
def test_fuzz_core_explain(work, synthetic_model, data):
    spec = data.draw(rasters(max_side=140))
    options = data.draw(tilings(spec))
    explain_settings = ExplainSettings(
        masker=data.draw(st.sampled_from(["blur(16,16)", "0.5", "inpaint_telea"])),
        max_evals=data.draw(st.integers(20, 50)),
        batch_size=data.draw(st.sampled_from([8, 64])),
        seed=data.draw(st.integers(0, 5)),
        output_space=data.draw(st.sampled_from(["logit", "probability", "log_probability"])),
    )
    run_case(work, synthetic_model, spec, options, "explain", explain_settings)


@settings(max_examples=PROCESSING_CASES, **FUZZ)
@given(data=st.data())
def test_fuzz_processing_run(aid_xai_provider, work, synthetic_model, data):
    """A small sample through processing.run: QGIS's parameter handling in front of the same core."""
    from qgis.core import QgsProcessingException

    import processing

    spec = data.draw(rasters(max_side=150))
    operation = data.draw(st.sampled_from(["classify", "explain"]))
    folder = tempfile.mkdtemp(dir=work)
    raster = os.path.join(folder, "input.tif")
    write_raster(raster, spec)
    out = os.path.join(folder, "out")
    os.makedirs(out)
    parameters = {
        "INPUT": raster,
        "MODEL": synthetic_model,
        "TILE_SIZE": data.draw(st.sampled_from([0, 16, 40])),
        "STRIDE": data.draw(st.sampled_from([0, 0, 8])),
        "BANDS": data.draw(st.sampled_from(["", "1,1,1", "3,2,1", "1,2"])),
        "SCALING": data.draw(st.sampled_from(["auto", "percentile", "minmax", "none"])),
        "MIN_VALID_FRACTION": data.draw(st.sampled_from([0.0, 0.5, 1.0])),
        "DEVICE": "cpu",
    }
    options = TilingOptions(tile_size=parameters["TILE_SIZE"], stride=parameters["STRIDE"], bands=parameters["BANDS"], scaling=PROCESSING_SCALING[parameters["SCALING"]], min_valid_fraction=parameters["MIN_VALID_FRACTION"])
    if operation == "classify":
        paths = [os.path.join(out, name) for name in ("classes.tif", "probabilities.tif", "tiles.gpkg")]
        parameters.update(OUTPUT_CLASSES=paths[0], OUTPUT_PROBABILITIES=paths[1], OUTPUT_TILES=paths[2])
    else:
        paths = [os.path.join(out, "shap.tif")]
        parameters.update(ENGINE="fast", MAX_EVALS=20, TOP_K=1, OUTPUT=paths[0], OUTPUT_TABLE="", OUTPUT_REPORT="", EXTENT=None)
    OUTCOMES["cases"] += 1
    OUTCOMES["cases_processing_run"] += 1
    expected = expected_refusals(raster, spec, options, operation, top_k=True)
    try:
        try:
            result = processing.run(f"aid_xai:{operation}", parameters)
        except QgsProcessingException as error:
            last = str(error).strip().splitlines()[-1]
            assert last and "Traceback" not in str(error), str(error)
            for path in paths:
                assert not os.path.exists(path), path
            assert_no_leftovers(out, paths)
            expect_refusal(last, expected)
            OUTCOMES["processing_run_expected_refusals"] += 1
            return
        expect_no_refusal(expected)
        for key in ("OUTPUT_CLASSES", "OUTPUT_PROBABILITIES", "OUTPUT"):
            if key in result:
                written = gdal.Open(result[key])
                assert written.GetProjection() == gdal.Open(raster).GetProjection()
                count_finite(written.ReadAsArray(), None)
        if operation == "explain":  # every tile of the grid: the map is the whole raster's
            tile = (parameters["TILE_SIZE"] or MODEL_INPUT_PX,) * 2
            tiles = grid_tiles(spec["width"], spec["height"], tile, (parameters["STRIDE"] or tile[0],) * 2)
            check_shap_map(raster, result["OUTPUT"], selected_bands(parameters["BANDS"]), tiles, parameters["MIN_VALID_FRACTION"])
        assert_no_leftovers(out, paths)
        OUTCOMES["outputs_checked"] += 1
        OUTCOMES["processing_run_outputs_checked"] += 1
    except (AssertionError, QgsProcessingException):
        raise
    except Exception:
        OUTCOMES["tracebacks"] += 1
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_fuzz_budget_ran(request):
    """Runs last in the module: every fuzz test ran its whole budget of cases."""
    assert OUTCOMES["cases_classify"] >= CORE_CLASSIFY_CASES
    assert OUTCOMES["cases_explain"] >= CORE_EXPLAIN_CASES
    assert OUTCOMES["cases_processing_run"] >= PROCESSING_CASES
    assert OUTCOMES["expected_refusals"] > 0 and OUTCOMES["outputs_checked"] > 0
