"""Image → model-input conversion shared by training, classification and explanation.

Training, the raster path and the explainer must feed the model identical arrays, so all of them
resize and scale here: tiles are float32 in [0, 1], channels last; `resize_to_input` uses area
averaging when shrinking (no aliasing of roofs and stripes) and bilinear when enlarging.
"""

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

    Images become RGB (alpha dropped), except a TIFF of RGB plus one band that is not alpha (e.g. NIR),
    which Pillow opens as "RGBX": it keeps all four bands, as the raster path reads them.
    """
    from PIL import Image

    with Image.open(path) as image:
        array = np.asarray(image if image.mode == "RGBX" else image.convert("RGB"))
    return resize_to_input(uint8_to_unit(array), size)
