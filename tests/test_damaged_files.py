"""Damaged inputs made by the tests themselves: each ends in one clear line, never a traceback, a NaN
map or a file at an output path. Rasters and GeoPackages are truncated, bit-flipped, emptied or
misnamed; model files are bit-flipped, poisoned with NaN, or inconsistent with themselves or the raster."""

import json
import os

import numpy as np
import pytest
import torch
from helpers import _model_info, qgis_process_json, random_net, random_net_model_file, run_algorithm
from osgeo import gdal

from aid_xai_plugin.core.common.errors import AidXaiError
from aid_xai_plugin.core.data.synthetic import make_scene_mosaic
from aid_xai_plugin.core.geo.vector import write_polygons
from aid_xai_plugin.core.ml.model_file import save_model
from aid_xai_plugin.core.pipelines.classify import ClassifyOutputs, classify_raster
from aid_xai_plugin.core.pipelines.tiles import TilingOptions

SCENE = 64  # the synthetic model's input size


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("damaged") / "mosaic.tif")
    truth = make_scene_mosaic(path, rows=2, cols=3, scene_px=SCENE, pixel_size=2.0, seed=3)
    return path, truth


def deflate_tiled_copy(source, path, block=SCENE):
    """A tiled, DEFLATE-compressed GeoTIFF with `block`² blocks (one block per scene)."""
    gdal.Translate(path, source, creationOptions=["TILED=YES", "COMPRESS=DEFLATE", f"BLOCKXSIZE={block}", f"BLOCKYSIZE={block}"])
    return path


def corrupt_block(path, bx, by, band=1):
    """XOR the bytes of one compressed block (located by GDAL's TIFF metadata); returns its offset."""
    dataset = gdal.Open(path)
    offset = int(dataset.GetRasterBand(band).GetMetadataItem(f"BLOCK_OFFSET_{bx}_{by}", "TIFF"))
    size = int(dataset.GetRasterBand(band).GetMetadataItem(f"BLOCK_SIZE_{bx}_{by}", "TIFF"))
    dataset = None
    with open(path, "r+b") as stream:
        stream.seek(offset + 2)  # keep the zlib header: the damage is found while decoding
        data = bytearray(stream.read(size - 4))
        stream.seek(offset + 2)
        stream.write(bytes(b ^ 0x5A for b in data))
    return offset


def truncate(path, fraction):
    size = os.path.getsize(path)
    with open(path, "r+b") as stream:
        stream.truncate(int(size * fraction))


def flip_bytes(path, count=64, seed=0, start_fraction=0.2):
    rng = np.random.default_rng(seed)
    data = bytearray(open(path, "rb").read())
    start = int(len(data) * start_fraction)
    for position in rng.integers(start, len(data), count):
        data[position] ^= 0xFF
    open(path, "wb").write(bytes(data))


def one_line(message):
    assert "\n" not in message.strip() and "Traceback" not in message, message
    return message


def last_line(error):
    """processing.run() puts "Unable to execute algorithm" above the algorithm's (or QGIS's parameter
    check's) one-line message."""
    text = str(error)
    assert "Traceback" not in text, text
    return text.strip().splitlines()[-1]


def assert_nothing_written(folder, *names):
    for name in names:
        assert not os.path.exists(os.path.join(folder, name)), f"{name} was written"
    assert not [name for name in os.listdir(folder) if ".partial" in name], os.listdir(folder)


def core_classify(raster, model, folder):
    outputs = ClassifyOutputs(os.path.join(folder, "classes.tif"), os.path.join(folder, "probabilities.tif"), os.path.join(folder, "tiles.gpkg"))
    return classify_raster(raster, model, TilingOptions(), outputs, batch_size=4)


def clear_error_of_classify(raster, model, folder):
    with pytest.raises(AidXaiError) as raised:
        core_classify(raster, model, folder)
    assert_nothing_written(folder, "classes.tif", "probabilities.tif", "tiles.gpkg")
    return one_line(str(raised.value))


