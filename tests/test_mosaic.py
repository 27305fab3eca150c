"""The mosaic that combines per-tile maps into the SHAP raster: seamless blends, exact single tiles,
`last` overwrites, any arrival order, flat memory and sparse files, read back from real GeoTIFFs."""

import os

import numpy as np
import pytest
from osgeo import gdal

from aid_xai_plugin.core.common.gdal_context import gdal_exceptions
from aid_xai_plugin.core.geo.mosaic import TileMosaic, tile_weights
from aid_xai_plugin.core.geo.writers import GeoTiffSink

NODATA = -9999.0
GEOTRANSFORM = (500000.0, 2.0, 0.0, 4000000.0, 0.0, -2.0)


def tile_windows(width, height, size, stride):
    return [(x, y, size, size) for y in range(0, height - size + 1, stride) for x in range(0, width - size + 1, stride)]


def mosaic_to_file(path, size, windows, maps, bands=1, mode="blend", order=None, block_size=256, valid=None):
    """Write `maps` (one h×w×bands array or None per window; `valid`: one h×w mask or None per window)
    through a TileMosaic into a real GeoTIFF and read it back; returns (array bands×H×W, most blocks
    held open at once)."""
    most_open = 0
    with gdal_exceptions(), GeoTiffSink(str(path), size[0], size[1], bands, gdal.GDT_Float32, GEOTRANSFORM, "", NODATA) as sink:
        mosaic = TileMosaic(sink, size, windows, bands, NODATA, mode, block_size=block_size, flush=sink.flush)
        for index in order if order is not None else range(len(windows)):
            mosaic.add(windows[index], maps[index], None if valid is None else valid[index])
            most_open = max(most_open, len(mosaic.open))
        mosaic.close()
    with gdal_exceptions():
        dataset = gdal.Open(str(path))
        return dataset.ReadAsArray().reshape(bands, size[1], size[0]), most_open


def smooth_field(x, y):
    return np.sin(x / 23.0) + np.cos(y / 31.0)


def field_tiles(windows, offset_seed=None):
    """Per tile: a smooth field over the tile's pixels plus, optionally, a per-tile constant offset
    (as explanations of neighbouring tiles differ)."""
    rng = np.random.default_rng(offset_seed)
    maps = []
    for x, y, w, h in windows:
        yy, xx = np.mgrid[y : y + h, x : x + w]
        offset = rng.normal(scale=0.5) if offset_seed is not None else 0.0
        maps.append((smooth_field(xx, yy) + offset)[..., None].astype(np.float32))
    return maps


@pytest.mark.numerics
def test_tiles_with_constant_maps_blend_into_that_constant(tmp_path):
    windows = tile_windows(160, 128, 64, 16)
    result, _ = mosaic_to_file(tmp_path / "c.tif", (160, 128), windows, [np.full((64, 64, 2), 0.375, np.float32)] * len(windows), bands=2)
    # Σ w·c / Σ w in float64 is c within a few 2^-52, far inside half a float32 ulp: stored, exactly c
    np.testing.assert_array_equal(result, np.float32(0.375))


def test_blend_has_no_seam_at_tile_edges_where_last_has_one(tmp_path):
    """Each tile carries the same smooth field plus its own offset: `last` shows the offsets' jumps at
    tile edges, the blend changes between neighbouring pixels no more than a smooth map does."""
    size, stride = 64, 32
    windows = tile_windows(256, 192, size, stride)
    maps = field_tiles(windows, offset_seed=3)
    blended, _ = mosaic_to_file(tmp_path / "blend.tif", (256, 192), windows, maps)
    overwritten, _ = mosaic_to_file(tmp_path / "last.tif", (256, 192), windows, maps, mode="last")

    def largest_step(image):
        return max(np.abs(np.diff(image[0], axis=0)).max(), np.abs(np.diff(image[0], axis=1)).max())

    field_step = largest_step(smooth_field(*np.mgrid[0:192, 0:256][::-1])[None])
    assert largest_step(overwritten) > 10 * field_step  # the offsets' seams
    assert largest_step(blended) < 4 * field_step  # offsets blend smoothly: no seam


def test_without_overlap_both_modes_write_each_tiles_values_exactly(tmp_path):
    windows = tile_windows(192, 128, 64, 64)
    rng = np.random.default_rng(0)
    maps = [rng.normal(size=(64, 64, 3)).astype(np.float32) for _ in windows]
    for mode in ("blend", "last"):
        result, _ = mosaic_to_file(tmp_path / f"{mode}.tif", (192, 128), windows, maps, bands=3, mode=mode)
        for (x, y, w, h), values in zip(windows, maps):
            np.testing.assert_array_equal(result[:, y : y + h, x : x + w], values.transpose(2, 0, 1))


