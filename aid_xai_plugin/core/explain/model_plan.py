"""Plans incremental evaluation for any CNN torch.fx can trace: which layers are recomputed on just
the region a revealed box changes, and what is evaluated in full after them.

The model is traced with its BatchNorm folded (`traced_graph.py`), and each node is classified
(`layer_kinds.py`); walking from the input, the regional layers form the candidates. Two plans:
- **first-Linear update** (the source's Net and other models whose front is a chain of unpadded
  convolutions, pools and activations ending in a flatten and one Linear layer): the plan's step at
  that flatten → Linear frontier updates the Linear output from the changed features, so every
  evaluation runs only the front on a window around the box (`linear_update.py`);
- **regional prefix** (any other CNN: ResNet, MobileNet, EfficientNet, ConvNeXt, …): the prefix of
  the candidates that `cost_model.py` expects to cost the least runs on changed regions, the layers
  after its `frontier` in full (`region_evaluator.py`).
"""

import dataclasses

from .cost_model import LINEAR_UPDATE_COST, cheapest_prefix, expected_fractions, probe_boxes, typical_boxes
from .geometry import ChainGeometry, Geometry, exact_regions, layer_users
from .layer_kinds import NCHW, CannotSplit, classify, describe, is_flatten, tensor_shape, window_parameters
from .traced_graph import model_output, propagate, subgraph, traced_for_inference, with_maps


@dataclasses.dataclass
class PlanLayer:
    """One regional layer of the traced graph."""

    node: object  # the torch.fx node
    kind: str  # "input", "window" (convolution/pooling) or "pointwise"
    inputs: tuple  # positions (in the layer list) of the regional layers it reads
    size: tuple  # (rows, cols) of its map
    channels: int
    layout: tuple  # NCHW or NHWC
    flops: float  # for one full map
    rows: Geometry = None  # window layers only
    cols: Geometry = None
    pad_value: float = 0.0
    stored: bool = False  # its context values are needed around a revealed box (by windows or sums)


@dataclasses.dataclass
class LinearStep:
    """The Net-like plan: `front` (input → the map the flatten reads, unpadded layers only), the first
    Linear layer after the flatten, and `rest` (that Linear's output → logits)."""

    front: object  # GraphModule
    first_linear: object  # nn.Linear
    rest: object  # GraphModule
    rows: ChainGeometry
    cols: ChainGeometry
    features: int  # channels of the front's output
    layers: list  # the input and the front's layers


@dataclasses.dataclass
class Plan:
    graph: object  # the folded, traced GraphModule (eval mode)
    layers: list  # the regional layers planned, in graph order (layers[0] is the input)
    full_flops: float  # FLOPs of one full evaluation
    ends_because: str  # why the regional part ends where it does
    expected_fraction: float  # expected cost of an incremental evaluation / a full one
    frontier: list = None  # regional prefix: positions in `layers` whose maps the full part reads …
    rest: object = None  # … and the GraphModule computing logits from them
    rest_flops: float = 0.0
    with_maps: object = None  # … and the model returning also the maps of the `mapped` layers (stored and frontier)
    mapped: list = None
    linear_step: LinearStep = None  # or the first-Linear update


@dataclasses.dataclass
class AnalysedModel:
    traced: object
    modules: dict
    candidates: list  # every regional layer, in graph order
    ends_because: str  # why the first non-regional layer isn't regional
    full_flops: float
    shape: tuple  # (height, width, bands)


def analyse(module, height, width, bands, device):
    """Trace and fold `module`, record shapes and FLOPs for one height×width×bands input, and find
    its regional layers."""
    import torch

    traced = traced_for_inference(module, device)
    parameter = next(traced.parameters(), None)
    dtype = parameter.dtype if parameter is not None else torch.float32
    full_flops = propagate(traced, (1, bands, height, width), dtype, device)
    modules = dict(traced.named_modules())
    candidates, ends_because = _regional_layers(traced, modules, (1, bands, height, width))
    return AnalysedModel(traced, modules, candidates, ends_because, full_flops, (height, width, bands))


def make_plan(module, height, width, bands, max_evals, device):
    """The Plan for `module` on height×width×bands tiles at this budget; CannotSplit says why there
    is none (the model can't be traced, or incremental evaluation would save next to nothing)."""
    model = analyse(module, height, width, bands, device)
    try:
        step = linear_step(model)
    except CannotSplit:
        return _regional_plan(model, max_evals, device)
    ends_because = "the flatten before the first Linear layer, whose output is updated from the changed features"
    return Plan(model.traced, step.layers, model.full_flops, ends_because, LINEAR_UPDATE_COST, linear_step=step)


