"""AID-XAI model files: one self-describing, versioned file that never executes code on load.

Layout (a torch archive read with `torch.load(weights_only=True)`, which refuses any pickle that
would build arbitrary objects): {"format": "aid-xai-model", "format_version": 1, "info": JSON text,
"state_dict": tensors}. `info` records architecture and arguments, class names, input size, band
order, normalisation and training provenance.
"""

import dataclasses
import datetime
import hashlib
import json
import os

from ..common.atomic import atomic_output
from ..common.errors import AidXaiError
from .model_source import cached_model, is_model_url

FORMAT = "aid-xai-model"
FORMAT_VERSION = 1
MODEL_EXTENSION = ".aidx.pt"


@dataclasses.dataclass
class ModelInfo:
    architecture: str
    arguments: dict
    class_names: list
    input_size: int
    bands: list  # 1-based source band numbers the model expects, in order (e.g. [1, 2, 3])
    mean: list
    std: list
    provenance: dict = dataclasses.field(default_factory=dict)

    @property
    def num_bands(self):
        return len(self.bands)


@dataclasses.dataclass
class LoadedModel:
    module: object  # torch.nn.Module in eval mode
    info: ModelInfo
    path: str
    sha256: str


def save_model(path, module, info):
    """Write `module`'s weights and `info` atomically to `path`."""
    import torch

    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "info": json.dumps(dataclasses.asdict(info)),
        "state_dict": {name: tensor.detach().cpu() for name, tensor in module.state_dict().items()},
    }
    with atomic_output(path) as temporary:
        torch.save(payload, temporary)


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_model(path, device="cpu", expected_sha256=""):
    """Load and check a model file; every way it can be wrong gives an AidXaiError saying why. `path`
    may be an http(s):// URL: the file is downloaded into the model cache first (`model_source`; with
    `expected_sha256`, a cached copy with that content is used and another download refused)."""
    import pickle

    import torch

    from .net import build_model

    source = path
    if is_model_url(path):
        path = cached_model(path, expected_sha256)
    if not os.path.isfile(path):
        raise AidXaiError(f"Model file '{path}' does not exist; train one with aid_xai:train or give the path of a {MODEL_EXTENSION} file.")
    with open(path, "rb") as stream:
        if stream.read(2) != b"PK":
            raise AidXaiError(f"Model file '{path}' cannot be read: it is not a torch archive (an AID-XAI model file is one). Give a {MODEL_EXTENSION} file written by aid_xai:train.")
    check_archive(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise AidXaiError(
            f"Model file '{path}' was refused: it contains objects other than tensors and plain data "
            f"(it could run code when loaded), so it is not an AID-XAI model file. ({str(error).splitlines()[0]})"
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise AidXaiError(f"Model file '{path}' cannot be read (truncated or not a model file): {str(error).splitlines()[0]}") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise AidXaiError(f"'{path}' is a torch file but not an AID-XAI model file (no '{FORMAT}' header); train a model with aid_xai:train.")
    if payload.get("format_version") != FORMAT_VERSION:
        raise AidXaiError(
            f"Model file '{path}' has format version {payload.get('format_version')}, this plugin reads version {FORMAT_VERSION}; update the plugin or retrain the model."
        )
    try:
        info = ModelInfo(**json.loads(payload["info"]))
        with torch.random.fork_rng(devices=[]):  # the throw-away initial weights must not draw from the process's RNG
            module = build_model(info.architecture, info.arguments)
    except (KeyError, TypeError, ValueError) as error:
        raise AidXaiError(f"Model file '{path}' has an invalid description ({error}); it was not written by AID-XAI or is damaged.") from error
    try:
        module.load_state_dict(payload["state_dict"], strict=True)
    except (RuntimeError, KeyError) as error:
        raise AidXaiError(
            f"Model file '{path}': the weights do not match the recorded architecture {info.architecture}{info.arguments}: {str(error).splitlines()[0]}"
        ) from error
    try:
        check_description(path, info)
    except TypeError as error:
        raise AidXaiError(f"Model file '{path}' has an invalid description ({error}); it was not written by AID-XAI or is damaged.") from error
    check_finite_weights(path, payload["state_dict"])
    module.eval().to(device)
    return LoadedModel(module=module, info=info, path=source if is_model_url(source) else os.path.abspath(path), sha256=file_sha256(path))


def check_archive(path):
    """torch.load does not verify the archive's CRC-32 checksums, so flipped bytes inside the weights
    would load as silently different weights: check them (one read of the file)."""
    import zipfile
    import zlib

    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, RuntimeError, zlib.error) as error:
        raise AidXaiError(f"Model file '{path}' cannot be read (truncated or not a model file): {str(error).splitlines()[0] if str(error) else type(error).__name__}. Copy it again or retrain the model.") from error
    if damaged is not None:
        raise AidXaiError(f"Model file '{path}' is damaged: the checksum of its part '{damaged}' does not match (bytes changed on disk or in transfer). Copy it again or retrain the model.")


def check_description(path, info):
    """The recorded classes, bands and normalisation must fit the weights and each other."""
    import math

    classes = info.arguments.get("num_classes") if isinstance(info.arguments, dict) else None
    if classes is not None and classes != len(info.class_names):
        raise AidXaiError(
            f"Model file '{path}' lists {len(info.class_names)} class name(s) but its weights have {classes} outputs: the file is inconsistent (damaged or edited); retrain the model or use another model file."
        )
    if not info.bands or len(info.mean) != len(info.bands) or len(info.std) != len(info.bands):
        raise AidXaiError(f"Model file '{path}' records {len(info.bands)} band(s) but {len(info.mean)} means and {len(info.std)} standard deviations; the file is damaged or edited. Retrain the model.")
    values = [*info.mean, *info.std]
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values) or min(info.std) <= 0:
        raise AidXaiError(f"Model file '{path}' records an unusable normalisation (mean {info.mean}, std {info.std}: each must be finite, std > 0); retrain the model.")


def check_finite_weights(path, state_dict):
    """Refuse NaN/Inf weights (a diverged training or a damaged file): they would give NaN maps."""
    import torch

    bad = [name for name, tensor in state_dict.items() if torch.is_tensor(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise AidXaiError(
            f"Model file '{path}' has NaN or infinite weights ({shown}): the training diverged or the file is damaged; retrain it (e.g. with a lower learning rate) or use another model file."
        )


def now_iso():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
