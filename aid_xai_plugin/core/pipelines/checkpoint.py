"""Finished tiles of an explain run, kept beside its outputs so a cancelled, crashed or killed run
can resume: re-running the same command computes only the missing tiles.

The checkpoint is a hidden folder next to the first output, holding one file per finished tile
(written under a temporary name, flushed to disk and renamed, so a kill or a power cut never leaves a
half tile under a tile's name; a tile file that is unreadable all the same, e.g. after a full disk,
is explained again) and the run's key (`run_key`): a digest of every field of the run's spec but
those named as changing no value, each as this run resolved it (the raster's path, size and
modification time, or for a URL the size and date its server reports; the model's SHA-256), and the plugin's and torch's versions. A run with another
key discards the folder instead of reusing stale tiles; a completed run removes it.
"""

import dataclasses
import hashlib
import json
import os
import shutil
import zipfile

import numpy as np

from ..geo.remote import is_network_path, network_identity
from .steps import ExplainedTile

_ARRAYS = ("image", "values", "class_indices", "output_values", "base_values", "probabilities", "valid")
_OPTIONAL_ARRAYS = ("rival_indices", "group_maps", "group_values")  # None unless the run computes them
_UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


def run_key(spec, excluded=(), resolved=None):
    """A digest of what decides a run's values: every field of the dataclass `spec` (nested
    dataclasses field by field, named like 'outputs.overlap') except the `excluded` names (a name
    excludes the fields under it too), each name in `resolved` standing for what this run resolved it
    to (a path for the file's identity, 'auto' for the device chosen, a callable for its effect); and
    the plugin's version (its engines and tile format) and torch's (its kernels). Every field is in
    unless excluded by name, so a new setting cannot be left out of the key unnoticed: a value with no
    stable plain form (a callable, an object) raises TypeError until it is resolved or excluded."""
    import torch

    from .. import __version__

    fields = spec_fields(spec)
    resolved = dict(resolved or {})
    unknown = [name for name in resolved if name not in fields] + [name for name in excluded if not any(_under(field, (name,)) for field in fields)]
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: not fields of {type(spec).__name__}")
    values = {name: resolved.get(name, value) for name, value in fields.items() if not _under(name, excluded)}
    text = json.dumps([__version__, torch.__version__, sorted(_ARRAYS), values], sort_keys=True, default=_plain)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def spec_fields(spec, prefix=""):
    """{'name' or 'part.name': value} of a dataclass's fields, nested dataclasses field by field."""
    fields = {}
    for field in dataclasses.fields(spec):
        value = getattr(spec, field.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields.update(spec_fields(value, f"{prefix}{field.name}."))
        else:
            fields[prefix + field.name] = value
    return fields


def file_identity(path):
    """A file as a run key sees it: its absolute path, and its size and modification time if it exists
    (a rewritten file at the same path is another input). A file on the network (a URL, /vsicurl/,
    /vsis3/ …): its path as given, and the size and date the server reports (GDAL's VSIStatL)."""
    if is_network_path(path):
        return network_identity(path)
    path = os.path.abspath(path)
    if not os.path.exists(path):
        return [path]
    status = os.stat(path)
    return [path, status.st_size, status.st_mtime_ns]


def _under(name, prefixes):
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def _plain(value):
    """JSON for what json.dumps can't write itself: arrays and resolved dataclasses (a BandScaling)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"{value!r} has no stable value for a resume key: resolve it to plain values (run_key's `resolved`) or exclude it")


class TileCheckpoint:
    def __init__(self, output_path, key, progress=None):
        folder, name = os.path.split(os.path.abspath(output_path))
        self.folder = os.path.join(folder, f".{name}.resume")
        key_file = os.path.join(self.folder, "KEY")
        self.finished = set()  # tile indices whose file reads back whole
        if os.path.isdir(self.folder):
            previous = _read(key_file)
            if previous != key:
                stale = len(self._tile_files())
                shutil.rmtree(self.folder)
                if progress and stale:
                    progress.log(f"Settings or inputs changed since the interrupted run: its {stale} finished tile(s) are not reused.")
            else:
                self._keep_readable_tiles(progress)
        os.makedirs(self.folder, exist_ok=True)
        with open(key_file, "w", encoding="ascii") as stream:
            stream.write(key)

    def _tile_files(self):
        return [name for name in os.listdir(self.folder) if name.endswith(".npz") and not name.startswith(".")] if os.path.isdir(self.folder) else []

    def _keep_readable_tiles(self, progress):
        """Read every finished tile once (each array's CRC is checked): a damaged one is removed and
        explained again instead of ending the resumed run; a killed write's temporary is removed."""
        damaged = 0
        for name in os.listdir(self.folder):
            path = os.path.join(self.folder, name)
            if name.endswith(".partial.npz"):
                os.remove(path)
            elif name.endswith(".npz") and not name.startswith("."):
                try:
                    _read_tile(path)
                    self.finished.add(int(name[:-4]))
                except _UNREADABLE:
                    os.remove(path)
                    damaged += 1
        if progress and damaged:
            progress.log(f"{damaged} tile(s) of the interrupted run's checkpoint could not be read back (a crash while writing, or a full disk): they are explained again.")

    def _path(self, tile_index):
        return os.path.join(self.folder, f"{tile_index:012d}.npz")

    def has(self, tile_index):
        return tile_index in self.finished

    def load(self, tile_index):
        """(ExplainedTile or None, valid fraction) of a tile a run finished (None: too few valid pixels)."""
        return _read_tile(self._path(tile_index))

    def save(self, tile_index, explained, fraction):
        temporary = os.path.join(self.folder, f".{tile_index:012d}.partial.npz")
        with open(temporary, "wb") as stream:
            if explained is None:
                np.savez(stream, fraction=fraction)
            else:
                arrays = {name: getattr(explained, name) for name in _ARRAYS + _OPTIONAL_ARRAYS if getattr(explained, name) is not None}
                np.savez(stream, fraction=fraction, margin=explained.margin, fallback_reason=explained.fallback_reason or "", **arrays)
            stream.flush()
            os.fsync(stream.fileno())  # the data is on disk before the name says the tile is finished
        os.replace(temporary, self._path(tile_index))
        _sync_folder(self.folder)
        self.finished.add(tile_index)

    def remove(self):
        shutil.rmtree(self.folder, ignore_errors=True)


def _read_tile(path):
    with np.load(path) as stored:
        fraction = float(stored["fraction"])
        if "values" not in stored:
            return None, fraction
        arrays = {name: stored[name] for name in _ARRAYS + _OPTIONAL_ARRAYS if name in stored}
        reason = str(stored["fallback_reason"]) or None
        return ExplainedTile(**arrays, margin=float(stored["margin"]), fallback_reason=reason), fraction


def _sync_folder(folder):
    """Make a rename in `folder` durable (POSIX; Windows has no directory handles to flush)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    handle = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _read(path):
    if not os.path.exists(path):
        return ""
    with open(path, encoding="ascii") as stream:
        return stream.read()
