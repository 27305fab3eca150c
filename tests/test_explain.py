"""aid_xai:explain: values equal shap's own, land on the right pixels, add up, and point at objects."""

import dataclasses
import os

import numpy as np
import pytest
import rasterio
from conftest import ROOT, run_algorithm_json, run_qgis_process
from numerics import GEO_REL, assert_float32_outputs, assert_maps_within_float32_rounding, efficiency_bound, float32_storage_bound, float32_ulp, tile_scores

from aid_xai_plugin.core.geo.placement import to_source_pixels
from aid_xai_plugin.core.pipelines.explain import ExplainOutputs, ExplainRequest, ExplainSpec, explain_raster
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
        return [(0, "truth", None)] if (min(xs), min(ys), max(xs), max(ys)) == pytest.approx(bounds, rel=GEO_REL) else []

    return selector


def _scene(truth, class_name):
    return next(t for t in truth if t["class_name"] == class_name)


def _classifier_and_tile(path, model, scene):
    """The model on the CPU and the scene's tile as the pipeline feeds it (8-bit /255, H×W×C)."""
    from aid_xai_plugin.core.ml.classifier import Classifier
    from aid_xai_plugin.core.ml.model_file import load_model

    pixels, _ = _read_window(path, scene["window"])
    return Classifier(load_model(model), "cpu"), pixels.transpose(1, 2, 0).astype(np.float32) / np.float32(255.0)


def _read_window(path, window):
    x, y, w, h = window
    with rasterio.open(path) as raster:
        return raster.read(window=rasterio.windows.Window(x, y, w, h)), raster.transform


@pytest.mark.parametrize("space", ["logit", "probability", "log_probability"])
def test_written_values_equal_shap_run_directly_at_the_right_pixels(mosaic, synthetic_model, tmp_path, space):
    """shap run by hand on the tile, with the model's outputs in each space as its predict function."""
    import shap
    from scipy.special import log_softmax, softmax

    from aid_xai_plugin.core.ml.classifier import Classifier
    from aid_xai_plugin.core.ml.model_file import load_model

    path, truth = mosaic
    scene = _scene(truth, "Residential")
    outputs = ExplainOutputs(shap_raster=str(tmp_path / "shap.tif"))
    settings = dataclasses.replace(SETTINGS, output_space=space)
    explain_raster(ExplainSpec(path, synthetic_model, TilingOptions(), ExplainRequest(tile_selector=_select(scene["row"], scene["col"], truth), top_k=2), settings, outputs, engine="shap"))

    pixels, _ = _read_window(path, scene["window"])
    image = pixels.transpose(1, 2, 0).astype(np.float32) / np.float32(255.0)
    classifier = Classifier(load_model(synthetic_model), "cpu")
    top2 = np.argsort(-classifier.predict_probabilities(image[None])[0])[:2]
    logits = classifier.predict_outputs(image[None], "logit")
    # the output spaces are float32 softmax/log-softmax of these logits. softmax rounds x − max x
    # (relative error 2^-24, so exp's argument is off by |x − max x|·eps) and then exp, a sum of C
    # terms and the division: relative error ≤ (C + 2 + |x − max x|)·eps per probability; in log
    # space the same count is an absolute error
    logits64 = logits.astype(np.float64)
    eps = np.finfo(np.float32).eps
    bound = (logits.shape[1] + 2 + np.abs(logits64 - logits64.max())) * eps
    probability, log_probability = (classifier.predict_outputs(image[None], space) for space in ("probability", "log_probability"))
    assert (np.abs(probability - softmax(logits64, axis=1)) <= bound * softmax(logits64, axis=1)).all()
    assert (np.abs(log_probability - log_softmax(logits64, axis=1)) <= bound + float32_ulp(np.abs(logits).max())).all()
    masker = shap.maskers.Image("blur(64,64)", image.shape)
    explainer = shap.PartitionExplainer(lambda x: classifier.predict_outputs(x, space), masker)
    np.random.seed(SETTINGS.seed)
    direct = explainer(image[None], max_evals=SETTINGS.max_evals, batch_size=SETTINGS.batch_size, outputs=top2, silent=True).values[0].sum(axis=2)

    with rasterio.open(outputs.shap_raster) as raster:
        # The SHAP raster covers exactly the explained tile, on the source's pixel grid.
        assert raster.bounds == pytest.approx(rasterio.open(path).window_bounds(rasterio.windows.Window(*scene["window"])), rel=GEO_REL)
        assert raster.transform.a == 2.0 and raster.transform.e == -2.0
        written = raster.read().transpose(1, 2, 0)
        assert raster.descriptions == ("rank 1 (each tile's class: tile table, rank = 1)", "rank 2 (each tile's class: tile table, rank = 2)")
        assert raster.tags()["AIDXAI_OUTPUT_SPACE"] == space
    scale = np.abs(direct).max()
    if space != "probability":  # the model is sure of this tile: p ≈ 1 with and without the masking
        assert scale > 1e-4
    # the pipeline makes shap's own calls on the same tile: the same float64 values, stored as float32
    np.testing.assert_array_equal(written, direct.astype(np.float32))


