"""Per-tile maps combined into one raster, block by block, with flat memory.

Tiles may overlap (stride < tile size). In `blend` mode every source pixel gets the weighted mean of
the values of the tiles covering it, each tile weighted by a smooth window that is largest at its
centre and falls towards (never to) zero at its edges, so a whole-scene map has no seams at tile
edges; a pixel covered by one tile keeps that tile's value exactly. In `last` mode the tile added
last wins, as a plain overwrite would. Pixels a tile marks invalid (nodata, alpha, outside the
raster) take no value from it, so they stay nodata; a tile window may reach past the output's edge.

Memory does not grow with the number of tiles or the size of the raster: the mosaic knows up front
which tiles will touch each output block, keeps accumulators only for blocks still waiting for a
tile, and writes each block once, whole, as soon as its last tile has arrived (tiles may arrive in
any order). Blocks no tile touches are never written, so a sparse GeoTIFF stays small.
"""

import numpy as np

from .writers import BLOCK_SIZE

OVERLAP_MODES = ("blend", "last")


def tile_weights(height, width):
    """The blend window: a separable Hann (sin²) taper, positive everywhere. With a stride of half the
    tile size the shifted windows sum to a constant, so the blend is an evenly weighted average.

    Written out, not scipy.signal.windows: the same taper there is hann(2·size + 1)[1::2] (hann(size
    + 2)[1:-1] is another window), which scipy computes as 0.5 − 0.5·cos and so differs from sin² by
    up to 1e-15 for every size from 2 to 1999 (scipy 1.10): not today's values, and no clearer."""

    def taper(size):
        return np.sin(np.pi * (np.arange(size) + 0.5) / size) ** 2

    return np.outer(taper(height), taper(width))


class TileMosaic:
    """Receives per-tile maps (`add`) and writes finished blocks to `sink` (`write(bands, x, y)`).

    `size`: (width, height) of the output; `tile_windows`: every (x, y, w, h) that will be added, in
    output pixels; each must be added exactly once (with None when a tile yields no values)."""

    def __init__(self, sink, size, tile_windows, band_count, nodata, mode="blend", block_size=BLOCK_SIZE, flush=None):
        if mode not in OVERLAP_MODES:
            raise ValueError(f"unknown overlap mode {mode!r}")
        self.sink = sink
        self.width, self.height = size
        self.band_count = band_count
        self.nodata = nodata
        self.mode = mode
        self.block_size = block_size
        self.flush = flush  # called after blocks were written, so a writer's cache doesn't grow
        self.waiting = {}  # block → number of tiles still to come
        for window in tile_windows:
            for block in self._blocks(window):
                self.waiting[block] = self.waiting.get(block, 0) + 1
        self.open = {}  # block → (weighted sums K×h×w, summed weights h×w)
        self._weights = {}

    def _blocks(self, window):
        x, y, w, h = window
        size = self.block_size
        bottom, right = min(y + h, self.height), min(x + w, self.width)
        return [(row, col) for row in range(y // size, (bottom - 1) // size + 1) for col in range(x // size, (right - 1) // size + 1)]

    def _block_window(self, block):
        row, col = block
        x, y = col * self.block_size, row * self.block_size
        return x, y, min(self.block_size, self.width - x), min(self.block_size, self.height - y)

    def add(self, window, values, valid=None):
        """`values`: h×w×K map for the tile at `window` (x, y, w, h), or None for a skipped tile;
        `valid`: h×w bool, False where the tile has no value (default: valid everywhere)."""
        x, y, w, h = window
        if values is not None:
            weights = self._weights.get((h, w))
            if weights is None:
                weights = self._weights[(h, w)] = tile_weights(h, w) if self.mode == "blend" else np.ones((h, w))
            if valid is not None:
                weights = weights * valid
        finished = 0
        for block in self._blocks(window):
            if values is not None:
                bx, by, bw, bh = self._block_window(block)
                if block not in self.open:
                    self.open[block] = (np.zeros((self.band_count, bh, bw)), np.zeros((bh, bw)))
                sums, total = self.open[block]
                top, bottom, left, right = max(y, by), min(y + h, by + bh), max(x, bx), min(x + w, bx + bw)
                part = np.moveaxis(values[top - y : bottom - y, left - x : right - x], -1, 0).astype(np.float64)
                target = (slice(None), slice(top - by, bottom - by), slice(left - bx, right - bx))
                weight = weights[top - y : bottom - y, left - x : right - x]
                if self.mode == "blend":
                    sums[target] += weight * part
                    total[target[1:]] += weight
                else:
                    keep = weight > 0
                    sums[target][:, keep] = part[:, keep]
                    total[target[1:]][keep] = 1.0
            self.waiting[block] -= 1
            if self.waiting[block] == 0:
                self._finish(block)
                finished += 1
        if finished and self.flush is not None:
            self.flush()

    def _finish(self, block):
        del self.waiting[block]
        opened = self.open.pop(block, None)
        if opened is None:
            return  # every tile over this block was skipped: it stays unwritten (reads as nodata)
        sums, total = opened
        covered = total > 0
        values = np.full(sums.shape, self.nodata, dtype=np.float32)
        values[:, covered] = (sums[:, covered] / total[covered]).astype(np.float32)
        bx, by, _, _ = self._block_window(block)
        self.sink.write(values, bx, by)

    def close(self):
        """Check that every announced tile arrived (a pipeline bug otherwise: blocks would be missing)."""
        if self.waiting:
            raise RuntimeError(f"{len(self.waiting)} output block(s) still wait for tiles")
