"""What a user sees when an output loads: every style read back through QGIS from its .qml sidecar,
including the Symbology panel's own band switch for the SHAP and probability rasters."""

import numpy as np
import pytest
from osgeo import gdal

from aid_xai_plugin.core.common.palette import AID_COLORS, class_color, class_colors

AID_CLASSES = ["Airport", "BareLand", "BaseballField", "Beach", "Bridge", "Center", "Church", "Commercial", "DenseResidential", "Desert", "Farmland", "Forest", "Industrial", "Meadow", "MediumResidential", "Mountain", "Park", "Parking", "Playground", "Pond", "Port", "RailwayStation", "Resort", "River", "School", "SparseResidential", "Square", "Stadium", "StorageTanks", "Viaduct"]


# ---- the class palette


def test_every_aid_class_has_its_own_fixed_colour():
    colours = class_colors(AID_CLASSES)
    assert all(class_color(name) == AID_COLORS[name.lower()] for name in AID_CLASSES)
    assert len(set(colours)) == 30


@pytest.mark.parametrize(
    "names, test",
    [
        (["River", "Pond", "Port", "Water", "lake_shore"], lambda r, g, b: b > r and b > 0.8 * g),  # water blue
        (["Forest", "Meadow", "Farmland", "Park", "orchard"], lambda r, g, b: g > r and g > b),  # vegetation green
        (["DenseResidential", "MediumResidential", "Residential"], lambda r, g, b: r > 1.5 * g and r > 1.5 * b),  # built-up red
        (["BareLand", "Desert"], lambda r, g, b: r > g > b and r > 180),  # bare land tan
    ],
    ids=["water", "vegetation", "residential", "bare land"],
)
def test_colours_mean_something(names, test):
    for name in names:
        assert test(*class_color(name)), (name, class_color(name))


def test_colours_do_not_depend_on_class_order_and_unknown_names_are_stable():
    assert class_colors(["Water", "Forest"]) == class_colors(["Forest", "Water"])[::-1]
    assert class_color("StorageTank") == class_color("storage_tanks".replace("_", "")) or class_color("StorageTank") == AID_COLORS["storagetank"]
    assert class_color("Glacier") == class_color("glacier") == class_color("Glacier")
    assert class_color("Glacier") != class_color("Vineyard-x-unknown")


# ---- raster styles, read back by QGIS


def _raster(path, bands, values):
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), 40, 30, bands, gdal.GDT_Float32)
    dataset.SetGeoTransform((500000.0, 2.0, 0.0, 5600000.0, 0.0, -2.0))
    for band in range(bands):
        dataset.GetRasterBand(band + 1).WriteArray(values(band))
        dataset.GetRasterBand(band + 1).SetDescription(f"rank {band + 1}")
    dataset = None
    return str(path)


def _switch_symbology_band(layer, band):
    """Pick `band` in the Symbology panel's band box, as a user does; the renderer it then makes."""
    from qgis.gui import QgsSingleBandPseudoColorRendererWidget
    from qgis.PyQt.QtWidgets import QComboBox

    widget = QgsSingleBandPseudoColorRendererWidget(layer, layer.extent())
    widget.setFromRenderer(layer.renderer())
    box = next(combo for combo in widget.findChildren(QComboBox) if combo.objectName() == "mBandComboBox")
    box.setCurrentIndex(band - 1)
    return widget.renderer()


def band_of(renderer):
    """The band a single-band renderer draws (inputBand() since QGIS 3.38 deprecated band())."""
    return renderer.inputBand() if hasattr(renderer, "inputBand") else renderer.band()


def _colours(renderer):
    return [(round(item.value, 12), item.color.getRgb()) for item in renderer.shader().rasterShaderFunction().colorRampItemList()]


def test_every_shap_band_is_drawn_on_one_symmetric_ramp_transparent_at_zero(qgis_app, tmp_path):
    from qgis.core import QgsRasterLayer

    from aid_xai_plugin.styling import style_shap_raster

    path = _raster(tmp_path / "shap.tif", 3, lambda band: np.random.default_rng(band).normal(0, 10.0 ** -(band + 2), (30, 40)).astype(np.float32))
    qml = style_shap_raster(path, 5e-3, "logit")
    assert 'type="gradient"' in open(qml).read()  # the ramp Symbology shows, saved with the style
    layer = QgsRasterLayer(path, "shap", "gdal")
    renderer = layer.renderer()
    assert renderer.type() == "singlebandpseudocolor" and band_of(renderer) == 1
    assert (renderer.classificationMin(), renderer.classificationMax()) == (-5e-3, 5e-3)
    shader = renderer.shader().rasterShaderFunction()
    assert shader.sourceColorRamp() is not None and shader.sourceColorRamp().type() == "gradient"
    items = shader.colorRampItemList()
    assert [item.value for item in items] == [-item.value for item in reversed(items)]  # a symmetric ramp: exact negatives
    assert "logit" in items[-1].label and "pushes the class up" in items[-1].label
    ok, *top = shader.shade(5e-3)
    ok_low, *bottom = shader.shade(-5e-3)
    ok_zero, *zero = shader.shade(0.0)
    assert ok and ok_low and ok_zero
    assert top[0] > top[2] and bottom[2] > bottom[0]  # red up, blue down
    assert zero[3] == 0 and shader.shade(1e-7)[4] == 0  # a 1e-7 map stays transparent beside 5e-3
    for band in (2, 3):
        switched = _switch_symbology_band(layer, band)
        assert band_of(switched) == band and switched.type() == "singlebandpseudocolor"
        assert (switched.classificationMin(), switched.classificationMax()) == (-5e-3, 5e-3)
        assert _colours(switched) == _colours(renderer)
    assert [layer.bandName(band) for band in (1, 2, 3)] == ["Band 1: rank 1", "Band 2: rank 2", "Band 3: rank 3"]


