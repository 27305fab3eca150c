"""aid_xai:classify on georeferenced mosaics with known ground truth, read back with rasterio."""

import os

import numpy as np
import pytest
import rasterio
from conftest import AID150, requires_aid150, run_algorithm_json
from helpers import create_georeferenced_tiff, random_net_model_file
from numerics import GEO_REL, Float64Model, assert_float32_outputs

from aid_xai_plugin.core.pipelines.classify import ClassifyOutputs, classify_raster
from aid_xai_plugin.core.data.synthetic import make_scene_mosaic
from aid_xai_plugin.core.pipelines.tiles import TilingOptions


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("mosaic") / "mosaic.tif")
    truth = make_scene_mosaic(path, rows=4, cols=6, scene_px=64, pixel_size=2.0, seed=5)
    return path, truth


def _read_tile_layer(path):
    from osgeo import ogr

    dataset = ogr.Open(path)
    layer = dataset.GetLayer(0)
    rows = []
    for feature in layer:
        envelope = feature.GetGeometryRef().GetEnvelope()  # (xmin, xmax, ymin, ymax)
        rows.append({**feature.items(), "bounds": (envelope[0], envelope[2], envelope[1], envelope[3])})
    return rows


def assert_aligned_and_accurate(class_path, tiles_path, source_path, truth):
    """≥ 90 % of tiles right, and every output cell/polygon exactly on its scene's footprint."""
    with rasterio.open(source_path) as source, rasterio.open(class_path) as classes:
        assert classes.crs == source.crs
        assert classes.transform.a == source.transform.a * 64 and classes.transform.e == source.transform.e * 64  # ×2^6: exact in float64
        assert (classes.transform.c, classes.transform.f) == (source.transform.c, source.transform.f)
        values = classes.read(1)
        correct = 0
        for scene in truth:
            window = rasterio.windows.Window(scene["col"], scene["row"], 1, 1)
            assert tuple(rasterio.windows.bounds(window, classes.transform)) == pytest.approx(scene["bounds"], rel=GEO_REL)
            correct += values[scene["row"], scene["col"]] == _class_index(class_path, scene["class_name"])
        assert correct / len(truth) >= 0.9, f"{correct}/{len(truth)} tiles correct"
    tiles = _read_tile_layer(tiles_path)
    assert len(tiles) == len(truth)
    by_position = {(t["row"], t["col"]): t for t in tiles}
    for scene in truth:
        tile = by_position[(scene["row"], scene["col"])]
        assert tile["bounds"] == pytest.approx(scene["bounds"], rel=GEO_REL)
        assert 0 <= tile["margin"] <= 1 and 0 <= tile["entropy"] <= 1
    assert sum(by_position[(s["row"], s["col"])]["class_name"] == s["class_name"] for s in truth) / len(truth) >= 0.9


def _class_index(class_path, name):
    from osgeo import gdal

    return gdal.Info(class_path, format="json")["bands"][0]["categories"].index(name)


@pytest.mark.numerics
def test_core_classify_is_accurate_and_aligned(mosaic, synthetic_model, tmp_path):
    path, truth = mosaic
    outputs = ClassifyOutputs(str(tmp_path / "classes.tif"), str(tmp_path / "probabilities.tif"), str(tmp_path / "tiles.gpkg"))
    summary = classify_raster(path, synthetic_model, TilingOptions(), outputs, k=3, batch_size=8)
    assert summary.classified == 24 and summary.skipped == 0
    assert_aligned_and_accurate(outputs.class_raster, outputs.tile_layer, path, truth)
    with rasterio.open(outputs.probability_raster) as probabilities:
        assert probabilities.descriptions == tuple(summary.class_names)
        # float32 softmax: exp, a sum of C terms and a division round each probability by at most
        # (C + 2) float32 epsilons relative, so their sum is 1 within (C + 2) epsilons
        bound = (probabilities.count + 2) * np.finfo(np.float32).eps
        assert np.abs(probabilities.read().sum(axis=0, dtype=np.float64) - 1.0).max() <= bound
        tags = probabilities.tags()
        assert tags["AIDXAI_TILE_SIZE_PX"] == "64x64" and len(tags["AIDXAI_MODEL_SHA256"]) == 64
    assert not [name for name in os.listdir(tmp_path) if "partial" in name]


