"""Measure, one by one, the speed levers that apply to any model's full evaluations: torch's
inference mode, channels-last memory, BatchNorm folded into the convolutions, both together, and
torch.compile on top (its compile time printed apart). Each lever's figure is ms per tile for one
batch, best of --repeats, with the largest change of the logits it causes (relative to the largest
logit): the fast engine keeps the levers that pay and stay inside float32 rounding.

The models are the engine benchmark's (seeded random weights, see bench_engine.py), at 224×224
(256×256 for Net).

    .venv/bin/python benchmarks/bench_levers.py
    .venv/bin/python benchmarks/bench_levers.py --models resnet18 --batch 64 --compile
"""

import argparse
import copy
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_engine import bench_classifier  # noqa: E402

from aid_xai_plugin.core.explain.traced_graph import traced_for_inference  # noqa: E402


def best_ms_per_tile(function, batch, repeats):
    function(batch)  # warm-up (and, for torch.compile, the compilation)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function(batch)
        best = min(best, time.perf_counter() - start)
    return 1000 * best / len(batch)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v3_large", "efficientnet_b0", "net"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (needs a C++ compiler on CPU)")
    arguments = parser.parse_args()

    import torch

    torch.set_num_threads(arguments.threads)
    print(f"batch {arguments.batch}, device {arguments.device}, {arguments.threads} torch threads; ms per tile (best of {arguments.repeats}), max |Δ logits| / max |logit|")
    for name in arguments.models:
        size = 256 if name == "net" else 224
        classifier = bench_classifier(name, arguments.device, size)
        module = classifier.module
        generator = torch.Generator().manual_seed(0)
        batch = ((torch.rand((arguments.batch, 3, size, size), generator=generator).to(arguments.device) - classifier.mean) / classifier.std).contiguous()
        channels_last = batch.contiguous(memory_format=torch.channels_last)
        folded = traced_for_inference(module, arguments.device)
        folded_last = copy.deepcopy(folded).to(memory_format=torch.channels_last)
        module_last = copy.deepcopy(module).to(memory_format=torch.channels_last)
        with torch.no_grad():
            reference = module(batch)
        scale = float(reference.abs().max())

        def no_grad(model, inputs):
            def run(_):
                with torch.no_grad():
                    return model(inputs)

            return run

        def inference(model, inputs):
            def run(_):
                with torch.inference_mode():
                    return model(inputs)

            return run

        levers = [
            ("no_grad (baseline)", no_grad(module, batch), batch),
            ("inference_mode", inference(module, batch), batch),
            ("+ channels-last", inference(module_last, channels_last), channels_last),
            ("+ BatchNorm folded", inference(folded, batch), batch),
            ("+ folded and channels-last", inference(folded_last, channels_last), channels_last),
        ]
        if arguments.compile:
            start = time.perf_counter()
            compiled = torch.compile(folded_last)
            with torch.inference_mode():
                compiled(channels_last)
            print(f"{name}: torch.compile took {time.perf_counter() - start:.1f} s to compile")
            levers.append(("+ torch.compile", inference(compiled, channels_last), channels_last))
        baseline = None
        for label, run, inputs in levers:
            milliseconds = best_ms_per_tile(run, inputs, arguments.repeats)
            baseline = baseline or milliseconds
            with torch.inference_mode():
                delta = float((run(inputs) - reference).abs().max()) / scale
            print(f"{name:<20} {label:<28} {milliseconds:8.2f} ms/tile  {baseline / milliseconds:5.2f}x  max |Δ| {delta:.1e}", flush=True)


if __name__ == "__main__":
    main()
