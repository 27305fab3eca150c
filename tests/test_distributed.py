"""Explain and classify on a real Dask cluster (a LocalCluster of processes, and a scheduler with
workers started as separate processes on 127.0.0.1) give a local run's outputs, survive a killed
worker, cancel cleanly, fail clearly; and an explain run killed midway resumes from its checkpoint."""

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import rasterio
from conftest import ROOT
from helpers import hang_limit, random_net_model_file
from numerics import assert_float32_outputs, tile_scores

from aid_xai_plugin.core.common.errors import AidXaiError, Cancelled
from aid_xai_plugin.core.common.progress import Progress
from aid_xai_plugin.core.data.synthetic import SYNTHETIC_CLASSES, make_scene_mosaic
from aid_xai_plugin.core.explain.engine import ExplainSettings
from aid_xai_plugin.core.pipelines.classify import ClassifyOutputs, classify_raster
from aid_xai_plugin.core.pipelines.execution import CANCEL_CHECK_S, DaskSettings, dask_client, run_ordered
from aid_xai_plugin.core.pipelines.explain import ExplainOutputs, ExplainRequest, ExplainSpec, explain_raster
from aid_xai_plugin.core.pipelines.tiles import TilingOptions

pytestmark = pytest.mark.skipif(importlib.util.find_spec("distributed") is None, reason="needs the 'distributed' package (requirements.txt)")

SETTINGS = ExplainSettings(masker="blur(16,16)", max_evals=150, batch_size=64, seed=2)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 2×4-scene mosaic and a random-weight Net at 64 px (what the cluster explains)."""
    folder = tmp_path_factory.mktemp("distributed")
    raster, model = str(folder / "mosaic.tif"), str(folder / "net.aidx.pt")
    make_scene_mosaic(raster, rows=2, cols=4, scene_px=64, seed=5)
    random_net_model_file(model, 64, list(SYNTHETIC_CLASSES), logit_scale=60.0)
    return raster, model


def explain(scene, folder, name, progress=None, **execution):
    raster, model = scene
    outputs = ExplainOutputs(str(folder / f"{name}.tif"), str(folder / f"{name}.gpkg"))
    explain_raster(ExplainSpec(raster, model, TilingOptions(), ExplainRequest(top_k=2), SETTINGS, outputs, engine="exact", device="cpu", **execution), progress)
    return read(outputs.shap_raster)


def read(path):
    with rasterio.open(path) as raster:
        return raster.read()


@pytest.fixture(scope="module")
def local_run(scene, tmp_path_factory):
    return explain(scene, tmp_path_factory.mktemp("local"), "local")


@pytest.mark.numerics
def test_a_local_cluster_gives_the_local_outputs(scene, local_run, tmp_path):
    """Exact engine: bit for bit. Classify: the same classes; probabilities to float32 rounding (the
    workers' torch runs one thread, the local run two, which reorders sums), each within 4× plain
    torch's own float32 error against float64 (tests/numerics.py)."""
    logs = []
    on_cluster = explain(scene, tmp_path, "dask", Progress(log=logs.append), execution="dask", dask=DaskSettings(workers=2, threads=1))
    np.testing.assert_array_equal(on_cluster, local_run)
    assert any("local cluster of 2 worker process(es)" in line for line in logs)
    raster, model = scene
    for mode in ("local", "dask"):
        classify_raster(raster, model, TilingOptions(), ClassifyOutputs(str(tmp_path / f"c_{mode}.tif"), str(tmp_path / f"p_{mode}.tif")), device="cpu", execution=mode, dask=DaskSettings(workers=2))
    np.testing.assert_array_equal(read(tmp_path / "c_dask.tif"), read(tmp_path / "c_local.tif"))
    reference, yardstick = tile_scores(raster, model)
    assert_float32_outputs({"dask": read(tmp_path / "p_dask.tif"), "local": read(tmp_path / "p_local.tif")}, reference, yardstick, "classify's probabilities")


def test_local_workers_start_with_this_python_not_the_host_binary(scene, local_run, tmp_path):
    """Inside QGIS the interpreter multiprocessing would spawn can be the QGIS binary (QGIS issue
    #45646): here it is a program that can't run Python, and the run must still work and leave it
    as it was."""
    import multiprocessing.spawn

    previous = multiprocessing.spawn.get_executable()
    multiprocessing.spawn.set_executable("/bin/false")
    try:
        on_cluster = explain(scene, tmp_path, "host_binary", execution="dask", dask=DaskSettings(workers=1))
        assert os.fsdecode(multiprocessing.spawn.get_executable()) == "/bin/false"  # given back as found
    finally:
        multiprocessing.spawn.set_executable(previous)
    np.testing.assert_array_equal(on_cluster, local_run)


def scheduler_address(scheduler, scheduler_file):
    """The address the scheduler writes to its scheduler file once it listens on the port it chose."""
    deadline = time.monotonic() + hang_limit(60)
    while True:
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):  # written in place: may be half there
            with open(scheduler_file, encoding="utf-8") as stream:
                return json.load(stream)["address"]
        assert scheduler.poll() is None, f"the scheduler exited with status {scheduler.returncode}"
        assert time.monotonic() < deadline, "the scheduler wrote no address"
        time.sleep(0.05)


