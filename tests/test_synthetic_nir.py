"""The synthetic scenes' optional near-infrared band: RGB unchanged in every mode, physical NIR that
separates the classes as a sensor's would, noise NIR that does not, and the files (scene folder,
mosaic, both Processing algorithms) read back with GDAL and the training loader."""

import glob
import os

import numpy as np
import pytest
from osgeo import gdal

from aid_xai_plugin.core.common.errors import AidXaiError
from aid_xai_plugin.core.data.synthetic import NIR_MODES, SYNTHETIC_CLASSES, make_scene_folder, make_scene_mosaic, render_scene
from aid_xai_plugin.core.ml.datasets import image_folder


def scenes(nir, count, size=32, seed=0):
    """{class: [count scenes]}, drawn as the writers draw them: one generator for the scenes, one for NIR."""
    rng, nir_rng = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    return {name: [render_scene(name, size, rng, nir, nir_rng) for _ in range(count)] for name in SYNTHETIC_CLASSES}


def class_mean_nir(nir, count):
    return {name: float(np.mean([scene[..., 3].mean() for scene in drawn])) for name, drawn in scenes(nir, count).items()}


def read_bands(path):
    """(bands × rows × cols array, per band (colour interpretation name, description)) of a raster file."""
    dataset = gdal.Open(path)
    bands = [dataset.GetRasterBand(index + 1) for index in range(dataset.RasterCount)]
    labels = [(gdal.GetColorInterpretationName(band.GetColorInterpretation()), band.GetDescription()) for band in bands]
    return dataset.ReadAsArray(), labels


@pytest.mark.parametrize("nir", ["physical", "noise"])
def test_the_rgb_is_the_same_with_a_nir_band(nir):
    """Scene after scene: NIR draws from its own generator, so later scenes' RGB does not shift either."""
    without, with_nir = scenes("none", 3), scenes(nir, 3)
    for name in SYNTHETIC_CLASSES:
        for plain, four_band in zip(without[name], with_nir[name]):
            assert four_band.shape == (32, 32, 4) and four_band.dtype == np.uint8
            np.testing.assert_array_equal(four_band[..., :3], plain)


def test_physical_nir_is_bright_on_vegetation_and_dark_on_water():
    means = class_mean_nir("physical", 20)
    assert means["Forest"] > 150 and means["Water"] < 40
    assert means["Forest"] > means["Farmland"] > means["BareLand"] > means["Residential"] > means["Water"]
    assert 100 <= means["BareLand"] <= 140 and 70 <= means["Residential"] <= 120


def test_physical_nir_follows_the_scene_structure():
    """Farmland's crop stripes (green: G > R) are bright in NIR and its soil stripes mid; the tank is
    brighter than the bare ground around it (NIR from the same arrays as the RGB, not a class constant)."""
    drawn = scenes("physical", 10)
    for scene in drawn["Farmland"]:
        scene = scene.astype(int)  # uint8 differences would wrap
        crop = scene[..., 1] > scene[..., 0]
        assert crop.any() and (~crop).any()
        assert scene[..., 3][crop].mean() > 180 and 100 < scene[..., 3][~crop].mean() < 140
    for scene in drawn["StorageTank"]:
        scene = scene.astype(int)
        tank_top = np.all(scene[..., :3] == [225, 228, 230], axis=-1)
        ground = scene[..., 0] > scene[..., 2] + 30  # bare ground is brown: R well above B
        assert tank_top.any() and ground.any()
        assert np.all(scene[..., 3][tank_top] == 150) and scene[..., 3][ground].max() <= 140


def test_noise_nir_does_not_separate_the_classes():
    """Every class mean within 30 of the others over 100 scenes, where physical ones spread over 150.
    Why 30: a scene's NIR level is uniform over 35–215 (standard deviation 180/√12 ≈ 52), so a class
    mean over 100 scenes varies by about 5.2 and the difference of two by about 7.4; 30 is 4 of those,
    while the class dependence of physical NIR is 150 or more."""
    noise, physical = class_mean_nir("noise", 100), class_mean_nir("physical", 40)
    assert max(noise.values()) - min(noise.values()) < 30, noise
    assert max(physical.values()) - min(physical.values()) > 150, physical
    values = np.concatenate([scene[..., 3].ravel() for drawn in scenes("noise", 5).values() for scene in drawn])
    assert values.min() >= 20 and values.max() <= 230 and np.percentile(values, 5) < 80 and np.percentile(values, 95) > 170


def test_scene_folder_with_nir_is_4_band_tiffs_that_training_reads_as_4_bands(tmp_path):
    plain, with_nir = str(tmp_path / "rgb"), str(tmp_path / "nir")
    make_scene_folder(plain, per_class=2, size=32, seed=4)
    assert make_scene_folder(with_nir, per_class=2, size=32, seed=4, nir="physical") == 12
    files = sorted(glob.glob(os.path.join(with_nir, "*", "*")))
    assert len(files) == 12 and all(path.endswith(".tif") for path in files)
    for path in files:
        bands, labels = read_bands(path)
        assert labels == [("Red", ""), ("Green", ""), ("Blue", ""), ("Undefined", "NIR")]
        assert gdal.Open(path).GetMetadata("IMAGE_STRUCTURE")["COMPRESSION"] == "DEFLATE"
        png = path.replace(with_nir, plain).replace(".tif", ".png")
        np.testing.assert_array_equal(bands[:3], gdal.Open(png).ReadAsArray())
    dataset = image_folder(with_nir, 32)
    assert dataset.classes == sorted(SYNTHETIC_CLASSES) and len(dataset) == 12
    for index in (0, 11):
        tensor, _ = dataset[index]
        assert tuple(tensor.shape) == (4, 32, 32)
        np.testing.assert_array_equal(tensor.numpy(), read_bands(dataset.samples[index][0])[0] / np.float32(255.0))
    assert tuple(image_folder(plain, 32)[0][0].shape) == (3, 32, 32)