# --- the must-have: one damaged compressed block, through qgis_process --------------------------


def test_a_corrupt_compressed_block_names_the_file_and_window_through_qgis_process(mosaic, synthetic_model, tmp_path):
    raster = deflate_tiled_copy(mosaic[0], str(tmp_path / "corrupt.tif"))
    # QGIS itself reads the input layer's pixels for its renderer's statistics before the plugin runs,
    # and prints GDAL's errors raw when it does; with the statistics stored in a .aux.xml beside the file
    # it reads none, so every line below comes from the plugin's own read
    gdal.Info(raster, stats=True)
    corrupt_block(raster, 1, 0)  # the block of the scene at column 1, row 0
    out = tmp_path / "out"
    out.mkdir()
    completed = run_algorithm(
        "aid_xai:classify",
        {"INPUT": raster, "MODEL": synthetic_model, "OUTPUT_CLASSES": out / "classes.tif", "OUTPUT_PROBABILITIES": out / "probabilities.tif", "OUTPUT_TILES": out / "tiles.gpkg"},
        timeout=300,
    )
    text = completed.stdout + completed.stderr
    assert completed.returncode != 0, text[-2000:]
    assert "Traceback" not in text, text[-3000:]
    lines = [line for line in text.splitlines() if "Cannot read raster" in line]
    assert len(lines) >= 1, text[-3000:]
    line = lines[0]
    assert raster in line and "band(s) 1,2,3" in line and "pixel window x=64, y=0, width=64, height=64" in line, line
    assert "gdal_translate" in line and "Decoding error" in line, line
    assert "ERROR 1:" not in text, text[-3000:]  # GDAL's raw lines don't come ahead of the plugin's message
    assert os.listdir(out) == []


def test_the_plugins_gdal_messages_never_reach_stderr_raw(mosaic, tmp_path, capfd):
    """The plugin's read of a damaged block prints nothing: GDAL's messages are collected into its error."""
    from aid_xai_plugin.core.geo.raster import band_scaling, open_raster, read_tile

    raster = deflate_tiled_copy(mosaic[0], str(tmp_path / "corrupt.tif"))
    corrupt_block(raster, 0, 1)
    dataset = open_raster(raster)
    scaling = band_scaling(dataset, [1, 2, 3], "auto", (0, 0, 192, 128))
    with pytest.raises(AidXaiError, match=r"pixel window x=0, y=64, width=64, height=64: [^\n]*ZIPDecode"):
        read_tile(dataset, [1, 2, 3], (0, 64, 64, 64), scaling)
    assert "ERROR" not in capfd.readouterr().err
    assert gdal.GetUseExceptions()  # the tests' own mode (conftest) is left as it was


def test_a_corrupt_block_read_by_the_percentile_scaling_is_a_clear_error(mosaic, synthetic_model, tmp_path):
    sixteen = str(tmp_path / "u16.tif")
    gdal.Translate(sixteen, mosaic[0], outputType=gdal.GDT_UInt16, creationOptions=["TILED=YES", "COMPRESS=DEFLATE", "BLOCKXSIZE=64", "BLOCKYSIZE=64"])
    corrupt_block(sixteen, 2, 1)
    message = clear_error_of_classify(sixteen, synthetic_model, str(tmp_path))
    assert "Cannot read raster" in message and "band(s) 1," in message and "pixel window x=0, y=0, width=192, height=128" in message


