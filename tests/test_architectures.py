"""torchvision backbones in Train, initial weights for any band count, and the training recipe
(schedule, best epoch, early stopping, resume), on synthetic scenes."""

import os

import numpy as np
import pytest
import torch

from aid_xai_plugin.core.common.errors import AidXaiError, Cancelled
from aid_xai_plugin.core.common.progress import Progress
from aid_xai_plugin.core.data.synthetic import make_scene_mosaic
from aid_xai_plugin.core.explain.engine import ExplainSettings
from aid_xai_plugin.core.ml.model_file import load_model
from aid_xai_plugin.core.ml.torchvision_models import TORCHVISION_ARCHITECTURES, adapt_first_convolution, build_torchvision_model, first_convolution, load_initial_weights
from aid_xai_plugin.core.ml.training import TrainingConfig, train_model
from aid_xai_plugin.core.ml.training_checkpoint import training_state_path
from aid_xai_plugin.core.pipelines.classify import ClassifyOutputs, classify_raster
from aid_xai_plugin.core.pipelines.explain import ExplainOutputs, ExplainRequest, ExplainSpec, explain_raster
from aid_xai_plugin.core.pipelines.tiles import TilingOptions


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("arch_mosaic") / "mosaic.tif")
    make_scene_mosaic(path, rows=1, cols=3, scene_px=64, pixel_size=2.0, seed=4)
    return path


@pytest.mark.parametrize("architecture", TORCHVISION_ARCHITECTURES)
def test_each_architecture_trains_classifies_and_explains(architecture, synthetic_dataset, mosaic, tmp_path):
    """One epoch at 32 px; the model file loads, classifies the mosaic and explains a tile (the fast
    engine evaluates incrementally where its plan saves FLOPs at this size, else it takes the exact
    engine and says why)."""
    output = str(tmp_path / f"{architecture}.aidx.pt")
    metrics = train_model(TrainingConfig(dataset=synthetic_dataset, output=output, architecture=architecture, input_size=32, epochs=1, batch_size=32, optimizer="adamw", schedule="cosine", warmup_epochs=0.5))
    assert len(metrics["history"]) == 1 and 0.0 <= metrics["accuracy"] <= 1.0
    loaded = load_model(output)
    assert loaded.info.architecture == architecture and loaded.info.provenance["best_epoch"] == 1
    summary = classify_raster(mosaic, output, TilingOptions(tile_size=64), ClassifyOutputs(class_raster=str(tmp_path / "classes.tif")))
    assert summary.classified == 3
    result = explain_raster(ExplainSpec(mosaic, output, TilingOptions(tile_size=64), ExplainRequest(top_k=1), ExplainSettings(masker="blur(8,8)", max_evals=30, batch_size=32), ExplainOutputs(shap_raster=str(tmp_path / "shap.tif")), engine="fast"))
    assert result.explained == 3
    assert result.fallback_reason is None or "incremental evaluation would save under 3 %" in result.fallback_reason
    import rasterio

    with rasterio.open(tmp_path / "shap.tif") as raster:
        assert np.isfinite(raster.read()).all()


