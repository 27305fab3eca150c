"""Incremental evaluation of masked tiles for a regional plan (`model_plan.py`) of any traceable CNN.

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
windows of one size (cells outside a request's exact changed region are computed but never used),
in calls of bounded size. Where revealing a box changes no input value, the request reuses its
context's outputs and state, so shap's exact priority ties survive.

States beyond the memory budget are released (`context_states.py`): a request whose context lost
its state is evaluated from the nearest earlier context of its line that still holds one, on the box
covering everything revealed since.

Each request's region is priced before it runs (`cost_model.regional_flops` × REGIONAL_COST, plus the
full part); where that reaches a whole evaluation's FLOPs (a region reaching back to a distant
context, or a box covering most of the tile), the request runs the whole model instead and its
state is cut from the full maps, so no evaluation costs more than a full one.
"""

import typing

import numpy as np

from ..common.memory import return_freed_memory
from ..ml.classifier import outputs_from_logits
from .box_painter import BoxPainter, normalised_hwc
from .context_states import ContextState, Origin, anchor_of, hold_states, tensor_bytes
from .cost_model import REGIONAL_COST, regional_flops
from .geometry import exact_regions, layer_users, needed_by_users, uniform_windows
from .layer_kinds import NCHW
from .region_layers import Group, pointwise_layer, window_layer

MAPS_PER_REST_CALL = 64  # frontier maps per call of the full part (bounds its activations)
TILES_PER_FULL_CALL = 16  # whole masked tiles per full evaluation (bounds the maps it keeps)
# Values per layer batch of one call of the planned layers (32 MB of float32): a round of large boxes
# runs in several calls rather than one the size of a full batch's activations
VALUES_PER_CALL = 8 << 20
# Memory for the states of queued contexts (their windows and frontier regions); beyond it the
# states of the nodes least likely to be expanded are released
STATE_MEMORY_BUDGET = 5 << 28  # 1.25 GiB
# Freed heap memory goes back to the system after every 64 MB of states made (the holes their
# release leaves): after nearly every call for a large model (resnet18 at 224², 5 000 evaluations:
# peak RSS 2 213 MB, against 2 349 MB trimming every 256 MB), a few times a tile for small ones,
# where each trim of the whole heap costs more than it returns (15 ms; 6 % of a resnet18 96²
# explanation when trimmed after every call)
TRIM_AFTER_STATE_BYTES = 1 << 26


class Member(typing.NamedTuple):
    """A request in a group: revealing `box` on `context` (of tile `tile`, whose next box is
    `sibling`), evaluated from the held state `anchor` on `region`, the box covering everything
    revealed since (`box` itself when the context holds its state)."""

    position: int
    visible: object
    context: ContextState
    box: tuple
    sibling: tuple
    tile: int
    anchor: ContextState
    region: tuple


def _region_index(layout, r0, r1, c0, c1):
    """The index of a region of one map (no batch axis) in `layout`."""
    if layout == NCHW:
        return (slice(None), slice(r0, r1), slice(c0, c1))
    return (slice(r0, r1), slice(c0, c1), slice(None))


