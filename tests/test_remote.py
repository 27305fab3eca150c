"""Rasters and models by URL, served by a real HTTP server on 127.0.0.1 (helpers.RangeServer: HEAD,
byte ranges, a count of the bytes it sends, stoppable mid-run): classify, explain and the quality
measures through /vsicurl/ equal the local file's outputs, here, on a LocalCluster whose workers
share no path with the data, through processing.run (text and a layer) and qgis_process, and as
/vsis3/ with the server as S3 endpoint; a 1-tile explain of a 10 240² COG fetches a small fraction of
it; a server that goes away or stalls mid-run ends in one clear line and the re-run resumes; a model
URL that serves another file than the run loaded is refused. Loopback only, every wait bounded."""

import dataclasses
import importlib.util
import os
import re
import threading
import time
from xml.sax.saxutils import escape

import numpy as np
import pytest
from helpers import RangeServer, hang_limit, random_net_model_file, run_algorithm_json
from osgeo import gdal

from aid_xai_plugin.core.common.errors import AidXaiError
from aid_xai_plugin.core.common.progress import Progress
from aid_xai_plugin.core.data.synthetic import SYNTHETIC_CLASSES, make_scene_mosaic
from aid_xai_plugin.core.explain.engine import ExplainSettings
from aid_xai_plugin.core.geo.remote import NETWORK_DEFAULTS, network_reading
from aid_xai_plugin.core.ml.model_file import file_sha256
from aid_xai_plugin.core.ml.model_source import cached_model
from aid_xai_plugin.core.pipelines.classify import ClassifyOutputs, classify_raster
from aid_xai_plugin.core.pipelines.execution import DaskSettings
from aid_xai_plugin.core.pipelines.explain import ExplainOutputs, ExplainRequest, ExplainSpec, explain_raster
from aid_xai_plugin.core.pipelines.quality import QualitySpec, explanation_quality
from aid_xai_plugin.core.pipelines.tiles import TilingOptions

needs_distributed = pytest.mark.skipif(importlib.util.find_spec("distributed") is None, reason="needs the 'distributed' package (requirements.txt)")

SETTINGS = ExplainSettings(masker="blur(16,16)", max_evals=60, batch_size=64, seed=2)
TILES = 16  # the mosaic's 2 × 8 tiles of 64 px


@pytest.fixture(autouse=True)
def loopback_and_bounded(monkeypatch, tmp_path):
    """No proxy between the runs and 127.0.0.1; a failed request tried again once after 0.2 s, a request
    abandoned after 30 s (the user's settings, which the plugin keeps); models cached in this test's folder."""
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "1")
    monkeypatch.setenv("GDAL_HTTP_RETRY_DELAY", "0.2")
    monkeypatch.setenv("GDAL_HTTP_TIMEOUT", str(int(hang_limit(30))))
    monkeypatch.setenv("AID_XAI_MODEL_CACHE", str(tmp_path / "model_cache"))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(folder, server): a 2×8-scene COG (128 px DEFLATE blocks: 4 tiles each) and a random-weight Net at 64 px,
    served over HTTP on 127.0.0.1."""
    folder = tmp_path_factory.mktemp("served")
    source = str(folder / "mosaic_source.tif")
    make_scene_mosaic(source, rows=2, cols=8, scene_px=64, seed=5)
    gdal.Translate(str(folder / "mosaic.tif"), source, format="COG", creationOptions=["BLOCKSIZE=128", "COMPRESS=DEFLATE"])
    os.remove(source)
    random_net_model_file(str(folder / "net.aidx.pt"), 64, list(SYNTHETIC_CLASSES), logit_scale=60.0)
    with RangeServer(folder) as server:
        yield folder, server


def raster_url(server, name="mosaic.tif"):
    return "/vsicurl/" + server.url(name)


def read(path):
    dataset = gdal.Open(str(path))
    try:
        return dataset.ReadAsArray()
    finally:
        dataset = None


def explain(raster, model, output, progress=None, tiling=None, **execution):
    outputs = ExplainOutputs(str(output))
    explain_raster(ExplainSpec(raster, model, tiling or TilingOptions(), ExplainRequest(top_k=2), SETTINGS, outputs, engine="exact", device="cpu", **execution), progress)
    return read(output)


def classify(raster, model, folder, name, **execution):
    outputs = ClassifyOutputs(str(folder / f"{name}_classes.tif"), str(folder / f"{name}_probabilities.tif"))
    classify_raster(raster, model, TilingOptions(), outputs, device="cpu", **execution)
    return read(outputs.class_raster), read(outputs.probability_raster)


@pytest.fixture(scope="module")
def local_runs(served, tmp_path_factory):
    """The local file's explain and classify outputs (classify with torch on one thread, as Dask workers run it)."""
    import torch

    folder, _ = served
    out = tmp_path_factory.mktemp("local_runs")
    shap = explain(str(folder / "mosaic.tif"), str(folder / "net.aidx.pt"), out / "shap.tif")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        classes, probabilities = classify(str(folder / "mosaic.tif"), str(folder / "net.aidx.pt"), out, "local")
    finally:
        torch.set_num_threads(threads)
    return shap, classes, probabilities


