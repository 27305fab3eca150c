"""The pipeline layer: per-tile steps as plain values in → arrays out, and the loop around them."""

import pickle
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from aid_xai_plugin.core.common.errors import Cancelled
from aid_xai_plugin.core.common.progress import Progress
from aid_xai_plugin.core.data.synthetic import make_scene_mosaic
from aid_xai_plugin.core.explain.engine import ExplainSettings
from aid_xai_plugin.core.pipelines.run import with_progress
from aid_xai_plugin.core.pipelines.steps import ExplainJob, TileExplainer
from aid_xai_plugin.core.pipelines.tiles import TileSource, TilingOptions

WORKER = """
import pickle, sys
from aid_xai_plugin.core.pipelines.steps import TileExplainer
job, window = pickle.loads(sys.stdin.buffer.read())
result, fraction = TileExplainer(job)(window)
sys.stdout.buffer.write(pickle.dumps(result.values))  # np.save can't write to a pipe on numpy 2
"""


def test_the_explain_step_runs_from_plain_values_in_another_process(tmp_path, synthetic_model):
    """A job pickles (no GDAL handle, no model object), and a fresh process that opens the raster and
    the model from its paths explains a tile exactly as this process does."""
    path = str(tmp_path / "mosaic.tif")
    make_scene_mosaic(path, rows=1, cols=2, scene_px=64, seed=2)
    source = TileSource(path, synthetic_model, TilingOptions(), "cpu")
    job = ExplainJob(source.inputs, synthetic_model, "cpu", "exact", ExplainSettings(masker="blur(16,16)", max_evals=60, batch_size=16), top_k=2)
    tile = next(source.grid.tiles())
    here, fraction = TileExplainer(job, source.classifier, source.reader)(tile.window)
    assert fraction == 1.0 and here.values.shape == (64, 64, 2)
    completed = subprocess.run([sys.executable, "-c", WORKER], input=pickle.dumps((job, tile.window)), capture_output=True, cwd=ROOT, check=True)
    there = pickle.loads(completed.stdout)
    np.testing.assert_array_equal(there, here.values)


def test_cancel_stops_the_loop_and_closes_what_it_reads_from():
    closed = []

    def tiles():
        try:
            yield from range(10)
        finally:
            closed.append(True)

    seen, checks = [], []
    progress = Progress(is_canceled=lambda: checks.append(1) or len(checks) > 3)
    with pytest.raises(Cancelled):
        for item in with_progress(tiles(), 10, progress):
            seen.append(item)
    assert seen == [0, 1, 2] and closed == [True]


def test_a_resumed_run_explains_damaged_checkpoint_tiles_again(tmp_path, synthetic_model):
    """A run cancelled after three finished tiles leaves them in its checkpoint; one is then truncated
    (a crash mid-write or a full disk) and a killed write's temporary is left beside them. The re-run
    reuses the two readable tiles, explains the damaged one again and gives the uninterrupted run's
    map bit for bit (exact engine)."""
    import os

    import rasterio

    from aid_xai_plugin.core.pipelines.explain import ExplainOutputs, ExplainRequest, explain_raster

    path = str(tmp_path / "mosaic.tif")
    make_scene_mosaic(path, rows=2, cols=3, scene_px=64, seed=4)
    settings = ExplainSettings(masker="blur(16,16)", max_evals=60, batch_size=32)

    def run(name, progress=None):
        outputs = ExplainOutputs(shap_raster=str(tmp_path / f"{name}.tif"))
        explain_raster(path, synthetic_model, TilingOptions(), ExplainRequest(top_k=1), settings, outputs, engine="exact", progress=progress)
        with rasterio.open(outputs.shap_raster) as raster:
            return raster.read()

    uninterrupted = run("whole")
    checkpoint = tmp_path / ".resumed.tif.resume"

    def finished_tiles():
        return sorted(name for name in os.listdir(checkpoint) if name.endswith(".npz") and not name.startswith("."))

    with pytest.raises(Cancelled):  # cancelled once three tiles are on disk: the checkpoint's own files are the barrier
        run("resumed", Progress(is_canceled=lambda: checkpoint.is_dir() and len(finished_tiles()) >= 3))
    tiles = finished_tiles()
    assert len(tiles) == 3
    damaged = checkpoint / tiles[1]
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    (checkpoint / f".{tiles[2][:-4]}.partial.npz").write_bytes(b"PK\x03\x04 killed mid-write")
    logs = []
    resumed = run("resumed", Progress(log=logs.append))
    np.testing.assert_array_equal(resumed, uninterrupted)
    assert any("1 tile(s) of the interrupted run's checkpoint could not be read back" in line for line in logs), logs
    assert any("2 of 6 tile(s) reused from its checkpoint, 4 to explain" in line for line in logs), logs
    assert not checkpoint.exists()