# --- damaged rasters -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    ["zero_bytes", "truncated_header", "truncated_half", "bit_flipped", "png_named_tif", "gpkg_named_tif", "text_named_tif"],
)
def test_damaged_rasters_end_in_one_clear_line_or_a_correct_output(mosaic, synthetic_model, tmp_path, damage):
    raster = str(tmp_path / "damaged.tif")
    if damage == "zero_bytes":
        open(raster, "wb").close()
    elif damage.startswith("truncated"):
        deflate_tiled_copy(mosaic[0], raster)
        truncate(raster, 0.001 if damage == "truncated_header" else 0.5)
    elif damage == "bit_flipped":
        deflate_tiled_copy(mosaic[0], raster)
        flip_bytes(raster)
    elif damage == "png_named_tif":
        gdal.Translate(raster, mosaic[0], format="PNG")
    elif damage == "gpkg_named_tif":
        write_polygons(str(tmp_path / "layer.gpkg"), "EPSG:32633", [("id", int)], [((1,), (0, 0, 1, 1))])
        os.rename(tmp_path / "layer.gpkg", raster)
    else:
        open(raster, "w").write("just some text\n")
    folder = str(tmp_path / "out")
    os.makedirs(folder)
    if damage == "png_named_tif":  # a readable image under the wrong name: GDAL reads it by its content
        result = core_classify(raster, synthetic_model, folder)
        assert result.classified == 6
        written = gdal.Open(os.path.join(folder, "probabilities.tif"))
        assert np.isfinite(written.ReadAsArray()).all()
        return
    message = clear_error_of_classify(raster, synthetic_model, folder)
    assert "damaged.tif" in message
    assert ("Cannot open raster" in message and "GDAL-readable" in message) or ("Cannot read raster" in message and "gdal_translate" in message), message


def test_a_geotiff_named_gpkg_as_features_is_a_clear_error(aid_xai_provider, mosaic, synthetic_model, tmp_path):
    from qgis.core import QgsProcessingException

    import processing

    features = str(tmp_path / "features.gpkg")
    deflate_tiled_copy(mosaic[0], features)
    with pytest.raises(QgsProcessingException) as raised:
        processing.run("aid_xai:explain", {"INPUT": mosaic[0], "MODEL": synthetic_model, "FEATURES": features, "MAX_EVALS": 20, "OUTPUT": str(tmp_path / "shap.tif")})
    assert "FEATURES" in last_line(raised.value)
    assert_nothing_written(str(tmp_path), "shap.tif")


@pytest.mark.parametrize("damage", ["zero_bytes", "truncated", "bit_flipped"])
def test_damaged_geopackage_features_are_a_clear_error(aid_xai_provider, mosaic, synthetic_model, tmp_path, damage):
    from qgis.core import QgsProcessingException

    import processing

    features = str(tmp_path / "features.gpkg")
    truth = mosaic[1]
    write_polygons(features, "EPSG:32633", [("label", str)], [((t["class_name"],), t["bounds"]) for t in truth[:2]])
    if damage == "zero_bytes":
        open(features, "wb").close()
    elif damage == "truncated":
        truncate(features, 0.3)
    else:
        flip_bytes(features, count=200, seed=4, start_fraction=0.0)
    out = tmp_path / "out"
    out.mkdir()
    parameters = {"INPUT": mosaic[0], "MODEL": synthetic_model, "FEATURES": features, "MAX_EVALS": 20, "ENGINE": "fast", "OUTPUT": str(out / "shap.tif"), "OUTPUT_TABLE": str(out / "table.gpkg"), "OUTPUT_REPORT": str(out / "report.html")}
    try:
        result = processing.run("aid_xai:explain", parameters)
    except QgsProcessingException as error:
        message = last_line(error)
        assert "FEATURES" in message, message
        assert_nothing_written(str(out), "shap.tif", "table.gpkg", "report.html")
        return
    # bit flips that miss everything SQLite reads still give a correct map
    assert result["TILES_EXPLAINED"] >= 1 and np.isfinite(gdal.Open(result["OUTPUT"]).ReadAsArray()).all()


# --- damaged and inconsistent model files ------------------------------------------------------


