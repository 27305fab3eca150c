"""Many tiles in flight: `explain_tiles` on several tiles gives each tile what explaining it alone
gives — the exact engine bit for bit on a CPU (its model calls stay one tile's), and, with the
tiles' rounds merged into one model call (as on a GPU) or through the fast engine's evaluators, the
float64 reference's values up to float32 rounding (tests/numerics.py) — and an explain run with
TILES_IN_FLIGHT writes what a one-at-a-time run writes, resumes and runs on Dask."""

import dataclasses

import numpy as np
import pytest
import rasterio
import torch
from helpers import random_net_classifier, random_tile, random_torchvision_classifier, run_algorithm_json
from numerics import assert_efficient, assert_within_float32_rounding, float64_yardstick, recorded_traversals
from osgeo import ogr

from aid_xai_plugin.core.common.errors import AidXaiError, Cancelled
from aid_xai_plugin.core.common.progress import Progress
from aid_xai_plugin.core.data.synthetic import make_scene_mosaic
from aid_xai_plugin.core.explain import region_evaluator
from aid_xai_plugin.core.explain.engine import ExplainSettings
from aid_xai_plugin.core.explain.exact_engine import ExactPartitionEngine, model_calls
from aid_xai_plugin.core.explain.fast_engine import FastPartitionEngine
from aid_xai_plugin.core.explain.in_flight import CPU_TILES_IN_FLIGHT, activation_bytes, tiles_in_flight
from aid_xai_plugin.core.pipelines.explain import ExplainOutputs, ExplainRequest, ExplainSpec, explain_raster
from aid_xai_plugin.core.pipelines.execution import DaskSettings
from aid_xai_plugin.core.pipelines.tiles import TilingOptions

NUM_CLASSES = 6


def tiles_and_classes(classifier, shape, count):
    """`count` different random tiles, each with its own top-3 classes (so the tiles in flight
    explain different outputs)."""
    tiles = [random_tile(shape, seed=10 + number) for number in range(count)]
    probabilities = classifier.predict_probabilities(np.stack(tiles))
    return tiles, [np.argsort(-row)[:3] for row in probabilities]


def net_case():
    return random_net_classifier(48, NUM_CLASSES, seed=4, logit_scale=40.0), (48, 48, 3)


def resnet_case():
    return random_torchvision_classifier("resnet18", 40, NUM_CLASSES, seed=4), (40, 40, 3)


CASES = {"net": net_case, "resnet18": resnet_case}


def test_model_calls_keep_each_tiles_chunks_unless_merged():
    tiles = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    assert model_calls(tiles, 4, merge_tiles=False) == [(0, 3), (3, 5), (5, 9), (9, 10)]
    assert model_calls(tiles, 4, merge_tiles=True) == [(0, 4), (4, 8), (8, 10)]
    assert model_calls(np.zeros(0, dtype=int), 4, False) == []


@pytest.mark.parametrize("case", sorted(CASES))
def test_exact_engine_with_tiles_in_flight_is_each_tile_alone_bit_for_bit(case):
    classifier, shape = CASES[case]()
    tiles, classes = tiles_and_classes(classifier, shape, 3)
    settings = ExplainSettings(masker="blur(12,12)", max_evals=700, batch_size=64, seed=3)
    together = ExactPartitionEngine().explain_tiles(tiles, classifier, classes, settings)
    for tile, indices, result in zip(tiles, classes, together):
        alone = ExactPartitionEngine().explain(tile, classifier, indices, settings)
        np.testing.assert_array_equal(result.class_indices, indices)
        for name in ("values", "base_values", "output_values"):
            np.testing.assert_array_equal(getattr(result, name), getattr(alone, name))
    assert not np.array_equal(together[0].values, together[1].values)  # three tiles, three explanations


