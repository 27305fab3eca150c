"""Cloud Optimized GeoTIFF outputs (OUTPUT_FORMAT): the same values, georeferencing, nodata, band
names, tags, colour table and categories as the GeoTIFF, a layout GDAL's own COG validator passes,
overviews (the most frequent class for classes, the mean for values), nothing at the path after a
failure or cancel, and memory that does not grow with the raster."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import ROOT, run_algorithm_json
from helpers import hang_limit, run_algorithm
from osgeo import gdal

from aid_xai_plugin.core.common.errors import AidXaiError
from aid_xai_plugin.core.data.synthetic import SYNTHETIC_CLASSES, make_scene_mosaic
from aid_xai_plugin.core.common.gdal_context import gdal_exceptions
from aid_xai_plugin.core.geo.writers import GeoTiffSink

COG = "COG"
GEOTRANSFORM = (500000.0, 2.0, 0.0, 5600000.0, 0.0, -2.0)


def validate_cog(path):
    """(warnings, errors) of GDAL's COG validator with its full check (every block's data checked)."""
    from osgeo_utils.samples.validate_cloud_optimized_geotiff import validate

    warnings, errors, _ = validate(str(path), full_check=True)
    return warnings, errors


def assert_cog_equals_geotiff(cog_path, tiff_path, overviews=None):
    """`cog_path` is a valid COG holding `tiff_path`'s raster bit for bit, and what describes it."""
    info = gdal.Info(str(cog_path), format="json")
    assert info["metadata"]["IMAGE_STRUCTURE"]["LAYOUT"] == "COG"
    assert info["metadata"]["IMAGE_STRUCTURE"]["COMPRESSION"] == "DEFLATE"
    warnings, errors = validate_cog(cog_path)
    assert errors == [] and warnings == [], (warnings, errors)
    cog, tiff = gdal.Open(str(cog_path)), gdal.Open(str(tiff_path))
    assert (cog.RasterXSize, cog.RasterYSize, cog.RasterCount) == (tiff.RasterXSize, tiff.RasterYSize, tiff.RasterCount)
    assert cog.GetGeoTransform() == tiff.GetGeoTransform()
    assert cog.GetProjection() == tiff.GetProjection() and cog.GetProjection()
    assert cog.GetMetadata() == tiff.GetMetadata() and cog.GetMetadata()
    for number in range(1, cog.RasterCount + 1):
        a, b = cog.GetRasterBand(number), tiff.GetRasterBand(number)
        assert a.DataType == b.DataType
        assert a.GetNoDataValue() == b.GetNoDataValue() is not None
        assert a.GetDescription() == b.GetDescription()
        assert _categories(cog_path, number) == _categories(tiff_path, number)
        assert a.GetColorInterpretation() == b.GetColorInterpretation()
        assert _colours(a) == _colours(b)
        assert a.GetBlockSize() == [256, 256] or cog.RasterXSize < 256  # small rasters: one block
        assert a.ReadAsArray().tobytes() == b.ReadAsArray().tobytes()  # bit for bit, nodata included
        if overviews is not None:
            assert a.GetOverviewCount() == overviews
    return cog


def _categories(path, number):
    """A band's category names as gdalinfo reads them (GDAL 3.6's GeoTIFF band answers None before
    its .aux.xml is loaded by another call)."""
    return gdal.Info(str(path), format="json")["bands"][number - 1].get("categories")


def _colours(band):
    table = band.GetColorTable()
    return None if table is None else [table.GetColorEntry(i) for i in range(table.GetCount())]


def _expected_overviews(width, height):
    """GDAL's OVERVIEWS=AUTO: halve until the overview fits one 256² block."""
    count = 0
    while width > 256 or height > 256:
        width, height, count = (width + 1) // 2, (height + 1) // 2, count + 1
    return count


# --- the sink ------------------------------------------------------------------------------------


