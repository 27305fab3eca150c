"""A process-wide setting the plugin needs only while one of its blocks runs, in any thread.

Some settings exist once per process: GDAL < 3.7's exception mode, the interpreter multiprocessing
spawns. Saving and restoring them around each block is wrong as soon as two blocks overlap in time
(two runs in one QGIS, Dask threads, a reader thread): the first to finish restores the old value
under the other's feet, and the last restores the value the first one set. Here the first block to
enter applies the setting, later ones only count, and the last to leave gives back what was there
before the first.
"""

import contextlib
import threading


class SharedSetting:
    def __init__(self, read, write):
        self._read, self._write = read, write
        self._lock = threading.Lock()
        self._users = 0
        self._before = None

    @contextlib.contextmanager
    def held(self, value):
        """Within the block the setting is `value` (every user of one SharedSetting asks for the same)."""
        with self._lock:
            if self._users == 0:
                self._before = self._read()
                if self._before != value:
                    self._write(value)
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0 and self._read() != self._before:
                    self._write(self._before)
