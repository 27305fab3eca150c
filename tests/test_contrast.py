"""OUTPUT_SPACE contrast: "why A rather than B". Each explained class A is explained against a class B
(CONTRAST_CLASS, or A's strongest rival: the tile's runner-up for its top class, the top class for
the others) as the game logit(A) − logit(B). The exact engine gives shap's values for that predict
function, written by hand as a user would, bit for bit; the fast engine the float64 reference's up
to float32 rounding (tests/numerics.py); the values add up to the difference; the outputs name both
classes."""

import dataclasses

import numpy as np
import pytest
import rasterio
from conftest import run_algorithm_json
from helpers import random_net_classifier, random_tile
from numerics import assert_efficient, assert_within_float32_rounding, efficiency_bound, explain_recorded, float64_yardstick
from osgeo import ogr

from aid_xai_plugin.core.common.errors import AidXaiError
from aid_xai_plugin.core.data.synthetic import make_scene_mosaic
from aid_xai_plugin.core.explain.engine import ExplainSettings, masker_value
from aid_xai_plugin.core.explain.exact_engine import ExactPartitionEngine
from aid_xai_plugin.core.explain.fast_engine import FastPartitionEngine
from aid_xai_plugin.core.ml.classifier import Classifier
from aid_xai_plugin.core.ml.model_file import load_model
from aid_xai_plugin.core.pipelines.explain import ExplainOutputs, ExplainRequest, ExplainSpec, explain_raster
from aid_xai_plugin.core.pipelines.quality import QualityOutputs, QualitySpec, explanation_quality
from aid_xai_plugin.core.pipelines.steps import contrast_rivals
from aid_xai_plugin.core.pipelines.tiles import TilingOptions

NUM_CLASSES = 6
SETTINGS = ExplainSettings(masker="blur(12,12)", max_evals=700, batch_size=64, seed=5, output_space="contrast")


def shap_by_hand(classifier, tile, classes, rivals, settings):
    """shap's PartitionExplainer with the predict function a user would write for "A rather than B":
    the float32 logits' differences, in float64."""
    import shap

    def predict(batch_nhwc):
        logits = classifier.predict_outputs(batch_nhwc, "logit", batch_size=settings.batch_size).astype(np.float64)
        return logits[:, classes] - logits[:, rivals]

    explainer = shap.PartitionExplainer(predict, shap.maskers.Image(masker_value(settings.masker), tile.shape))
    state = np.random.get_state()
    np.random.seed(settings.seed)
    try:
        result = explainer(tile[None], max_evals=settings.max_evals, batch_size=settings.batch_size, outputs=np.arange(len(classes)), silent=True)
    finally:
        np.random.set_state(state)
    return np.asarray(result.values[0], dtype=np.float64).reshape(tile.shape + (len(classes),)), np.asarray(result.base_values[0], dtype=np.float64)


@pytest.fixture(scope="module")
def net():
    return random_net_classifier(40, NUM_CLASSES, seed=6, logit_scale=40.0)


@pytest.mark.numerics
def test_exact_contrast_is_shap_with_the_difference_as_predict_function_bit_for_bit(net):
    tile = random_tile((40, 40, 3), seed=8)
    classes, rivals = np.array([3, 0, 5]), np.array([1, 1, 0])
    values, base = shap_by_hand(net, tile, classes, rivals, SETTINGS)
    exact = ExactPartitionEngine().explain(tile, net, classes, SETTINGS, rivals=rivals)
    np.testing.assert_array_equal(exact.values, values)
    np.testing.assert_array_equal(exact.base_values, base)
    logits = net.predict_outputs(tile[None], "logit")[0].astype(np.float64)
    np.testing.assert_array_equal(exact.output_values, logits[classes] - logits[rivals])
    np.testing.assert_array_equal(exact.rival_indices, rivals)
    assert_efficient(exact, SETTINGS.max_evals)
    assert np.abs(exact.values).max() > 1e-4  # the model's difference does depend on the tile


@pytest.mark.numerics
def test_fast_contrast_is_within_float32_rounding_of_the_float64_reference(net):
    tile = random_tile((40, 40, 3), seed=8)
    classes, rivals = np.array([3, 0]), np.array([1, 3])
    yardstick = float64_yardstick(net, tile, classes, SETTINGS, rivals)
    fast, traversal = explain_recorded(FastPartitionEngine(), tile, net, classes, SETTINGS, rivals=rivals)
    assert fast.fallback_reason is None
    assert_within_float32_rounding(fast, traversal, yardstick, "the fast engine in the contrast space")
    assert_efficient(fast, SETTINGS.max_evals)


def test_rivals_are_the_contrast_class_or_each_classs_strongest_rival():
    probabilities = np.array([0.1, 0.5, 0.05, 0.3, 0.05])
    np.testing.assert_array_equal(contrast_rivals(probabilities, [1, 3, 0]), [3, 1, 1])  # top → runner-up, others → top
    np.testing.assert_array_equal(contrast_rivals(probabilities, [1, 3], contrast_class=2), [2, 2])


# --- the explain run ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("contrast") / "mosaic.tif")
    make_scene_mosaic(path, rows=1, cols=3, scene_px=64, pixel_size=2.0, seed=4)
    return path