def linear_step(model):
    """The first-Linear update for a model whose input feeds a chain of unpadded regional layers,
    a flatten, one Linear layer and then only layers reading that Linear's output; CannotSplit says
    which part is missing."""
    position = {layer.node: layer for layer in model.candidates}
    node, front = model.candidates[0].node, []
    while True:
        if len(node.users) != 1:
            raise CannotSplit(f"{node.name} feeds more than one layer")
        node = next(iter(node.users))
        if is_flatten(node, model.modules):
            break
        layer = position.get(node)
        if layer is None or len(node.all_input_nodes) != 1:
            raise CannotSplit(f"{describe(node, model.modules)} is not supported in the convolutional front")
        if layer.kind == "window" and (layer.rows.padding or layer.cols.padding):
            raise CannotSplit(f"{describe(node, model.modules)} with padding is not supported in the convolutional front")
        front.append(layer)
    if not front:
        raise CannotSplit("the model has no convolutional layers before its flatten")
    flatten = node
    if len(flatten.users) != 1:
        raise CannotSplit("the flattened features feed more than one layer")
    linear_node = next(iter(flatten.users))
    if linear_node.op != "call_module" or type(model.modules[linear_node.target]).__name__ != "Linear":
        raise CannotSplit("the flatten is not followed by a Linear layer")
    nodes = list(model.traced.graph.nodes)
    rest = [node for node in nodes[nodes.index(linear_node) + 1 :] if node.op != "output"]
    allowed = set(rest) | {linear_node}
    if any(source not in allowed for node in rest for source in node.all_input_nodes):
        raise CannotSplit("layers after the first Linear use earlier results (skip connections)")
    height, width, _ = model.shape
    windows = [layer for layer in front if layer.kind == "window"]
    rows = ChainGeometry.of([layer.rows for layer in windows], height)
    cols = ChainGeometry.of([layer.cols for layer in windows], width)
    last = front[-1]
    if (rows.cells, cols.cells) != last.size:
        raise CannotSplit(f"the front's output {last.size} doesn't match its computed geometry")
    linear = model.modules[linear_node.target]
    if last.channels * last.size[0] * last.size[1] != linear.in_features:
        raise CannotSplit("the first Linear layer's width doesn't match the front's output")
    front_module = subgraph(model.traced, [layer.node for layer in front], [model.candidates[0].node], last.node)
    rest_module = subgraph(model.traced, rest, [linear_node], model_output(model.traced))
    return LinearStep(front_module, linear, rest_module, rows, cols, last.channels, model.candidates[:1] + front)


def _regional_plan(model, max_evals, device):
    height, width, bands = model.shape
    candidates = model.candidates
    fractions = expected_fractions(candidates, typical_boxes(height, width, bands, max_evals))
    count, cost, ends_because = cheapest_prefix(candidates, fractions, model.full_flops, device, model.ends_because, model.modules)
    layers = candidates[:count]
    mark_stored(layers, probe_boxes(height, width, bands))
    planned = {layer.node for layer in layers}
    frontier = [position for position, layer in enumerate(layers) if any(user not in planned for user in layer.node.users)]
    if 0 in frontier:
        raise CannotSplit("the model reads its input again after the layers that can be evaluated incrementally")
    frontier_nodes = [layers[position].node for position in frontier]
    rest_nodes = [node for node in model.traced.graph.nodes if node not in planned]
    rest = subgraph(model.traced, rest_nodes, frontier_nodes, model_output(model.traced))
    rest_flops = sum(node.meta.get("flops", 0.0) for node in rest_nodes)
    mapped = sorted({position for position, layer in enumerate(layers) if layer.stored} | set(frontier))
    full = with_maps(model.traced, [layers[position].node for position in mapped])
    return Plan(model.traced, layers, model.full_flops, ends_because, cost / model.full_flops, frontier, rest, rest_flops, full, mapped)


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
            if any(source.op != "get_attr" and source not in position for source in node.all_input_nodes):
                raise CannotSplit(f"{describe(node, modules)} combines a map with a value computed from the whole map")
            kind, layout, pad = classify(node, modules, position, layout_of)
            parameters = window_parameters(modules[node.target]) if kind == "window" else None
        except CannotSplit as reason:
            ends_because = ends_because or str(reason)
            continue
        shape = tensor_shape(node)
        spatial = (shape[layout[0]], shape[layout[1]])
        channels = shape[1] if layout == NCHW else shape[3]
        layer = PlanLayer(node, kind, tuple(position[source] for source in tensor_inputs), spatial, channels, layout, node.meta.get("flops", 0.0))
        if kind == "window":
            kernel, stride, padding, dilation = parameters
            layer.rows, layer.cols = (Geometry(kernel[axis], stride[axis], padding[axis], dilation[axis], spatial[axis]) for axis in range(2))
            layer.pad_value = pad
        position[node] = len(layers)
        layout_of[node] = layout
        layers.append(layer)
    return layers, ends_because or "the model ends"


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
