"""Procedural aerial-like scenes with known labels, for tests, the demo and first experiments.

Each class has a distinct spatial structure (stripes, roof blocks, water, tree texture, one storage
tank on bare ground), so a small CNN learns them in seconds; "StorageTank" differs from "BareLand"
only by one object, which makes the explanations checkable (the object must carry the evidence).
Everything is reproducible from a seed. Numpy only; files are written with GDAL.

An optional 4th band, near-infrared (NIR_MODES), lets a model trained on 4 bands use NIR evidence and
tests check explanations per band group. Each class's palette carries a NIR value beside its RGB, so
NIR follows the scene's structure (stripes, roofs, the tank) from the same draws; the RGB of a scene
is the same with and without NIR.
"""

import os

import numpy as np

from ..common.errors import AidXaiError
from ..common.gdal_context import raising_gdal_errors

SYNTHETIC_CLASSES = ("BareLand", "Farmland", "Forest", "Residential", "StorageTank", "Water")
# none: RGB only. physical: vegetation bright, water dark, the rest in between, so a model can learn
# NIR evidence. noise: class-independent values over the same range, so NIR carries nothing.
NIR_MODES = ("none", "physical", "noise")
# GDAL's default makes a 4th byte band alpha; NIR is data
_FOUR_BAND_TIFF_OPTIONS = ["PHOTOMETRIC=RGB", "ALPHA=UNSPECIFIED"]


def _smooth_noise(rng, size, cells):
    """Value noise: random values on a coarse grid, bilinearly upsampled to size×size."""
    grid = rng.random((cells + 1, cells + 1))
    axis = np.linspace(0, cells, size, endpoint=False)
    i = axis.astype(int)
    f = axis - i
    top = grid[i][:, i] * (1 - f)[None, :] + grid[i][:, i + 1] * f[None, :]
    bottom = grid[i + 1][:, i] * (1 - f)[None, :] + grid[i + 1][:, i + 1] * f[None, :]
    return top * (1 - f)[:, None] + bottom * f[:, None]


def _bare_ground(rng, size):
    tone = 0.6 * _smooth_noise(rng, size, 4) + 0.4 * rng.random((size, size))
    low, high = np.array([150, 128, 96, 100]), np.array([196, 172, 132, 140])
    return low + tone[..., None] * (high - low)