def model_downloads(server, name="net.aidx.pt"):
    return len([request for request in server.requests if request[0] == "GET" and request[1] == name])


def test_the_server_answers_head_one_range_several_ranges_and_counts_bytes(served):
    """What GDAL versions ask of it: HEAD for the size and date, one range, several ranges at once."""
    import urllib.request

    folder, server = served
    data = (folder / "mosaic.tif").read_bytes()
    url = server.url("mosaic.tif")

    def fetch(method="GET", ranges=None):
        request = urllib.request.Request(url, method=method, headers={"Range": ranges} if ranges else {})
        with urllib.request.urlopen(request, timeout=hang_limit(10)) as response:
            return response.status, response.headers, response.read()

    server.reset_counts()
    status, headers, body = fetch("HEAD")
    assert (status, int(headers["Content-Length"]), body) == (200, len(data), b"") and headers["Last-Modified"]
    status, headers, body = fetch(ranges="bytes=10-19")
    assert (status, headers["Content-Range"], body) == (206, f"bytes 10-19/{len(data)}", data[10:20])
    status, headers, body = fetch(ranges="bytes=0-3,100-103")
    assert status == 206 and headers["Content-Type"].startswith("multipart/byteranges")
    assert body.index(data[:4]) < body.index(data[100:104]) and f"Content-Range: bytes 100-103/{len(data)}".encode() in body
    assert server.bytes_served == 10 + len(body) and len(server.requests) == 3


def test_gdal_http_options_are_set_only_where_nobody_set_them_and_only_in_the_block(monkeypatch):
    """The environment's (GDAL_HTTP_MAX_RETRY here) and a GDAL config option the user set are kept; the
    others are set in this thread only, and nothing is left once the block ends; a local file gets none."""
    url = "/vsicurl/https://example.com/scene.tif"
    gdal.SetConfigOption("GDAL_HTTP_CONNECTTIMEOUT", "7")
    try:
        seen_elsewhere = []
        with network_reading(url):
            assert gdal.GetConfigOption("GDAL_HTTP_MAX_RETRY") == "1"  # the environment's
            assert gdal.GetConfigOption("GDAL_HTTP_CONNECTTIMEOUT") == "7"  # the user's config option
            assert gdal.GetConfigOption("GDAL_DISABLE_READDIR_ON_OPEN") == "EMPTY_DIR"
            assert gdal.GetConfigOption("GDAL_HTTP_LOW_SPEED_TIME") == NETWORK_DEFAULTS["GDAL_HTTP_LOW_SPEED_TIME"]
            other = threading.Thread(target=lambda: seen_elsewhere.append(gdal.GetConfigOption("GDAL_DISABLE_READDIR_ON_OPEN")))
            other.start()
            other.join()
        assert seen_elsewhere == [None]  # thread-local: the process's settings never changed
        assert gdal.GetConfigOption("GDAL_HTTP_CONNECTTIMEOUT") == "7"
        for key in NETWORK_DEFAULTS:
            if key not in ("GDAL_HTTP_MAX_RETRY", "GDAL_HTTP_RETRY_DELAY", "GDAL_HTTP_CONNECTTIMEOUT"):
                assert gdal.GetConfigOption(key) is None, key
        with network_reading("/data/scene.tif"):
            assert gdal.GetConfigOption("GDAL_DISABLE_READDIR_ON_OPEN") is None
    finally:
        gdal.SetConfigOption("GDAL_HTTP_CONNECTTIMEOUT", None)


