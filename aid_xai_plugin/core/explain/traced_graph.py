"""The model as a torch.fx graph for the planner: traced once, BatchNorm folded, shapes and FLOPs
per node, and the sub-graphs the evaluators run."""

import copy

import numpy as np

from .layer_kinds import CannotSplit, pair, tensor_shape


def traced_for_inference(module, device):
    """`module` in eval mode traced with torch.fx, its BatchNorm layers folded into the convolutions
    before them (torch.fx.experimental.optimization.fuse), on `device`. Folding changes weights, so
    it works on a copy; a model without BatchNorm (Net: 118 MB of weights at 256²) is traced in
    place, sharing its parameters."""
    import torch
    from torch.fx.experimental.optimization import fuse

    has_batch_norm = any(isinstance(layer, torch.nn.modules.batchnorm._BatchNorm) for layer in module.modules())
    try:
        if has_batch_norm or module.training:
            traced = fuse(copy.deepcopy(module).eval(), inplace=True)
        else:
            traced = torch.fx.symbolic_trace(module)
    except Exception as error:  # noqa: BLE001 - any tracing failure just means "no incremental mode"
        raise CannotSplit(f"the model can't be traced with torch.fx ({type(error).__name__})") from None
    if sum(node.op == "placeholder" for node in traced.graph.nodes) != 1:
        raise CannotSplit("the model takes more than one input")
    return traced.to(device)


def propagate(graph_module, input_shape, dtype, device):
    """Record each node's output shape (node.meta["tensor_meta"]) and FLOPs (node.meta["flops"]:
    2 × multiply-adds of convolutions and linear layers) for one input of `input_shape`; returns
    the total FLOPs.

    Counted here from each layer's parameters and output shape rather than by
    torch.utils.flop_counter, which gives the same counts for these models but whose first use
    imports torch._dynamo and sympy: measured 0.5 s and 111 MB more per process, 12 % of the
    whole-process time of a Net 256² explanation at 5 000 evaluations."""
    import torch
    from torch.fx.passes.shape_prop import ShapeProp

    with torch.inference_mode():
        ShapeProp(graph_module).propagate(torch.zeros(input_shape, dtype=dtype, device=device))
    modules = dict(graph_module.named_modules())
    for node in graph_module.graph.nodes:
        node.meta["flops"] = _layer_flops(node, modules)
    return sum(node.meta["flops"] for node in graph_module.graph.nodes)


def _layer_flops(node, modules):
    shape = tensor_shape(node)
    if node.op != "call_module" or shape is None:
        return 0.0
    module = modules[node.target]
    cells = float(np.prod(shape[1:]))  # output values of one input
    kind = type(module).__name__
    if kind == "Conv2d":
        kernel = pair(module.kernel_size)
        return 2.0 * cells * module.in_channels / module.groups * kernel[0] * kernel[1]
    if kind == "Linear":
        return 2.0 * cells * module.in_features
    return 0.0


def graph_flops(graph_module, input_shape, dtype, device):
    """FLOPs of one call of `graph_module` per input of `input_shape` (N first)."""
    return propagate(graph_module, input_shape, dtype, device) / input_shape[0]


def subgraph(traced, nodes, inputs, outputs):
    """A GraphModule computing `outputs` (one node, or a tuple of nodes) from `inputs` (placeholders,
    in order) through `nodes`, which must hold everything in between."""
    import torch.fx

    graph = torch.fx.Graph()
    mapping = {node: graph.placeholder(f"input_{index}") for index, node in enumerate(inputs)}
    for node in nodes:
        if node not in mapping and node.op not in ("placeholder", "output"):
            mapping[node] = graph.node_copy(node, lambda other: mapping[other])
    graph.output(tuple(mapping[node] for node in outputs) if isinstance(outputs, tuple) else mapping[outputs])
    result = torch.fx.GraphModule(traced, graph)
    result.graph.eliminate_dead_code()
    result.recompile()
    return result


def model_output(traced):
    """The node whose value the model returns."""
    output = next(node for node in traced.graph.nodes if node.op == "output")
    if not hasattr(output.args[0], "op"):
        raise CannotSplit("the model does not return one tensor")
    return output.args[0]


def with_maps(traced, nodes):
    """A GraphModule returning the model's output followed by the maps of `nodes`: one compiled call
    that keeps the layers' maps a full evaluation also needs. (torchvision's
    create_feature_extractor would trace the model again under other node names; a sub-graph of this
    graph keeps the plan's nodes.)"""
    inputs = [node for node in traced.graph.nodes if node.op == "placeholder"]
    return subgraph(traced, list(traced.graph.nodes), inputs, (model_output(traced),) + tuple(nodes))