class RegionEvaluator:
    """The `evaluate` callback of `owen.walk` for a planned model, on the tiles in flight (T×H×W×C,
    or one H×W×C tile): requests of all tiles whose boxes have one shape run each layer in one call."""

    def __init__(self, plan, images_hwc, backgrounds_hwc, classifier, output_space):
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
        images_hwc, backgrounds_hwc = np.asarray(images_hwc), np.asarray(backgrounds_hwc)
        self.changes = (images_hwc != backgrounds_hwc).reshape((-1,) + images_hwc.shape[-3:])  # per tile, where revealing changes the input
        self.painter = BoxPainter(normalised_hwc(classifier, images_hwc), normalised_hwc(classifier, backgrounds_hwc), self.device)
        self.tile_count = len(self.changes)
        self.executed_flops = 0.0
        self.evaluations = 0
        self.anchored_evaluations = 0  # requests evaluated from an earlier context's state (theirs was released)
        self.whole_evaluations = 0  # requests evaluated in full: their region would have cost more
        self._state_bytes = [0, 0]  # bytes of the states made so far, and how many
        self._trimmed_at = 0  # bytes of states made when freed memory was last returned
        self.roots = []  # each tile's background context, whose state is never released

    def hold(self, states, keep):
        """`hold_states` within the memory of `keep` states of the mean size made so far."""
        total, count = self._state_bytes
        return hold_states(states, keep * total / max(count, 1))

    @property
    def max_states(self):
        """How many context states the traversal may keep (`owen.forget_unreachable_states`)."""
        total, count = self._state_bytes
        return max(64, int(STATE_MEMORY_BUDGET * count / max(total, 1)))

    def flop_bound(self):
        """The speed-up FLOPs allow: full evaluations' FLOPs over those executed."""
        return self.evaluations * self.plan.full_flops / max(self.executed_flops, 1.0)

    # --- full evaluations -------------------------------------------------------------------

    def _full(self, *tiles):
        """All-class outputs of whole normalised tiles (N×C×H×W, the batches given in order), with
        the maps of the stored and frontier layers. Channels-last, as the regional layers run: on a
        CPU the whole model runs faster so (measured for resnet18 at 224², batches of 16: 90 against 67 tiles/s)."""
        torch = self.torch
        tiles = torch.cat(tiles).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            logits, *maps = self.plan.with_maps(tiles)
        captured = dict(zip(self.plan.mapped, maps))
        self.executed_flops += len(tiles) * self.plan.full_flops
        return outputs_from_logits(logits, self.output_space).astype(np.float64), captured

    def start(self, root):
        """Per tile ((f(nothing visible), its state), f(everything visible)), all classes, evaluated
        in full (a few tiles per call)."""
        painter, count = self.painter, self.tile_count
        starts, frontier = [], {position: [] for position in self.plan.frontier}
        for first in range(0, count, TILES_PER_FULL_CALL // 2):  # each tile's (background, image) pair
            tiles = range(first, min(first + TILES_PER_FULL_CALL // 2, count))
            outputs, captured = self._full(painter.backgrounds_chw[tiles.start : tiles.stop], painter.images_chw[tiles.start : tiles.stop])
            for row, tile in enumerate(tiles):
                for position in self.plan.frontier:
                    frontier[position].append(captured[position][row])
                windows = {position: self._channels_first(position, captured[position][row]) for position in self.stored}
                state = ContextState(windows, {position: (0, 0) for position in self.stored}, None, outputs[row], tile)
                state.origin = Origin(None, None, state)
                state.nbytes = tensor_bytes(windows.values())
                self.roots.append(state)
                starts.append(((outputs[row], state), outputs[len(tiles) + row]))
        self.evaluations += 2 * count
        self.background_frontier = {position: self.torch.stack(maps) for position, maps in frontier.items()}  # position → T maps
        return starts

    # --- incremental evaluations ------------------------------------------------------------

    def __call__(self, requests):
        """All-class outputs (N×classes) and states of the contexts `visible + box` of `owen.Request`s
        (`sibling` is the box the new context will be extended by next)."""
        outputs = [None] * len(requests)
        states = [None] * len(requests)
        members = []
        for position, (visible, context, box, sibling, tile) in enumerate(requests):
            row0, row1, col0, col1, band0, band1 = box
            if not self.changes[tile, row0:row1, col0:col1, band0:band1].any():
                outputs[position], states[position] = context.outputs, context  # nothing changes: exactly the context
                continue
            anchor, region = anchor_of(context, box)
            self.anchored_evaluations += anchor is not context
            members.append(Member(position, visible, context, box, sibling, tile, anchor, region))
        self.evaluations += len(requests)
        groups, whole = {}, []
        if members:
            regional = REGIONAL_COST * regional_flops(self.layers, np.array([member.region for member in members], dtype=np.int64)) + self.plan.rest_flops
            for member, cost in zip(members, regional):
                if cost >= self.plan.full_flops:
                    whole.append(member)
                else:
                    region = member.region
                    groups.setdefault((region[1] - region[0], region[3] - region[2]), []).append(member)
        self.whole_evaluations += len(whole)
        for start in range(0, len(whole), TILES_PER_FULL_CALL):
            for position, state in self._evaluate_whole(whole[start : start + TILES_PER_FULL_CALL]):
                outputs[position], states[position] = state.outputs, state
        evaluated = []
        for members in groups.values():
            for chunk in self._bounded_calls(members):
                evaluated.extend(self._evaluate_group(chunk, states))
        if evaluated:
            for (position, state), row in zip(evaluated, self._rest(evaluated)):
                outputs[position] = row
                state.outputs = row
        if self._state_bytes[0] - self._trimmed_at >= TRIM_AFTER_STATE_BYTES:
            return_freed_memory()  # the layer batches of the calls since, and the states released before them
            self._trimmed_at = self._state_bytes[0]
        return np.stack(outputs), states

    def _evaluate_whole(self, members):
        """Requests whose changed region would cost more than the whole model (a released context's
        region reaching back to a distant anchor, or a box covering much of the tile) run in full,
        and their states are cut from the full maps: (request position, state) for each."""
        tiles = self.painter.tiles([(member.box, member.visible) for member in members], [member.tile for member in members])
        outputs, maps = self._full(tiles)
        sibling_exact = exact_regions(self.layers, np.array([member.sibling for member in members], dtype=np.int64))
        cuts = {position: uniform_windows(*needed_by_users(self.layers, self.users, position, sibling_exact), self.layers[position].size) for position in self.stored}
        results = []
        for index, member in enumerate(members):
            windows, offsets = {}, {}
            for position, ((height, width), corners) in cuts.items():
                row, col = int(corners[index, 0]), int(corners[index, 1])
                windows[position] = self._channels_first(position, maps[position][index][_region_index(self.layers[position].layout, row, row + height, col, col + width)]).clone()
                offsets[position] = (row, col)
            frontier = tuple((position, 0, self.layers[position].size[0], 0, self.layers[position].size[1], maps[position][index].clone()) for position in self.plan.frontier)
            state = self._new_state(windows, offsets, (None, frontier), member)  # its frontier maps replace the background's whole
            state.outputs = outputs[index]
            results.append((member.position, state))
        return results

    def _channels_first(self, position, window):
        """A stored layer's values as states keep them (C×h×w), from a map in the layer's layout."""
        return window if self.layers[position].layout == NCHW else window.permute(2, 0, 1)

    def _new_state(self, windows, offsets, link, member):
        """The state of `member`'s new context (its windows, their offsets, its frontier link)."""
        state = ContextState(windows, offsets, link, None, member.tile)
        state.origin = Origin(member.context.origin, member.box, state)
        state.nbytes = tensor_bytes(list(windows.values()) + [delta[5] for delta in link[1]])
        self._state_bytes[0] += state.nbytes
        self._state_bytes[1] += 1
        return state

    def _bounded_calls(self, members):
        """The members of a group in runs whose largest layer batch holds at most VALUES_PER_CALL values."""
        exact = exact_regions(self.layers, np.array([member.region for member in members], dtype=np.int64))
        per_member = max(layer.channels * int(np.prod(np.clip((stops - starts).max(0), 1, layer.size))) for layer, (starts, stops) in zip(self.layers, exact))
        count = max(1, VALUES_PER_CALL // per_member)
        return [members[start : start + count] for start in range(0, len(members), count)]

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
                    background = self.background_frontier[position][0]
                    layout = self.layers[position].layout
                    batch = torch.empty((len(chunk),) + tuple(background.shape), dtype=background.dtype, device=self.device)
                    if layout == NCHW:
                        batch = batch.contiguous(memory_format=torch.channels_last)
                    for row, (_, state) in enumerate(chunk):
                        self._materialise(batch[row], position, state)
                    inputs.append(batch)
                scores.append(outputs_from_logits(self.plan.rest(*inputs), self.output_space).astype(np.float64))
                self.executed_flops += self.plan.rest_flops * len(chunk)
        return np.concatenate(scores)

    def _evaluate_group(self, members, states):
        """Run the planned layers for requests whose boxes have one shape; fills their states and
        returns (request position, state) for each."""
        torch = self.torch
        count = len(members)
        boxes = np.array([member.region for member in members], dtype=np.int64)
        siblings = np.array([member.sibling for member in members], dtype=np.int64)
        exact = exact_regions(self.layers, boxes)
        windows = [uniform_windows(starts, stops, layer.size) for layer, (starts, stops) in zip(self.layers, exact)]
        group = Group(self, members, exact, windows)
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
                    values[position] = window_layer(self.modules[layer.node.target], window)
                else:
                    values[position] = pointwise_layer(self, layer, position, group, values)
                if layer.flops:
                    self.executed_flops += layer.flops * count * height * width / (layer.size[0] * layer.size[1])
                for source in layer.inputs:  # keep a layer's batch only as long as something reads it
                    if self.layers[source].kind != "input" and self.last_reader[source] == position:
                        if self.layers[source].stored:
                            self._keep_windows(source, group, values, sibling_exact, member_windows, member_offsets)
                        if source not in frontier:
                            values[source] = None
            results = []
            for index, member in enumerate(members):
                deltas = []
                for position in self.plan.frontier:
                    (r0, c0), (r1, c1) = exact[position][0][index], exact[position][1][index]
                    if r1 > r0 and c1 > c0:
                        offset_r, offset_c = windows[position][1][index]
                        region = values[position][index][_region_index(self.layers[position].layout, r0 - offset_r, r1 - offset_r, c0 - offset_c, c1 - offset_c)]
                        deltas.append((position, int(r0), int(r1), int(c0), int(c1), region.clone()))  # a copy: the group's batch can go
                state = self._new_state(member_windows[index], member_offsets[index], (member.anchor.link, tuple(deltas)), member)
                states[member.position] = state
                results.append((member.position, state))
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

    def _materialise(self, target, position, state):
        """Write a context's full frontier map into `target`: its tile's background's, then the
        chain's regions from the oldest to the newest."""
        link = state.link
        chain = []
        while link is not None:
            link, deltas = link
            chain.append(deltas)
        target.copy_(self.background_frontier[position][state.tile])
        layout = self.layers[position].layout
        for deltas in reversed(chain):
            for delta_position, r0, r1, c0, c1, region in deltas:
                if delta_position == position:
                    target[_region_index(layout, r0, r1, c0, c1)] = region
