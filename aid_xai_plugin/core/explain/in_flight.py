"""How many tiles an explain run keeps in flight (TILES_IN_FLIGHT): their traversals' rounds go to
the model together, so a GPU gets batches of tiles × BATCH_SIZE masked tiles instead of one tile's.

On a GPU the automatic choice fills a share of the free device memory with model calls of that size.
On a CPU the engines are bound by arithmetic, not by calls: measured with benchmarks/bench_scene.py
on 2 cores, 8 AID tiles at 5 000 evaluations, 4 tiles in flight ran 0.96–0.99× one at a time for
resnet18 at 96² (peak RSS 2.7 GB instead of 2.0 GB: a round's layer windows grow with the tiles) and
0.99–1.18× for Net at 256² (within the runs' spread), so a CPU takes one tile at a time. One tile at
a time already keeps both cores busy (bench_engine.py --threads 1 against 2: 1.73× for exact, 1.59×
for fast at resnet18 96²), so no batching could gain more than 2/1.73 = 1.16× and 2/1.59 = 1.26× there.
"""

from ..common.errors import AidXaiError

CPU_TILES_IN_FLIGHT = 1
MAX_TILES_IN_FLIGHT = 64
# Share of the free device memory one round of all tiles in flight may take: the rest is for the
# incremental engine's context states, cuDNN's workspaces and the allocator's fragmentation
DEVICE_MEMORY_SHARE = 0.4


def check_tiles_in_flight(requested):
    if requested < 0:
        raise AidXaiError(f"TILES_IN_FLIGHT must be 0 (automatic) or a number of tiles (got {requested}).")


def tiles_in_flight(requested, classifier, shape, settings):
    """`requested` (≥ 1), or for 0 the automatic choice for this model, tile shape and device."""
    if requested:
        return requested
    device = str(classifier.device)
    if not device.startswith("cuda"):
        return CPU_TILES_IN_FLIGHT
    import torch

    free, _ = torch.cuda.mem_get_info(torch.device(device))
    per_tile = settings.batch_size * activation_bytes(classifier.module, shape, classifier.device)
    return max(1, min(MAX_TILES_IN_FLIGHT, int(DEVICE_MEMORY_SHARE * free // max(per_tile, 1))))


def activation_bytes(module, shape, device):
    """Bytes of every layer output of one H×W×C tile's forward pass: an upper bound of what one
    image adds to a model call (inference frees most outputs once read), measured with forward hooks
    that are removed again."""
    import torch

    total = [0]

    def count(_, __, output):
        for tensor in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(tensor, torch.Tensor):
                total[0] += tensor.numel() * tensor.element_size()

    leaves = [child for child in module.modules() if not list(child.children())]
    hooks = [leaf.register_forward_hook(count) for leaf in leaves]
    try:
        with torch.inference_mode():
            module(torch.zeros((1, shape[2], shape[0], shape[1]), device=device))
    finally:
        for hook in hooks:
            hook.remove()
    return total[0]