def _write_pair(folder, width, height, bands, data_type, nodata, windows, resampling="AVERAGE"):
    """The same windows written as GeoTIFF and as COG; the two paths."""
    paths = []
    for output_format in ("GTiff", "COG"):
        path = str(folder / f"{output_format.lower()}.tif")
        with gdal_exceptions(), GeoTiffSink(path, width, height, bands, data_type, GEOTRANSFORM, "EPSG:32633", nodata, [f"b{i}" for i in range(bands)], {"AIDXAI_KEY": 7}, output_format, resampling) as sink:
            for values, x, y in windows:
                sink.write(values, x, y)
            sink.flush()
        paths.append(path)
    return paths


def test_sink_writes_a_valid_cog_equal_to_the_geotiff(tmp_path):
    rng = np.random.default_rng(0)
    windows = [(rng.normal(size=(2, 300, 200)).astype(np.float32), 40, 30), (np.full((2, 64, 64), 2.5, np.float32), 600, 380)]
    windows.append((rng.normal(size=(2, 300, 200)).astype(np.float32), 100, 100))  # rewrites part of the first window, as blending does
    tiff, cog = _write_pair(tmp_path, 700, 450, 2, gdal.GDT_Float32, -9999.0, windows)
    dataset = assert_cog_equals_geotiff(cog, tiff, overviews=_expected_overviews(700, 450))
    assert dataset.GetRasterBand(1).GetOverview(0).XSize == 350
    assert dataset.GetMetadataItem("AIDXAI_KEY") == "7"
    assert gdal.Info(cog, format="json")["metadata"]["IMAGE_STRUCTURE"]["PREDICTOR"] == "3"  # floating-point predictor
    assert sorted(os.listdir(tmp_path)) == ["cog.tif", "gtiff.tif"]  # no scratch file, no overview temporary


def test_class_overviews_take_the_most_frequent_class_and_values_their_mean(tmp_path):
    """A categorical overview never shows a class that isn't there (AVERAGE of 1 and 3 would be 2);
    both skip nodata, so a lone classified cell survives among nodata."""
    classes = np.full((1, 512, 512), 255, np.uint8)
    classes[0, :256, :256] = np.indices((256, 256)).sum(axis=0) % 2 * 2 + 1  # a checkerboard of classes 1 and 3
    classes[0, 300:302, 300:302] = [[4, 255], [255, 255]]  # one class-4 cell among nodata
    tiff, cog = _write_pair(tmp_path, 512, 512, 1, gdal.GDT_Byte, 255, [(classes, 0, 0)], resampling="MODE")
    dataset = assert_cog_equals_geotiff(cog, tiff, overviews=1)  # held while its bands are read (GDAL < 3.8 would free it)
    overview = dataset.GetRasterBand(1).GetOverview(0).ReadAsArray()
    assert set(np.unique(overview[:128, :128])) <= {1, 3}
    assert overview[150, 150] == 4 and overview[200, 200] == 255
    values = np.full((1, 512, 512), -1.0, np.float32)
    values[0, :2, :2] = [[0.25, 0.75], [-1.0, -1.0]]  # two valid probabilities and two nodata
    folder = tmp_path / "values"
    folder.mkdir()
    tiff, cog = _write_pair(folder, 512, 512, 1, gdal.GDT_Float32, -1.0, [(values, 0, 0)])
    dataset = assert_cog_equals_geotiff(cog, tiff, overviews=1)
    overview = dataset.GetRasterBand(1).GetOverview(0).ReadAsArray()
    assert overview[0, 0] == 0.5 and overview[1, 1] == -1.0


@pytest.mark.parametrize("name", ["out.png", "out.cog", "out.jpg"])
def test_a_cog_needs_a_tif_name(tmp_path, name):
    with pytest.raises(AidXaiError, match=r"Cloud Optimized GeoTIFF: a COG is a GeoTIFF file; give a \.tif file name"):
        GeoTiffSink(str(tmp_path / name), 4, 4, 1, gdal.GDT_Byte, GEOTRANSFORM, "", 0, output_format="COG")
    assert os.listdir(tmp_path) == []