@pytest.fixture
def cluster_processes(tmp_path):
    """`dask scheduler` (on a port it picks itself: a port found free beforehand may be taken before
    the scheduler binds it) and two `dask worker`s as separate processes on 127.0.0.1 (the code path
    of a cluster on other machines); yields (address, [worker processes])."""
    environment = dict(os.environ, PYTHONPATH=ROOT)
    scheduler_file = tmp_path / "scheduler.json"
    processes = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file", str(scheduler_file)], env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        address = scheduler_address(processes[0], scheduler_file)
        workers = [
            subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1", "--nworkers", "1", "--no-nanny", "--no-dashboard", "--local-directory", str(tmp_path / f"w{i}")], env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for i in range(2)
        ]
        processes += workers
        from distributed import Client

        with Client(address, timeout=hang_limit(60), set_as_default=False) as client:
            client.wait_for_workers(2, timeout=hang_limit(120))
        yield address, workers
    finally:
        for process in reversed(processes):
            process.kill()
            process.wait()


def test_scheduler_and_worker_processes_give_the_local_outputs_even_when_a_worker_dies(scene, local_run, tmp_path, cluster_processes):
    address, workers = cluster_processes
    assert np.array_equal(explain(scene, tmp_path, "remote", execution="dask", dask=DaskSettings(scheduler=address)), local_run)

    def kill_a_worker_once(percent):  # after the first tile, one worker dies (SIGKILL)
        if percent > 0 and workers[0].poll() is None:
            workers[0].send_signal(signal.SIGKILL)

    survived = explain(scene, tmp_path, "killed", Progress(set_progress=kill_a_worker_once), execution="dask", dask=DaskSettings(scheduler=address))
    assert workers[0].poll() is not None  # it did die mid-run
    np.testing.assert_array_equal(survived, local_run)


def test_cancel_on_the_cluster_leaves_no_output(scene, tmp_path):
    checks = []
    progress = Progress(is_canceled=lambda: checks.append(1) or len(checks) > 3)
    with pytest.raises(Cancelled):
        explain(scene, tmp_path, "cancelled", progress, execution="dask", dask=DaskSettings(workers=1))
    assert not any(name.startswith("cancelled") for name in os.listdir(tmp_path))  # only the hidden checkpoint


def forgotten(client):
    """Wait until the scheduler holds no task (none is wanted any more); False after the hang limit."""
    deadline = time.monotonic() + hang_limit(10)
    while client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_results_come_in_order_and_cancel_ends_the_wait_for_a_running_task():
    """Results come in submission order whatever order the tasks finish in, none is held once handed
    over, and a task's error is raised as it is. Cancel pressed a second into tasks that each take
    `task_s`: the wait ends within a check interval, not when the task ends, and every task still
    outstanding (the running one too) is cancelled."""

    def after(seconds, value):  # defined here: travels to the workers by value
        time.sleep(seconds)
        return value

    task_s = hang_limit(6)
    with dask_client(DaskSettings(workers=1, threads=2)) as client:
        assert list(run_ordered(client, after, [(0.6, "first"), (0.0, "second"), (0.3, "third")])) == ["first", "second", "third"]
        assert forgotten(client)
        with pytest.raises(ValueError, match="invalid literal for int"):
            list(run_ordered(client, int, [("1",), ("one",)]))
        pressed = threading.Event()
        threading.Timer(1.0, pressed.set).start()
        start = time.monotonic()
        with pytest.raises(Cancelled):
            list(run_ordered(client, after, [(task_s, None)] * 3, Progress(is_canceled=pressed.is_set)))
        waited = time.monotonic() - start
        assert waited < 1.0 + CANCEL_CHECK_S + hang_limit(1.0) < task_s, waited
        assert forgotten(client)


def test_an_unreachable_scheduler_is_a_clear_error_in_bounded_time(scene, tmp_path):
    start = time.monotonic()
    with pytest.raises(AidXaiError, match=r"Could not reach the Dask scheduler at tcp://127.0.0.1:9 within 3 s"):
        explain(scene, tmp_path, "unreachable", execution="dask", dask=DaskSettings(scheduler="tcp://127.0.0.1:9", timeout=3))
    assert time.monotonic() - start < hang_limit(30)  # 3 s to give up, then the clean-up
    assert not any(name.startswith("unreachable") for name in os.listdir(tmp_path))


def test_a_raster_the_workers_cannot_read_is_named(scene, tmp_path):
    """A /vsimem/ raster lives only in the submitting process: the workers must say so."""
    from osgeo import gdal

    raster, model = scene
    in_memory = "/vsimem/only_here.tif"
    gdal.Translate(in_memory, raster)
    try:
        with pytest.raises(AidXaiError, match=r"Dask worker tcp://127\.0\.0\.1:\d+ cannot open the raster '/vsimem/only_here.tif'"):
            explain_raster(ExplainSpec(in_memory, model, TilingOptions(), ExplainRequest(top_k=1), SETTINGS, ExplainOutputs(str(tmp_path / "s.tif")), engine="exact", device="cpu", execution="dask", dask=DaskSettings(workers=1)))
    finally:
        gdal.Unlink(in_memory)
    assert not os.path.exists(tmp_path / "s.tif")


