"""Models in and out: ONNX export of any AID-XAI model, and import of ONNX or TorchScript files.

An imported model becomes an ordinary AID-XAI model file: its graph travels inside as a byte tensor
(still read with `torch.load(weights_only=True)`), beside the class names, input size, bands and
normalisation (`imported_graphs.py` runs it, and says what such graphs can execute).

Exported ONNX files carry their class names, normalisation and tile size under the metadata keys of
Deepness (a QGIS plugin), each value JSON as Deepness reads it; import reads them back, in that form
and in the raw strings earlier exports wrote.
"""

import ast
import io
import json
import os
import warnings

import numpy as np

from ..common.atomic import atomic_output
from ..common.errors import AidXaiError
from .imported_graphs import build_imported_model, onnx_session

ONNX_OPSET = 17
# onnxruntime and torch both compute in float32 and round in other orders; the exported graph may be
# this many times as far from the model in float64 as torch itself is (a wrongly converted operation
# is off by the size of the logits, far above it)
EXPORT_ROUNDING_MULTIPLE = 4.0


# ---- export


def export_onnx(model_path, onnx_path, progress=None):
    """Write `model_path` as ONNX (dynamic batch axis, Deepness-style metadata) and check it against
    torch on a seeded random batch; returns the max |Δ logit|."""
    import torch

    from .model_file import load_model

    loaded = load_model(model_path)
    info, module = loaded.info, loaded.module.eval()
    if info.architecture == "onnx":
        graph = module.graph_bytes()
    else:
        example = torch.zeros(1, info.num_bands, info.input_size, info.input_size)
        exportable = torch.jit.load(io.BytesIO(module.graph_bytes())).eval() if info.architecture == "torchscript" else module
        buffer = io.BytesIO()
        try:
            # the TorchScript-based exporter: it needs no extra packages (torch.export's needs onnxscript)
            with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(
                    exportable, example, buffer, input_names=["input"], output_names=["logits"],
                    dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=ONNX_OPSET, dynamo=False,
                )
        except Exception as error:  # noqa: BLE001 - the exporter raises many types
            raise AidXaiError(f"The model could not be exported to ONNX: {str(error).splitlines()[0][:300]}") from error
        graph = buffer.getvalue()
    graph = with_metadata(graph, onnx_metadata(info))
    # an imported ONNX graph goes out as it came in (new metadata only); anything else is checked against torch
    difference = 0.0 if info.architecture == "onnx" else check_against_torch(graph, exportable, info)
    with atomic_output(onnx_path) as temporary:
        with open(temporary, "wb") as stream:
            stream.write(graph)
    if progress:
        progress.log(f"Wrote {onnx_path}: {len(graph) / 1e6:.1f} MB, opset {ONNX_OPSET}, dynamic batch; max |Δ logit| vs torch {difference:.2g}")
    return difference


# Deepness's model types (segmentor, detector, regressor, super-resolution, recognition by embedding)
# include no scene classifier, and a model_type it doesn't know stops it loading the file: an
# export writes none and drops any its graph brings (earlier exports wrote a raw "Classifier").
DROPPED_METADATA_KEYS = ("model_type",)


def onnx_metadata(info):
    """Metadata values as JSON text: Deepness json.loads each value it reads."""
    values = {
        "class_names": {str(index): name for index, name in enumerate(info.class_names)},
        "standardization_mean": list(info.mean),
        "standardization_std": list(info.std),
        "tile_size": info.input_size,  # the key Deepness's code reads
        "tiles_size": info.input_size,  # the key its documentation names, and earlier exports wrote
        "aid_xai_bands": list(info.bands),
        "aid_xai_input_scale": "0..1 (8-bit values / 255), then (x - standardization_mean) / standardization_std per band",
    }
    return {key: json.dumps(value) for key, value in values.items()}


def with_metadata(graph, metadata):
    import onnx

    model = onnx.load_from_string(graph)
    kept = [entry for entry in model.metadata_props if entry.key not in metadata and entry.key not in DROPPED_METADATA_KEYS]
    del model.metadata_props[:]
    for entry in kept:
        model.metadata_props.add(key=entry.key, value=entry.value)
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    return model.SerializeToString()


