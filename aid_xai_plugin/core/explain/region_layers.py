"""One layer of the region evaluator for a group of requests whose boxes have one shape: the
assembly of a layer's values around each request's box (its new values inside the changed region,
its anchor context's outside, padding beyond the map) and the layer run on those windows."""

import numpy as np

from .layer_kinds import NCHW


def window_layer(module, window):
    """A convolution or pooling on an assembled window whose padding is already in place."""
    import torch

    functional = torch.nn.functional
    kind = type(module).__name__
    if kind == "Conv2d":
        return functional.conv2d(window, module.weight, module.bias, module.stride, 0, module.dilation, module.groups)
    if kind == "MaxPool2d":
        return functional.max_pool2d(window, module.kernel_size, module.stride or module.kernel_size, 0, module.dilation)
    return functional.avg_pool2d(window, module.kernel_size, module.stride or module.kernel_size, 0)

def pointwise_layer(evaluator, layer, position, group, values):
    """An element-wise layer on its inputs' values over this layer's region."""
    import torch

    node = layer.node
    (height, width), offsets = group.windows[position]
    environment = {}
    for source in layer.inputs:
        source_size, source_offsets = group.windows[source]
        same_cells = all(np.array_equal(mine, theirs) for mine, theirs in zip(group.exact[position], group.exact[source]))
        if source_size == (height, width) and np.array_equal(source_offsets, offsets) and same_cells and evaluator.layers[source].kind != "input":
            environment[evaluator.layers[source].node] = values[source]
        else:
            window = group.assemble(source, values, offsets[:, 0], height, offsets[:, 1], width, 0.0)
            if evaluator.layers[source].layout != NCHW:
                window = window.permute(0, 2, 3, 1)
            environment[evaluator.layers[source].node] = window

    def argument(other):
        if other in environment:
            return environment[other]
        if other.op == "get_attr":
            value = evaluator.plan.graph
            for part in other.target.split("."):
                value = getattr(value, part)
            return value
        raise KeyError(other.name)

    args = torch.fx.node.map_arg(node.args, argument)
    kwargs = torch.fx.node.map_arg(node.kwargs, argument)
    if node.op == "call_module":
        return evaluator.modules[node.target](*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    return node.target(*args, **kwargs)




class Group:
    """One group of requests: their exact changed regions and uniform windows per layer, and the
    assembly of a layer's values for their revealed tiles."""

    def __init__(self, evaluator, members, exact, windows):
        self.evaluator = evaluator
        self.torch = evaluator.torch
        self.members = members
        self.exact = exact
        self.windows = windows
        self.count = len(members)

    def assemble(self, position, values, row_starts, height, col_starts, width, pad_value):
        """N×C×height×width values of layer `position` for the revealed tiles, windows starting at
        (row_starts, col_starts) (may lie partly outside the map): each request's new values inside
        its exact changed region, its context's values elsewhere, `pad_value` outside the map."""
        torch = self.torch
        evaluator = self.evaluator
        layer = evaluator.layers[position]
        if layer.kind == "input":
            rows = np.asarray(row_starts)[:, None] + np.arange(height)
            cols = np.asarray(col_starts)[:, None] + np.arange(width)
            result = self.paint(np.clip(rows, 0, layer.size[0] - 1), np.clip(cols, 0, layer.size[1] - 1))
            inside = ((rows >= 0) & (rows < layer.size[0]))[:, :, None] & ((cols >= 0) & (cols < layer.size[1]))[:, None, :]
            if not inside.all():
                mask = torch.from_numpy(inside[:, None]).to(evaluator.device)
                result = torch.where(mask, result, torch.full((), pad_value, dtype=result.dtype, device=evaluator.device))
            return result
        new = values[position]
        if layer.layout != NCHW:
            new = new.permute(0, 3, 1, 2)
        result = torch.empty((self.count, layer.channels, height, width), dtype=new.dtype, device=evaluator.device, memory_format=torch.channels_last).fill_(pad_value)
        new_offsets = self.windows[position][1]
        starts, stops = self.exact[position]
        map_rows, map_cols = layer.size
        for member, request in enumerate(self.members):
            r0, c0 = int(row_starts[member]), int(col_starts[member])
            r1, c1 = r0 + height, c0 + width
            window = request.anchor.windows[position]  # the anchor context, around a box holding this request's region
            w0, v0 = request.anchor.offsets[position]
            a0, a1 = max(r0, w0, 0), min(r1, w0 + window.shape[1], map_rows)
            b0, b1 = max(c0, v0, 0), min(c1, v0 + window.shape[2], map_cols)
            if a1 > a0 and b1 > b0:
                result[member, :, a0 - r0 : a1 - r0, b0 - c0 : b1 - c0] = window[:, a0 - w0 : a1 - w0, b0 - v0 : b1 - v0]
            a0, a1 = max(r0, int(starts[member, 0])), min(r1, int(stops[member, 0]))
            b0, b1 = max(c0, int(starts[member, 1])), min(c1, int(stops[member, 1]))
            if a1 > a0 and b1 > b0:
                n0, m0 = new_offsets[member]
                result[member, :, a0 - r0 : a1 - r0, b0 - c0 : b1 - c0] = new[member, :, a0 - n0 : a1 - n0, b0 - m0 : b1 - m0]
        return result

    def paint(self, rows, cols):
        """N×C×h×w normalised input of the revealed tiles at absolute (clipped) rows and cols."""
        box_lists = [(member.box, member.visible) for member in self.members]
        return self.evaluator.painter.windows(box_lists, self.torch.from_numpy(rows), self.torch.from_numpy(cols), [member.tile for member in self.members])
