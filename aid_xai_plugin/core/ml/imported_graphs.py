"""Imported ONNX and TorchScript graphs as torch modules, so model files, the classifier and the
engines treat them like any other model. What the graphs can execute: an ONNX file is a data
description of tensor operators that onnxruntime interprets (no code of any language); a TorchScript
file holds TorchScript, a restricted, statically typed subset of Python run by TorchScript's own
interpreter, with no access to Python modules, files or the network. Neither runs arbitrary Python.
"""

import io

import numpy as np

from ..common.errors import AidXaiError

IMPORTED_ARCHITECTURES = ("onnx", "torchscript")


def _torch_module_base():
    from torch import nn

    return nn.Module


class _GraphModule(_torch_module_base()):
    """An imported graph as a torch module: its bytes are a buffer (saved in the model file like
    weights), the runtime is made on first use."""

    def __init__(self, graph_bytes=0):
        import torch

        super().__init__()
        self.register_buffer("graph", torch.zeros(graph_bytes, dtype=torch.uint8))
        self._set_runtime(None)

    def _set_runtime(self, runtime):
        """Kept outside torch's module registry: the runtime is rebuilt from the graph, never saved."""
        object.__setattr__(self, "_runtime", runtime)

    def set_graph(self, data):
        import torch

        self.graph = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        self._set_runtime(None)

    def graph_bytes(self):
        return self.graph.cpu().numpy().tobytes()


class OnnxModel(_GraphModule):
    """Runs an ONNX graph with onnxruntime (CUDA when the input is on the GPU and onnxruntime has it)."""

    def forward(self, x):
        import torch

        if self._runtime is None:
            self._set_runtime(onnx_session(self.graph_bytes(), x.is_cuda))
        name = self._runtime.get_inputs()[0].name
        output = self._runtime.run(None, {name: x.detach().cpu().numpy().astype(np.float32, copy=False)})[0]
        return torch.from_numpy(np.ascontiguousarray(output)).to(x.device)


class TorchScriptModel(_GraphModule):
    """Runs a TorchScript graph with torch's TorchScript interpreter."""

    def forward(self, x):
        import torch

        if self._runtime is None:
            self._set_runtime(torch.jit.load(io.BytesIO(self.graph_bytes()), map_location=x.device).eval())
        return self._runtime(x)


def build_imported_model(architecture, graph_bytes):
    return {"onnx": OnnxModel, "torchscript": TorchScriptModel}[architecture](graph_bytes)


def onnx_session(data, cuda=False):
    """An onnxruntime session for the graph `data`; a clear error when it can't run here."""
    try:
        import onnxruntime
    except ImportError as error:
        raise AidXaiError("This model is an imported ONNX model: install onnxruntime (pip install onnxruntime) to run it.") from error
    providers = ["CPUExecutionProvider"]
    if cuda and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: onnxruntime's warnings would reach QGIS's log raw
    try:
        return onnxruntime.InferenceSession(data, sess_options=options, providers=providers)
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own exception types
        text = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise AidXaiError(
            f"onnxruntime {onnxruntime.__version__} cannot run this ONNX model ({text[:300]}). Operators outside the standard ONNX domains or a newer opset are not supported; re-export it with standard operators (opset ≤ 21)."
        ) from error