def test_probability_raster_is_a_zero_to_one_ramp_per_class_not_an_rgb_composite(qgis_app, tmp_path):
    from qgis.core import QgsRasterLayer

    from aid_xai_plugin.styling import style_probability_raster

    path = _raster(tmp_path / "probabilities.tif", 4, lambda band: np.full((30, 40), 0.25, np.float32))
    style_probability_raster(path, ["Forest", "River", "Desert", "Port"])
    layer = QgsRasterLayer(path, "p", "gdal")
    renderer = layer.renderer()
    assert renderer.type() == "singlebandpseudocolor"
    assert (renderer.classificationMin(), renderer.classificationMax()) == (0.0, 1.0)
    assert renderer.shader().rasterShaderFunction().shade(0.0)[4] == 0  # unlikely = transparent
    switched = _switch_symbology_band(layer, 3)
    assert (band_of(switched), switched.classificationMin(), switched.classificationMax()) == (3, 0.0, 1.0)


def test_class_raster_uses_the_class_palette(qgis_app, tmp_path):
    from qgis.core import QgsRasterLayer

    from aid_xai_plugin.styling import style_class_raster

    path = _raster(tmp_path / "classes.tif", 1, lambda band: np.zeros((30, 40), np.float32))
    names = ["River", "Forest", "BareLand"]
    style_class_raster(path, names)
    layer = QgsRasterLayer(path, "c", "gdal")  # held: the renderer belongs to it
    renderer = layer.renderer()
    assert renderer.type() == "paletted"
    assert [(c.label, c.color.getRgb()[:3]) for c in renderer.classes()] == [(name, class_color(name)) for name in names]


# ---- vector styles: outlines and labels, never a fill over the maps


def _polygons(path, rows):
    """A GeoPackage of tile outlines with rows (tile_id, rank, class_name, probability, band_group)."""
    from osgeo import ogr, osr

    dataset = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    layer = dataset.CreateLayer("tiles", srs, ogr.wkbPolygon)
    fields = (("tile_id", ogr.OFTInteger), ("rank", ogr.OFTInteger), ("class_name", ogr.OFTString), ("probability", ogr.OFTReal), ("band_group", ogr.OFTString))
    for name, kind in fields:
        layer.CreateField(ogr.FieldDefn(name, kind))
    for tile_id, *values in rows:
        feature = ogr.Feature(layer.GetLayerDefn())
        for (field, _), value in zip(fields, (tile_id, *values)):
            feature.SetField(field, value)
        x = 500000.0 + 128 * tile_id
        feature.SetGeometry(ogr.CreateGeometryFromWkt(f"POLYGON(({x} 5600000,{x + 128} 5600000,{x + 128} 5599872,{x} 5599872,{x} 5600000))"))
        layer.CreateFeature(feature)
    dataset = None
    return str(path)


@pytest.mark.parametrize("table", ["tiles", "explained", "by band group"])
def test_tile_tables_are_outlines_with_labels(qgis_app, tmp_path, table):
    from qgis.core import QgsExpressionContext, QgsExpressionContextUtils, QgsRenderContext, QgsVectorLayer

    from aid_xai_plugin.styling import style_explained_tile_table, style_tile_layer

    if table == "by band group":  # a row per tile, rank and group: the RGB rows come first
        rows = [(0, 1, "Forest", 0.8, "RGB"), (0, 1, "Forest", 0.8, "NIR"), (1, 1, "River", 0.6, "RGB"), (1, 2, "Forest", 0.3, "RGB")]
    else:
        rows = [(0, 1, "Forest", 0.8, "all bands"), (0, 2, "River", 0.15, "all bands"), (1, 1, "River", 0.6, "all bands"), (1, 2, "Forest", 0.3, "all bands")]
    path = _polygons(tmp_path / f"{table}.gpkg", rows)
    names = ["Forest", "River"]
    if table == "tiles":
        style_tile_layer(path, names)
    else:
        style_explained_tile_table(path, names, ["RGB", "NIR"] if table == "by band group" else None)
    layer = QgsVectorLayer(path, table, "ogr")
    assert layer.labelsEnabled() and layer.labeling() is not None
    renderer = layer.renderer()
    assert renderer.type() == "categorizedSymbol"
    for category in renderer.categories():
        fill = category.symbol().symbolLayer(0)
        assert fill.brushStyle() == 0 or fill.fillColor().alpha() == 0  # Qt.NoBrush, or a see-through fill
        assert fill.strokeColor().getRgb()[:3] == class_color(category.value())
    context = QgsRenderContext()
    context.setExpressionContext(QgsExpressionContext(QgsExpressionContextUtils.globalProjectLayerScopes(layer)))  # as a map render does
    renderer.startRender(context, layer.fields())
    drawn = []
    for feature in layer.getFeatures():
        context.expressionContext().setFeature(feature)  # as the layer renderer does before asking
        drawn.append(bool(renderer.symbolForFeature(feature, context)))
    renderer.stopRender(context)
    # the explained table has a row per tile, rank (and band group): each tile is drawn once, by its rank-1 row (of the first group)
    assert drawn == ([True] * 4 if table == "tiles" else [True, False, True, False])
