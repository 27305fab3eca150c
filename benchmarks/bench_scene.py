"""Tiles per hour of a whole explain run (`explain_raster`) on a mosaic of real AID scenes: shap,
exact and fast one tile at a time, and the engines with several tiles in flight (TILES_IN_FLIGHT),
beside the bare forward rate of the same model and batch.

The mosaic holds --tiles AID images (class folders sorted, round-robin over the classes, files
sorted), each resized to size×size (bilinear) and placed on a grid of ceil(√N) columns: a 3-band
Byte GeoTIFF (EPSG:3857, 1 m pixels) whose pipeline tiles (tile size = the model's input size, Byte
bands scaled /255 by SCALING auto) are exactly the images. When N is not a square the last grid row
has empty cells; a tile selector restricts every run to the first N cells (shap and plain exact,
slow on a CPU, to the first --tiles-for-full). The models are bench_engine.py's (seeded random
weights made to behave like trained ones), saved as model files: the pipeline loads them by path.

Each mode runs in its own subprocess, so its peak RSS (VmHWM) belongs to that run alone; the RSS
after loading the model is printed too. A mode's wall is the whole explain_raster call (model load,
the time-budget probe, reading, explaining and writing the SHAP raster): what a user waits for.
`X-batched` is engine X with --in-flight tiles in flight (0: the automatic choice), plain X one tile
at a time. evals/s ÷ forward img/s is the share of the bare forward rate (same model, batch and
threads, channels-last, inference mode) that the run turns into evaluations. Modes of one engine
are compared on the tiles both explained: the max |difference| of their SHAP rasters over the max
|value| must stay within float32 rounding (0 for exact on a CPU). With --repeats R the modes run
R times, alternating (A B A B …), and the median wall is reported.

    .venv/bin/python benchmarks/bench_scene.py --model resnet18 --size 96 --tiles 8 --max-evals 5000
    .venv/bin/python benchmarks/bench_scene.py --model resnet18 --size 96 --tiles 8 --max-evals 50000 --modes fast fast-batched
    .venv/bin/python benchmarks/bench_scene.py --tiles 8 --modes fast fast-batched --repeats 3
    .venv/bin/python benchmarks/bench_scene.py --device cuda --tiles 64
    .venv/bin/python benchmarks/bench_scene.py --device cuda --tiles 64 --model mobilenet_v3_large --modes exact exact-batched fast fast-batched
"""

import argparse
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from bench_engine import NUM_CLASSES, TOP_CLASSES, bench_classifier  # noqa: E402 - the benchmarks folder is on sys.path when run as a script
from helpers import create_georeferenced_tiff, last_line_json  # noqa: E402
from peak_memory import peak_rss_mb  # noqa: E402

from aid_xai_plugin.core.ml.torchvision_models import TORCHVISION_ARCHITECTURES  # noqa: E402

MODES = ("shap", "exact", "fast", "fast-batched", "exact-batched")
FULL_EVALUATION_MODES = ("shap", "exact")  # run on the first --tiles-for-full tiles only
MOSAIC_ORIGIN = (500000.0, 5000000.0)  # top-left corner, EPSG:3857 metres
FORWARD_SECONDS = 5.0


def engine_of(mode):
    return mode.removesuffix("-batched")


