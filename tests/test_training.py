"""Training learns the synthetic scenes, generalises to unseen ones, and fails or stops cleanly."""

import csv
import json
import os
import shutil
from fractions import Fraction

import numpy as np
import pytest
import torch
from conftest import run_algorithm_json

from aid_xai_plugin.core.common.errors import AidXaiError, Cancelled
from aid_xai_plugin.core.reports.evaluation_report import write_evaluation_report
from aid_xai_plugin.core.ml.datasets import augment_batch
from aid_xai_plugin.core.ml.evaluation import evaluate_folder
from aid_xai_plugin.core.ml.metrics import summarize
from aid_xai_plugin.core.ml.model_file import load_model
from aid_xai_plugin.core.common.progress import Progress
from aid_xai_plugin.core.data.synthetic import SYNTHETIC_CLASSES, make_scene_folder
from aid_xai_plugin.core.ml.training import MIN_INPUT_SIZE, TrainingConfig, train_model
from aid_xai_plugin.core.ml.training_metrics import metrics_csv_path


@pytest.fixture(scope="module")
def held_out_folder(tmp_path_factory):
    """Scenes from another seed than the training set: none of them was seen in training."""
    folder = str(tmp_path_factory.mktemp("held_out"))
    make_scene_folder(folder, per_class=15, size=64, seed=99)
    return folder


@pytest.fixture(scope="module")
def held_out_results(synthetic_model, held_out_folder):
    return evaluate_folder(synthetic_model, held_out_folder, device="cpu")


