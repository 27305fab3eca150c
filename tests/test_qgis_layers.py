"""Any QGIS raster layer as input: an XYZ tile layer (tiles on disk, file:// URL, made here from a
georeferenced mosaic) classified and explained through QGIS's raster provider at a set resolution
gives the same tiles and predictions as the GeoTIFF it was cut from."""

import math
import os

import numpy as np
import pytest
import rasterio
from numerics import GEO_REL, assert_float32_outputs, tile_scores
from osgeo import gdal

from aid_xai_plugin.core.data.synthetic import make_scene_mosaic
from aid_xai_plugin.core.ml.model_file import load_model
from aid_xai_plugin.raster_layers import aligned_window

WORLD = 20037508.342789244  # half the EPSG:3857 world width, metres
ZOOM = 17
RESOLUTION = 2 * WORLD / (256 * 2**ZOOM)  # metres per pixel of XYZ zoom 17 (≈ 1.19 m)
FIRST_TILE = (70_000, 45_000)  # XYZ column and row of the mosaic's top-left tile


@pytest.fixture(scope="module")
def xyz_mosaic(tmp_path_factory):
    """A 6 × 4-scene mosaic in EPSG:3857 on zoom 17's pixel grid, and the XYZ tiles (z/x/y.png,
    RGBA, transparent outside the mosaic) covering it."""
    folder = tmp_path_factory.mktemp("xyz")
    path = str(folder / "mosaic.tif")
    origin = (-WORLD + FIRST_TILE[0] * 256 * RESOLUTION, WORLD - FIRST_TILE[1] * 256 * RESOLUTION)
    truth = make_scene_mosaic(path, rows=4, cols=6, scene_px=64, pixel_size=RESOLUTION, origin=origin, epsg=3857, seed=9)
    source = gdal.Open(path)
    pixels = source.ReadAsArray()  # 3 × 256 × 384
    png = gdal.GetDriverByName("PNG")
    for column in range(math.ceil(source.RasterXSize / 256)):
        tile = np.zeros((4, 256, 256), np.uint8)
        part = pixels[:, :256, column * 256 : (column + 1) * 256]
        tile[:3, :, : part.shape[2]] = part
        tile[3, :, : part.shape[2]] = 255
        memory = gdal.GetDriverByName("MEM").Create("", 256, 256, 4, gdal.GDT_Byte)
        for band in range(4):
            memory.GetRasterBand(band + 1).WriteArray(tile[band])
        target = folder / "tiles" / str(ZOOM) / str(FIRST_TILE[0] + column) / f"{FIRST_TILE[1]}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        png.CreateCopy(str(target), memory)
    return path, truth, str(folder / "tiles")


def _xyz_layer(tiles):
    from qgis.core import QgsRasterLayer

    layer = QgsRasterLayer(f"type=xyz&url=file://{tiles}/{{z}}/{{x}}/{{y}}.png&zmin=0&zmax={ZOOM}", "offline tiles", "wms")
    assert layer.isValid(), layer.error().summary()
    return layer


def test_the_aligned_window_snaps_outward_to_the_resolution_and_stride_grids():
    assert aligned_window((10.2, 20.0, 30.0, 41.1), 2.0) == (10.0, 20.0, 30.0, 42.0, 10, 11)
    # a tile of 4 px further on each side, edges on multiples of 4 px (8 map units) from the origin
    assert aligned_window((10.2, 20.0, 30.0, 41.1), 2.0, margin=4, step=4) == (0.0, 8.0, 40.0, 56.0, 20, 24)
    left, bottom, right, top, columns, rows = aligned_window((-WORLD + 3 * RESOLUTION, 0.0, -WORLD + 10 * RESOLUTION, 7 * RESOLUTION), RESOLUTION)
    assert (columns, rows) == (7, 7) and left == pytest.approx(-WORLD + 3 * RESOLUTION, rel=GEO_REL)


