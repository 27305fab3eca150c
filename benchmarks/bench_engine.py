"""Time shap's PartitionExplainer against the fast engine on the source document's Net.

The Net has the source's architecture (256×256×3 input, 30 classes, 29.6 M parameters) but RANDOM
weights (seeded): speed and agreement do not depend on training. Each engine and budget runs in its
own subprocess, so the printed peak RSS (ru_maxrss) belongs to that run alone; it includes torch,
the model and the tile. shap runs above --shap-measure-up-to are not run but estimated from the
evals/s of the largest measured shap run, and are marked ESTIMATED.

    .venv/bin/python benchmarks/bench_engine.py --max-evals 500 5000 50000
    .venv/bin/python benchmarks/bench_engine.py --max-evals 5000 --engines fast
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

INPUT_SIZE = 256
NUM_CLASSES = 30
TOP_CLASSES = 4


def source_classifier(device, seed=0):
    import torch

    from aid_xai_plugin.core.inference import Classifier
    from aid_xai_plugin.core.model import Net
    from aid_xai_plugin.core.model_file import LoadedModel, ModelInfo

    torch.manual_seed(seed)
    info = ModelInfo(
        architecture="Net",
        arguments={"num_classes": NUM_CLASSES, "input_size": INPUT_SIZE},
        class_names=[f"class{i}" for i in range(NUM_CLASSES)],
        input_size=INPUT_SIZE,
        bands=[1, 2, 3],
        mean=[0.485, 0.456, 0.406],
        std=[0.229, 0.224, 0.225],
    )
    return Classifier(LoadedModel(Net(NUM_CLASSES, INPUT_SIZE), info, path="", sha256=""), device=device)


def bench_tile(seed=1):
    """A seeded tile with smooth structure plus noise (values in [0, 1], float32)."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(0, 1, INPUT_SIZE, dtype=np.float32)[:, None, None]
    cols = np.linspace(0, 1, INPUT_SIZE, dtype=np.float32)[None, :, None]
    return np.clip(0.5 * rows * cols + 0.5 * rng.random((INPUT_SIZE, INPUT_SIZE, 3), dtype=np.float32), 0, 1)


def run_worker(arguments):
    """One engine, one budget, in this process: prints a JSON line and saves the values."""
    import torch

    from aid_xai_plugin.core.explanation.engine import ExplainSettings
    from aid_xai_plugin.core.explanation.fast_engine import engine_by_name

    torch.set_num_threads(arguments.threads)
    classifier = source_classifier(arguments.device)
    tile = bench_tile()
    classes = np.argsort(-classifier.predict_probabilities(tile[None])[0])[:TOP_CLASSES]
    settings = ExplainSettings(masker=arguments.masker, max_evals=arguments.worker_evals, batch_size=arguments.batch_size, seed=0)
    setup_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    explanation = engine_by_name(arguments.worker).explain(tile, classifier, classes, settings)
    wall = time.perf_counter() - start
    np.save(arguments.values_file, explanation.values)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"wall_s": wall, "setup_rss_mb": setup_rss_mb, "peak_rss_mb": peak_rss_mb}))


def measure(engine, max_evals, arguments, values_file):
    command = [
        sys.executable, os.path.abspath(__file__), "--worker", engine, "--worker-evals", str(max_evals),
        "--values-file", values_file, "--masker", arguments.masker, "--batch-size", str(arguments.batch_size),
        "--threads", str(arguments.threads), "--device", arguments.device,
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-evals", type=int, nargs="+", default=[500, 5000, 50000])
    parser.add_argument("--engines", nargs="+", default=["shap", "fast"], choices=["shap", "exact", "fast"])
    parser.add_argument("--shap-measure-up-to", type=int, default=500, help="above this budget, estimate shap from its last measured evals/s")
    parser.add_argument("--masker", default="blur(256,256)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-evals", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--values-file", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker:
        return run_worker(arguments)

    print(f"Net {INPUT_SIZE}x{INPUT_SIZE}x3, {NUM_CLASSES} classes, RANDOM weights, top-{TOP_CLASSES}, masker {arguments.masker}, "
          f"batch {arguments.batch_size}, device {arguments.device}, {arguments.threads} torch threads")  # fmt: skip
    shap_rate = None
    with tempfile.TemporaryDirectory() as folder:
        for max_evals in sorted(arguments.max_evals):
            timings = {}
            for engine in arguments.engines:
                if engine == "shap" and max_evals > arguments.shap_measure_up_to and shap_rate is not None:
                    timings[engine] = {"wall_s": max_evals / shap_rate, "estimated": True}
                    continue
                timings[engine] = measure(engine, max_evals, arguments, os.path.join(folder, f"{engine}_{max_evals}.npy"))
                if engine == "shap":
                    shap_rate = max_evals / timings[engine]["wall_s"]
            for engine, timing in timings.items():
                if timing.get("estimated"):
                    print(f"max_evals {max_evals:>6}  {engine:<4}  ESTIMATED from measured shap evals/s: "
                          f"{max_evals / timing['wall_s']:8.1f} evals/s  {timing['wall_s']:9.1f} s")  # fmt: skip
                else:
                    print(f"max_evals {max_evals:>6}  {engine:<4}  {max_evals / timing['wall_s']:8.1f} evals/s  {timing['wall_s']:9.1f} s  "
                          f"peak RSS {timing['peak_rss_mb']:7.0f} MB (after setup {timing['setup_rss_mb']:.0f} MB)")  # fmt: skip
            if "shap" in timings and "fast" in timings:
                print(f"max_evals {max_evals:>6}  speed ratio fast/shap {timings['shap']['wall_s'] / timings['fast']['wall_s']:.2f}x"
                      + (" (shap estimated)" if timings["shap"].get("estimated") else ""))  # fmt: skip
                if not timings["shap"].get("estimated"):
                    reference = np.load(os.path.join(folder, f"shap_{max_evals}.npy"))
                    fast = np.load(os.path.join(folder, f"fast_{max_evals}.npy"))
                    delta = np.abs(reference - fast).max()
                    print(f"max_evals {max_evals:>6}  max |delta| {delta:.3g} (max |value| {np.abs(reference).max():.3g})")


if __name__ == "__main__":
    main()