def test_classify_explain_and_quality_by_url_equal_the_local_file(served, local_runs, tmp_path):
    folder, server = served
    url, model_url = raster_url(server), server.url("net.aidx.pt")
    shap, classes, probabilities = local_runs
    server.reset_counts()
    np.testing.assert_array_equal(explain(url, model_url, tmp_path / "shap.tif"), shap)
    assert any(request[2] and request[2].startswith("bytes=") for request in server.requests)  # read by ranges
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        by_url = classify(url, model_url, tmp_path, "url")
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(by_url[0], classes)
    np.testing.assert_array_equal(by_url[1], probabilities)
    assert os.listdir(tmp_path / "model_cache") == [f"{file_sha256(str(folder / 'net.aidx.pt'))}.aidx.pt"]

    def quality(raster, model):
        tiling = TilingOptions(extent=(500000.0 + 10, 5600000.0 - 20, 500000.0 + 20, 5600000.0 - 10))  # the first tile
        return explanation_quality(QualitySpec(raster, model, tiling, ExplainRequest(top_k=1), SETTINGS, engine="exact", device="cpu", steps=4, random_orders=1))

    np.testing.assert_equal(dataclasses.astuple(quality(url, model_url)), dataclasses.astuple(quality(str(folder / "mosaic.tif"), str(folder / "net.aidx.pt"))))


@needs_distributed
def test_a_local_cluster_reads_the_url_and_the_model_url_with_no_shared_path(served, local_runs, tmp_path):
    """Workers open the URL themselves and take the model from this machine's cache (the main process
    downloaded it once per run; no worker had to): outputs equal the local file's, bit for bit."""
    folder, server = served
    url, model_url = raster_url(server), server.url("net.aidx.pt")
    shap, classes, probabilities = local_runs
    server.reset_counts()
    dask = DaskSettings(workers=2, threads=1)
    np.testing.assert_array_equal(explain(url, model_url, tmp_path / "shap.tif", execution="dask", dask=dask), shap)
    by_url = classify(url, model_url, tmp_path, "dask", execution="dask", dask=dask)
    np.testing.assert_array_equal(by_url[0], classes)
    np.testing.assert_array_equal(by_url[1], probabilities)
    assert model_downloads(server) == 2  # one per run, by this process


@needs_distributed
def test_a_worker_refuses_a_model_url_that_now_serves_another_file(served, tmp_path):
    """The file at the model URL is replaced once this process has loaded it, and the cache emptied (a
    worker machine with no copy yet): the worker's download has another SHA-256 and is refused."""
    folder, server = served
    model = folder / "replaced.aidx.pt"
    random_net_model_file(str(model), 64, list(SYNTHETIC_CLASSES), seed=0)
    cache = tmp_path / "model_cache"

    def replace_the_model(line):
        if line.startswith("Dask: local cluster"):
            random_net_model_file(str(model), 64, list(SYNTHETIC_CLASSES), seed=1)
            for name in os.listdir(cache):
                os.remove(cache / name)

    output = tmp_path / "shap.tif"
    pattern = r"Dask worker tcp://127\.0\.0\.1:\d+: The model downloaded from 'http://127\.0\.0\.1:\d+/replaced\.aidx\.pt' has SHA-256 [0-9a-f]{12}…, not [0-9a-f]{12}… as the file the run loaded"
    with pytest.raises(AidXaiError, match=pattern):
        explain(raster_url(server), server.url("replaced.aidx.pt"), output, Progress(log=replace_the_model), execution="dask", dask=DaskSettings(workers=1))
    assert not output.exists()


def test_a_model_url_is_downloaded_once_and_another_hash_is_refused(served, tmp_path):
    folder, server = served
    url, digest = server.url("net.aidx.pt"), file_sha256(str(folder / "net.aidx.pt"))
    server.reset_counts()
    path = cached_model(url, digest)
    assert os.path.basename(path) == f"{digest}.aidx.pt" and file_sha256(path) == digest
    assert cached_model(url, digest) == path and model_downloads(server) == 1  # the second time from the cache
    with pytest.raises(AidXaiError, match=rf"The model downloaded from '{re.escape(url)}' has SHA-256 {digest[:12]}…, not 000000000000… as the file the run loaded"):
        cached_model(url, "0" * 64)
    assert not [name for name in os.listdir(tmp_path / "model_cache") if name.startswith(".")]  # no temporary left


