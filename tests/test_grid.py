"""The tile grid: stride/overlap counts, extent snapping, tile sizes in map units and metres, and
the property that every tile, output cell and output raster lies exactly on source pixel edges for
any north-up, south-up or rotated geotransform."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aid_xai_plugin.core.common.errors import AidXaiError
from aid_xai_plugin.core.geo.grid import make_grid, pixel_window, tile_size_in_pixels
from aid_xai_plugin.core.geo.ground import metres_per_map_unit

NORTH_UP = (1000.0, 10.0, 0.0, 2000.0, 0.0, -10.0)
SOUTH_UP = (1000.0, 10.0, 0.0, 2000.0, 0.0, 10.0)
ROTATED = (500.0, 2.0, 0.5, 800.0, 0.3, -1.5)
MAX_TILES_A_SIDE = 20


def affine(g, px, py):
    """GDAL's 6-term geotransform, written out here so the grid's own pixel_to_map isn't trusted."""
    return (g[0] + px * g[1] + py * g[2], g[3] + px * g[4] + py * g[5])


def rectangle(g, x, y, w, h):
    """Map corners of the pixel rectangle (x, y, w, h), clockwise from the top-left pixel corner."""
    return [affine(g, x, y), affine(g, x + w, y), affine(g, x + w, y + h), affine(g, x, y + h)]


def assert_points_close(actual, expected, tolerance):
    np.testing.assert_allclose(np.asarray(actual, dtype=float), np.asarray(expected, dtype=float), rtol=0, atol=tolerance)


def coordinate_tolerance(g, raster_size):
    """1e-12 of the largest coordinate (~5000 ulps): far above rounding, far below a pixel (≥ 0.01)."""
    reach = sum(raster_size) * max(abs(v) for v in (g[1], g[2], g[4], g[5]))
    return 1e-12 * (abs(g[0]) + abs(g[3]) + reach)


# ---- stride and overlap


def test_overlapping_tiles_step_by_the_stride_and_the_last_ones_reach_past_the_raster():
    grid = make_grid(NORTH_UP, (100, 70), (32, 32), (16, 16))
    # ceil((100 − 32) / 16) + 1 = 6 columns, ceil((70 − 32) / 16) + 1 = 4 rows
    assert (grid.cols, grid.rows, len(grid)) == (6, 4, 24)
    assert grid.tile(0, 0).window == (0, 0, 32, 32)
    assert grid.tile(1, 2).window == (32, 16, 32, 32) and grid.tile(1, 2).index == 8
    last = grid.tile(3, 5)
    assert last.window == (80, 48, 32, 32) and last.index == 23
    assert last.window[0] + 32 > 100 and last.window[1] + 32 > 70
    assert [tile.index for tile in grid.tiles()] == list(range(24))
    assert grid.cell_offset == (8, 8)


def test_default_stride_is_the_tile_size_and_cells_are_the_tiles():
    """Without overlap each output cell is exactly its tile's footprint."""
    grid = make_grid(NORTH_UP, (100, 70), (25, 25))
    assert (grid.stride_x, grid.stride_y, grid.cols, grid.rows) == (25, 25, 4, 3)
    assert grid.cell_offset == (0, 0)
    assert grid.cell_geotransform() == (1000.0, 250.0, 0.0, 2000.0, 0.0, -250.0)
    assert grid.footprint(grid.tile(2, 1)) == [(1250.0, 1500.0), (1500.0, 1500.0), (1500.0, 1250.0), (1250.0, 1250.0)]
    assert grid.pixel_extent_size == (100, 75)


def test_odd_overlap_centres_the_cell_rounding_down():
    grid = make_grid(NORTH_UP, (50, 50), (5, 6), (2, 3))
    assert grid.cell_offset == (1, 1)
    assert grid.cell_geotransform() == (1010.0, 20.0, 0.0, 1990.0, 0.0, -30.0)


def test_tile_smaller_than_one_pixel_is_refused():
    with pytest.raises(AidXaiError, match="at least one source pixel"):
        make_grid(NORTH_UP, (100, 100), (0.4, 8))


