"""The plan's first-Linear update (`model_plan.LinearStep`, the source's Net): each new masked tile
is an already-evaluated context plus one revealed box, so only the front's feature cells whose
receptive field meets that box change.

For a request (context, box) the front is run twice on the same small input window, once as the
context and once with the box revealed; the difference of the two feature windows, times the matching
columns of the first Linear layer, updates the context's Linear output (its state). The rest of the
model then runs on that. Large boxes, whose window is more than half the tile, are evaluated in full
instead, which also resets the state to a fully computed value. States are float32: measured, they
keep the values as close to shap's as float64 states do, at half the memory.

The results differ from full evaluations only by float32 rounding (the cropped front computes the
same cells as the full one, the update's sum runs in another order), so the values are within a
small, tested tolerance of shap's rather than bit-identical. The two windows of a request sit side by
side in one front call, so where revealing the box changes no input (the image equals the background)
the update is exactly zero and shap's exact priority ties survive.
"""

import numpy as np

from ..ml.classifier import outputs_from_logits
from .box_painter import BoxPainter, normalised_hwc
from .traced_graph import graph_flops

PIXELS_PER_FRONT_CALL = 1 << 15  # bounds the front's activations (Net: ~35 MB at conv1)


class WindowedLinear:
    """A plan's first Linear weight laid out as rows × cols × features × outputs, so the
    weight of a window of feature cells is a view with one contiguous block per window row. Built once
    per model and tile shape (it copies the weight: 118 MB for Net at 256×256)."""

    def __init__(self, step):
        linear = step.first_linear
        self.step = step
        self.outputs = linear.out_features
        self.weight = linear.weight.detach().reshape(self.outputs, step.features, step.rows.cells, step.cols.cells).permute(2, 3, 1, 0).contiguous()

    def window(self, first_row, first_col, row_count, col_count):
        """The weight for feature cells [first_row, +row_count) × [first_col, +col_count) as
        row_count × (col_count·features) × outputs, a view (no copy)."""
        cells_c, features = self.step.cols.cells, self.step.features
        return self.weight.as_strided(
            (row_count, col_count * features, self.outputs), (cells_c * features * self.outputs, self.outputs, 1), (int(first_row) * cells_c + int(first_col)) * features * self.outputs
        )