def test_an_unreachable_or_wrong_url_is_named_before_any_work(served, tmp_path):
    folder, server = served
    with RangeServer(tmp_path) as gone:
        port = gone.port  # nothing listens there once it stopped
    output = tmp_path / "shap.tif"
    start = time.monotonic()
    with pytest.raises(AidXaiError, match=rf"Cannot open raster '/vsicurl/http://127\.0\.0\.1:{port}/mosaic\.tif'.*The server did not answer or has no raster there: check that the URL is right"):
        explain(f"/vsicurl/http://127.0.0.1:{port}/mosaic.tif", str(folder / "net.aidx.pt"), output)
    with pytest.raises(AidXaiError, match=r"Cannot open raster '/vsicurl/http://127\.0\.0\.1:\d+/missing\.tif'.*The server did not answer or has no raster there"):
        explain(raster_url(server, "missing.tif"), str(folder / "net.aidx.pt"), output)
    with pytest.raises(AidXaiError, match=rf"Cannot download the model 'http://127\.0\.0\.1:{port}/net\.aidx\.pt': the server did not answer"):
        explain(str(folder / "mosaic.tif"), f"http://127.0.0.1:{port}/net.aidx.pt", output)
    with pytest.raises(AidXaiError, match=r"Cannot download the model 'http://127\.0\.0\.1:\d+/missing\.aidx\.pt': the server answered HTTP 404"):
        explain(str(folder / "mosaic.tif"), server.url("missing.aidx.pt"), output)
    assert time.monotonic() - start < hang_limit(30)
    assert not output.exists()


def test_a_server_that_stops_mid_run_ends_in_one_line_and_the_rerun_resumes(served, local_runs, tmp_path):
    folder, server = served
    url, model = raster_url(server), str(folder / "net.aidx.pt")
    output = tmp_path / "shap.tif"
    checkpoint = tmp_path / ".shap.tif.resume"

    def stop_the_server(percent):  # once the first tile is read and being explained
        if percent > 0:
            server.stop()

    try:
        start = time.monotonic()
        with pytest.raises(AidXaiError) as raised:
            explain(url, model, output, Progress(set_progress=stop_the_server))
        assert time.monotonic() - start < hang_limit(60)
    finally:
        server.start()  # on the same port: the same URL
    message = str(raised.value)
    print(f"\nthe run's error: {message}")
    assert "\n" not in message
    assert re.match(rf"Cannot read raster '{re.escape(url)}', band\(s\) 1,2,3, pixel window x=\d+, y=\d+, width=64, height=64: .+\. The server stopped answering or failed; ", message), message
    assert not output.exists()  # nothing half-written
    finished = len([name for name in os.listdir(checkpoint) if name.endswith(".npz") and not name.startswith(".")])
    assert 1 <= finished < TILES

    logs = []
    np.testing.assert_array_equal(explain(url, model, output, Progress(log=logs.append)), local_runs[0])
    assert any(f"{finished} of {TILES} tile(s) reused from its checkpoint" in line for line in logs), logs
    assert not checkpoint.exists()


def test_a_server_that_stalls_mid_run_is_given_up_after_the_stall_limit(served, monkeypatch, tmp_path):
    """The server keeps the connection but sends nothing: the read is abandoned after
    GDAL_HTTP_LOW_SPEED_TIME (the user's 2 s here, over the plugin's 60 s) with the same one line."""
    folder, server = served
    monkeypatch.setenv("GDAL_HTTP_LOW_SPEED_TIME", "2")
    url, output = raster_url(server), tmp_path / "shap.tif"

    def stall(percent):
        if percent > 0:
            server.hang()

    try:
        start = time.monotonic()
        with pytest.raises(AidXaiError, match=rf"^Cannot read raster '{re.escape(url)}', band\(s\) 1,2,3, pixel window .*The server stopped answering or failed; "):
            explain(url, str(folder / "net.aidx.pt"), output, Progress(set_progress=stall))
        waited = time.monotonic() - start
    finally:
        server.release()
    print(f"\nstalled server: the run ended after {waited:.1f} s")
    assert waited < hang_limit(25)  # 2 s per try, one retry: well under the 30 s request timeout the tests set
    assert not output.exists()