def test_an_error_inside_the_sink_leaves_nothing(tmp_path):
    path = str(tmp_path / "out.tif")
    with pytest.raises(KeyboardInterrupt), gdal_exceptions():
        with GeoTiffSink(path, 600, 600, 1, gdal.GDT_Float32, GEOTRANSFORM, "", -1.0, output_format="COG") as sink:
            sink.write(np.ones((1, 256, 256), np.float32), 0, 0)
            assert len(os.listdir(tmp_path)) == 1  # only the scratch GeoTIFF (the COG appears on commit)
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


SUBPROCESS = textwrap.dedent(
    """
    import json, os, resource, signal, sys
    spec = json.loads(sys.argv[1])
    if spec.get("file_size_limit"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (spec["file_size_limit"], spec["file_size_limit"]))
    import numpy as np
    from osgeo import gdal
    from aid_xai_plugin.core.common.errors import AidXaiError
    from aid_xai_plugin.core.common.gdal_context import gdal_exceptions
    from aid_xai_plugin.core.geo.writers import GeoTiffSink
    size = spec["size"]
    tile = np.full((1, 256, 256), 0.5, np.float32) if spec["constant"] else np.random.default_rng(0).normal(size=(1, 256, 256)).astype(np.float32)
    try:
        with gdal_exceptions(), GeoTiffSink(spec["path"], size, size, 1, gdal.GDT_Float32, (0.0, 1.0, 0.0, 0.0, 0.0, -1.0), "", -9999.0, output_format=spec["format"]) as sink:
            for x, y in ((0, 0), (size - 256, size - 256)):  # two tiles far apart: a sparse scratch file
                sink.write(tile, x, y)
                sink.flush()
    except AidXaiError as error:
        print("AIDXAI_ERROR", error, flush=True)
        sys.exit(3)
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    print(json.dumps({"peak_mb": peak / 1024, "size_bytes": os.path.getsize(spec["path"])}))
    """
)


def _run_sink_subprocess(path, size, output_format, file_size_limit=None, constant=False, cache_mb=64):
    spec = {"path": str(path), "size": size, "format": output_format, "file_size_limit": file_size_limit, "constant": constant}
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), PYTHONDONTWRITEBYTECODE="1", GDAL_CACHEMAX=str(cache_mb))
    return subprocess.run([sys.executable, "-c", SUBPROCESS, json.dumps(spec)], capture_output=True, text=True, env=env, timeout=hang_limit(600), cwd=ROOT)


FILE_SIZE_LIMIT = 100_000  # the scratch GeoTIFF of two constant tiles takes 4 kB, the COG of 4096² px 410 kB


def test_a_full_disk_while_making_the_cog_leaves_nothing(tmp_path):
    """A file-size limit the scratch GeoTIFF fits under but the COG (every block stored) does not:
    one clear line, nothing at the path, no temporary left."""
    completed = _run_sink_subprocess(tmp_path / "out.tif", 4096, "COG", file_size_limit=FILE_SIZE_LIMIT, constant=True)
    assert completed.returncode == 3, completed.stdout + completed.stderr
    assert "out.tif" in completed.stdout and "Traceback" not in completed.stderr
    assert os.listdir(tmp_path) == []


def test_memory_stays_flat_however_large_the_cog(tmp_path):
    """Peak memory (VmHWM) of a process writing a sparse float COG of 10 000² pixels (400 MB of
    values) against one of 1 000²: GDAL streams the copy and the overviews, so only its block cache
    (capped at 16 MB here, as GDAL_CACHEMAX lets any user cap it) and a row of blocks may grow.
    Debian 12 (GDAL 3.6): 100 MB and 133 MB."""
    peaks = {}
    for size in (1000, 10000):
        completed = _run_sink_subprocess(tmp_path / f"cog{size}.tif", size, "COG", cache_mb=16)
        assert completed.returncode == 0, completed.stdout + completed.stderr
        peaks[size] = json.loads(completed.stdout.splitlines()[-1])["peak_mb"]
        assert validate_cog(tmp_path / f"cog{size}.tif")[1] == []
    assert peaks[10000] - peaks[1000] < 100, peaks  # the values alone are 400 MB


