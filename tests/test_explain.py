"""aid_xai:explain: values equal shap's own, land on the right pixels, add up, and point at objects."""

import os

import numpy as np
import pytest
import rasterio
from conftest import ROOT, run_algorithm_json, run_qgis_process

from aid_xai_plugin.core.pipelines.explain import ExplainOutputs, ExplainRequest, explain_raster, to_source_pixels
from aid_xai_plugin.core.explain.engine import ExplainSettings
from aid_xai_plugin.core.data.synthetic import make_scene_mosaic
from aid_xai_plugin.core.pipelines.tiles import TilingOptions

SETTINGS = ExplainSettings(masker="blur(64,64)", max_evals=300, batch_size=64, seed=7)


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    folder = tmp_path_factory.mktemp("explain_mosaic")
    path = str(folder / "mosaic.tif")
    truth = make_scene_mosaic(path, rows=2, cols=6, scene_px=64, pixel_size=2.0, seed=11)
    return path, truth


def _select(row, col, truth):
    """A tile selector picking the scene at (row, col) by its footprint."""
    bounds = next(t["bounds"] for t in truth if (t["row"], t["col"]) == (row, col))

    def selector(corners):
        xs, ys = zip(*corners)
        return (min(xs), min(ys), max(xs), max(ys)) == pytest.approx(bounds), "truth"

    return selector


def _scene(truth, class_name):
    return next(t for t in truth if t["class_name"] == class_name)


def _read_window(path, window):
    x, y, w, h = window
    with rasterio.open(path) as raster:
        return raster.read(window=rasterio.windows.Window(x, y, w, h)), raster.transform


def test_written_values_equal_shap_run_directly_at_the_right_pixels(mosaic, synthetic_model, tmp_path):
    import shap

    from aid_xai_plugin.core.ml.classifier import Classifier
    from aid_xai_plugin.core.ml.model_file import load_model

    path, truth = mosaic
    scene = _scene(truth, "Residential")
    outputs = ExplainOutputs(shap_raster=str(tmp_path / "shap.tif"))
    explain_raster(path, synthetic_model, TilingOptions(), ExplainRequest(tile_selector=_select(scene["row"], scene["col"], truth), top_k=2), SETTINGS, outputs, engine="shap")

    pixels, _ = _read_window(path, scene["window"])
    image = pixels.transpose(1, 2, 0).astype(np.float32) / np.float32(255.0)
    classifier = Classifier(load_model(synthetic_model), "cpu")
    top2 = np.argsort(-classifier.predict_probabilities(image[None])[0])[:2]
    masker = shap.maskers.Image("blur(64,64)", image.shape)
    explainer = shap.PartitionExplainer(lambda x: classifier.predict_probabilities(x), masker)
    np.random.seed(SETTINGS.seed)
    direct = explainer(image[None], max_evals=SETTINGS.max_evals, batch_size=SETTINGS.batch_size, outputs=top2, silent=True).values[0].sum(axis=2)

    with rasterio.open(outputs.shap_raster) as raster:
        # The SHAP raster covers exactly the explained tile, on the source's pixel grid.
        assert raster.bounds == pytest.approx(rasterio.open(path).window_bounds(rasterio.windows.Window(*scene["window"])))
        assert raster.transform.a == 2.0 and raster.transform.e == -2.0
        written = raster.read().transpose(1, 2, 0)
        assert raster.descriptions == ("rank 1", "rank 2")
    scale = np.abs(direct).max()
    assert np.abs(written - direct).max() <= 1e-6 * scale


def test_every_engine_writes_shaps_values(mosaic, synthetic_model, tmp_path):
    """exact writes shap's values (to float32 storage); fast (the default) agrees to its tested bound."""
    from test_fast_engine import FAST_TOLERANCE

    path, truth = mosaic
    scene = _scene(truth, "StorageTank")
    settings = ExplainSettings(masker="blur(64,64)", max_evals=1500, batch_size=64, seed=3)
    written = {}
    for engine in ("shap", "exact", "fast"):
        outputs = ExplainOutputs(shap_raster=str(tmp_path / f"{engine}.tif"))
        explain_raster(path, synthetic_model, TilingOptions(), ExplainRequest(tile_selector=_select(scene["row"], scene["col"], truth), top_k=3), settings, outputs, engine=engine)
        with rasterio.open(outputs.shap_raster) as raster:
            assert raster.tags()["AIDXAI_ENGINE"] == engine
            written[engine] = raster.read().astype(np.float64)
    scale = np.abs(written["shap"]).max()
    assert np.abs(written["exact"] - written["shap"]).max() <= 1e-6 * scale
    assert np.abs(written["fast"] - written["shap"]).max() <= FAST_TOLERANCE * scale


