"""The plugin as QGIS and qgis_process see it: provider, algorithms, packaging, missing packages."""

import os
import subprocess
import sys
import zipfile

import pytest
from conftest import QGIS_PROCESS, ROOT, run_qgis_process
from helpers import hang_limit

ALGORITHMS = {"train", "evaluate", "import_model", "export_onnx", "classify", "explain", "explanation_quality", "synthetic_scenes", "synthetic_mosaic"}


def test_core_imports_without_qgis():
    code = (
        "import sys, pkgutil, importlib; sys.modules['qgis'] = None\n"
        "import aid_xai_plugin.core as core\n"
        "names = [m.name for m in pkgutil.walk_packages(core.__path__, 'aid_xai_plugin.core.')]\n"
        "[importlib.import_module(n) for n in names]\n"
        "print(len(names))"
    )
    completed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    assert int(completed.stdout) >= 15


def test_provider_registers_every_algorithm_with_help(aid_xai_provider):
    from qgis.core import QgsApplication

    registry = QgsApplication.processingRegistry()
    assert aid_xai_provider.name() == "AID XAI" and not aid_xai_provider.icon().isNull()
    ids = {algorithm.name() for algorithm in aid_xai_provider.algorithms()}
    assert ids == ALGORITHMS
    for name in ALGORITHMS:
        algorithm = registry.algorithmById(f"aid_xai:{name}")
        assert algorithm.group() and algorithm.shortHelpString() and algorithm.helpUrl().startswith("https://")
        assert algorithm.canExecute()[0], algorithm.canExecute()[1]


def test_plugin_class_factory_registers_and_unloads(qgis_app, qgis_processing):
    from qgis.core import QgsApplication

    import aid_xai_plugin

    registry = QgsApplication.processingRegistry()
    existing = registry.providerById("aid_xai")
    if existing is not None:
        registry.removeProvider(existing)
    plugin = aid_xai_plugin.classFactory(None)
    plugin.initProcessing()
    assert registry.providerById("aid_xai") is not None
    plugin.unload()
    assert registry.providerById("aid_xai") is None


def test_qgis_process_lists_the_provider():
    completed = run_qgis_process("list")
    assert completed.returncode == 0, completed.stderr
    assert "AID XAI" in completed.stdout
    for name in ALGORITHMS:
        assert f"aid_xai:{name}" in completed.stdout


def test_qgis_process_runs_an_algorithm(tmp_path):
    from conftest import run_algorithm_json

    result = run_algorithm_json("aid_xai:synthetic_scenes", {"PER_CLASS": 2, "SIZE": 32, "OUTPUT": tmp_path / "scenes"})
    assert result["results"]["OUTPUT"] == str(tmp_path / "scenes")
    assert len(os.listdir(tmp_path / "scenes")) == 6
    assert all(len(os.listdir(tmp_path / "scenes" / name)) == 2 for name in os.listdir(tmp_path / "scenes"))


