"""A hostile environment: read-only folders, a file-size limit, a folder where a file should go, two runs
writing the same outputs at once, and runs killed with SIGTERM/SIGKILL. Each ends in a clear message or
a complete output — never a partial file at the output path, and the next run cleans up what a killed
one left behind (but never the temporary of a writer that still runs).

The runs that need their own process limits or get killed are Python subprocesses running the core's
classify_raster (seconds, where qgis_process would start QGIS each time). A run that must be caught
mid-write stops after its first batch, with every output open, and says so with a barrier file: the
test acts on it there, however fast the machine."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from helpers import ROOT, hang_limit
from osgeo import gdal

from aid_xai_plugin.core.common.atomic import atomic_output, remove_stale_temporaries
from aid_xai_plugin.core.common.errors import AidXaiError
from aid_xai_plugin.core.data.synthetic import make_scene_mosaic
from aid_xai_plugin.core.pipelines.classify import ClassifyOutputs, classify_raster
from aid_xai_plugin.core.pipelines.tiles import TilingOptions

RUNNER = textwrap.dedent(
    """
    import json, os, resource, signal, sys
    spec = json.loads(sys.argv[1])
    if spec.get("file_size_limit"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (spec["file_size_limit"], spec["file_size_limit"]))
    if spec.get("uid"):
        os.setgid(spec["uid"]); os.setuid(spec["uid"])
    from aid_xai_plugin.core.common.errors import AidXaiError
    from aid_xai_plugin.core.common.progress import Progress
    from aid_xai_plugin.core.pipelines.classify import ClassifyOutputs, classify_raster
    from aid_xai_plugin.core.pipelines.tiles import TilingOptions
    outputs = ClassifyOutputs(*spec["outputs"])
    progress = None
    if spec.get("stop_file"):
        def stop(percent):  # after the first batch, every output open: say so, wait to be killed
            open(spec["stop_file"], "w").close()
            signal.pause()
        progress = Progress(set_progress=stop)
    print("STARTED", os.getpid(), flush=True)
    try:
        result = classify_raster(spec["raster"], spec["model"], TilingOptions(**spec["options"]), outputs, batch_size=spec.get("batch_size", 32), device="cpu", progress=progress)
    except AidXaiError as error:
        print("AIDXAI_ERROR", error, flush=True)
        sys.exit(3)
    print("DONE", result.classified, flush=True)
    """
)


def runner_command(raster, model, outputs, options=None, **extra):
    spec = dict(raster=raster, model=model, outputs=list(outputs), options=options or {}, **extra)
    return [sys.executable, "-c", RUNNER, json.dumps(spec)]


def runner_env():
    return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), PYTHONDONTWRITEBYTECODE="1")


def run_runner(*args, timeout=300, **kwargs):
    return subprocess.run(runner_command(*args, **kwargs), capture_output=True, text=True, env=runner_env(), timeout=hang_limit(timeout), cwd=ROOT)


def start_runner(*args, **kwargs):
    return subprocess.Popen(runner_command(*args, **kwargs), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=runner_env(), cwd=ROOT)


def visible_files(folder):
    """The outputs, without GDAL's .aux.xml (the class raster's category names live there)."""
    return sorted(name for name in os.listdir(folder) if not name.startswith(".") and not name.endswith(".aux.xml"))


def partial_files(folder):
    return sorted(name for name in os.listdir(folder) if ".partial" in name)


def writing(folder):
    """The outputs that have a temporary file in `folder` (`.<stem>.<id>.<pid>-<host>.partial.<ext>`)."""
    return {name.split(".")[1] for name in partial_files(folder)}


@contextlib.contextmanager
def stopped_runner(raster, model, outputs, stop_file, timeout=120):
    """A run (its Popen) stopped after its first batch, writing its outputs, until it is killed (at
    the latest when the block ends)."""
    process = start_runner(raster, model, outputs, LONG_RUN, stop_file=stop_file)
    try:
        deadline = time.monotonic() + hang_limit(timeout)
        while not os.path.exists(stop_file):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the run did not finish its first batch in time"
            time.sleep(0.05)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=hang_limit(60))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 2×3-scene mosaic: a run takes about a second."""
    path = str(tmp_path_factory.mktemp("hostile") / "small.tif")
    make_scene_mosaic(path, rows=2, cols=3, scene_px=64, pixel_size=2.0, seed=7)
    return path


