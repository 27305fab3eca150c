"""Headless install of the plugin's packages, for qgis_process users and servers:

    python -m aid_xai_plugin.install [--cpu | --cuda] [--wheels DIR] [--target DIR | --profile DIR]

Run it with the Python QGIS uses (Debian: /usr/bin/python3; Windows: the OSGeo4W Shell's python;
macOS: QGIS.app/Contents/MacOS/bin/python3), from the folder that holds the plugin's `aid_xai_plugin`
package (the installed plugin folder, or a checkout). The packages go where the plugin looks for them
at start-up: <profile>/aid_xai/deps/<ABI>.
"""

import argparse
import os
import sys
from pathlib import Path

from .interpreter import InterpreterNotFound, ensure_pip
from .pins import VirtualEnvironmentError
from .plan import DOWNLOAD_MB, REQUIREMENTS_FILE, InstallPlan, TorchBuild, dependencies_folder, plugin_constraints, read_requirements
from .runner import InstallFailed, install


def default_profile():
    """QGIS's default profile folder on this system (QGIS 4 first, then QGIS 3); QGIS_CUSTOM_CONFIG_PATH wins."""
    custom = os.environ.get("QGIS_CUSTOM_CONFIG_PATH")
    if custom:
        return Path(custom) / "profiles" / "default"
    if sys.platform.startswith("win"):
        base = Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming")) / "QGIS"
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support" / "QGIS"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "QGIS"
    for major in ("QGIS4", "QGIS3"):
        if (base / major / "profiles" / "default").is_dir():
            return base / major / "profiles" / "default"
    return base / "QGIS3" / "profiles" / "default"


def arguments(argv=None):
    parser = argparse.ArgumentParser(prog="python -m aid_xai_plugin.install", description="Install AID-XAI's Python packages for the Python QGIS uses.")
    build = parser.add_mutually_exclusive_group()
    build.add_argument("--cpu", action="store_true", help=f"torch without CUDA libraries ({TorchBuild.CPU.value}); about {DOWNLOAD_MB[TorchBuild.CPU]} MB")
    build.add_argument("--cuda", action="store_true", help=f"{TorchBuild.CUDA.value}; about {DOWNLOAD_MB[TorchBuild.CUDA]} MB")
    parser.add_argument("--wheels", type=Path, help="install offline from this folder of wheels only (pip download them elsewhere)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--target", type=Path, help="the dependencies folder itself")
    where.add_argument("--profile", type=Path, help="a QGIS profile folder (default: QGIS's default profile)")
    parser.add_argument("--requirement", "-r", type=Path, default=REQUIREMENTS_FILE, help="requirements file (default: the plugin's pinned requirements.txt)")
    parser.add_argument("--proxy", help="http://[user:password@]host:port")
    return parser.parse_args(argv)


def main(argv=None):
    options = arguments(argv)
    if options.wheels and not options.wheels.is_dir():
        sys.exit(f"--wheels: '{options.wheels}' is not a folder of wheels.")
    if not options.requirement.is_file():
        sys.exit(f"--requirement: '{options.requirement}' does not exist.")
    target = options.target or dependencies_folder(options.profile or default_profile())
    try:
        ensure_pip(sys.executable)
        plan = InstallPlan(
            python=sys.executable,
            target=target,
            requirements=read_requirements(options.requirement),
            constraints=plugin_constraints(),
            torch_build=TorchBuild.CPU if options.cpu else TorchBuild.CUDA if options.cuda else TorchBuild.PYPI,
            wheels=options.wheels,
            proxy=options.proxy,
        )
        install(plan)
    except (InterpreterNotFound, VirtualEnvironmentError, InstallFailed) as error:
        sys.exit(f"AID-XAI: {error}")
    except KeyboardInterrupt:
        sys.exit("AID-XAI: cancelled; nothing was installed.")
    print(f"AID-XAI's packages are in {target}; QGIS and qgis_process with this profile load them at start-up.")


if __name__ == "__main__":
    main()
