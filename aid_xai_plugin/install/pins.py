"""pip constraints that keep the Python stack QGIS was built against exactly as installed.

Every distribution in the interpreter's own site directories that ships compiled extension modules
(numpy, scipy, Pillow, matplotlib, GDAL, rasterio, PyQt5, …) is pinned to its installed version, so
`pip install -c <these>` never replaces or rebuilds them: QGIS, GDAL's bindings and Processing's own
algorithms were compiled against those exact versions (pip pulling numpy 2 into a numpy-1 QGIS is
the classic breakage). Pure-Python packages are left free.
"""

import importlib.metadata
import os
import re
import site
import sys

EXTENSION_SUFFIXES = (".so", ".pyd", ".dylib")
PEP440_VERSION = re.compile(r"^\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?(\+[a-zA-Z0-9.]+)?$")


class VirtualEnvironmentError(RuntimeError):
    """The pins must come from QGIS's own interpreter, not from a virtual environment on top of it."""


def interpreter_site_directories():
    """Site directories of the interpreter itself, never those of a virtual environment."""
    if sys.prefix != sys.base_prefix:
        raise VirtualEnvironmentError(
            "Run this with the system/QGIS Python, not from a virtual environment (e.g. /usr/bin/python3)."
        )
    return [path for path in site.getsitepackages() if os.path.isdir(path)]


def _top_level_names(distribution):
    text = distribution.read_text("top_level.txt")
    if text:
        return [name.strip() for name in text.split() if name.strip()]
    names = {str(path).split("/")[0] for path in distribution.files or () if not str(path).startswith("..")}
    names = {name[: -len(".py")] if name.endswith(".py") else name for name in names}
    if not names:  # no record of its files (some distribution packages): try the package named after it
        names = {distribution.metadata["Name"], distribution.metadata["Name"].replace("-", "_")}
    return sorted(name for name in names if not name.endswith((".dist-info", ".egg-info", ".data")) and name != "__pycache__")


def _ships_extension_modules(distribution, directory):
    for name in _top_level_names(distribution):
        package = os.path.join(directory, name)
        if os.path.isdir(package):
            for _, _, files in os.walk(package):
                if any(f.endswith(EXTENSION_SUFFIXES) for f in files):
                    return True
        elif any(f.startswith(name + ".") and f.endswith(EXTENSION_SUFFIXES) for f in os.listdir(directory)):
            return True
    return False


def compiled_distribution_pins(directories):
    """["numpy==1.24.2", …]: the compiled distributions in `directories`, sorted by name."""
    pins = {}
    for directory in directories:
        for distribution in importlib.metadata.distributions(path=[directory]):
            name = distribution.metadata["Name"]
            if not name or name.lower() in pins or not PEP440_VERSION.match(distribution.version):
                continue
            if _ships_extension_modules(distribution, directory):
                pins[name.lower()] = f"{name}=={distribution.version}"
    return [pins[key] for key in sorted(pins)]


def system_constraints_text():
    """The constraints file for this interpreter, with a header saying where it came from."""
    lines = [
        f"# Pinned by aid_xai_plugin.install.pins for Python {sys.version.split()[0]} ({sys.executable}):",
        "# the compiled packages QGIS's Python stack was built against, as installed.",
        *compiled_distribution_pins(interpreter_site_directories()),
    ]
    return "\n".join(lines) + "\n"
