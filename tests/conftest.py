"""Shared fixtures: the real QGIS Processing framework with the AID-XAI provider, and a small model
trained once per session on synthetic scenes. The qgis_process runners live in helpers.py (shared with
the benchmarks and the demo) and are re-exported here."""

import os
from collections import defaultdict

import pytest
from osgeo import gdal

pytest.register_assert_rewrite("helpers")
from helpers import QGIS_PROCESS, ROOT, run_algorithm_json, run_qgis_process  # noqa: E402,F401 - re-exported: tests import them from conftest

# The tests' own GDAL calls raise, as GDAL 4 will by default. The plugin sets its mode around its
# own calls and leaves this one alone (test_algorithms_leave_gdal_exception_mode_as_found); the
# qgis_process runs below check that it never relies on the process-wide mode.
gdal.UseExceptions()

AID150 = os.path.abspath(os.path.join(ROOT, "..", "shared", "aid150"))

requires_aid150 = pytest.mark.skipif(
    not os.path.isdir(AID150), reason=f"real AID images not found at {AID150} (only in the project's shared data)"
)


_REGISTERED = []  # QGIS's registry keeps providers by pointer: hold each for the session, or it is deleted


@pytest.fixture
def aid_xai_provider(qgis_app, qgis_processing):
    """The provider registered in the real processing registry, as initProcessing() does (again if a
    test unloaded the plugin)."""
    from qgis.core import QgsApplication

    from aid_xai_plugin.provider import AidXaiProvider

    registry = QgsApplication.processingRegistry()
    provider = registry.providerById("aid_xai")
    if provider is None:
        provider = AidXaiProvider()
        registry.addProvider(provider)
        _REGISTERED.append(provider)
    return provider


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory):
    from aid_xai_plugin.core.data.synthetic import make_scene_folder

    folder = tmp_path_factory.mktemp("synthetic_scenes")
    make_scene_folder(str(folder), per_class=40, size=64, seed=1)
    return str(folder)


@pytest.fixture(scope="session")
def synthetic_model(tmp_path_factory, synthetic_dataset):
    """A Net trained on the synthetic scenes at 64×64 (seconds on 2 cores); path of the model file."""
    from aid_xai_plugin.core.ml.training import TrainingConfig, train_model

    path = str(tmp_path_factory.mktemp("model") / "synthetic.aidx.pt")
    train_model(TrainingConfig(dataset=synthetic_dataset, output=path, input_size=64, epochs=6, batch_size=16, seed=0, augment=True))
    return path


_SECONDS_PER_FILE = defaultdict(float)


def pytest_runtest_logreport(report):
    _SECONDS_PER_FILE[report.location[0]] += report.duration  # set-up, call and teardown alike


def pytest_terminal_summary(terminalreporter):
    """The slowest test files, whole (pytest's --durations lists single tests): where CI's time goes."""
    slowest = sorted(_SECONDS_PER_FILE.items(), key=lambda item: -item[1])[:5]
    if slowest:
        terminalreporter.write_sep("=", "slowest test files")
        for path, seconds in slowest:
            terminalreporter.write_line(f"{seconds:8.1f} s  {path}")
