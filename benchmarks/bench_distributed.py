"""Explain the same tiles locally and on Dask: seconds per tile, speed-up, peak RSS per process.

Configurations, each in a fresh subprocess on the same raster and model (Net with random weights at
128², fast engine, top-3, blur(128,128)):
  local-2t   this process, 2 torch threads (the default local run)
  local-1t   this process, 1 torch thread (the per-task baseline of a single-thread worker)
  cluster    a LocalCluster of 2 worker processes × 1 thread, started by the run
  processes  a `dask scheduler` and 2 `dask worker` processes started beforehand on 127.0.0.1 (the
             code path of a cluster on other machines)
Start-up (until the cluster is ready) is timed apart from the tiles. The Dask path's per-tile
overhead is estimated as (cluster s/tile × workers) − local-1t s/tile. Outputs are compared with
local-2t's (max |Δ| relative to the largest value; the fast engine agrees to float32 rounding).

    .venv/bin/python benchmarks/bench_distributed.py [--tiles 40] [--max-evals 500]
"""

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from bench_explain import LOGIT_SCALE, make_raster  # noqa: E402 - the benchmarks folder is on sys.path when run as a script
from helpers import last_line_json, random_net_model_file  # noqa: E402
from peak_memory import peak_rss_mb  # noqa: E402

WORKERS = 2


def measure(mode, raster, model, output, max_evals, scheduler):
    import torch

    from aid_xai_plugin.core.common.progress import Progress
    from aid_xai_plugin.core.explain.engine import ExplainSettings
    from aid_xai_plugin.core.pipelines.execution import DaskSettings
    from aid_xai_plugin.core.pipelines.explain import ExplainOutputs, ExplainRequest, ExplainSpec, explain_raster
    from aid_xai_plugin.core.pipelines.tiles import TilingOptions

    torch.set_num_threads(1 if mode == "local-1t" else 2)
    settings = ExplainSettings(masker="blur(128,128)", max_evals=max_evals, batch_size=128)
    ready = []
    progress = Progress(log=lambda line: ready.append(time.perf_counter()) if line.startswith("Dask:") else None)
    execution = "local" if mode.startswith("local") else "dask"
    dask = DaskSettings(scheduler=scheduler if mode == "processes" else "", workers=WORKERS, threads=1)
    start = time.perf_counter()
    summary = explain_raster(ExplainSpec(raster, model, TilingOptions(), ExplainRequest(top_k=3), settings, ExplainOutputs(output), engine="fast", device="cpu", execution=execution, dask=dask), progress)
    end = time.perf_counter()
    startup = ready[0] - start if ready else 0.0
    print(json.dumps({"tiles": summary.explained, "startup": startup, "tile_seconds": end - start - startup, "peak_rss_mb": peak_rss_mb()}))


def worker_peaks(scheduler):
    """Peak RSS (VmHWM) of each worker process of the scheduler's cluster."""
    from distributed import Client

    with Client(scheduler, set_as_default=False) as client:
        return sorted(client.run(peak_rss_mb).values())


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", type=int, default=40)
    parser.add_argument("--max-evals", type=int, default=500)
    parser.add_argument("--measure", nargs=5, metavar=("MODE", "RASTER", "MODEL", "OUTPUT", "SCHEDULER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        mode, raster, model, output, scheduler = args.measure
        measure(mode, raster, model, output, args.max_evals, scheduler)
        return
    import numpy as np
    import rasterio

    from aid_xai_plugin.core.data.synthetic import SYNTHETIC_CLASSES

    work = tempfile.mkdtemp(prefix="aidxai_bench_")
    model, raster = os.path.join(work, "net.aidx.pt"), os.path.join(work, "scene.tif")
    random_net_model_file(model, 128, list(SYNTHETIC_CLASSES), mean=0.5, std=0.25, logit_scale=LOGIT_SCALE)
    columns = math.ceil(math.sqrt(args.tiles))
    make_raster(raster, columns, math.ceil(args.tiles / columns), 128)
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "benchmarks")]))  # workers report their peak RSS
    address = f"tcp://127.0.0.1:{free_port()}"
    python = sys.executable
    services = [subprocess.Popen([python, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1], "--no-dashboard"], env=environment, stderr=subprocess.DEVNULL)]
    services += [subprocess.Popen([python, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard", "--local-directory", os.path.join(work, f"w{i}")], env=environment, stderr=subprocess.DEVNULL) for i in range(WORKERS)]
    try:
        from distributed import Client

        with Client(address, timeout=60, set_as_default=False) as client:
            client.wait_for_workers(WORKERS, timeout=120)
        print(f"Net (random weights) at 128², fast engine, {args.max_evals} evaluations, top-3, blur(128,128), 2 CPU cores; Dask: {WORKERS} workers × 1 thread")
        print(f"{'configuration':>13} {'tiles':>6} {'start-up s':>11} {'s/tile':>8} {'speed-up':>9} {'peak RSS MB (main; workers)':>30} {'max |Δ| rel.':>13}")
        rows = {}
        for mode in ("local-2t", "local-1t", "cluster", "processes"):
            output = os.path.join(work, f"{mode}.tif")
            completed = subprocess.run([python, __file__, "--max-evals", str(args.max_evals), "--measure", mode, raster, model, output, address], capture_output=True, text=True, env=environment)
            if completed.returncode != 0:
                sys.exit(completed.stderr[-3000:])
            row = rows[mode] = last_line_json(completed.stdout)
            with rasterio.open(output) as written:
                values = written.read().astype(np.float64)
            if mode == "local-2t":
                reference = values
            delta = np.abs(values - reference).max() / max(np.abs(reference).max(), 1e-12)
            per_tile = row["tile_seconds"] / row["tiles"]
            speed_up = (rows["local-2t"]["tile_seconds"] / rows["local-2t"]["tiles"]) / per_tile
            memory = f"{row['peak_rss_mb']:.0f}"
            if mode == "processes":
                memory += "; " + ", ".join(f"{peak:.0f}" for peak in worker_peaks(address))
            print(f"{mode:>13} {row['tiles']:>6} {row['startup']:>11.1f} {per_tile:>8.3f} {speed_up:>9.2f} {memory:>30} {delta:>13.1e}", flush=True)
        single = rows["local-1t"]["tile_seconds"] / rows["local-1t"]["tiles"]
        for mode in ("cluster", "processes"):
            overhead = rows[mode]["tile_seconds"] / rows[mode]["tiles"] * WORKERS - single
            print(f"Dask per-tile overhead ({mode}): {overhead:+.3f} s per tile and worker (cluster s/tile × {WORKERS} − local-1t s/tile)")
    finally:
        for process in services:
            process.kill()


if __name__ == "__main__":
    main()