def test_scores_on_a_hand_computed_example():
    """Ratios of small integer counts in float64: correctly rounded, so within 2^-52 of the fractions
    (rel=1e-12 for the F1's few further operations)."""
    scores = summarize([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2], ["a", "b", "c"])
    assert scores["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert scores["accuracy"] == 4 / 6
    assert [row["precision"] for row in scores["per_class"]] == [1.0, 0.5, 0.5]
    assert [row["recall"] for row in scores["per_class"]] == [2 / 3, 0.5, 1.0]
    assert [row["support"] for row in scores["per_class"]] == [3, 2, 1]
    assert scores["macro_f1"] == pytest.approx(np.mean([0.8, 0.5, 2 / 3]), rel=1e-12)


def test_absent_classes_score_zero_and_macro_f1_counts_only_present_ones():
    """Class indices as evaluation passes them: 7 is only predicted, 9 nowhere. Each F1 is the float
    nearest 2·TP / (support + predicted): for class 8, 1/3, where 2PR / (P + R) gave 1 ulp above."""
    truth, predicted = [5, 5, 5, 5, 6, 6, 6, 6, 8], [8, 8, 5, 5, 8, 8, 6, 7, 8]
    scores = summarize(truth, predicted, ["a", "b", "c", "d", "e"], labels=[5, 6, 7, 8, 9])
    assert scores["confusion_matrix"] == [[2, 0, 0, 2, 0], [0, 1, 1, 2, 0], [0, 0, 0, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 0]]
    assert [row["precision"] for row in scores["per_class"]] == [1.0, 1.0, 0.0, 0.2, 0.0]
    assert [row["recall"] for row in scores["per_class"]] == [0.5, 0.25, 0.0, 1.0, 0.0]
    assert [row["f1"] for row in scores["per_class"]] == [float(Fraction(4, 6)), float(Fraction(2, 5)), 0.0, float(Fraction(2, 6)), 0.0]
    assert [row["support"] for row in scores["per_class"]] == [4, 4, 0, 1, 0]
    assert scores["macro_f1"] == pytest.approx(float(Fraction(4, 6) + Fraction(2, 5) + Fraction(2, 6)) / 4, rel=1e-15)
    assert scores["accuracy"] == 4 / 9


def test_trained_model_records_what_classification_needs(synthetic_model, synthetic_dataset):
    info = load_model(synthetic_model).info
    assert info.class_names == list(SYNTHETIC_CLASSES)
    assert info.input_size == 64 and info.bands == [1, 2, 3]
    assert len(info.mean) == len(info.std) == 3 and all(0 < s < 1 for s in info.std)
    provenance = info.provenance
    assert provenance["dataset"] == os.path.abspath(synthetic_dataset)
    assert provenance["n_images"] == 240 and provenance["epochs"] == 6 and provenance["augment"] is True
    assert provenance["validation_accuracy"] >= 0.9 and provenance["training_seconds"] > 0 and provenance["date"]


def test_model_generalises_to_unseen_scenes(held_out_results):
    assert held_out_results["n_images"] == 15 * len(SYNTHETIC_CLASSES)
    assert held_out_results["accuracy"] >= 0.9
    assert held_out_results["macro_f1"] >= 0.9


def test_evaluation_report_files(held_out_results, tmp_path):
    written = write_evaluation_report(str(tmp_path / "report.html"), held_out_results)
    assert sorted(os.listdir(tmp_path)) == ["report.csv", "report.html", "report_confusion.png"]
    with open(written["png"], "rb") as stream:
        assert stream.read(8) == b"\x89PNG\r\n\x1a\n"
    page = open(written["html"], encoding="utf-8").read()
    assert f"{held_out_results['accuracy']:.4f}" in page and "data:image/png;base64," in page
    with open(written["csv"], newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["class_name"] for row in rows] == list(SYNTHETIC_CLASSES)
    assert all(name in page for name in SYNTHETIC_CLASSES)
    assert sum(int(row["support"]) for row in rows) == held_out_results["n_images"]


def test_evaluation_refuses_unknown_class_folders(synthetic_model, tmp_path):
    make_scene_folder(str(tmp_path), per_class=2, size=64, seed=5, classes=("Water",))
    os.rename(tmp_path / "Water", tmp_path / "Glacier")
    with pytest.raises(AidXaiError, match="Glacier"):
        evaluate_folder(synthetic_model, str(tmp_path), device="cpu")


def test_short_run_writes_metrics_and_checkpoints(synthetic_dataset, tmp_path):
    output, metrics_path = str(tmp_path / "short.aidx.pt"), str(tmp_path / "metrics.json")
    logged = []
    config = TrainingConfig(
        dataset=synthetic_dataset, output=output, input_size=32, epochs=2, batch_size=32, checkpoints=True, metrics_path=metrics_path
    )
    metrics = train_model(config, Progress(log=logged.append))
    assert load_model(output).info.provenance["epochs_completed"] == 2
    assert sum(line.startswith("Epoch ") for line in logged) == 2 and "macro-F1" in logged[-2]
    saved = json.load(open(metrics_path))
    assert saved["accuracy"] == metrics["accuracy"] and len(saved["history"]) == 2
    with open(metrics_csv_path(metrics_path), newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["epoch"] for row in rows] == ["1", "2"] and set(rows[0]) >= {"train_loss", "val_accuracy", "val_macro_f1"}
    assert sorted(os.listdir(tmp_path)) == ["metrics.csv", "metrics.json", "short.aidx.pt"]


def test_same_seed_gives_same_model(synthetic_dataset, tmp_path):
    runs = [
        train_model(TrainingConfig(dataset=synthetic_dataset, output=str(tmp_path / f"{name}.aidx.pt"), input_size=32, epochs=1, augment=True))
        for name in ("a", "b")
    ]
    assert runs[0]["history"][0]["train_loss"] == runs[1]["history"][0]["train_loss"]
    assert runs[0]["confusion_matrix"] == runs[1]["confusion_matrix"]


def test_cancelled_training_leaves_no_model(synthetic_dataset, tmp_path):
    checks = []

    def cancel_after_a_few_batches():
        checks.append(1)
        return len(checks) > 8

    output = str(tmp_path / "cancelled.aidx.pt")
    with pytest.raises(Cancelled):
        train_model(TrainingConfig(dataset=synthetic_dataset, output=output, input_size=32, epochs=3), Progress(is_canceled=cancel_after_a_few_batches))
    assert os.listdir(tmp_path) == []


@pytest.fixture
def small_dataset(tmp_path):
    folder = tmp_path / "scenes"
    make_scene_folder(str(folder), per_class=3, size=32, seed=3, classes=("Forest", "Water"))
    return folder


def _single_class(folder):
    shutil.rmtree(folder / "Water")


def _class_with_one_image(folder):
    for name in ("Water_2.png", "Water_3.png"):
        os.remove(folder / "Water" / name)


def _empty_class(folder):
    os.makedirs(folder / "Desert")


@pytest.mark.parametrize(
    "damage, overrides, message",
    [
        (None, {"dataset": "/nonexistent/scenes"}, "does not exist"),
        (_single_class, {}, "at least 2"),
        (_class_with_one_image, {}, "Water \\(1\\)"),
        (_empty_class, {}, "Desert"),
        (None, {"input_size": MIN_INPUT_SIZE - 1}, f"at least {MIN_INPUT_SIZE}"),
        (None, {"validation_fraction": 1.0}, "between 0 and 1"),
        (None, {"epochs": 0}, "at least 1"),
        (None, {"learning_rate": 0.0}, "positive"),
    ],
)
def test_bad_inputs_are_refused_with_the_fix(small_dataset, tmp_path, damage, overrides, message):
    if damage is not None:
        damage(small_dataset)
    config = TrainingConfig(dataset=str(small_dataset), output=str(tmp_path / "out" / "model.aidx.pt"), input_size=32, epochs=1)
    for key, value in overrides.items():
        setattr(config, key, value)
    with pytest.raises(AidXaiError, match=message):
        train_model(config)
    assert not os.path.exists(config.output)


@pytest.mark.slow
def test_train_and_evaluate_through_qgis_process(synthetic_dataset, held_out_folder, tmp_path):
    model, metrics = str(tmp_path / "qgis.aidx.pt"), str(tmp_path / "qgis_metrics.json")
    trained = run_algorithm_json(
        "aid_xai:train",
        {"DATASET": synthetic_dataset, "INPUT_SIZE": 64, "EPOCHS": 5, "BATCH_SIZE": 16, "SEED": 0, "AUGMENT": "true", "DEVICE": "cpu", "OUTPUT": model, "METRICS": metrics},
    )["results"]
    assert trained["OUTPUT"] == model and trained["METRICS"] == metrics
    assert os.path.isfile(model) and os.path.isfile(metrics) and os.path.isfile(metrics_csv_path(metrics))
    assert 0 <= trained["ACCURACY"] <= 1 and 0 <= trained["MACRO_F1"] <= 1

    report = str(tmp_path / "report" / "evaluation.html")
    evaluated = run_algorithm_json(
        "aid_xai:evaluate", {"MODEL": model, "DATASET": held_out_folder, "DEVICE": "cpu", "OUTPUT_HTML": report}
    )["results"]
    assert evaluated["ACCURACY"] >= 0.9 and evaluated["MACRO_F1"] >= 0.9
    assert evaluated["OUTPUT_HTML"] == report
    assert sorted(os.listdir(os.path.dirname(report))) == ["evaluation.csv", "evaluation.html", "evaluation_confusion.png"]


def test_augmentation_only_flips_and_rotates():
    images = torch.rand(16, 3, 8, 8)
    augmented = augment_batch(images, torch.Generator().manual_seed(0))
    for image, result in zip(images, augmented):
        candidates = [torch.rot90(variant, k, dims=(1, 2)) for variant in (image, torch.flip(image, dims=(2,))) for k in range(4)]
        assert any(torch.equal(result, candidate) for candidate in candidates)
    assert not torch.equal(images, augmented)
