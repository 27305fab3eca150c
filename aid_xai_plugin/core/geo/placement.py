"""Where a tile's per-pixel values land on the source raster's pixel grid.

A model sees a tile resized to its input size; its map (one value per model-input pixel) goes back to
the tile's source pixels by area overlap: each model-input pixel's value is divided among the source
pixels it covers in proportion to the shared area. That is exact when tile size = model input size,
and it preserves sums (per tile and class, Σ over source pixels = Σ over model-input pixels).
"""

import numpy as np


def area_weights(source_pixels, model_pixels):
    """source_pixels × model_pixels matrix: share of each model pixel falling in each source pixel."""
    edges = np.linspace(0.0, model_pixels, source_pixels + 1)
    lower, upper = edges[:-1, None], edges[1:, None]
    cells = np.arange(model_pixels)[None, :]
    return np.clip(np.minimum(upper, cells + 1) - np.maximum(lower, cells), 0.0, None)


def to_source_pixels(map_model, tile_h, tile_w):
    """Spread a model-input-pixel map (S×S×K) over tile_h×tile_w source pixels, preserving sums."""
    if map_model.shape[:2] == (tile_h, tile_w):
        return np.array(map_model)  # same grid: the area weights are the identity
    rows = area_weights(tile_h, map_model.shape[0])
    cols = area_weights(tile_w, map_model.shape[1])
    spread_rows = np.tensordot(rows, map_model, axes=(1, 0))  # tile_h × S × K
    return np.tensordot(spread_rows, cols, axes=(1, 1)).transpose(0, 2, 1)  # two products, not one S⁴ einsum


def window_in(window, origin):
    """`window` (x, y, w, h in source pixels) relative to the pixel `origin` (x, y) of an output
    that starts there."""
    x, y, w, h = window
    return (x - origin[0], y - origin[1], w, h)
