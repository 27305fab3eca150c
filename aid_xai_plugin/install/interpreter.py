"""Which Python interpreter QGIS runs, so that pip installs for exactly that Python.

Inside QGIS `sys.executable` is often the QGIS program itself (Windows: qgis-bin.exe, QGIS#45646;
macOS: the app bundle's QGIS binary; Linux: /usr/bin/qgis), not a Python that can run `-m pip`. The
interpreter lies beside QGIS's Python prefix, in a place that depends on the platform and installer.
"""

import os
import re
import subprocess
import sys

PYTHON_NAME = re.compile(r"^python(\d(\.\d+)?)?(w)?(\.exe)?$", re.IGNORECASE)


class InterpreterNotFound(RuntimeError):
    pass


def candidates(executable, prefix, platform, version):
    """Paths to try, most likely first, for a QGIS whose `sys.executable`, `sys.prefix`,
    `sys.platform` and `sys.version_info[:2]` are given."""
    major, minor = version
    here = os.path.dirname(executable)
    name = os.path.basename(executable)
    found = []
    if PYTHON_NAME.match(name):  # already a Python (qgis_process's or a plain script's interpreter)
        found.append(os.path.join(here, re.sub(r"w(\.exe)?$", r"\1", name, flags=re.IGNORECASE)) if name.lower().startswith("pythonw") else executable)
    if platform.startswith("win"):
        # OSGeo4W and the standalone installer: sys.prefix is …\apps\Python3x, python.exe inside it;
        # the OSGeo4W shell also has a python.exe launcher in …\bin beside qgis-bin.exe.
        found += [os.path.join(prefix, "python.exe"), os.path.join(here, "python.exe"), os.path.join(here, "python3.exe")]
    elif platform == "darwin":
        # qgis.org's app bundle: …/QGIS.app/Contents/MacOS/QGIS with bin/python3 beside it; newer
        # bundles keep a Python.framework whose prefix has bin/python3.
        found += [
            os.path.join(here, "bin", "python3"),
            os.path.join(here, "bin", f"python{major}.{minor}"),
            os.path.join(prefix, "bin", f"python{major}.{minor}"),
            os.path.join(prefix, "bin", "python3"),
        ]
    else:
        found += [
            os.path.join(prefix, "bin", f"python{major}.{minor}"),
            os.path.join(prefix, "bin", "python3"),
            f"/usr/bin/python{major}.{minor}",
        ]
    unique = []
    for path in found:
        if path not in unique:
            unique.append(path)
    return unique


def _is_this_python(path):
    """`path` runs this very interpreter (same prefix and version), not another Python on the PATH —
    a pyenv shim or a conda python can be what an embedded interpreter's sys.executable names."""
    code, output = run_python(path, "-c", "import sys; print(sys.prefix); print(sys.version_info[:3])", timeout=30)
    return code == 0 and output.splitlines()[-2:] == [sys.prefix, str(sys.version_info[:3])]


def qgis_python(executable=None, prefix=None, platform=None, version=None):
    """The first existing interpreter among `candidates`. Without arguments (inside QGIS) they are
    this process's own values and a candidate must prove to be this same Python."""
    running = executable is None
    executable = executable or sys.executable
    prefix = prefix or sys.prefix
    platform = platform or sys.platform
    version = version or tuple(sys.version_info[:2])
    tried = candidates(executable, prefix, platform, version)
    for path in tried:
        if os.path.isfile(path) and (platform.startswith("win") or os.access(path, os.X_OK)) and (not running or _is_this_python(path)):
            return path
    raise InterpreterNotFound(
        f"QGIS's Python {version[0]}.{version[1]} interpreter was not found (looked for {', '.join(tried)}). "
        "Run `python -m aid_xai_plugin.install` from the Python QGIS uses (OSGeo4W Shell on Windows)."
    )


def run_python(python, *arguments, timeout=120):
    """(return code, output) of `python arguments…`, never raising for a failed command."""
    try:
        done = subprocess.run([python, *arguments], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as error:
        return 1, str(error)
    return done.returncode, (done.stdout + done.stderr).strip()


def ensure_pip(python, log=print):
    """pip for `python`: present, or bootstrapped with ensurepip (into the user site when the
    interpreter's own folders are not writable). Raises with pip's last line when neither works."""
    code, output = run_python(python, "-m", "pip", "--version")
    if code == 0:
        return output
    log(f"pip is missing for {python}; installing it with ensurepip")
    for arguments in (("-m", "ensurepip", "--upgrade"), ("-m", "ensurepip", "--upgrade", "--user")):
        code, output = run_python(python, *arguments, timeout=600)
        log(output)
        if code == 0:
            code, output = run_python(python, "-m", "pip", "--version")
            if code == 0:
                return output
    last = output.splitlines()[-1] if output else "no output"
    raise InterpreterNotFound(f"pip is not available for {python} and ensurepip could not install it ({last}).")
