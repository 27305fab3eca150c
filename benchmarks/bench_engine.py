"""Time shap's PartitionExplainer against the exact and fast engines on the source's Net or on
torchvision's scene classifiers.

`--model net` is the source document's Net (256×256×3, 30 classes, 29.6 M parameters); `resnet18`,
`mobilenet_v3_large`, `efficientnet_b0` (and the other architectures the plugin trains) are
torchvision's at 224×224×3. All have RANDOM seeded weights made to behave like trained ones (Net:
last layer scaled so the logits spread like a trained model's; torchvision: BatchNorm statistics
gathered on random tiles and the last layer scaled to a logit std of 3): speed and agreement do not
depend on training. Each engine and budget runs in its own subprocess, so the printed peak RSS
(VmHWM) belongs to that run alone; it includes Python, torch (the CUDA build alone takes ~510 MB
resident on import), the model and the tile — the RSS after that setup is printed too. shap and
exact evaluate every masked tile in full; their runs above --measure-full-up-to are not run but
estimated from the evals/s of their largest measured run, and are marked ESTIMATED. max |delta|
compares each engine's values with shap's (or, where shap was only estimated, fast's with exact's)
from the same run. For the fast engine the FLOP bound is printed beside its speed-up: FLOPs of full
evaluations over the FLOPs it executed (convolutions and linear layers), i.e. the speed-up its plan
allows at equal FLOP rates. With exact and fast both measured, the fast engine's cost per evaluation
(its seconds per evaluation over exact's) is printed beside the cost its plan predicted, and times
the FLOP bound: the time per executed FLOP relative to full evaluations, which the cost model's
REGIONAL_COST stands for (core/explain/cost_model.py).

    .venv/bin/python benchmarks/bench_engine.py                      # Net: 500 / 5 000 / 50 000, all engines
    .venv/bin/python benchmarks/bench_engine.py --model resnet18 --max-evals 5000 --engines shap fast
    .venv/bin/python benchmarks/bench_engine.py --max-evals 5000 --engines fast
    .venv/bin/python benchmarks/bench_engine.py --size 96 --max-evals 50000 --measure-full-up-to 50000
    .venv/bin/python benchmarks/bench_engine.py --image ../shared/aid150/StorageTanks/storagetanks_1.jpg --max-evals 5000 --engines shap fast
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from helpers import last_line_json, random_net_classifier, random_torchvision_classifier  # noqa: E402
from peak_memory import peak_rss_mb  # noqa: E402 - the benchmarks folder is on sys.path when run as a script

from aid_xai_plugin.core.ml.torchvision_models import TORCHVISION_ARCHITECTURES  # noqa: E402

NUM_CLASSES = 30
# Net's default initialisation gives logits within ±0.1, so every probability stays ≈ 1/30 and the
# SHAP values (~1e-8) sink into float32 noise; scaling the last layer spreads the logits like a
# trained classifier's (std ≈ 3), which changes no timing.
LOGIT_SCALE = 60.0
TOP_CLASSES = 4


def source_classifier(device, seed=0, size=256):
    """The source's Net (size×size×3, NUM_CLASSES classes, ImageNet normalisation), seeded random
    weights, last layer scaled by LOGIT_SCALE."""
    return random_net_classifier(
        size, NUM_CLASSES, seed=seed, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], logit_scale=LOGIT_SCALE, device=device
    )


def bench_classifier(model, device, size):
    """The benchmark's classifier: the source's Net or a torchvision architecture (ImageNet
    normalisation, NUM_CLASSES classes, seeded random weights)."""
    if model == "net":
        return source_classifier(device, size=size)
    return random_torchvision_classifier(model, size, NUM_CLASSES, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], device=device)


def bench_tile(size=256, seed=1):
    """A seeded tile with smooth structure plus noise (values in [0, 1], float32)."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    cols = np.linspace(0, 1, size, dtype=np.float32)[None, :, None]
    return np.clip(0.5 * rows * cols + 0.5 * rng.random((size, size, 3), dtype=np.float32), 0, 1)


