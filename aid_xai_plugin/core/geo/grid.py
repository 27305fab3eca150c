"""The tile grid: which source-pixel windows are classified/explained, and where results go.

Tiles are tile_w×tile_h source pixels, stepped by stride_x/stride_y from the raster's top-left pixel:
one grid per raster, tile size and stride. An extent only selects tiles of that grid (those whose
output cell it touches), so classify and explain cut the same tiles for any extent, and an extent
smaller than a tile selects the tile under it. The last row/column may reach past the raster;
pixels outside it count as invalid.

Output cells: one cell per tile on a grid whose cell size is the stride (in source pixels). Cell
(row, col) covers the stride-sized block centred in tile (row, col) (offset ⌊(tile−stride)/2⌋
pixels), so cells never overlap, every cell edge lies on a source pixel edge, and with the default
stride = tile size each cell is exactly its tile's footprint.
"""

import dataclasses
import math

from ..common.errors import AidXaiError


@dataclasses.dataclass(frozen=True)
class Tile:
    index: int
    row: int
    col: int
    window: tuple  # (x, y, width, height) in source pixels


@dataclasses.dataclass(frozen=True)
class TileGrid:
    window: tuple  # processing window (x, y, width, height) in source pixels
    tile_w: int
    tile_h: int
    stride_x: int
    stride_y: int
    rows: int
    cols: int
    geotransform: tuple  # of the source raster

    def tile(self, row, col):
        x = self.window[0] + col * self.stride_x
        y = self.window[1] + row * self.stride_y
        return Tile(row * self.cols + col, row, col, (x, y, self.tile_w, self.tile_h))

    def tiles(self):
        for row in range(self.rows):
            for col in range(self.cols):
                yield self.tile(row, col)

    def __len__(self):
        return self.rows * self.cols

    def pixel_to_map(self, px, py):
        g = self.geotransform
        return g[0] + px * g[1] + py * g[2], g[3] + px * g[4] + py * g[5]

    def footprint(self, tile):
        """The tile's corners in map coordinates (clockwise from top-left)."""
        x, y, w, h = tile.window
        return [self.pixel_to_map(x, y), self.pixel_to_map(x + w, y), self.pixel_to_map(x + w, y + h), self.pixel_to_map(x, y + h)]

    @property
    def cell_offset(self):
        return (self.tile_w - self.stride_x) // 2, (self.tile_h - self.stride_y) // 2

    def cell_geotransform(self):
        """Geotransform of the one-cell-per-tile output grid (cell size = stride)."""
        g = self.geotransform
        off_x, off_y = self.cell_offset
        x0, y0 = self.pixel_to_map(self.window[0] + off_x, self.window[1] + off_y)
        return (x0, g[1] * self.stride_x, g[2] * self.stride_y, y0, g[4] * self.stride_x, g[5] * self.stride_y)

    def covering_window(self, tiles):
        """(x, y, width, height) in source pixels of the smallest window holding `tiles`' pixels inside
        the raster (the last row/column of tiles may reach past it: no output pixel lies there)."""
        x0, y0 = min(t.window[0] for t in tiles), min(t.window[1] for t in tiles)
        x1 = min(max(t.window[0] for t in tiles) + self.tile_w, self.window[0] + self.window[2])
        y1 = min(max(t.window[1] for t in tiles) + self.tile_h, self.window[1] + self.window[3])
        return (x0, y0, x1 - x0, y1 - y0)

    def window_geotransform(self, window):
        """Geotransform of an output on the source's own pixel grid whose pixel (0, 0) is `window`'s top-left."""
        g = self.geotransform
        x0, y0 = self.pixel_to_map(window[0], window[1])
        return (x0, g[1], g[2], y0, g[4], g[5])

    @property
    def pixel_extent_size(self):
        """(width, height) in source pixels of the area all tiles cover."""
        return (self.cols - 1) * self.stride_x + self.tile_w, (self.rows - 1) * self.stride_y + self.tile_h


