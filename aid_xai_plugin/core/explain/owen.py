"""shap's Owen traversal (`PartitionExplainer.owen`, fixed_context=None) over the box tree, one round
at a time, for many tiles at once.

A queued node holds its box, its two model outputs, its context (a linked list of visible boxes,
shared with its parent's) and an evaluator-defined state of that context. Each tile's traversal pops
up to `batch_size` nodes per round exactly as shap does; `walk` gathers the rounds of all tiles in
flight into one evaluator call, so a device sees many tiles' masked evaluations at once while every
tile's order, tie-break draws (its own RandomState, seeded as shap's global RNG would be) and values
are those of the tile explained alone.
"""

import heapq
import typing

import numpy as np

from ..ml.classifier import explained_outputs
from .partition import Box, split_box


class Request(typing.NamedTuple):
    """One masked evaluation: the context `visible + box` of tile `tile`, where `state` is the
    evaluator's state of `visible` and `sibling` the box the new context will be extended by next."""

    visible: object
    state: object
    box: Box
    sibling: Box
    tile: int


class OwenTraversal:
    """One tile's traversal. `base` is (f(nothing visible), state of that context) and `full`
    f(everything visible), all classes; the credit is kept for the outputs `indices` (with `rivals`:
    their differences to those classes, `classifier.explained_outputs`)."""

    def __init__(self, root, base, full, indices, max_evals, batch_size, random_state, tile=0, rivals=None):
        self.indices = np.asarray(indices, dtype=int)
        self.rivals = None if rivals is None else np.asarray(rivals, dtype=int)
        self.node_values = {}
        self.max_evals = max_evals
        self.batch_size = batch_size
        self.random_state = random_state
        self.tile = tile
        f00, state00 = base
        self.queue = [(0, 0, 0, (None, state00, self.explained(f00), self.explained(full), Box(*root), 1.0))]
        self.pushes = 1
        self.eval_count = 0
        self.forget_step = max(batch_size, max_evals // 64)
        self.next_forget = self.forget_step
        self.work = []
        self.finished = False

    def explained(self, outputs):
        return explained_outputs(outputs, self.indices, self.rivals)

    def requests(self, max_states=None, hold=None):
        """The next round's requests ([] once the traversal is finished). Nodes that can no longer be
        expanded drop their states (forget_unreachable_states); with `max_states`, `hold` chooses
        which states the others keep."""
        node_values, queue = self.node_values, self.queue
        while queue:
            if self.eval_count >= self.next_forget or max_states is not None:  # with a memory bound, every round
                keep = None if max_states is None else max(1, max_states - 2 * self.batch_size)  # room for the round's new states
                forget_unreachable_states(queue, self.max_evals - self.eval_count, keep, hold)
                self.next_forget = self.eval_count + self.forget_step
            if self.eval_count >= self.max_evals:
                while queue:
                    _, _, f00, f11, box, weight = heapq.heappop(queue)[3]
                    node_values[box] = node_values.get(box, 0.0) + (f11 - f00) * weight
                break
            work, requests = [], []
            while queue and len(requests) < self.batch_size and self.eval_count + len(requests) < self.max_evals:
                visible, state, f00, f11, box, weight = heapq.heappop(queue)[3]
                if box.size == 1:
                    node_values[box] = node_values.get(box, 0.0) + (f11 - f00) * weight
                    continue
                left, right = split_box(box)
                work.append((visible, state, f00, f11, box, left, right, weight))
                requests.append(Request(visible, state, left, right, self.tile))
                requests.append(Request(visible, state, right, left, self.tile))
            if work:
                self.work = work
                return requests
        self.finished = True
        return []

    def receive(self, outputs, states):
        """The all-class outputs and the states of the last round's requests, in their order."""
        outputs = self.explained(outputs)
        self.eval_count += len(outputs)
        queue, random_state = self.queue, self.random_state
        for i, (visible, state, f00, f11, box, left, right, weight) in enumerate(self.work):
            f10, f01 = outputs[2 * i], outputs[2 * i + 1]
            new_weight = weight / 2  # fixed_context=None: shap leaves no interaction term on the node
            self.node_values.setdefault(box, 0.0)  # … but it is expanded: lower_credit passes its credit on to the children
            children = (
                (visible, state, f00, f10, left),
                (visible, state, f00, f01, right),
                ((right, visible), states[2 * i + 1], f01, f11, left),
                ((left, visible), states[2 * i], f10, f11, right),
            )
            for child_visible, child_state, low, high, child in children:
                priority = float(-np.max(np.abs(high - low)) * new_weight)
                heapq.heappush(queue, (priority, float(random_state.randn()), self.pushes, (child_visible, child_state, low, high, child, new_weight)))
                self.pushes += 1
        self.work = []


def walk(evaluate, traversals, progress=None):
    """Run `traversals` (of one or many tiles) to their end: every round, each unfinished traversal's
    requests go to one `evaluate(requests)` call, which returns all-class outputs (N×classes) and the
    state of each revealed context. An evaluator's `max_states` (states it can hold) is shared by the
    traversals, and its `hold` chooses which states are kept. `progress` (optional) may cancel
    before each evaluation and hears the share of the evaluations done."""
    active = list(traversals)
    budget = sum(traversal.max_evals for traversal in traversals)
    while active:
        max_states = getattr(evaluate, "max_states", None)
        share = None if max_states is None else max(1, max_states // len(active))
        rounds = [(traversal, traversal.requests(share, evaluate.hold if share else None)) for traversal in active]
        rounds = [(traversal, requests) for traversal, requests in rounds if requests]
        if not rounds:
            return
        if progress is not None:
            progress.check_cancel()
            progress.fraction(sum(traversal.eval_count for traversal in traversals) / budget)
        outputs, states = evaluate([request for _, requests in rounds for request in requests])
        start = 0
        for traversal, requests in rounds:
            traversal.receive(outputs[start : start + len(requests)], states[start : start + len(requests)])
            start += len(requests)
        active = [traversal for traversal, _ in rounds]


def forget_unreachable_states(queue, evaluations_left, keep=None, hold=None):
    """Drop the context states of queued nodes that can no longer be expanded, so their memory is
    freed: every expansion costs two evaluations and nodes leave the queue in key order, so a node
    with (evaluations_left + 1) // 2 or more expandable nodes ahead of it never will be. With `keep`,
    `hold(states, keep)` replaces the states of the others (in key order) by the ones they keep,
    holding at most `keep` in memory. Keys (and so the traversal) stay as they are."""
    expandable = [(item[0], item[1], item[2], index) for index, item in enumerate(queue) if item[3][1] is not None and item[3][4].size > 1]
    reachable = (evaluations_left + 1) // 2
    if len(expandable) <= (reachable if keep is None else min(reachable, keep)):
        return
    expandable.sort()
    indices = [index for *_, index in expandable]
    states = [queue[index][3][1] for index in indices[:reachable]]
    if keep is not None:
        states = hold(states, keep)
    states += [None] * (len(indices) - len(states))
    for index, state in zip(indices, states):
        priority, draw, order, (visible, _, f00, f11, box, weight) = queue[index]
        queue[index] = (priority, draw, order, (visible, state, f00, f11, box, weight))
