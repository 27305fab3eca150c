"""Finished tiles of an explain run, kept beside its outputs so a cancelled, crashed or killed run
can resume: re-running the same command computes only the missing tiles.

The checkpoint is a hidden folder next to the first output, holding one file per finished tile
(written under a temporary name and renamed, so a kill never leaves a half tile) and the run's key:
a digest of the input raster (path, size, modification time), the model's SHA-256, the plugin's and
torch's versions and every setting that changes values. A run with another key discards the folder
instead of reusing stale tiles; a completed run removes it.
"""

import hashlib
import json
import os
import shutil

import numpy as np

from .steps import ExplainedTile

_ARRAYS = ("image", "values", "class_indices", "output_values", "base_values", "probabilities", "valid")


def run_key(raster_path, model_sha256, *settings):
    """A digest of what decides the run's values and how tiles are stored: the plugin's version (its
    engines and tile format) and torch's (its kernels) too; `settings` are JSON-able or have `tolist()`."""
    import torch

    from .. import __version__

    path = os.path.abspath(raster_path)
    identity = [path]
    if os.path.exists(path):
        status = os.stat(path)
        identity += [status.st_size, status.st_mtime_ns]
    text = json.dumps([identity, model_sha256, __version__, torch.__version__, sorted(_ARRAYS), *settings], sort_keys=True, default=lambda value: value.tolist() if hasattr(value, "tolist") else repr(value))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class TileCheckpoint:
    def __init__(self, output_path, key, progress=None):
        folder, name = os.path.split(os.path.abspath(output_path))
        self.folder = os.path.join(folder, f".{name}.resume")
        key_file = os.path.join(self.folder, "KEY")
        if os.path.isdir(self.folder):
            previous = _read(key_file)
            if previous != key:
                stale = len(self._tile_files())
                shutil.rmtree(self.folder)
                if progress and stale:
                    progress.log(f"Settings or inputs changed since the interrupted run: its {stale} finished tile(s) are not reused.")
        os.makedirs(self.folder, exist_ok=True)
        with open(key_file, "w", encoding="ascii") as stream:
            stream.write(key)

    def _tile_files(self):
        return [name for name in os.listdir(self.folder) if name.endswith(".npz")] if os.path.isdir(self.folder) else []

    def _path(self, tile_index):
        return os.path.join(self.folder, f"{tile_index:012d}.npz")

    def has(self, tile_index):
        return os.path.exists(self._path(tile_index))

    def load(self, tile_index):
        """(ExplainedTile or None, valid fraction) of a tile a run finished (None: too few valid pixels)."""
        with np.load(self._path(tile_index)) as stored:
            fraction = float(stored["fraction"])
            if "values" not in stored:
                return None, fraction
            arrays = {name: stored[name] for name in _ARRAYS}
            reason = str(stored["fallback_reason"]) or None
            return ExplainedTile(**arrays, margin=float(stored["margin"]), fallback_reason=reason), fraction

    def save(self, tile_index, explained, fraction):
        temporary = os.path.join(self.folder, f".{tile_index:012d}.partial.npz")
        if explained is None:
            np.savez(temporary, fraction=fraction)
        else:
            arrays = {name: getattr(explained, name) for name in _ARRAYS}
            np.savez(temporary, fraction=fraction, margin=explained.margin, fallback_reason=explained.fallback_reason or "", **arrays)
        os.replace(temporary, self._path(tile_index))

    def remove(self):
        shutil.rmtree(self.folder, ignore_errors=True)


def _read(path):
    if not os.path.exists(path):
        return ""
    with open(path, encoding="ascii") as stream:
        return stream.read()