@pytest.mark.numerics
@pytest.mark.parametrize("engine", ["exact-merged", "fast"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_tiles_in_flight_are_each_within_float32_rounding_of_their_float64_reference(case, engine):
    """Merged model calls (how a GPU runs the exact engine) and the fast engine's evaluators over
    all tiles' requests: each tile walks its own float64 traversal, every evaluation and value within
    ROUNDING_MULTIPLE × shap's own float32 error (tests/numerics.py), and adds up."""
    classifier, shape = CASES[case]()
    tiles, classes = tiles_and_classes(classifier, shape, 3)
    settings = ExplainSettings(masker="blur(12,12)", max_evals=500, batch_size=64, seed=3)
    explainer = ExactPartitionEngine(merge_tiles=True) if engine == "exact-merged" else FastPartitionEngine()
    with recorded_traversals() as traversals:
        results = explainer.explain_tiles(tiles, classifier, classes, settings)
    assert len(traversals) == len(tiles)
    if engine == "fast":
        assert explainer.plan_summary().startswith("incremental"), explainer.plan_summary()  # an incremental evaluator, not the exact fallback
    for tile, indices, result, traversal in zip(tiles, classes, results, traversals):
        yardstick = float64_yardstick(classifier, tile, indices, settings)
        assert_within_float32_rounding(result, traversal, yardstick, f"{engine} with 3 tiles in flight")
        assert_efficient(result, settings.max_evals)


@pytest.mark.numerics
def test_contexts_without_state_are_evaluated_from_their_own_tiles_contexts(monkeypatch):
    """With almost no memory for context states, the region evaluator evaluates most requests from
    an earlier context, many tiles' in one call: each must be evaluated from its own tile's."""
    monkeypatch.setattr(region_evaluator, "STATE_MEMORY_BUDGET", 1)
    classifier, shape = resnet_case()
    tiles, classes = tiles_and_classes(classifier, shape, 2)
    settings = ExplainSettings(masker="blur(12,12)", max_evals=500, batch_size=64, seed=3)
    engine = FastPartitionEngine()
    with recorded_traversals() as traversals:
        results = engine.explain_tiles(tiles, classifier, classes, settings)
    assert engine.anchored_evaluations > 50
    for tile, indices, result, traversal in zip(tiles, classes, results, traversals):
        assert_within_float32_rounding(result, traversal, float64_yardstick(classifier, tile, indices, settings), "the fast engine without states")


def test_automatic_tiles_in_flight_and_activation_bytes():
    classifier = random_net_classifier(48, NUM_CLASSES, seed=4)
    settings = ExplainSettings()
    assert tiles_in_flight(0, classifier, (48, 48, 3), settings) == CPU_TILES_IN_FLIGHT
    assert tiles_in_flight(7, classifier, (48, 48, 3), settings) == 7
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 5))
    # float32 outputs of each layer for one 8×8×3 tile: conv and relu 4·8·8 each, flatten 256, linear 5
    assert activation_bytes(module, (8, 8, 3), "cpu") == 4 * (256 + 256 + 256 + 5)
    assert all(not layer._forward_hooks for layer in module)  # its hooks are gone again


