"""aid_xai:explanation_quality: deletion/insertion curves that follow a known model exactly, SHAP
beating random orders on the synthetic scenes, the randomisation check, and the algorithm's outputs."""

import os

import numpy as np
import pytest
import torch
from helpers import in_memory_classifier

from aid_xai_plugin.core.common.errors import AidXaiError
from aid_xai_plugin.core.data.synthetic import make_scene_mosaic
from aid_xai_plugin.core.explain.engine import ExplainSettings, masker_value
from aid_xai_plugin.core.explain.faithfulness import PixelHider, area_under, faithfulness_curves, rank_correlation
from aid_xai_plugin.core.ml.classifier import Classifier
from aid_xai_plugin.core.ml.model_file import load_model
from aid_xai_plugin.core.ml.randomisation import randomised_classifier
from aid_xai_plugin.core.pipelines.explain import ExplainRequest
from aid_xai_plugin.core.pipelines.quality import QUALITY_TABLE_FIELDS, QualityOutputs, QualitySpec, explanation_quality
from aid_xai_plugin.core.pipelines.tiles import TilingOptions

# A constant grey masker in probability space: measured on all 12 scenes of the mosaic below (max_evals
# 300), SHAP's deletion AUC was below random's and its insertion AUC above on every scene whose fully
# masked tile is not still its own class. With blur maskers this Net still recognises most blurred
# scenes (flat curves at p = 1), which is what the curves are there to show.
SETTINGS = ExplainSettings(masker="0.5", max_evals=300, batch_size=64, seed=0, output_space="probability")
# Measured |ρ| (trained vs head-randomised Net, SETTINGS): 0.01–0.08 on the three scenes assessed
# here, at most 0.36 over all 12 scenes and these settings (0.33 with RANDOMISE=all, 0.49 in logit
# space with blur(64,64)); 0.5 keeps a margin above everything measured while still meaning "weak".
WEAK_CORRELATION = 0.5
# scenes of the mosaic below, as (row, col)
STORAGE_TANKS, FARMLAND, WATER = ((0, 1), (1, 0)), (0, 3), (1, 1)


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("quality_mosaic") / "mosaic.tif")
    truth = make_scene_mosaic(path, rows=2, cols=6, scene_px=64, pixel_size=2.0, seed=11)
    classes = {(t["row"], t["col"]): t["class_name"] for t in truth}
    assert [classes[position] for position in (*STORAGE_TANKS, FARMLAND, WATER)] == ["StorageTank", "StorageTank", "Farmland", "Water"]
    return path, truth


def _select(truth, *positions):
    """A tile selector picking the scenes at the given (row, col) by their footprints, labelled with their class."""
    scenes = {tuple(round(v, 6) for v in t["bounds"]): t["class_name"] for t in truth if (t["row"], t["col"]) in positions}

    def selector(corners):
        xs, ys = zip(*corners)
        name = scenes.get(tuple(round(v, 6) for v in (min(xs), min(ys), max(xs), max(ys))))
        return [(0, name, None)] if name is not None else []

    return selector


def _rows(path):
    from osgeo import ogr

    dataset = ogr.Open(path)
    layer = dataset.GetLayer(0)
    definition = layer.GetLayerDefn()
    names = [definition.GetFieldDefn(i).GetName() for i in range(definition.GetFieldCount())]
    return names, [{name: feature[name] for name in names} for feature in layer]


def _rng_states():
    return np.random.get_state(), torch.get_rng_state()


def _assert_same_rng_states(before, after):
    (numpy_before, torch_before), (numpy_after, torch_after) = before, after
    assert numpy_after[0] == numpy_before[0] and np.array_equal(numpy_after[1], numpy_before[1]) and numpy_after[2:] == numpy_before[2:]
    assert torch.equal(torch_after, torch_before)


def _linear_classifier(weights):
    """A real Classifier over a linear model with logits (0, Σ w·x): p(class 1) = sigmoid(Σ w·x)."""
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(weights.size, 2, bias=False))
    with torch.no_grad():
        module[1].weight.zero_()
        module[1].weight[1] = torch.from_numpy(weights.ravel().astype(np.float32))
    return in_memory_classifier(module, weights.shape[0], ["other", "target"], bands=1, mean=0.0, std=1.0)


