"""Write outputs under a temporary name and move them into place only when complete.

A failed or cancelled run must never leave a file at the output path that looks finished, and must
never touch the user's input data.
"""

import contextlib
import os
import uuid


@contextlib.contextmanager
def atomic_output(path):
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    stem, ext = os.path.splitext(os.path.basename(path))
    temporary = os.path.join(folder, f".{stem}.{uuid.uuid4().hex[:8]}.partial{ext}")
    try:
        yield temporary
        for companion in _companions(temporary):
            os.replace(companion, os.path.splitext(path)[0] + companion[len(os.path.splitext(temporary)[0]) :])
        os.replace(temporary, path)
    finally:
        for leftover in [temporary, *_companions(temporary)]:
            if os.path.exists(leftover):
                os.remove(leftover)


def _companions(temporary):
    """Files written beside the temporary under its name: a shapefile's .shx/.dbf/.prj/.cpg, GDAL's
    .aux.xml statistics and .ovr overviews; they move (or go) with it."""
    root = os.path.splitext(temporary)[0] + "."
    folder = os.path.dirname(temporary)
    paths = [os.path.join(folder, name) for name in sorted(os.listdir(folder))]
    return [path for path in paths if path.startswith(root) and path != temporary]


def check_writable(path, what="output"):
    """Raise AidXaiError early when `path` cannot be written (before hours of computation)."""
    from .errors import AidXaiError

    folder = os.path.dirname(os.path.abspath(path)) or "."
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise AidXaiError(f"Cannot create the folder for the {what} '{path}': {error}. Choose a writable location.")
    if not os.access(folder, os.W_OK):
        raise AidXaiError(f"The folder of the {what} '{path}' is not writable. Choose a writable location.")
    if os.path.isdir(path):
        raise AidXaiError(f"The {what} '{path}' is a folder; give a file name.")