def _farmland(rng, size):
    period = rng.integers(max(4, size // 16), max(6, size // 8))
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size]
    phase = (xx * np.cos(angle) + yy * np.sin(angle)) / period
    stripes = (np.floor(phase) % 2)[..., None]
    green, brown = np.array([96, 140, 60, 200]), np.array([170, 150, 90, 120])
    return stripes * green + (1 - stripes) * brown + rng.normal(0, 6, (size, size, 1))


def _forest(rng, size):
    canopy = 0.5 * _smooth_noise(rng, size, max(2, size // 6)) + 0.5 * rng.random((size, size))
    dark, light = np.array([20, 60, 25, 170]), np.array([60, 110, 50, 230])
    return dark + canopy[..., None] * (light - dark)


def _residential(rng, size):
    street = np.array([110, 110, 115, 80])
    image = np.broadcast_to(street, (size, size, len(street))).astype(float).copy()
    block = max(6, size // 6)
    gap = max(2, block // 4)
    offset = rng.integers(0, block)
    for top in range(-offset, size, block):
        for left in range(-offset, size, block):
            roof = rng.choice([[180, 70, 60, 110], [200, 200, 195, 120], [150, 90, 70, 90]])
            image[max(top + gap, 0) : max(top + block, 0), max(left + gap, 0) : max(left + block, 0)] = roof
    return image + rng.normal(0, 5, (size, size, 1))


def _water(rng, size):
    waves = _smooth_noise(rng, size, 3)
    deep, shallow = np.array([20, 50, 100, 12]), np.array([40, 90, 140, 28])
    return deep + waves[..., None] * (shallow - deep) + rng.normal(0, 2, (size, size, 1))


def _storage_tank(rng, size):
    image = _bare_ground(rng, size)
    radius = rng.uniform(0.14, 0.2) * size
    cy, cx = rng.uniform(radius + 1, size - radius - 1, 2)
    yy, xx = np.mgrid[0:size, 0:size]
    distance = np.hypot(yy - cy, xx - cx)
    shadow = np.hypot(yy - cy - 0.08 * size, xx - cx - 0.08 * size) < radius
    image[shadow] = [60, 55, 50, 50]
    image[distance < radius] = [225, 228, 230, 150]
    image[(distance < radius) & (distance > 0.8 * radius)] = [150, 155, 160, 130]
    return image


# Each draws size×size×4 floats: RGB, then physical NIR from the same arrays (palettes are R, G, B, NIR).
_RENDERERS = {
    "BareLand": _bare_ground,
    "Farmland": _farmland,
    "Forest": _forest,
    "Residential": _residential,
    "StorageTank": _storage_tank,
    "Water": _water,
}


def _noise_nir(rng, size):
    """NIR unrelated to the class: a level drawn per scene over physical NIR's range (20–230) with a
    gentle smooth variation, so that neither its level nor its pattern tells one class from another
    (and a hidden NIR band, blurred or a mid-grey constant, still looks like one the model was
    trained on)."""
    return rng.uniform(35, 215) + 30 * (_smooth_noise(rng, size, 4) - 0.5)


def _check_nir_mode(nir):
    if nir not in NIR_MODES:
        raise AidXaiError(f"Unknown NIR band mode '{nir}'; choose one of {', '.join(NIR_MODES)}.")


def render_scene(class_name, size, rng, nir="none", nir_rng=None):
    """One size×size×3 uint8 scene of `class_name` (one of SYNTHETIC_CLASSES), ×4 with a NIR band.

    `rng` draws the same in every mode and "noise" draws from `nir_rng` alone, so a sequence of
    scenes has the same RGB with and without NIR.
    """
    _check_nir_mode(nir)
    if nir == "noise" and nir_rng is None:
        raise TypeError("nir='noise' needs nir_rng, a generator of its own, so that rng draws only the scene")
    image = _RENDERERS[class_name](rng, size)
    if nir == "none":
        image = image[..., :3]
    elif nir == "noise":
        image[..., 3] = _noise_nir(nir_rng, size)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _nir_rng(seed):
    """The NIR noise's own stream, so the scenes' generator draws exactly what it draws without NIR."""
    return np.random.default_rng([seed, 1])


def _write_scene(dataset, image, left=0, top=0):
    for band in range(image.shape[2]):
        dataset.GetRasterBand(band + 1).WriteArray(image[..., band], left, top)


def _label_nir_band(dataset):
    """Band 4, where there is one, is named NIR and is data of no colour (not alpha)."""
    from osgeo import gdal

    if dataset.RasterCount == 4:
        band = dataset.GetRasterBand(4)
        band.SetColorInterpretation(gdal.GCI_Undefined)
        band.SetDescription("NIR")


@raising_gdal_errors
def make_scene_folder(folder, per_class=40, size=64, seed=0, classes=SYNTHETIC_CLASSES, progress=None, nir="none"):
    """Write a folder-per-class dataset (AID's layout) of PNG scenes; returns the file count.

    With a NIR band (`nir`, one of NIR_MODES) the scenes are 4-band GeoTIFFs: a 4-band PNG reads as RGBA.
    """
    from osgeo import gdal

    _check_nir_mode(nir)
    rng, nir_rng = np.random.default_rng(seed), _nir_rng(seed)
    if nir == "none":
        driver, extension, options = gdal.GetDriverByName("PNG"), ".png", []
    else:
        driver, extension, options = gdal.GetDriverByName("GTiff"), ".tif", ["COMPRESS=DEFLATE", *_FOUR_BAND_TIFF_OPTIONS]
    total = len(classes) * per_class
    for class_index, class_name in enumerate(classes):
        class_folder = os.path.join(folder, class_name)
        os.makedirs(class_folder, exist_ok=True)
        for n in range(per_class):
            image = render_scene(class_name, size, rng, nir, nir_rng)
            memory = gdal.GetDriverByName("MEM").Create("", size, size, image.shape[2], gdal.GDT_Byte)
            _write_scene(memory, image)
            _label_nir_band(memory)
            driver.CreateCopy(os.path.join(class_folder, f"{class_name}_{n + 1}{extension}"), memory, options=options)
            if progress is not None:
                progress.check_cancel()
                progress.fraction((class_index * per_class + n + 1) / total)
    return total


@raising_gdal_errors
def make_scene_mosaic(path, rows=4, cols=6, scene_px=64, pixel_size=2.0, origin=(500000.0, 5600000.0), epsg=32633, seed=0, classes=SYNTHETIC_CLASSES, nir="none"):
    """Write a georeferenced GeoTIFF mosaic of rows×cols synthetic scenes (north-up, UTM by default),
    RGB, or RGB + NIR with `nir` (one of NIR_MODES).

    Returns the ground truth: a list of dicts with row, col, class_name and the scene's pixel window
    and map bounds, so tests and the demo know exactly what lies where.
    """
    from osgeo import gdal, osr

    _check_nir_mode(nir)
    rng, nir_rng = np.random.default_rng(seed), _nir_rng(seed)
    labels = [classes[i % len(classes)] for i in rng.permutation(rows * cols)]
    bands, options = (3, []) if nir == "none" else (4, _FOUR_BAND_TIFF_OPTIONS)
    driver = gdal.GetDriverByName("GTiff")
    dataset = driver.Create(path, cols * scene_px, rows * scene_px, bands, gdal.GDT_Byte, ["COMPRESS=DEFLATE", "TILED=YES", *options])
    x0, y0 = origin
    dataset.SetGeoTransform((x0, pixel_size, 0.0, y0, 0.0, -pixel_size))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    dataset.SetProjection(srs.ExportToWkt())
    truth = []
    for index, class_name in enumerate(labels):
        row, col = divmod(index, cols)
        _write_scene(dataset, render_scene(class_name, scene_px, rng, nir, nir_rng), col * scene_px, row * scene_px)
        left, top = x0 + col * scene_px * pixel_size, y0 - row * scene_px * pixel_size
        truth.append(
            {
                "row": row,
                "col": col,
                "class_name": class_name,
                "window": (col * scene_px, row * scene_px, scene_px, scene_px),
                "bounds": (left, top - scene_px * pixel_size, left + scene_px * pixel_size, top),
            }
        )
    for band in range(3):
        dataset.GetRasterBand(band + 1).SetColorInterpretation(gdal.GCI_RedBand + band)
    _label_nir_band(dataset)
    dataset.FlushCache()
    dataset = None
    return truth