def check_against_torch(graph, module, info, batch=4):
    """max |Δ logit| between onnxruntime on `graph` and torch `module` on a seeded random batch, after
    checking that it is rounding: float32 rounding grows with the network's depth and its logits
    (Net ~1e-6, resnet50 ~2e-4), so a fixed threshold refuses deep models on some CPUs; instead the
    module in float64 measures torch's own float32 error on this batch, and the graph may be
    EXPORT_ROUNDING_MULTIPLE times as far from it (+ 4 float32 ulps of the largest logit)."""
    import copy

    import torch

    images = np.random.default_rng(0).standard_normal((batch, info.num_bands, info.input_size, info.input_size)).astype(np.float32)
    session = onnx_session(graph)
    actual = session.run(None, {session.get_inputs()[0].name: images})[0].astype(np.float64)
    with torch.inference_mode():
        expected = module(torch.from_numpy(images)).double().numpy()
        reference = copy.deepcopy(module).double()(torch.from_numpy(images).double()).numpy()
    torch_error, onnx_error = float(np.abs(expected - reference).max()), float(np.abs(actual - reference).max())
    largest = float(np.abs(reference).max())
    allowed = EXPORT_ROUNDING_MULTIPLE * torch_error + 4 * float(np.spacing(np.float32(largest)))
    if not onnx_error <= allowed:
        raise AidXaiError(
            f"The exported ONNX model's logits are {onnx_error:.2g} from the model's (computed in float64), more than float32 rounding "
            f"explains ({allowed:.2g}: {EXPORT_ROUNDING_MULTIPLE:g}× torch's own {torch_error:.2g}); an operation was converted wrongly, so it was "
            "not written. Export with another torch version, or report the model's architecture."
        )
    return float(np.abs(actual - expected).max())


# ---- import


def read_onnx_metadata(path):
    """The ONNX file's metadata_props as a dict of strings."""
    import onnx

    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as error:  # noqa: BLE001 - protobuf's decode errors
        raise AidXaiError(f"'{path}' cannot be read as an ONNX model ({str(error).splitlines()[0][:200]}); give an .onnx file.") from error
    return {entry.key: entry.value for entry in model.metadata_props}


