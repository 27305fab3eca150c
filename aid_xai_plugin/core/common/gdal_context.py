"""GDAL/OGR/OSR raise Python exceptions inside the plugin's own calls, and nowhere else.

QGIS and other plugins share the process and rely on GDAL's global exception mode as they set it
(GDAL 4 will change the default). So the plugin never flips it for good: its GDAL calls run inside
`gdal_exceptions()`, which uses GDAL's thread-local `ExceptionMgr` (GDAL ≥ 3.7). Older GDAL (Debian
12's 3.6) has only a process-wide mode per module: it is on while any plugin block in any thread is
open and goes back to what it was when the last one closes (`SharedSetting`), so one thread leaving
its block never turns exceptions off under another's calls.

Inside the block a GDAL error handler (thread-local in GDAL: pushed on entry, popped on exit) collects
GDAL's own messages, so no raw "ERROR 1: …" line reaches the log ahead of the plugin's message: errors
become part of the plugin's error (`gdal_error_details`), warnings go to the plugin's log channel
(`log=`) or are dropped.
"""

import contextlib
import functools
import inspect
import threading

from .shared_setting import SharedSetting

_local = threading.local()  # per thread: the stack of open GdalMessages collectors
_legacy_modes = {}  # GDAL < 3.7: module name → its process-wide exception mode, shared by every block
_legacy_modes_lock = threading.Lock()


class GdalMessages:
    """GDAL's messages emitted inside one `gdal_exceptions()` block (newest last)."""

    def __init__(self):
        self.errors = []
        self.warnings = []

    def __call__(self, error_class, error_number, message):  # GDAL calls this: it must never raise
        try:
            text = " ".join(str(message).split())
            if error_class >= 3:  # CE_Failure, CE_Fatal
                self.errors.append(text)
                del self.errors[:-20]
            elif error_class == 2 and text not in self.warnings and len(self.warnings) < 20:  # CE_Warning
                self.warnings.append(text)
        except Exception:  # noqa: BLE001 - an error handler must not raise into GDAL's C code
            pass


def gdal_error_details(error=None):
    """The GDAL error messages of the innermost open block (oldest first), plus `error`'s own text when
    it isn't among them: the decoder's cause (e.g. 'ZIPDecode: Decoding error') comes before GDAL's
    summary line, which is often all the exception says."""
    stack = getattr(_local, "stack", None)
    messages = list(stack[-1].errors) if stack else []
    if error is not None:
        text = " ".join(str(error).split())
        if text and text not in messages:
            messages.append(text)
    unique = list(dict.fromkeys(messages))
    return "; ".join(unique[-4:])


def _legacy_exception_mode(module):
    with _legacy_modes_lock:
        if module.__name__ not in _legacy_modes:
            _legacy_modes[module.__name__] = SharedSetting(lambda: bool(module.GetUseExceptions()), lambda on: module.UseExceptions() if on else module.DontUseExceptions())
        return _legacy_modes[module.__name__].held(True)


@contextlib.contextmanager
def _collect_messages(log):
    from osgeo import gdal

    messages = GdalMessages()
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    gdal.PushErrorHandler(messages)
    stack.append(messages)
    try:
        yield messages
    finally:
        stack.pop()
        gdal.PopErrorHandler()
        if stack:  # an outer block (e.g. the pipeline's) gets the messages of the calls inside it
            stack[-1].errors.extend(messages.errors)
            del stack[-1].errors[:-20]
            stack[-1].warnings.extend(w for w in messages.warnings if w not in stack[-1].warnings)
        elif log is not None:
            for warning in messages.warnings:
                log(f"GDAL warning: {warning}")


@contextlib.contextmanager
def gdal_exceptions(log=None):
    """Within the block, failing GDAL/OGR/OSR calls raise RuntimeError instead of returning None, and
    GDAL's messages are collected instead of printed; yields the GdalMessages. `log(text)` receives the
    warnings when this is the outermost block."""
    from osgeo import gdal, ogr, osr

    with contextlib.ExitStack() as stack:
        for module in (gdal, ogr, osr):
            manager = getattr(module, "ExceptionMgr", None)
            stack.enter_context(manager(useExceptions=True) if manager is not None else _legacy_exception_mode(module))
        yield stack.enter_context(_collect_messages(log))


def collected_gdal_messages(log=None):
    """Only the message collection of `gdal_exceptions()` (GDAL's exception mode left as it is): for
    code that makes GDAL calls through QGIS (e.g. loading the input layer), whose GDAL errors would
    otherwise be printed raw ahead of the plugin's own message."""
    return _collect_messages(log)


def raising_gdal_errors(function):
    """Decorator: run `function` inside `gdal_exceptions()`; a `progress` argument (the plugin's
    Progress) receives GDAL's warnings."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        signature = None
    takes_progress = signature is not None and "progress" in signature.parameters

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        log = None
        if takes_progress:
            try:
                progress = signature.bind_partial(*args, **kwargs).arguments.get("progress")
            except TypeError:
                progress = None
            log = getattr(progress, "log", None)
        with gdal_exceptions(log):
            return function(*args, **kwargs)

    return wrapper