@pytest.mark.numerics
def test_every_engine_writes_shaps_values(mosaic, synthetic_model, tmp_path):
    """exact writes shap's values bit for bit (the same float64 values stored as float32); every
    engine's stored map is the float64 reference up to the engines' float32 bound (tests/numerics.py:
    4× shap's own error per value, summed over the bands, plus storage rounding)."""
    path, truth = mosaic
    scene = _scene(truth, "StorageTank")
    settings = ExplainSettings(masker="blur(64,64)", max_evals=1500, batch_size=64, seed=3)
    written = {}
    for engine in ("shap", "exact", "fast"):
        outputs = ExplainOutputs(shap_raster=str(tmp_path / f"{engine}.tif"))
        explain_raster(ExplainSpec(path, synthetic_model, TilingOptions(), ExplainRequest(tile_selector=_select(scene["row"], scene["col"], truth), top_k=3), settings, outputs, engine=engine))
        with rasterio.open(outputs.shap_raster) as raster:
            assert raster.tags()["AIDXAI_ENGINE"] == engine
            written[engine] = raster.read().astype(np.float64)
    np.testing.assert_array_equal(written["exact"], written["shap"])
    classifier, tile = _classifier_and_tile(path, synthetic_model, scene)
    indices = np.argsort(-classifier.predict_probabilities(tile[None])[0], kind="stable")[:3]
    assert_maps_within_float32_rounding(written, classifier, tile, indices, settings, "every engine")


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
        explain_raster(ExplainSpec(path, synthetic_model, TilingOptions(), ExplainRequest(tile_selector=_select(scene["row"], scene["col"], truth)), settings, outputs, engine=engine), progress)
    assert len(checks) == 4  # one check per tile, then one per model call inside the engine
    assert 0 < max(percents) < 5  # progress moved within the tile before the cancel
    assert os.listdir(tmp_path / "out") == [".shap.tif.resume"]  # no output; the (empty) checkpoint waits for a re-run
    assert os.listdir(tmp_path / "out" / ".shap.tif.resume") == ["KEY"]


