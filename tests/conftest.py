"""Shared fixtures: the real QGIS Processing framework with the AID-XAI provider, qgis_process runs,
and a small model trained once per session on synthetic scenes."""

import json
import os
import subprocess

import pytest
from osgeo import gdal

# The tests' own GDAL calls raise, as GDAL 4 will by default. The plugin sets its mode around its
# own calls and leaves this one alone (test_algorithms_leave_gdal_exception_mode_as_found); the
# qgis_process runs below check that it never relies on the process-wide mode.
gdal.UseExceptions()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QGIS_PROCESS = os.path.join(ROOT, "bin", "qgis_process")
AID150 = os.path.abspath(os.path.join(ROOT, "..", "shared", "aid150"))

requires_aid150 = pytest.mark.skipif(
    not os.path.isdir(AID150), reason=f"real AID images not found at {AID150} (only in the project's shared data)"
)


@pytest.fixture(scope="session")
def aid_xai_provider(qgis_app, qgis_processing):
    """The provider registered in the real processing registry, as initProcessing() does."""
    from qgis.core import QgsApplication

    from aid_xai_plugin.provider import AidXaiProvider

    registry = QgsApplication.processingRegistry()
    provider = registry.providerById("aid_xai")
    if provider is None:
        provider = AidXaiProvider()
        registry.addProvider(provider)
    return provider


def run_qgis_process(*args, env=None, timeout=600):
    """Run bin/qgis_process with `args`; returns the CompletedProcess (text)."""
    return subprocess.run(
        [QGIS_PROCESS, *args], capture_output=True, text=True, env=env or os.environ.copy(), timeout=timeout, stdin=subprocess.DEVNULL
    )


def run_algorithm_json(algorithm, parameters):
    """`bin/qgis_process --json run algorithm -- K=V ...`; returns the parsed JSON, fails with stderr."""
    args = ["--json", "run", algorithm, "--"] + [f"{key}={value}" for key, value in parameters.items()]
    completed = run_qgis_process(*args)
    assert completed.returncode == 0, f"qgis_process failed ({completed.returncode}):\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
    assert "gdal.UseExceptions()" not in completed.stderr, f"the plugin made GDAL calls outside gdal_exceptions():\n{completed.stderr[-3000:]}"
    return json.loads(completed.stdout[completed.stdout.index("{") :])


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