def run_worker(arguments):
    """One engine, one budget, in this process: prints a JSON line and saves the values."""
    import torch

    from aid_xai_plugin.core.explain.engine import ExplainSettings
    from aid_xai_plugin.core.explain.registry import engine_by_name

    torch.set_num_threads(arguments.threads)
    if arguments.state_memory_mb is not None:
        from aid_xai_plugin.core.explain import region_evaluator

        region_evaluator.STATE_MEMORY_BUDGET = int(arguments.state_memory_mb * 2**20)
    if arguments.device.startswith("cuda"):  # float32 convolutions for every engine, as on CPU (cuDNN's
        torch.backends.cudnn.allow_tf32 = False  # default TF32 rounds at ~1e-3 and reorders shap's own queue)
        torch.backends.cuda.matmul.allow_tf32 = False
    classifier = bench_classifier(arguments.model, arguments.device, arguments.size)
    if arguments.image:
        from aid_xai_plugin.core.ml.preprocess import load_image_file

        tile = load_image_file(arguments.image, arguments.size)
    else:
        tile = bench_tile(arguments.size)
    classes = np.argsort(-classifier.predict_probabilities(tile[None])[0])[:TOP_CLASSES]
    settings = ExplainSettings(masker=arguments.masker, max_evals=arguments.worker_evals, batch_size=arguments.batch_size, seed=0)
    setup_rss_mb = peak_rss_mb()
    engine = engine_by_name(arguments.worker)
    start = time.perf_counter()
    explanation = engine.explain(tile, classifier, classes, settings)
    wall = time.perf_counter() - start
    np.save(arguments.values_file, explanation.values)
    summary = engine.plan_summary() if hasattr(engine, "plan_summary") else None
    if getattr(engine, "anchored_evaluations", 0):
        summary += f"; {engine.anchored_evaluations} evaluations from an earlier context's state after theirs was released (memory budget)"
    if getattr(engine, "whole_evaluations", 0):
        summary += f"; {engine.whole_evaluations} evaluated in full (their region would have cost more)"
    planned_cost = engine.cost_per_evaluation(classifier, tile.shape, settings)
    print(json.dumps({"wall_s": wall, "setup_rss_mb": setup_rss_mb, "peak_rss_mb": peak_rss_mb(), "flop_bound": explanation.flop_bound, "plan": summary, "planned_cost": planned_cost}))


