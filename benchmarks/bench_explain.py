"""Explain whole scenes: the whole algorithm vs the engine alone on the same tiles, and peak RSS vs the
number of tiles.

For each tile count N (default 30 and 400), a raster of N scene tiles (synthetic scenes at the
model's input size, so no resampling) is explained by a fresh subprocess with every output on (SHAP
GeoTIFF, tile table, report with its default cap of 50 tiles): seconds per tile and the worker's
own peak RSS (VmHWM) after the run. The same process then runs the engine alone on the same tiles
(read beforehand, not timed; same classes, same settings), so the ratio compares like with like.
Goals on 2 cores: whole algorithm ≥ 0.85 × the engine's throughput, peak RSS flat from 30 to 400+
tiles (≤ 1 GB with the 128-px Net).

    .venv/bin/python benchmarks/bench_explain.py [--tiles 30 400] [--max-evals 500] [--input-size 128]
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from helpers import create_georeferenced_tiff, last_line_json, random_net_model_file  # noqa: E402
from peak_memory import peak_rss_mb  # noqa: E402 - the benchmarks folder is on sys.path when run as a script

TOP_K = 3
LOGIT_SCALE = 60.0  # spreads the random Net's logits like a trained model's (see bench_engine.py)


def make_raster(path, columns, rows, scene_px):
    """columns × rows synthetic scenes of scene_px pixels in one RGB GeoTIFF."""
    import numpy as np

    from aid_xai_plugin.core.data.synthetic import SYNTHETIC_CLASSES, render_scene

    rng = np.random.default_rng(0)
    dataset = create_georeferenced_tiff(path, columns * scene_px, rows * scene_px, 3, (500000.0, 1.0, 0.0, 5600000.0, 0.0, -1.0), 32633, options=["TILED=YES", "COMPRESS=DEFLATE"])
    for row in range(rows):
        strip = np.concatenate([render_scene(SYNTHETIC_CLASSES[(row * columns + col) % len(SYNTHETIC_CLASSES)], scene_px, rng) for col in range(columns)], axis=1)
        for band in range(3):
            dataset.GetRasterBand(band + 1).WriteArray(strip[..., band], 0, row * scene_px)
    dataset = None


def measure(raster, model, max_evals, masker):
    """In a subprocess: explain every tile with all outputs, then the engine alone on the same tiles."""
    import torch

    from aid_xai_plugin.core.explain.engine import ExplainSettings
    from aid_xai_plugin.core.explain.registry import engine_by_name
    from aid_xai_plugin.core.ml.classifier import top_k
    from aid_xai_plugin.core.pipelines.explain import ExplainOutputs, ExplainRequest, ExplainSpec, explain_raster
    from aid_xai_plugin.core.pipelines.tiles import TileSource, TilingOptions

    torch.set_num_threads(2)
    settings = ExplainSettings(masker=masker, max_evals=max_evals, batch_size=128)
    out = tempfile.mkdtemp()
    outputs = ExplainOutputs(os.path.join(out, "shap.tif"), os.path.join(out, "tiles.gpkg"), os.path.join(out, "report.html"))
    start = time.perf_counter()
    summary = explain_raster(ExplainSpec(raster, model, TilingOptions(), ExplainRequest(top_k=TOP_K), settings, outputs, engine="fast", device="cpu"))
    algorithm_seconds = time.perf_counter() - start
    peak_mb = peak_rss_mb()
    sizes_mb = {name: os.path.getsize(os.path.join(out, name)) / 1e6 for name in os.listdir(out)}

    source = TileSource(raster, model, TilingOptions(), "cpu")
    engine = engine_by_name("fast")
    engine_seconds = 0.0
    for tile in source.grid.tiles():
        image, _ = source.reader.read(tile.window)
        classes = top_k(source.classifier.predict_probabilities(image[None]), TOP_K)[0]
        start = time.perf_counter()
        engine.explain(image, source.classifier, classes, settings)
        engine_seconds += time.perf_counter() - start
    print(json.dumps({"tiles": summary.explained, "algorithm_seconds": algorithm_seconds, "engine_seconds": engine_seconds, "peak_rss_mb": peak_mb, "sizes_mb": sizes_mb}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", type=int, nargs="+", default=[30, 400])
    parser.add_argument("--max-evals", type=int, default=500)
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--measure", nargs=2, metavar=("RASTER", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    masker = f"blur({args.input_size},{args.input_size})"
    if args.measure:
        measure(*args.measure, args.max_evals, masker)
        return
    from aid_xai_plugin.core.data.synthetic import SYNTHETIC_CLASSES

    work = tempfile.mkdtemp(prefix="aidxai_bench_")
    model = os.path.join(work, "net.aidx.pt")
    random_net_model_file(model, args.input_size, list(SYNTHETIC_CLASSES), mean=0.5, std=0.25, logit_scale=LOGIT_SCALE)
    print(f"Net (random weights) at {args.input_size}×{args.input_size}, fast engine, {args.max_evals} evaluations, top-{TOP_K}, {masker}, CPU, 2 threads")
    print(f"{'tiles':>6} {'raster':>12} {'algorithm s/tile':>17} {'engine s/tile':>14} {'engine/algorithm':>17} {'peak RSS MB':>12} {'SHAP tif MB':>12} {'report MB':>10}")
    for count in args.tiles:
        columns = math.ceil(math.sqrt(count))
        rows = math.ceil(count / columns)
        raster = os.path.join(work, f"r{count}.tif")
        make_raster(raster, columns, rows, args.input_size)
        completed = subprocess.run([sys.executable, __file__, "--max-evals", str(args.max_evals), "--input-size", str(args.input_size), "--measure", raster, model], capture_output=True, text=True, check=True)
        row = last_line_json(completed.stdout)
        per_tile, engine_per_tile = row["algorithm_seconds"] / row["tiles"], row["engine_seconds"] / row["tiles"]
        size = f"{columns * args.input_size}×{rows * args.input_size}"
        print(
            f"{row['tiles']:>6} {size:>12} {per_tile:>17.3f} {engine_per_tile:>14.3f} {engine_per_tile / per_tile:>17.2f} {row['peak_rss_mb']:>12.0f} {row['sizes_mb']['shap.tif']:>12.1f} {row['sizes_mb']['report.html']:>10.1f}",
            flush=True,
        )
        os.remove(raster)


if __name__ == "__main__":
    main()
