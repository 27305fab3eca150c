"""Helpers shared by the tests, the benchmarks and the demo: models with seeded random weights,
georeferenced GeoTIFFs, synthetic tiles, and runs of bin/qgis_process and of JSON-printing scripts.

QGIS-free: only the standard library at import time; numpy, torch, GDAL and the plugin's core are
imported inside the functions that need them. Tests import it by name (`from helpers import …`);
scripts run from the repository root put this folder on sys.path first:

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from helpers import random_net_model_file  # noqa: E402
"""

import functools
import http.server
import json
import os
import socket
import subprocess
import threading
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QGIS_PROCESS = os.path.join(ROOT, "bin", "qgis_process")


# --- models with seeded random weights ---------------------------------------------------------


def _model_info(architecture, arguments, classes, input_size, bands, mean, std, provenance=None):
    """ModelInfo reading source bands 1…`bands`; `classes` is a list of names or a count (class0, class1, …);
    `mean`/`std` a list per band or one number for every band."""
    from aid_xai_plugin.core.ml.model_file import ModelInfo

    per_band = lambda value: list(value) if isinstance(value, (list, tuple)) else [value] * bands  # noqa: E731
    class_names = list(classes) if not isinstance(classes, int) else [f"class{i}" for i in range(classes)]
    return ModelInfo(
        architecture=architecture,
        arguments=arguments,
        class_names=class_names,
        input_size=input_size,
        bands=list(range(1, bands + 1)),
        mean=per_band(mean),
        std=per_band(std),
        provenance=dict(provenance or {}),
    )


def random_net(input_size, num_classes, bands=3, seed=0, logit_scale=None):
    """Net with random weights: torch.manual_seed(seed), then Net(num_classes, input_size, bands).
    `logit_scale` multiplies the last layer (weights and bias): the default initialisation keeps
    every logit within ±0.1, so probabilities stay ≈ uniform; a scale spreads them like a trained model's."""
    import torch

    from aid_xai_plugin.core.ml.net import Net

    torch.manual_seed(seed)
    net = Net(num_classes, input_size, bands)
    if logit_scale is not None:
        with torch.no_grad():
            net.fc3.weight.mul_(logit_scale)
            net.fc3.bias.mul_(logit_scale)
    return net


def random_net_model_file(path, input_size, classes, bands=3, seed=0, mean=0.5, std=0.25, logit_scale=None, provenance=None):
    """Save a random_net() as an AID-XAI model file at `path`; returns the Net (in training mode, as built).
    `classes`: list of class names or a count (class0, class1, …); `mean`/`std`: per band or one number."""
    from aid_xai_plugin.core.ml.model_file import save_model

    class_count = classes if isinstance(classes, int) else len(classes)
    net = random_net(input_size, class_count, bands, seed, logit_scale)
    arguments = {"num_classes": class_count, "input_size": input_size, "in_bands": bands}
    save_model(path, net, _model_info("Net", arguments, classes, input_size, bands, mean, std, provenance))
    return net


def in_memory_classifier(module, input_size, classes, bands=3, mean=0.5, std=0.25, device="cpu", arguments=None):
    """A Classifier around any torch `module` (put in eval mode), as if loaded from a model file with no
    path and no checksum. `classes`: names or a count; `mean`/`std`: per band or one number."""
    from aid_xai_plugin.core.ml.classifier import Classifier
    from aid_xai_plugin.core.ml.model_file import LoadedModel

    info = _model_info(type(module).__name__, {} if arguments is None else arguments, classes, input_size, bands, mean, std)
    return Classifier(LoadedModel(module=module.eval(), info=info, path="", sha256=""), device=device)


def tied_classifier_and_tile(height, width):
    """A pixel-symmetric one-band model on a uniform tile, with dyadic values so every sum is exact:
    boxes of a level tie exactly, so only shap's seeded np.random draws order its queue (and the
    values change with the seed)."""
    import numpy as np
    import torch
    from torch import nn

    module = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.Flatten(), nn.Linear(height * width, 2, bias=False))
    with torch.no_grad():
        module[0].weight.fill_(1.0)
        module[2].weight[0].fill_(0.5)
        module[2].weight[1].fill_(-0.5)
    tile = np.full((height, width, 1), 0.75, dtype=np.float32)
    return in_memory_classifier(module, 0, 2, 1, mean=0.0, std=1.0), tile


def random_net_classifier(input_size, classes, bands=3, seed=0, mean=0.5, std=0.25, logit_scale=None, device="cpu"):
    """in_memory_classifier() around a random_net(); its module is `.module`."""
    class_count = classes if isinstance(classes, int) else len(classes)
    net = random_net(input_size, class_count, bands, seed, logit_scale)
    arguments = {"num_classes": class_count, "input_size": input_size, "in_bands": bands}
    return in_memory_classifier(net, input_size, classes, bands, mean, std, device, arguments)