# --- the algorithms ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def strip(tmp_path_factory):
    """One row of ten scenes (640 × 64 px): with a stride of 2 px, classify's rasters are 289 cells
    wide and get an overview; explain's SHAP raster (640 px wide) gets two."""
    path = str(tmp_path_factory.mktemp("cog_strip") / "strip.tif")
    make_scene_mosaic(path, rows=1, cols=10, scene_px=64, pixel_size=2.0, seed=3)
    return path


def _classify(strip, model, folder, output_format):
    import processing

    folder.mkdir()
    parameters = {"INPUT": strip, "MODEL": model, "STRIDE": 2, "OUTPUT_CLASSES": str(folder / "classes.tif"), "OUTPUT_PROBABILITIES": str(folder / "probabilities.tif"), "OUTPUT_TILES": str(folder / "tiles.gpkg")}
    if output_format:
        parameters["OUTPUT_FORMAT"] = output_format
    return processing.run("aid_xai:classify", parameters)


def test_processing_run_classify_writes_cogs_equal_to_geotiffs(aid_xai_provider, strip, synthetic_model, tmp_path):
    _classify(strip, synthetic_model, tmp_path / "tiff", None)  # GeoTIFF: the default
    result = _classify(strip, synthetic_model, tmp_path / "cog", COG)
    assert result["TILES_CLASSIFIED"] == 289
    # the GeoTIFF has no overviews (newer GDAL reports LAYOUT=COG for any small tiled GeoTIFF whose layout happens to fit)
    assert gdal.Open(str(tmp_path / "tiff" / "classes.tif")).GetRasterBand(1).GetOverviewCount() == 0
    for name in ("classes.tif", "probabilities.tif"):
        dataset = assert_cog_equals_geotiff(tmp_path / "cog" / name, tmp_path / "tiff" / name, overviews=1)
        assert dataset.RasterXSize == 289
    assert _categories(tmp_path / "cog" / "classes.tif", 1) == list(SYNTHETIC_CLASSES)  # class names kept (GDAL's .aux.xml)
    files = sorted(os.listdir(tmp_path / "cog"))
    assert {"classes.qml", "probabilities.qml", "tiles.qml"} <= set(files)  # the styles land beside the COGs
    assert not [name for name in files if name.startswith(".") or "partial" in name or name.endswith(".tmp")]


def test_processing_run_explain_writes_a_cog_equal_to_the_geotiff(aid_xai_provider, strip, synthetic_model, tmp_path):
    import processing

    outputs = {}
    for output_format in ("GeoTIFF", COG):
        path = str(tmp_path / f"shap_{len(outputs)}.tif")
        processing.run(
            "aid_xai:explain",
            {"INPUT": strip, "MODEL": synthetic_model, "MAX_EVALS": 40, "MASKER": "blur", "MASKER_KERNEL": 16, "TOP_K": 2, "ENGINE": "exact", "OUTPUT_FORMAT": output_format, "OUTPUT": path, "OUTPUT_TABLE": "", "OUTPUT_REPORT": ""},
        )
        outputs[output_format] = path
    cog = assert_cog_equals_geotiff(outputs[COG], outputs["GeoTIFF"], overviews=_expected_overviews(640, 64))
    assert cog.RasterXSize == 640 and cog.GetMetadataItem("AIDXAI_ENGINE") == "exact"
    assert os.path.exists(tmp_path / "shap_1.qml")


