"""Which tiles a run takes: the raster's own grid whatever the extent (classify and explain agree),
and explain's refusal to start on more tiles than MAX_TILES (or about an hour's work)."""

import os

import pytest
import rasterio
from numerics import GEO_REL
from osgeo import ogr

from aid_xai_plugin.core.common.errors import AidXaiError
from aid_xai_plugin.core.data.synthetic import make_scene_mosaic
from aid_xai_plugin.core.pipelines.budget import check_tile_budget


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("selection") / "mosaic.tif")
    truth = make_scene_mosaic(path, rows=2, cols=4, scene_px=64, pixel_size=2.0, seed=21)
    return path, truth


def _tiles(path):
    dataset = ogr.Open(path)
    return sorted((f["row"], f["col"], f.GetGeometryRef().GetEnvelope()) for f in dataset.GetLayer(0))


def test_a_small_drawn_extent_selects_the_same_tile_in_classify_and_explain(aid_xai_provider, mosaic, synthetic_model, tmp_path):
    """A 10 m box inside scene (row 1, col 2), off the tile grid's corners: both algorithms take that
    scene's tile of the raster's grid, with the same footprint, not a tile shifted to the box."""
    import processing

    path, truth = mosaic
    scene = next(s for s in truth if (s["row"], s["col"]) == (1, 2))
    xmin, ymin = scene["bounds"][0] + 37.0, scene["bounds"][1] + 51.0
    extent = f"{xmin},{xmin + 10.0},{ymin},{ymin + 10.0} [EPSG:32633]"
    processing.run("aid_xai:classify", {"INPUT": path, "MODEL": synthetic_model, "EXTENT": extent, "OUTPUT_CLASSES": str(tmp_path / "c.tif"), "OUTPUT_PROBABILITIES": "", "OUTPUT_TILES": str(tmp_path / "tiles.gpkg")})
    processing.run("aid_xai:explain", {"INPUT": path, "MODEL": synthetic_model, "EXTENT": extent, "TOP_K": 1, "MAX_EVALS": 40, "OUTPUT": str(tmp_path / "shap.tif"), "OUTPUT_TABLE": str(tmp_path / "explained.gpkg"), "OUTPUT_REPORT": ""})
    classified, explained = _tiles(str(tmp_path / "tiles.gpkg")), _tiles(str(tmp_path / "explained.gpkg"))
    assert len(classified) == len(explained) == 1
    assert classified[0][2] == explained[0][2] == pytest.approx((scene["bounds"][0], scene["bounds"][2], scene["bounds"][1], scene["bounds"][3]), rel=GEO_REL)
    with rasterio.open(tmp_path / "shap.tif") as shap, rasterio.open(tmp_path / "c.tif") as classes:
        assert tuple(shap.bounds) == pytest.approx(tuple(scene["bounds"]), rel=GEO_REL)
        assert tuple(classes.bounds) == pytest.approx(tuple(scene["bounds"]), rel=GEO_REL)


