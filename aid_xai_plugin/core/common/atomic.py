"""Write outputs under a temporary name and move them into place only when complete.

A failed or cancelled run must never leave a file at the output path that looks finished, and must
never touch the user's input data.

The temporary name `.<stem>.<hex>.<pid>-<host>.partial<ext>` records its writer: a process killed
outright (SIGKILL, power cut) cannot remove its temporary, so the next run that writes the same output
removes those whose writer is gone — never one a live (concurrent) writer still fills. The commit
(companions and the file itself) holds an advisory lock on the folder, so two runs that write the same
output at once end with one run's complete file and its own companions: last writer wins, never a mix.
"""

import contextlib
import hashlib
import os
import re
import socket
import time
import uuid

from .errors import AidXaiError

_HOST = hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]
_TEMPORARY = re.compile(r"^\.(?P<stem>.*)\.(?P<hex>[0-9a-f]{8})(?:\.(?P<pid>\d+)-(?P<host>[0-9a-f]{6}))?\.partial(?:\..*)?$")
LEGACY_STALE_SECONDS = 24 * 3600  # temporaries without a writer id (older plugin versions): removed after a day
# sidecars GDAL keeps beside a raster; an older one would describe the previous file
_SIDECARS = (".aux.xml", ".ovr", ".msk")


@contextlib.contextmanager
def atomic_output(path):
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise AidXaiError(_write_message(path, error)) from error
    remove_stale_temporaries(path)
    temporary = temporary_path(path)
    ext = os.path.splitext(path)[1]
    try:
        yield temporary
        if not os.path.exists(temporary):
            raise AidXaiError(f"Cannot write the output '{path}': its temporary file vanished during the run (was the folder cleaned?). Run again.")
        try:
            with _folder_lock(folder):
                companions = _companions(temporary)
                suffixes = {companion[len(os.path.splitext(temporary)[0]) :] for companion in companions}
                for sidecar in _SIDECARS:  # an old file's statistics/overviews must not describe the new one
                    old = path + sidecar
                    if ext + sidecar not in suffixes and os.path.isfile(old):
                        os.remove(old)
                for companion in companions:
                    os.replace(companion, os.path.splitext(path)[0] + companion[len(os.path.splitext(temporary)[0]) :])
                os.replace(temporary, path)
        except OSError as error:
            raise AidXaiError(_write_message(path, error)) from error
    finally:
        remove_with_companions(temporary)


def temporary_path(path):
    """A new temporary name beside `path` that records its writer (removed by `remove_stale_temporaries`
    once that writer is gone); `atomic_output` moves its own into place, other ones are scratch files."""
    path = os.path.abspath(path)
    stem, ext = os.path.splitext(os.path.basename(path))
    return os.path.join(os.path.dirname(path), f".{stem}.{uuid.uuid4().hex[:8]}.{os.getpid()}-{_HOST}.partial{ext}")


def remove_with_companions(path):
    """Remove a temporary and the files GDAL wrote beside it under its name (.aux.xml…), if any."""
    for leftover in [path, *_companions(path)]:
        with contextlib.suppress(OSError):
            if os.path.exists(leftover):
                os.remove(leftover)


def _write_message(path, error):
    from .failures import write_failure_message

    return write_failure_message(path, error)


@contextlib.contextmanager
def _folder_lock(folder):
    """An exclusive advisory lock on the folder (flock on its descriptor: no lock file to leave
    behind), for the few renames of a commit; nothing where flock isn't available."""
    try:
        import fcntl
    except ImportError:  # Windows: renames stay atomic per file
        yield
        return
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        except OSError:  # e.g. a network file system without flock
            pass
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _writer_alive(pid, host):
    """False only when the writer surely is gone: same host and no such (non-zombie) process."""
    if host != _HOST:
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def remove_stale_temporaries(path):
    """Remove temporaries (and their companions) of `path` left by writers that no longer run."""
    folder = os.path.dirname(os.path.abspath(path))
    stem = os.path.splitext(os.path.basename(path))[0]
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    removed = []
    now = time.time()
    for name in names:
        match = _TEMPORARY.match(name)
        if not match or match.group("stem") != stem:
            continue
        full = os.path.join(folder, name)
        try:
            if match.group("pid") is not None:
                stale = not _writer_alive(int(match.group("pid")), match.group("host"))
            else:
                stale = now - os.path.getmtime(full) > LEGACY_STALE_SECONDS
            if stale and not os.path.isdir(full):
                os.remove(full)
                removed.append(full)
        except OSError:
            continue
    return removed


def _companions(temporary):
    """Files written beside the temporary under its name: a shapefile's .shx/.dbf/.prj/.cpg, GDAL's
    .aux.xml statistics and .ovr overviews; they move (or go) with it."""
    root = os.path.splitext(temporary)[0] + "."
    folder = os.path.dirname(temporary)
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    paths = [os.path.join(folder, name) for name in names]
    return [path for path in paths if path.startswith(root) and path != temporary]


def check_writable(path, what="output"):
    """Raise AidXaiError early when `path` cannot be written (before hours of computation)."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    if os.path.isdir(path):
        raise AidXaiError(f"The {what} '{path}' is a folder; give a file name.")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise AidXaiError(f"Cannot create the folder for the {what} '{path}': {error}. Choose a writable location.")
    if not os.access(folder, os.W_OK):
        raise AidXaiError(f"The folder of the {what} '{path}' is not writable (read-only or no permission). Choose a writable location.")
