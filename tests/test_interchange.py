"""Models between tools: ONNX export with metadata Deepness parses, ONNX and TorchScript import,
round trips that classify the demo mosaic exactly as the original, and clear refusals."""

import ast
import copy
import io
import json
import os

import numpy as np
import onnx
import pytest
import rasterio
import torch

from numerics import assert_float32_outputs, assert_maps_within_float32_rounding, tile_scores

from aid_xai_plugin.core.common.errors import AidXaiError
from aid_xai_plugin.core.data.synthetic import make_scene_mosaic
from aid_xai_plugin.core.explain.engine import ExplainSettings
from aid_xai_plugin.core.ml.interchange import check_against_torch, export_onnx, import_model, parse_class_names, read_class_names_file, read_onnx_metadata
from aid_xai_plugin.core.ml.classifier import Classifier
from aid_xai_plugin.core.ml.model_file import load_model
from aid_xai_plugin.core.pipelines.classify import ClassifyOutputs, classify_raster
from aid_xai_plugin.core.pipelines.explain import ExplainOutputs, ExplainRequest, ExplainSpec, explain_raster
from aid_xai_plugin.core.pipelines.tiles import TilingOptions


@pytest.fixture(scope="module")
def demo_mosaic(tmp_path_factory):
    """The demo's mosaic layout: 4 × 6 synthetic scenes of 64 px."""
    path = str(tmp_path_factory.mktemp("interchange") / "mosaic.tif")
    make_scene_mosaic(path, rows=4, cols=6, scene_px=64, pixel_size=2.0, seed=7)
    return path


def _classify(mosaic, model, folder):
    outputs = ClassifyOutputs(class_raster=str(folder / "classes.tif"), probability_raster=str(folder / "probabilities.tif"))
    folder.mkdir(exist_ok=True)
    classify_raster(mosaic, model, TilingOptions(), outputs)
    with rasterio.open(outputs.class_raster) as classes, rasterio.open(outputs.probability_raster) as probabilities:
        return classes.read(1), probabilities.read()


@pytest.mark.numerics
def test_onnx_round_trip_classifies_the_mosaic_as_the_original(synthetic_model, demo_mosaic, tmp_path):
    onnx_path = str(tmp_path / "net.onnx")
    assert 0.0 <= export_onnx(synthetic_model, onnx_path) < 1e-3  # the logits' largest |Δ|: float32 rounding
    metadata = read_onnx_metadata(onnx_path)
    original = load_model(synthetic_model).info
    assert json.loads(metadata["class_names"]) == {str(i): name for i, name in enumerate(original.class_names)}
    assert json.loads(metadata["standardization_mean"]) == original.mean and metadata["tiles_size"] == str(original.input_size)
    graph = onnx.load(onnx_path)
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"  # dynamic batch axis
    imported = str(tmp_path / "imported.aidx.pt")
    info = import_model(onnx_path, imported)  # everything from the metadata
    assert (info.architecture, info.class_names, info.input_size, info.mean, info.std) == ("onnx", original.class_names, original.input_size, original.mean, original.std)
    classes, probabilities = _classify(demo_mosaic, synthetic_model, tmp_path / "torch")
    classes_onnx, probabilities_onnx = _classify(demo_mosaic, imported, tmp_path / "onnx")
    np.testing.assert_array_equal(classes_onnx, classes)
    reference, _ = tile_scores(demo_mosaic, synthetic_model)
    assert_float32_outputs({"onnxruntime": probabilities_onnx}, reference, probabilities, "the ONNX round trip")


@pytest.mark.numerics
def test_torchscript_round_trip_with_class_names_from_a_file(synthetic_model, demo_mosaic, tmp_path):
    loaded = load_model(synthetic_model)
    info = loaded.info
    scripted = torch.jit.trace(loaded.module.eval(), torch.zeros(1, info.num_bands, info.input_size, info.input_size))
    script_path = str(tmp_path / "net.ts")
    torch.jit.save(scripted, script_path)
    names_path = tmp_path / "classes.csv"
    names_path.write_text("class_name,colour\n" + "\n".join(f"{name},x" for name in info.class_names) + "\n")
    assert read_class_names_file(str(names_path)) == info.class_names
    imported = str(tmp_path / "imported.aidx.pt")
    import_model(script_path, imported, class_names=read_class_names_file(str(names_path)), input_size=info.input_size, mean=info.mean, std=info.std)
    classes, probabilities = _classify(demo_mosaic, synthetic_model, tmp_path / "torch")
    classes_ts, probabilities_ts = _classify(demo_mosaic, imported, tmp_path / "ts")
    np.testing.assert_array_equal(classes_ts, classes)
    reference, _ = tile_scores(demo_mosaic, synthetic_model)
    assert_float32_outputs({"TorchScript": probabilities_ts}, reference, probabilities, "the TorchScript round trip")
    # and out again: an imported TorchScript model exports to ONNX like a trained one
    assert 0.0 <= export_onnx(imported, str(tmp_path / "again.onnx")) < 1e-3 and os.path.exists(tmp_path / "again.onnx")