LONG_RUN = {"tile_size": 8}  # 384 tiles of the small mosaic: 12 batches, so the first is not the last


def output_set(folder, stem=""):
    return [os.path.join(folder, f"{stem}classes.tif"), os.path.join(folder, f"{stem}probabilities.tif"), os.path.join(folder, f"{stem}tiles.gpkg")]


# --- read-only folder, output that is a folder --------------------------------------------------


@contextlib.contextmanager
def read_only_folder(path):
    """A read-only tmpfs mounted at `path` (root ignores file modes, not a read-only mount)."""
    os.makedirs(path, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", path], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here ({mounted.stderr.strip()}); covered by the unprivileged-user test")
    try:
        yield path
    finally:
        subprocess.run(["umount", path], capture_output=True)


def test_output_in_a_read_only_folder_is_refused_before_any_work(small, synthetic_model, tmp_path):
    with read_only_folder(str(tmp_path / "ro")) as folder:
        with pytest.raises(AidXaiError) as raised:
            classify_raster(small, synthetic_model, TilingOptions(), ClassifyOutputs(*output_set(folder)))
        assert "is not writable (read-only or no permission)" in str(raised.value) and "Choose a writable location" in str(raised.value)
        assert os.listdir(folder) == []


def test_a_folder_the_user_may_not_write_gives_a_clear_error(small, synthetic_model, tmp_path):
    """As an unprivileged user (root ignores permissions), in a subprocess that drops its privileges."""
    if os.getuid() != 0:
        pytest.skip("needs root to switch to the unprivileged user 65534")
    folder = tmp_path / "locked"
    folder.mkdir()
    os.chmod(folder, 0o555)
    os.chmod(tmp_path, 0o755)
    model = str(tmp_path / "model.aidx.pt")
    with open(synthetic_model, "rb") as source, open(model, "wb") as copy:
        copy.write(source.read())
    os.chmod(model, 0o644)
    raster = str(tmp_path / "small.tif")
    gdal.Translate(raster, small)
    os.chmod(raster, 0o644)
    for ancestor in (os.path.dirname(str(tmp_path)), os.path.dirname(os.path.dirname(str(tmp_path)))):  # pytest's 0700 folders
        os.chmod(ancestor, os.stat(ancestor).st_mode | 0o005)
    completed = run_runner(raster, model, output_set(str(folder)), uid=65534)
    assert completed.returncode == 3, completed.stdout + completed.stderr[-3000:]
    assert "is not writable" in completed.stdout and "Traceback" not in completed.stderr
    assert os.listdir(folder) == []


def test_an_output_path_that_is_a_folder_is_refused(small, synthetic_model, tmp_path):
    (tmp_path / "classes.tif").mkdir()
    with pytest.raises(AidXaiError, match=r"is a folder; give a file name"):
        classify_raster(small, synthetic_model, TilingOptions(), ClassifyOutputs(class_raster=str(tmp_path / "classes.tif")))
    assert sorted(os.listdir(tmp_path)) == ["classes.tif"] and os.listdir(tmp_path / "classes.tif") == []


def test_a_folder_that_appears_at_the_output_path_during_the_run_is_a_clear_error(tmp_path):
    path = str(tmp_path / "out.tif")
    with pytest.raises(AidXaiError, match=r"Cannot write the output .*out\.tif.*(folder|directory)"):
        with atomic_output(path) as temporary:
            open(temporary, "wb").write(b"data")
            os.mkdir(path)  # e.g. another program made a folder there meanwhile
            open(os.path.join(path, "keep"), "w").close()
    assert os.listdir(tmp_path) == ["out.tif"] and os.listdir(path) == ["keep"]


