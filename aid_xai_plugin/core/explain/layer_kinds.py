"""What each torch.fx node of a traced model is to the planner: the one table of layer kinds.

A node is *regional* when each output cell depends only on nearby input cells: convolutions and
max/avg pooling (any padding, stride, dilation, groups) are *windows*; activations, BatchNorm,
dropout, LayerNorm and Linear over the channels of a channels-last map (ConvNeXt), permutes between
the two layouts, sums, products and channel concatenations of regional maps are *pointwise*.
Anything that mixes the whole map (global or adaptive pooling, a squeeze-and-excitation scale,
flatten) is not, and `classify` says why in a CannotSplit.
"""

import math
import operator


class CannotSplit(Exception):
    """The model has no part that can be evaluated incrementally here; str() says why."""


POINTWISE_MODULES = {
    "ReLU", "ReLU6", "LeakyReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish", "Sigmoid", "Tanh",
    "Hardswish", "Hardsigmoid", "Hardtanh", "Softplus", "PReLU", "Identity", "Dropout", "Dropout2d", "AlphaDropout",
}  # fmt: skip
POINTWISE_FUNCTIONS = {
    "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish", "sigmoid", "tanh", "hardswish",
    "hardsigmoid", "hardtanh", "softplus", "dropout", "identity",
}  # fmt: skip
POINTWISE_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone"}
COMBINING_FUNCTIONS = {operator.add, operator.mul, operator.sub, operator.truediv, operator.iadd, operator.imul}
COMBINING_NAMES = {"add", "mul", "sub", "div"}
WINDOW_MODULES = ("Conv2d", "MaxPool2d", "AvgPool2d")
NCHW, NHWC = (2, 3), (1, 2)  # the spatial dimensions of each layout


def pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def tensor_shape(node):
    """The shape shape propagation recorded for a node's output, None if it is not a tensor."""
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def describe(node, modules):
    if node.op == "call_module":
        return f"{type(modules[node.target]).__name__} at {node.target}"
    return f"{getattr(node.target, '__name__', node.target)} at {node.name}"


