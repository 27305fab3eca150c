"""GDAL/OGR/OSR raise Python exceptions inside the plugin's own calls, and nowhere else.

QGIS and other plugins share the process and rely on GDAL's global exception mode as they set it
(GDAL 4 will change the default). So the plugin never flips it for good: its GDAL calls run inside
`gdal_exceptions()`, which uses GDAL's thread-local `ExceptionMgr` (GDAL ≥ 3.7) and, on older GDAL
(Debian 12's 3.6), sets the per-module mode and restores it on exit.
"""

import contextlib
import functools


@contextlib.contextmanager
def _legacy_exception_mode(module):
    was_on = module.GetUseExceptions()
    module.UseExceptions()
    try:
        yield
    finally:
        if not was_on:
            module.DontUseExceptions()


@contextlib.contextmanager
def gdal_exceptions():
    """Within the block, failing GDAL/OGR/OSR calls raise RuntimeError instead of returning None."""
    from osgeo import gdal, ogr, osr

    with contextlib.ExitStack() as stack:
        for module in (gdal, ogr, osr):
            manager = getattr(module, "ExceptionMgr", None)
            stack.enter_context(manager(useExceptions=True) if manager is not None else _legacy_exception_mode(module))
        yield


def raising_gdal_errors(function):
    """Decorator: run `function` inside `gdal_exceptions()`."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with gdal_exceptions():
            return function(*args, **kwargs)

    return wrapper
