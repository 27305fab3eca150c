"""What the fast engine's region evaluator keeps of its contexts when memory runs short: which
queued nodes keep their states, which earlier context a released one is evaluated from, on what
region, and that released memory is really freed. On real states of a small ResNet's plan; the
values that come out of such evaluations are checked against the float64 reference in
tests/test_region_engine.py."""

import gc
import heapq

import numpy as np
import pytest
import torch

from aid_xai_plugin.core.common import memory
from aid_xai_plugin.core.common.memory import return_freed_memory
from aid_xai_plugin.core.explain.owen import forget_unreachable_states
from aid_xai_plugin.core.explain.partition import Box
from aid_xai_plugin.core.explain.context_states import ContextState, Origin, anchor_of, hold_states

TILE = Box(0, 16, 0, 16, 0, 3)


def held_state(parent, box, size=64):
    """A context state with windows of `size` float32 values (256 bytes by default), extending
    `parent` (a state) by `box`."""
    state = ContextState({0: torch.zeros(size)}, {0: (0, 0)}, None, np.zeros(2), 0, nbytes=4 * size)
    state.origin = Origin(None if parent is None else parent.origin, box, state)
    return state


def line(depth):
    """A tile's root and `depth` contexts each extending the one before by a smaller box: rows 0:8
    and columns 0:16, then 0:8 and 0:8, then 0:4 and 0:8."""
    root = held_state(None, None)
    states = [root]
    for level in range(1, depth + 1):
        side = 16 >> ((level + 1) // 2)
        states.append(held_state(states[-1], Box(0, side, 0, 16 >> (level // 2), 0, 3)))
    return states


def test_the_most_urgent_nodes_keep_their_states_and_the_others_an_earlier_context():
    root, first, second, third = line(3)
    other_root, *other_line = line(2)
    # in the traversal's order: two urgent nodes, then nodes whose own states don't fit
    kept = hold_states([third, other_line[1], second, third, other_line[0], first], budget=4 * 256)
    assert kept[0] is third and kept[1] is other_line[1]  # half the budget: the 2 most urgent nodes' own states
    stand_in = kept[2]  # `second`: its nearest earlier context still held is `first`, kept for it
    assert stand_in.windows is None and stand_in.anchor is first and stand_in.origin is second.origin
    assert kept[3] is third  # a state already kept stays with every node that shares it
    assert kept[4].anchor is other_root and kept[4].windows is None  # the 4th held: the other tile's root
    assert kept[5] is first  # already held (for `second`): its own node keeps it whole


def test_a_tiles_root_state_is_never_released():
    root, first = line(1)
    kept = hold_states([first, root], budget=0)
    assert kept[1] is root and kept[0].windows is None
    del first
    gc.collect()
    assert anchor_of(kept[0], Box(0, 1, 0, 1, 0, 3)) == (root, (0, 8, 0, 16, 0, 3))


def test_a_released_context_is_evaluated_from_the_nearest_held_one_on_the_box_covering_all_since():
    root, first, second, third = line(3)
    stand_in = hold_states([third], budget=0)[0]
    request_box = Box(1, 2, 1, 2, 0, 3)
    assert anchor_of(third, request_box) == (third, request_box)  # a held context: its own state and box
    del third
    gc.collect()
    anchor, region = anchor_of(stand_in, request_box)
    assert anchor is second and region == (0, 4, 0, 8, 0, 3)  # the box of the third context (0:4, 0:8) holds the request's
    second.windows = None  # released as well: one more level up, its box (0:8, 0:8) joins the region
    anchor, region = anchor_of(stand_in, request_box)
    assert anchor is first and region == (0, 8, 0, 8, 0, 3)
    first.windows = None
    assert anchor_of(stand_in, Box(15, 16, 15, 16, 0, 3)) == (root, (0, 16, 0, 16, 0, 3))


def test_a_released_states_memory_is_freed_and_its_anchor_kept_alive():
    root, first, second = line(2)
    watched_second, watched_first = second.origin.state, first.origin.state
    stand_in = hold_states([second], budget=256)[0]  # room for one: `first`, kept for it
    del second, first
    gc.collect()
    assert watched_second() is None  # nothing refers to the released state: its windows are gone
    assert watched_first() is stand_in.anchor and stand_in.anchor.windows is not None
    del stand_in
    gc.collect()
    assert watched_first() is None


def queue_of(states):
    """Owen-queue items (priority, draw, order, (visible, state, f00, f11, box, weight)), the first
    state most urgent, every box expandable."""
    queue = []
    for order, state in enumerate(states):
        heapq.heappush(queue, (-float(len(states) - order), 0.0, order, (None, state, 0.0, 1.0, TILE, 1.0)))
    return queue


def test_forgetting_drops_unreachable_states_and_lets_the_evaluator_choose_for_the_rest():
    root, first, second, third = line(3)
    queue = queue_of([third, second, first, root])
    seen = []

    def hold(states, keep):
        seen.append((list(states), keep))
        return hold_states(states, keep * 256)

    forget_unreachable_states(queue, evaluations_left=6, keep=2, hold=hold)  # 3 expansions left: the 4th node can't be reached
    assert seen == [([third, second, first], 2)]
    by_order = {item[2]: item[3][1] for item in queue}
    assert by_order[0] is third and by_order[3] is None
    assert by_order[1].windows is None and by_order[1].anchor is first and by_order[2] is first


def resident_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


@pytest.mark.skipif(memory._malloc_trim() is None, reason="the C library has no malloc_trim (not glibc): nothing to return")
def test_freed_heap_holes_are_returned_to_the_system():
    """256 MB in 64 KB blocks (glibc's heap, below its mmap threshold), every 16th kept: the freed
    holes between the kept ones stay resident until they are handed back."""
    blocks = [np.ones(8192) for _ in range(4096)]
    kept = blocks[::16]
    del blocks
    gc.collect()
    before = resident_mb()
    return_freed_memory()
    assert before - resident_mb() > 100, "the 240 MB of holes should leave the resident set"
    assert all(block[0] == 1.0 for block in kept)  # what is still in use is untouched