def test_mosaic_with_nir_has_a_4th_band_named_nir_and_the_same_georeferencing(tmp_path):
    plain, with_nir = str(tmp_path / "rgb.tif"), str(tmp_path / "nir.tif")
    truth = make_scene_mosaic(plain, rows=2, cols=3, scene_px=32, seed=5)
    assert make_scene_mosaic(with_nir, rows=2, cols=3, scene_px=32, seed=5, nir="physical") == truth
    rgb, rgb_labels = read_bands(plain)
    four, labels = read_bands(with_nir)
    assert rgb_labels == [("Red", ""), ("Green", ""), ("Blue", "")]
    assert labels == rgb_labels + [("Undefined", "NIR")]
    np.testing.assert_array_equal(four[:3], rgb)
    first, second = gdal.Open(plain), gdal.Open(with_nir)
    assert second.GetGeoTransform() == first.GetGeoTransform() == (500000.0, 2.0, 0.0, 5600000.0, 0.0, -2.0)
    assert second.GetProjection() == first.GetProjection() and second.GetSpatialRef().GetAuthorityCode(None) == "32633"
    for scene in truth:  # each scene's NIR is its class's: the truth still says what lies where
        left, top, width, height = scene["window"]
        nir = four[3, top : top + height, left : left + width].mean()
        assert {"Forest": nir > 150, "Water": nir < 40}.get(scene["class_name"], 40 <= nir <= 180), scene


def test_processing_algorithms_write_the_chosen_nir_band(aid_xai_provider, tmp_path):
    import processing

    processing.run("aid_xai:synthetic_mosaic", {"ROWS": 1, "COLUMNS": 2, "SCENE_SIZE": 32, "NIR_BAND": "physical", "OUTPUT": str(tmp_path / "nir.tif"), "TRUTH": str(tmp_path / "t.gpkg")})
    processing.run("aid_xai:synthetic_mosaic", {"ROWS": 1, "COLUMNS": 2, "SCENE_SIZE": 32, "OUTPUT": str(tmp_path / "rgb.tif"), "TRUTH": str(tmp_path / "t2.gpkg")})
    four, labels = read_bands(str(tmp_path / "nir.tif"))
    rgb, _ = read_bands(str(tmp_path / "rgb.tif"))
    assert labels[3] == ("Undefined", "NIR") and rgb.shape[0] == 3
    np.testing.assert_array_equal(four[:3], rgb)
    results = processing.run("aid_xai:synthetic_scenes", {"PER_CLASS": 1, "SIZE": 32, "NIR_BAND": "noise", "OUTPUT": str(tmp_path / "scenes")})
    files = glob.glob(os.path.join(results["OUTPUT"], "*", "*"))
    assert len(files) == 6 and all(path.endswith(".tif") and read_bands(path)[0].shape == (4, 32, 32) for path in files)
    processing.run("aid_xai:synthetic_scenes", {"PER_CLASS": 1, "SIZE": 32, "OUTPUT": str(tmp_path / "default")})
    assert len(glob.glob(str(tmp_path / "default" / "*" / "*.png"))) == 6


@pytest.mark.parametrize("algorithm_id, output", [("aid_xai:synthetic_mosaic", "m.tif"), ("aid_xai:synthetic_scenes", "scenes")])
def test_an_unknown_nir_band_choice_is_a_clear_error(aid_xai_provider, tmp_path, algorithm_id, output):
    from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingException, QgsProcessingFeedback

    algorithm = QgsApplication.processingRegistry().createAlgorithmById(algorithm_id)
    parameters = {"NIR_BAND": "infrared", "OUTPUT": str(tmp_path / output)}
    with pytest.raises(QgsProcessingException, match="NIR_BAND must be one of none, physical, noise; got 'infrared'"):
        algorithm.processAlgorithm(parameters, QgsProcessingContext(), QgsProcessingFeedback())
    assert not os.path.exists(tmp_path / output)


def test_an_unknown_nir_mode_is_a_clear_error_and_writes_nothing(tmp_path):
    message = "Unknown NIR band mode 'infrared'; choose one of none, physical, noise"
    assert ", ".join(NIR_MODES) in message
    with pytest.raises(AidXaiError, match=message):
        render_scene("Forest", 32, np.random.default_rng(0), nir="infrared")
    with pytest.raises(AidXaiError, match=message):
        make_scene_folder(str(tmp_path / "scenes"), per_class=1, size=32, nir="infrared")
    with pytest.raises(AidXaiError, match=message):
        make_scene_mosaic(str(tmp_path / "m.tif"), rows=1, cols=1, scene_px=32, nir="infrared")
    assert os.listdir(tmp_path) == []
    with pytest.raises(TypeError, match="nir_rng"):
        render_scene("Forest", 32, np.random.default_rng(0), nir="noise")