def pixel_window(geotransform, raster_size, extent=None):
    """The raster's pixel window inside `extent` (xmin, ymin, xmax, ymax, in the raster's CRS),
    snapped outward to whole pixels; the whole raster when `extent` is None.

    Not rasterio.windows.from_bounds: snapped outward with floor/ceil, its windows gained a row or
    column for 1 201 of 9 986 random north-up extents on pixel edges (rasterio 1.3.5; the coordinates'
    float rounding, which the slack below absorbs), it leaves the clipping and the refusals to do
    anyway, and rasterio is not among the plugin's packages (QGIS on Windows and macOS has none)."""
    width, height = raster_size
    if extent is None:
        return (0, 0, width, height)
    g = geotransform
    if g[2] != 0 or g[4] != 0:
        raise AidXaiError("A processing extent needs a north-up raster (no rotation terms); warp the raster first or leave the extent empty.")
    xmin, ymin, xmax, ymax = extent
    cols = sorted(((xmin - g[0]) / g[1], (xmax - g[0]) / g[1]))
    rows = sorted(((ymax - g[3]) / g[5], (ymin - g[3]) / g[5]))
    # An edge given in map units carries the rounding of its coordinate (a few ulps of |x|, e.g. 1e-9 m
    # at UTM northings), which is that many ulps over the pixel size in pixels: snap within that.
    slack_x = 1e-9 + 16 * math.ulp(max(abs(xmin), abs(xmax), abs(g[0]))) / abs(g[1])
    slack_y = 1e-9 + 16 * math.ulp(max(abs(ymin), abs(ymax), abs(g[3]))) / abs(g[5])
    x0, x1 = max(0, math.floor(cols[0] + slack_x)), min(width, math.ceil(cols[1] - slack_x))
    y0, y1 = max(0, math.floor(rows[0] + slack_y)), min(height, math.ceil(rows[1] - slack_y))
    if x1 <= x0 or y1 <= y0:
        raise AidXaiError("The processing extent does not overlap the raster; choose an extent inside the layer (or leave it empty for the whole raster).")
    return (x0, y0, x1 - x0, y1 - y0)


def make_grid(geotransform, raster_size, tile_size, stride=None, extent=None):
    """`tile_size`/`stride`: (w, h) in source pixels; stride defaults to the tile size (no overlap).
    `extent` (xmin, ymin, xmax, ymax) selects the tiles whose output cell it touches."""
    tile_w, tile_h = (int(round(v)) for v in tile_size)
    stride_x, stride_y = (int(round(v)) for v in (stride or (tile_w, tile_h)))
    if tile_w < 1 or tile_h < 1:
        raise AidXaiError("The tile size must be at least one source pixel.")
    if not (1 <= stride_x <= tile_w and 1 <= stride_y <= tile_h):
        raise AidXaiError(f"The stride ({stride_x}×{stride_y} px) must be between 1 pixel and the tile size ({tile_w}×{tile_h} px); tiles would leave gaps.")
    width, height = raster_size
    if width < tile_w or height < tile_h:
        raise AidXaiError(f"The raster is {width}×{height} px, smaller than one tile ({tile_w}×{tile_h} px); use a smaller tile size.")
    x0, y0, w, h = pixel_window(geotransform, raster_size, extent)
    off_x, off_y = (tile_w - stride_x) // 2, (tile_h - stride_y) // 2
    first_col, last_col = _tiles_touching(x0, x0 + w, stride_x, off_x, math.ceil((width - tile_w) / stride_x))
    first_row, last_row = _tiles_touching(y0, y0 + h, stride_y, off_y, math.ceil((height - tile_h) / stride_y))
    left, top = first_col * stride_x, first_row * stride_y
    window = (left, top, min(width, last_col * stride_x + tile_w) - left, min(height, last_row * stride_y + tile_h) - top)
    return TileGrid(window, tile_w, tile_h, stride_x, stride_y, last_row - first_row + 1, last_col - first_col + 1, tuple(geotransform))


def _tiles_touching(start, stop, stride, cell_offset, last):
    """First and last index (within 0..last) of the raster's tiles whose output cell, pixels
    [i·stride + cell_offset, (i+1)·stride + cell_offset), meets the pixel span [start, stop)."""
    first = (start - cell_offset) // stride
    final = -((cell_offset - stop) // stride) - 1  # ceil((stop − offset) / stride) − 1
    return min(max(first, 0), last), min(max(final, 0), last)


def tile_size_in_pixels(value, unit, geotransform, ground_metres=None):
    """Convert a tile size given in 'pixels', 'map units' or 'metres' into (w, h) source pixels.

    Metres are ground metres: `ground_metres` is (metres per map unit along x, along y) where the
    size is measured (`ground.metres_per_map_unit`); tiles may then differ in width and height in pixels.
    """
    px_w, px_h = abs(geotransform[1]), abs(geotransform[5])
    if unit == "pixels":
        return (value, value)
    if unit == "map units":
        w, h = value / px_w, value / px_h
    elif unit == "metres":
        metres_x, metres_y = ground_metres
        w, h = value / (px_w * metres_x), value / (px_h * metres_y)
    else:
        raise AidXaiError(f"Unknown tile size unit '{unit}'; use pixels, map units or metres.")
    if min(w, h) < 1:
        raise AidXaiError(f"A tile of {value} {unit} is smaller than one source pixel; give a larger tile size.")
    return (round(w), round(h))
