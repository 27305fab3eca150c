"""Net matches the source document's architecture, and model files load safely or fail clearly."""

import dataclasses
import json
import os
import pickle

import pytest
import torch
from helpers import random_net_model_file

from aid_xai_plugin.core.common.errors import AidXaiError
from aid_xai_plugin.core.ml.net import Net, feature_side
from aid_xai_plugin.core.ml.model_file import FORMAT, FORMAT_VERSION, ModelInfo, load_model

SOURCE_LAYER_SHAPES = {
    "conv1": [32, 32, 252, 252],
    "pool1": [32, 32, 126, 126],
    "conv2": [32, 64, 124, 124],
    "pool2": [32, 64, 62, 62],
    "conv3": [32, 128, 60, 60],
    "pool3": [32, 128, 30, 30],
    "fc1": [32, 256],
    "fc2": [32, 128],
    "fc3": [32, 30],
}

SOURCE_LAYER_PARAMETERS = {
    "conv1": 3 * 32 * 5 * 5 + 32,
    "conv2": 32 * 64 * 3 * 3 + 64,
    "conv3": 64 * 128 * 3 * 3 + 128,
    "fc1": 128 * 30 * 30 * 256 + 256,
    "fc2": 256 * 128 + 128,
    "fc3": 128 * 30 + 30,
}


def test_parameter_count_matches_source():
    model = Net()
    assert sum(parameter.numel() for parameter in model.parameters()) == 29_623_006
    for name, count in SOURCE_LAYER_PARAMETERS.items():
        assert sum(p.numel() for p in getattr(model, name).parameters()) == count, name


def test_layer_output_shapes_match_source_summary():
    """The source's torchsummary table at batch 32×3×256×256, layer by layer."""
    model = Net().eval()
    shapes = {}
    for name in SOURCE_LAYER_SHAPES:
        getattr(model, name).register_forward_hook(lambda module, inputs, output, name=name: shapes.__setitem__(name, list(output.shape)))
    with torch.no_grad():
        model(torch.zeros(32, 3, 256, 256))
    assert shapes == SOURCE_LAYER_SHAPES


@pytest.mark.parametrize("bands, size, classes", [(4, 64, 6), (1, 24, 2), (3, 150, 30)])
def test_other_band_counts_and_sizes(bands, size, classes):
    model = Net(num_classes=classes, input_size=size, in_bands=bands).eval()
    with torch.no_grad():
        assert model(torch.rand(2, bands, size, size)).shape == (2, classes)


def test_too_small_input_is_refused():
    assert feature_side(24) == 1 and feature_side(23) == 0
    with pytest.raises(ValueError):
        Net(input_size=23)


def _info(num_classes=6, input_size=64):
    return ModelInfo(
        architecture="Net",
        arguments={"num_classes": num_classes, "input_size": input_size, "in_bands": 3},
        class_names=[f"class{i}" for i in range(num_classes)],
        input_size=input_size,
        bands=[1, 2, 3],
        mean=[0.4, 0.5, 0.6],
        std=[0.2, 0.2, 0.2],
        provenance={"seed": 0},
    )


@pytest.fixture
def small_model_file(tmp_path):
    path = str(tmp_path / "small.aidx.pt")
    model = random_net_model_file(path, 64, 6, mean=[0.4, 0.5, 0.6], std=0.2, provenance={"seed": 0})  # saved with _info()
    return path, model


def test_model_file_round_trip(small_model_file):
    path, model = small_model_file
    loaded = load_model(path)
    assert loaded.info == _info()
    assert len(loaded.sha256) == 64 and not loaded.module.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.module.state_dict()[name], tensor), name
    assert [name for name in os.listdir(os.path.dirname(path))] == ["small.aidx.pt"]  # no partial files left


def test_truncated_file_is_refused(small_model_file, tmp_path):
    path, _ = small_model_file
    with open(path, "rb") as stream:
        data = stream.read()
    truncated = tmp_path / "truncated.aidx.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(AidXaiError, match="cannot be read"):
        load_model(str(truncated))


def test_foreign_torch_file_is_refused(tmp_path):
    path = str(tmp_path / "foreign.pt")
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(AidXaiError, match="not an AID-XAI model file"):
        load_model(path)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(AidXaiError, match="does not exist"):
        load_model(str(tmp_path / "nothing.aidx.pt"))


def test_weights_of_another_architecture_are_refused(tmp_path):
    """A header that says 30 classes over weights for 6 classes."""
    path = str(tmp_path / "mismatch.aidx.pt")
    info = _info(num_classes=30)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "info": json.dumps(dataclasses.asdict(info)),
        "state_dict": Net(num_classes=6, input_size=64).state_dict(),
    }
    torch.save(payload, path)
    with pytest.raises(AidXaiError, match="do not match"):
        load_model(path)


class WritesMarker:
    """Unpickling this calls builtins.exec, which creates the marker file: a stand-in for malware."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def test_pickle_that_runs_code_is_refused_without_running_it(tmp_path):
    marker = str(tmp_path / "code_ran")
    path = str(tmp_path / "malicious.aidx.pt")
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "info": WritesMarker(marker)}, path)
    with pytest.raises(AidXaiError, match="refused"):
        load_model(path)
    assert not os.path.exists(marker)
    # The payload is live: an unrestricted load does run it.
    torch.load(path, weights_only=False)
    assert os.path.exists(marker)


def test_plain_pickle_that_runs_code_is_refused(tmp_path):
    marker = str(tmp_path / "code_ran")
    path = tmp_path / "malicious_plain.aidx.pt"
    path.write_bytes(pickle.dumps(WritesMarker(marker)))
    with pytest.raises(AidXaiError):
        load_model(str(path))
    assert not os.path.exists(marker)