def test_unknown_engine_is_a_clear_error(aid_xai_provider, mosaic, synthetic_model, tmp_path):
    from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingException, QgsProcessingFeedback

    path, _ = mosaic
    algorithm = QgsApplication.processingRegistry().createAlgorithmById("aid_xai:explain")
    parameters = {"INPUT": path, "MODEL": synthetic_model, "ENGINE": "lime", "OUTPUT": str(tmp_path / "s.tif")}
    with pytest.raises(QgsProcessingException, match="ENGINE must be one of fast, exact, shap"):
        algorithm.processAlgorithm(parameters, QgsProcessingContext(), QgsProcessingFeedback())
    assert not os.path.exists(tmp_path / "s.tif")


@pytest.mark.parametrize("engine", ["fast", "exact", "shap"])
def test_cancel_inside_a_tile_stops_and_leaves_no_output(mosaic, synthetic_model, tmp_path, engine):
    from aid_xai_plugin.core.common.errors import Cancelled
    from aid_xai_plugin.core.common.progress import Progress

    path, truth = mosaic
    scene = _scene(truth, "Forest")
    checks, percents = [], []
    progress = Progress(set_progress=percents.append, is_canceled=lambda: checks.append(1) or len(checks) > 3)
    outputs = ExplainOutputs(str(tmp_path / "out" / "shap.tif"), str(tmp_path / "out" / "tiles.gpkg"), str(tmp_path / "out" / "report.html"))
    os.makedirs(tmp_path / "out")
    settings = ExplainSettings(masker="blur(64,64)", max_evals=5000, batch_size=16)
    with pytest.raises(Cancelled):
        explain_raster(path, synthetic_model, TilingOptions(), ExplainRequest(tile_selector=_select(scene["row"], scene["col"], truth)), settings, outputs, engine=engine, progress=progress)
    assert len(checks) == 4  # one check per tile, then one per model call inside the engine
    assert 0 < max(percents) < 5  # progress moved within the tile before the cancel
    assert os.listdir(tmp_path / "out") == []


def test_efficiency_sum_equals_probability_minus_base(mosaic, synthetic_model, tmp_path):
    from osgeo import ogr

    path, truth = mosaic
    outputs = ExplainOutputs(shap_raster=str(tmp_path / "shap.tif"), tile_table=str(tmp_path / "table.gpkg"))
    summary = explain_raster(path, synthetic_model, TilingOptions(), ExplainRequest(top_k=3), ExplainSettings(masker="blur(16,16)", max_evals=100, batch_size=64), outputs, engine="shap")
    assert summary.explained == 12
    table_dataset = ogr.Open(outputs.tile_table)
    table = table_dataset.GetLayer(0)
    assert table.GetFeatureCount() == 36
    with rasterio.open(outputs.shap_raster) as raster:
        values = raster.read()
    for feature in table:
        row, col, rank = feature["row"], feature["col"], feature["rank"]
        tile_sum = values[rank - 1, row * 64 : (row + 1) * 64, col * 64 : (col + 1) * 64].astype(np.float64).sum()
        assert abs(feature["shap_sum"] - (feature["probability"] - feature["base_value"])) <= 1e-4
        assert abs(tile_sum - feature["shap_sum"]) <= 1e-4


def test_resampled_tiles_keep_sums():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(64, 64, 2))
    for shape in ((64, 64), (150, 150), (37, 90)):
        spread = to_source_pixels(values, *shape)
        assert spread.shape == shape + (2,)
        np.testing.assert_allclose(spread.sum(axis=(0, 1)), values.sum(axis=(0, 1)), rtol=1e-12)
    np.testing.assert_allclose(to_source_pixels(values, 64, 64), values)
    np.testing.assert_allclose(to_source_pixels(values, 128, 128)[::2, ::2] * 4, values)