def test_a_replaced_file_at_the_url_does_not_resume(served, tmp_path):
    """The resume key holds the size and date the server reports: another file at the same URL is
    another input (its tiles are not reused)."""
    from aid_xai_plugin.core.pipelines.checkpoint import file_identity

    folder, server = served
    url = raster_url(server)
    before = file_identity(url)
    assert before == [url, os.path.getsize(folder / "mosaic.tif"), int(os.path.getmtime(folder / "mosaic.tif"))]
    os.utime(folder / "mosaic.tif", (time.time(), os.path.getmtime(folder / "mosaic.tif") + 10))
    from aid_xai_plugin.core.geo.remote import forget_cached

    forget_cached(url)
    assert file_identity(url) != before


def large_cog(folder):
    """A 10 240 × 10 240 px RGB COG (JPEG, 512 px blocks, overviews): a 512² synthetic mosaic tiled
    20 × 20 times through a VRT, so it is made in seconds."""
    scene = str(folder / "scene.tif")
    make_scene_mosaic(scene, rows=8, cols=8, scene_px=64, seed=3)
    dataset = gdal.Open(scene)
    projection, geotransform = dataset.GetProjection(), dataset.GetGeoTransform()
    dataset = None
    repeats, side = 20, 512
    bands = []
    for band in (1, 2, 3):
        sources = "".join(
            f'<SimpleSource><SourceFilename relativeToVRT="0">{escape(scene)}</SourceFilename><SourceBand>{band}</SourceBand>'
            f'<SrcRect xOff="0" yOff="0" xSize="{side}" ySize="{side}"/><DstRect xOff="{col * side}" yOff="{row * side}" xSize="{side}" ySize="{side}"/></SimpleSource>'
            for row in range(repeats)
            for col in range(repeats)
        )
        bands.append(f'<VRTRasterBand dataType="Byte" band="{band}"><ColorInterp>{("Red", "Green", "Blue")[band - 1]}</ColorInterp>{sources}</VRTRasterBand>')
    size = repeats * side
    vrt = str(folder / "large.vrt")
    with open(vrt, "w", encoding="utf-8") as stream:
        stream.write(f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}"><SRS>{escape(projection)}</SRS><GeoTransform>{", ".join(map(repr, geotransform))}</GeoTransform>{"".join(bands)}</VRTDataset>')
    path = folder / "large.tif"
    gdal.Translate(str(path), vrt, format="COG", creationOptions=["COMPRESS=JPEG", "QUALITY=85", "BLOCKSIZE=512", "NUM_THREADS=ALL_CPUS"])
    return path, size


def test_a_one_tile_explain_of_a_large_cog_fetches_a_small_fraction_of_it(served, tmp_path):
    folder, server = served
    start = time.monotonic()
    path, size = large_cog(folder)
    made_s = time.monotonic() - start
    file_size = os.path.getsize(path)
    x0, y0, pixel = 500000.0, 5600000.0, 2.0  # make_scene_mosaic's origin and pixel size
    tiling = TilingOptions(extent=(x0 + 5130 * pixel, y0 - 5140 * pixel, x0 + 5140 * pixel, y0 - 5130 * pixel))  # inside the tile at pixel (5120, 5120)
    model = str(folder / "net.aidx.pt")
    server.reset_counts()
    by_url = explain(raster_url(server, "large.tif"), model, tmp_path / "url.tif", tiling=tiling)
    fetched, requests = server.bytes_served, len(server.requests)
    fraction = fetched / file_size
    print(f"\nlarge COG: {size} x {size} px, 3 bands, JPEG, 512 px blocks with overviews, {file_size} bytes (made in {made_s:.1f} s); "
          f"a 1-tile explain through /vsicurl/ fetched {fetched} bytes in {requests} requests = {fraction:.3%} of the file")
    assert by_url.shape == (2, 64, 64)
    np.testing.assert_array_equal(by_url, explain(str(path), model, tmp_path / "local.tif", tiling=tiling))
    assert fraction < 0.01, (fetched, file_size)  # measured: 0.3 % (98 304 of 32 807 592 bytes, 3 requests)
    os.remove(path)


