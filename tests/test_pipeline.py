"""The pipeline layer: per-tile steps as plain values in → arrays out, and the loop around them."""

import dataclasses
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

    from aid_xai_plugin.core.pipelines.explain import ExplainOutputs, ExplainRequest, ExplainSpec, explain_raster

    path = str(tmp_path / "mosaic.tif")
    make_scene_mosaic(path, rows=2, cols=3, scene_px=64, seed=4)
    settings = ExplainSettings(masker="blur(16,16)", max_evals=60, batch_size=32)

    def run(name, progress=None):
        outputs = ExplainOutputs(shap_raster=str(tmp_path / f"{name}.tif"))
        explain_raster(ExplainSpec(path, synthetic_model, TilingOptions(), ExplainRequest(top_k=1), settings, outputs, engine="exact"), progress)
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


def _replaced(spec, name, value):
    """`spec` with the field `name` ('part.field' for a nested dataclass's) set to `value`."""
    head, _, rest = name.partition(".")
    return dataclasses.replace(spec, **{head: _replaced(getattr(spec, head), rest, value) if rest else value})


def _other(value):
    """Another value of the same kind (a run would refuse some of them; a key need not)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, (tuple, list)):
        return type(value)([*value, 1])
    if value is None:
        return (1,)
    if dataclasses.is_dataclass(value):  # a resolved BandScaling
        return dataclasses.replace(value, description=value.description + "x")
    raise AssertionError(f"no other value for {value!r}")


def test_every_field_that_can_change_values_changes_the_resume_key(tmp_path, synthetic_model):
    """The key is built from ExplainSpec's own fields, so a field added later is in it unasked: every
    field but those NOT_IN_RESUME_KEY names (output paths and format, where tiles are computed, the tile limit)
    changes it, a field the run resolves by what it resolved to (the model by its content, 'auto' by
    the device chosen, the features by the tiles they select); a value with no stable form (a callable
    nobody resolved) is refused rather than keyed by its address."""
    import shutil

    from aid_xai_plugin.core.pipelines.checkpoint import run_key, spec_fields
    from aid_xai_plugin.core.pipelines.explain import NOT_IN_RESUME_KEY, ExplainOutputs, ExplainRequest, ExplainSpec, resolved_fields, resume_key

    path = str(tmp_path / "mosaic.tif")
    make_scene_mosaic(path, rows=1, cols=2, scene_px=64, seed=2)
    spec = ExplainSpec(path, synthetic_model, TilingOptions(), ExplainRequest(top_k=1), ExplainSettings(), ExplainOutputs(shap_raster=str(tmp_path / "shap.tif")), device="cpu")
    source = TileSource(path, synthetic_model, spec.tiling, "cpu")
    windows = [tile.window for tile in source.grid.tiles()]
    resolved = resolved_fields(spec, source, windows)
    key = resume_key(spec, source, windows)
    fields = spec_fields(spec)
    assert set(resolved) <= set(fields) and len(fields) > 20
    for name, value in fields.items():
        if name in resolved:
            continue  # keyed by what it resolved to: below
        changed = resume_key(_replaced(spec, name, _other(value)), source, windows)
        if any(name == part or name.startswith(part + ".") for part in NOT_IN_RESUME_KEY):
            assert changed == key, name
        else:
            assert changed != key, name
    for name, value in resolved.items():
        assert run_key(spec, NOT_IN_RESUME_KEY, dict(resolved, **{name: _other(value)})) != key, name
    assert resume_key(spec, source, windows[1:]) != key  # other features: other tiles
    assert resume_key(_replaced(spec, "tiling.bands", "1,2,3"), source, windows) == key  # the model's band order, named
    assert resume_key(dataclasses.replace(spec, device="auto"), source, windows) == key  # resolved to the CPU here

    copy = str(tmp_path / "copy.aidx.pt")
    shutil.copyfile(synthetic_model, copy)  # the same model elsewhere resumes
    assert resume_key(dataclasses.replace(spec, model=copy), TileSource(path, copy, spec.tiling, "cpu"), windows) == key
    assert resume_key(spec, TileSource(path, synthetic_model, TilingOptions(scaling="percentile(1,99)"), "cpu"), windows) != key
    make_scene_mosaic(path, rows=1, cols=2, scene_px=64, seed=3)  # rewritten in place
    assert resume_key(spec, source, windows) != key
    with pytest.raises(TypeError, match="no stable value for a resume key"):
        run_key(dataclasses.replace(spec, request=ExplainRequest(tile_selector=lambda corners: [])))
