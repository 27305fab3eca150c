"""Plans incremental evaluation for any CNN torch.fx can trace (ResNet, MobileNet, EfficientNet,
ConvNeXt, …): which layers can be recomputed on just the region a revealed box changes, and from
which layer on the model is evaluated in full.

The model is copied, traced, and its eval-mode BatchNorm layers are folded into the convolutions
before them. Walking the graph from the input, a layer is *regional* when the value of each output
cell depends only on nearby input cells: convolutions and max/avg pooling with any padding, stride,
dilation and groups, element-wise layers (activations, BatchNorm, dropout), LayerNorm and Linear
over the channels of a channels-last map (ConvNeXt), permutes between the two layouts, sums,
products and channel concatenations of regional maps. Anything that mixes the whole map — global
or adaptive pooling, a squeeze-and-excitation scale, flatten — ends the regional part there.

For each regional layer the plan knows, per axis, which output cells a changed input interval
reaches (`Geometry.changed`) and which input cells an output interval reads (`Geometry.needed`),
padding included. The regional part actually used is the prefix of those layers, in graph order,
that minimises the expected FLOPs for the box sizes the evaluation budget reaches; the layers whose
changed region would cover most of the map are cheaper evaluated in full. The `frontier` is the set
of planned layers whose maps the full part reads.
"""

import copy
import dataclasses
import math
import operator

import numpy as np

from .receptive_field import CannotSplit

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
NCHW, NHWC = (2, 3), (1, 2)  # the spatial dimensions of each layout
# A regional layer's cost per cell relative to a full one (assembling windows, uniform group windows,
# no channels-last speed-up): layers whose changed region covers most of the map run in full
REGIONAL_COST = 1.25
# On a GPU a full evaluation costs little next to the regional work's many small kernels: measured
# on an H200 at 224², a plan saving 49 % of the FLOPs ran 2.1× shap (ResNet-18), one saving 22 % ran
# 0.44× (MobileNetV3) and one saving 4 % 0.87× (EfficientNet-B0)
GPU_MINIMUM_SAVING = 0.4