# float32 softmax of two classes with exact integer logits: the larger probability within (C + 2) = 4
# float32 epsilons of sigmoid(logit), the smaller far inside that (tests/test_explain.py derives the
# softmax bound); 8 leave 2× room, and an AUC, a 0.25-weighted trapezoid sum of such values, too
SOFTMAX_ROUNDING = 8 * np.finfo(np.float32).eps
# float64 formulas over the same numbers (means, correlations) in another order: a few 2^-52
FLOAT64_REL = 1e-12


def sigmoid(logits):
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def test_curves_of_a_linear_model_follow_the_best_order_exactly():
    """With a constant 0 masker, a linear logit's exact SHAP values are w·x, so hiding the largest
    first gives the known logits 10, 6, 3, 1, 0 (and revealing them 0, 4, 7, 9, 10): no other order
    lowers the deletion curve or raises the insertion curve at any step."""
    weights = np.array([[4.0, 3.0], [2.0, 1.0]])
    classifier = _linear_classifier(weights)
    image = np.ones((2, 2, 1), dtype=np.float32)
    values = (weights * image[..., 0])[..., None]
    curves = faithfulness_curves(image, values, [1], classifier, "0.0", steps=4, random_orders=5, seed=0)
    assert list(curves.fractions) == [0.0, 0.25, 0.5, 0.75, 1.0]  # quarters: exact
    assert curves.deletion[0] == pytest.approx(sigmoid([10, 6, 3, 1, 0]), rel=0, abs=SOFTMAX_ROUNDING)
    assert curves.insertion[0] == pytest.approx(sigmoid([0, 4, 7, 9, 10]), rel=0, abs=SOFTMAX_ROUNDING)
    assert curves.deletion_auc[0] == pytest.approx(0.25 * (sigmoid([10, 0]).sum() / 2 + sigmoid([6, 3, 1]).sum()), rel=0, abs=SOFTMAX_ROUNDING)
    # every order's curve lies between the best and the worst (largest-last) order's (1e-9: float64
    # means of float32 probabilities, rounded in another order, far below any step of the curves)
    worst = faithfulness_curves(image, -values, [1], classifier, "0.0", steps=4, random_orders=1)
    assert np.all(curves.deletion <= curves.random_deletion + 1e-9) and np.all(curves.random_deletion <= worst.deletion + 1e-9)
    assert np.all(curves.insertion >= curves.random_insertion - 1e-9) and np.all(curves.random_insertion >= worst.insertion - 1e-9)
    assert curves.deletion_auc[0] < curves.random_deletion_auc[0] < worst.deletion_auc[0]
    assert curves.insertion_auc[0] > curves.random_insertion_auc[0] > worst.insertion_auc[0]
    assert list(area_under([0.0, 0.5, 1.0], [[0.0, 1.0, 1.0]])) == [0.75]  # halves: exact
    # two classes at once: p(other) = 1 − p(target), its best order is the reverse one, and the
    # random orders (shared by the classes) give mirrored curves
    both = faithfulness_curves(image, np.concatenate([values, -values], axis=2), [1, 0], classifier, "0.0", steps=4, random_orders=5, seed=0)
    assert both.deletion[1] == pytest.approx(1.0 - sigmoid([10, 9, 7, 4, 0]), rel=0, abs=SOFTMAX_ROUNDING)
    assert both.random_deletion[1] == pytest.approx(1.0 - curves.random_deletion[0], rel=0, abs=2 * SOFTMAX_ROUNDING)
    np.testing.assert_array_equal(both.deletion[0], curves.deletion[0])  # the same evaluations
    np.testing.assert_array_equal(both.insertion[0], curves.insertion[0])


@pytest.mark.parametrize("masker", ["blur(3,3)", "0.25", "inpaint_telea"])
def test_pixels_are_hidden_exactly_as_shaps_image_masker_hides_them(masker):
    import shap

    rng = np.random.default_rng(5)
    image = rng.random((6, 5, 3), dtype=np.float32)
    visible = rng.random((4, 6, 5)) < 0.5
    reference = shap.maskers.Image(masker_value(masker), image.shape)
    expected = np.stack([reference(np.repeat(mask.ravel(), 3), image)[0][0] for mask in visible])
    np.testing.assert_array_equal(PixelHider(image, masker).compose(visible), expected)