@pytest.mark.parametrize("stride", [(9, 8), (8, 9), (0, 8)])
def test_stride_outside_one_pixel_to_the_tile_size_is_refused(stride):
    with pytest.raises(AidXaiError, match=r"stride .* must be between 1 pixel and the tile size \(8×8 px\)"):
        make_grid(NORTH_UP, (100, 100), (8, 8), stride)


def test_raster_smaller_than_a_tile_is_refused():
    with pytest.raises(AidXaiError, match=r"30×100 px, smaller than one tile \(32×32 px\)"):
        make_grid(NORTH_UP, (30, 100), (32, 32))


# ---- an extent selects tiles of the raster's own grid


def test_extent_smaller_than_a_tile_selects_the_tile_under_it():
    # pixels 10..14 × 20..24 lie in tile (row 2, col 1) of the 8-px grid anchored at the raster's corner
    grid = make_grid(NORTH_UP, (100, 100), (8, 8), extent=(1100.0, 1760.0, 1140.0, 1800.0))
    assert (grid.rows, grid.cols) == (1, 1)
    assert grid.tile(0, 0).window == (8, 16, 8, 8)


def test_extent_selects_the_same_tiles_as_the_whole_raster_grid():
    """Tiles under an extent are tiles of the whole raster's grid (same windows), never shifted to
    the extent's corner; a tile counts when its output cell meets the extent."""
    whole = {tile.window for tile in make_grid(NORTH_UP, (100, 70), (32, 32), (16, 16)).tiles()}
    grid = make_grid(NORTH_UP, (100, 70), (32, 32), (16, 16), extent=(1135.0, 1455.0, 1465.0, 1875.0))
    windows = {tile.window for tile in grid.tiles()}
    assert windows <= whole
    # extent pixels x 13.5..46.5 → 13..47, y 12.5..54.5 → 12..55; cells are x/y 8+16i .. 24+16i
    assert (grid.cols, grid.rows) == (3, 3) and grid.tile(0, 0).window == (0, 0, 32, 32)
    assert grid.tile(2, 2).window == (32, 32, 32, 32)


def test_extent_inside_the_margin_past_the_last_cell_selects_the_last_tile():
    """Past the last tile's cell (x ≥ 104 here) only the last tile covers the pixels: it is selected."""
    grid = make_grid(NORTH_UP, (110, 70), (32, 32), (16, 16), extent=(2050.0, 1450.0, 2100.0, 1500.0))
    assert (grid.rows, grid.cols) == (1, 1) and grid.tile(0, 0).window == (80, 32, 32, 32)


# ---- extent snapping


def test_extent_snaps_outward_to_whole_pixels():
    # columns 1.5 … 4.0 → 1 … 4; rows (from the top) 1.5 … 7.5 → 1 … 8
    assert pixel_window(NORTH_UP, (20, 20), (1015.0, 1925.0, 1040.0, 1985.0)) == (1, 1, 3, 7)


def test_extent_on_pixel_edges_takes_exactly_those_pixels():
    assert pixel_window(NORTH_UP, (20, 20), (1010.0, 1930.0, 1040.0, 1990.0)) == (1, 1, 3, 6)


def test_extent_on_pixel_edges_at_utm_coordinates_takes_exactly_those_pixels():
    """An extent lying on pixel edges (e.g. an aligned layer's extent) must not gain a row from float rounding."""
    utm = (500000.0, 0.3, 0.0, 5800000.0, 0.0, -0.3)
    assert pixel_window(utm, (400, 400), (500003.0, 5799940.0, 500006.0, 5799967.9)) == (10, 107, 10, 93)


def test_extent_on_pixel_edges_off_a_round_origin_takes_exactly_those_pixels():
    """(123487.9 − 123456.7) / 0.3 is 103.99999999999031 in floats: column 104's edge all the same."""
    assert pixel_window((123456.7, 0.3, 0.0, 5800000.0, 0.0, -0.3), (400, 400), (123487.9, 5799910.0, 123516.7, 5799997.9)) == (104, 7, 96, 293)


def test_extent_reaching_past_the_raster_is_clipped_to_it():
    assert pixel_window(NORTH_UP, (20, 20), (900.0, 1500.0, 1035.0, 1975.0)) == (0, 2, 4, 18)