def random_torchvision_classifier(architecture, input_size, classes, bands=3, seed=0, mean=0.45, std=0.25, logit_std=3.0, device="cpu"):
    """in_memory_classifier() around torchvision's `architecture` with seeded random weights made to
    behave like a trained network's: BatchNorm statistics gathered on seeded random tiles (random
    initialisation alone leaves MobileNet's and EfficientNet's outputs independent of the input),
    and the last Linear layer scaled so the logits' standard deviation on those tiles is `logit_std`.
    `input_size` is an int or (height, width)."""
    import torch

    from aid_xai_plugin.core.ml.torchvision_models import build_torchvision_model

    height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
    class_count = classes if isinstance(classes, int) else len(classes)
    torch.manual_seed(seed)
    module = build_torchvision_model(architecture, class_count, bands)
    generator = torch.Generator().manual_seed(seed)
    count, side = 32, max(height, width, 64)  # tiles of different brightness, contrast and texture
    texture = torch.rand((count, bands, side, side), generator=generator)
    smooth = torch.linspace(0, 1, side)[:, None] * torch.linspace(0, 1, side)[None, :]
    contrast, brightness, ramp = (torch.rand((3, count, 1, 1, 1), generator=generator))
    tiles = (contrast * texture + ramp * smooth + brightness).clamp(0, 1)
    per_band = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1), torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
    tiles = (tiles - per_band[0]) / per_band[1]
    norms = [layer for layer in module.modules() if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:  # exact averages over the calibration passes (MobileNet's momentum is 0.01)
        norm.reset_running_stats()
        norm.momentum = None
    module.train()
    with torch.no_grad():
        for _ in range(3):
            module(tiles)
    module.eval()
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
        # nearly constant channels would be amplified by 1/sqrt(eps) in every block, which makes a
        # random network ill-conditioned (float32 and float64 results far apart) in a way trained ones are not
        norm.running_var.clamp_(min=0.1 * float(norm.running_var.mean()))
    with torch.no_grad():
        spread = float(module(tiles).std())
        last = [layer for layer in module.modules() if isinstance(layer, torch.nn.Linear)][-1]
        last.weight.mul_(logit_std / max(spread, 1e-12))
        last.bias.zero_()
    arguments = {"num_classes": class_count, "input_size": height, "in_bands": bands}
    return in_memory_classifier(module, height, classes, bands, mean, std, device, arguments)


def random_tile(shape, seed=1):
    """A seeded float32 tile (height, width, bands) in [0, 1]: smooth gradients plus noise, so blur and
    constant backgrounds differ from the tile."""
    import numpy as np

    rng = np.random.default_rng(seed)
    height, width, bands = shape
    rows = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    cols = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    return np.clip(0.5 * rows + 0.3 * cols + 0.4 * rng.random(shape, dtype=np.float32), 0, 1).astype(np.float32)


# --- georeferenced rasters ---------------------------------------------------------------------


def create_georeferenced_tiff(path, width, height, bands, geotransform, crs, data_type=None, options=()):
    """A new GeoTIFF with `geotransform` and `crs` (an EPSG code, or a WKT string such as another
    dataset's GetProjection()); `data_type` is a gdal.GDT_* (default Byte), `options` GTiff creation
    options. Returns the open dataset: write with GetRasterBand(b).WriteArray(...), then drop the
    reference (`dataset = None`) to close it."""
    from osgeo import gdal, osr

    data_type = gdal.GDT_Byte if data_type is None else data_type
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), width, height, bands, data_type, list(options))
    dataset.SetGeoTransform(tuple(geotransform))
    if isinstance(crs, int):
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(crs)
        crs = srs.ExportToWkt()
    dataset.SetProjection(crs)
    return dataset


# --- limits that end a hung test, scaled to this machine's speed now ----------------------------

# A fixed pure-Python workload took this long (best of 3) on the machine the limits below were set on,
# a 2-core Zen 3 running one other job. The limits only end hangs: each is 20-60× what the run takes
# there, and hang_limit() stretches it by how much slower this machine is when the tests start.
REFERENCE_WORKLOAD_SECONDS = 0.18


@functools.lru_cache(maxsize=None)
def slowness():
    """How many times slower than the reference machine this one is now (never below 1): a slower CPU,
    or other jobs on its cores, both stretch every run alike."""

    def workload():
        start = time.perf_counter()
        sum(value * value for value in range(1_000_000))
        return time.perf_counter() - start

    return max(1.0, min(workload() for _ in range(3)) / REFERENCE_WORKLOAD_SECONDS)


