"""Run pip for an InstallPlan: into a staging folder, then renamed into place, so a failed or
cancelled install never leaves a half-filled dependencies folder; afterwards the folder goes on
sys.path (its end: QGIS's own packages keep priority)."""

import importlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

from .plan import shown_arguments

RECORD = "aid_xai-install.json"  # what was installed, for the dialog's "installed / upgrade" line
IMPORTS_OF_INTEREST = ("torch", "torchvision", "shap", "cv2", "onnx", "onnxruntime", "dask", "distributed")


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
    try:
        code, lines = run_pip(plan.pip_arguments(staging), log, cancelled)
        if code != 0:
            raise InstallFailed(f"pip could not install the packages: {_failure_line(lines)}")
        record = {
            "installed": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "python": sys.version.split()[0] if plan.python == sys.executable else plan.python,
            "torch_build": plan.torch_build.name,
            "requirements": list(plan.requirements),
            "offline_wheels": str(plan.wheels) if plan.wheels else None,
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


def installed_record(target):
    """The record of the install in `target`, or None."""
    try:
        return json.loads((target / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def activate(target):
    """Put an installed dependencies folder on sys.path (once, at its end). Returns the names among
    the plugin's packages that were already imported from elsewhere: those need a QGIS restart."""
    folder = str(target)
    if not os.path.isdir(folder):
        return []
    if folder not in sys.path:
        sys.path.append(folder)
        importlib.invalidate_caches()
    stale = []
    for name in IMPORTS_OF_INTEREST:
        module = sys.modules.get(name)
        location = getattr(module, "__file__", None) or ""
        if module is not None and not location.startswith(folder) and os.path.exists(os.path.join(folder, name)):
            stale.append(name)
    return stale