def test_no_extent_means_the_whole_raster():
    assert pixel_window(ROTATED, (37, 21)) == (0, 0, 37, 21)


@pytest.mark.parametrize("extent", [(1300.0, 1500.0, 1400.0, 1600.0), (1200.0, 1900.0, 1300.0, 2000.0)], ids=["outside", "touching"])
def test_extent_not_overlapping_the_raster_is_refused(extent):
    with pytest.raises(AidXaiError, match="does not overlap the raster"):
        pixel_window(NORTH_UP, (20, 20), extent)


def test_extent_on_a_rotated_raster_is_refused():
    """Snapping an axis-aligned extent to a rotated pixel grid has no exact answer, so the user must warp first."""
    with pytest.raises(AidXaiError, match="needs a north-up raster"):
        make_grid(ROTATED, (100, 100), (8, 8), extent=(500.0, 700.0, 600.0, 800.0))


def test_extent_on_a_south_up_raster_selects_the_rows_it_covers():
    """With a positive pixel height row 0 is the southern edge, so ymin (not ymax) gives the first row."""
    # columns 2.5 … 7.5 → 2 … 8; rows (from the south) 4.5 … 10.5 → 4 … 11
    # and the 3-px tiles touching them: columns 0 … 9, rows 3 … 12
    grid = make_grid(SOUTH_UP, (20, 30), (3, 3), extent=(1025.0, 2045.0, 1075.0, 2105.0))
    assert grid.window == (0, 3, 9, 9)
    assert rectangle(SOUTH_UP, *grid.window) == [(1000.0, 2030.0), (1090.0, 2030.0), (1090.0, 2120.0), (1000.0, 2120.0)]
    assert grid.footprint(grid.tile(0, 0)) == [(1000.0, 2030.0), (1030.0, 2030.0), (1030.0, 2060.0), (1000.0, 2060.0)]


# ---- rotated and south-up geotransforms


@pytest.mark.parametrize("geotransform", [ROTATED, SOUTH_UP], ids=["rotated", "south-up"])
def test_footprints_and_cells_are_affine_images_of_pixel_corners(geotransform):
    grid = make_grid(geotransform, (40, 30), (6, 6), (4, 4))
    tolerance = coordinate_tolerance(geotransform, (40, 30))
    for tile in grid.tiles():
        assert_points_close(grid.footprint(tile), rectangle(geotransform, *tile.window), tolerance)
    cells = grid.cell_geotransform()
    for row, col in [(0, 0), (2, 5), (grid.rows - 1, grid.cols - 1)]:
        block = (1 + 4 * col, 1 + 4 * row, 4, 4)  # offset ⌊(6 − 4) / 2⌋ = 1 inside the tile
        assert_points_close(rectangle(cells, col, row, 1, 1), rectangle(geotransform, *block), tolerance)


# ---- tile size in map units and metres


def test_tile_size_in_pixels_is_passed_through():
    assert tile_size_in_pixels(224, "pixels", NORTH_UP) == (224, 224)


def test_tile_size_in_map_units_divides_by_each_pixel_side():
    assert tile_size_in_pixels(100, "map units", (0.0, 2.0, 0.0, 0.0, 0.0, -4.0)) == (50, 25)


def test_tile_size_in_metres_divides_by_the_ground_metres_of_a_map_unit_on_each_axis():
    assert tile_size_in_pixels(64, "metres", (0.0, 0.5, 0.0, 0.0, 0.0, -0.5), ground_metres=(2.0, 0.5)) == (64, 256)


def test_tile_size_in_metres_on_epsg_4326_is_wider_in_pixels_away_from_the_equator():
    """At 52° N a degree of longitude is ~68.7 km, of latitude ~111.3 km: 100 m ≈ 146 × 90 pixels of 1e-5°."""
    degrees = (5.0, 1e-5, 0.0, 52.5, 0.0, -1e-5)
    width, height = tile_size_in_pixels(100, "metres", degrees, metres_per_map_unit("EPSG:4326", (5.0, 52.0)))
    assert (width, height) == (146, 90)
    # whole pixels: each side is rounded by up to half a pixel, so the ratio by 0.5/146 + 0.5/90
    assert width / height == pytest.approx(1 / math.cos(math.radians(52)), rel=0.5 / width + 0.5 / height)
    at_equator = tile_size_in_pixels(100, "metres", degrees, metres_per_map_unit("EPSG:4326", (5.0, 0.0)))
    assert at_equator == (90, 90)