def hang_limit(seconds):
    """`seconds` (set on the reference machine) stretched to this one's speed; None (no limit, as the
    demo runs its steps) stays None."""
    return None if seconds is None else seconds * slowness()


# --- a file server on 127.0.0.1, as object storage answers ----------------------------------------


class RangeServer:
    """Serves the files of `folder` on 127.0.0.1 over HTTP/1.1 as object storage does: HEAD, GET of the
    whole file, of one byte range (206) or of several (206 multipart/byteranges), Last-Modified from
    the file's time. Counts the body bytes it sends (`bytes_served`) and the requests (`requests`:
    (method, path, Range header)), each before it goes out, so a client that has read a response
    finds it counted. `stop()` ends it at once, its open keep-alive connections cut too (a
    server that goes away mid-run); `start()` again serves on the same port, so the same URLs work.
    `hang()` keeps connections open but answers nothing more (a server that stalls) until `release()`.
    Use as a context manager; `url(name)` is a file's URL."""

    def __init__(self, folder, port=0):
        self.folder = os.path.abspath(folder)
        self.port = port
        self.bytes_served = 0
        self.requests = []
        self._lock = threading.Lock()
        self._connections = set()
        self._server = self._thread = None
        self._answering = threading.Event()
        self._answering.set()

    def url(self, name):
        return f"http://127.0.0.1:{self.port}/{urllib.parse.quote(name)}"

    def start(self):
        server = _QuietServer(("127.0.0.1", self.port), _RangeHandler)
        server.owner = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def hang(self):
        self._answering.clear()

    def release(self):
        self._answering.set()

    def stop(self):
        self._answering.set()  # a stalled handler ends too
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:  # keep-alive connections would otherwise go on answering
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=10)

    def reset_counts(self):
        with self._lock:
            self.bytes_served = 0
            self.requests = []

    def __enter__(self):
        return self.start()

    def __exit__(self, *_):
        self.stop()

    def _track(self, connection, open_):
        with self._lock:
            (self._connections.add if open_ else self._connections.discard)(connection)

    def _count(self, method, path, ranges):
        with self._lock:
            self.requests.append((method, path, ranges))

    def _sending(self, size):
        with self._lock:
            self.bytes_served += size


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # a connection cut by stop(): expected, not news
        pass


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as GDAL's curl expects of a file server

    def log_message(self, *_):
        pass

    def setup(self):
        super().setup()
        self.server.owner._track(self.connection, True)

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.owner._track(self.connection, False)

    def do_HEAD(self):  # noqa: N802 (http.server's name)
        self._serve(body=False)

    def do_GET(self):  # noqa: N802
        self._serve(body=True)

    def _serve(self, body):
        import email.utils

        owner = self.server.owner
        if not owner._answering.is_set():
            owner._answering.wait(timeout=600)
            self.close_connection = True
            return
        name = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        path = os.path.abspath(os.path.join(owner.folder, name))
        if not path.startswith(owner.folder + os.sep) or not os.path.isfile(path):
            owner._count(self.command, name, None)
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        size = os.path.getsize(path)
        header = self.headers.get("Range")
        ranges = _byte_ranges(header, size) if header else None
        self.send_response(200 if ranges is None else 206 if ranges else 416)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Last-Modified", email.utils.formatdate(os.path.getmtime(path), usegmt=True))
        if ranges == []:
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            owner._count(self.command, name, header)
            self.end_headers()
            return
        boundary = "aidxaiboundary"
        if ranges is None:
            parts = [(None, 0, size - 1)]
            self.send_header("Content-Type", "application/octet-stream")
        elif len(ranges) == 1:
            parts = [(None, *ranges[0])]
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Range", f"bytes {ranges[0][0]}-{ranges[0][1]}/{size}")
        else:
            parts = [(f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes {a}-{b}/{size}\r\n\r\n".encode(), a, b) for a, b in ranges]
            parts.append((f"\r\n--{boundary}--\r\n".encode(), None, None))
            self.send_header("Content-Type", f"multipart/byteranges; boundary={boundary}")
        length = sum(len(head or b"") + (b - a + 1 if a is not None else 0) for head, a, b in parts)
        self.send_header("Content-Length", str(length))
        owner._count(self.command, name, header)
        self.end_headers()
        if body:
            with open(path, "rb") as stream:
                for head, start, end in parts:
                    if head:
                        owner._sending(len(head))
                        self.wfile.write(head)
                    if start is not None:
                        stream.seek(start)
                        remaining = end - start + 1
                        while remaining:
                            chunk = stream.read(min(remaining, 1 << 20))
                            owner._sending(len(chunk))
                            self.wfile.write(chunk)
                            remaining -= len(chunk)


def _byte_ranges(header, size):
    """[(first, last)] of a Range header within a file of `size` bytes; [] when none is satisfiable;
    None when the header isn't a byte range (serve the whole file)."""
    if not header.startswith("bytes="):
        return None
    ranges = []
    for part in header[len("bytes=") :].split(","):
        first, _, last = part.strip().partition("-")
        if first:
            start, end = int(first), min(int(last) if last else size - 1, size - 1)
        else:
            start, end = max(0, size - int(last)), size - 1
        if start <= end:
            ranges.append((start, end))
    return ranges


# --- subprocesses that answer in JSON ----------------------------------------------------------


def run_qgis_process(*args, env=None, timeout=600):
    """Run bin/qgis_process with `args`; returns the CompletedProcess (text). `timeout`: a hang limit
    in reference-machine seconds (hang_limit)."""
    return subprocess.run(
        [QGIS_PROCESS, *args], capture_output=True, text=True, env=env or os.environ.copy(), timeout=hang_limit(timeout), stdin=subprocess.DEVNULL
    )


def run_algorithm(algorithm, parameters, timeout=600):
    """`bin/qgis_process --json run algorithm -- K=V ...`; returns the CompletedProcess, whatever its exit status."""
    return run_qgis_process("--json", "run", algorithm, "--", *[f"{key}={value}" for key, value in parameters.items()], timeout=timeout)


def qgis_process_json(stdout):
    """The JSON document of a `qgis_process --json` run, skipping anything printed before it."""
    return json.loads(stdout[stdout.index("{") :])


def run_algorithm_json(algorithm, parameters):
    """run_algorithm(); returns the parsed JSON, fails with stderr (also if GDAL warned about its exception mode)."""
    completed = run_algorithm(algorithm, parameters)
    assert completed.returncode == 0, f"qgis_process failed ({completed.returncode}):\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
    assert "gdal.UseExceptions()" not in completed.stderr, f"the plugin made GDAL calls outside gdal_exceptions():\n{completed.stderr[-3000:]}"
    return qgis_process_json(completed.stdout)


def last_line_json(stdout):
    """The JSON object a worker script printed as its last line of output."""
    return json.loads(stdout.strip().splitlines()[-1])


def make_wheel(folder, name, version, body):
    """A real pure-Python wheel file (what `pip download` leaves), for installs from a local folder."""
    import base64
    import hashlib
    import zipfile

    files = {
        f"{name}/__init__.py": body,
        f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{name}-{version}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: aid-xai tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    digest = lambda text: base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()  # noqa: E731
    record = [f"{path},sha256={digest(text)},{len(text.encode())}" for path, text in files.items()]
    files[f"{name}-{version}.dist-info/RECORD"] = "\n".join([*record, f"{name}-{version}.dist-info/RECORD,,"]) + "\n"
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{name}-{version}-py3-none-any.whl")
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            archive.writestr(member, text)
    return path


def run_qgis_desktop_session(script, profiles, out, report_name, environment, timeout_s, cwd):
    """Run `script` inside the real QGIS desktop on a virtual X screen (`qgis --code`, profile folder
    `profiles`) and return the JSON report it writes to `out`/`report_name`; QGIS's own output goes to
    `out`/qgis_output.txt. `environment`: variables on top of this process's, None to unset one
    (QT_QPA_PLATFORM and QGIS_* paths are unset: QGIS must open its window and use that profile alone)."""
    env = {k: v for k, v in os.environ.items() if k not in ("QT_QPA_PLATFORM", "QGIS_CUSTOM_CONFIG_PATH", "QGIS_PLUGINPATH")}
    for key, value in environment.items():  # None: unset it
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    env.setdefault("AID_XAI_DESKTOP_HELPERS", os.path.dirname(script))
    for folder in ("XDG_RUNTIME_DIR", "HOME"):
        os.makedirs(env[folder], mode=0o700, exist_ok=True)
    command = ["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24", "qgis", "--profiles-path", str(profiles), "--nologo", "--noversioncheck", "--code", script]
    completed = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=hang_limit(timeout_s + 90), stdin=subprocess.DEVNULL)
    with open(os.path.join(out, "qgis_output.txt"), "w", encoding="utf-8") as handle:
        handle.write(f"exit status {completed.returncode}\n--- stdout\n{completed.stdout}\n--- stderr\n{completed.stderr}")
    path = os.path.join(out, report_name)
    assert os.path.exists(path), f"QGIS wrote no {report_name} (exit {completed.returncode}):\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
    with open(path, encoding="utf-8") as handle:
        report = json.load(handle)
    report["_stderr"] = completed.stderr
    return report