def test_cancelled_runs_leave_no_cog(strip, synthetic_model, tmp_path):
    from aid_xai_plugin.core.common.errors import Cancelled
    from aid_xai_plugin.core.common.progress import Progress
    from aid_xai_plugin.core.explain.engine import ExplainSettings
    from aid_xai_plugin.core.pipelines.classify import ClassifyOutputs, classify_raster
    from aid_xai_plugin.core.pipelines.explain import ExplainOutputs, ExplainSpec, explain_raster
    from aid_xai_plugin.core.pipelines.tiles import TilingOptions

    checks = []
    progress = Progress(is_canceled=lambda: checks.append(1) or len(checks) > 1)
    outputs = ClassifyOutputs(str(tmp_path / "c.tif"), str(tmp_path / "p.tif"), raster_format="COG")
    with pytest.raises(Cancelled):
        classify_raster(strip, synthetic_model, TilingOptions(stride=2), outputs, batch_size=16, progress=progress)
    assert os.listdir(tmp_path) == []
    checks.clear()
    spec = ExplainSpec(strip, synthetic_model, TilingOptions(), settings=ExplainSettings(masker="blur(16,16)", max_evals=40), outputs=ExplainOutputs(str(tmp_path / "s.tif"), raster_format="COG"))
    with pytest.raises(Cancelled):
        explain_raster(spec, Progress(is_canceled=lambda: checks.append(1) or len(checks) > 2))
    assert os.listdir(tmp_path) == [".s.tif.resume"]  # no output; the checkpoint waits for a re-run


def test_a_non_tif_cog_output_is_a_clear_error(aid_xai_provider, strip, synthetic_model, tmp_path):
    import processing
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException, match=r"as a Cloud Optimized GeoTIFF: a COG is a GeoTIFF file; give a \.tif file name"):
        processing.run("aid_xai:classify", {"INPUT": strip, "MODEL": synthetic_model, "OUTPUT_FORMAT": COG, "OUTPUT_CLASSES": str(tmp_path / "c.png"), "OUTPUT_TILES": ""})
    with pytest.raises(QgsProcessingException, match="value for OUTPUT_FORMAT"):  # QGIS checks the drop-down first
        processing.run("aid_xai:classify", {"INPUT": strip, "MODEL": synthetic_model, "OUTPUT_FORMAT": "JPEG", "OUTPUT_CLASSES": str(tmp_path / "c.tif"), "OUTPUT_TILES": ""})
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_qgis_process_writes_cogs_equal_to_geotiffs(strip, synthetic_model, tmp_path):
    """Two qgis_process runs of classify, GeoTIFF and COG, and one of explain as a COG."""
    for folder, output_format in (("tiff", "GeoTIFF"), ("cog", COG)):
        result = run_algorithm_json(
            "aid_xai:classify",
            {"INPUT": strip, "MODEL": synthetic_model, "STRIDE": 2, "OUTPUT_FORMAT": output_format, "OUTPUT_CLASSES": tmp_path / folder / "classes.tif", "OUTPUT_PROBABILITIES": tmp_path / folder / "probabilities.tif", "OUTPUT_TILES": tmp_path / folder / "tiles.gpkg"},
        )["results"]
        assert result["TILES_CLASSIFIED"] == 289
    for name in ("classes.tif", "probabilities.tif"):
        assert_cog_equals_geotiff(tmp_path / "cog" / name, tmp_path / "tiff" / name, overviews=1)
        assert (tmp_path / "cog" / name.replace(".tif", ".qml")).exists()
    result = run_algorithm_json("aid_xai:explain", {"INPUT": strip, "MODEL": synthetic_model, "MAX_EVALS": 40, "MASKER_KERNEL": 16, "TOP_K": 1, "OUTPUT_FORMAT": COG, "OUTPUT": tmp_path / "shap.tif"})["results"]
    assert result["TILES_EXPLAINED"] == 10
    assert gdal.Info(str(tmp_path / "shap.tif"), format="json")["metadata"]["IMAGE_STRUCTURE"]["LAYOUT"] == "COG"
    assert validate_cog(tmp_path / "shap.tif") == ([], [])
    shap = gdal.Open(str(tmp_path / "shap.tif"))
    assert shap.GetRasterBand(1).GetOverviewCount() == _expected_overviews(640, 64) == 2
    failed = run_algorithm("aid_xai:classify", {"INPUT": strip, "MODEL": synthetic_model, "OUTPUT_FORMAT": COG, "OUTPUT_CLASSES": tmp_path / "bad.png"})
    assert failed.returncode != 0 and "give a .tif file name" in failed.stdout + failed.stderr and "Traceback" not in failed.stderr
    assert not (tmp_path / "bad.png").exists()