# --- a nearly full file system ----------------------------------------------------------------


@pytest.mark.parametrize("outputs", ["rasters", "tile_layer"])
def test_a_file_size_limit_ends_in_a_clear_message_and_no_partial_file(small, synthetic_model, tmp_path, outputs):
    paths = output_set(str(tmp_path))
    if outputs == "rasters":
        paths[2] = None
    else:
        paths[0] = paths[1] = None
    completed = run_runner(small, synthetic_model, paths, {"tile_size": 4}, file_size_limit=24_000)
    text = completed.stdout + completed.stderr
    assert completed.returncode == 3, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    line = next(line for line in completed.stdout.splitlines() if line.startswith("AIDXAI_ERROR"))
    assert "Cannot write the output" in line and "file-size limit" in line and "Nothing was written there" in line, line
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)


# --- two runs writing the same outputs at once ---------------------------------------------------


def raster_fingerprint(path):
    dataset = gdal.Open(path)
    return dataset.ReadAsArray().tobytes(), dataset.GetMetadata().get("AIDXAI_SCALING")


def layer_fingerprint(path):
    from osgeo import ogr

    dataset = ogr.Open(path)
    return tuple(sorted((f["tile_id"], f["class_name"], round(f["probability"], 6)) for f in dataset.GetLayer(0)))


def test_two_runs_writing_the_same_outputs_end_with_one_complete_run_per_file(small, synthetic_model, tmp_path):
    """Each file at the end equals one complete run's file (last writer wins, per file), never a mix."""
    settings = [{"scaling": "percentile(2,98)"}, {"scaling": "minmax(0,400)"}]
    references = []
    for number, options in enumerate(settings):
        folder = tmp_path / f"reference{number}"
        folder.mkdir()
        completed = run_runner(small, synthetic_model, output_set(str(folder)), options)
        assert completed.returncode == 0, completed.stderr[-2000:]
        paths = output_set(str(folder))
        references.append((raster_fingerprint(paths[0]), raster_fingerprint(paths[1]), layer_fingerprint(paths[2])))
    assert references[0][1] != references[1][1]  # the two runs write different probabilities
    shared = tmp_path / "shared"
    shared.mkdir()
    for attempt in range(3):
        runs = [start_runner(small, synthetic_model, output_set(str(shared)), options) for options in settings]
        for run in runs:
            stdout, stderr = run.communicate(timeout=hang_limit(300))
            assert run.returncode == 0, stderr[-2000:]
        paths = output_set(str(shared))
        final = (raster_fingerprint(paths[0]), raster_fingerprint(paths[1]), layer_fingerprint(paths[2]))
        for index in range(3):
            assert final[index] in (references[0][index], references[1][index]), f"output {paths[index]} is a mix of runs"
        assert partial_files(shared) == [] and visible_files(shared) == ["classes.tif", "probabilities.tif", "tiles.gpkg"]


def test_an_old_sidecar_never_describes_a_new_output(tmp_path):
    """GDAL's .aux.xml (statistics) of an earlier file at the path goes when a new file without one
    replaces it: stale statistics would style the new raster wrongly."""
    path = str(tmp_path / "out.tif")
    with atomic_output(path) as temporary:
        gdal.Translate(temporary, _tiny_raster(tmp_path / "a.tif", 10))
        gdal.Info(temporary, stats=True)  # writes the temporary's .aux.xml, which moves with it
    assert os.path.exists(path + ".aux.xml")
    with atomic_output(path) as temporary:
        gdal.Translate(temporary, _tiny_raster(tmp_path / "b.tif", 200))
    assert not os.path.exists(path + ".aux.xml")
    written = gdal.Open(path)
    assert written.ReadAsArray()[0, 0] == 200


def _tiny_raster(path, value):
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), 4, 4, 1, gdal.GDT_Byte)
    dataset.GetRasterBand(1).WriteArray(np.full((4, 4), value, np.uint8))
    dataset = None
    return str(path)


