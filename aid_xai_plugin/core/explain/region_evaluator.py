"""Incremental evaluation of masked tiles for any planned CNN (`region_plan.py`).

Every request of shap's traversal is a context (an evaluated masked tile) plus one revealed box, so
in each planned layer only the cells the box reaches change. Those cells are recomputed from the
context's values around them and the new values of the layer below; the layers after the plan's
frontier run in full on the frontier maps.

What a context keeps (its `ContextState`) is small:
- for each layer whose neighbours are read (inputs of convolutions, pools and sums), the context's
  values in a window around the box the context will be extended by next — shap's traversal
  reveals sub-boxes of that box on top of it, and only its neighbourhood is ever read;
- for the frontier maps, a chain of the changed regions back to the fully evaluated background,
  from which any context's full frontier map is rebuilt when it is needed.

Requests are grouped by the shape of their box so a whole group runs each layer in one call, on
windows of one size (cells outside a request's exact changed region are computed but never used). Where revealing a box changes no input value, the request reuses its context's
outputs and state, so shap's exact priority ties survive.
"""

import dataclasses

import numpy as np

from ..ml.classifier import outputs_from_logits
from .partition import box_tensor
from .region_plan import NCHW, exact_regions, layer_users, needed_by_users, uniform_windows

MAPS_PER_REST_CALL = 64  # frontier maps per call of the full part (bounds its activations)
TILES_PER_FULL_CALL = 16
# Memory for the states of queued contexts; beyond it the states of the nodes least likely to be
# expanded are dropped, and such a node, if it is expanded after all, is evaluated in full
STATE_MEMORY_BUDGET = 2 << 30


@dataclasses.dataclass
class ContextState:
    windows: dict  # stored layer position → C×h×w tensor of the context's values …
    offsets: dict  # … whose first cell is at this (row, col) of the layer's map
    link: tuple  # (parent link, deltas): deltas are (frontier position, r0, r1, c0, c1, values); None = background
    outputs: np.ndarray  # the context's outputs, all classes


def _region_index(layout, r0, r1, c0, c1):
    """The index of a region of one map (no batch axis) in `layout`."""
    if layout == NCHW:
        return (slice(None), slice(r0, r1), slice(c0, c1))
    return (slice(r0, r1), slice(c0, c1), slice(None))