def aid_images(folder, count):
    """`count` image paths: class folders sorted, round-robin over the classes, files sorted."""
    classes = sorted(entry for entry in os.listdir(folder) if os.path.isdir(os.path.join(folder, entry)))
    files = {name: sorted(os.listdir(os.path.join(folder, name))) for name in classes}
    chosen = []
    for number in range(count):
        name = classes[number % len(classes)]
        chosen.append(os.path.join(folder, name, files[name][number // len(classes)]))
    return chosen


def write_mosaic(path, images, size):
    """The images, resized to size×size, on a grid of ceil(√N) columns; returns the column count."""
    from PIL import Image

    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    pixels = np.zeros((rows * size, columns * size, 3), dtype=np.uint8)
    for number, image_path in enumerate(images):
        row, col = divmod(number, columns)
        with Image.open(image_path) as image:
            tile = image.convert("RGB").resize((size, size), Image.BILINEAR)
        pixels[row * size : (row + 1) * size, col * size : (col + 1) * size] = np.asarray(tile)
    geotransform = (MOSAIC_ORIGIN[0], 1.0, 0.0, MOSAIC_ORIGIN[1], 0.0, -1.0)
    options = ("TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256")
    dataset = create_georeferenced_tiff(path, columns * size, rows * size, 3, geotransform, 3857, options=options)
    for band in range(3):
        dataset.GetRasterBand(band + 1).WriteArray(pixels[:, :, band])
    dataset = None  # closes the file
    return columns


def write_model_file(path, model, size):
    """bench_engine's classifier as a model file (torchvision's are rebuilt from their architecture name)."""
    from aid_xai_plugin.core.ml.model_file import save_model

    classifier = bench_classifier(model, "cpu", size)
    info = classifier.info
    if model != "net":
        info = dataclasses.replace(info, architecture=model, arguments={"num_classes": NUM_CLASSES, "in_bands": 3})
    save_model(path, classifier.module, info)


def first_cells_selector(count, columns, size):
    """A tile selector for the mosaic's first `count` cells (row by row)."""

    def select(corners):
        left, top = corners[0]
        row, col = round((MOSAIC_ORIGIN[1] - top) / size), round((left - MOSAIC_ORIGIN[0]) / size)
        return [("mosaic", "", None)] if row * columns + col < count else []

    return select


def configure_torch(arguments):
    import torch

    torch.set_num_threads(arguments.threads)
    if arguments.device.startswith("cuda"):  # float32 convolutions, as on CPU (as bench_engine.py)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    return torch


def run_explain_worker(arguments):
    """One mode's explain_raster run in this process: prints a JSON line."""
    from aid_xai_plugin.core.explain.engine import ExplainSettings
    from aid_xai_plugin.core.explain.in_flight import tiles_in_flight
    from aid_xai_plugin.core.ml.classifier import Classifier
    from aid_xai_plugin.core.ml.model_file import load_model
    from aid_xai_plugin.core.pipelines.explain import ExplainOutputs, ExplainRequest, ExplainSpec, explain_raster
    from aid_xai_plugin.core.pipelines.tiles import TilingOptions

    torch = configure_torch(arguments)
    mode = arguments.worker
    requested_in_flight = arguments.in_flight if mode.endswith("-batched") else 1
    settings = ExplainSettings(masker=f"blur({arguments.size},{arguments.size})", max_evals=arguments.max_evals, batch_size=arguments.batch_size, seed=0)
    classifier = Classifier(load_model(arguments.model_file), arguments.device)
    setup_rss_mb = peak_rss_mb()
    in_flight = tiles_in_flight(requested_in_flight, classifier, (arguments.size, arguments.size, 3), settings)
    del classifier  # explain_raster loads its own
    if arguments.device.startswith("cuda"):
        torch.cuda.empty_cache()
    spec = ExplainSpec(
        raster=arguments.raster,
        model=arguments.model_file,
        tiling=TilingOptions(tile_size=arguments.size, tile_unit="pixels"),  # scaling auto: Byte bands /255
        request=ExplainRequest(tile_selector=first_cells_selector(arguments.worker_tiles, arguments.columns, arguments.size), top_k=TOP_CLASSES, max_tiles=arguments.worker_tiles),
        settings=settings,
        outputs=ExplainOutputs(shap_raster=arguments.shap_raster),
        engine=engine_of(mode),
        device=arguments.device,
        tiles_in_flight=requested_in_flight,
    )
    start = time.perf_counter()
    result = explain_raster(spec)
    wall = time.perf_counter() - start
    print(json.dumps({
        "wall_s": wall, "tiles": result.explained, "tiles_per_hour": 3600 * result.explained / wall,
        "evaluations_per_s": result.explained * arguments.max_evals / wall, "peak_rss_mb": peak_rss_mb(),
        "setup_rss_mb": setup_rss_mb, "tiles_in_flight": in_flight,
    }))  # fmt: skip


def run_forward_worker(arguments):
    """The model's bare forward rate on batches of --batch-size random images: prints a JSON line."""
    from aid_xai_plugin.core.ml.classifier import Classifier
    from aid_xai_plugin.core.ml.model_file import load_model

    torch = configure_torch(arguments)
    classifier = Classifier(load_model(arguments.model_file), arguments.device)
    module = classifier.module.to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(0)
    batch = torch.rand((arguments.batch_size, 3, arguments.size, arguments.size), generator=generator).to(arguments.device)
    batch = ((batch - classifier.mean) / classifier.std).contiguous(memory_format=torch.channels_last)

    def forward():
        module(batch)
        if arguments.device.startswith("cuda"):
            torch.cuda.synchronize()

    with torch.inference_mode():
        forward()  # warm-up: first calls pay set-up costs
        forward()
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < FORWARD_SECONDS:
            forward()
            calls += 1
        wall = time.perf_counter() - start
    print(json.dumps({"images_per_s": calls * arguments.batch_size / wall, "peak_rss_mb": peak_rss_mb()}))


def ratio_text(value):
    return f"{value:.2f}" if value is not None else "-"


def run_worker_process(mode, arguments, extra=()):
    command = [
        sys.executable, os.path.abspath(__file__), "--worker", mode, "--model", arguments.model, "--size", str(arguments.size),
        "--max-evals", str(arguments.max_evals), "--batch-size", str(arguments.batch_size), "--threads", str(arguments.threads),
        "--device", arguments.device, "--in-flight", str(arguments.in_flight), "--model-file", arguments.model_file, *extra,
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode:
        sys.exit(f"The {mode} run failed:\n{completed.stderr}")
    return last_line_json(completed.stdout)


def relative_difference(path, reference_path, shared_tiles, columns, size):
    """max |difference| / max |value| of two SHAP rasters over the mosaic's first `shared_tiles` cells
    (both rasters start at the mosaic's top-left: every run explains the first cell)."""
    from osgeo import gdal

    values, reference = (gdal.Open(raster).ReadAsArray() for raster in (path, reference_path))
    largest_difference = largest_value = 0.0
    for number in range(shared_tiles):
        row, col = divmod(number, columns)
        cell = np.s_[:, row * size : (row + 1) * size, col * size : (col + 1) * size]
        largest_difference = max(largest_difference, float(np.abs(values[cell] - reference[cell]).max()))
        largest_value = max(largest_value, float(np.abs(reference[cell]).max()))
    return largest_difference / largest_value


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="net", choices=("net",) + TORCHVISION_ARCHITECTURES, help="the source's Net (default) or a torchvision architecture")
    parser.add_argument("--size", type=int, help="tile side in pixels (default 256 for Net, 224 for torchvision's; Net is built for it)")
    parser.add_argument("--tiles", type=int, default=64, help="AID images in the mosaic, explained by the fast and batched modes")
    parser.add_argument("--tiles-for-full", type=int, default=4, help="shap and plain exact explain only the mosaic's first this many tiles")
    parser.add_argument("--max-evals", type=int, default=5000)
    parser.add_argument("--modes", nargs="+", default=["shap", "exact", "fast", "fast-batched"], choices=MODES)
    parser.add_argument("--in-flight", type=int, default=0, help="TILES_IN_FLIGHT of the batched modes (0: automatic)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--aid-folder", default=os.path.normpath(os.path.join(ROOT, "..", "shared", "aid150")), help="AID images, one folder per class")
    parser.add_argument("--repeats", type=int, default=1, help="time each mode this many times, alternating modes; report the median")
    for hidden in ("--worker", "--model-file", "--raster", "--shap-raster"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    for hidden in ("--worker-tiles", "--columns"):
        parser.add_argument(hidden, type=int, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    arguments.size = arguments.size or (256 if arguments.model == "net" else 224)
    if arguments.worker == "forward":
        return run_forward_worker(arguments)
    if arguments.worker:
        return run_explain_worker(arguments)
    if not os.path.isdir(arguments.aid_folder):
        sys.exit(
            f"This benchmark explains real AID scenes and needs the AID images (one folder per class, e.g. Airport/airport_1.jpg) in "
            f"{arguments.aid_folder}; put them there or give their folder with --aid-folder."
        )

    with tempfile.TemporaryDirectory() as folder:
        raster = os.path.join(folder, "mosaic.tif")
        columns = write_mosaic(raster, aid_images(arguments.aid_folder, arguments.tiles), arguments.size)
        arguments.model_file = os.path.join(folder, "model.aidx.pt")
        write_model_file(arguments.model_file, arguments.model, arguments.size)
        print(f"{arguments.model} {arguments.size}x{arguments.size}x3, {NUM_CLASSES} classes, RANDOM weights (bench_engine.py), top-{TOP_CLASSES}, "
              f"masker blur({arguments.size},{arguments.size}), {arguments.max_evals} evaluations, batch {arguments.batch_size}, "
              f"device {arguments.device}, {arguments.threads} torch threads; mosaic of {arguments.tiles} AID tiles, {columns} columns "
              f"(shap and plain exact: the first {arguments.tiles_for_full})", flush=True)  # fmt: skip
        forward = run_worker_process("forward", arguments)
        print(f"bare forward: {forward['images_per_s']:.1f} img/s (batch {arguments.batch_size})", flush=True)

        tile_counts = {mode: min(arguments.tiles_for_full, arguments.tiles) if mode in FULL_EVALUATION_MODES else arguments.tiles for mode in arguments.modes}
        rasters = {mode: os.path.join(folder, f"shap_{mode}.tif") for mode in arguments.modes}
        runs = {mode: [] for mode in arguments.modes}
        for repeat in range(arguments.repeats):
            for mode in arguments.modes:
                extra = ["--raster", raster, "--shap-raster", rasters[mode], "--worker-tiles", str(tile_counts[mode]), "--columns", str(columns)]
                runs[mode].append(run_worker_process(mode, arguments, extra))  # each repeat rewrites the mode's raster
                print(f"  {mode:<14} run {repeat + 1}: {runs[mode][-1]['wall_s']:8.1f} s", flush=True)

        results = {}
        for mode, mode_runs in runs.items():
            walls = [run["wall_s"] for run in mode_runs]
            wall = statistics.median(walls)
            tiles = mode_runs[0]["tiles"]
            results[mode] = {
                "tiles": tiles, "tiles_in_flight": mode_runs[0]["tiles_in_flight"], "wall_s": wall, "walls_s": walls,
                "tiles_per_hour": 3600 * tiles / wall, "evaluations_per_s": tiles * arguments.max_evals / wall,
                "peak_rss_mb": max(run["peak_rss_mb"] for run in mode_runs), "setup_rss_mb": mode_runs[0]["setup_rss_mb"],
            }  # fmt: skip
            results[mode]["share_of_forward"] = results[mode]["evaluations_per_s"] / forward["images_per_s"]
        for mode, result in results.items():
            if "shap" in results:
                result["speed_vs_shap"] = result["tiles_per_hour"] / results["shap"]["tiles_per_hour"]
            if mode.endswith("-batched") and engine_of(mode) in results:
                result["speed_vs_one_at_a_time"] = result["tiles_per_hour"] / results[engine_of(mode)]["tiles_per_hour"]

        print(f"\n{'mode':<14} {'tiles':>5} {'in flight':>9} {'wall s':>9} {'tiles/h':>9} {'evals/s':>9} {'÷ fwd':>6} {'× shap':>7} {'× one':>6} {'peak RSS MB':>11}")
        for mode, result in results.items():
            print(f"{mode:<14} {result['tiles']:>5} {result['tiles_in_flight']:>9} {result['wall_s']:>9.1f} {result['tiles_per_hour']:>9.1f} "
                  f"{result['evaluations_per_s']:>9.1f} {result['share_of_forward']:>6.2f} {ratio_text(result.get('speed_vs_shap')):>7} "
                  f"{ratio_text(result.get('speed_vs_one_at_a_time')):>6} {result['peak_rss_mb']:>11.0f}")  # fmt: skip
        if arguments.repeats > 1:
            for mode, result in results.items():
                print(f"{mode:<14} walls (s): {', '.join(f'{wall:.1f}' for wall in result['walls_s'])}")

        agreement = {}
        for mode in results:
            if mode.endswith("-batched") and engine_of(mode) in results:
                plain = engine_of(mode)
                shared = min(results[mode]["tiles"], results[plain]["tiles"])
                difference = relative_difference(rasters[mode], rasters[plain], shared, columns, arguments.size)
                agreement[f"{mode} vs {plain}"] = difference
                print(f"max |{mode} - {plain}| / max |value| on their {shared} shared tiles: {difference:.2g}")

    print(json.dumps({
        "model": arguments.model, "size": arguments.size, "tiles": arguments.tiles, "tiles_for_full": arguments.tiles_for_full,
        "max_evals": arguments.max_evals, "batch_size": arguments.batch_size, "in_flight": arguments.in_flight, "device": arguments.device,
        "threads": arguments.threads, "repeats": arguments.repeats, "forward_images_per_s": forward["images_per_s"], "modes": results, "agreement": agreement,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
