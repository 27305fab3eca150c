"""The geo layer on its own: raster reading and scaling, and the sinks' commit-or-remove contract."""

import os

import numpy as np
import pytest
from helpers import create_georeferenced_tiff
from osgeo import gdal

from aid_xai_plugin.core.common.errors import AidXaiError
from aid_xai_plugin.core.common.gdal_context import gdal_exceptions
from aid_xai_plugin.core.geo.raster import band_scaling, open_raster, read_tile
from aid_xai_plugin.core.geo.vector import PolygonWriter
from aid_xai_plugin.core.geo.writers import GeoTiffSink

GEOTRANSFORM = (500000.0, 2.0, 0.0, 5600000.0, 0.0, -2.0)


def write_raster(path, bands_hw, data_type=gdal.GDT_Byte, nodata=None):
    dataset = create_georeferenced_tiff(path, bands_hw.shape[2], bands_hw.shape[1], bands_hw.shape[0], GEOTRANSFORM, 32633, data_type)
    for index, values in enumerate(bands_hw):
        band = dataset.GetRasterBand(index + 1)
        if nodata is not None:
            band.SetNoDataValue(nodata)
        band.WriteArray(values)
    dataset = None
    return open_raster(str(path))


def test_eight_bit_auto_scaling_divides_by_255(tmp_path):
    dataset = write_raster(tmp_path / "rgb.tif", np.full((3, 4, 4), 51, np.uint8))
    scaling = band_scaling(dataset, [1, 2, 3], "auto", (0, 0, 4, 4))
    image, valid = read_tile(dataset, [1, 2, 3], (0, 0, 4, 4), scaling)
    assert scaling.description == "8-bit/255" and valid.all()
    np.testing.assert_array_equal(image, np.float32(0.2))  # 51 / 255 = 0.2, one correctly rounded division


def test_sixteen_bit_percentile_and_minmax_scaling(tmp_path):
    values = np.arange(100, dtype=np.uint16).reshape(1, 10, 10) * 100
    dataset = write_raster(tmp_path / "u16.tif", values, gdal.GDT_UInt16)
    percentile = band_scaling(dataset, [1], "percentile(0,100)", (0, 0, 10, 10))
    np.testing.assert_array_equal(percentile.offsets, [0.0])  # the 0th and 100th percentiles: data values
    np.testing.assert_array_equal(percentile.spans, [9900.0])
    minmax = band_scaling(dataset, [1], "minmax(0,4950)", (0, 0, 10, 10))
    image, _ = read_tile(dataset, [1], (0, 0, 10, 10), minmax)
    assert image[0, 0, 0] == 0.0 and image[-1, -1, 0] == 1.0 and image[4, 9, 0] == np.float32(4900) / np.float32(4950)
    with pytest.raises(AidXaiError, match="SCALING_HIGH"):
        band_scaling(dataset, [1], "minmax(10,5)", (0, 0, 10, 10))
    with pytest.raises(AidXaiError, match="not understood"):
        band_scaling(dataset, [1], "gamma(2)", (0, 0, 10, 10))


def test_nodata_and_pixels_outside_the_raster_are_invalid_and_zero(tmp_path):
    values = np.full((1, 4, 4), 200, np.uint8)
    values[0, 0, 0] = 0
    dataset = write_raster(tmp_path / "nodata.tif", values, nodata=0)
    scaling = band_scaling(dataset, [1], "auto", (0, 0, 4, 4))
    image, valid = read_tile(dataset, [1], (-1, 0, 4, 4), scaling)  # one column left of the raster
    assert not valid[:, 0].any() and not valid[0, 1] and valid[1:, 1:].all()
    assert (image[~valid] == 0).all()


def test_geotiff_sink_appears_only_when_the_run_completes(tmp_path):
    path = str(tmp_path / "out.tif")
    with gdal_exceptions(), GeoTiffSink(path, 4, 3, 2, gdal.GDT_Float32, GEOTRANSFORM, "", -1.0, ["a", "b"], {"KEY": 1}) as sink:
        sink.write(np.ones((2, 1, 4), np.float32), 0, 2)
        assert os.listdir(tmp_path) != ["out.tif"]  # still under a temporary name
    written = gdal.Open(path)
    assert written.GetRasterBand(2).GetDescription() == "b" and written.GetMetadata()["KEY"] == "1"
    np.testing.assert_array_equal(written.ReadAsArray()[:, 2], 1.0)
    np.testing.assert_array_equal(written.ReadAsArray()[:, :2], -1.0)
    assert os.listdir(tmp_path) == ["out.tif"]


@pytest.mark.parametrize("name", ["out.tif", "tiles.gpkg", "tiles.geojson", "tiles.shp"])
def test_a_failed_run_leaves_nothing_from_its_sinks(tmp_path, name):
    path = str(tmp_path / name)
    with pytest.raises(KeyboardInterrupt), gdal_exceptions():
        if name.endswith(".tif"):
            with GeoTiffSink(path, 4, 4, 1, gdal.GDT_Byte, GEOTRANSFORM, "", 0) as sink:
                sink.write(np.ones((1, 4, 4), np.uint8), 0, 0)
                raise KeyboardInterrupt
        with PolygonWriter(path, "EPSG:32633", [("id", int), ("name", str)]) as table:
            table.add([1, "a"], (0.0, 0.0, 1.0, 1.0))
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_other_raster_formats_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(AidXaiError, match=r"give a \.tif file name"):
        GeoTiffSink(str(tmp_path / "out.png"), 4, 4, 1, gdal.GDT_Byte, GEOTRANSFORM, "")
    with pytest.raises(AidXaiError, match=r"\.gpkg, \.geojson or \.shp"):
        PolygonWriter(str(tmp_path / "tiles.kml"), "EPSG:32633", [("id", int)])
    assert os.listdir(tmp_path) == []