def payload_of(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def nan_weights_model(path):
    net = random_net(SCENE, 4, bands=3, seed=0)
    with torch.no_grad():
        net.fc2.weight[0, :5] = float("nan")
    save_model(path, net, _model_info("Net", {"num_classes": 4, "input_size": SCENE, "in_bands": 3}, 4, SCENE, 3, 0.5, 0.25))


def test_a_model_with_nan_weights_is_refused_before_anything_is_written(mosaic, tmp_path):
    model = str(tmp_path / "nan.aidx.pt")
    nan_weights_model(model)
    message = clear_error_of_classify(mosaic[0], model, str(tmp_path))
    assert "NaN or infinite weights" in message and "fc2.weight" in message and "retrain" in message


def test_nan_scores_stop_the_run_before_a_nan_map_is_written(mosaic, tmp_path):
    """Weights that are finite but overflow to Inf/NaN in the forward pass: caught on the outputs."""
    model = str(tmp_path / "overflow.aidx.pt")
    net = random_net(SCENE, 4, bands=3, seed=0)
    with torch.no_grad():
        net.fc1.weight.fill_(3e38)
    save_model(model, net, _model_info("Net", {"num_classes": 4, "input_size": SCENE, "in_bands": 3}, 4, SCENE, 3, 0.5, 0.25))
    message = clear_error_of_classify(mosaic[0], model, str(tmp_path))
    assert "NaN or infinite scores" in message


def test_a_model_file_with_flipped_bytes_is_refused(mosaic, tmp_path):
    model = str(tmp_path / "flipped.aidx.pt")
    random_net_model_file(model, SCENE, 4)
    flip_bytes(model, count=32, seed=1, start_fraction=0.1)
    message = clear_error_of_classify(mosaic[0], model, str(tmp_path))
    assert "flipped.aidx.pt" in message and "is damaged: the checksum" in message, message


def test_a_model_whose_class_list_does_not_match_its_weights_is_refused(mosaic, tmp_path):
    model = str(tmp_path / "classes.aidx.pt")
    random_net_model_file(model, SCENE, 4)
    payload = payload_of(model)
    info = json.loads(payload["info"])
    info["class_names"] = info["class_names"][:3]
    payload["info"] = json.dumps(info)
    torch.save(payload, model)
    message = clear_error_of_classify(mosaic[0], model, str(tmp_path))
    assert "3 class name(s)" in message and "4 outputs" in message


def test_a_model_recorded_for_another_band_count_is_a_clear_error(mosaic, tmp_path):
    model = str(tmp_path / "four_bands.aidx.pt")
    random_net_model_file(model, SCENE, 4, bands=4)
    message = clear_error_of_classify(mosaic[0], model, str(tmp_path))
    assert "Band(s) [4] do not exist" in message and "raster has 3 band(s)" in message


def test_damaged_models_through_qgis_process_are_one_line_without_traceback(mosaic, tmp_path):
    """One qgis_process run per damage would take a minute; the algorithm refuses each the same way,
    so two representative ones go through the real command line."""
    nan_model = str(tmp_path / "nan.aidx.pt")
    nan_weights_model(nan_model)
    cut_model = str(tmp_path / "cut.aidx.pt")
    random_net_model_file(cut_model, SCENE, 4)
    truncate(cut_model, 0.5)
    for model, expected in ((nan_model, "NaN or infinite weights"), (cut_model, "cannot be read")):
        out = tmp_path / f"out_{os.path.basename(model)}"
        out.mkdir()
        completed = run_algorithm("aid_xai:classify", {"INPUT": mosaic[0], "MODEL": model, "OUTPUT_CLASSES": out / "c.tif", "OUTPUT_TILES": out / "t.gpkg"}, timeout=300)
        text = completed.stdout + completed.stderr
        assert completed.returncode != 0 and expected in text and "Traceback" not in text, text[-3000:]
        assert os.listdir(out) == []


def test_qgis_process_json_of_a_good_run_still_parses(mosaic, synthetic_model, tmp_path):
    """The GDAL error handler the plugin pushes leaves a normal run's output as it was."""
    completed = run_algorithm("aid_xai:classify", {"INPUT": mosaic[0], "MODEL": synthetic_model, "OUTPUT_CLASSES": tmp_path / "c.tif", "OUTPUT_TILES": tmp_path / "t.gpkg"}, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert qgis_process_json(completed.stdout)["results"]["TILES_CLASSIFIED"] == 6