def test_last_mode_keeps_the_later_tiles_sums(tmp_path):
    """Per-tile efficiency under `last`: where a tile was written last, its whole map is in the file,
    so its window sums to its map's sum (its SHAP sum in the tile table)."""
    windows = tile_windows(160, 96, 64, 32)
    rng = np.random.default_rng(1)
    maps = [rng.normal(size=(64, 64, 1)).astype(np.float32) for _ in windows]
    result, _ = mosaic_to_file(tmp_path / "last.tif", (160, 96), windows, maps, mode="last")
    x, y, w, h = windows[-1]
    np.testing.assert_array_equal(result[0, y : y + h, x : x + w], maps[-1][..., 0])  # so the same sum


@pytest.mark.numerics
def test_any_arrival_order_gives_the_same_blend(tmp_path):
    windows = tile_windows(200, 150, 50, 25)
    maps = field_tiles(windows, offset_seed=5)
    in_order, _ = mosaic_to_file(tmp_path / "a.tif", (200, 150), windows, maps, block_size=64)
    shuffled, _ = mosaic_to_file(tmp_path / "b.tif", (200, 150), windows, maps, order=np.random.default_rng(2).permutation(len(windows)), block_size=64)
    # float64 sums of the (≤ 4) overlapping tiles in another order differ by a few 2^-52; rounded to
    # float32 for storage that is at most one float32 ulp apart
    assert (np.abs(shuffled - in_order) <= np.spacing(np.abs(in_order))).all()


def test_skipped_tiles_leave_nodata_and_blocks_are_freed_as_they_finish(tmp_path):
    windows = tile_windows(1024, 512, 64, 32)
    maps = field_tiles(windows)
    maps[0] = None  # the top-left tile had no valid pixels
    result, most_open = mosaic_to_file(tmp_path / "s.tif", (1024, 512), windows, maps, block_size=64)
    assert (result[0, :32, :32] == NODATA).all()
    assert (result[0, 32:, 32:] != NODATA).all()
    # in grid order only about two rows of blocks wait for tiles at a time (16 blocks per row here)
    assert most_open <= 2 * (1024 // 64) + 2


def test_invalid_pixels_stay_nodata_and_tiles_may_reach_past_the_edge(tmp_path):
    """A nodata hole masked in every tile over it (validity belongs to the source pixel), and edge
    tiles reaching 20 px past a 140 × 100 output (blocks of 32: the last block column is partial)."""
    windows = [(x, y, 64, 64) for y in (0, 32, 56) for x in (0, 32, 64, 96)]
    maps = field_tiles(windows)
    hole = np.zeros((120, 160), bool)
    hole[40:50, 70:90] = True
    valid = [~hole[y : y + h, x : x + w] for x, y, w, h in windows]
    for mode in ("blend", "last"):
        result, _ = mosaic_to_file(tmp_path / f"{mode}.tif", (140, 100), windows, maps, mode=mode, block_size=32, valid=valid)
        assert (result[0][hole[:100, :140]] == NODATA).all()
        assert (result[0][~hole[:100, :140]] != NODATA).all()
        if mode == "last":  # outside the hole each pixel is the last covering tile's value
            x, y, w, h = windows[-1]
            np.testing.assert_array_equal(result[0, y:, x:], maps[-1][: 100 - y, : 140 - x, 0])


def test_far_apart_tiles_make_a_small_sparse_file(tmp_path):
    windows = [(0, 0, 128, 128), (19872, 19872, 128, 128)]
    maps = [np.ones((128, 128, 4), np.float32), np.full((128, 128, 4), -1.0, np.float32)]
    result_path = tmp_path / "sparse.tif"
    with gdal_exceptions(), GeoTiffSink(str(result_path), 20000, 20000, 4, gdal.GDT_Float32, GEOTRANSFORM, "", NODATA) as sink:
        mosaic = TileMosaic(sink, (20000, 20000), windows, 4, NODATA, flush=sink.flush)
        for window, values in zip(windows, maps):
            mosaic.add(window, values)
        mosaic.close()
    assert os.path.getsize(result_path) < 1_000_000  # 20 000² × 4 bands of float32 would be 6.4 GB
    with gdal_exceptions():
        dataset = gdal.Open(str(result_path))  # kept alive while its band is used
        band = dataset.GetRasterBand(2)
        assert band.ReadAsArray(0, 0, 130, 130)[:128, :128].min() == 1.0
        assert band.ReadAsArray(0, 0, 130, 130)[129, 129] == NODATA
        assert band.ReadAsArray(10000, 10000, 4, 4).max() == NODATA  # never written: reads as nodata
        assert band.ReadAsArray(19872, 19872, 128, 128).max() == -1.0


def test_weights_are_positive_and_peak_at_the_centre():
    weights = tile_weights(7, 10)
    assert weights.min() > 0
    assert np.unravel_index(np.argmax(weights), weights.shape) in {(3, 4), (3, 5)}
    # at a stride of half the tile the shifted windows sum to a constant (an even average)
    taper = tile_weights(1, 64)[0]
    # sin² + cos² = 1: numpy's sin is within 4 ulps on every SIMD path, the squares and sum add three
    # roundings: 8 float64 epsilons
    np.testing.assert_allclose(taper[:32] + taper[32:], 1.0, rtol=0, atol=8 * np.finfo(np.float64).eps)