@pytest.mark.numerics
def test_an_xyz_layer_classifies_like_the_geotiff_it_was_cut_from(aid_xai_provider, xyz_mosaic, synthetic_model, tmp_path):
    import processing

    path, truth, tiles = xyz_mosaic
    with rasterio.open(path) as raster:
        bounds = raster.bounds
    extent = f"{bounds.left},{bounds.right},{bounds.bottom},{bounds.top} [EPSG:3857]"
    layer = _xyz_layer(tiles)
    common = {"MODEL": synthetic_model, "OUTPUT_TILES": ""}
    processing.run("aid_xai:classify", {**common, "INPUT": path, "OUTPUT_CLASSES": str(tmp_path / "file_c.tif"), "OUTPUT_PROBABILITIES": str(tmp_path / "file_p.tif")})
    processing.run("aid_xai:classify", {**common, "INPUT": layer, "EXTENT": extent, "RESOLUTION": RESOLUTION, "OUTPUT_CLASSES": str(tmp_path / "xyz_c.tif"), "OUTPUT_PROBABILITIES": str(tmp_path / "xyz_p.tif")})
    with rasterio.open(tmp_path / "file_c.tif") as a, rasterio.open(tmp_path / "xyz_c.tif") as b:
        # 1e-6 m at 1.5e7 m from the origin: ~500 float64 ulps of grid arithmetic, a millionth of a pixel
        assert b.crs == a.crs and b.transform.almost_equals(a.transform, precision=1e-6) and b.shape == a.shape == (4, 6)
        np.testing.assert_array_equal(b.read(1), a.read(1))
        names = load_model(synthetic_model).info.class_names
        expected = np.array([[names.index(t["class_name"]) for t in sorted(truth, key=lambda t: t["col"]) if t["row"] == r] for r in range(4)])
        assert (a.read(1) == expected).mean() > 0.8  # and the classes are mostly right
    with rasterio.open(tmp_path / "file_p.tif") as a, rasterio.open(tmp_path / "xyz_p.tif") as b:
        reference, yardstick = tile_scores(path, synthetic_model)
        assert_float32_outputs({"the GeoTIFF's": a.read(), "the XYZ layer's": b.read()}, reference, yardstick, "classify's probabilities")
    assert not [name for name in os.listdir(tmp_path) if "partial" in name]


def test_an_xyz_layer_explains_like_the_geotiff(aid_xai_provider, xyz_mosaic, synthetic_model, tmp_path):
    import processing

    path, truth, tiles = xyz_mosaic
    scene = next(t for t in truth if (t["row"], t["col"]) == (1, 2))
    xmin, ymin, xmax, ymax = scene["bounds"]
    extent = f"{xmin + 5},{xmax - 5},{ymin + 5},{ymax - 5} [EPSG:3857]"
    settings = {"MODEL": synthetic_model, "EXTENT": extent, "TOP_K": 1, "MAX_EVALS": 60, "OUTPUT_TABLE": "", "OUTPUT_REPORT": ""}
    processing.run("aid_xai:explain", {**settings, "INPUT": path, "OUTPUT": str(tmp_path / "file.tif")})
    processing.run("aid_xai:explain", {**settings, "INPUT": _xyz_layer(tiles), "RESOLUTION": RESOLUTION, "OUTPUT": str(tmp_path / "xyz.tif")})
    with rasterio.open(tmp_path / "file.tif") as a, rasterio.open(tmp_path / "xyz.tif") as b:
        assert tuple(a.bounds) == pytest.approx(scene["bounds"], rel=GEO_REL)  # the scene's tile, on both paths
        assert tuple(b.bounds) == pytest.approx(scene["bounds"], rel=GEO_REL)
        values, expected = b.read(1), a.read(1)
    # the same pixels (PNG is lossless), engine, settings and batches: the same values, bit for bit
    np.testing.assert_array_equal(values, expected)


def test_a_web_layer_without_a_resolution_is_a_clear_error(aid_xai_provider, xyz_mosaic, synthetic_model, tmp_path):
    from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingException, QgsProcessingFeedback

    _, _, tiles = xyz_mosaic
    algorithm = QgsApplication.processingRegistry().createAlgorithmById("aid_xai:classify")
    context = QgsProcessingContext()
    layer = _xyz_layer(tiles)
    context.temporaryLayerStore().addMapLayer(layer)
    with pytest.raises(QgsProcessingException, match="set RESOLUTION"):
        algorithm.processAlgorithm({"INPUT": layer.id(), "MODEL": synthetic_model, "OUTPUT_CLASSES": str(tmp_path / "c.tif")}, context, QgsProcessingFeedback())
    assert os.listdir(tmp_path) == []