def test_qgis_process_classify_writes_aligned_styled_layers(mosaic, synthetic_model, tmp_path):
    path, truth = mosaic
    result = run_algorithm_json(
        "aid_xai:classify",
        {
            "INPUT": path,
            "MODEL": synthetic_model,
            "OUTPUT_CLASSES": tmp_path / "classes.tif",
            "OUTPUT_PROBABILITIES": tmp_path / "probabilities.tif",
            "OUTPUT_TILES": tmp_path / "tiles.gpkg",
        },
    )["results"]
    assert result["TILES_CLASSIFIED"] == 24
    assert_aligned_and_accurate(result["OUTPUT_CLASSES"], result["OUTPUT_TILES"], path, truth)
    for sidecar in ("classes.qml", "tiles.qml"):
        assert "<qgis" in (tmp_path / sidecar).read_text()
    assert "paletted" in (tmp_path / "classes.qml").read_text()


def test_processing_run_loads_layers_with_styles(aid_xai_provider, mosaic, synthetic_model, tmp_path, monkeypatch):
    import processing
    from processing.gui import Postprocessing
    from qgis.core import QgsProject

    if hasattr(Postprocessing, "iface"):
        # QGIS 3.44 hands iface.layerTreeView() to C++, which pytest-qgis's stand-in iface cannot
        # give; without an iface QGIS loads the results into the project as it does headless.
        monkeypatch.setattr(Postprocessing, "iface", None)

    path, _ = mosaic
    QgsProject.instance().removeAllMapLayers()
    processing.runAndLoadResults(
        "aid_xai:classify",
        {"INPUT": path, "MODEL": synthetic_model, "OUTPUT_CLASSES": str(tmp_path / "c.tif"), "OUTPUT_PROBABILITIES": str(tmp_path / "p.tif"), "OUTPUT_TILES": str(tmp_path / "t.gpkg")},
    )
    layers = {layer.source().split("|")[0]: layer for layer in QgsProject.instance().mapLayers().values()}
    assert layers[str(tmp_path / "c.tif")].renderer().type() == "paletted"
    assert layers[str(tmp_path / "t.gpkg")].renderer().type() == "categorizedSymbol"
    from aid_xai_plugin.styling import PENDING_POST_PROCESSORS

    assert not PENDING_POST_PROCESSORS  # each post-processor let go once it styled its layer
    QgsProject.instance().removeAllMapLayers()


def test_a_failure_after_an_output_is_written_names_that_output(aid_xai_provider, mosaic, synthetic_model, tmp_path, monkeypatch):
    """The last-resort message says which outputs already exist instead of "No output was written"
    (QGIS 3.44 first showed it: styling failed after the rasters were committed)."""
    import processing
    from qgis.core import QgsProcessingException

    import aid_xai_plugin.algorithms.classify as classify_algorithm

    def failing_style(path, names):
        raise RuntimeError("styling broke")

    monkeypatch.setattr(classify_algorithm, "style_probability_raster", failing_style)
    path, _ = mosaic
    outputs = {name: str(tmp_path / name) for name in ("c.tif", "p.tif", "t.gpkg")}
    with pytest.raises(QgsProcessingException) as raised:
        processing.run("aid_xai:classify", {"INPUT": path, "MODEL": synthetic_model, "OUTPUT_CLASSES": outputs["c.tif"], "OUTPUT_PROBABILITIES": outputs["p.tif"], "OUTPUT_TILES": outputs["t.gpkg"]})
    message = str(raised.value)
    assert "RuntimeError: styling broke" in message and "No output was written" not in message
    written = message.split("Outputs written before the failure (complete, possibly without their style): ")[1].split(";")[0].split(", ")
    assert sorted(written) == sorted(name for name in outputs.values() if os.path.exists(name)) and outputs["p.tif"] in written


def test_sixteen_bit_and_rgba_inputs(mosaic, synthetic_model, tmp_path):
    """A 16-bit copy scaled by fixed min/max classifies like the 8-bit original; alpha = mask."""
    from osgeo import gdal

    path, truth = mosaic
    source = gdal.Open(path)
    data = source.ReadAsArray().astype(np.uint16) * 257
    sixteen = create_georeferenced_tiff(tmp_path / "u16.tif", source.RasterXSize, source.RasterYSize, 4, source.GetGeoTransform(), source.GetProjection(), gdal.GDT_UInt16)
    alpha = np.full(data.shape[1:], 65535, np.uint16)
    alpha[:64, :64] = 0  # the first scene is masked out entirely
    for band in range(3):
        sixteen.GetRasterBand(band + 1).WriteArray(data[band])
    sixteen.GetRasterBand(4).WriteArray(alpha)
    sixteen.GetRasterBand(4).SetColorInterpretation(gdal.GCI_AlphaBand)
    sixteen = None
    reference = ClassifyOutputs(class_raster=str(tmp_path / "ref.tif"))
    classify_raster(path, synthetic_model, TilingOptions(), reference)
    scaled = ClassifyOutputs(class_raster=str(tmp_path / "u16_classes.tif"))
    summary = classify_raster(str(tmp_path / "u16.tif"), synthetic_model, TilingOptions(bands="1,2,3", scaling="minmax(0,65535)"), scaled)
    assert summary.skipped == 1
    expected = rasterio.open(reference.class_raster).read(1)
    got = rasterio.open(scaled.class_raster).read(1)
    assert got[0, 0] == 255
    got[0, 0] = expected[0, 0]
    assert np.array_equal(expected, got)