def test_rank_correlation():
    values = np.random.default_rng(0).normal(size=(8, 8))
    assert rank_correlation(values, values) == pytest.approx(1.0, rel=FLOAT64_REL)
    assert rank_correlation(values, np.exp(values)) == pytest.approx(1.0, rel=FLOAT64_REL)  # ranks only
    assert rank_correlation(values, -values) == pytest.approx(-1.0, rel=FLOAT64_REL)
    assert np.isnan(rank_correlation(values, np.zeros_like(values)))


def test_randomised_copy_leaves_the_model_and_the_global_rng_alone(synthetic_model):
    classifier = Classifier(load_model(synthetic_model), "cpu")
    original = {name: tensor.clone() for name, tensor in classifier.module.state_dict().items()}
    torch.manual_seed(1234)
    np.random.seed(1234)
    before = _rng_states()
    head = randomised_classifier(classifier, "head", seed=0)
    everything = randomised_classifier(classifier, "all", seed=0)
    _assert_same_rng_states(before, _rng_states())
    for name, tensor in classifier.module.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    head_weights, all_weights = head.module.state_dict(), everything.module.state_dict()
    for name in original:
        assert torch.equal(head_weights[name], original[name]) == name.startswith("conv"), name  # Net's head: fc1–fc3
        assert not torch.equal(all_weights[name], original[name]), name
    again = randomised_classifier(classifier, "head", seed=0).module.state_dict()
    assert all(torch.equal(again[name], head_weights[name]) for name in original)  # seeded: reproducible
    assert head.module is not classifier.module and head.class_names == classifier.class_names
    identities = {classifier.sha256, head.sha256, randomised_classifier(classifier, "all", seed=0).sha256, randomised_classifier(classifier, "head", seed=1).sha256}
    assert len(identities) == 4 and randomised_classifier(classifier, "head", seed=0).sha256 == head.sha256
    with pytest.raises(AidXaiError, match="no convolution.*RANDOMISE=all"):
        randomised_classifier(_linear_classifier(np.ones((2, 2))), "head")


def test_shap_beats_random_orders_and_randomised_maps_decorrelate(mosaic, synthetic_model, tmp_path):
    path, truth = mosaic
    request = ExplainRequest(tile_selector=_select(truth, *STORAGE_TANKS, FARMLAND), top_k=1)
    outputs = QualityOutputs(table=str(tmp_path / "quality.gpkg"), report=str(tmp_path / "quality.html"))
    before = _rng_states()
    summary = explanation_quality(QualitySpec(path, synthetic_model, TilingOptions(), request, SETTINGS, outputs, device="cpu", steps=20, random_orders=3))
    _assert_same_rng_states(before, _rng_states())
    _, rows = _rows(outputs.table)
    assert summary.assessed == 3 and sorted(row["class_name"] for row in rows) == ["Farmland", "StorageTank", "StorageTank"]
    for row in rows:
        assert row["deletion_auc"] < row["random_deletion_auc"], row
        assert row["insertion_auc"] > row["random_insertion_auc"] + 0.2, row  # measured gaps: 0.28–0.51
        assert abs(row["randomised_rank_correlation"]) < WEAK_CORRELATION, row
    assert summary.deletion_auc == pytest.approx(np.mean([row["deletion_auc"] for row in rows]), rel=FLOAT64_REL)
    assert summary.abs_rank_correlation == pytest.approx(np.mean([abs(row["randomised_rank_correlation"]) for row in rows]), rel=FLOAT64_REL)
    assert summary.abs_rank_correlation < 0.25  # measured 0.04 on these scenes


def test_blurred_storage_tank_deletion_falls_far_faster_than_random(mosaic, synthetic_model):
    """With a full-tile blur (as the source's blur(256,256) on 256-px tiles) in logit space, hiding
    the tank first removes the evidence at once (measured deletion AUC 0.11 and 0.66 vs random 0.96 and 0.98)."""
    path, truth = mosaic
    settings = ExplainSettings(masker="blur(64,64)", max_evals=300, batch_size=64, seed=0)
    summary = explanation_quality(QualitySpec(path, synthetic_model, TilingOptions(), ExplainRequest(tile_selector=_select(truth, *STORAGE_TANKS), top_k=1), settings, QualityOutputs(), device="cpu"))
    assert summary.assessed == 2
    assert summary.deletion_auc < 0.8 * summary.random_deletion_auc