@pytest.mark.parametrize(
    "value, unit, geotransform, ground_metres",
    [(0.4, "map units", NORTH_UP, None), (5, "metres", NORTH_UP, (1.0, 1.0)), (0.5, "metres", (5.0, 1e-5, 0.0, 52.5, 0.0, -1e-5), (68_677.0, 111_263.0))],
)
def test_tile_smaller_than_one_pixel_in_map_units_or_metres_is_refused(value, unit, geotransform, ground_metres):
    with pytest.raises(AidXaiError, match="smaller than one source pixel"):
        tile_size_in_pixels(value, unit, geotransform, ground_metres)


def test_unknown_tile_size_unit_is_refused():
    with pytest.raises(AidXaiError, match="Unknown tile size unit 'feet'"):
        tile_size_in_pixels(10, "feet", NORTH_UP)


# ---- properties over random rasters, geotransforms, tiles, strides and extents


@st.composite
def geotransforms(draw):
    """North-up (negative pixel height), south-up (positive) or rotated, well conditioned."""
    kind = draw(st.sampled_from(["north-up", "south-up", "rotated"]))
    origin = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
    size = st.floats(0.01, 100, allow_nan=False, allow_infinity=False)
    size_x, size_y = draw(size), draw(size)
    if kind != "rotated":
        return kind, (draw(origin), size_x, 0.0, draw(origin), 0.0, size_y if kind == "south-up" else -size_y)
    # rotation/shear terms up to half a pixel side keep the transform invertible
    shear = st.floats(0.01, 0.5).flatmap(lambda v: st.sampled_from([v, -v]))
    pixel_height = draw(st.sampled_from([size_y, -size_y]))
    return kind, (draw(origin), size_x, draw(shear) * size_y, draw(origin), draw(shear) * size_x, pixel_height)


def pixel_span(draw, size):
    """A random pixel span [start, stop) of 0..size and a map-side pair of pixel coordinates that
    snaps outward to it: inside its first/last pixel (never within rounding of an edge), or past
    the raster where the span touches the raster's edge."""
    start = draw(st.one_of(st.just(0), st.integers(0, size - 1)))
    stop = draw(st.one_of(st.just(size), st.integers(start + 1, size)))
    low, high = sorted((draw(st.floats(0.01, 0.99)), draw(st.floats(0.01, 0.99))))
    first, last = start + low, stop - 1 + high
    if start == 0 and draw(st.booleans()):
        first -= draw(st.floats(0, 50))
    if stop == size and draw(st.booleans()):
        last += draw(st.floats(0, 50))
    return (start, stop), (first, last)


@st.composite
def grid_cases(draw):
    """(geotransform, raster size, tile, stride, extent, expected window); at most
    MAX_TILES_A_SIDE tiles a side so that every tile of every example is checked quickly."""
    kind, g = draw(geotransforms())
    width, height = draw(st.integers(1, 400)), draw(st.integers(1, 400))
    extent, window = None, (0, 0, width, height)
    if kind != "rotated" and draw(st.booleans()):
        (x0, x1), (u0, u1) = pixel_span(draw, width)
        (y0, y1), (v0, v1) = pixel_span(draw, height)
        xs = sorted((g[0] + u0 * g[1], g[0] + u1 * g[1]))
        ys = sorted((g[3] + v0 * g[5], g[3] + v1 * g[5]))
        extent, window = (xs[0], ys[0], xs[1], ys[1]), (x0, y0, x1 - x0, y1 - y0)
    tile, stride = [], []
    for window_side in window[2:]:
        side = draw(st.integers(max(1, math.ceil(window_side / MAX_TILES_A_SIDE)), window_side))
        tile.append(side)
        stride.append(draw(st.integers(max(1, math.ceil((window_side - side) / (MAX_TILES_A_SIDE - 1))), side)))
    return g, (width, height), tuple(tile), tuple(stride), extent, window


