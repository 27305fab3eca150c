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
