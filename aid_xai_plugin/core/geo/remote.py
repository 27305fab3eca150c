"""Rasters GDAL reads over the network: `/vsicurl/https://…` (a plain http(s):// URL is read the same
way), `/vsis3/`, `/vsigs/`, `/vsiaz/` and GDAL's other network file systems.

GDAL fetches only the byte ranges the blocks of each window need, so a tile of a Cloud Optimized
GeoTIFF costs a few of its blocks, not the file. While the plugin opens or reads such a raster,
`network_reading()` gives GDAL's HTTP options sensible values (retries with a delay, no directory
listing on open, a connection timeout and a stall limit, so a server that stops answering ends the
read instead of hanging it). Only options nobody set: an environment variable or a GDAL config option
the user (or QGIS) set wins. They are GDAL's thread-local config options, set on entering the block
and removed on leaving it, in the calling thread only: nothing process-wide changes in the user's
QGIS, and blocks in other threads (a reader thread, Dask worker threads) set their own.
"""

import contextlib
import re

# GDAL's file systems that fetch byte ranges over the network (chained paths such as /vsizip//vsicurl/… too)
_NETWORK = re.compile(r"/vsi(curl|s3|gs|az|adls|oss|swift|webhdfs|hdfs)[/?]")
_URL = re.compile(r"^(https?|ftp)://", re.IGNORECASE)

# each used only where neither the environment nor a GDAL config option sets it
NETWORK_DEFAULTS = {
    "GDAL_HTTP_MAX_RETRY": "3",  # a 429/5xx or dropped connection is tried again …
    "GDAL_HTTP_RETRY_DELAY": "1",  # … after 1 s, then longer (GDAL backs off)
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no listing of the remote folder, no probes for sidecar files
    "GDAL_HTTP_CONNECTTIMEOUT": "30",  # seconds to connect
    "GDAL_HTTP_LOW_SPEED_TIME": "60",  # a transfer slower than …
    "GDAL_HTTP_LOW_SPEED_LIMIT": "1",  # … 1 byte/s for 60 s is abandoned: a server that stops answering ends the read
}


def gdal_path(path):
    """The path GDAL reads `path` by: a plain http(s)/ftp URL through /vsicurl/ (block by block; GDAL's
    HTTP driver would download the whole file), anything else as it is."""
    path = str(path)
    return "/vsicurl/" + path if _URL.match(path) else path


def is_network_path(path):
    """Whether GDAL reads `path` over the network (a URL, /vsicurl/, /vsis3/, …)."""
    return bool(_NETWORK.search(gdal_path(path)))


@contextlib.contextmanager
def network_reading(path):
    """Within the block, GDAL's HTTP options not set by anyone have NETWORK_DEFAULTS' values in this
    thread, if `path` is read over the network; nothing changes otherwise."""
    if not is_network_path(path):
        yield
        return
    from osgeo import gdal

    applied = []
    try:
        for key, value in NETWORK_DEFAULTS.items():
            if gdal.GetConfigOption(key) is None:  # also None in this thread: nobody set it
                gdal.SetThreadLocalConfigOption(key, value)
                applied.append(key)
        yield
    finally:
        for key in applied:
            gdal.SetThreadLocalConfigOption(key, None)


def forget_cached(path):
    """Drop what GDAL cached of `path` in this process (its size, date and blocks), so the next open
    sees the file as the server has it now: nothing of a file replaced since is mixed in."""
    if is_network_path(path):
        from osgeo import gdal

        gdal.VSICurlPartialClearCache(gdal_path(path))


def network_identity(path):
    """[path, size, modification time] of a file on the network as GDAL sees it (the time from the
    server's Last-Modified), or [path] when the server gives neither: a resumed run over the same URL
    matches, a replaced file at that URL does not."""
    from osgeo import gdal

    try:
        with network_reading(path):
            status = gdal.VSIStatL(gdal_path(path))
    except RuntimeError:
        status = None
    if status is None:
        return [path]
    return [path, int(status.size), int(status.mtime)]


def network_hint(path):
    """What to check when a network raster cannot be opened or read."""
    shown = gdal_path(path)
    hint = f"check that the URL is right and the server answers (`gdalinfo '{shown}'`)"
    if not shown.startswith("/vsicurl") and "/vsicurl/" not in shown:
        hint += " and that the credentials for it are set (see GDAL's documentation of its network file systems)"
    return hint