def contrast_run(scene, model, folder, **request_fields):
    outputs = ExplainOutputs(shap_raster=str(folder / "shap.tif"), tile_table=str(folder / "tiles.gpkg"), report=str(folder / "report.html"))
    settings = ExplainSettings(masker="blur(64,64)", max_evals=200, batch_size=64, seed=2, output_space="contrast")
    spec = ExplainSpec(scene, model, TilingOptions(), ExplainRequest(**request_fields), settings, outputs, engine="exact")
    return spec, explain_raster(spec)


def table_rows(path):
    source = ogr.Open(path)  # kept while its layer is read: GDAL frees a layer with its data source
    return [feature.items() for feature in source.GetLayer(0)]


def test_a_contrast_run_explains_each_class_against_its_strongest_rival(scene, synthetic_model, tmp_path):
    spec, result = contrast_run(scene, synthetic_model, tmp_path, top_k=2)
    assert result.output_space == "contrast" and result.explained == 3
    assert result.band_names == [f"rank {k} vs its strongest rival (tile table: rival_class) (each tile's classes: tile table, rank = {k})" for k in (1, 2)]
    classifier = Classifier(load_model(synthetic_model), "cpu")
    names = classifier.class_names
    rows = table_rows(spec.outputs.tile_table)
    with rasterio.open(spec.outputs.shap_raster) as raster:
        values = raster.read()
        tags = raster.tags()
    assert tags["AIDXAI_OUTPUT_SPACE"] == "contrast" and tags["AIDXAI_CONTRAST_CLASS"] == "each class's strongest rival"
    for tile in range(3):
        first, second = sorted((row for row in rows if row["tile_id"] == tile), key=lambda row: row["rank"])
        assert first["rival_class"] == second["class_name"] and second["rival_class"] == first["class_name"]  # the top two, each against the other
        assert first["output_value"] == pytest.approx(-second["output_value"], abs=1e-12)  # logit(A) − logit(B) = −(logit(B) − logit(A))
        assert first["output_value"] > 0  # the top class wins against the runner-up
        for row, band in ((first, 0), (second, 1)):
            on_tile = values[band, :, tile * 64 : (tile + 1) * 64].astype(np.float64)
            difference = row["output_value"] - row["base_value"]
            # the raster holds float32 values: each rounds by 2^-24 of itself, and their float64 sum adds that up
            bound = efficiency_bound(on_tile.size, 200, abs(difference)) + np.abs(on_tile).sum() * 2.0**-24
            assert abs(on_tile.sum() - difference) <= bound
            assert row["class_name"] in names and row["rival_class"] in names
    report = (tmp_path / "report.html").read_text()
    assert "rather than" in report and f"{first['class_name']} vs {first['rival_class']}" in report


def test_contrast_against_a_chosen_class_and_the_clear_errors(scene, synthetic_model, tmp_path):
    classifier = Classifier(load_model(synthetic_model), "cpu")
    names = classifier.class_names
    against = names[0]
    spec, result = contrast_run(scene, synthetic_model, tmp_path, top_k=2, contrast_class=against)
    assert result.band_names[0].startswith(f"rank 1 vs {against} ")
    rows = table_rows(spec.outputs.tile_table)
    assert {row["rival_class"] for row in rows} == {against} and against not in {row["class_name"] for row in rows}
    with pytest.raises(AidXaiError, match="only used with OUTPUT_SPACE=contrast"):
        explain_raster(dataclasses.replace(spec, settings=dataclasses.replace(spec.settings, output_space="logit")))
    for request, message in (
        (ExplainRequest(contrast_class="Volcano"), "'Volcano' is not a class of this model"),
        (ExplainRequest(class_names=[against, names[1]], contrast_class=against), "also in CLASSES"),
    ):
        with pytest.raises(AidXaiError, match=message):
            explain_raster(dataclasses.replace(spec, request=request))
    quality = QualitySpec(scene, synthetic_model, TilingOptions(), ExplainRequest(top_k=1), spec.settings, QualityOutputs(table=str(tmp_path / "quality.gpkg")))
    with pytest.raises(AidXaiError, match="does not take OUTPUT_SPACE=contrast"):
        explanation_quality(quality)


def test_qgis_process_contrast_names_both_classes_in_bands_and_legend(scene, synthetic_model, tmp_path):
    names = Classifier(load_model(synthetic_model), "cpu").class_names
    result = run_algorithm_json(
        "aid_xai:explain",
        {
            "INPUT": scene,
            "MODEL": synthetic_model,
            "MAX_EVALS": 100,
            "MASKER": "blur",
            "MASKER_KERNEL": 16,
            "CLASSES": names[2],
            "OUTPUT_SPACE": "contrast",
            "CONTRAST_CLASS": names[4],
            "OUTPUT": tmp_path / "shap.tif",
        },
    )["results"]
    assert result["TILES_EXPLAINED"] == 3
    with rasterio.open(tmp_path / "shap.tif") as raster:
        assert raster.descriptions == (f"{names[2]} vs {names[4]}",)
    style = (tmp_path / "shap.qml").read_text()
    assert "logit difference (pushes towards A rather than B)" in style and "pushes towards B rather than A" in style