def test_geographic_crs_with_tile_size_in_metres(synthetic_model, tmp_path):
    from osgeo import gdal

    path = str(tmp_path / "geo.tif")
    truth = make_scene_mosaic(path, rows=2, cols=3, scene_px=64, pixel_size=2.0, epsg=32633, seed=3)
    geographic = str(tmp_path / "geo4326.tif")
    # Put the same pixels on a lat/lon grid with ~2 m pixels at 52° N: 64 px ≈ 128 m (closed on return).
    gdal.Translate(geographic, path, outputSRS="EPSG:4326", outputBounds=[15.0, 52.0 + 2 * 64 * 2 / 111132.95, 15.0 + 3 * 64 * 2 / (111319.49 * np.cos(np.radians(52.0))), 52.0])
    outputs = ClassifyOutputs(class_raster=str(tmp_path / "geo_classes.tif"))
    summary = classify_raster(geographic, synthetic_model, TilingOptions(tile_size=128, tile_unit="metres"), outputs)
    assert summary.tile_px == (64, 64) and summary.classified == 6
    assert summary.class_counts and sum(summary.class_counts.values()) == len(truth)


@pytest.mark.parametrize(
    "parameters, message",
    [
        ({"TILE_SIZE": 100000}, "smaller than one tile"),
        ({"EXTENT": "0,10,0,10 [EPSG:32633]"}, "does not overlap"),
        ({"BANDS": "1,2"}, "expects 3 band"),
        ({"MODEL": "/nonexistent/model.aidx.pt"}, "does not exist"),
        ({"OUTPUT_CLASSES": "/proc/forbidden/classes.tif"}, "writable"),
    ],
)
def test_bad_inputs_give_clear_errors(aid_xai_provider, mosaic, synthetic_model, tmp_path, parameters, message):
    from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingException, QgsProcessingFeedback

    path, _ = mosaic
    algorithm = QgsApplication.processingRegistry().createAlgorithmById("aid_xai:classify")
    base = {"INPUT": path, "MODEL": synthetic_model, "OUTPUT_CLASSES": str(tmp_path / "c.tif"), "OUTPUT_PROBABILITIES": "TEMPORARY_OUTPUT", "OUTPUT_TILES": "TEMPORARY_OUTPUT"}
    with pytest.raises(QgsProcessingException) as raised:
        algorithm.processAlgorithm({**base, **parameters}, QgsProcessingContext(), QgsProcessingFeedback())
    assert message in str(raised.value)
    assert not os.path.exists(tmp_path / "c.tif")


def test_invalid_model_file_is_refused(aid_xai_provider, mosaic, tmp_path):
    from aid_xai_plugin.core.common.errors import AidXaiError

    bogus = tmp_path / "bogus.aidx.pt"
    bogus.write_bytes(b"not a model")
    with pytest.raises(AidXaiError, match="cannot be read"):
        classify_raster(mosaic[0], str(bogus), TilingOptions(), ClassifyOutputs(class_raster=str(tmp_path / "c.tif")))


@requires_aid150
@pytest.mark.numerics
def test_aid_mosaic_predictions_equal_direct_predictions(tmp_path):
    """Real AID scenes placed in a GeoTIFF: the raster path gives the same probabilities as loading
    the images directly (same resize, same scaling), so it adds no error."""
    from PIL import Image

    from aid_xai_plugin.core.ml.classifier import Classifier
    from aid_xai_plugin.core.ml.model_file import load_model
    from aid_xai_plugin.core.ml.preprocess import load_image_file

    classes = sorted(os.listdir(AID150))
    classes = [c for c in classes if os.path.isdir(os.path.join(AID150, c))]
    model_path = str(tmp_path / "aid.aidx.pt")
    random_net_model_file(model_path, 128, classes, mean=0.4, std=0.2)
    files = [os.path.join(AID150, c, sorted(os.listdir(os.path.join(AID150, c)))[0]) for c in classes[:12]]
    rows, cols, side = 3, 4, 150
    mosaic = create_georeferenced_tiff(tmp_path / "aid.tif", cols * side, rows * side, 3, (300000.0, 0.5, 0.0, 5500000.0, 0.0, -0.5), 32632)
    for index, file in enumerate(files):
        row, col = divmod(index, cols)
        pixels = np.asarray(Image.open(file).convert("RGB"))
        assert pixels.shape[:2] == (side, side)
        for band in range(3):
            mosaic.GetRasterBand(band + 1).WriteArray(pixels[..., band], col * side, row * side)
    mosaic = None
    outputs = ClassifyOutputs(probability_raster=str(tmp_path / "p.tif"))
    classify_raster(str(tmp_path / "aid.tif"), model_path, TilingOptions(tile_size=side), outputs)
    classifier = Classifier(load_model(model_path), "cpu")
    images = np.stack([load_image_file(f, 128) for f in files])
    direct = classifier.predict_probabilities(images)
    with rasterio.open(outputs.probability_raster) as raster:
        written = raster.read()  # classes × rows × cols
    written = np.stack([written[:, row, col] for row, col in (divmod(index, cols) for index in range(len(files)))])
    # the same tiles, batched otherwise: float32 rounding of this network only (tests/numerics.py)
    assert_float32_outputs({"the probability raster": written}, Float64Model(classifier).scores(images, "probability"), direct, "AID tiles")