@pytest.mark.numerics
def test_an_imported_model_is_explained_with_full_evaluations(synthetic_model, demo_mosaic, tmp_path):
    onnx_path = str(tmp_path / "net.onnx")
    export_onnx(synthetic_model, onnx_path)
    imported = str(tmp_path / "imported.aidx.pt")
    import_model(onnx_path, imported)
    options = TilingOptions(extent=None)
    settings = ExplainSettings(masker="blur(16,16)", max_evals=40, batch_size=64)
    request = ExplainRequest(top_k=1, tile_selector=lambda corners: [(0, "", None)] if corners[0][0] < 500000.0 + 128.0 and corners[0][1] > 5600000.0 - 1.0 else [])
    result = explain_raster(ExplainSpec(demo_mosaic, imported, options, request, settings, ExplainOutputs(shap_raster=str(tmp_path / "onnx.tif")), engine="fast"))
    reference = explain_raster(ExplainSpec(demo_mosaic, synthetic_model, options, request, settings, ExplainOutputs(shap_raster=str(tmp_path / "torch.tif")), engine="exact"))
    assert result.explained == reference.explained == 1 and "traced" in result.fallback_reason
    with rasterio.open(tmp_path / "onnx.tif") as a, rasterio.open(tmp_path / "torch.tif") as b:
        maps = {"ONNX": a.read(), "torch": b.read()}
    # both are the float64 explanation of the top-left tile up to float32 rounding (tests/numerics.py)
    classifier = Classifier(load_model(synthetic_model), "cpu")
    with rasterio.open(demo_mosaic) as raster:
        tile = raster.read(window=rasterio.windows.Window(0, 0, 64, 64)).transpose(1, 2, 0).astype(np.float32) / np.float32(255.0)
    top = np.argsort(-classifier.predict_probabilities(tile[None])[0], kind="stable")[:1]
    assert_maps_within_float32_rounding(maps, classifier, tile, top, settings, "the imported model's explanation")


@pytest.mark.numerics
@pytest.mark.parametrize("architecture", ["resnet18", "mobilenet_v3_large"])
def test_deep_models_export_and_a_wrong_graph_is_still_refused(architecture, tmp_path):
    """Float32 rounding grows with depth (torch's own logits here are ~2e-5 and ~4e-5 from float64:
    a fixed 1e-5 check refused these exports); the check scales with torch's own error, and a graph
    whose logits are off by far less than a wrong operator's (weights 1e-4 off) is refused."""
    from helpers import _model_info, random_torchvision_classifier

    from aid_xai_plugin.core.ml.model_file import save_model

    classes = [f"class {index}" for index in range(30)]
    classifier = random_torchvision_classifier(architecture, 128, classes)
    model_path, onnx_path = str(tmp_path / "model.aidx.pt"), str(tmp_path / "model.onnx")
    save_model(model_path, classifier.module, _model_info(architecture, {"num_classes": 30, "in_bands": 3}, classes, 128, 3, 0.45, 0.25))
    export_onnx(model_path, onnx_path)
    assert read_onnx_metadata(onnx_path)["tiles_size"] == "128"
    nudged = copy.deepcopy(classifier.module)
    with torch.no_grad():
        [layer for layer in nudged.modules() if isinstance(layer, torch.nn.Linear)][-1].weight.mul_(1 + 1e-4)
    with open(onnx_path, "rb") as stream:
        with pytest.raises(AidXaiError, match="converted wrongly"):
            check_against_torch(stream.read(), nudged, load_model(model_path).info)