PROPERTY_SETTINGS = settings(max_examples=200, deadline=None, derandomize=True)


@PROPERTY_SETTINGS
@given(grid_cases())
def test_tiles_lie_on_the_raster_grid_and_cover_the_extent(case):
    """Tiles step by the stride from the raster's corner: without an extent the last row/column
    reaches the raster's end by less than one stride; with one, exactly the tiles whose output cell
    meets the extent (or the nearest tile of the grid, at the raster's margins) are selected."""
    g, size, tile_size, stride, extent, window = case
    grid = make_grid(g, size, tile_size, stride, extent)
    tiles = list(grid.tiles())
    assert len(tiles) == len(grid) == grid.rows * grid.cols
    last_start = [math.ceil((size[axis] - tile_size[axis]) / stride[axis]) * stride[axis] for axis in (0, 1)]
    for tile in tiles:
        assert all(type(v) is int for v in tile.window)
        assert tile.index == tile.row * grid.cols + tile.col
        assert tile.window[2:] == tile_size
        for axis in (0, 1):
            assert tile.window[axis] % stride[axis] == 0 and 0 <= tile.window[axis] <= last_start[axis]
    assert all(type(v) is int for v in grid.window)
    offset = grid.cell_offset
    for axis in (0, 1):
        starts = sorted({tile.window[axis] for tile in tiles})
        assert starts == list(range(starts[0], starts[-1] + 1, stride[axis]))
        if extent is None:
            assert starts[0] == 0 and 0 <= starts[-1] + tile_size[axis] - size[axis] < stride[axis]
            continue
        lo, hi = window[axis], window[axis] + window[axis + 2]
        meets = [s for s in range(0, last_start[axis] + 1, stride[axis]) if s + offset[axis] < hi and s + offset[axis] + stride[axis] > lo]
        if not meets:  # the extent lies in the margin before the first or after the last cell
            meets = [0] if hi <= offset[axis] else [last_start[axis]]
        assert starts == meets


@PROPERTY_SETTINGS
@given(grid_cases())
def test_footprints_are_the_affine_images_of_the_tile_windows(case):
    g, size, tile_size, stride, extent, _ = case
    grid = make_grid(g, size, tile_size, stride, extent)
    tolerance = coordinate_tolerance(g, size)
    for tile in grid.tiles():
        assert_points_close(grid.footprint(tile), rectangle(g, *tile.window), tolerance)


@PROPERTY_SETTINGS
@given(grid_cases())
def test_output_cells_are_the_stride_blocks_centred_in_their_tiles(case):
    """Cell (r, c) of cell_geotransform() lies on the source pixel edges of the stride-sized block
    centred in tile (r, c); neighbouring blocks abut, so cells share edges and never overlap."""
    g, size, tile_size, stride, extent, _ = case
    grid = make_grid(g, size, tile_size, stride, extent)
    tolerance = coordinate_tolerance(g, size)
    offset = grid.cell_offset
    for axis in (0, 1):
        margin_before, margin_after = offset[axis], tile_size[axis] - stride[axis] - offset[axis]
        assert 0 <= margin_before and 0 <= margin_after - margin_before <= 1
    cells = grid.cell_geotransform()
    for tile in grid.tiles():
        x, y = tile.window[0] + offset[0], tile.window[1] + offset[1]
        assert_points_close(rectangle(cells, tile.col, tile.row, 1, 1), rectangle(g, x, y, *stride), tolerance)
        if tile.col + 1 < grid.cols:
            assert grid.tile(tile.row, tile.col + 1).window[0] + offset[0] == x + stride[0]
        if tile.row + 1 < grid.rows:
            assert grid.tile(tile.row + 1, tile.col).window[1] + offset[1] == y + stride[1]


