"""Training images as the model sees them (`preprocess.load_image_file`): TIFFs through GDAL with
every band but alpha (R, G, B, NIR chips train as 4 bands, whatever Pillow's version makes of extra
samples), PNG/JPEG and single-band TIFFs as RGB, anything not 8-bit refused by name."""

import numpy as np
import pytest
from osgeo import gdal

from aid_xai_plugin.core.common.errors import AidXaiError
from aid_xai_plugin.core.ml.preprocess import load_image_file

SIZE = 16


def write_tiff(path, bands, options=(), data_type=None, palette=None):
    """A GTiff of `bands` (C×H×W) with creation `options` and an optional palette."""
    data_type = data_type or gdal.GDT_Byte
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), SIZE, SIZE, len(bands), data_type, list(options))
    if palette is not None:  # before any pixel is written: GDAL ≥ 3.13 can't change the photometric tag afterwards
        table = gdal.ColorTable()
        for index, colour in enumerate(palette):
            table.SetColorEntry(index, tuple(int(value) for value in colour) + (255,))
        dataset.GetRasterBand(1).SetColorTable(table)
    for number, band in enumerate(bands, start=1):
        dataset.GetRasterBand(number).WriteArray(band)
    dataset = None
    return str(path)


@pytest.fixture()
def bands():
    return np.random.default_rng(0).integers(0, 256, (5, SIZE, SIZE), dtype=np.uint8)


def as_model_input(bands_chw):
    return bands_chw.transpose(1, 2, 0).astype(np.float32) / np.float32(255.0)


@pytest.mark.parametrize(
    "options",
    [
        ["PHOTOMETRIC=RGB", "ALPHA=UNSPECIFIED"],  # the synthetic NIR scenes: Pillow 9 reads RGBX, Pillow 12 drops band 4
        ["PHOTOMETRIC=MINISBLACK"],  # a GIS export of 4 bands: Pillow cannot open it
    ],
)
def test_a_four_band_tiff_trains_as_four_bands(tmp_path, bands, options):
    path = write_tiff(tmp_path / "chip.tif", bands[:4], options)
    np.testing.assert_array_equal(load_image_file(path, SIZE), as_model_input(bands[:4]))


def test_five_bands_stay_five_and_an_alpha_band_is_dropped(tmp_path, bands):
    np.testing.assert_array_equal(load_image_file(write_tiff(tmp_path / "five.tif", bands, ["PHOTOMETRIC=MINISBLACK"]), SIZE), as_model_input(bands))
    rgba = write_tiff(tmp_path / "rgba.tif", bands[:4], ["PHOTOMETRIC=RGB", "ALPHA=YES"])
    np.testing.assert_array_equal(load_image_file(rgba, SIZE), as_model_input(bands[:3]))


def test_an_rgb_tiff_reads_as_pillow_reads_it_and_single_bands_become_rgb(tmp_path, bands):
    from PIL import Image

    rgb = write_tiff(tmp_path / "rgb.tif", bands[:3], ["PHOTOMETRIC=RGB", "COMPRESS=DEFLATE"])
    with Image.open(rgb) as image:
        np.testing.assert_array_equal(load_image_file(rgb, SIZE), np.asarray(image.convert("RGB"), dtype=np.float32) / np.float32(255.0))
    grey = write_tiff(tmp_path / "grey.tif", bands[:1])
    np.testing.assert_array_equal(load_image_file(grey, SIZE), as_model_input(np.repeat(bands[:1], 3, axis=0)))
    colours = np.random.default_rng(1).integers(0, 256, (256, 3), dtype=np.uint8)
    paletted = write_tiff(tmp_path / "palette.tif", bands[:1], palette=colours)
    np.testing.assert_array_equal(load_image_file(paletted, SIZE), colours[bands[0]].astype(np.float32) / np.float32(255.0))


def test_images_that_are_not_8_bit_or_not_images_are_refused_by_name(tmp_path, bands):
    sixteen = write_tiff(tmp_path / "sixteen.tif", bands[:3].astype(np.uint16) * 200, data_type=gdal.GDT_UInt16)
    with pytest.raises(AidXaiError, match="sixteen.tif' is not 8-bit"):
        load_image_file(sixteen, SIZE)
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00 not a tiff")
    with pytest.raises(AidXaiError, match="broken.tif' could not be read"):
        load_image_file(str(broken), SIZE)