# --- killed runs and stale temporaries -----------------------------------------------------------


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_killed_run_leaves_no_output_and_the_next_run_removes_its_temporaries(small, synthetic_model, tmp_path, tmp_path_factory, signal_number):
    paths = output_set(str(tmp_path))
    with stopped_runner(small, synthetic_model, paths, str(tmp_path_factory.mktemp("barrier") / "stopped")) as run:
        assert writing(tmp_path) == {"classes", "probabilities", "tiles"}
        run.send_signal(signal_number)
        run.communicate(timeout=hang_limit(60))
    assert run.returncode == -signal_number
    assert not any(os.path.exists(path) for path in paths)  # nothing at the output paths
    left = partial_files(tmp_path)
    assert left, "a killed writer leaves its temporaries (nothing runs in a killed process)"
    assert all(f".{run.pid}-" in name for name in left), left  # each names its writer
    completed = run_runner(small, synthetic_model, paths)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert partial_files(tmp_path) == [], "the next run removes the stale temporaries of its outputs"
    assert visible_files(tmp_path) == ["classes.tif", "probabilities.tif", "tiles.gpkg"]


def test_a_running_writers_temporary_is_never_removed(small, synthetic_model, tmp_path, tmp_path_factory):
    long_paths = output_set(str(tmp_path))
    with stopped_runner(small, synthetic_model, long_paths, str(tmp_path_factory.mktemp("barrier") / "stopped")) as long_run:
        theirs = partial_files(tmp_path)
        assert writing(tmp_path) == {"classes", "probabilities", "tiles"}
        short = run_runner(small, synthetic_model, long_paths)  # the same outputs, while the long run writes
        assert short.returncode == 0, short.stderr[-2000:]
        assert set(theirs) <= set(partial_files(tmp_path)), "a live writer's temporary was removed"
        assert long_run.poll() is None  # still stopped mid-write
    assert remove_stale_temporaries(long_paths[0]) and remove_stale_temporaries(long_paths[2])  # its writer is gone now
    assert not [name for name in partial_files(tmp_path) if "classes" in name or "tiles" in name]


def test_stale_temporaries_of_other_outputs_are_left_alone(tmp_path):
    dead_pid = _dead_pid()
    from aid_xai_plugin.core.common import atomic

    host = atomic._HOST
    mine = tmp_path / f".out.0123abcd.{dead_pid}-{host}.partial.tif"
    companion = tmp_path / f".out.0123abcd.{dead_pid}-{host}.partial.tif.aux.xml"
    other = tmp_path / f".other.0123abcd.{dead_pid}-{host}.partial.tif"
    elsewhere = tmp_path / f".out.0123abcd.{dead_pid}-ffffff.partial.tif"  # another host's writer: may still run
    for path in (mine, companion, other, elsewhere):
        path.write_bytes(b"x")
    removed = remove_stale_temporaries(str(tmp_path / "out.tif"))
    assert sorted(map(os.path.basename, removed)) == sorted([mine.name, companion.name])
    assert other.exists() and elsewhere.exists()


def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_running_out_of_memory_names_the_setting_to_lower():
    """torch's own CPU allocator failure (an allocation no machine can satisfy), not a made-up error."""
    import torch

    from aid_xai_plugin.core.common.failures import out_of_memory_as_error

    with pytest.raises(AidXaiError) as raised:
        with out_of_memory_as_error("classifying on cpu", "BATCH_SIZE (now 64) or TILE_SIZE"):
            torch.empty(1 << 60, dtype=torch.uint8)
    message = str(raised.value)
    assert message.startswith("Out of memory on this computer while classifying on cpu") and "Lower BATCH_SIZE (now 64) or TILE_SIZE" in message
    assert "\n" not in message
    with pytest.raises(ValueError, match="not about memory"):  # anything else passes through untouched
        with out_of_memory_as_error("classifying", "BATCH_SIZE"):
            raise ValueError("not about memory")
