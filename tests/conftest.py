"""Shared fixtures: the real QGIS Processing framework with the AID-XAI provider, and a small model
trained once per session on synthetic scenes. The qgis_process runners live in helpers.py (shared with
the benchmarks and the demo) and are re-exported here.

Also the run's rules: in CI (CI=true) a test may skip only when the project's shared data is missing
(its reason starts with SHARED_DATA_MISSING), any other skip fails; and every test has a time limit.
"""

import os
from collections import defaultdict

import pytest
from osgeo import gdal

pytest.register_assert_rewrite("helpers")
from helpers import QGIS_PROCESS, ROOT, hang_limit, run_algorithm_json, run_qgis_process  # noqa: E402,F401 - re-exported: tests import them from conftest

# The tests' own GDAL calls raise, as GDAL 4 will by default. The plugin sets its mode around its
# own calls and leaves this one alone (test_algorithms_leave_gdal_exception_mode_as_found); the
# qgis_process runs below check that it never relies on the process-wide mode.
gdal.UseExceptions()

AID150 = os.path.abspath(os.path.join(ROOT, "..", "shared", "aid150"))

# `make test-install` alone runs the full dependency install (0.4-3.2 GB of downloads), not `make test`.
collect_ignore = [] if os.environ.get("AID_XAI_FULL_INSTALL") == "1" else ["test_full_install.py"]
SHARED_DATA_MISSING = "the project's shared data is missing:"  # the one skip reason CI allows

requires_aid150 = pytest.mark.skipif(
    not os.path.isdir(AID150), reason=f"{SHARED_DATA_MISSING} real AID images not found at {AID150}"
)

# A hung test ends the run with every thread's stack, well inside CI's 90 minutes: pytest-timeout's
# thread method (pytest.ini) dumps the stacks and exits. Its signal method would raise inside the test
# instead, which a hang in C code (GDAL, torch, Qt, a Dask lock) never returns to, and which hypothesis
# would catch as a failing example and replay without a time limit.
TEST_TIME_LIMIT_S = 900  # set here, where the slowest test takes about 400 s; stretched by hang_limit


def pytest_configure(config):
    if in_ci() and not config.pluginmanager.hasplugin("timeout"):
        raise pytest.UsageError("pytest-timeout is not installed (requirements-dev.txt): CI runs every test with a time limit.")


def pytest_collection_modifyitems(config, items):
    """Each test's time limit: TEST_TIME_LIMIT_S stretched to this machine's speed, unless --timeout,
    PYTEST_TIMEOUT or the test's own timeout mark sets one."""
    if not config.pluginmanager.hasplugin("timeout") or config.getoption("timeout") is not None or os.environ.get("PYTEST_TIMEOUT"):
        return
    limit = hang_limit(TEST_TIME_LIMIT_S)
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(limit))


def in_ci():
    return os.environ.get("CI") == "true"


def fail_skips_in_ci(report):
    """In CI every dependency is installed and the tests run as root: a skip that does not name the
    shared data is a missing dependency, and fails instead of passing unseen."""
    if not (report.skipped and in_ci()) or hasattr(report, "wasxfail"):
        return report
    reason = (report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)).removeprefix("Skipped: ")
    if reason.startswith(SHARED_DATA_MISSING):
        return report
    report.outcome = "failed"
    report.longrepr = f"Skipped in CI (CI=true), where only tests that need the project's shared data may skip: {reason}"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    return fail_skips_in_ci((yield))


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    return fail_skips_in_ci((yield))


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
