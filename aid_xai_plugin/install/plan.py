"""What to install, where, and the pip command that does it.

Everything goes into one folder the plugin owns in the QGIS profile, one per Python ABI
(`<profile>/aid_xai/deps/cp311-linux_x86_64`), so an upgrade of QGIS's Python never loads packages
built for another one, and removing the folder undoes the install. pip runs with `--target` into a
staging folder beside it, under the constraints that pin QGIS's own compiled packages.
"""

import enum
import os
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

PLUGIN_ROOT = Path(__file__).resolve().parents[2]  # the plugin folder: metadata.txt, requirements.txt
REQUIREMENTS_FILE = PLUGIN_ROOT / "requirements.txt"
CONSTRAINTS_FILE = PLUGIN_ROOT / "constraints.txt"


def plugin_constraints():
    """The plugin's own constraints file, where the plugin folder has it."""
    return (CONSTRAINTS_FILE,) if CONSTRAINTS_FILE.is_file() else ()


class TorchBuild(enum.Enum):
    """Which torch wheels pip may choose (a drop-down in the dialog, --cpu/--cuda on the command line)."""

    PYPI = "PyPI's default (Linux: with CUDA libraries, largest)"
    CPU = "CPU only (smaller, from PyTorch's CPU index)"
    CUDA = "NVIDIA GPU (CUDA 12.6, from PyTorch's index)"


# The indexes PyTorch publishes its builds on; pip takes the "+cpu"/"+cu126" wheel from them for the
# same pinned version (a local version label sorts above the plain one) and everything else from PyPI.
TORCH_INDEXES = {TorchBuild.CPU: "https://download.pytorch.org/whl/cpu", TorchBuild.CUDA: "https://download.pytorch.org/whl/cu126"}

# Approximate downloads (MB), Linux x86_64, Python 3.11: the 70 wheels pip resolves for requirements.txt
# (`pip install --dry-run --report`) weigh 3 090 MB + ~90 MB, 2 950 MB of them torch with its CUDA
# libraries and triton; PyTorch's CPU-only torch wheel is ~190 MB instead.
DOWNLOAD_MB = {TorchBuild.PYPI: 3200, TorchBuild.CPU: 420, TorchBuild.CUDA: 3200}


def abi_folder_name(version=None, platform=None):
    """"cp311-linux_x86_64": what a wheel built for this interpreter is tagged with."""
    major, minor = version or sys.version_info[:2]
    return f"cp{major}{minor}-{(platform or sysconfig.get_platform()).replace('-', '_').replace('.', '_')}"


def dependencies_folder(profile_folder, version=None, platform=None):
    """<QGIS profile>/aid_xai/deps/<ABI>: outside the plugin's own folder, so upgrading the plugin
    keeps it, and inside the profile, so qgis_process with the same profile finds it too."""
    return Path(profile_folder) / "aid_xai" / "deps" / abi_folder_name(version, platform)


def read_requirements(path=REQUIREMENTS_FILE):
    """The requirement lines of a requirements file (no comments, no options, no `-r` includes)."""
    lines = []
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            lines.append(line)
    return tuple(lines)


@dataclass(frozen=True)
class InstallPlan:
    python: str
    target: Path
    requirements: tuple = field(default_factory=read_requirements)
    constraints: tuple = ()  # constraint files besides QGIS's own pins (the plugin's constraints.txt)
    pin_qgis_python: bool = True  # also pin this Python's compiled packages as installed (install() writes them)
    torch_build: TorchBuild = TorchBuild.PYPI
    wheels: Path = None  # a folder of wheels: install offline from it alone
    proxy: str = None  # http://[user:password@]host:port, from QGIS's network settings

    def pip_arguments(self, into):
        """argv that installs the plan into the folder `into`."""
        arguments = [self.python, "-m", "pip", "install", "--target", str(into), "--no-input", "--disable-pip-version-check", "--no-warn-script-location", "--progress-bar", "off"]
        for constraints in self.constraints:
            arguments += ["-c", str(constraints)]
        if self.wheels:
            arguments += ["--no-index", "--find-links", str(self.wheels)]
        elif self.torch_build in TORCH_INDEXES:
            arguments += ["--extra-index-url", TORCH_INDEXES[self.torch_build]]
        if self.proxy:
            arguments += ["--proxy", self.proxy]
        return arguments + list(self.requirements)


def shown_arguments(arguments):
    """The command as the log shows it: a proxy's password is not printed."""
    shown = list(arguments)
    for index, value in enumerate(shown[:-1]):
        if value == "--proxy" and "@" in shown[index + 1]:
            scheme, _, rest = shown[index + 1].rpartition("//")
            credentials, _, host = rest.rpartition("@")
            shown[index + 1] = f"{scheme}//{credentials.split(':')[0]}:***@{host}"
    return " ".join(f'"{part}"' if " " in part else part for part in shown)


def nvidia_driver_present():
    """An NVIDIA driver is installed (the CUDA build is only offered then)."""
    if sys.platform.startswith("win"):
        return os.path.exists(os.path.join(os.environ.get("SystemRoot", r"C:\Windows"), "System32", "nvidia-smi.exe"))
    return os.path.exists("/proc/driver/nvidia/version")