# An explain run that stops once `tiles` tiles are in its checkpoint (the files it writes anyway, before
# it reports progress) and says so with the barrier file, then waits to be killed: killed there, it has
# finished exactly that many tiles, however fast the machine.
KILLABLE_RUN = """
import os, signal, sys
from aid_xai_plugin.core.common.progress import Progress
from aid_xai_plugin.core.explain.engine import ExplainSettings
from aid_xai_plugin.core.pipelines.explain import ExplainOutputs, ExplainRequest, ExplainSpec, explain_raster
from aid_xai_plugin.core.pipelines.tiles import TilingOptions
raster, model, output, max_evals, tiles, barrier = sys.argv[1:7]
checkpoint = os.path.join(os.path.dirname(output), "." + os.path.basename(output) + ".resume")

def stop_when_checkpointed(percent):
    if os.path.isdir(checkpoint) and len([name for name in os.listdir(checkpoint) if name.endswith(".npz") and not name.startswith(".")]) >= int(tiles):
        open(barrier, "w").close()
        signal.pause()

settings = ExplainSettings(masker="blur(16,16)", max_evals=int(max_evals), batch_size=64, seed=2)
explain_raster(ExplainSpec(raster, model, TilingOptions(), ExplainRequest(top_k=2), settings, ExplainOutputs(output, output[:-4] + ".gpkg"), engine="exact", device="cpu"), Progress(set_progress=stop_when_checkpointed))
"""


def kill_after_checkpointing(scene, output, max_evals, tiles):
    """Run KILLABLE_RUN until `tiles` tiles are checkpointed, then SIGKILL it."""
    raster, model = scene
    barrier = output + ".stopped"
    run = subprocess.Popen([sys.executable, "-c", KILLABLE_RUN, raster, model, output, str(max_evals), str(tiles), barrier], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        deadline = time.monotonic() + hang_limit(300)
        while not os.path.exists(barrier):
            assert run.poll() is None, f"the run ended (status {run.returncode}) before {tiles} tile(s) were checkpointed"
            assert time.monotonic() < deadline, f"{tiles} tile(s) were not checkpointed in time"
            time.sleep(0.05)
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()
    os.remove(barrier)


def finished_tiles(checkpoint):
    return len([name for name in os.listdir(checkpoint) if name.endswith(".npz") and not name.startswith(".")])


def test_a_killed_run_resumes_from_its_checkpoint_with_identical_outputs(scene, local_run, tmp_path):
    output = str(tmp_path / "resumed.tif")
    checkpoint = tmp_path / ".resumed.tif.resume"
    kill_after_checkpointing(scene, output, SETTINGS.max_evals, 3)
    assert not os.path.exists(output)  # killed: nothing at the output path
    assert finished_tiles(checkpoint) == 3

    logs = []
    resumed = explain(scene, tmp_path, "resumed", Progress(log=logs.append))
    np.testing.assert_array_equal(resumed, local_run)
    assert any("3 of 8 tile(s) reused" in line for line in logs), logs
    assert not checkpoint.exists()  # a completed run removes its checkpoint


def test_other_settings_never_reuse_stale_tiles(scene, tmp_path):
    kill_after_checkpointing(scene, str(tmp_path / "changed.tif"), 40, 1)
    assert finished_tiles(tmp_path / ".changed.tif.resume") == 1
    logs = []
    explain(scene, tmp_path, "changed", Progress(log=logs.append))  # max_evals 150, not 40
    assert any("are not reused" in line for line in logs) and not any("reused from its checkpoint" in line for line in logs)


def test_a_worker_that_reads_another_model_refuses_the_job(tmp_path):
    """The model file is replaced once this process has loaded it and the cluster is up, before any
    worker opens it (as a worker machine with an older copy would see it): the workers compare its
    SHA-256 with the run's and refuse, naming both; nothing is left at the output path."""
    raster, model = str(tmp_path / "mosaic.tif"), str(tmp_path / "net.aidx.pt")
    make_scene_mosaic(raster, rows=1, cols=2, scene_px=64, seed=5)
    random_net_model_file(model, 64, list(SYNTHETIC_CLASSES), seed=0)

    def replace_the_model(line):
        if line.startswith("Dask: local cluster"):
            random_net_model_file(model, 64, list(SYNTHETIC_CLASSES), seed=1)

    outputs = ExplainOutputs(str(tmp_path / "shap.tif"))
    with pytest.raises(AidXaiError, match=r"Dask worker .* reads another model at '.*net\.aidx\.pt' \(SHA-256 [0-9a-f]{12}…\) than the run loaded \([0-9a-f]{12}…\)"):
        explain_raster(ExplainSpec(raster, model, TilingOptions(), ExplainRequest(top_k=1), SETTINGS, outputs, engine="exact", device="cpu", execution="dask", dask=DaskSettings(workers=1)), Progress(log=replace_the_model))
    assert not os.path.exists(outputs.shap_raster)