@pytest.mark.parametrize("space", ["logit", "probability", "log_probability"])
@pytest.mark.numerics
def test_efficiency_sum_equals_output_minus_base_in_each_space(mosaic, synthetic_model, tmp_path, space):
    from osgeo import ogr

    from aid_xai_plugin.core.ml.model_file import load_model

    path, truth = mosaic
    outputs = ExplainOutputs(shap_raster=str(tmp_path / "shap.tif"), tile_table=str(tmp_path / "table.gpkg"))
    settings = ExplainSettings(masker="blur(16,16)", max_evals=100, batch_size=64, output_space=space)
    summary = explain_raster(ExplainSpec(path, synthetic_model, TilingOptions(), ExplainRequest(top_k=3), settings, outputs, engine="fast"))
    assert summary.explained == 12 and summary.output_space == space
    table_dataset = ogr.Open(outputs.tile_table)
    table = table_dataset.GetLayer(0)
    assert table.GetFeatureCount() == 36
    with rasterio.open(outputs.shap_raster) as raster:
        values = raster.read()
    names = load_model(synthetic_model).info.class_names
    references = {name: tile_scores(path, synthetic_model, scores) for name, scores in (("probability", "probability"), ("output_value", space))}
    table_scores = {name: ([], [], []) for name in references}  # the table's, float64, plain torch float32
    for feature in table:
        row, col, rank = feature["row"], feature["col"], feature["rank"]
        assert feature["output_space"] == space and 0.0 <= feature["probability"] <= 1.0
        for name, (reference, torch32) in references.items():
            at = (names.index(feature["class_name"]), row, col)
            for scores, score in zip(table_scores[name], (feature[name], reference[at], torch32[at])):
                scores.append(score)
        # efficiency in float64 (tests/numerics.py), with the credits bounded by 2 × max_evals outputs
        scale = max(1.0, abs(feature["output_value"]), abs(feature["base_value"]))
        bound = efficiency_bound(64 * 64 * 3, settings.max_evals, 2 * settings.max_evals * scale)
        assert abs(feature["shap_sum"] - (feature["output_value"] - feature["base_value"])) <= bound
        # the stored map adds float32 storage rounding
        tile_map = values[rank - 1, row * 64 : (row + 1) * 64, col * 64 : (col + 1) * 64]
        assert abs(tile_map.astype(np.float64).sum() - feature["shap_sum"]) <= float32_storage_bound(tile_map) + bound
    # the probability (classify's batch) and the output value (the engine's f(tile)) are float32
    # evaluations of the tile: each within 4× plain torch's float32 error against the float64 model
    for name, (scores, reference, torch32) in table_scores.items():
        assert_float32_outputs({name: scores}, reference, torch32, "the tile table")


def test_resampled_tiles_keep_sums():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(64, 64, 2))
    for shape in ((64, 64), (150, 150), (37, 90)):
        spread = to_source_pixels(values, *shape)
        assert spread.shape == shape + (2,)
        # float64: every product and addition of the two area-weight products and of the sums rounds
        # by at most eps of the magnitudes involved (Σ|values|), once per term
        bound = (values.shape[0] * values.shape[1] + shape[0] * shape[1]) * np.finfo(np.float64).eps * np.abs(values).sum(axis=(0, 1))
        assert (np.abs(spread.sum(axis=(0, 1)) - values.sum(axis=(0, 1))) <= bound).all()
    np.testing.assert_array_equal(to_source_pixels(values, 64, 64), values)  # the identity: a copy
    np.testing.assert_array_equal(to_source_pixels(values, 128, 128)[::2, ::2] * 4, values)  # weights 1/2: exact


def test_positive_evidence_for_a_storage_tank_lies_on_the_tank(mosaic, synthetic_model, tmp_path):
    """Pointing game: StorageTank differs from BareLand only by the tank, so the positive SHAP mass
    for StorageTank must concentrate on the tank (and its shadow)."""
    path, truth = mosaic
    scene = _scene(truth, "StorageTank")
    outputs = ExplainOutputs(shap_raster=str(tmp_path / "tank.tif"))
    request = ExplainRequest(tile_selector=_select(scene["row"], scene["col"], truth), class_names=["StorageTank"])
    explain_raster(ExplainSpec(path, synthetic_model, TilingOptions(), request, ExplainSettings(masker="blur(64,64)", max_evals=1000, batch_size=128), outputs, engine="shap"))
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
        explain_raster(ExplainSpec(path, synthetic_model, TilingOptions(), ExplainRequest(class_names=["Volcano"]), SETTINGS, outputs, engine="shap"))
    with pytest.raises(AidXaiError, match="MASKER"):
        explain_raster(ExplainSpec(path, synthetic_model, TilingOptions(), ExplainRequest(), ExplainSettings(masker="sharpen"), outputs, engine="shap"))
    with pytest.raises(AidXaiError, match="No tile"):
        explain_raster(ExplainSpec(path, synthetic_model, TilingOptions(), ExplainRequest(tile_selector=lambda corners: []), SETTINGS, outputs, engine="shap"))
    assert not os.path.exists(outputs.shap_raster)


