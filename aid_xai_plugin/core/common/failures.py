"""Environment failures (memory, disk) as one-line AidXaiErrors that say which setting to change.

torch reports an exhausted CPU allocator as a RuntimeError ("DefaultCPUAllocator: can't allocate
memory"), CUDA as torch.cuda.OutOfMemoryError (a RuntimeError) or "CUDA out of memory"; numpy as
MemoryError. The pipelines run their model work inside `out_of_memory_as_error(...)`, so every one of
these ends in the same clear message instead of a traceback. QGIS-free and torch-free (it only reads
the exception), so every layer may use it.
"""

import contextlib
import errno

from .errors import AidXaiError

_MEMORY_MARKERS = (
    "out of memory",
    "can't allocate memory",
    "cannot allocate memory",
    "defaultcpuallocator",
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
    "failed to allocate",
)


def first_line(error):
    """The first non-empty line of an exception's text (torch's messages run to pages)."""
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__


def is_out_of_memory(error):
    """True for MemoryError and for torch's CPU/GPU allocation failures."""
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    if isinstance(error, RuntimeError):
        text = str(error).lower()
        return any(marker in text for marker in _MEMORY_MARKERS)
    return False


def out_of_memory_message(error, task, settings):
    """`settings`: what to lower, e.g. 'BATCH_SIZE (now 32) or TILE_SIZE'."""
    where = "the GPU" if "cuda" in str(error).lower() or type(error).__name__ == "OutOfMemoryError" else "this computer"
    device_hint = " or set DEVICE to cpu" if where == "the GPU" else ""
    return f"Out of memory on {where} while {task} ({first_line(error)[:160]}). Lower {settings}{device_hint}, or close other programs, and run again."


@contextlib.contextmanager
def out_of_memory_as_error(task, settings="BATCH_SIZE"):
    """Turn an out-of-memory error inside the block into an AidXaiError naming the settings to lower."""
    try:
        yield
    except (MemoryError, RuntimeError) as error:
        if isinstance(error, AidXaiError) or not is_out_of_memory(error):
            raise
        raise AidXaiError(out_of_memory_message(error, task, settings)) from error


_DISK_FIXES = {
    errno.ENOSPC: "the disk is full: free some space or choose a folder on another disk",
    errno.EFBIG: "the file grew past the size this system allows (file-size limit): choose another disk or raise the limit (ulimit -f)",
    errno.EDQUOT: "the disk quota is used up: free some space or choose another folder",
    errno.EACCES: "permission denied: choose a folder you can write to",
    errno.EPERM: "permission denied: choose a folder you can write to",
    errno.EROFS: "the file system is read-only: choose a writable folder",
    errno.ENOENT: "its folder no longer exists (was it removed during the run?): choose an existing folder",
    errno.EISDIR: "a folder has that name: give a file name",
}


def write_failure_message(path, error, what="output"):
    """One line naming the output, the cause and the fix for an OSError or a GDAL/OGR write error."""
    code = getattr(error, "errno", None)
    fix = _DISK_FIXES.get(code)
    if fix is None:
        text = str(error).lower()
        if "no space" in text or "disk is full" in text or "free disk space" in text or "database or disk is full" in text:
            fix = _DISK_FIXES[errno.ENOSPC]
        elif "file too large" in text or "file size limit" in text:
            fix = _DISK_FIXES[errno.EFBIG]
        elif "read-only" in text:
            fix = _DISK_FIXES[errno.EROFS]
        elif "permission denied" in text:
            fix = _DISK_FIXES[errno.EACCES]
        else:
            fix = _probable_cause(path) or "check that the disk has free space and the folder is writable, or choose another folder"
    detail = getattr(error, "strerror", None) or first_line(error)
    return f"Cannot write the {what} '{path}' ({detail}): {fix}. Nothing was written there."


def _probable_cause(path):
    """When a library reports only 'I/O error' (SQLite, some GDAL drivers): a full disk or a file-size
    limit are the usual reasons, and both can be checked."""
    import os
    import shutil

    try:
        if shutil.disk_usage(os.path.dirname(os.path.abspath(path)) or ".").free < 16 * 1024 * 1024:
            return _DISK_FIXES[errno.ENOSPC]
    except OSError:
        pass
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY:
            return _DISK_FIXES[errno.EFBIG] + f" (now {limit} bytes)"
    except (ImportError, OSError, ValueError):
        pass
    return None


def unexpected_error_message(error, task, written=()):
    """For the Processing layer's last resort: one line, no traceback. `written`: outputs this run had
    already committed (complete files, e.g. when styling them failed), so the line never says "no
    output" when there is one."""
    if is_out_of_memory(error):
        return out_of_memory_message(error, task, "BATCH_SIZE, TILE_SIZE (or the input size) or MAX_EVALS")
    outputs = f"Outputs written before the failure (complete, possibly without their style): {', '.join(written)}" if written else "No output was written"
    return f"{task} failed unexpectedly: {type(error).__name__}: {first_line(error)[:300]}. {outputs}; please report this with the log (debug log has the details)."