def test_cancel_leaves_no_output(mosaic, synthetic_model, tmp_path):
    from aid_xai_plugin.core.common.errors import Cancelled
    from aid_xai_plugin.core.common.progress import Progress

    checks = []
    progress = Progress(is_canceled=lambda: checks.append(1) or len(checks) > 1)  # cancel at the 2nd batch
    outputs = ClassifyOutputs(str(tmp_path / "c.tif"), str(tmp_path / "p.tif"), str(tmp_path / "t.gpkg"))
    with pytest.raises(Cancelled):
        classify_raster(mosaic[0], synthetic_model, TilingOptions(), outputs, batch_size=4, progress=progress)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("exceptions_on", [False, True])
def test_algorithms_leave_gdal_exception_mode_as_found(aid_xai_provider, mosaic, synthetic_model, tmp_path, exceptions_on):
    """QGIS and other plugins rely on GDAL's process-wide exception mode: the plugin must not change it."""
    import processing
    from osgeo import gdal, ogr, osr

    modules = (gdal, ogr, osr)

    def set_modes(modes):  # GDAL < 3.7 keeps one error-handler stack: switch off in reverse order
        for module, on in zip(modules, modes):
            if on:
                module.UseExceptions()
        for module, on in reversed(list(zip(modules, modes))):
            if not on:
                module.DontUseExceptions()

    before = [module.GetUseExceptions() for module in modules]
    try:
        set_modes([exceptions_on] * 3)
        processing.run("aid_xai:synthetic_mosaic", {"ROWS": 1, "COLUMNS": 2, "OUTPUT": str(tmp_path / "m.tif"), "TRUTH": str(tmp_path / "t.gpkg")})
        processing.run("aid_xai:classify", {"INPUT": mosaic[0], "MODEL": synthetic_model, "OUTPUT_CLASSES": str(tmp_path / "c.tif"), "OUTPUT_TILES": str(tmp_path / "t2.gpkg")})
        assert [module.GetUseExceptions() for module in modules] == [int(exceptions_on)] * 3
        set_modes([not exceptions_on] * 3)  # and later changes by others still take effect in this thread
        assert [module.GetUseExceptions() for module in modules] == [int(not exceptions_on)] * 3
    finally:
        set_modes(before)


@pytest.mark.parametrize("extension, driver", [(".gpkg", "GPKG"), (".geojson", "GeoJSON"), (".shp", "ESRI Shapefile")])
def test_tile_layer_is_written_in_the_format_its_name_says(aid_xai_provider, mosaic, synthetic_model, tmp_path, extension, driver):
    import processing
    from osgeo import ogr

    path, truth = mosaic
    tiles = str(tmp_path / f"tiles{extension}")
    processing.run("aid_xai:classify", {"INPUT": path, "MODEL": synthetic_model, "OUTPUT_CLASSES": str(tmp_path / "c.tif"), "OUTPUT_TILES": tiles})
    dataset = ogr.Open(tiles)
    assert dataset.GetDriver().GetName() == driver
    layer = dataset.GetLayer(0)
    assert layer.GetFeatureCount() == len(truth)
    assert layer.GetSpatialRef().GetAuthorityCode(None) == "32633"
    assert sorted(os.listdir(tmp_path)) == sorted(name for name in os.listdir(tmp_path) if not name.startswith("."))  # no temporaries left


def test_raster_output_in_another_format_is_a_clear_error(aid_xai_provider, mosaic, synthetic_model, tmp_path):
    import processing
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException, match=r"writes GeoTIFF; give a \.tif"):
        processing.run("aid_xai:classify", {"INPUT": mosaic[0], "MODEL": synthetic_model, "OUTPUT_CLASSES": str(tmp_path / "c.png")})
    assert os.listdir(tmp_path) == []