@dataclasses.dataclass(frozen=True)
class Geometry:
    """One axis of a windowed layer: output cell o reads input cells [o·stride − padding, … + reach]."""

    kernel: int
    stride: int
    padding: int
    dilation: int
    size_out: int

    @property
    def reach(self):
        return (self.kernel - 1) * self.dilation

    def changed(self, start, stop):
        """Output cells [first, stop) whose inputs meet input cells [start, stop) (numpy arrays)."""
        first = np.maximum(0, -((self.reach - self.padding - start) // self.stride))  # ceil((start + p − reach) / s)
        last = np.minimum(self.size_out, (stop - 1 + self.padding) // self.stride + 1)
        empty = (stop <= start) | (last <= first)
        return np.where(empty, 0, first), np.where(empty, 0, last)

    def needed(self, start, stop):
        """Input cells [a, b) that output cells [start, stop) read; may reach past the map (padding)."""
        return start * self.stride - self.padding, (stop - 1) * self.stride - self.padding + self.reach + 1


@dataclasses.dataclass
class PlanLayer:
    """One regional layer of the traced graph."""

    node: object  # the torch.fx node
    kind: str  # "input", "window" (convolution/pooling) or "pointwise"
    inputs: tuple  # positions (in Plan.layers) of the regional layers it reads
    size: tuple  # (rows, cols) of its map
    channels: int
    layout: tuple  # NCHW or NHWC
    flops: float  # multiply-adds × 2 for one full map
    rows: Geometry = None  # window layers only
    cols: Geometry = None
    pad_value: float = 0.0
    stored: bool = False  # its context values are needed around a revealed box (by windows or sums)


@dataclasses.dataclass
class Plan:
    graph: object  # the folded, traced GraphModule (eval mode)
    layers: list  # the regional prefix actually planned, in graph order (layers[0] is the input)
    frontier: list  # positions in `layers` whose maps the full part reads
    rest: object  # GraphModule: frontier maps → logits
    full_flops: float  # FLOPs of one full evaluation (convolutions and linear layers)
    rest_flops: float
    ends_because: str  # why the regional part ends where it does
    expected_fraction: float  # expected FLOPs of an incremental evaluation / full FLOPs


def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def fold_batch_norms(traced):
    """Fold every eval-mode BatchNorm2d that directly follows a Conv2d (used by nothing else) into it."""
    import torch

    modules = dict(traced.named_modules())
    for node in list(traced.graph.nodes):
        if node.op != "call_module" or type(modules[node.target]).__name__ != "BatchNorm2d":
            continue
        source = node.args[0]
        if not (isinstance(source, torch.fx.Node) and source.op == "call_module" and type(modules[source.target]).__name__ == "Conv2d" and len(source.users) == 1):
            continue
        conv, norm = modules[source.target], modules[node.target]
        if norm.training or conv.training or not norm.track_running_stats:
            continue
        fused = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, norm)
        parent_name, _, attribute = source.target.rpartition(".")
        setattr(traced.get_submodule(parent_name) if parent_name else traced, attribute, fused)
        node.replace_all_uses_with(source)
        traced.graph.erase_node(node)
    traced.graph.lint()
    traced.recompile()
    return traced


def _flops(node, modules, shape):
    """2 × multiply-adds of a convolution or linear layer for one output map of `shape` (N first)."""
    if node.op != "call_module":
        return 0.0
    module = modules[node.target]
    kind = type(module).__name__
    cells = float(np.prod(shape[1:]))
    if kind == "Conv2d":
        kernel = _pair(module.kernel_size)
        return 2.0 * cells * module.in_channels / module.groups * kernel[0] * kernel[1]
    if kind == "Linear":
        return 2.0 * cells * module.in_features
    return 0.0


def graph_flops(graph_module, input_shape, dtype, device):
    """FLOPs of convolutions and linear layers of a GraphModule for one input of `input_shape`."""
    import torch
    from torch.fx.passes.shape_prop import ShapeProp

    with torch.inference_mode():
        ShapeProp(graph_module).propagate(torch.zeros(input_shape, dtype=dtype, device=device))
    modules = dict(graph_module.named_modules())
    return sum(_flops(node, modules, _tensor_shape(node)) / input_shape[0] for node in graph_module.graph.nodes if _tensor_shape(node) is not None)


def _tensor_shape(node):
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _window_geometry(module, kind, size_out):
    kernel = _pair(module.kernel_size)
    stride = _pair(module.stride if module.stride is not None else module.kernel_size) if kind != "Conv2d" else _pair(module.stride)
    dilation = _pair(getattr(module, "dilation", 1)) if kind != "AvgPool2d" else (1, 1)
    padding = module.padding
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        else:  # 'same' (stride 1): torch pads the extra cell of an even reach on the far side
            if any((k - 1) * d % 2 for k, d in zip(kernel, dilation)):
                raise CannotSplit(f"{kind} with padding='same' and an even kernel")
            padding = tuple((k - 1) * d // 2 for k, d in zip(kernel, dilation))
    padding = _pair(padding)
    return [Geometry(kernel[axis], stride[axis], padding[axis], dilation[axis], size_out[axis]) for axis in range(2)]


def _classify(node, modules, regional, layout_of):
    """(kind, layout, geometries, pad value) for a node all of whose tensor inputs are regional, or
    CannotSplit saying why it isn't regional."""
    tensor_inputs = [source for source in node.all_input_nodes if source in regional]
    layout = layout_of[tensor_inputs[0]]
    shape = _tensor_shape(node)
    if shape is None or len(shape) != 4:
        raise CannotSplit(f"{_describe(node, modules)} does not give a map")
    if node.op == "call_module":
        module = modules[node.target]
        kind = type(module).__name__
        if kind in ("Conv2d", "MaxPool2d", "AvgPool2d"):
            if layout != NCHW:
                raise CannotSplit(f"{_describe(node, modules)} on a channels-last map")
            if kind == "Conv2d" and module.padding_mode != "zeros":
                raise CannotSplit(f"{_describe(node, modules)} pads with '{module.padding_mode}'")
            if kind != "Conv2d" and module.ceil_mode:
                raise CannotSplit(f"{_describe(node, modules)} uses ceil_mode")
            if kind == "AvgPool2d" and (not module.count_include_pad and _pair(module.padding) != (0, 0) or module.divisor_override):
                raise CannotSplit(f"{_describe(node, modules)} averages over the in-map cells only")
            rows, cols = _window_geometry(module, kind, shape[2:])
            return "window", NCHW, (rows, cols), (-math.inf if kind == "MaxPool2d" else 0.0)
        if kind in POINTWISE_MODULES:
            return "pointwise", layout, None, None
        if kind == "BatchNorm2d" and layout == NCHW and not module.training:
            return "pointwise", layout, None, None
        if kind == "LayerNorm" and layout == NHWC and tuple(module.normalized_shape) == (shape[3],):
            return "pointwise", layout, None, None
        if kind == "Linear" and layout == NHWC:
            return "pointwise", layout, None, None
        if kind.startswith("Adaptive"):
            raise CannotSplit(f"{_describe(node, modules)} (global pooling reads the whole map)")
        raise CannotSplit(f"{_describe(node, modules)}")
    name = getattr(node.target, "__name__", str(node.target))
    if node.op == "call_method" and node.target == "permute" or node.op == "call_function" and name == "permute":
        dims = tuple(node.args[1:]) if node.op == "call_method" else tuple(node.args[1] if len(node.args) > 1 else node.kwargs["dims"])
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = tuple(dims[0])
        if layout == NCHW and dims == (0, 2, 3, 1):
            return "pointwise", NHWC, None, None
        if layout == NHWC and dims == (0, 3, 1, 2):
            return "pointwise", NCHW, None, None
        raise CannotSplit(f"permute{dims}")
    if node.op == "call_function" and name == "layer_norm" and layout == NHWC:
        normalized = node.args[1] if len(node.args) > 1 else node.kwargs.get("normalized_shape")
        if tuple(normalized) == (shape[3],):
            return "pointwise", layout, None, None
    if node.op == "call_function" and name == "stochastic_depth":  # torchvision's: the identity in eval mode
        training = node.args[3] if len(node.args) > 3 else node.kwargs.get("training", True)
        if training is False:
            return "pointwise", layout, None, None
    if (node.op == "call_function" and name in POINTWISE_FUNCTIONS) or (node.op == "call_method" and node.target in POINTWISE_METHODS):
        if len(tensor_inputs) == 1:
            return "pointwise", layout, None, None
    if (node.op == "call_function" and (node.target in COMBINING_FUNCTIONS or name in COMBINING_NAMES)) or (node.op == "call_method" and node.target in COMBINING_NAMES):
        others = [argument for argument in node.all_input_nodes if argument not in regional]
        if all(_is_constant_per_cell(other, layout) for other in others) and all(layout_of[source] == layout and _tensor_shape(source) == shape for source in tensor_inputs):
            if len(tensor_inputs) > 1 and layout != NCHW:
                raise CannotSplit(f"{name} of channels-last maps")
            return "pointwise", layout, None, None
        raise CannotSplit(f"{name} of a map with a per-image vector (e.g. a squeeze-and-excitation scale) at {node.name}")
    if node.op == "call_function" and name == "cat":
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if layout == NCHW and dim == 1 and all(source in regional for source in node.all_input_nodes):
            return "pointwise", layout, None, None
    raise CannotSplit(f"{_describe(node, modules)}")


def _is_constant_per_cell(node, layout):
    """A parameter/buffer that is the same at every cell of a map (e.g. ConvNeXt's layer scale)."""
    if node.op != "get_attr":
        return False
    shape = _tensor_shape(node)
    if shape is None:
        return False
    padded = (1,) * (4 - len(shape)) + tuple(shape)
    return padded[layout[0]] == 1 and padded[layout[1]] == 1


def _describe(node, modules):
    if node.op == "call_module":
        return f"{type(modules[node.target]).__name__} at {node.target}"
    return f"{getattr(node.target, '__name__', node.target)} at {node.name}"


def _regional_layers(traced, modules, shape_in):
    """All regional layers in graph order and the reason the first non-regional one isn't."""
    placeholder = next(node for node in traced.graph.nodes if node.op == "placeholder")
    layers = [PlanLayer(placeholder, "input", (), tuple(shape_in[2:]), shape_in[1], NCHW, 0.0)]
    position = {placeholder: 0}
    layout_of = {placeholder: NCHW}
    ends_because = None
    for node in traced.graph.nodes:
        if node.op in ("placeholder", "get_attr", "output"):
            continue
        tensor_inputs = [source for source in node.all_input_nodes if source in position]
        if not tensor_inputs:
            continue
        try:
            if any(source.op not in ("get_attr",) and source not in position for source in node.all_input_nodes):
                raise CannotSplit(f"{_describe(node, modules)} combines a map with a value computed from the whole map")
            kind, layout, geometry, pad = _classify(node, modules, position, layout_of)
        except CannotSplit as reason:
            ends_because = ends_because or str(reason)
            continue
        shape = _tensor_shape(node)
        spatial = (shape[layout[0]], shape[layout[1]])
        channels = shape[1] if layout == NCHW else shape[3]
        layer = PlanLayer(node, kind, tuple(position[source] for source in tensor_inputs), spatial, channels, layout, _flops(node, modules, shape))
        if geometry is not None:
            layer.rows, layer.cols, layer.pad_value = geometry[0], geometry[1], pad
        position[node] = len(layers)
        layout_of[node] = layout
        layers.append(layer)
    return layers, ends_because or "the model ends"


def exact_regions(layers, boxes):
    """Per layer, the changed cells [start, stop) per axis for each of the boxes (B×6 array of
    shap's (row0, row1, col0, col1, band0, band1)): arrays (starts, stops) each B×2."""
    regions = []
    for layer in layers:
        if layer.kind == "input":
            starts, stops = boxes[:, [0, 2]].copy(), boxes[:, [1, 3]].copy()
        elif layer.kind == "window":
            source_starts, source_stops = regions[layer.inputs[0]]
            row = layer.rows.changed(source_starts[:, 0], source_stops[:, 0])
            col = layer.cols.changed(source_starts[:, 1], source_stops[:, 1])
            starts, stops = np.stack([row[0], col[0]], 1), np.stack([row[1], col[1]], 1)
        else:
            starts = np.full((len(boxes), 2), np.iinfo(np.int64).max)
            stops = np.zeros((len(boxes), 2), dtype=np.int64)
            for source in layer.inputs:
                source_starts, source_stops = regions[source]
                nonempty = (source_stops > source_starts).all(1, keepdims=True)
                starts = np.where(nonempty, np.minimum(starts, source_starts), starts)
                stops = np.where(nonempty, np.maximum(stops, source_stops), stops)
            starts = np.where(stops > 0, starts, 0)
        regions.append((starts, stops))
    return regions


def needed_by_users(layers, users, position, regions):
    """The cells of layer `position` that its users read to compute their changed cells (per box),
    clipped to the map: (starts, stops) B×2, the hull over the users."""
    size = np.array(layers[position].size)
    starts, stops = regions[position][0].copy(), regions[position][1].copy()
    for user in users[position]:
        user_starts, user_stops = regions[user]
        if layers[user].kind == "window":
            row = layers[user].rows.needed(user_starts[:, 0], user_stops[:, 0])
            col = layers[user].cols.needed(user_starts[:, 1], user_stops[:, 1])
            user_starts, user_stops = np.stack([row[0], col[0]], 1), np.stack([row[1], col[1]], 1)
        nonempty = (user_stops > user_starts).all(1, keepdims=True)
        starts = np.where(nonempty, np.minimum(starts, user_starts), starts)
        stops = np.where(nonempty, np.maximum(stops, user_stops), stops)
    return np.clip(starts, 0, size), np.clip(stops, 0, size)


def uniform_windows(starts, stops, size):
    """One window size per axis for a group of boxes (the largest interval, at least 1, at most the
    map) and each box's window start, moved inside the map: every interval stays inside its window."""
    lengths = np.clip((stops - starts).max(0), 1, size)
    offsets = np.clip(np.minimum(starts, np.asarray(size) - lengths), 0, None)
    return tuple(int(length) for length in lengths), offsets


def layer_users(layers):
    users = [[] for _ in layers]
    for position, layer in enumerate(layers):
        for source in layer.inputs:
            users[source].append(position)
    return users


def probe_boxes(height, width, bands):
    """Boxes of every size and place the tree has down to single pixels (a sample per level)."""
    return np.concatenate([boxes for boxes, _ in typical_boxes(height, width, bands, 4 * height * width * bands)])


def typical_boxes(height, width, bands, max_evals):
    """The boxes a breadth-first Owen traversal reveals within `max_evals`, level by level, and how
    many evaluations each level gets: depth d of shap's tree has 2^d boxes, each revealed in 2^(d−1)
    contexts. Returns [(B×6 boxes of a level (a sample of it), evaluations)]."""
    from .partition import split_box

    level = [(0, height, 0, width, 0, bands)]
    levels = []
    remaining = max(max_evals, 2)
    depth = 0
    while remaining > 0:
        level = [child for box in level if (box[1] - box[0]) * (box[3] - box[2]) * (box[5] - box[4]) > 1 for child in split_box(box)]
        depth += 1
        if not level:
            break
        evaluations = min(remaining, len(level) * 2 ** (depth - 1))
        levels.append((np.array(level[:: max(1, len(level) // 256)], dtype=np.int64), evaluations))
        remaining -= evaluations
    return levels


def expected_fractions(layers, levels):
    """Per layer, the expected share of its map an incremental evaluation computes: each level's
    boxes run in groups with one window size, the largest of their changed regions."""
    totals = np.zeros(len(layers))
    evaluations = 0
    for boxes, count in levels:
        for position, (starts, stops) in enumerate(exact_regions(layers, boxes)):
            cells = np.clip((stops - starts).max(0), 1, layers[position].size)
            totals[position] += count * float(np.prod(cells)) / float(np.prod(layers[position].size))
        evaluations += count
    return totals / max(evaluations, 1)


def mark_stored(layers, boxes):
    """Layers whose context values some regional user reads outside the layer's own changed cells:
    inputs of windows (their margins), and inputs of sums/products whose other operand changes more
    for some of `boxes` (a residual block's input, not its last convolution)."""
    users = layer_users(layers)
    regions = exact_regions(layers, boxes)
    for position, layer in enumerate(layers):
        if layer.kind == "input":
            continue
        for user in users[position]:
            if layers[user].kind == "window":
                layer.stored = True
            elif len(layers[user].inputs) > 1:
                (starts, stops), (user_starts, user_stops) = regions[position], regions[user]
                layer.stored = layer.stored or bool(((starts > user_starts) | (stops < user_stops)).any())
    return users


def make_plan(module, height, width, bands, max_evals, device):
    """The Plan for `module` on height×width×bands tiles at this budget; CannotSplit says why there
    is none (the model can't be traced, or incremental evaluation would save next to nothing)."""
    import torch
    import torch.fx
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        traced = torch.fx.symbolic_trace(copy.deepcopy(module).eval())
    except Exception as error:  # noqa: BLE001 - any tracing failure just means "no incremental mode"
        raise CannotSplit(f"the model can't be traced with torch.fx ({type(error).__name__})") from None
    placeholders = [node for node in traced.graph.nodes if node.op == "placeholder"]
    if len(placeholders) != 1:
        raise CannotSplit("the model takes more than one input")
    traced = fold_batch_norms(traced).to(device)
    modules = dict(traced.named_modules())
    parameter = next(traced.parameters(), None)
    dtype = parameter.dtype if parameter is not None else torch.float32
    with torch.inference_mode():
        ShapeProp(traced).propagate(torch.zeros((1, bands, height, width), dtype=dtype, device=device))
    full_flops = sum(_flops(node, modules, _tensor_shape(node)) for node in traced.graph.nodes if _tensor_shape(node) is not None)
    candidates, ends_because = _regional_layers(traced, modules, (1, bands, height, width))

    fractions = expected_fractions(candidates, typical_boxes(height, width, bands, max_evals))
    # prefix k keeps layers [0, k): its cost is their FLOPs on the changed region plus all other FLOPs
    # in full. Only prefixes whose frontier is one map (a block's output) are taken where there are
    # any: every context keeps the frontier's changed region, so one map costs the least memory.
    choices = {1: (full_flops, 1)}
    saved, spent = 0.0, 0.0
    for count in range(2, len(candidates) + 1):
        layer = candidates[count - 1]
        saved += layer.flops * (1.0 - REGIONAL_COST * fractions[count - 1])
        spent += layer.flops
        choices[count] = (full_flops - saved, _frontier_size(candidates, count))
    single = [count for count, (_, size) in choices.items() if size == 1 and count > 1]
    # the cheapest prefix (the longest among ties: layers without FLOPs come along)
    best_count = max(single or choices, key=lambda count: (-choices[count][0], count))
    best_cost = choices[best_count][0]
    if best_cost > 0.97 * full_flops:
        raise CannotSplit(
            f"incremental evaluation would save under 3 % of the FLOPs: the layers before {ends_because} hold {spent / max(full_flops, 1):.0%} of them, "
            "and at this tile size and budget a revealed box changes most of their maps"
        )
    if str(device).startswith("cuda") and best_cost > (1.0 - GPU_MINIMUM_SAVING) * full_flops:
        raise CannotSplit(
            f"incremental evaluation would save only {1.0 - best_cost / full_flops:.0%} of the FLOPs ({ends_because}); on a GPU, full evaluations are cheaper below {GPU_MINIMUM_SAVING:.0%}"
        )
    if best_count < len(candidates):
        ends_because = f"the changed region covers {fractions[best_count]:.0%} of the map at {_describe(candidates[best_count].node, modules)}"
    layers = candidates[:best_count]
    mark_stored(layers, probe_boxes(height, width, bands))
    planned = {layer.node for layer in layers}
    frontier = [position for position, layer in enumerate(layers) if any(user not in planned for user in layer.node.users)]
    if 0 in frontier:
        raise CannotSplit("the model reads its input again after the layers that can be evaluated incrementally")
    rest, rest_flops = _rest_module(traced, modules, planned, [layers[position].node for position in frontier])
    return Plan(traced, layers, frontier, rest, full_flops, rest_flops, ends_because, best_cost / full_flops)


def _frontier_size(candidates, count):
    """How many of the first `count` layers are read by later layers or the output."""
    planned = {layer.node for layer in candidates[:count]}
    return sum(any(user not in planned for user in layer.node.users) for layer in candidates[:count])


def _rest_module(traced, modules, planned, frontier_nodes):
    """A GraphModule computing the model's output from the frontier maps (placeholders, in order)."""
    import torch.fx

    graph = torch.fx.Graph()
    mapping = {node: graph.placeholder(f"frontier_{index}") for index, node in enumerate(frontier_nodes)}
    rest_flops = 0.0
    for node in traced.graph.nodes:
        if node in planned or node.op == "placeholder":
            continue
        mapping[node] = graph.node_copy(node, lambda other: mapping[other])
        shape = _tensor_shape(node)
        if shape is not None:
            rest_flops += _flops(node, modules, shape)
    rest = torch.fx.GraphModule(traced, graph)
    rest.graph.eliminate_dead_code()
    rest.recompile()
    return rest, rest_flops