def test_processing_run_writes_the_table_and_the_report(aid_xai_provider, mosaic, synthetic_model, tmp_path):
    import processing
    from qgis.core import QgsFeature, QgsGeometry, QgsPointXY, QgsVectorLayer

    path, truth = mosaic
    points = QgsVectorLayer("Point?crs=EPSG:32633&field=label:string", "scenes", "memory")
    for scene in [t for t in truth if (t["row"], t["col"]) in (STORAGE_TANKS[0], WATER)]:
        feature = QgsFeature(points.fields())
        xmin, ymin, xmax, ymax = scene["bounds"]
        feature.setGeometry(QgsGeometry.fromPointXY(QgsPointXY((xmin + xmax) / 2, (ymin + ymax) / 2)))
        feature.setAttributes([scene["class_name"]])
        points.dataProvider().addFeature(feature)
    table, report = str(tmp_path / "quality.gpkg"), str(tmp_path / "quality.html")
    result = processing.run(
        "aid_xai:explanation_quality",
        {
            "INPUT": path, "MODEL": synthetic_model, "FEATURES": points, "LABEL_FIELD": "label", "MAX_EVALS": 300, "MASKER": "constant",
            "MASKER_VALUE": 0.5, "OUTPUT_SPACE": "probability", "TOP_K": 2, "STEPS": 10, "RANDOM_ORDERS": 2, "RANDOMISE": "all", "DEVICE": "cpu",
            "OUTPUT_TABLE": table, "OUTPUT_REPORT": report,
        },
    )
    names, rows = _rows(table)
    assert names == [name for name, _ in QUALITY_TABLE_FIELDS]
    assert result["TILES_ASSESSED"] == 2 and len(rows) == 4 and sorted(row["rank"] for row in rows) == [1, 1, 2, 2]
    assert {row["output_space"] for row in rows} == {"probability"}
    assert result["INSERTION_AUC"] == pytest.approx(np.mean([row["insertion_auc"] for row in rows]), rel=FLOAT64_REL)
    assert result["RANDOM_DELETION_AUC"] == pytest.approx(np.mean([row["random_deletion_auc"] for row in rows]), rel=FLOAT64_REL)
    assert result["ABS_RANK_CORRELATION"] == pytest.approx(np.mean([abs(row["randomised_rank_correlation"]) for row in rows]), rel=FLOAT64_REL)
    assert result["OUTPUT_TABLE"] == table and result["OUTPUT_REPORT"] == report
    with open(report, encoding="utf-8") as stream:
        text = stream.read()
    assert text.index("Summary over 2 tile(s)") < text.index("<h3>Tile")  # the summary comes first
    assert text.count("<img src='data:image/png;base64,") == 2 and "true label: <b>StorageTank</b>" in text and "randomised" in text
    assert text.rstrip().endswith("</html>")
    assert sorted(os.listdir(tmp_path)) == ["quality.gpkg", "quality.html", "quality.qml"]  # the table's style; no temporaries left


def test_unknown_class_is_a_clear_error_and_writes_nothing(aid_xai_provider, mosaic, synthetic_model, tmp_path):
    import processing
    from qgis.core import QgsProcessingException

    parameters = {"INPUT": mosaic[0], "MODEL": synthetic_model, "CLASSES": "StorageTank, Tank", "OUTPUT_TABLE": str(tmp_path / "q.gpkg"), "OUTPUT_REPORT": str(tmp_path / "q.html")}
    with pytest.raises(QgsProcessingException, match=r"CLASSES \['Tank'\] are not classes of this model; it knows: BareLand"):
        processing.run("aid_xai:explanation_quality", parameters)
    assert os.listdir(tmp_path) == []


def test_cancel_leaves_no_output(mosaic, synthetic_model, tmp_path):
    from aid_xai_plugin.core.common.errors import Cancelled
    from aid_xai_plugin.core.common.progress import Progress

    checks = []
    progress = Progress(is_canceled=lambda: checks.append(1) or len(checks) > 2)
    outputs = QualityOutputs(table=str(tmp_path / "q.gpkg"), report=str(tmp_path / "q.html"))
    with pytest.raises(Cancelled):
        explanation_quality(QualitySpec(mosaic[0], synthetic_model, TilingOptions(), ExplainRequest(top_k=1), SETTINGS, outputs, device="cpu"), progress)
    assert os.listdir(tmp_path) == []
