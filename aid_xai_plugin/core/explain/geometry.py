"""Where a revealed box reaches in each layer: per-axis geometry of windowed layers and the changed
and needed cells of planned layers, for arrays of boxes at once.

Boxes are shap's (row0, row1, col0, col1, band0, band1) (`partition.Box`); a region is the pair of
B×2 arrays (starts, stops) of (row, col) cells.
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Geometry:
    """One axis of a windowed layer: output cell o reads input cells [o·stride − padding, … + reach]."""

    kernel: int
    stride: int
    padding: int
    dilation: int
    size_out: int

    @property
    def reach(self):
        return (self.kernel - 1) * self.dilation

    def changed(self, start, stop):
        """Output cells [first, stop) whose inputs meet input cells [start, stop) (numpy arrays)."""
        first = np.maximum(0, -((self.reach - self.padding - start) // self.stride))  # ceil((start + p − reach) / s)
        last = np.minimum(self.size_out, (stop - 1 + self.padding) // self.stride + 1)
        empty = (stop <= start) | (last <= first)
        return np.where(empty, 0, first), np.where(empty, 0, last)

    def needed(self, start, stop):
        """Input cells [a, b) that output cells [start, stop) read; may reach past the map (padding)."""
        return start * self.stride - self.padding, (stop - 1) * self.stride - self.padding + self.reach + 1


@dataclasses.dataclass(frozen=True)
class ChainGeometry:
    """One axis of an unpadded chain of windowed layers: final cell c sees input pixels
    [c·jump, c·jump + field)."""

    jump: int
    field: int
    cells: int  # final cells along this axis for the analysed input size

    @classmethod
    def of(cls, geometries, size):
        """The chain of `geometries` (each unpadded) on `size` input pixels."""
        jump, field = 1, 1
        for geometry in geometries:
            field += geometry.reach * jump
            jump *= geometry.stride
            size = (size - geometry.reach - 1) // geometry.stride + 1
        return cls(jump, field, size)

    def affected_cells(self, start, stop):
        """The cells [first, last + 1) whose receptive field meets input pixels [start, stop)."""
        first = max(0, (start - self.field) // self.jump + 1)
        last = min(self.cells - 1, (stop - 1) // self.jump)
        return first, last + 1

    def input_span(self, first, stop):
        """Input pixels [a, b) that determine cells [first, stop) exactly."""
        return first * self.jump, (stop - 1) * self.jump + self.field


def layer_users(layers):
    """For each planned layer, the positions of the planned layers that read it."""
    users = [[] for _ in layers]
    for position, layer in enumerate(layers):
        for source in layer.inputs:
            users[source].append(position)
    return users


def exact_regions(layers, boxes):
    """Per layer, the changed cells [start, stop) per axis for each of the boxes (B×6 array):
    arrays (starts, stops) each B×2."""
    regions = []
    for layer in layers:
        if layer.kind == "input":
            starts, stops = boxes[:, [0, 2]].copy(), boxes[:, [1, 3]].copy()
        elif layer.kind == "window":
            source_starts, source_stops = regions[layer.inputs[0]]
            row = layer.rows.changed(source_starts[:, 0], source_stops[:, 0])
            col = layer.cols.changed(source_starts[:, 1], source_stops[:, 1])
            starts, stops = np.stack([row[0], col[0]], 1), np.stack([row[1], col[1]], 1)
        else:
            starts = np.full((len(boxes), 2), np.iinfo(np.int64).max)
            stops = np.zeros((len(boxes), 2), dtype=np.int64)
            for source in layer.inputs:
                starts, stops = _hull(starts, stops, *regions[source])
            starts = np.where(stops > 0, starts, 0)
        regions.append((starts, stops))
    return regions


def needed_by_users(layers, users, position, regions):
    """The cells of layer `position` that its users read to compute their changed cells (per box),
    clipped to the map: (starts, stops) B×2, the hull over the users."""
    size = np.array(layers[position].size)
    starts, stops = regions[position][0].copy(), regions[position][1].copy()
    for user in users[position]:
        user_starts, user_stops = regions[user]
        if layers[user].kind == "window":
            row = layers[user].rows.needed(user_starts[:, 0], user_stops[:, 0])
            col = layers[user].cols.needed(user_starts[:, 1], user_stops[:, 1])
            user_starts, user_stops = np.stack([row[0], col[0]], 1), np.stack([row[1], col[1]], 1)
        starts, stops = _hull(starts, stops, user_starts, user_stops)
    return np.clip(starts, 0, size), np.clip(stops, 0, size)


def _hull(starts, stops, other_starts, other_stops):
    """The per-box hull of two regions, ignoring the other's empty ones."""
    nonempty = (other_stops > other_starts).all(1, keepdims=True)
    return np.where(nonempty, np.minimum(starts, other_starts), starts), np.where(nonempty, np.maximum(stops, other_stops), stops)


def uniform_windows(starts, stops, size):
    """One window size per axis for a group of boxes (the largest interval, at least 1, at most the
    map) and each box's window start, moved inside the map: every interval stays inside its window."""
    lengths = np.clip((stops - starts).max(0), 1, size)
    offsets = np.clip(np.minimum(starts, np.asarray(size) - lengths), 0, None)
    return tuple(int(length) for length in lengths), offsets