def test_qgis_process_classifies_a_vsicurl_input_with_a_model_url(served, tmp_path):
    folder, server = served
    outputs = {"OUTPUT_CLASSES": str(tmp_path / "classes.tif"), "OUTPUT_PROBABILITIES": str(tmp_path / "probabilities.tif"), "OUTPUT_TILES": str(tmp_path / "tiles.gpkg")}
    result = run_algorithm_json("aid_xai:classify", {"INPUT": raster_url(server), "MODEL": server.url("net.aidx.pt"), **outputs})
    assert result["results"]["TILES_CLASSIFIED"] == TILES
    local = classify(str(folder / "mosaic.tif"), str(folder / "net.aidx.pt"), tmp_path, "local")
    np.testing.assert_array_equal(read(outputs["OUTPUT_CLASSES"]), local[0])
    np.testing.assert_allclose(read(outputs["OUTPUT_PROBABILITIES"]), local[1], rtol=1e-5, atol=1e-6)


def test_processing_run_explains_a_vsicurl_input_with_a_model_url(aid_xai_provider, served, local_runs, tmp_path):
    """The text /vsicurl/… as INPUT (QGIS 3.22 loads only files on disk from text: the plugin opens it)."""
    import processing

    folder, server = served
    output = tmp_path / "shap.tif"
    parameters = dict(INPUT=raster_url(server), MODEL=server.url("net.aidx.pt"), ENGINE="exact", MAX_EVALS=SETTINGS.max_evals, MASKER="blur", MASKER_KERNEL=16, SEED=SETTINGS.seed, BATCH_SIZE=SETTINGS.batch_size, TOP_K=2, DEVICE="cpu", OUTPUT=str(output), OUTPUT_TABLE="", OUTPUT_REPORT="")
    assert processing.run("aid_xai:explain", parameters)["TILES_EXPLAINED"] == TILES
    np.testing.assert_array_equal(read(output), local_runs[0])


def test_processing_run_names_an_unreachable_url_before_any_work(aid_xai_provider, served, tmp_path):
    import processing
    from qgis.core import QgsProcessingException

    folder, _ = served
    with RangeServer(tmp_path) as gone:
        url = "/vsicurl/" + gone.url("mosaic.tif")
    with pytest.raises(QgsProcessingException, match=rf"INPUT: could not open '{re.escape(url)}': the server did not answer or has no raster there; check that the URL is right"):
        processing.run("aid_xai:classify", dict(INPUT=url, MODEL=str(folder / "net.aidx.pt"), OUTPUT_CLASSES=str(tmp_path / "classes.tif")))
    assert not (tmp_path / "classes.tif").exists()


def test_a_qgis_layer_with_a_vsicurl_source_is_read_by_url(aid_xai_provider, served, local_runs, tmp_path):
    """A raster layer (as added to a project) whose source is a URL: the run reads that URL itself."""
    import processing
    import torch
    from qgis.core import QgsRasterLayer

    folder, server = served
    layer = QgsRasterLayer(raster_url(server), "remote mosaic", "gdal")
    assert layer.isValid()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        processing.run("aid_xai:classify", dict(INPUT=layer, MODEL=str(folder / "net.aidx.pt"), DEVICE="cpu", OUTPUT_CLASSES=str(tmp_path / "classes.tif"), OUTPUT_PROBABILITIES=str(tmp_path / "probabilities.tif"), OUTPUT_TILES=""))
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(read(tmp_path / "classes.tif"), local_runs[1])
    np.testing.assert_array_equal(read(tmp_path / "probabilities.tif"), local_runs[2])


def test_vsis3_against_the_local_server_as_an_s3_endpoint(served, local_runs, monkeypatch, tmp_path):
    """Another of GDAL's network file systems: /vsis3/bucket/key with the server as the S3 endpoint
    (path-style, unsigned): the same outputs; no listing of the bucket on open."""
    import shutil

    folder, server = served
    os.makedirs(folder / "bucket", exist_ok=True)
    shutil.copy2(folder / "mosaic.tif", folder / "bucket" / "mosaic.tif")
    for key, value in {"AWS_S3_ENDPOINT": f"127.0.0.1:{server.port}", "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE", "AWS_NO_SIGN_REQUEST": "YES"}.items():
        monkeypatch.setenv(key, value)
    server.reset_counts()
    np.testing.assert_array_equal(explain("/vsis3/bucket/mosaic.tif", str(folder / "net.aidx.pt"), tmp_path / "shap.tif"), local_runs[0])
    assert server.requests and all(request[1] == "bucket/mosaic.tif" for request in server.requests), server.requests