def test_positive_evidence_for_a_storage_tank_lies_on_the_tank(mosaic, synthetic_model, tmp_path):
    """Pointing game: StorageTank differs from BareLand only by the tank, so the positive SHAP mass
    for StorageTank must concentrate on the tank (and its shadow)."""
    path, truth = mosaic
    scene = _scene(truth, "StorageTank")
    outputs = ExplainOutputs(shap_raster=str(tmp_path / "tank.tif"))
    request = ExplainRequest(tile_selector=_select(scene["row"], scene["col"], truth), class_names=["StorageTank"])
    explain_raster(path, synthetic_model, TilingOptions(), request, ExplainSettings(masker="blur(64,64)", max_evals=1000, batch_size=128), outputs, engine="shap")
    pixels, _ = _read_window(path, scene["window"])
    rgb = pixels.transpose(1, 2, 0).astype(int)
    grey = (np.abs(rgb[..., 0] - rgb[..., 2]) < 15) & ((rgb.mean(axis=2) > 140) | (rgb.mean(axis=2) < 75))
    with rasterio.open(outputs.shap_raster) as raster:
        shap_map = raster.read(1)
    positive = np.clip(shap_map, 0, None)
    on_object = positive[grey].sum() / positive.sum()
    area = grey.mean()
    assert area < 0.3
    assert on_object > 2 * area and on_object > 0.5, f"{on_object:.2f} of positive mass on {area:.2f} of the area"
    assert grey[np.unravel_index(np.argmax(shap_map), shap_map.shape)]


def test_qgis_process_explain_with_features_and_labels(mosaic, synthetic_model, tmp_path):
    path, truth = mosaic
    from aid_xai_plugin.core.geo.vector import write_polygons

    features = str(tmp_path / "picked.gpkg")
    picked = truth[:2]
    write_polygons(features, "EPSG:32633", [("label", str)], [((t["class_name"],), t["bounds"]) for t in picked])
    result = run_algorithm_json(
        "aid_xai:explain",
        {
            "INPUT": path,
            "MODEL": synthetic_model,
            "FEATURES": features,
            "LABEL_FIELD": "label",
            "MAX_EVALS": 100,
            "MASKER": "blur",
            "MASKER_KERNEL": 16,
            "TOP_K": 2,
            "OUTPUT": tmp_path / "shap.tif",
            "OUTPUT_TABLE": tmp_path / "table.gpkg",
            "OUTPUT_REPORT": tmp_path / "report.html",
        },
    )["results"]
    assert result["TILES_EXPLAINED"] == 2
    report = (tmp_path / "report.html").read_text()
    assert all(t["class_name"] in report for t in picked) and report.count("data:image/png;base64") == 2
    style = (tmp_path / "shap.qml").read_text()
    assert "singlebandpseudocolor" in style and 'alpha="0"' in style
    with rasterio.open(tmp_path / "shap.tif") as raster:
        assert raster.count == 2 and raster.nodata == -9999.0
        assert raster.tags()["AIDXAI_MAX_EVALS"] == "100"


def test_bad_explain_inputs(mosaic, synthetic_model, tmp_path):
    from aid_xai_plugin.core.common.errors import AidXaiError

    path, _ = mosaic
    outputs = ExplainOutputs(shap_raster=str(tmp_path / "s.tif"))
    with pytest.raises(AidXaiError, match="not classes of this model"):
        explain_raster(path, synthetic_model, TilingOptions(), ExplainRequest(class_names=["Volcano"]), SETTINGS, outputs, engine="shap")
    with pytest.raises(AidXaiError, match="MASKER"):
        explain_raster(path, synthetic_model, TilingOptions(), ExplainRequest(), ExplainSettings(masker="sharpen"), outputs, engine="shap")
    with pytest.raises(AidXaiError, match="No tile"):
        explain_raster(path, synthetic_model, TilingOptions(), ExplainRequest(tile_selector=lambda corners: (False, "")), SETTINGS, outputs, engine="shap")
    assert not os.path.exists(outputs.shap_raster)


def test_shipped_model3_classifies_and_explains_least_confident_tiles(mosaic, synthetic_model, tmp_path):
    path, _ = mosaic
    model3 = os.path.join(ROOT, "resources", "models", "classify_explain_least_confident.model3")
    completed = run_qgis_process(
        "--json", "run", model3, "--", f"raster={path}", f"model={synthetic_model}", "tiles_to_explain=2", "max_evals=60",
        f"native:extractbyexpression_1:explained_tiles={tmp_path / 'least.gpkg'}",
        f"aid_xai:explain_1:shap={tmp_path / 'shap.tif'}",
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    with rasterio.open(tmp_path / "shap.tif") as raster:
        assert raster.count == 4
    from osgeo import ogr

    least = ogr.Open(str(tmp_path / "least.gpkg"))
    assert least.GetLayer(0).GetFeatureCount() == 2