@PROPERTY_SETTINGS
@given(grid_cases())
def test_pixel_grid_output_covers_exactly_the_union_of_the_tiles(case):
    g, size, tile_size, stride, extent, _ = case
    grid = make_grid(g, size, tile_size, stride, extent)
    windows = [tile.window for tile in grid.tiles()]
    x0, y0 = min(w[0] for w in windows), min(w[1] for w in windows)
    x1, y1 = max(w[0] + w[2] for w in windows), max(w[1] + w[3] for w in windows)
    assert grid.pixel_extent_size == (x1 - x0, y1 - y0)
    output = grid.window_geotransform(grid.covering_window(list(grid.tiles())))  # as explain writes its SHAP raster
    assert (output[1], output[2], output[4], output[5]) == (g[1], g[2], g[4], g[5])
    assert_points_close(rectangle(output, 0, 0, *grid.pixel_extent_size), rectangle(g, x0, y0, x1 - x0, y1 - y0), coordinate_tolerance(g, size))


# ---- ground metres per map unit: one conversion for every CRS

WGS84_A, WGS84_F = 6378137.0, 1 / 298.257223563
WGS84_E2 = WGS84_F * (2 - WGS84_F)


def _radii(latitude_degrees):
    """WGS84's meridian (M) and prime-vertical (N) radii of curvature at a latitude (textbook formulas)."""
    s = math.sin(math.radians(latitude_degrees)) ** 2
    return WGS84_A * (1 - WGS84_E2) / (1 - WGS84_E2 * s) ** 1.5, WGS84_A / math.sqrt(1 - WGS84_E2 * s)


# The conversion differentiates PROJ's inverse projection over ±100 m steps: its truncation error is
# (100 m / 6 371 km)² ≈ 2.5e-10 and PROJ's inverse is accurate to far better than 1e-9 of that step,
# so 1e-8 relative is a safe bound well below anything a tile size could notice.
REL = 1e-8


def test_a_degree_on_wgs84_at_the_equator_is_a_pi_over_180_east_and_a_1_minus_e2_pi_over_180_north():
    east, north = metres_per_map_unit("EPSG:4326", (15.0, 0.0))
    assert east == pytest.approx(WGS84_A * math.pi / 180, rel=REL)  # 111 319.49 m
    assert north == pytest.approx(WGS84_A * (1 - WGS84_E2) * math.pi / 180, rel=REL)  # 110 574.27 m


def test_a_web_mercator_metre_at_52_degrees_north_is_cos_52_ground_metres():
    """x = a·λ and y = a·ln tan(π/4 + φ/2) on the geodetic latitude: a map metre east is N·cos φ / a
    ground metres, north M·cos φ / a (≈ 0.616 at 52° N: a 100-m "metre" tile is 61.6 m on the ground)."""
    meridian, normal = _radii(52.0)
    y = WGS84_A * math.log(math.tan(math.pi / 4 + math.radians(52.0) / 2))
    east, north = metres_per_map_unit("EPSG:3857", (1_300_000.0, y))
    assert east == pytest.approx(normal * math.cos(math.radians(52.0)) / WGS84_A, rel=REL)
    assert north == pytest.approx(meridian * math.cos(math.radians(52.0)) / WGS84_A, rel=REL)


def test_a_utm_metre_on_the_central_meridian_is_one_over_its_scale_factor_in_ground_metres():
    """UTM is conformal with scale k0 = 0.9996 on its central meridian (easting 500 000 m)."""
    east, north = metres_per_map_unit("EPSG:32633", (500_000.0, 5_762_000.0))
    assert east == pytest.approx(1 / 0.9996, rel=REL) and north == pytest.approx(1 / 0.9996, rel=REL)


def test_a_crs_in_us_survey_feet_gives_ground_metres_per_foot():
    """NAD83 / New York Long Island (ftUS): 1200/3937 m per foot, times the zone's scale, which State
    Plane zones keep within 1/10 000 of one."""
    east, north = metres_per_map_unit("EPSG:2263", (1_000_000.0, 200_000.0))
    assert east == pytest.approx(1200 / 3937, rel=1e-4) and north == pytest.approx(1200 / 3937, rel=1e-4)


def test_metres_on_a_raster_without_a_crs_are_a_clear_error():
    with pytest.raises(AidXaiError, match="no coordinate reference system.*assign the layer its CRS"):
        metres_per_map_unit("", (0.0, 0.0))