def test_a_point_picks_one_tile_on_edges_corners_and_overlaps(aid_xai_provider, mosaic, synthetic_model, tmp_path):
    """A point on the corner four tiles share, one on an edge two share, and one inside half-stride
    tiles that overlap it four times: each picks the one tile it touches whose centre is nearest (the
    first in grid order among equals), as the help says, not every tile it touches; a polygon still
    picks every tile whose centre it contains."""
    import processing

    from aid_xai_plugin.core.geo.vector import write_polygons

    path, truth = mosaic
    bounds = {(s["row"], s["col"]): s["bounds"] for s in truth}
    x0, _, _, y1 = bounds[0, 0]  # the mosaic's top-left corner; scenes are 128 m
    points = {"corner": (x0 + 128.0, y1 - 128.0), "edge": (x0 + 3 * 128.0, y1 - 40.0), "inside": (x0 + 200.0, y1 - 70.0)}
    features = str(tmp_path / "points.gpkg")
    layer = ogr.GetDriverByName("GPKG").CreateDataSource(features)
    srs = ogr.osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    points_layer = layer.CreateLayer("points", srs, ogr.wkbPoint)
    points_layer.CreateField(ogr.FieldDefn("label", ogr.OFTString))
    for name, (x, y) in points.items():
        feature = ogr.Feature(points_layer.GetLayerDefn())
        feature["label"] = name
        feature.SetGeometry(ogr.CreateGeometryFromWkt(f"POINT ({x} {y})"))
        points_layer.CreateFeature(feature)
    layer = None

    def explained(stride, features, name):
        parameters = {"INPUT": path, "MODEL": synthetic_model, "FEATURES": features, "LABEL_FIELD": "label", "TOP_K": 1, "MAX_EVALS": 40, "ENGINE": "exact", "STRIDE": stride, "OVERLAP": "last",
                      "OUTPUT": str(tmp_path / f"{name}.tif"), "OUTPUT_TABLE": str(tmp_path / f"{name}.gpkg"), "OUTPUT_REPORT": ""}
        processing.run("aid_xai:explain", parameters)
        dataset = ogr.Open(str(tmp_path / f"{name}.gpkg"))
        return sorted((f["label"], f["row"], f["col"]) for f in dataset.GetLayer(0))

    # 64 px tiles (128 m), no overlap: the corner's four tiles are equally near, the edge's two too
    assert explained(None, features, "abutting") == [("corner", 0, 0), ("edge", 0, 2), ("inside", 0, 1)]
    # stride 32 px (64 m): centres every 64 m; "inside" (200, −70) is nearest the centre (192, −64) of tile (0, 2)
    assert explained(32, features, "overlapping") == [("corner", 1, 1), ("edge", 0, 5), ("inside", 0, 2)]
    polygon = str(tmp_path / "polygon.gpkg")
    write_polygons(polygon, "EPSG:32633", [("label", str)], [(("area",), (x0 + 100.0, y1 - 70.0, x0 + 200.0, y1 - 50.0))])
    assert explained(32, polygon, "polygon") == [("area", 0, 1), ("area", 0, 2)]


def test_explain_refuses_more_tiles_than_max_tiles_before_writing_anything(aid_xai_provider, mosaic, synthetic_model, tmp_path):
    from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingException, QgsProcessingFeedback

    path, _ = mosaic
    algorithm = QgsApplication.processingRegistry().createAlgorithmById("aid_xai:explain")
    parameters = {"INPUT": path, "MODEL": synthetic_model, "MAX_TILES": 3, "MAX_EVALS": 40, "OUTPUT": str(tmp_path / "shap.tif"), "OUTPUT_TABLE": str(tmp_path / "t.gpkg"), "OUTPUT_REPORT": str(tmp_path / "r.html")}
    with pytest.raises(QgsProcessingException) as raised:
        algorithm.processAlgorithm(parameters, QgsProcessingContext(), QgsProcessingFeedback())
    message = str(raised.value)
    assert "8 tiles are selected" in message and "the limit is 3 tiles (MAX_TILES = 3)" in message
    assert "set MAX_TILES to 8 or more" in message and "would take about" in message
    assert os.listdir(tmp_path) == []


def test_the_automatic_limit_is_about_an_hour_of_estimated_work():
    check_tile_budget(360, 10.0, 500, 0)  # 360 × 10 s = one hour: runs
    with pytest.raises(AidXaiError, match=r"361 tiles are selected, which would take about 60 min; the limit is 360 tiles \(about an hour at MAX_EVALS = 500"):
        check_tile_budget(361, 10.0, 500, 0)
    check_tile_budget(5000, 10.0, 500, 5000)  # the user raised the limit


def test_the_dialog_shows_automatic_tile_size_stride_and_limit_as_not_set(aid_xai_provider):
    """Not set reads as automatic (the label says what it means), never as 0.000000."""
    from qgis.core import QgsApplication

    algorithm = QgsApplication.processingRegistry().algorithmById("aid_xai:explain")
    for name in ("TILE_SIZE", "STRIDE", "MAX_TILES"):
        parameter = algorithm.parameterDefinition(name)
        assert parameter.defaultValue() is None and "not set:" in parameter.description()
