"""From the plugin zip to installed packages without a terminal, in the real QGIS desktop (Xvfb).

tests/desktop/install_session.py runs inside `qgis --code` with an empty profile and no venv on
QGIS's Python path: QGIS's own installer code installs `make zip`'s archive; the plugin offers its
dependency dialog (message bar button, Plugins menu); the dialog installs a small real package set
from a local wheel folder this test builds, through the same pip code path as the full set
(`make test-install` does the full pinned install). The tests read install_session.json.
"""

import os
import shutil
import subprocess

import pytest
from conftest import ROOT
from helpers import make_wheel, run_qgis_desktop_session

OUT = os.path.join(ROOT, "build", "desktop-install")
SESSION = os.path.join(ROOT, "tests", "desktop", "install_session.py")

pytestmark = pytest.mark.skipif(
    not (shutil.which("xvfb-run") and shutil.which("qgis")),
    reason="needs xvfb-run and qgis (apt-get install xvfb xauth qgis; `make test` installs them)",
)


def run_install_session(tmp_path, out, full=False, model=None, build="CPU", timeout_s=150):
    """Start QGIS on an empty profile with install_session.py; its report (install_session.json)."""
    subprocess.run(["make", "-s", "zip"], cwd=ROOT, check=True, capture_output=True)
    archive = tmp_path / "aid_xai.zip"
    shutil.copy(os.path.join(ROOT, "aid_xai.zip"), archive)
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "aidxai_probe", "1.0", "VALUE = 'installed by the dialog'\n")
    requirements = tmp_path / "small-requirements.txt"
    requirements.write_text("aidxai_probe==1.0\n")
    profiles = tmp_path / "profiles"
    settings = profiles / "profiles" / "default" / "QGIS"
    settings.mkdir(parents=True)
    (settings / "QGIS3.ini").write_text(
        "[PythonPlugins]\nprocessing=true\ndb_manager=false\nMetaSearch=false\ngrassprovider=false\n"
        "[Processing]\nConfiguration\\KEEP_DIALOG_OPEN=true\n"
        "[qgis]\ncheckVersion=false\nallowVersionCheck=false\n[core]\nNewsFeed\\httpsfeedqgisorg\\disabled=true\n"
    )
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    environment = dict(
        PYTHONPATH=None,  # QGIS's Python as a new user has it: no venv
        VIRTUAL_ENV=None,
        XDG_RUNTIME_DIR=str(tmp_path / "runtime"),
        HOME=str(tmp_path / "home"),
        AID_XAI_DESKTOP_OUT=out,
        AID_XAI_DESKTOP_TIMEOUT=str(timeout_s),
        AID_XAI_INSTALL_ZIP=str(archive),
        AID_XAI_INSTALL_WHEELS=str(wheels),
        AID_XAI_INSTALL_REQUIREMENTS=str(requirements),
        AID_XAI_INSTALL_IMPORT="aidxai_probe",
        AID_XAI_INSTALL_FULL="1" if full else "0",
        AID_XAI_INSTALL_BUILD=build,
        AID_XAI_INSTALL_MODEL=model or "",
    )
    report = run_qgis_desktop_session(SESSION, profiles, out, "install_session.json", environment, timeout_s, str(tmp_path))
    report["profile"] = str(profiles / "profiles" / "default")
    return report


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return run_install_session(tmp_path_factory.mktemp("desktop_install"), OUT)


def test_qgis_installs_the_zip_and_the_plugin_loads_without_torch(session):
    assert session["errors"] == [], "\n".join(session["errors"])
    assert session["message_boxes"] == []
    assert session["plugin_active"] and session["provider_loaded"]
    assert session["plugin_file"].startswith(session["plugins_folder"])  # the zip's copy, not the checkout
    assert not session["torch_importable"]  # QGIS's own Python, as a new user has it


def test_the_plugin_offers_its_dependency_dialog(session):
    assert session["message_bar_button"]
    assert any("Install or update Python packages" in text for text in session["plugin_menu"]), session["plugin_menu"]
    assert session["dialog_from_button"]
    full = session["full_set"]
    assert "torch==2.14.1" in full["packages"] and "shap==0.49.1" in full["packages"]
    assert "CPU only (smaller, from PyTorch's CPU index) — about 420 MB" in full["builds"] and all(" MB" in text for text in full["builds"])
    assert full["where"].startswith(os.path.join(session["profile"], "aid_xai", "deps", "cp"))
    assert "Missing in QGIS's Python: torch" in full["status"]


def test_the_dialog_installs_a_package_set_and_it_imports_without_a_restart(session):
    running = session["while_running"]
    assert running == {"install_enabled": False, "cancel_enabled": True, "busy": True}
    after = session["after"]
    assert after["finished"] and after["step"].startswith("✔ Installed into"), after["step"] + "\n" + "\n".join(after["log"][-20:])
    assert "no restart is needed, but QGIS's Python still lacks torch" in after["step"]  # the small set has no torch
    assert after["log"][1].startswith("$ ") and "--no-index" in after["log"][1] and " -c " in after["log"][1]
    assert any("Successfully installed aidxai_probe-1.0" in line for line in after["log"])
    assert "aidxai_probe" in after["target_files"] and "aid_xai-install.json" in after["target_files"]
    assert after["target"].startswith(os.path.join(session["profile"], "aid_xai", "deps"))
    assert session["imported"] == {"file": os.path.join(after["target"], "aidxai_probe", "__init__.py"), "value": "installed by the dialog"}
    for shot in ("message_bar", "dialog_full_set", "installing", "installed"):
        assert os.path.getsize(session["screenshots"][shot]) > 1000, shot