def _bare_qgis_environment(tmp_path, plugin_path):
    """qgis_process.bin's environment without the project venv (no torch, shap or cv2)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(QGIS_PLUGINPATH=str(plugin_path), QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "config"), QT_QPA_PLATFORM="offscreen")
    return env


def _qgis_process_bin(env, *args):
    return subprocess.run(["/usr/bin/qgis_process.bin", *args], capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=hang_limit(300))


def test_without_torch_the_provider_loads_and_runs_fail_with_the_install_command(tmp_path):
    env = _bare_qgis_environment(tmp_path, os.path.join(ROOT, ".qgis", "plugins"))
    probe = subprocess.run(["/usr/bin/python3", "-c", "import importlib.util as u; print(u.find_spec('torch'))"], capture_output=True, text=True, env=env)
    assert probe.stdout.strip() == "None", "system Python must lack torch for this test"
    assert _qgis_process_bin(env, "plugins", "enable", "aid_xai").returncode == 0
    listed = _qgis_process_bin(env, "list")
    assert "aid_xai:classify" in listed.stdout and "aid_xai:explain" in listed.stdout
    from aid_xai_plugin.core.data.synthetic import make_scene_mosaic

    make_scene_mosaic(str(tmp_path / "mosaic.tif"), rows=1, cols=1, scene_px=32)
    run = _qgis_process_bin(env, "run", "aid_xai:classify", "--", f"INPUT={tmp_path / 'mosaic.tif'}", "MODEL=/nonexistent.aidx.pt")
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert "torch" in output and "Install or update Python packages" in output and "python3 -m aid_xai_plugin.install" in output
    assert "Traceback" not in output


def test_pb_tool_zip_installs_into_a_clean_plugin_path(tmp_path):
    subprocess.run(["make", "-s", "zip"], cwd=ROOT, check=True, capture_output=True)
    archive = os.path.join(ROOT, "aid_xai.zip")
    assert os.path.getsize(archive) < 25 * 1024 * 1024
    with zipfile.ZipFile(archive) as bundle:
        names = bundle.namelist()
        assert "aid_xai/metadata.txt" in names and "aid_xai/__init__.py" in names
        assert any(name.startswith("aid_xai/resources/") for name in names)
        assert not any("__pycache__" in name or name.endswith(".pyc") for name in names)
        bundle.extractall(tmp_path / "plugins")
    env = _bare_qgis_environment(tmp_path, tmp_path / "plugins")
    env["PYTHONPATH"] = subprocess.run(["bash", "-c", f"ls -d {ROOT}/.venv/lib/python3*/site-packages"], capture_output=True, text=True).stdout.strip()
    assert _qgis_process_bin(env, "plugins", "enable", "aid_xai").returncode == 0
    listed = _qgis_process_bin(env, "list")
    assert "aid_xai:explain" in listed.stdout, listed.stderr


def _zip_problems(tmp_path, changes):
    """check_plugin_zip.py's verdict on the plugin's own zip with `changes` ({name: text or None})."""
    source = os.path.join(ROOT, "aid_xai.zip")
    if not os.path.exists(source):
        subprocess.run(["make", "-s", "zip"], cwd=ROOT, check=True, capture_output=True)
    changed = tmp_path / "changed.zip"
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(changed, "w") as copy:
        for item in original.infolist():
            if item.filename not in changes:
                copy.writestr(item, original.read(item.filename))
        for name, text in changes.items():
            if text is not None:
                copy.writestr(name, text)
    done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "check_plugin_zip.py"), str(changed)], capture_output=True, text=True)
    return done.returncode, done.stderr


@pytest.mark.parametrize(
    "changes, reported",
    [
        ({}, None),
        ({"aid_xai/LICENSE": None}, "'aid_xai/LICENSE' is missing"),
        ({"aid_xai/aid_xai_plugin/__pycache__/plugin.cpython-311.pyc": "x"}, "compiled file in the zip"),
        ({"aid_xai/.git/config": "x"}, "must not contain a '.git' directory"),
        ({"aid_xai/requirements.txt": None}, "'aid_xai/requirements.txt' is missing"),
        ({"other/readme.txt": "x"}, "more than one top-level folder"),
        ({"aid_xai/lib/fast.so": "x"}, "compiled file in the zip: 'aid_xai/lib/fast.so'"),
    ],
)
def test_make_zip_checks_the_plugin_repositorys_rules(tmp_path, changes, reported):
    code, stderr = _zip_problems(tmp_path, changes)
    if reported is None:
        assert code == 0, stderr
    else:
        assert code == 1 and reported in stderr, stderr


def test_the_zip_check_reads_metadata_like_the_repository(tmp_path):
    with open(os.path.join(ROOT, "metadata.txt"), encoding="utf-8") as handle:
        text = handle.read()
    code, stderr = _zip_problems(tmp_path, {"aid_xai/metadata.txt": text.replace("\ntracker=", "\nbugtracker=").replace("author=AID-XAI developers", "author=AID/XAI")})
    assert code == 1 and "metadata.txt lacks tracker" in stderr and "Author name cannot contain slashes" in stderr
    code, stderr = _zip_problems(tmp_path, {"aid_xai/metadata.txt": text.replace("# MAINTAINER", "# maintainer")})
    assert code == 1 and "placeholder values (email, tracker, repository, homepage) without a '# MAINTAINER' note" in stderr


def test_metadata_is_complete_for_the_plugin_repository():
    import configparser

    metadata = configparser.ConfigParser()
    metadata.read(os.path.join(ROOT, "metadata.txt"))
    general = metadata["general"]
    for key in ("name", "qgisMinimumVersion", "qgisMaximumVersion", "description", "about", "version", "author", "email", "repository", "tracker", "homepage", "tags", "category", "hasProcessingProvider", "experimental", "changelog", "icon"):
        assert general.get(key), key
    assert general["qgisMinimumVersion"] == "3.22" and general["hasProcessingProvider"] == "yes" and general["category"] == "Raster"
    assert "torch" in general["about"] and "shap" in general["about"]
    assert os.path.exists(os.path.join(ROOT, general["icon"])) and os.path.exists(os.path.join(ROOT, "LICENSE"))
    assert os.access(QGIS_PROCESS, os.X_OK)


def test_metadata_version_is_the_package_version():
    import configparser

    import aid_xai_plugin

    metadata = configparser.ConfigParser(interpolation=None)
    metadata.read(os.path.join(ROOT, "metadata.txt"), encoding="utf-8")
    assert metadata["general"]["version"] == aid_xai_plugin.__version__


def test_algorithms_leave_global_random_state_and_pyplot_alone(aid_xai_provider, synthetic_dataset, synthetic_model, tmp_path):
    """Inside a user's QGIS, numpy's and torch's global RNGs and pyplot's open figures belong to the user."""
    import matplotlib

    matplotlib.use("Agg")  # this test process's own choice, before pyplot is imported here
    import numpy as np
    import processing
    import torch
    from matplotlib import pyplot

    from aid_xai_plugin.core.data.synthetic import make_scene_mosaic

    from qgis.core import QgsApplication

    from aid_xai_plugin.provider import AidXaiProvider

    registry = QgsApplication.processingRegistry()
    provider = registry.providerById("aid_xai")  # another test may have unloaded the plugin
    if provider is None:
        provider = AidXaiProvider()
        registry.addProvider(provider)
    mosaic = str(tmp_path / "mosaic.tif")
    make_scene_mosaic(mosaic, rows=1, cols=2, scene_px=64, seed=3)
    user_figure = pyplot.figure()
    runs = [
        ("aid_xai:synthetic_scenes", {"PER_CLASS": 2, "SIZE": 32, "OUTPUT": str(tmp_path / "scenes")}),
        ("aid_xai:synthetic_mosaic", {"ROWS": 1, "COLUMNS": 1, "OUTPUT": str(tmp_path / "m.tif"), "TRUTH": str(tmp_path / "t.gpkg")}),
        ("aid_xai:train", {"DATASET": synthetic_dataset, "INPUT_SIZE": 32, "EPOCHS": 1, "OUTPUT": str(tmp_path / "m.aidx.pt"), "METRICS": str(tmp_path / "m.json")}),
        ("aid_xai:evaluate", {"MODEL": synthetic_model, "DATASET": synthetic_dataset, "OUTPUT_HTML": str(tmp_path / "e.html")}),
        ("aid_xai:export_onnx", {"MODEL": synthetic_model, "OUTPUT": str(tmp_path / "m.onnx")}),
        ("aid_xai:import_model", {"INPUT": str(tmp_path / "m.onnx"), "OUTPUT": str(tmp_path / "imported.aidx.pt")}),
        ("aid_xai:classify", {"INPUT": mosaic, "MODEL": synthetic_model, "OUTPUT_CLASSES": str(tmp_path / "c.tif")}),
        ("aid_xai:explain", {"INPUT": mosaic, "MODEL": synthetic_model, "ENGINE": "shap", "MAX_EVALS": 40, "TOP_K": 1, "OUTPUT": str(tmp_path / "s.tif"), "OUTPUT_REPORT": str(tmp_path / "r.html")}),
        ("aid_xai:explain", {"INPUT": mosaic, "MODEL": synthetic_model, "ENGINE": "fast", "MAX_EVALS": 40, "TOP_K": 1, "OUTPUT": str(tmp_path / "f.tif")}),
        ("aid_xai:explanation_quality", {"INPUT": mosaic, "MODEL": synthetic_model, "MAX_EVALS": 40, "STEPS": 4, "RANDOM_ORDERS": 1, "OUTPUT_TABLE": str(tmp_path / "q.gpkg"), "OUTPUT_REPORT": str(tmp_path / "q.html")}),
    ]
    assert {name for name, _ in runs} == {f"aid_xai:{name}" for name in ALGORITHMS}
    for name, parameters in runs:
        np.random.seed(1234)
        torch.manual_seed(1234)
        numpy_state, torch_state = np.random.get_state(), torch.get_rng_state()
        processing.run(name, parameters)
        after = np.random.get_state()
        assert after[0] == numpy_state[0] and np.array_equal(after[1], numpy_state[1]) and after[2:] == numpy_state[2:], name
        assert torch.equal(torch.get_rng_state(), torch_state), name
        assert pyplot.get_fignums() == [user_figure.number], name
    pyplot.close(user_figure)
