"""Classify throughput and memory: the whole algorithm vs the bare model, and peak RSS vs raster size.

For each raster side (default 1 000, 5 000 and 20 000 px, RGB uint8 GeoTIFFs of repeated synthetic
scenes), a fresh subprocess runs classify_raster (all three outputs) and reports tiles/s and its peak
resident memory; the same process then times the bare model forward (Classifier on pre-read tiles,
same batch size) on a sample of the same tiles. Goal: whole algorithm ≥ 90 % of the bare forward's
tiles/s, and peak RSS flat as the raster grows.

    .venv/bin/python benchmarks/bench_classify.py [--sides 1000 5000 20000] [--input-size 128] [--tile 256]
"""

import argparse
import json
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


def make_raster(path, side, scene_px=256):
    """A side×side RGB GeoTIFF tiled with one pre-rendered block of synthetic scenes."""
    import numpy as np

    from aid_xai_plugin.core.data.synthetic import SYNTHETIC_CLASSES, render_scene

    rng = np.random.default_rng(0)
    block = np.concatenate([render_scene(SYNTHETIC_CLASSES[i % 6], scene_px, rng) for i in range(4)], axis=1)  # 256×1024×3
    dataset = create_georeferenced_tiff(path, side, side, 3, (500000.0, 1.0, 0.0, 5600000.0, 0.0, -1.0), 32633, options=["TILED=YES", "COMPRESS=DEFLATE"])
    for y in range(0, side, block.shape[0]):
        for x in range(0, side, block.shape[1]):
            part = block[: min(block.shape[0], side - y), : min(block.shape[1], side - x)]
            for band in range(3):
                dataset.GetRasterBand(band + 1).WriteArray(part[..., band], x, y)
    dataset = None


def measure(raster, model, tile, batch):
    """Run in a subprocess: classify the raster, then time the bare forward on sampled tiles."""
    import numpy as np
    import torch

    from aid_xai_plugin.core.pipelines.classify import ClassifyOutputs, classify_raster
    from aid_xai_plugin.core.pipelines.tiles import TileSource, TilingOptions

    torch.set_num_threads(2)
    options = TilingOptions(tile_size=tile)
    out = tempfile.mkdtemp()
    start = time.perf_counter()
    summary = classify_raster(raster, model, options, ClassifyOutputs(os.path.join(out, "c.tif"), os.path.join(out, "p.tif"), os.path.join(out, "t.gpkg")), batch_size=batch, device="cpu")
    algorithm_seconds = time.perf_counter() - start
    peak_mb = peak_rss_mb()
    source = TileSource(raster, model, options, "cpu")
    tiles = list(source.grid.tiles())[: min(len(source.grid), 8 * batch)]
    images = np.stack([source.reader.model_input(t.window)[0] for t in tiles])
    source.classifier.predict_probabilities(images[:batch], batch)  # warm-up
    start = time.perf_counter()
    source.classifier.predict_probabilities(images, batch)
    forward_rate = len(images) / (time.perf_counter() - start)
    print(json.dumps({"tiles": summary.tiles, "algorithm_tiles_per_s": summary.tiles / algorithm_seconds, "forward_tiles_per_s": forward_rate, "peak_rss_mb": peak_mb, "seconds": algorithm_seconds}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sides", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--tile", type=int, default=256, help="tile size in source pixels")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--gdal-cache-mb", type=int, default=256, help="GDAL_CACHEMAX for the measured process (GDAL's block cache is the only memory that grows with the raster, up to this cap)")
    parser.add_argument("--measure", nargs=2, metavar=("RASTER", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(*args.measure, args.tile, args.batch)
        return
    from aid_xai_plugin.core.data.synthetic import SYNTHETIC_CLASSES

    work = tempfile.mkdtemp(prefix="aidxai_bench_")
    model = os.path.join(work, "net.aidx.pt")
    random_net_model_file(model, args.input_size, list(SYNTHETIC_CLASSES), mean=0.5, std=0.25)
    print(f"Net (random weights) at {args.input_size}×{args.input_size}, tiles of {args.tile} px, batch {args.batch}, CPU, 2 threads, GDAL_CACHEMAX={args.gdal_cache_mb} MB")
    print(f"{'raster':>14} {'tiles':>7} {'algorithm t/s':>14} {'forward t/s':>12} {'ratio':>6} {'peak RSS MB':>12}")
    for side in args.sides:
        raster = os.path.join(work, f"r{side}.tif")
        make_raster(raster, side)
        environment = dict(os.environ, GDAL_CACHEMAX=str(args.gdal_cache_mb))
        completed = subprocess.run([sys.executable, __file__, "--tile", str(args.tile), "--batch", str(args.batch), "--measure", raster, model], capture_output=True, text=True, check=True, env=environment)
        row = last_line_json(completed.stdout)
        ratio = row["algorithm_tiles_per_s"] / row["forward_tiles_per_s"]
        print(f"{side:>6}×{side:<7} {row['tiles']:>7} {row['algorithm_tiles_per_s']:>14.1f} {row['forward_tiles_per_s']:>12.1f} {ratio:>6.2f} {row['peak_rss_mb']:>12.0f}", flush=True)
        os.remove(raster)


if __name__ == "__main__":
    main()