class LinearUpdateEvaluator:
    """The `evaluate` callback of `owen.walk` for a first-Linear plan, on the tiles in flight
    (T×H×W×C, or one H×W×C tile); a context's state is its first Linear layer's output. Requests of
    all tiles whose windows have one size run the front in one call."""

    def __init__(self, linear, images_hwc, backgrounds_hwc, classifier, output_space):
        import torch

        self.output_space = output_space
        self.torch = torch
        self.linear = linear
        self.step = linear.step
        self.outputs = linear.outputs
        self.device = classifier.device
        self.painter = BoxPainter(normalised_hwc(classifier, images_hwc), normalised_hwc(classifier, backgrounds_hwc), self.device)
        self.tile_count, self.height, self.width, self.bands = self.painter.images.shape
        self.dtype = self.step.first_linear.weight.dtype
        self.front_flops = {}  # window (height, width) → FLOPs of the front on it
        self.rest_flops = graph_flops(self.step.rest, (1, self.outputs), self.dtype, self.device)
        self.full_flops = self._front_flops(self.height, self.width) + 2.0 * self.step.first_linear.in_features * self.outputs + self.rest_flops
        self.executed_flops = 0.0
        self.evaluations = 0

    def _front_flops(self, height, width):
        if (height, width) not in self.front_flops:
            self.front_flops[height, width] = graph_flops(self.step.front, (1, self.bands, height, width), self.dtype, self.device)
        return self.front_flops[height, width]

    def flop_bound(self):
        """The speed-up FLOPs allow: full evaluations' FLOPs over those executed."""
        return self.evaluations * self.full_flops / max(self.executed_flops, 1.0)

    def front(self, windows):
        """The front's features, in calls of at most PIXELS_PER_FRONT_CALL input pixels and an even
        number of windows (so a request's pair of windows never straddles two calls)."""
        per_call = max(2, PIXELS_PER_FRONT_CALL // (windows.shape[2] * windows.shape[3])) // 2 * 2
        return self.torch.cat([self.step.front(windows[start : start + per_call]) for start in range(0, len(windows), per_call)])

    def full_states(self, box_lists, tiles):
        """First-Linear outputs of whole masked tiles (list i on tile `tiles[i]`), in chunks."""
        torch = self.torch
        states = []
        per_call = max(1, PIXELS_PER_FRONT_CALL // (self.height * self.width))
        for start in range(0, len(box_lists), per_call):
            chunk = box_lists[start : start + per_call]
            masked = self.painter.tiles(chunk, tiles[start : start + per_call])
            states.append(self.step.first_linear(torch.flatten(self.step.front(masked), 1)))
        self.executed_flops += len(box_lists) * (self.full_flops - self.rest_flops)
        return torch.cat(states)

    def scores(self, states):
        """All class scores in the output space (N×classes float64) from first-Linear outputs."""
        logits = self.step.rest(states.to(self.step.first_linear.weight.dtype))
        self.executed_flops += len(states) * self.rest_flops
        self.evaluations += len(states)
        return outputs_from_logits(logits, self.output_space).astype(np.float64)

    def start(self, root):
        """Per tile ((f(nothing visible), its state), f(everything visible)), all classes, evaluated in full."""
        count = self.tile_count
        with self.torch.inference_mode():
            states = self.full_states([None] * count + [(root, None)] * count, list(range(count)) * 2)
            outputs = self.scores(states)
        return [((outputs[tile], states[tile]), outputs[count + tile]) for tile in range(count)]

    def __call__(self, requests):
        """All-class outputs (N×classes) and states of the contexts `visible + box` of `owen.Request`s."""
        torch = self.torch
        rows, cols = self.step.rows, self.step.cols
        full, unseen, groups = [], [], {}
        for position, (_, _, box, _, _) in enumerate(requests):
            row_cells = rows.affected_cells(box[0], box[1])
            col_cells = cols.affected_cells(box[2], box[3])
            if row_cells[1] <= row_cells[0] or col_cells[1] <= col_cells[0]:
                unseen.append(position)  # in the border strip no cell's field reaches (input size not a multiple of the jump)
                continue
            row_span, col_span = rows.input_span(*row_cells), cols.input_span(*col_cells)
            window_area = (row_span[1] - row_span[0]) * (col_span[1] - col_span[0])
            if 2 * window_area >= self.height * self.width:
                full.append(position)
            else:
                shape = (row_cells[1] - row_cells[0], col_cells[1] - col_cells[0])
                groups.setdefault(shape, []).append((position, row_cells[0], col_cells[0]))

        states = torch.empty((len(requests), self.outputs), dtype=self.step.first_linear.weight.dtype, device=self.device)
        with torch.inference_mode():
            for position in unseen:  # the box changes no feature: the context's state is exact
                states[position] = requests[position].state
            if full:
                states[full] = self.full_states([(requests[i].box, requests[i].visible) for i in full], [requests[i].tile for i in full])
            for (row_count, col_count), members in groups.items():
                positions = [member[0] for member in members]
                first_rows = np.array([member[1] for member in members])
                first_cols = np.array([member[2] for member in members])
                height = (row_count - 1) * rows.jump + rows.field
                width = (col_count - 1) * cols.jump + cols.field
                box_lists = [visible for i in positions for visible in (requests[i].visible, (requests[i].box, requests[i].visible))]  # context, revealed
                tiles = np.repeat([requests[i].tile for i in positions], 2)
                windows = self.painter.windows_at(box_lists, np.repeat(first_rows * rows.jump, 2), np.repeat(first_cols * cols.jump, 2), height, width, tiles)
                features = self.front(windows)
                self.executed_flops += len(windows) * self._front_flops(height, width) + len(members) * 2.0 * row_count * col_count * self.step.features * self.outputs
                changes = (features[1::2] - features[0::2]).permute(0, 2, 3, 1).contiguous()
                changes = changes.view(len(members), row_count, 1, col_count * self.step.features)
                for slot, position in enumerate(positions):
                    weight = self.linear.window(first_rows[slot], first_cols[slot], row_count, col_count)
                    states[position] = requests[position].state + torch.bmm(changes[slot], weight).sum(0)[0]
            outputs = self.scores(states)
        return outputs, list(states)

