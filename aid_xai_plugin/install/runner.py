"""Run pip for an InstallPlan: into a staging folder, then renamed into place, so a failed or
cancelled install never leaves a half-filled dependencies folder; afterwards the folder goes on
sys.path.

pip's `--target` installs the whole dependency tree, also what QGIS's Python already has. What QGIS's
Python satisfies (every compiled package, pinned to its installed version, and any other package at a
version every requirement accepts) is removed from the folder again, so QGIS keeps using its own. What
stays is what QGIS's Python lacks or has too old (e.g. Debian 12's sympy 1.11 where torch needs 1.13):
the folder goes first on sys.path so those newer versions are the ones imported."""

import dataclasses
import importlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone

from pathlib import Path

from .pins import system_constraints_text
from .plan import shown_arguments

RECORD = "aid_xai-install.json"  # what was installed, for the dialog's "installed / upgrade" line


class InstallFailed(RuntimeError):
    """One readable line; the whole pip log went to the log callback."""


class InstallCancelled(InstallFailed):
    pass


def _failure_line(lines):
    errors = [line.strip() for line in lines if line.strip().startswith("ERROR:")]
    if errors:
        return errors[0][len("ERROR:"):].strip()
    meaningful = [line.strip() for line in lines if line.strip()]
    return meaningful[-1] if meaningful else "pip printed nothing"


def run_pip(arguments, log, cancelled, poll_s=0.2):
    """(return code, output lines) of pip, its output passed line by line to `log`; `cancelled()`
    is polled and ends pip (and so the install) when it turns true."""
    log("$ " + shown_arguments(arguments))
    environment = dict(os.environ, PYTHONUNBUFFERED="1", PIP_NO_INPUT="1")
    process = subprocess.Popen(arguments, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=environment)
    lines = []

    def read():
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            log(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while process.poll() is None:
        if cancelled():
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
            reader.join(timeout=10)
            raise InstallCancelled("The installation was cancelled; nothing was installed.")
        time.sleep(poll_s)
    reader.join(timeout=30)
    return process.returncode, lines


def install(plan, log=print, cancelled=lambda: False):
    """Install `plan`; returns its target folder. The previous install there, if any, stays intact
    until the new one has fully succeeded."""
    target = plan.target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    pins_folder = tempfile.TemporaryDirectory(prefix="aid_xai_pins_")
    try:
        if plan.pin_qgis_python:  # here, in the caller's (background) thread: it scans the site folders
            pins = Path(pins_folder.name) / "qgis-constraints.txt"
            pins.write_text(system_constraints_text(), encoding="utf-8")
            plan = dataclasses.replace(plan, constraints=(pins, *plan.constraints))
        code, lines = run_pip(plan.pip_arguments(staging), log, cancelled)
        if code != 0:
            raise InstallFailed(f"pip could not install the packages: {_failure_line(lines)}")
        kept_from_qgis = drop_what_qgis_python_has(staging, plan.requirements, target.parent)
        if kept_from_qgis:
            log(f"QGIS's Python already has {len(kept_from_qgis)} of these at suitable versions; it keeps using its own: {', '.join(kept_from_qgis)}")
        record = {
            "installed": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "python": sys.version.split()[0] if plan.python == sys.executable else plan.python,
            "torch_build": plan.torch_build.name,
            "requirements": list(plan.requirements),
            "offline_wheels": str(plan.wheels) if plan.wheels else None,
            "left_to_qgis_python": kept_from_qgis,
        }
        (staging / RECORD).write_text(json.dumps(record, indent=1), encoding="utf-8")
        previous = target.with_name(f"{target.name}.previous-{os.getpid()}")
        if target.exists():
            os.replace(target, previous)
        os.replace(staging, target)
        shutil.rmtree(previous, ignore_errors=True)
        log(f"Installed into {target}")
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        pins_folder.cleanup()


def installed_record(target):
    """The record of the install in `target`, or None."""
    try:
        return json.loads((target / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _packaging():
    try:
        from packaging.requirements import Requirement
        from packaging.utils import canonicalize_name
    except ImportError:  # QGIS's Python without `packaging`: pip always carries a copy
        from pip._vendor.packaging.requirements import Requirement
        from pip._vendor.packaging.utils import canonicalize_name
    return Requirement, canonicalize_name


def drop_what_qgis_python_has(staging, requirements, dependencies_root):
    """Remove from `staging` each distribution that this Python (its sys.path without the plugin's
    dependency folders) already has at a version every requirement of the installed set accepts.
    Returns their names."""
    Requirement, canonical = _packaging()
    staged = {canonical(d.metadata["Name"]): d for d in importlib.metadata.distributions(path=[str(staging)])}
    elsewhere = [entry for entry in sys.path if entry and not os.path.abspath(entry).startswith(os.path.abspath(dependencies_root))]
    present = {}
    for distribution in importlib.metadata.distributions(path=elsewhere):
        present.setdefault(canonical(distribution.metadata["Name"]), distribution.version)
    wanted = {}
    for line in [*requirements, *(requirement for d in staged.values() for requirement in (d.requires or ()))]:
        requirement = Requirement(line)
        try:
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
        except Exception:  # noqa: BLE001 - a marker this Python cannot evaluate: count the requirement
            pass
        wanted.setdefault(canonical(requirement.name), []).append(requirement.specifier)
    dropped = []
    for name, distribution in sorted(staged.items()):
        version = present.get(name)
        if version is not None and all(specifier.contains(version, prereleases=True) for specifier in wanted.get(name, [])):
            dropped.append(f"{distribution.metadata['Name']} {version}")
            for file in distribution.files or ():
                path = distribution.locate_file(file)
                if os.path.isfile(path):
                    os.remove(path)
    for folder, _, _ in os.walk(staging, topdown=False):  # folders the removals emptied (.dist-info too)
        if folder != str(staging) and not os.listdir(folder):
            os.rmdir(folder)
    return dropped


def activate(target):
    """Put an installed dependencies folder first on sys.path (once). Returns the top-level packages
    in it that were already imported from elsewhere: Python keeps those until QGIS restarts."""
    folder = str(target)
    if not os.path.isdir(folder):
        return []
    if folder in sys.path:
        sys.path.remove(folder)
    sys.path.insert(0, folder)
    importlib.invalidate_caches()
    stale = []
    for name in sorted(os.listdir(folder)):
        if name.startswith("_"):  # private helpers (setuptools' _distutils_hack, …) no caller imports by name
            continue
        module = sys.modules.get(name)
        location = getattr(module, "__file__", None) or ""
        if module is not None and os.path.isdir(os.path.join(folder, name)) and not location.startswith(folder):
            stale.append(name)
    return stale
