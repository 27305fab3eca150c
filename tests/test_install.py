"""Installing the plugin's packages without a terminal's pip knowledge (aid_xai_plugin/install/):
finding QGIS's Python on each platform's layout, the pip command, a real offline pip install into a
staging folder renamed into place, failure and Cancel leaving the previous state, and the headless
command `python -m aid_xai_plugin.install`."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from helpers import make_wheel

from aid_xai_plugin.install.interpreter import InterpreterNotFound, ensure_pip, qgis_python
from aid_xai_plugin.install.plan import InstallPlan, TorchBuild, abi_folder_name, dependencies_folder, read_requirements, shown_arguments
from aid_xai_plugin.install.runner import RECORD, InstallCancelled, InstallFailed, activate, install, installed_record

SYSTEM_PYTHON = "/usr/bin/python3"  # QGIS's Python on Debian


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    path.chmod(0o755)
    return path


@pytest.mark.parametrize(
    "layout, executable, prefix, platform, version, expected",
    [
        # OSGeo4W: sys.executable is qgis-bin.exe (QGIS#45646), sys.prefix the bundled Python's folder
        ("OSGeo4W", "bin/qgis-bin.exe", "apps/Python312", "win32", (3, 12), "apps/Python312/python.exe"),
        # the standalone Windows installer lays QGIS out the same way under "Program Files"
        ("Program Files/QGIS 3.40.12", "bin/qgis-bin.exe", "apps/Python312", "win32", (3, 12), "apps/Python312/python.exe"),
        # run from the OSGeo4W Shell's pythonw: the console python.exe beside it
        ("OSGeo4W", "apps/Python312/pythonw.exe", "apps/Python312", "win32", (3, 12), "apps/Python312/python.exe"),
        # qgis.org's macOS bundle: bin/python3 beside the QGIS binary
        ("QGIS.app", "Contents/MacOS/QGIS", "Contents/Frameworks/Python.framework/Versions/3.12", "darwin", (3, 12), "Contents/MacOS/bin/python3"),
        # Debian/Ubuntu packages: /usr/bin/qgis with the system Python
        ("usr", "bin/qgis", ".", "linux", (3, 11), "bin/python3.11"),
        # qgis_process and scripts already run in a Python
        ("usr", "bin/python3.13", ".", "linux", (3, 13), "bin/python3.13"),
    ],
)
def test_qgis_python_is_found_on_each_platforms_layout(tmp_path, layout, executable, prefix, platform, version, expected):
    root = tmp_path / layout
    _touch(root / executable)
    _touch(root / expected)
    if layout == "QGIS.app":  # a decoy that must not win: the framework's Python without bin/python3
        _touch(root / prefix / "lib" / "libpython3.12.dylib")
    assert qgis_python(str(root / executable), str(root / prefix), platform, version) == str(root / expected)


def test_another_python_named_by_sys_executable_is_not_taken(tmp_path, monkeypatch):
    """Embedded in QGIS, sys.executable can name whatever `python3` the PATH finds first (a pyenv
    shim, a conda python): pip must run with the interpreter QGIS actually runs."""
    impostor = tmp_path / "shims" / "python3"
    impostor.parent.mkdir()
    impostor.write_text(f"#!/bin/sh\necho /opt/other-python\necho '{tuple(sys.version_info[:3])}'\n")
    impostor.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(impostor))
    chosen = qgis_python()
    assert chosen != str(impostor) and os.path.dirname(chosen) == os.path.join(sys.prefix, "bin")


def test_a_missing_interpreter_is_a_clear_message(tmp_path):
    _touch(tmp_path / "bin" / "qgis-bin.exe")
    with pytest.raises(InterpreterNotFound, match=r"Python 3.12 interpreter was not found \(looked for .*python.exe.*OSGeo4W Shell"):
        qgis_python(str(tmp_path / "bin" / "qgis-bin.exe"), str(tmp_path / "apps" / "Python312"), "win32", (3, 12))


def test_a_python_without_pip_gets_it_from_ensurepip(tmp_path):
    """Some QGIS installs ship a Python without pip; ensurepip (bundled with Python) bootstraps it."""
    bare = tmp_path / "bare"
    created = subprocess.run([SYSTEM_PYTHON if os.access(SYSTEM_PYTHON, os.X_OK) else sys.executable, "-m", "venv", "--without-pip", str(bare)], capture_output=True, text=True)
    if created.returncode != 0:
        pytest.skip(f"no venv/ensurepip for this Python: {created.stderr.strip()[-200:]}")
    python = str(bare / "bin" / "python")
    assert subprocess.run([python, "-m", "pip", "--version"], capture_output=True).returncode != 0
    log = []
    assert ensure_pip(python, log.append).startswith("pip ")
    assert log[0] == f"pip is missing for {python}; installing it with ensurepip"


def test_dependencies_go_to_one_folder_per_python_abi_in_the_profile(tmp_path):
    assert abi_folder_name((3, 13), "linux-x86_64") == "cp313-linux_x86_64"
    assert abi_folder_name((3, 12), "win-amd64") == "cp312-win_amd64"
    assert abi_folder_name((3, 12), "macosx-11.0-arm64") == "cp312-macosx_11_0_arm64"
    assert dependencies_folder(tmp_path, (3, 11), "linux-x86_64") == tmp_path / "aid_xai" / "deps" / "cp311-linux_x86_64"


def test_the_pip_command_for_each_choice(tmp_path):
    requirements = read_requirements(Path(ROOT) / "requirements.txt")
    assert "torch==2.14.1" in requirements and all("#" not in line for line in requirements)
    plan = InstallPlan(python="py", target=tmp_path / "deps", requirements=requirements, constraints=(tmp_path / "pins.txt",))
    arguments = plan.pip_arguments(tmp_path / "staging")
    assert arguments[:6] == ["py", "-m", "pip", "install", "--target", str(tmp_path / "staging")]
    assert arguments[arguments.index("-c") + 1] == str(tmp_path / "pins.txt") and "--extra-index-url" not in arguments
    cpu = InstallPlan(python="py", target=tmp_path, requirements=("torch==2.14.1",), torch_build=TorchBuild.CPU).pip_arguments(tmp_path)
    assert cpu[cpu.index("--extra-index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    offline = InstallPlan(python="py", target=tmp_path, requirements=("torch==2.14.1",), torch_build=TorchBuild.CPU, wheels=tmp_path).pip_arguments(tmp_path)
    assert "--no-index" in offline and offline[offline.index("--find-links") + 1] == str(tmp_path) and "--extra-index-url" not in offline
    proxied = InstallPlan(python="py", target=tmp_path, requirements=(), proxy="http://ana:s3cret@proxy.example:3128").pip_arguments(tmp_path)
    assert "http://ana:s3cret@proxy.example:3128" in proxied
    assert "s3cret" not in shown_arguments(proxied) and "http://ana:***@proxy.example:3128" in shown_arguments(proxied)


def _imports_from(target, code):
    done = subprocess.run([sys.executable, "-c", f"import sys; sys.path.append({str(target)!r}); {code}"], capture_output=True, text=True)
    return done.returncode, done.stdout.strip() + done.stderr.strip()


# The runs below use this venv's Python, which cannot pin QGIS's packages (pins refuse a venv):
# pin_qgis_python=False. The headless and desktop tests install with QGIS's Python, pins included.


def test_a_real_offline_install_lands_whole_and_a_failed_one_changes_nothing(tmp_path):
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "aidxai_probe", "1.0", "VALUE = 1\n")
    make_wheel(wheels, "aidxai_probe", "2.0", "VALUE = 2\n")
    target = tmp_path / "profile" / "aid_xai" / "deps" / "cp-test"
    log = []
    plan = InstallPlan(python=sys.executable, target=target, requirements=("aidxai_probe==1.0",), wheels=wheels, pin_qgis_python=False)
    assert install(plan, log.append) == target
    assert _imports_from(target, "import aidxai_probe; print(aidxai_probe.VALUE)") == (0, "1")
    assert installed_record(target)["requirements"] == ["aidxai_probe==1.0"] and (target / RECORD).exists()
    assert log[0].startswith("$ ") and "--no-index" in log[0] and any("Successfully installed aidxai_probe-1.0" in line for line in log)

    # an upgrade replaces the folder whole
    install(InstallPlan(python=sys.executable, target=target, requirements=("aidxai_probe==2.0",), wheels=wheels, pin_qgis_python=False), log.append)
    assert _imports_from(target, "import aidxai_probe; print(aidxai_probe.VALUE)") == (0, "2")

    # a requirement pip cannot satisfy: one readable line; the installed version is untouched
    with pytest.raises(InstallFailed, match=r"^pip could not install the packages: .*aidxai_probe==3.0"):
        install(InstallPlan(python=sys.executable, target=target, requirements=("aidxai_probe==3.0",), wheels=wheels, pin_qgis_python=False), log.append)
    assert _imports_from(target, "import aidxai_probe; print(aidxai_probe.VALUE)") == (0, "2")
    assert sorted(os.listdir(target.parent)) == ["cp-test"]  # no staging or previous folder left


def test_cancel_ends_pip_and_installs_nothing(tmp_path):
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "aidxai_probe", "1.0", "VALUE = 1\n")
    target = tmp_path / "deps" / "cp-test"
    with pytest.raises(InstallCancelled, match="cancelled; nothing was installed"):
        install(InstallPlan(python=sys.executable, target=target, requirements=("aidxai_probe==1.0",), wheels=wheels, pin_qgis_python=False), lambda line: None, cancelled=lambda: True)
    assert not target.exists() and os.listdir(target.parent) == []


def test_activation_puts_the_folder_first_once_and_names_packages_needing_a_restart(tmp_path):
    target = tmp_path / "deps"
    (target / "json").mkdir(parents=True)  # a newer copy of a package this Python already imported
    (target / "aidxai_fresh").mkdir()
    (target / "aidxai_fresh" / "__init__.py").write_text("VALUE = 3\n")
    code = (
        "import sys, json; from aid_xai_plugin.install.runner import activate;"
        f"first = activate({str(target)!r}); second = activate({str(target)!r});"
        "import aidxai_fresh;"
        f"print(first, second, sys.path.count({str(target)!r}), sys.path[0] == {str(target)!r}, aidxai_fresh.VALUE)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.stdout.strip() == "['json'] ['json'] 1 True 3", done.stderr
    assert activate(tmp_path / "missing") == []


def test_what_qgis_python_already_has_is_left_to_it(tmp_path):
    """pip --target installs the whole tree; a package this Python has at an accepted version is
    removed again (QGIS keeps its own), one it has too old for a requirement stays (and wins)."""
    import importlib.metadata

    import pytest as installed_pytest  # a distribution this Python has, at a known version

    have = importlib.metadata.version("pytest")
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "pytest", have, "VALUE = 'a copy'\n")
    make_wheel(wheels, "aidxai_needs", "1.0", "VALUE = 1\n")
    target = tmp_path / "deps" / "cp-test"
    log = []
    install(InstallPlan(python=sys.executable, target=target, requirements=("aidxai_needs==1.0", f"pytest=={have}"), wheels=wheels, pin_qgis_python=False), log.append)
    assert sorted(name for name in os.listdir(target) if not name.endswith(".json")) == ["aidxai_needs", f"aidxai_needs-1.0.dist-info"]
    assert installed_record(target)["left_to_qgis_python"] == [f"pytest {have}"] and any("keeps using its own: pytest" in line for line in log)
    newer = "999.0"
    make_wheel(wheels, "pytest", newer, "VALUE = 'newer'\n")
    install(InstallPlan(python=sys.executable, target=target, requirements=(f"pytest=={newer}",), wheels=wheels, pin_qgis_python=False), log.append)
    assert (target / "pytest" / "__init__.py").exists() and installed_record(target)["left_to_qgis_python"] == []
    assert installed_pytest.__file__ and not installed_pytest.__file__.startswith(str(target))


def test_headless_install_with_qgis_python(tmp_path):
    """`python -m aid_xai_plugin.install` with Debian's /usr/bin/python3 (QGIS's Python), offline."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"{SYSTEM_PYTHON} (QGIS's Python on Debian) is not here")
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "aidxai_probe", "1.0", "VALUE = 1\n")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# a small set\naidxai_probe==1.0\n")
    target = tmp_path / "deps"
    command = [SYSTEM_PYTHON, "-m", "aid_xai_plugin.install", "--wheels", str(wheels), "--target", str(target), "-r", str(requirements)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"AID-XAI's packages are in {target}" in done.stdout and (target / "aidxai_probe" / "__init__.py").exists()
    pins = [line for line in done.stdout.splitlines() if line.startswith("$ ")][0]
    assert " -c " in pins  # QGIS's compiled packages pinned
    missing = subprocess.run([*command[:-4], "--target", str(target), "-r", str(tmp_path / "nope.txt")], capture_output=True, text=True, cwd=ROOT)
    assert missing.returncode != 0 and "--requirement: '" in missing.stderr and "does not exist" in missing.stderr
    no_wheels = subprocess.run([SYSTEM_PYTHON, "-m", "aid_xai_plugin.install", "--wheels", str(tmp_path / "nowhere"), "--target", str(target)], capture_output=True, text=True, cwd=ROOT)
    assert no_wheels.returncode != 0 and "is not a folder of wheels" in no_wheels.stderr


def test_the_pins_keep_qgis_pythons_numpy():
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"{SYSTEM_PYTHON} (QGIS's Python on Debian) is not here")
    done = subprocess.run([SYSTEM_PYTHON, os.path.join(ROOT, "scripts", "system_constraints.py")], capture_output=True, text=True)
    numpy = subprocess.run([SYSTEM_PYTHON, "-c", "import numpy; print(numpy.__version__)"], capture_output=True, text=True).stdout.strip()
    assert done.returncode == 0 and f"numpy=={numpy}" in done.stdout.splitlines()
    in_venv = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "system_constraints.py")], capture_output=True, text=True)
    if sys.prefix != sys.base_prefix:
        assert in_venv.returncode != 0 and "not from a virtual environment" in in_venv.stderr


def test_pip_goes_through_qgis_proxy_settings(qgis_app):
    """Settings › Options › Network › proxy becomes pip's --proxy; SOCKS is left to the system."""
    from qgis.core import QgsSettings

    from aid_xai_plugin.gui.dependency_dialog import qgis_proxy

    settings = QgsSettings()
    keys = ("proxy/proxyEnabled", "proxy/proxyType", "proxy/proxyHost", "proxy/proxyPort", "proxy/proxyUser", "proxy/proxyPassword")
    saved = {key: settings.value(key) for key in keys if settings.contains(key)}
    try:
        settings.setValue("proxy/proxyEnabled", False)
        assert qgis_proxy() is None
        for key, value in zip(keys, (True, "HttpProxy", "proxy.example", "3128", "ana", "s3cret")):
            settings.setValue(key, value)
        assert qgis_proxy() == "http://ana:s3cret@proxy.example:3128"
        settings.setValue("proxy/proxyUser", "")
        assert qgis_proxy() == "http://proxy.example:3128"
        settings.setValue("proxy/proxyType", "Socks5Proxy")
        assert qgis_proxy() is None
    finally:
        for key in keys:
            settings.remove(key)
        for key, value in saved.items():
            settings.setValue(key, value)
