"""Splits a classifier into a convolutional front, its first Linear layer and the rest, with the
front's receptive-field geometry, so that a change inside a box only needs the front recomputed on a
window around it (incremental inference in the spirit of Krypton, SIGMOD 2019).

The model is traced with torch.fx. The front is the chain of layers from the input up to a
`flatten`; every one of them must be a layer whose geometry is known here: unpadded Conv2d, unpadded
floor-mode MaxPool2d/AvgPool2d, or an element-wise layer (activations, eval-mode BatchNorm2d and
Dropout). The flatten must feed one Linear layer, and the rest of the model may only use that
Linear's output. Anything else (padding, adaptive pooling, skip connections, …) raises CannotSplit
with the reason, and the caller falls back to full evaluations.
"""

import dataclasses


class CannotSplit(Exception):
    """The model has a part whose receptive field this module can't analyse; str() says which."""


ELEMENTWISE_MODULES = (
    "ReLU", "ReLU6", "LeakyReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish", "Sigmoid", "Tanh",
    "Hardswish", "Hardsigmoid", "Hardtanh", "Softplus", "Identity", "Dropout", "Dropout2d", "AlphaDropout",
    "BatchNorm2d",
)  # fmt: skip
ELEMENTWISE_FUNCTIONS = ("relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish", "sigmoid", "tanh", "hardswish", "softplus")
ELEMENTWISE_METHODS = ("relu", "sigmoid", "tanh")