def test_shipped_model3_classifies_and_explains_least_confident_tiles(mosaic, synthetic_model, tmp_path):
    path, _ = mosaic
    model3 = os.path.join(ROOT, "resources", "models", "classify_explain_least_confident.model3")
    completed = run_qgis_process(
        "--json", "run", model3, "--", f"input_raster={path}", f"model_file={synthetic_model}", "number_of_tiles=2", "shap_evaluations=60",
        f"aid_xai:explain_1:Least confident tiles={tmp_path / 'least.gpkg'}",
        f"aid_xai:explain_1:SHAP map of the least confident tiles={tmp_path / 'shap.tif'}",
        f"aid_xai:explain_1:Explanation report={tmp_path / 'report.html'}",
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    with rasterio.open(tmp_path / "shap.tif") as raster:
        assert raster.count == 4
    from osgeo import ogr

    least = ogr.Open(str(tmp_path / "least.gpkg"))  # Explain's tile table: the 2 tiles, a row per explained class
    assert len({feature["tile_id"] for feature in least.GetLayer(0)}) == 2
    assert (tmp_path / "report.html").read_text().count("data:image/png;base64") == 2


def test_overlapping_tiles_blend_or_overwrite_and_the_report_keeps_the_least_confident(mosaic, synthetic_model, tmp_path):
    """Stride of half a tile over 2×3 scenes: 3×5 tiles. `last` keeps the last tile's exact sum in its
    window; the blend covers every pixel, equals `last` where one tile covers a pixel, and differs
    where tiles overlap; the report shows the REPORT_TILES tiles with the smallest margins."""
    from osgeo import ogr

    path, _ = mosaic
    with rasterio.open(path) as raster:
        left, top = raster.bounds.left, raster.bounds.top
    # the tiles whose output cell (the 32-px block centred in each tile) meets 176 × 128 px: 3 × 5
    options = TilingOptions(stride=32, extent=(left, top - 128 * 2.0, left + 176 * 2.0, top))
    settings = ExplainSettings(masker="blur(16,16)", max_evals=120, batch_size=64)
    written = {}
    for mode in ("last", "blend"):
        outputs = ExplainOutputs(shap_raster=str(tmp_path / f"{mode}.tif"), tile_table=str(tmp_path / f"{mode}.gpkg"), report=str(tmp_path / f"{mode}.html"), overlap=mode, report_tiles=4)
        summary = explain_raster(ExplainSpec(path, synthetic_model, options, ExplainRequest(class_names=["StorageTank"]), settings, outputs, engine="fast"))
        assert summary.explained == 15
        with rasterio.open(outputs.shap_raster) as raster:
            assert (raster.width, raster.height) == (192, 128) and raster.tags()["AIDXAI_OVERLAP"] == mode
            written[mode] = raster.read(1).astype(np.float64)
        table_dataset = ogr.Open(outputs.tile_table)
        rows = [(f["tile_id"], f["row"], f["col"], f["shap_sum"], f["margin"]) for f in table_dataset.GetLayer(0)]
        report = (tmp_path / f"{mode}.html").read_text()
        assert report.count("data:image/png;base64") == 4 and "4 least confident of 15" in report
        least_confident = sorted(rows, key=lambda r: (r[4], r[0]))[:4]
        assert all(f"Tile {tile_id} (row" in report for tile_id, *_ in least_confident)
    last_tile = max(rows, key=lambda r: r[0])
    _, row, col, shap_sum, _ = last_tile
    last_map = written["last"][row * 32 : row * 32 + 64, col * 32 : col * 32 + 64]
    # the last tile is written whole: its stored map sums to its Σ SHAP up to float32 storage
    # rounding (and float64 efficiency, far below it: tests/numerics.py)
    assert abs(last_map.sum() - shap_sum) <= float32_storage_bound(last_map) + efficiency_bound(64 * 64 * 3, settings.max_evals, 2 * settings.max_evals * max(1.0, abs(shap_sum)))
    assert (written["blend"] != -9999.0).all()
    np.testing.assert_array_equal(written["blend"][:32, :32], written["last"][:32, :32])  # one tile only
    assert np.abs(written["blend"][32:96, 32:160] - written["last"][32:96, 32:160]).max() > 0
    assert not any(name.startswith(".") for name in os.listdir(tmp_path))  # no spool or partial file left


def test_blending_top_k_ranks_of_overlapping_tiles_is_refused(mosaic, synthetic_model, tmp_path):
    """Tiles at half a tile's stride straddle scenes of different classes, so rank 1 is another class
    in neighbouring tiles: blending those bands would average them into a meaningless value."""
    from aid_xai_plugin.core.common.errors import AidXaiError

    path, truth = mosaic
    with rasterio.open(path) as raster:
        left, top = raster.bounds.left, raster.bounds.top
    options = TilingOptions(stride=32, extent=(left, top - 64 * 2.0, left + 128 * 2.0, top))
    settings = ExplainSettings(masker="blur(16,16)", max_evals=40, batch_size=64)
    assert len({scene["class_name"] for scene in truth if scene["row"] == 0 and scene["col"] < 2}) == 2  # two classes under the tiles
    shap_path = tmp_path / "ranks.tif"
    with pytest.raises(AidXaiError, match="with TOP_K each tile's band 'rank k' holds its own k-th class"):
        explain_raster(ExplainSpec(path, synthetic_model, options, ExplainRequest(top_k=1), settings, ExplainOutputs(shap_raster=str(shap_path)), engine="fast"))
    assert not shap_path.exists() and os.listdir(tmp_path) == []
    # with `last` each pixel comes from one tile, so its rank-1 value is that tile's class's
    explain_raster(ExplainSpec(path, synthetic_model, options, ExplainRequest(top_k=1), settings, ExplainOutputs(shap_raster=str(shap_path), overlap="last"), engine="fast"))
    assert shap_path.exists()


def _damaged_copies(path, folder):
    """The mosaic cut to 360 px wide (the last tile column reaches 24 px past it), once with nodata 0
    and a zeroed hole, once with an alpha band that hides the same hole."""
    from osgeo import gdal

    hole = (slice(20, 44), slice(270, 300))  # rows, columns: inside tile (0, 4)
    source = gdal.Open(path)
    pixels = source.ReadAsArray(0, 0, 360, source.RasterYSize)
    pixels[:, hole[0], hole[1]] = 0
    alpha = np.full(pixels.shape[1:], 255, np.uint8)
    alpha[hole] = 0
    geotransform, projection = source.GetGeoTransform(), source.GetProjection()
    copies = {}
    for kind, bands in (("nodata", list(pixels)), ("alpha", list(pixels) + [alpha])):
        copies[kind] = str(folder / f"{kind}.tif")
        target = gdal.GetDriverByName("GTiff").Create(copies[kind], 360, pixels.shape[1], len(bands), gdal.GDT_Byte)
        target.SetGeoTransform(geotransform)
        target.SetProjection(projection)
        for number, band in enumerate(bands, start=1):
            target.GetRasterBand(number).WriteArray(band)
            if kind == "nodata":
                target.GetRasterBand(number).SetNoDataValue(0)
        if kind == "alpha":
            target.GetRasterBand(4).SetColorInterpretation(gdal.GCI_AlphaBand)
        target = None
    return copies


def test_invalid_and_outside_pixels_are_nodata_and_the_map_ends_at_the_raster_edge(mosaic, synthetic_model, tmp_path):
    """Pixels the model saw as 0 because they are nodata, hidden by alpha or past the raster's edge
    explain no image: the SHAP raster holds nodata exactly where GDAL's own mask says the source
    pixel is invalid, a value everywhere else, and ends where the raster ends."""
    path, _ = mosaic
    settings = ExplainSettings(masker="blur(16,16)", max_evals=60, batch_size=64)
    for kind, damaged in _damaged_copies(path, tmp_path).items():
        with rasterio.open(damaged) as raster:
            left, top, right = raster.bounds.left, raster.bounds.top, raster.bounds.right
            invalid = (raster.read_masks([1, 2, 3]) == 0).any(axis=0)[:64, 256:]
        assert 0 < invalid.sum() < invalid.size and not invalid[:, 64:].any()  # the hole, in tile (0, 4)
        shap_path = tmp_path / f"{kind}_shap.tif"
        options = TilingOptions(bands="1,2,3", extent=(left + 256 * 2.0, top - 64 * 2.0, right, top))
        summary = explain_raster(ExplainSpec(damaged, synthetic_model, options, ExplainRequest(class_names=["StorageTank"]), settings, ExplainOutputs(shap_raster=str(shap_path)), engine="fast"))
        assert summary.explained == 2  # tile (0, 4) with its hole and the edge tile (0, 5), 40 of 64 columns inside
        with rasterio.open(shap_path) as shap_raster:
            assert shap_raster.bounds.right == pytest.approx(right, rel=GEO_REL) and shap_raster.width == 360 - 256
            written = shap_raster.read(1)
        assert (written[invalid] == -9999.0).all(), kind
        assert np.isfinite(written[~invalid]).all() and (written[~invalid] != -9999.0).all(), kind


def test_the_demos_steps_run_qgis_process_without_a_time_limit(tmp_path):
    """`make demo` runs each step with no hang limit (timeout None): a step must still start."""
    import sys

    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from demo import run

    run("aid_xai:synthetic_scenes", PER_CLASS=1, SIZE=32, SEED=0, OUTPUT=str(tmp_path / "scenes"))
    assert len(list((tmp_path / "scenes").glob("*/*.png"))) == 6


def test_the_demos_configuration_shows_structure_on_every_explained_tile(aid_xai_provider, mosaic, synthetic_model, tmp_path):
    """`make demo`'s explain settings with the algorithm's default output space (logits): every
    explained tile and rank has a map with visible spread, where probabilities left most blank."""
    import processing
    import sys

    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from demo import EXPLAIN_SETTINGS, MAX_EVALS

    path, truth = mosaic
    first_row = [scene for scene in truth if scene["row"] == 0]  # six tiles
    left, bottom = first_row[0]["bounds"][:2]
    right, top = first_row[-1]["bounds"][2:]
    spreads = {}
    for space in ("default", "probability"):
        parameters = dict(INPUT=path, MODEL=synthetic_model, EXTENT=f"{left},{right},{bottom},{top} [EPSG:32633]", TOP_K=3, MAX_EVALS=MAX_EVALS, **EXPLAIN_SETTINGS, OUTPUT=str(tmp_path / f"{space}.tif"), OUTPUT_TABLE="", OUTPUT_REPORT="")
        if space != "default":
            parameters["OUTPUT_SPACE"] = space
        processing.run("aid_xai:explain", parameters)
        with rasterio.open(tmp_path / f"{space}.tif") as raster:
            maps = raster.read()
        spreads[space] = [
            np.percentile(tile_map, 99) - np.percentile(tile_map, 1)
            for scene in first_row
            for tile_map in maps[:, :, scene["window"][0] : scene["window"][0] + 64]
        ]
    # per-pixel logit units: over a 64×64 tile a spread of 2e-5 is ~0.1 logit, visible on the map's own
    # colour scale (measured: 1.9e-4 to 3e-2); saturated probability maps stay at float32 noise (~1e-8)
    assert min(spreads["default"]) > 2e-5, spreads["default"]
    # "blank": below 1e-6 per pixel, 8 float32 ulps of p ≈ 1, rounding rather than structure
    assert np.mean(np.array(spreads["probability"]) < 1e-6) > 0.3, spreads["probability"]
