"""Image → model-input conversion shared by training, classification and explanation.

Training, the raster path and the explainer must feed the model identical arrays, so all of them
resize and scale here: tiles are float32 in [0, 1], channels last; `resize_to_input` uses area
averaging when shrinking (no aliasing of roofs and stripes) and bilinear when enlarging.
"""

import os

import numpy as np


def resize_to_input(image_hwc, size):
    """Resize an H×W×C float32 image to size×size×C (area when shrinking, bilinear when enlarging)."""
    import cv2

    height, width = image_hwc.shape[:2]
    if (height, width) == (size, size):
        return np.ascontiguousarray(image_hwc, dtype=np.float32)
    shrinking = height * width > size * size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = cv2.resize(np.ascontiguousarray(image_hwc, dtype=np.float32), (size, size), interpolation=interpolation)
    return resized.reshape(size, size, image_hwc.shape[2])


def uint8_to_unit(image_hwc):
    """8-bit image → float32 in [0, 1]."""
    return np.asarray(image_hwc, dtype=np.float32) / np.float32(255.0)


def load_image_file(path, size):
    """An image file (PNG/JPEG/TIFF, 8-bit) as the model sees it: size×size×C float32 in [0, 1].

    PNG and JPEG become RGB (alpha dropped). TIFFs are read with GDAL, band by band, as the raster
    path reads them: every band but an alpha band, so a chip of R, G, B and NIR trains as 4 bands
    (Pillow drops or refuses extra TIFF samples, depending on its version); a single-band TIFF becomes
    RGB as a PNG does (a palette's colours, or the grey value three times).
    """
    if os.path.splitext(path)[1].lower() in (".tif", ".tiff"):
        return resize_to_input(uint8_to_unit(_tiff_bands(path)), size)
    from PIL import Image

    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"))
    return resize_to_input(uint8_to_unit(array), size)


def _tiff_bands(path):
    """H×W×C uint8 array of a TIFF's bands, without an alpha band."""
    from osgeo import gdal

    from ..common.errors import AidXaiError
    from ..common.gdal_context import gdal_error_details, gdal_exceptions

    with gdal_exceptions():
        try:
            dataset = gdal.Open(path)
            bands = [dataset.GetRasterBand(number) for number in range(1, dataset.RasterCount + 1)]
            kept = [band for band in bands if band.GetColorInterpretation() != gdal.GCI_AlphaBand]
            if any(band.DataType != gdal.GDT_Byte for band in kept):
                raise AidXaiError(f"Image '{path}' is not 8-bit; training images must be 8-bit (e.g. gdal_translate -ot Byte -scale).")
            array = np.stack([band.ReadAsArray() for band in kept], axis=-1)
            if len(kept) == 1:
                palette = kept[0].GetColorTable()
                if palette is None:
                    return np.repeat(array, 3, axis=-1)
                colours = np.array([palette.GetColorEntry(index)[:3] for index in range(palette.GetCount())], dtype=np.uint8)
                return colours[array[..., 0]]
            return array
        except RuntimeError as error:
            raise AidXaiError(f"Image '{path}' could not be read: {gdal_error_details(error)}.") from error