def test_initial_weights_start_a_four_band_model_from_rgb_filters(tmp_path):
    """A torchvision-style 3-band, 1000-class state dict written here: everything but the head is
    copied; the first convolution keeps the RGB filters for bands 1-3 and their mean for band 4."""
    with torch.random.fork_rng():
        torch.manual_seed(3)
        source = build_torchvision_model("resnet18", num_classes=1000, in_bands=3)
    weights = str(tmp_path / "resnet18-imagenet-like.pth")
    torch.save({"module." + key: value for key, value in source.state_dict().items()}, weights)  # DataParallel-style keys
    model = build_torchvision_model("resnet18", num_classes=6, in_bands=4)
    loaded, skipped = load_initial_weights(model, weights, "resnet18")
    assert skipped == 2 and loaded == len(model.state_dict()) - 2  # fc.weight, fc.bias: 6 classes here
    rgb = source.conv1.weight.detach()
    conv = first_convolution(model)[3].weight.detach()
    assert conv.shape[1] == 4
    torch.testing.assert_close(conv[:, :3], rgb)
    torch.testing.assert_close(conv[:, 3], rgb.mean(dim=1))
    torch.testing.assert_close(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert not torch.equal(model.fc.weight[:6], source.fc.weight[:6, :])


def test_one_band_filters_keep_the_response_to_a_grey_image():
    rgb = torch.randn(8, 3, 3, 3)
    grey = torch.rand(1, 1, 5, 5)
    one_band = adapt_first_convolution(rgb, 1)
    torch.testing.assert_close(torch.nn.functional.conv2d(grey, one_band), torch.nn.functional.conv2d(grey.repeat(1, 3, 1, 1), rgb))


def test_weights_that_could_run_code_or_match_nothing_are_refused(tmp_path):
    model = build_torchvision_model("mobilenet_v3_large", num_classes=6)
    pickled_module = str(tmp_path / "module.pth")
    torch.save(torch.nn.Linear(2, 2), pickled_module)  # a whole module: unpickling it runs code
    with pytest.raises(AidXaiError, match="could run code"):
        load_initial_weights(model, pickled_module, "mobilenet_v3_large")
    other = str(tmp_path / "other.pth")
    torch.save({"something.else": torch.zeros(3)}, other)
    with pytest.raises(AidXaiError, match="match none of mobilenet_v3_large's layers"):
        load_initial_weights(model, other, "mobilenet_v3_large")


def test_training_from_initial_weights_through_the_recipe(synthetic_dataset, tmp_path):
    with torch.random.fork_rng():
        torch.manual_seed(5)
        source = build_torchvision_model("resnet18", num_classes=1000)
    weights = str(tmp_path / "start.pth")
    torch.save(source.state_dict(), weights)
    logged = []
    config = TrainingConfig(
        dataset=synthetic_dataset, output=str(tmp_path / "m.aidx.pt"), architecture="resnet18", init_weights=weights, input_size=32, epochs=2, batch_size=32,
        freeze_epochs=1, balanced_sampling=True, label_smoothing=0.1, weight_decay=0.01, optimizer="sgd", learning_rate=0.01,
    )
    train_model(config, Progress(log=logged.append))
    assert any("tensors loaded" in line for line in logged) and "backbone frozen" in next(line for line in logged if line.startswith("Epoch 1/"))
    provenance = load_model(config.output).info.provenance
    assert provenance["init_weights"] == "start.pth" and provenance["optimizer"] == "sgd" and provenance["freeze_epochs"] == 1


def test_a_frozen_backbone_keeps_its_batchnorm_statistics(synthetic_dataset, tmp_path):
    """During FREEZE_EPOCHS only the head learns: the backbone's BatchNorm running statistics (which
    train mode would move towards this data set) stay the initial weights' exactly."""
    with torch.random.fork_rng():
        torch.manual_seed(5)
        source = build_torchvision_model("resnet18", num_classes=1000)
        for module in source.modules():  # statistics unlike the synthetic scenes', so any update shows
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1.0, 1.0)
                module.running_var.uniform_(0.5, 2.0)
    weights = str(tmp_path / "start.pth")
    torch.save(source.state_dict(), weights)
    config = TrainingConfig(dataset=synthetic_dataset, output=str(tmp_path / "m.aidx.pt"), architecture="resnet18", init_weights=weights, input_size=32, epochs=1, batch_size=32, freeze_epochs=1)
    train_model(config)
    trained = load_model(config.output).module.state_dict()
    statistics = [name for name in trained if name.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(statistics) == 60  # resnet18's 20 BatchNorm layers
    for name in statistics:
        torch.testing.assert_close(trained[name], source.state_dict()[name], rtol=0, atol=0, msg=name)
    assert trained["fc.weight"].shape[0] == 6  # the head is the synthetic scenes' own, trained from random


def test_the_saved_model_is_the_best_epoch_and_early_stopping_ends_the_run(synthetic_dataset, tmp_path):
    """The saved model is the epoch with the highest validation macro-F1 (the later one among equals).
    With a learning rate too small to change any prediction, macro-F1 never improves after epoch 1,
    so EARLY_STOPPING = 2 ends the run after epoch 3 of 8."""
    config = TrainingConfig(dataset=synthetic_dataset, output=str(tmp_path / "m.aidx.pt"), input_size=32, epochs=8, batch_size=32, learning_rate=1e-12, early_stopping=2)
    metrics = train_model(config)
    scores = [row["val_macro_f1"] for row in metrics["history"]]
    assert len(scores) == 3 and len(set(scores)) == 1
    assert metrics["best_epoch"] == 3 and load_model(config.output).info.provenance["best_epoch"] == 3
    trained = train_model(TrainingConfig(dataset=synthetic_dataset, output=str(tmp_path / "t.aidx.pt"), input_size=32, epochs=4, batch_size=32))
    scores = [row["val_macro_f1"] for row in trained["history"]]
    assert trained["best_epoch"] == len(scores) - int(np.argmax(scores[::-1])) and trained["macro_f1"] == max(scores)


def test_an_interrupted_run_resumes_where_it_stopped_with_the_same_result(synthetic_dataset, tmp_path):
    """Cancelled during epoch 3 of 4 with checkpoints on, then resumed: the same per-epoch history
    and the same final weights as an uninterrupted run (batches, augmentation and dropout draw from
    per-epoch and saved RNG states)."""
    common = dict(dataset=synthetic_dataset, input_size=32, epochs=4, batch_size=32, augment=True, checkpoints=True, seed=2)
    whole = train_model(TrainingConfig(output=str(tmp_path / "whole" / "m.aidx.pt"), **common))
    output = str(tmp_path / "parts" / "m.aidx.pt")
    logged, checks_in_epoch_three = [], []

    def cancel_in_epoch_three():
        if sum(line.startswith("Epoch ") for line in logged) == 2:
            checks_in_epoch_three.append(1)
        return len(checks_in_epoch_three) > 3  # a few batches into epoch 3

    with pytest.raises(Cancelled):
        train_model(TrainingConfig(output=output, **common), Progress(log=logged.append, is_canceled=cancel_in_epoch_three))
    assert os.path.exists(training_state_path(output)) and load_model(output).info.provenance["epochs_completed"] == 2
    resumed = train_model(TrainingConfig(output=output, resume=True, **common))
    strip = [{key: value for key, value in row.items() if key != "seconds"} for row in resumed["history"]]
    assert strip == [{key: value for key, value in row.items() if key != "seconds"} for row in whole["history"]]
    assert not os.path.exists(training_state_path(output))
    for name, tensor in load_model(output).module.state_dict().items():
        torch.testing.assert_close(tensor, load_model(whole["model"]).module.state_dict()[name], rtol=0, atol=0)
    with pytest.raises(AidXaiError, match="Nothing to resume"):
        train_model(TrainingConfig(output=output, resume=True, **common))