def _tiny_onnx(path, dynamic=True, classes=3, op=None, open_side=False, metadata=None):
    """A 3-band classifier graph (16×16 px, or any side with `open_side`), with `metadata` as its metadata_props."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, classes)).eval()
    buffer = io.BytesIO()
    input_axes = {0: "batch", 2: "height", 3: "width"} if open_side else {0: "batch"}
    with pytest.warns(DeprecationWarning):  # the TorchScript-based exporter, as the plugin uses it
        torch.onnx.export(model, torch.zeros(1, 3, 16, 16), buffer, input_names=["input"], output_names=["logits"], dynamic_axes={"input": input_axes, "logits": {0: "batch"}} if dynamic else None, opset_version=17, dynamo=False)
    graph = onnx.load_from_string(buffer.getvalue())
    if op:
        graph.graph.node[0].op_type, graph.graph.node[0].domain = op
        graph.opset_import.add(domain=op[1], version=1)
    for key, value in (metadata or {}).items():
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, path)
    return path


# the model types Deepness's ModelType enum accepts (src/deepness/processing/models/model_types.py)
DEEPNESS_MODEL_TYPES = ("Segmentor", "Regressor", "Detector", "Superresolution", "Recognition")


def _read_as_deepness_does(onnx_path):
    """What Deepness (the QGIS plugin, 0.6.5) takes from an ONNX file's metadata, in the steps of
    src/deepness/processing/models/model_base.py, class ModelBase: get_outputs_channel_names,
    get_metadata_model_type (and deepness_dockwidget.py's _load_model_with_type_from_metadata,
    which turns it into a ModelType), get_metadata_standarization_parameters,
    get_metadata_resolution, get_metadata_tile_size and get_metadata_tiles_overlap. Each value is
    json.loads-ed; where this raises, Deepness fails to load the model."""
    import onnxruntime

    meta = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    read = {}
    for key in ("class_names", "names"):
        if key in meta:
            try:
                names = json.loads(meta[key])
            except json.JSONDecodeError:
                names = ast.literal_eval(meta[key])  # Deepness's fallback for integer keys
            read["class_names"] = []
            for output in [names] if isinstance(names, dict) else names:
                ordered = sorted(output.items(), key=lambda item: int(item[0]))
                if [int(index) for index, _ in ordered] != list(range(len(ordered))):
                    raise ValueError("Class names in the model metadata are not consecutive (missing class label)")
                read["class_names"].append([name for _, name in ordered])
            break
    if "model_type" in meta:
        model_type = str(json.loads(meta["model_type"])).capitalize()
        if model_type not in DEEPNESS_MODEL_TYPES:
            raise ValueError(f"'{model_type}' is not a valid ModelType")
        read["model_type"] = model_type
    if "standardization_mean" in meta and "standardization_std" in meta:
        read["standardization_mean"] = [float(value) for value in json.loads(meta["standardization_mean"])]
        read["standardization_std"] = [float(value) for value in json.loads(meta["standardization_std"])]
    for key, convert in (("resolution", float), ("tile_size", int), ("tiles_overlap", int)):
        if key in meta:
            read[key] = convert(json.loads(meta[key]))
    return read


def test_exported_metadata_is_what_deepness_parses(tmp_path):
    """Deepness json.loads every metadata value: the export writes JSON, with no model_type (Deepness
    has no scene-classifier type, and one it doesn't know stops it loading the file)."""
    from helpers import random_net_model_file

    model_path, onnx_path = str(tmp_path / "model.aidx.pt"), str(tmp_path / "model.onnx")
    classes = ["Airport", "Bare land", "Baseball field"]
    random_net_model_file(model_path, 32, classes, mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3])
    export_onnx(model_path, onnx_path)
    assert _read_as_deepness_does(onnx_path) == {
        "class_names": [classes],
        "standardization_mean": [0.4, 0.5, 0.6],
        "standardization_std": [0.2, 0.25, 0.3],
        "tile_size": 32,
    }
    # every value is JSON, the keys Deepness's documentation names (tiles_size) and AID-XAI's own included
    assert {key: json.loads(value) for key, value in read_onnx_metadata(onnx_path).items()} == {
        "class_names": {"0": "Airport", "1": "Bare land", "2": "Baseball field"},
        "standardization_mean": [0.4, 0.5, 0.6],
        "standardization_std": [0.2, 0.25, 0.3],
        "tile_size": 32,
        "tiles_size": 32,
        "aid_xai_bands": [1, 2, 3],
        "aid_xai_input_scale": "0..1 (8-bit values / 255), then (x - standardization_mean) / standardization_std per band",
    }


