"""The states the region evaluator keeps of its contexts, and what it does when memory runs short.

A context's state holds its values around the box it will be extended by next (`ContextState`).
Beyond the memory budget, queued nodes release theirs (`hold_states`): half the budget goes to the
most urgent nodes' own states, the rest to the nearest earlier contexts of the other nodes' lines.
A request whose context lost its state is evaluated from the nearest earlier context that still
holds one (`anchor_of`), on the box covering everything revealed since. Every box revealed after a
context lies in the box its state was cut around, so that state holds all the values the larger
region reads; at the deep levels of large budgets a revealed box's changed region is mostly its
receptive field, so the larger box costs little more, where a full evaluation would cost the
whole model.
"""

import dataclasses
import weakref

import numpy as np


class Origin:
    """Where a context comes from: the context `parent` it extends by `box`, and its state while that
    is held (a weak reference, so a released state's memory is freed; a tile's root holds it)."""

    __slots__ = ("parent", "box", "state")

    def __init__(self, parent, box, state):
        self.parent, self.box, self.state = parent, box, weakref.ref(state)


@dataclasses.dataclass(eq=False)
class ContextState:
    windows: dict  # stored layer position → C×h×w tensor of the context's values (None once released) …
    offsets: dict  # … whose first cell is at this (row, col) of the layer's map
    link: tuple  # (parent link, deltas): deltas are (frontier position, r0, r1, c0, c1, values); None = background
    outputs: np.ndarray  # the context's outputs, all classes
    tile: int  # which tile in flight it is a context of
    origin: Origin = None
    anchor: "ContextState" = None  # a released state's: the earlier context kept for it
    nbytes: int = 0  # of its windows and frontier regions


def tensor_bytes(tensors):
    """Bytes held by `tensors` (a state's windows and frontier regions)."""
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def hold_states(states, budget):
    """The states queued nodes keep, for their `states` in the traversal's order, holding at most
    `budget` bytes: up to half of it for the most urgent nodes' own states; then each node without
    one is pointed at the nearest earlier context of its line still held, which is held for it
    while room is left. A stand-in (`ContextState.anchor`) keeps that context alive; the rest are
    freed once nothing refers to them. A tile's root state is always kept."""
    held, kept, used = set(), [], 0
    for state in states:
        if state.windows is not None and (id(state) in held or state.origin.parent is None or used + state.nbytes <= budget / 2):
            if id(state) not in held:
                held.add(id(state))
                used += state.nbytes
            kept.append(state)
            continue
        anchor, _ = nearest_held(state.origin.parent if state.windows is not None else state.origin)
        if id(anchor) not in held and used + anchor.nbytes <= budget:
            held.add(id(anchor))
            used += anchor.nbytes
        kept.append(ContextState(None, None, None, state.outputs, state.tile, state.origin, anchor if id(anchor) in held else None))
    return kept


def nearest_held(origin):
    """(the state of the nearest context from `origin` up its line that still holds its windows (a
    tile's root always does), the boxes revealed since that context)."""
    boxes = []
    while True:
        held = origin.state()
        if held is not None and held.windows is not None:
            return held, boxes
        boxes.append(origin.box)
        origin = origin.parent


def anchor_of(context, box):
    """(the nearest context of `context`'s line that still holds its state, the box covering `box`
    and every box revealed since that context)."""
    if context.windows is not None:
        return context, box
    held, boxes = nearest_held(context.origin)
    boxes = np.array(boxes + [box])
    return held, (int(boxes[:, 0].min()), int(boxes[:, 1].max()), int(boxes[:, 2].min()), int(boxes[:, 3].max()), int(boxes[:, 4].min()), int(boxes[:, 5].max()))