def parse_class_names(text):
    """Class names from a metadata value or a file's text: a dict {index: name} in JSON or, as
    Deepness also reads it, a Python literal with integer keys; a JSON list; or one name per line /
    comma-separated."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if value is None and text.startswith("{"):
        try:
            value = ast.literal_eval(text)  # literals only: nothing is executed
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            value = None
    if isinstance(value, dict):
        try:
            return [str(value[key]) for key in sorted(value, key=lambda key: int(key))]
        except (ValueError, TypeError) as error:
            raise AidXaiError(f"Class names {text[:80]}…: the keys must be class indices 0, 1, 2, …") from error
    if isinstance(value, list):
        return [str(name) for name in value]
    separator = "\n" if "\n" in text else ","
    return [name.strip() for name in text.split(separator) if name.strip()]


def read_class_names_file(path):
    """Names from a text file (one per line), a CSV (the first column, a header 'class_name' or
    'name' skipped) or a JSON file."""
    if not os.path.isfile(path):
        raise AidXaiError(f"Class names file '{path}' does not exist.")
    with open(path, encoding="utf-8-sig") as stream:
        text = stream.read()
    if path.lower().endswith(".csv"):
        rows = [line.split(",")[0].strip().strip('"') for line in text.splitlines() if line.strip()]
        if rows and rows[0].lower() in ("class_name", "name", "class", "label"):
            rows = rows[1:]
        return rows
    return parse_class_names(text)


def float_list(text, what):
    try:
        return [float(value) for value in json.loads(text)] if text.strip().startswith("[") else [float(value) for value in text.replace(",", " ").split()]
    except (ValueError, TypeError) as error:
        raise AidXaiError(f"{what} '{text}' must be numbers, one per band, e.g. 0.485,0.456,0.406.") from error


def import_model(source, output, class_names=None, input_size=0, bands=None, mean=None, std=None, progress=None):
    """Turn an ONNX or TorchScript file into an AID-XAI model file at `output`. Values not given come
    from the ONNX metadata (Deepness keys) when present; mean/std default to 0/1 (the graph takes
    0..1 values as they are). Returns the ModelInfo written."""
    import torch

    from .model_file import ModelInfo, now_iso, save_model

    if not os.path.isfile(source):
        raise AidXaiError(f"Model to import '{source}' does not exist.")
    with open(source, "rb") as stream:
        data = stream.read()
    architecture = "torchscript" if data[:2] == b"PK" else "onnx"
    metadata = read_onnx_metadata(source) if architecture == "onnx" else {}
    class_names = class_names or parse_class_names(metadata.get("class_names"))
    if not class_names:
        raise AidXaiError("The model has no class names in its metadata: give them (CLASS_NAMES, comma-separated, or a text/CSV file).")
    input_size = input_size or _metadata_tile_size(metadata)
    module = build_imported_model(architecture, 0)
    module.set_graph(data)
    band_count, fixed_size = _graph_input(module, architecture, source)
    input_size = input_size or fixed_size
    if not input_size:
        raise AidXaiError("The model's input size is not fixed in the graph or its metadata: give INPUT_SIZE (the tile side in pixels it was trained on).")
    if fixed_size and input_size != fixed_size:
        raise AidXaiError(f"INPUT_SIZE {input_size} does not fit the graph, whose input is fixed at {fixed_size}×{fixed_size} pixels.")
    mean = mean or (float_list(metadata["standardization_mean"], "standardization_mean") if "standardization_mean" in metadata else None)
    std = std or (float_list(metadata["standardization_std"], "standardization_std") if "standardization_std" in metadata else None)
    band_count = band_count or len(bands or mean or [])
    if not band_count:
        raise AidXaiError("The number of input bands is not fixed in the graph: give BANDS (e.g. 1,2,3).")
    bands = list(bands) if bands else (json.loads(metadata["aid_xai_bands"]) if "aid_xai_bands" in metadata else list(range(1, band_count + 1)))
    mean = list(mean) if mean else [0.0] * band_count
    std = list(std) if std else [1.0] * band_count
    if not len(bands) == len(mean) == len(std) == band_count:
        raise AidXaiError(f"The graph takes {band_count} band(s), but {len(bands)} band number(s), {len(mean)} mean(s) and {len(std)} std(s) were given; give one per band.")
    with torch.inference_mode():
        try:
            logits = module(torch.zeros(2, band_count, input_size, input_size))
        except AidXaiError:
            raise
        except Exception as error:  # noqa: BLE001 - the runtimes raise their own types
            raise AidXaiError(f"The model cannot run on a batch of 2 images of {band_count}×{input_size}×{input_size} ({str(error).splitlines()[0][:300]}). A fixed batch size must be re-exported with a dynamic batch axis.") from error
    if tuple(logits.shape) != (2, len(class_names)):
        raise AidXaiError(f"The model outputs shape {tuple(logits.shape)} for 2 images, but {len(class_names)} class names were given: it must output one score per class, (batch, {len(class_names)}).")
    info = ModelInfo(
        architecture=architecture,
        arguments={"graph_bytes": len(data)},
        class_names=list(class_names),
        input_size=int(input_size),
        bands=[int(band) for band in bands],
        mean=[float(value) for value in mean],
        std=[float(value) for value in std],
        provenance={"imported_from": os.path.abspath(source), "format": architecture, "metadata": metadata, "date": now_iso()},
    )
    save_model(output, module, info)
    if progress:
        progress.log(f"Imported {architecture} model: {len(class_names)} classes, {band_count} band(s), {input_size}×{input_size} px → {output}")
    return info


def _metadata_tile_size(metadata):
    """The tile side from `tile_size` (read by Deepness) or `tiles_size` (its documentation's key,
    written raw by earlier exports); 0 when neither is there."""
    for key in ("tile_size", "tiles_size"):
        if metadata.get(key, "").strip():
            try:
                return int(float(json.loads(metadata[key])))
            except (ValueError, TypeError) as error:
                raise AidXaiError(f"The model's metadata gives {key} '{metadata[key][:40]}', not a number of pixels; give INPUT_SIZE.") from error
    return 0


def _graph_input(module, architecture, source):
    """(bands, side) the graph fixes for its input (0 where it leaves them open); the batch axis must
    be free."""
    if architecture == "torchscript":
        return 0, 0
    session = onnx_session(module.graph_bytes())
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise AidXaiError(f"'{source}' must take one input of shape (batch, bands, height, width); it takes {[(i.name, i.shape) for i in inputs]}.")
    batch, bands, height, width = inputs[0].shape
    if isinstance(batch, int) and batch > 0:
        raise AidXaiError(f"'{source}' has a fixed batch size of {batch}; re-export it with a dynamic batch axis (torch.onnx.export(..., dynamic_axes={{'input': {{0: 'batch'}}}})).")
    if isinstance(height, int) and isinstance(width, int) and height != width:
        raise AidXaiError(f"'{source}' takes {height}×{width} inputs; AID-XAI tiles are square.")
    side = height if isinstance(height, int) and height > 0 else 0
    return (bands if isinstance(bands, int) and bands > 0 else 0), side