def measure(engine, max_evals, arguments, values_file):
    command = [
        sys.executable, os.path.abspath(__file__), "--worker", engine, "--worker-evals", str(max_evals),
        "--values-file", values_file, "--masker", arguments.masker, "--batch-size", str(arguments.batch_size),
        "--threads", str(arguments.threads), "--device", arguments.device, "--size", str(arguments.size), "--model", arguments.model,
    ] + (["--image", arguments.image] if arguments.image else []) + (["--state-memory-mb", str(arguments.state_memory_mb)] if arguments.state_memory_mb is not None else [])  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, check=True)
    return last_line_json(completed.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-evals", type=int, nargs="+", default=[500, 5000, 50000])
    parser.add_argument("--engines", nargs="+", default=["shap", "exact", "fast"], choices=["shap", "exact", "fast"])
    parser.add_argument("--measure-full-up-to", type=int, default=5000, help="above this budget, estimate shap and exact from their last measured evals/s")
    parser.add_argument("--model", default="net", choices=("net",) + TORCHVISION_ARCHITECTURES, help="the source's Net (default) or a torchvision architecture")
    parser.add_argument("--size", type=int, help="tile side in pixels (default 256 for Net, 224 for torchvision's; Net is built for it)")
    parser.add_argument("--masker", default=None, help="default blur(size,size), as the source uses")
    parser.add_argument("--image", help="explain this image file (e.g. an AID scene, resized to --size) instead of the synthetic tile")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--state-memory-mb", type=float, help="memory for the fast engine's context states (default: its STATE_MEMORY_BUDGET); 0 evaluates every context from its tile's background")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-evals", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--values-file", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    arguments.size = arguments.size or (256 if arguments.model == "net" else 224)
    arguments.masker = arguments.masker or f"blur({arguments.size},{arguments.size})"
    if arguments.worker:
        return run_worker(arguments)

    if arguments.image:
        print(f"Tile: {arguments.image} resized to {arguments.size}x{arguments.size}")
    weights = f"RANDOM weights (last layer x{LOGIT_SCALE:g})" if arguments.model == "net" else "RANDOM weights (BatchNorm statistics from random tiles, logit std 3)"
    print(f"{arguments.model} {arguments.size}x{arguments.size}x3, {NUM_CLASSES} classes, {weights}, top-{TOP_CLASSES}, masker {arguments.masker}, "
          f"batch {arguments.batch_size}, device {arguments.device}, {arguments.threads} torch threads"
          + ("" if arguments.state_memory_mb is None else f", {arguments.state_memory_mb:g} MB for the fast engine's states"))  # fmt: skip
    rates = {}
    with tempfile.TemporaryDirectory() as folder:
        for max_evals in sorted(arguments.max_evals):
            timings = {}
            for engine in arguments.engines:
                if engine != "fast" and max_evals > arguments.measure_full_up_to and engine in rates:
                    timings[engine] = {"wall_s": max_evals / rates[engine], "estimated": True}
                    print(f"max_evals {max_evals:>6}  {engine:<5}  ESTIMATED from its measured evals/s: {rates[engine]:8.1f} evals/s  {timings[engine]['wall_s']:9.1f} s", flush=True)
                    continue
                timings[engine] = measure(engine, max_evals, arguments, os.path.join(folder, f"{engine}_{max_evals}.npy"))
                rates[engine] = max_evals / timings[engine]["wall_s"]
                bound = timings[engine].get("flop_bound")
                print(f"max_evals {max_evals:>6}  {engine:<5}  {rates[engine]:8.1f} evals/s  {timings[engine]['wall_s']:9.1f} s  "
                      f"peak RSS {timings[engine]['peak_rss_mb']:6.0f} MB (after setup {timings[engine]['setup_rss_mb']:.0f} MB)"
                      + (f"  FLOP bound {bound:.2f}x" if bound else ""), flush=True)  # fmt: skip
                if timings[engine].get("plan") and engine == "fast":
                    print(f"                 plan: {timings[engine]['plan']}")
            measured = [engine for engine in timings if not timings[engine].get("estimated")]
            if "shap" in timings:
                for engine in ("exact", "fast"):
                    if engine in timings:
                        note = " (shap estimated)" if timings["shap"].get("estimated") or timings[engine].get("estimated") else ""
                        speed = timings["shap"]["wall_s"] / timings[engine]["wall_s"]
                        bound = timings[engine].get("flop_bound")
                        share = f"  = {speed / bound:.0%} of its FLOP bound {bound:.2f}x" if bound else ""
                        print(f"max_evals {max_evals:>6}  speed {engine}/shap {speed:6.2f}x{note}{share}")
            if "exact" in measured and "fast" in measured:  # what the cost model's constants predict (core/explain/cost_model.py)
                cost = rates["exact"] / rates["fast"]
                bound = timings["fast"].get("flop_bound") or 1.0
                print(f"max_evals {max_evals:>6}  cost per evaluation fast/exact {cost:.3f} (planned {timings['fast']['planned_cost']:.3f}); "
                      f"time per executed FLOP relative to full evaluations {cost * bound:.2f}")  # fmt: skip
            reference = "shap" if "shap" in measured else "exact" if "exact" in measured else None
            if reference:
                expected = np.load(os.path.join(folder, f"{reference}_{max_evals}.npy"))
                for engine in measured:
                    if engine != reference:
                        delta = np.abs(np.load(os.path.join(folder, f"{engine}_{max_evals}.npy")) - expected).max()
                        print(f"max_evals {max_evals:>6}  max |delta| {engine} vs {reference} {delta:.3g} = {delta / np.abs(expected).max():.2g} x max |value|")


if __name__ == "__main__":
    main()