class RegionEvaluator:
    """The `evaluate` callback of `owen_node_values` for a planned model, on one tile."""

    def __init__(self, plan, image_hwc, background_hwc, classifier, class_indices, output_space):
        import torch

        self.torch = torch
        self.plan = plan
        self.layers = plan.layers
        self.users = layer_users(plan.layers)
        self.last_reader = [max(readers, default=position) for position, readers in enumerate(self.users)]
        self.stored = [position for position, layer in enumerate(plan.layers) if layer.stored]
        self.modules = dict(plan.graph.named_modules())
        self.device = classifier.device
        self.output_space = output_space
        self.indices = np.asarray(class_indices, dtype=int)
        self.changes = np.asarray(image_hwc != background_hwc)  # where revealing changes the input
        self.image = classifier.normalised_chw(image_hwc)
        self.background = classifier.normalised_chw(background_hwc)
        self.bands, self.height, self.width = self.image.shape
        self.executed_flops = 0.0
        self.evaluations = 0
        self.full_evaluations = 0  # requests evaluated in full because their context's state was dropped
        self._state_bytes = [0, 0]  # bytes of the states made so far, and how many

    @property
    def max_states(self):
        """How many context states the traversal may keep (`partition.forget_unreachable_states`)."""
        total, count = self._state_bytes
        return max(64, int(STATE_MEMORY_BUDGET * count / max(total, 1)))

    def flop_bound(self):
        """The speed-up FLOPs allow: full evaluations' FLOPs over those executed."""
        return self.evaluations * self.plan.full_flops / max(self.executed_flops, 1.0)

    # --- full evaluations -------------------------------------------------------------------

    def _full(self, tiles):
        """All-class outputs of whole normalised tiles (N×C×H×W), with the maps of the stored and
        frontier layers."""
        torch = self.torch
        wanted = {self.layers[position].node: position for position in set(self.stored) | set(self.plan.frontier)}
        captured = {}

        class Recorder(torch.fx.Interpreter):
            def run_node(self, node):
                result = super().run_node(node)
                if node in wanted:
                    captured[wanted[node]] = result
                return result

        with torch.inference_mode():
            logits = Recorder(self.plan.graph).run(tiles)
        self.executed_flops += len(tiles) * self.plan.full_flops
        return outputs_from_logits(logits, self.output_space).astype(np.float64), captured

    def start(self, root):
        """((f(nothing visible), its state), f(everything visible)), all classes, evaluated in full."""
        outputs, captured = self._full(self.torch.stack([self.background, self.image]))
        self.evaluations += 2
        self.background_frontier = {position: captured[position][0] for position in self.plan.frontier}
        windows = {position: captured[position][0] for position in self.stored}
        state = ContextState(windows, {position: (0, 0) for position in self.stored}, None, outputs[0])
        return (outputs[0], state), outputs[1]

    def _evaluate_in_full(self, members, states):
        """Requests whose context state was dropped to save memory: whole masked tiles through the
        whole model, a few at a time (every stored layer's full maps are kept during the call);
        their states are cut from the full maps."""
        return np.concatenate([self._evaluate_chunk_in_full(members[start : start + TILES_PER_FULL_CALL], states) for start in range(0, len(members), TILES_PER_FULL_CALL)])

    def _evaluate_chunk_in_full(self, members, states):
        height, width = self.height, self.width
        group = _Group(self, members, None, None)
        rows = np.ascontiguousarray(np.broadcast_to(np.arange(height), (len(members), height)))
        cols = np.ascontiguousarray(np.broadcast_to(np.arange(width), (len(members), width)))
        outputs, captured = self._full(group._paint(rows, cols))
        sibling_exact = exact_regions(self.layers, np.array([member[4] for member in members], dtype=np.int64))
        needed = {position: needed_by_users(self.layers, self.users, position, sibling_exact) for position in self.stored}
        for index, (request, *_) in enumerate(members):
            windows, offsets = {}, {}
            for position, (starts, stops) in needed.items():
                (r0, c0), (r1, c1) = starts[index], stops[index]
                windows[position] = captured[position][index][:, r0 : max(r1, r0 + 1), c0 : max(c1, c0 + 1)].clone()
                offsets[position] = (int(r0), int(c0))
            deltas = []
            for position in self.plan.frontier:
                rows_f, cols_f = self.layers[position].size
                deltas.append((position, 0, rows_f, 0, cols_f, captured[position][index].clone()))
            states[request] = ContextState(windows, offsets, (None, tuple(deltas)), outputs[index])
        return outputs

    # --- incremental evaluations ------------------------------------------------------------

    def __call__(self, requests):
        """Outputs (N×K) and states of the contexts `visible + box` for (visible, state, box,
        sibling) requests; `sibling` is the box the new context will be extended by next."""
        outputs = [None] * len(requests)
        states = [None] * len(requests)
        groups, unknown = {}, []
        for position, (visible, state, box, sibling) in enumerate(requests):
            x0, x1, y0, y1, z0, z1 = box
            if state is None:
                unknown.append((position, visible, state, box, sibling))
            elif not self.changes[x0:x1, y0:y1, z0:z1].any():
                outputs[position], states[position] = state.outputs, state  # nothing changes: exactly the context
            else:
                groups.setdefault((box[1] - box[0], box[3] - box[2]), []).append((position, visible, state, box, sibling))
        self.evaluations += len(requests)
        if unknown:
            self.full_evaluations += len(unknown)
            for (position, *_), row in zip(unknown, self._evaluate_in_full(unknown, states)):
                outputs[position] = row
        evaluated = []
        for members in groups.values():
            evaluated.extend(self._evaluate_group(members, states))
        if evaluated:
            for (position, state), row in zip(evaluated, self._rest(evaluated)):
                outputs[position] = row
                state.outputs = row
        return np.stack([row[self.indices] for row in outputs]), states

    def _rest(self, evaluated):
        """All-class outputs (float64) of the full part for (request, state) pairs: each request's
        frontier maps are rebuilt from its state's chain, a chunk at a time."""
        torch = self.torch
        scores = []
        with torch.inference_mode():
            for start in range(0, len(evaluated), MAPS_PER_REST_CALL):
                chunk = evaluated[start : start + MAPS_PER_REST_CALL]
                inputs = []
                for position in self.plan.frontier:
                    background = self.background_frontier[position]
                    layout = self.layers[position].layout
                    batch = torch.empty((len(chunk),) + tuple(background.shape), dtype=background.dtype, device=self.device)
                    if layout == NCHW:
                        batch = batch.contiguous(memory_format=torch.channels_last)
                    for row, (_, state) in enumerate(chunk):
                        self._materialise(batch[row], position, state.link)
                    inputs.append(batch)
                scores.append(outputs_from_logits(self.plan.rest(*inputs), self.output_space).astype(np.float64))
                self.executed_flops += self.plan.rest_flops * len(chunk)
        return np.concatenate(scores)

    def _evaluate_group(self, members, states):
        """Run the planned layers for requests whose boxes have one shape; fills their states and
        returns (request position, state) for each."""
        torch = self.torch
        count = len(members)
        boxes = np.array([member[3] for member in members], dtype=np.int64)
        siblings = np.array([member[4] for member in members], dtype=np.int64)
        exact = exact_regions(self.layers, boxes)
        windows = [uniform_windows(starts, stops, layer.size) for layer, (starts, stops) in zip(self.layers, exact)]
        group = _Group(self, members, exact, windows)
        sibling_exact = exact_regions(self.layers, siblings)
        values = [None] * len(self.layers)
        member_windows = [{} for _ in members]
        member_offsets = [{} for _ in members]
        frontier = set(self.plan.frontier)
        with torch.inference_mode():
            for position, layer in enumerate(self.layers):
                if layer.kind == "input":
                    continue
                (height, width), offsets = windows[position]
                if layer.kind == "window":
                    source = layer.inputs[0]
                    row_starts, _ = layer.rows.needed(offsets[:, 0], offsets[:, 0] + 1)
                    col_starts, _ = layer.cols.needed(offsets[:, 1], offsets[:, 1] + 1)
                    rows_in = (height - 1) * layer.rows.stride + layer.rows.reach + 1
                    cols_in = (width - 1) * layer.cols.stride + layer.cols.reach + 1
                    window = group.assemble(source, values, row_starts, rows_in, col_starts, cols_in, layer.pad_value)
                    values[position] = self._window_layer(layer, window)
                else:
                    values[position] = self._pointwise_layer(layer, position, group, values)
                if layer.flops:
                    self.executed_flops += layer.flops * count * height * width / (layer.size[0] * layer.size[1])
                for source in layer.inputs:  # keep a layer's batch only as long as something reads it
                    if self.layers[source].kind != "input" and self.last_reader[source] == position:
                        if self.layers[source].stored:
                            self._keep_windows(source, group, values, sibling_exact, member_windows, member_offsets)
                        if source not in frontier:
                            values[source] = None
            results = []
            for index, (request, _, state, _, _) in enumerate(members):
                deltas = []
                for position in self.plan.frontier:
                    (r0, c0), (r1, c1) = exact[position][0][index], exact[position][1][index]
                    if r1 > r0 and c1 > c0:
                        offset_r, offset_c = windows[position][1][index]
                        region = values[position][index][_region_index(self.layers[position].layout, r0 - offset_r, r1 - offset_r, c0 - offset_c, c1 - offset_c)]
                        deltas.append((position, int(r0), int(r1), int(c0), int(c1), region.clone()))  # a copy: the group's batch can go
                state_windows = member_windows[index]
                states[request] = ContextState(state_windows, member_offsets[index], (state.link, tuple(deltas)), None)
                self._state_bytes[0] += sum(window.numel() * window.element_size() for window in state_windows.values()) + sum(delta[5].numel() * delta[5].element_size() for delta in deltas)
                self._state_bytes[1] += 1
                results.append((request, states[request]))
        return results

    def _keep_windows(self, position, group, values, sibling_exact, member_windows, member_offsets):
        """Cut each request's new context values at a stored layer around its sibling (the box its
        context will be extended by next), one tensor per request so each is freed on its own."""
        starts, stops = needed_by_users(self.layers, self.users, position, sibling_exact)
        (height, width), offsets = uniform_windows(starts, stops, self.layers[position].size)
        batch = group.assemble(position, values, offsets[:, 0], height, offsets[:, 1], width, 0.0)
        for index in range(group.count):
            member_windows[index][position] = batch[index].clone()
            member_offsets[index][position] = (int(offsets[index, 0]), int(offsets[index, 1]))

    def _materialise(self, target, position, link):
        """Write a context's full frontier map into `target`: the background's, then the chain's
        regions from the oldest to the newest."""
        chain = []
        while link is not None:
            link, deltas = link
            chain.append(deltas)
        target.copy_(self.background_frontier[position])
        layout = self.layers[position].layout
        for deltas in reversed(chain):
            for delta_position, r0, r1, c0, c1, region in deltas:
                if delta_position == position:
                    target[_region_index(layout, r0, r1, c0, c1)] = region

    def _window_layer(self, layer, window):
        """A convolution or pooling on an assembled window whose padding is already in place."""
        functional = self.torch.nn.functional
        module = self.modules[layer.node.target]
        kind = type(module).__name__
        if kind == "Conv2d":
            return functional.conv2d(window, module.weight, module.bias, module.stride, 0, module.dilation, module.groups)
        if kind == "MaxPool2d":
            return functional.max_pool2d(window, module.kernel_size, module.stride or module.kernel_size, 0, module.dilation)
        return functional.avg_pool2d(window, module.kernel_size, module.stride or module.kernel_size, 0)

    def _pointwise_layer(self, layer, position, group, values):
        """An element-wise layer on its inputs' values over this layer's region."""
        torch = self.torch
        node = layer.node
        (height, width), offsets = group.windows[position]
        environment = {}
        for source in layer.inputs:
            source_size, source_offsets = group.windows[source]
            same_cells = all(np.array_equal(mine, theirs) for mine, theirs in zip(group.exact[position], group.exact[source]))
            if source_size == (height, width) and np.array_equal(source_offsets, offsets) and same_cells and self.layers[source].kind != "input":
                environment[self.layers[source].node] = values[source]
            else:
                window = group.assemble(source, values, offsets[:, 0], height, offsets[:, 1], width, 0.0)
                if self.layers[source].layout != NCHW:
                    window = window.permute(0, 2, 3, 1)
                environment[self.layers[source].node] = window

        def argument(other):
            if other in environment:
                return environment[other]
            if other.op == "get_attr":
                value = self.plan.graph
                for part in other.target.split("."):
                    value = getattr(value, part)
                return value
            raise KeyError(other.name)

        args = torch.fx.node.map_arg(node.args, argument)
        kwargs = torch.fx.node.map_arg(node.kwargs, argument)
        if node.op == "call_module":
            return self.modules[node.target](*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        return node.target(*args, **kwargs)


class _Group:
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
            result = self._paint(np.clip(rows, 0, layer.size[0] - 1), np.clip(cols, 0, layer.size[1] - 1))
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
        for member, (_, _, state, _, _) in enumerate(self.members):
            r0, c0 = int(row_starts[member]), int(col_starts[member])
            r1, c1 = r0 + height, c0 + width
            window = state.windows[position]  # the context, around the box this request splits
            w0, v0 = state.offsets[position]
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

    def _paint(self, rows, cols):
        """N×C×h×w normalised input of the revealed tiles at absolute (clipped) rows and cols."""
        torch = self.torch
        evaluator = self.evaluator
        device = evaluator.device
        box_lists = [(box, visible) for _, visible, _, box, _ in self.members]
        boxes = box_tensor(box_lists, torch, device)
        rows_t = torch.from_numpy(rows).to(device)
        cols_t = torch.from_numpy(cols).to(device)
        bands = torch.arange(evaluator.bands, device=device)[None].expand(self.count, -1)

        def inside(positions, low, high):  # N×B×len indicator of low <= position < high
            return ((positions[:, None, :] >= boxes[..., low, None]) & (positions[:, None, :] < boxes[..., high, None])).float()

        bands_rows = (inside(bands, 4, 5)[..., :, None] * inside(rows_t, 0, 1)[..., None, :]).flatten(2)
        visible = torch.bmm(bands_rows.transpose(1, 2), inside(cols_t, 2, 3)).view(self.count, evaluator.bands, rows.shape[1], cols.shape[1])
        row_index, col_index = rows_t[:, :, None], cols_t[:, None, :]
        image = evaluator.image[:, row_index, col_index].transpose(0, 1)
        background = evaluator.background[:, row_index, col_index].transpose(0, 1)
        return torch.where(visible > 0.5, image, background)