# metadata as earlier AID-XAI versions exported it: raw strings for model_type and tiles_size
EARLIER_EXPORT_METADATA = {
    "model_type": "Classifier",
    "class_names": json.dumps({"0": "a", "1": "b", "2": "c"}),
    "standardization_mean": json.dumps([0.4, 0.5, 0.6]),
    "standardization_std": json.dumps([0.2, 0.25, 0.3]),
    "tiles_size": "16",
    "aid_xai_bands": json.dumps([3, 2, 1]),
    "aid_xai_input_scale": "0..1 (8-bit values / 255), then (x - standardization_mean) / standardization_std per band",
}
# metadata as Deepness reads it: the tile size under tile_size, values in JSON, class indices as Python ints
DEEPNESS_METADATA = {
    "model_type": json.dumps("Recognition"),
    "class_names": "{0: 'a', 1: 'b', 2: 'c'}",
    "standardization_mean": json.dumps([0.4, 0.5, 0.6]),
    "standardization_std": json.dumps([0.2, 0.25, 0.3]),
    "tile_size": json.dumps(16),
}


@pytest.mark.parametrize("metadata, bands", [(EARLIER_EXPORT_METADATA, [3, 2, 1]), (DEEPNESS_METADATA, [1, 2, 3])], ids=["earlier AID-XAI export", "Deepness keys"])
def test_import_reads_earlier_exports_and_deepness_metadata_and_exports_what_deepness_parses(tmp_path, metadata, bands):
    """The graph leaves its side open, so the input size can only come from the metadata. A re-export
    keeps the graph and replaces AID-XAI's keys: no model_type is left for Deepness to refuse."""
    source, imported, again = str(tmp_path / "source.onnx"), str(tmp_path / "imported.aidx.pt"), str(tmp_path / "again.onnx")
    _tiny_onnx(source, open_side=True, metadata=metadata)
    info = import_model(source, imported)
    assert (info.class_names, info.input_size, info.bands, info.mean, info.std) == (["a", "b", "c"], 16, bands, [0.4, 0.5, 0.6], [0.2, 0.25, 0.3])
    export_onnx(imported, again)
    read = _read_as_deepness_does(again)
    assert (read["class_names"], read["tile_size"], read["standardization_mean"], "model_type" in read) == ([["a", "b", "c"]], 16, [0.4, 0.5, 0.6], False)


@pytest.mark.parametrize(
    "text, names",
    [
        ('{"1": "b", "0": "a"}', ["a", "b"]),  # JSON, as Deepness's documentation writes it
        ("{0: 'a', 1: 'b'}", ["a", "b"]),  # Python literal with integer keys, which Deepness also reads
        ('["a", "b"]', ["a", "b"]),
        ("a, b", ["a", "b"]),
        ("a\nb\n", ["a", "b"]),
    ],
)
def test_class_names_in_every_form_deepness_and_files_use(text, names):
    assert parse_class_names(text) == names


@pytest.mark.parametrize(
    "case, expected",
    [
        ("fixed batch", "fixed batch size of 1; re-export it with a dynamic batch axis"),
        ("wrong classes", "outputs shape (2, 3) for 2 images, but 2 class names were given"),
        ("unknown operator", "cannot run this ONNX model"),
        ("no class names", "no class names in its metadata"),
        ("not a model", "cannot be read as an ONNX model"),
    ],
)
def test_models_that_cannot_work_are_refused_clearly(tmp_path, case, expected):
    path = str(tmp_path / "model.onnx")
    names = ["a", "b", "c"]
    if case == "fixed batch":
        _tiny_onnx(path, dynamic=False)
    elif case == "wrong classes":
        _tiny_onnx(path)
        names = ["a", "b"]
    elif case == "unknown operator":
        _tiny_onnx(path, op=("MysteryConv", "com.example.custom"))
    elif case == "no class names":
        _tiny_onnx(path)
        names = None
    else:
        with open(path, "wb") as stream:
            stream.write(b"\x00\x01 not protobuf at all " * 20)
    with pytest.raises(AidXaiError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        import_model(path, str(tmp_path / "out.aidx.pt"), class_names=names)
    assert not os.path.exists(tmp_path / "out.aidx.pt")


def test_export_and_import_through_qgis_process(synthetic_model, tmp_path):
    from conftest import run_algorithm_json

    onnx_path, model_path = str(tmp_path / "m.onnx"), str(tmp_path / "m.aidx.pt")
    exported = run_algorithm_json("aid_xai:export_onnx", {"MODEL": synthetic_model, "OUTPUT": onnx_path})
    assert 0.0 <= exported["results"]["MAX_DIFFERENCE"] < 1e-3
    run_algorithm_json("aid_xai:import_model", {"INPUT": onnx_path, "OUTPUT": model_path})
    assert load_model(model_path).info.class_names == load_model(synthetic_model).info.class_names