# --- the explain run ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 2×4 mosaic of 64-px synthetic scenes with a nodata hole over one scene (its tile is skipped
    in the middle of a batch)."""
    from osgeo import gdal

    path = str(tmp_path_factory.mktemp("in_flight") / "mosaic.tif")
    make_scene_mosaic(path, rows=2, cols=4, scene_px=64, pixel_size=2.0, seed=5)
    dataset = gdal.Open(path, gdal.GA_Update)
    for band in range(1, dataset.RasterCount + 1):
        dataset.GetRasterBand(band).SetNoDataValue(0)
        dataset.GetRasterBand(band).WriteArray(np.zeros((64, 64), dtype=np.uint8), 128, 0)
    dataset = None
    return path


def run(scene, model, folder, in_flight, progress=None, **spec_fields):
    """(spec, result) of an exact-engine explain run writing into `folder` (made if missing)."""
    folder.mkdir(exist_ok=True)
    outputs = ExplainOutputs(shap_raster=str(folder / f"shap_{in_flight}.tif"), tile_table=str(folder / f"tiles_{in_flight}.gpkg"))
    settings = ExplainSettings(masker="blur(64,64)", max_evals=200, batch_size=32, seed=2)
    spec = ExplainSpec(scene, model, TilingOptions(), ExplainRequest(top_k=2), settings, outputs, engine="exact", tiles_in_flight=in_flight, **spec_fields)
    return spec, explain_raster(spec, progress)


def read_outputs(spec):
    with rasterio.open(spec.outputs.shap_raster) as raster:
        values = raster.read()
    source = ogr.Open(spec.outputs.tile_table)
    layer = source.GetLayer(0)
    rows = sorted(tuple(feature.items().values()) for feature in layer)
    return values, rows


def test_an_explain_run_with_tiles_in_flight_writes_what_one_at_a_time_writes(scene, synthetic_model, tmp_path):
    one_spec, one = run(scene, synthetic_model, tmp_path, 1)
    three_spec, three = run(scene, synthetic_model, tmp_path, 3)
    assert one.explained == three.explained == 7  # the scene under the hole has no valid pixels
    values_one, rows_one = read_outputs(one_spec)
    values_three, rows_three = read_outputs(three_spec)
    np.testing.assert_array_equal(values_three, values_one)
    assert rows_three == rows_one


def test_an_interrupted_run_with_tiles_in_flight_resumes(scene, synthetic_model, tmp_path):
    """Cancel during the second batch of three tiles: the first batch is checkpointed, and the run
    again with the same spec explains only the rest and writes the uninterrupted run's maps."""
    reference_spec, _ = run(scene, synthetic_model, tmp_path / "reference", 3)
    fractions = []

    def cancel_in_second_batch():
        return len(fractions) > 0 and fractions[-1] > 0.45

    progress = Progress(lambda percent: fractions.append(percent / 100.0), cancel_in_second_batch)
    with pytest.raises(Cancelled):
        run(scene, synthetic_model, tmp_path, 3, progress=progress)
    logs = []
    spec, result = run(scene, synthetic_model, tmp_path, 3, progress=Progress(log=logs.append))
    assert any("3 of 8 tile(s) reused" in line for line in logs), logs
    np.testing.assert_array_equal(read_outputs(spec)[0], read_outputs(reference_spec)[0])


def test_tiles_in_flight_on_a_dask_cluster_write_the_local_runs_values(scene, synthetic_model, tmp_path):
    local_spec, _ = run(scene, synthetic_model, tmp_path / "local", 2)
    dask_spec, _ = run(scene, synthetic_model, tmp_path, 2, execution="dask", dask=DaskSettings(workers=1, threads=1))
    np.testing.assert_array_equal(read_outputs(dask_spec)[0], read_outputs(local_spec)[0])


def test_negative_tiles_in_flight_is_a_clear_error(scene, synthetic_model, tmp_path):
    with pytest.raises(AidXaiError, match="TILES_IN_FLIGHT must be 0"):
        run(scene, synthetic_model, tmp_path, -1)


def test_qgis_process_tiles_in_flight_writes_the_one_at_a_time_map(scene, synthetic_model, tmp_path):
    """TILES_IN_FLIGHT through qgis_process (the exact engine: each tile's calls are its own, so the
    maps are equal bit for bit)."""
    maps = []
    for in_flight in (1, 3):
        output = tmp_path / f"shap_{in_flight}.tif"
        result = run_algorithm_json(
            "aid_xai:explain",
            {"INPUT": scene, "MODEL": synthetic_model, "ENGINE": "exact", "MAX_EVALS": 120, "MASKER": "blur", "MASKER_KERNEL": 16, "TOP_K": 2, "TILES_IN_FLIGHT": in_flight, "OUTPUT": output},
        )
        assert result["results"]["TILES_EXPLAINED"] == 7
        with rasterio.open(output) as raster:
            maps.append(raster.read())
    np.testing.assert_array_equal(maps[1], maps[0])