@dataclasses.dataclass(frozen=True)
class AxisGeometry:
    """How final feature cells map to input pixels along one axis: cell c sees [c·jump, c·jump + field)."""

    jump: int
    field: int
    cells: int  # final feature cells along this axis for the analysed input size

    def affected_cells(self, start, stop):
        """The cells [first, last + 1) whose receptive field meets input pixels [start, stop)."""
        first = max(0, (start - self.field) // self.jump + 1)
        last = min(self.cells - 1, (stop - 1) // self.jump)
        return first, last + 1

    def input_span(self, first, stop):
        """Input pixels [a, b) that determine cells [first, stop) exactly."""
        return first * self.jump, (stop - 1) * self.jump + self.field


@dataclasses.dataclass
class SplitModel:
    front: object  # torch.fx.GraphModule: normalised N×C×h×w → N×F×h'×w'
    first_linear: object  # the nn.Linear after the flatten
    rest: object  # torch.fx.GraphModule: first Linear's output → logits
    rows: AxisGeometry
    cols: AxisGeometry
    features: int  # channels of the front's output


def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _layer_geometry(module):
    """(kernel, stride) per axis for a spatial module, (1, 1) for element-wise ones; CannotSplit otherwise."""
    kind = type(module).__name__
    if kind in ELEMENTWISE_MODULES:
        if kind == "BatchNorm2d" and module.training:
            raise CannotSplit("BatchNorm2d in training mode")
        return ((1, 1), (1, 1))
    if kind == "Conv2d":
        if module.padding not in ("valid", (0, 0), 0) or _pair(module.dilation) != (1, 1):
            raise CannotSplit(f"Conv2d with padding {module.padding} / dilation {module.dilation}")
        return (_pair(module.kernel_size), _pair(module.stride))
    if kind in ("MaxPool2d", "AvgPool2d"):
        if _pair(module.padding) != (0, 0) or module.ceil_mode or _pair(getattr(module, "dilation", 1)) != (1, 1):
            raise CannotSplit(f"{kind} with padding, dilation or ceil_mode")
        return (_pair(module.kernel_size), _pair(module.stride or module.kernel_size))
    raise CannotSplit(f"layer {kind}")


def _is_flatten(node, modules):
    if node.op == "call_function" and getattr(node.target, "__name__", "") == "flatten":
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return start == 1 and end == -1
    if node.op == "call_method" and node.target == "flatten":
        return len(node.args) > 1 and node.args[1] == 1 and len(node.args) < 3
    if node.op == "call_module" and type(modules[node.target]).__name__ == "Flatten":
        return modules[node.target].start_dim == 1 and modules[node.target].end_dim == -1
    return False


def _front_geometry(node, modules):
    if node.op == "call_module":
        return _layer_geometry(modules[node.target])
    only_input = len(node.all_input_nodes) == 1
    if node.op == "call_function" and getattr(node.target, "__name__", "") in ELEMENTWISE_FUNCTIONS and only_input:
        return ((1, 1), (1, 1))
    if node.op == "call_method" and node.target in ELEMENTWISE_METHODS and only_input:
        return ((1, 1), (1, 1))
    raise CannotSplit(f"operation {node.target}")


def _subgraph(traced, nodes, inputs, output):
    """A GraphModule computing `output` from `inputs` (placeholders, in order) through `nodes`."""
    import torch.fx

    graph = torch.fx.Graph()
    mapping = {node: graph.placeholder(node.name) for node in inputs}
    for node in nodes:
        mapping[node] = graph.node_copy(node, lambda other: mapping[other])
    graph.output(mapping[output])
    return torch.fx.GraphModule(traced, graph)


def split_model(module, height, width, bands):
    """A SplitModel for `module` on height×width×bands inputs; CannotSplit says why it can't be split."""
    import torch
    import torch.fx

    try:
        traced = torch.fx.symbolic_trace(module)
    except Exception as error:  # noqa: BLE001 - any tracing failure just means "no incremental mode"
        raise CannotSplit(f"the model can't be traced with torch.fx ({type(error).__name__})") from None
    modules = dict(traced.named_modules())
    nodes = list(traced.graph.nodes)
    placeholders = [node for node in nodes if node.op == "placeholder"]
    if len(placeholders) != 1:
        raise CannotSplit("the model takes more than one input")

    front, kernels, strides = [], [], []
    node = placeholders[0]
    while True:
        if len(node.users) != 1:
            raise CannotSplit(f"{node.name} feeds more than one layer")
        node = next(iter(node.users))
        if _is_flatten(node, modules):
            break
        try:
            geometry = _front_geometry(node, modules)
        except CannotSplit as reason:
            raise CannotSplit(f"{reason} is not supported in the convolutional front") from None
        front.append(node)
        kernels.append(geometry[0])
        strides.append(geometry[1])
    if not front:
        raise CannotSplit("the model has no convolutional layers before its flatten")
    flatten = node
    if len(flatten.users) != 1:
        raise CannotSplit("the flattened features feed more than one layer")
    linear_node = next(iter(flatten.users))
    if linear_node.op != "call_module" or type(modules[linear_node.target]).__name__ != "Linear":
        raise CannotSplit("the flatten is not followed by a Linear layer")
    rest = nodes[nodes.index(linear_node) + 1 :]
    allowed = set(rest) | {linear_node}
    if any(source not in allowed for node in rest for source in node.all_input_nodes):
        raise CannotSplit("layers after the first Linear use earlier results (skip connections)")
    output = [node for node in rest if node.op == "output"]
    if len(output) != 1:
        raise CannotSplit("the model has no single output")

    axes = []
    for axis, size in enumerate((height, width)):
        jump, field = 1, 1
        for kernel, stride in zip(kernels, strides):
            field += (kernel[axis] - 1) * jump
            jump *= stride[axis]
            size = (size - kernel[axis]) // stride[axis] + 1
        if size < 1:
            raise CannotSplit("the input is smaller than the front's receptive field")
        axes.append(AxisGeometry(jump=jump, field=field, cells=size))

    front_module = _subgraph(traced, front, placeholders, front[-1])
    rest_module = _subgraph(traced, [node for node in rest if node.op != "output"], [linear_node], output[0].args[0])
    linear = modules[linear_node.target]
    with torch.inference_mode():
        parameter = next(module.parameters())
        probe = torch.zeros((1, bands, height, width), dtype=parameter.dtype, device=parameter.device)
        features = front_module(probe)
    if features.dim() != 4 or tuple(features.shape[2:]) != (axes[0].cells, axes[1].cells):
        raise CannotSplit(f"the front's output {tuple(features.shape)} doesn't match its computed geometry")
    if features[0].numel() != linear.in_features:
        raise CannotSplit("the first Linear layer's width doesn't match the front's output")
    return SplitModel(front=front_module, first_linear=linear, rest=rest_module, rows=axes[0], cols=axes[1], features=int(features.shape[1]))