def window_padding(module, kind, kernel, dilation):
    """A window module's padding per axis as numbers ('same' resolved as torch pads it)."""
    padding = module.padding
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0)
        if any((k - 1) * d % 2 for k, d in zip(kernel, dilation)):  # 'same' pads an even reach's extra cell on the far side
            raise CannotSplit(f"{kind} with padding='same' and an even kernel")
        return tuple((k - 1) * d // 2 for k, d in zip(kernel, dilation))
    return pair(padding)


def window_parameters(module):
    """(kernel, stride, padding, dilation), each per axis, of a Conv2d/MaxPool2d/AvgPool2d."""
    kind = type(module).__name__
    kernel = pair(module.kernel_size)
    stride = pair(module.stride) if kind == "Conv2d" else pair(module.stride if module.stride is not None else module.kernel_size)
    dilation = pair(getattr(module, "dilation", 1)) if kind != "AvgPool2d" else (1, 1)
    return kernel, stride, window_padding(module, kind, kernel, dilation), dilation


def is_flatten(node, modules):
    """Whether a node flattens all but the batch axis (torch.flatten(x, 1), x.flatten(1), nn.Flatten())."""
    if node.op == "call_function" and getattr(node.target, "__name__", "") == "flatten":
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return start == 1 and end == -1
    if node.op == "call_method" and node.target == "flatten":
        return len(node.args) > 1 and node.args[1] == 1 and len(node.args) < 3
    if node.op == "call_module" and type(modules[node.target]).__name__ == "Flatten":
        return modules[node.target].start_dim == 1 and modules[node.target].end_dim == -1
    return False


def classify(node, modules, regional, layout_of):
    """(kind, layout, pad value) of a node all of whose tensor inputs are regional: kind "window" or
    "pointwise", the layout of its output, the value a window pads with; CannotSplit says why the
    node is not regional."""
    tensor_inputs = [source for source in node.all_input_nodes if source in regional]
    layout = layout_of[tensor_inputs[0]]
    shape = tensor_shape(node)
    if shape is None or len(shape) != 4:
        raise CannotSplit(f"{describe(node, modules)} does not give a map")
    if node.op == "call_module":
        return _classify_module(node, modules, layout, shape)
    name = getattr(node.target, "__name__", str(node.target))
    if node.op == "call_method" and node.target == "permute" or node.op == "call_function" and name == "permute":
        dims = tuple(node.args[1:]) if node.op == "call_method" else tuple(node.args[1] if len(node.args) > 1 else node.kwargs["dims"])
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = tuple(dims[0])
        if layout == NCHW and dims == (0, 2, 3, 1):
            return "pointwise", NHWC, None
        if layout == NHWC and dims == (0, 3, 1, 2):
            return "pointwise", NCHW, None
        raise CannotSplit(f"permute{dims}")
    if node.op == "call_function" and name == "layer_norm" and layout == NHWC:
        normalized = node.args[1] if len(node.args) > 1 else node.kwargs.get("normalized_shape")
        if tuple(normalized) == (shape[3],):
            return "pointwise", layout, None
    if node.op == "call_function" and name == "stochastic_depth":  # torchvision's: the identity in eval mode
        training = node.args[3] if len(node.args) > 3 else node.kwargs.get("training", True)
        if training is False:
            return "pointwise", layout, None
    if (node.op == "call_function" and name in POINTWISE_FUNCTIONS) or (node.op == "call_method" and node.target in POINTWISE_METHODS):
        if len(tensor_inputs) == 1:
            return "pointwise", layout, None
    if (node.op == "call_function" and (node.target in COMBINING_FUNCTIONS or name in COMBINING_NAMES)) or (node.op == "call_method" and node.target in COMBINING_NAMES):
        others = [argument for argument in node.all_input_nodes if argument not in regional]
        if all(_is_constant_per_cell(other, layout) for other in others) and all(layout_of[source] == layout and tensor_shape(source) == shape for source in tensor_inputs):
            if len(tensor_inputs) > 1 and layout != NCHW:
                raise CannotSplit(f"{name} of channels-last maps")
            return "pointwise", layout, None
        raise CannotSplit(f"{name} of a map with a per-image vector (e.g. a squeeze-and-excitation scale) at {node.name}")
    if node.op == "call_function" and name == "cat":
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if layout == NCHW and dim == 1 and all(source in regional for source in node.all_input_nodes):
            return "pointwise", layout, None
    raise CannotSplit(f"{describe(node, modules)}")


def _classify_module(node, modules, layout, shape):
    module = modules[node.target]
    kind = type(module).__name__
    if kind in WINDOW_MODULES:
        if layout != NCHW:
            raise CannotSplit(f"{describe(node, modules)} on a channels-last map")
        if kind == "Conv2d" and module.padding_mode != "zeros":
            raise CannotSplit(f"{describe(node, modules)} pads with '{module.padding_mode}'")
        if kind != "Conv2d" and module.ceil_mode:
            raise CannotSplit(f"{describe(node, modules)} uses ceil_mode")
        if kind == "AvgPool2d" and (not module.count_include_pad and pair(module.padding) != (0, 0) or module.divisor_override):
            raise CannotSplit(f"{describe(node, modules)} averages over the in-map cells only")
        return "window", NCHW, (-math.inf if kind == "MaxPool2d" else 0.0)
    if kind in POINTWISE_MODULES:
        return "pointwise", layout, None
    if kind == "BatchNorm2d" and layout == NCHW and not module.training:
        return "pointwise", layout, None
    if kind == "LayerNorm" and layout == NHWC and tuple(module.normalized_shape) == (shape[3],):
        return "pointwise", layout, None
    if kind == "Linear" and layout == NHWC:
        return "pointwise", layout, None
    if kind.startswith("Adaptive"):
        raise CannotSplit(f"{describe(node, modules)} (global pooling reads the whole map)")
    raise CannotSplit(f"{describe(node, modules)}")


def _is_constant_per_cell(node, layout):
    """A parameter/buffer that is the same at every cell of a map (e.g. ConvNeXt's layer scale)."""
    if node.op != "get_attr":
        return False
    shape = tensor_shape(node)
    if shape is None:
        return False
    padded = (1,) * (4 - len(shape)) + tuple(shape)
    return padded[layout[0]] == 1 and padded[layout[1]] == 1
