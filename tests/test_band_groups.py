"""Evidence per band group (core/explain/band_groups.py): each group's exact Shapley value per tile
and class, and per-pixel maps that sum to it. The maps are Shapley-weighted sums of partition games
that the exact engine plays as shap does (bit for bit against shap with the game's background as
its Image masker) and the fast engine within float32 rounding of the float64 reference."""

import dataclasses
import html
import os

import numpy as np
import pytest
import rasterio
from helpers import create_georeferenced_tiff, random_net_classifier, random_net_model_file, random_tile, run_algorithm_json
from numerics import assert_within_float32_rounding, efficiency_bound, explain_recorded, float64_yardstick
from osgeo import ogr

from aid_xai_plugin.core.common.errors import AidXaiError, Cancelled
from aid_xai_plugin.core.common.progress import Progress
from aid_xai_plugin.core.data.synthetic import make_scene_folder, make_scene_mosaic
from aid_xai_plugin.core.explain.band_groups import (
    BandGroup,
    coalition_tile,
    explain_band_groups,
    group_games,
    group_shapley_values,
    parse_band_groups,
)
from aid_xai_plugin.core.explain.engine import ExplainSettings, masker_value
from aid_xai_plugin.core.explain.exact_engine import ExactPartitionEngine
from aid_xai_plugin.core.explain.faithfulness import faithfulness_curves
from aid_xai_plugin.core.explain.fast_engine import FastPartitionEngine
from aid_xai_plugin.core.explain.partition import masked_background
from aid_xai_plugin.core.ml.classifier import Classifier
from aid_xai_plugin.core.ml.model_file import load_model
from aid_xai_plugin.core.ml.training import TrainingConfig, train_model
from aid_xai_plugin.core.pipelines.execution import DaskSettings
from aid_xai_plugin.core.pipelines.explain import ExplainOutputs, ExplainRequest, ExplainSpec, explain_raster
from aid_xai_plugin.core.pipelines.quality import QualityOutputs, QualitySpec, explanation_quality
from aid_xai_plugin.core.pipelines.tiles import TilingOptions

SETTINGS = ExplainSettings(masker="blur(10,10)", max_evals=400, batch_size=64, seed=3)
RGB_NIR = (BandGroup("RGB", (0, 1, 2)), BandGroup("NIR", (3,)))
SIZE = 40


@pytest.fixture(scope="module")
def net4():
    return random_net_classifier(SIZE, 5, bands=4, seed=11, logit_scale=30.0)


@pytest.fixture(scope="module")
def tile4():
    tile = random_tile((SIZE, SIZE, 4), seed=4)
    return tile, masked_background(tile, masker_value(SETTINGS.masker))


def shap_game(classifier, shown, hidden, classes, settings):
    """shap's PartitionExplainer on `shown` with the Image masker putting `hidden` in hidden pixels."""
    import shap

    def predict(batch_nhwc):
        return classifier.predict_outputs(batch_nhwc, settings.output_space, batch_size=settings.batch_size)

    explainer = shap.PartitionExplainer(predict, shap.maskers.Image(hidden, shown.shape))
    state = np.random.get_state()
    np.random.seed(settings.seed)
    try:
        result = explainer(shown[None], max_evals=settings.max_evals, batch_size=settings.batch_size, outputs=np.asarray(classes), silent=True)
    finally:
        np.random.set_state(state)
    return np.asarray(result.values[0], dtype=np.float64).reshape(shown.shape + (len(classes),))


def test_band_groups_text_is_parsed_and_every_mistake_is_named():
    assert parse_band_groups("RGB=1,2,3;NIR=4", 4) == RGB_NIR
    assert parse_band_groups(" visible = 1-3 ; NIR=4 ;", 4) == (BandGroup("visible", (0, 1, 2)), BandGroup("NIR", (3,)))
    assert parse_band_groups("", 3) == (BandGroup("band 1", (0,)), BandGroup("band 2", (1,)), BandGroup("band 3", (2,)))
    assert parse_band_groups("NIR=4", 4) == (BandGroup("NIR", (3,)),)  # bands 1–3 in no group: never hidden
    for text, words in (
        ("RGB 1,2,3", "NAME=bands"),
        ("RGB=1,2,x", "not NAME=bands"),
        ("RGB=1,2,3;NIR=5", "band(s) 5; this model takes 4"),
        ("A=1,2;B=2,3", "band(s) 2 in two groups"),
        ("A=1;A=2", "names A more than once"),
        (";".join(f"g{band}={band}" for band in range(1, 10)), "at most 8"),
    ):
        with pytest.raises(AidXaiError, match=words.replace("(", r"\(").replace(")", r"\)")):
            parse_band_groups(text, 9 if text.startswith("g1") else 4)


def test_group_values_are_the_exact_shapley_values_of_the_band_game(net4, tile4):
    """Against Shapley's formula written out for three groups (all 6 orders of joining), and
    efficient: they sum to f(tile) − f(all groups hidden) up to float64 rounding of a few terms."""
    import itertools

    tile, background = tile4
    groups = (BandGroup("R", (0,)), BandGroup("GB", (1, 2)), BandGroup("NIR", (3,)))
    classes = np.array([0, 3])
    shapley, base, full = group_shapley_values(net4, tile, background, groups, classes, SETTINGS)

    def v(members):
        return net4.predict_outputs(coalition_tile(tile, background, groups, set(members))[None], "logit", batch_size=1)[0][classes].astype(np.float64)

    by_orders = np.zeros((2, 3))
    for order in itertools.permutations(range(3)):
        for position, group in enumerate(order):
            by_orders[:, group] += (v(order[: position + 1]) - v(order[:position])) / 6
    largest = np.abs(np.stack([v(members) for members in itertools.chain.from_iterable(itertools.combinations(range(3), k) for k in range(4))])).max()
    bound = 16 * np.finfo(np.float64).eps * largest  # 8 float64 terms per value, each rounding once
    np.testing.assert_allclose(shapley, by_orders, rtol=0, atol=bound)
    np.testing.assert_allclose(shapley.sum(axis=1), full - base, rtol=0, atol=bound)
    np.testing.assert_array_equal(full, v(range(3)))  # every group visible: the tile itself
    assert np.abs(shapley).min() > 1e3 * bound  # the groups matter to this model: the test can fail


def test_one_group_of_every_band_is_todays_map_bit_for_bit(net4, tile4):
    tile, background = tile4
    classes = np.array([1, 4])
    grouped = explain_band_groups(ExactPartitionEngine(), [tile], [background], net4, [classes], SETTINGS, (BandGroup("all", (0, 1, 2, 3)),))[0]
    today = ExactPartitionEngine().explain(tile, net4, classes, SETTINGS)
    np.testing.assert_array_equal(grouped.maps[..., 0], today.values.sum(axis=2))
    np.testing.assert_array_equal(grouped.base_values, today.base_values)
    np.testing.assert_array_equal(grouped.output_values, today.output_values)


@pytest.mark.numerics
def test_where_only_one_group_matters_its_map_is_todays_map_and_the_others_vanish(tile4):
    """A Net blind to bands 1–3 (their first-layer weights zero): NIR's games are today's game (the
    model sees the same numbers whatever RGB shows), so NIR's map is today's map, and every RGB game
    reveals nothing the model sees, so RGB's map vanishes. Both up to the float32 rounding of
    evaluating a tile in chunks of another size (measured: a last-bit difference of an output): at
    most 4 ulps of the largest output per evaluation, spread over the map."""
    import torch

    tile, background = tile4
    blind = random_net_classifier(SIZE, 5, bands=4, seed=11, logit_scale=30.0)
    with torch.no_grad():
        blind.module.conv1.weight[:, :3] = 0.0
    classes = np.array([0, 3])
    grouped = explain_band_groups(ExactPartitionEngine(), [tile], [background], blind, [classes], SETTINGS, RGB_NIR)[0]
    today = ExactPartitionEngine().explain(tile, blind, classes, SETTINGS)
    ulp = np.spacing(np.float32(np.abs(today.output_values).max()), dtype=np.float32)
    bound = SETTINGS.max_evals * 4 * float(ulp)
    assert np.abs(grouped.maps[..., 0]).sum(axis=(0, 1)).max() <= bound
    assert np.abs(grouped.maps[..., 1] - today.values.sum(axis=2)).sum(axis=(0, 1)).max() <= bound
    assert np.abs(today.values).sum(axis=(0, 1, 2)).min() > 100 * bound  # a real difference (a band not blind) would show


@pytest.mark.numerics
def test_exact_group_maps_are_shap_games_weighted_bit_for_bit_and_sum_to_the_group_values(net4, tile4):
    tile, background = tile4
    classes = np.array([2, 0])
    grouped = explain_band_groups(ExactPartitionEngine(), [tile], [background], net4, [classes], SETTINGS, RGB_NIR)[0]
    by_hand = np.zeros_like(grouped.maps)
    for group, visible, weight in group_games(len(RGB_NIR)):
        shown = coalition_tile(tile, background, RGB_NIR, set(visible) | {group})
        hidden = coalition_tile(tile, background, RGB_NIR, set(visible))
        by_hand[..., group] += weight * shap_game(net4, shown, hidden, classes, SETTINGS).sum(axis=2)
    np.testing.assert_array_equal(grouped.maps, by_hand)
    # each game's map sums to v(T ∪ g) − v(T) (shap's efficiency, float64-rounded); the table's
    # values come from the same single-tile model calls, so the group maps sum to them
    bound = 2 * efficiency_bound(tile.size, SETTINGS.max_evals, max(np.abs(grouped.output_values).max(), np.abs(grouped.base_values).max()))
    np.testing.assert_allclose(grouped.maps.sum(axis=(0, 1)), grouped.shapley, rtol=0, atol=bound)
    assert np.abs(grouped.shapley).min() > 1e6 * bound
    # one game alone (NIR revealed with RGB hidden, weight 1 instead of ½) is not NIR's value: the weights matter
    alone = shap_game(net4, coalition_tile(tile, background, RGB_NIR, {1}), coalition_tile(tile, background, RGB_NIR, set()), classes, SETTINGS)
    assert np.abs(alone.sum(axis=(0, 1, 2)) - grouped.shapley[:, 1]).max() > 1e3 * bound


@pytest.mark.numerics
def test_fast_group_maps_are_within_float32_rounding_of_the_float64_reference(net4, tile4):
    """Every partition game the fast engine plays is the float64 reference's up to float32 rounding
    (tests/numerics.py); the group maps are their weighted sums, so within the weighted bounds."""
    tile, background = tile4
    classes = np.array([2, 0])
    reference, bound = np.zeros(tile.shape[:2] + (2, 2)), np.zeros(2)
    for group, visible, weight in group_games(len(RGB_NIR)):
        shown = coalition_tile(tile, background, RGB_NIR, set(visible) | {group})
        hidden = coalition_tile(tile, background, RGB_NIR, set(visible))
        yardstick = float64_yardstick(net4, shown, classes, SETTINGS, background=hidden)
        fast, traversal = explain_recorded(FastPartitionEngine(), shown, net4, classes, SETTINGS, background=hidden)
        assert fast.fallback_reason is None
        assert_within_float32_rounding(fast, traversal, yardstick, f"the fast engine on group {group} with {visible} visible")
        reference[..., group] += weight * yardstick.reference.values.sum(axis=2)
        bound[group] += weight * tile.shape[2] * yardstick.values_bound()  # C channels summed per pixel
    fast_maps = explain_band_groups(FastPartitionEngine(), [tile], [background], net4, [classes], SETTINGS, RGB_NIR)[0]
    for group in range(2):
        error = np.abs(fast_maps.maps[..., group] - reference[..., group]).max()
        assert error <= bound[group], f"group {group}: {error:.3g} from float64, bound {bound[group]:.3g}"
    assert np.abs(reference).max() > 100 * bound.max()  # a real error (a wrong weight, a wrong background) is of the values' size


def test_games_of_many_tiles_in_flight_equal_one_at_a_time(net4):
    """On a CPU the exact engine keeps every game's own model calls, so in flight or not is bit for bit."""
    tiles = [random_tile((SIZE, SIZE, 4), seed=seed) for seed in (5, 6)]
    backgrounds = [masked_background(tile, masker_value(SETTINGS.masker)) for tile in tiles]
    classes = [np.array([0, 1]), np.array([4, 2])]
    together = explain_band_groups(ExactPartitionEngine(), tiles, backgrounds, net4, classes, SETTINGS, RGB_NIR, in_flight=3)
    for number in range(2):
        alone = explain_band_groups(ExactPartitionEngine(), tiles[number : number + 1], backgrounds[number : number + 1], net4, classes[number : number + 1], SETTINGS, RGB_NIR)[0]
        np.testing.assert_array_equal(together[number].maps, alone.maps)
        np.testing.assert_array_equal(together[number].shapley, alone.shapley)


def test_in_the_contrast_space_the_group_values_add_up_to_the_logit_difference(net4, tile4):
    tile, background = tile4
    settings = ExplainSettings(masker=SETTINGS.masker, max_evals=200, batch_size=64, seed=3, output_space="contrast")
    classes, rivals = np.array([2, 0]), np.array([0, 4])
    grouped = explain_band_groups(ExactPartitionEngine(), [tile], [background], net4, [classes], settings, RGB_NIR, rivals=[rivals])[0]
    logits = net4.predict_outputs(np.stack([tile, background]), "logit", batch_size=1).astype(np.float64)
    np.testing.assert_array_equal(grouped.output_values, logits[0, classes] - logits[0, rivals])
    np.testing.assert_array_equal(grouped.base_values, logits[1, classes] - logits[1, rivals])
    bound = 2 * efficiency_bound(tile.size, settings.max_evals, np.abs(logits).max())
    np.testing.assert_allclose(grouped.shapley.sum(axis=1), grouped.output_values - grouped.base_values, rtol=0, atol=bound)
    np.testing.assert_allclose(grouped.maps.sum(axis=(0, 1)), grouped.shapley, rtol=0, atol=bound)
    np.testing.assert_array_equal(grouped.rival_indices, rivals)


def test_bands_in_no_group_are_never_hidden(net4, tile4):
    tile, background = tile4
    only_nir = (BandGroup("NIR", (3,)),)
    _, base, full = group_shapley_values(net4, tile, background, only_nir, np.array([0]), SETTINGS)
    nir_hidden = tile.copy()
    nir_hidden[..., 3] = background[..., 3]
    np.testing.assert_array_equal(base, net4.predict_outputs(nir_hidden[None], "logit", batch_size=1)[0][[0]])
    np.testing.assert_array_equal(full, net4.predict_outputs(tile[None], "logit", batch_size=1)[0][[0]])


def test_inpainting_cannot_hide_one_group(net4, tile4):
    tile, background = tile4
    settings = ExplainSettings(masker="inpaint_telea", max_evals=50)
    with pytest.raises(AidXaiError, match="blur or constant MASKER"):
        explain_band_groups(ExactPartitionEngine(), [tile], [background], net4, [np.array([0])], settings, RGB_NIR)


# --- the explain run ---------------------------------------------------------------------------

CLASS_NAMES = ["Crops", "Trees", "Water"]


@pytest.fixture(scope="module")
def four_band_run_inputs(tmp_path_factory):
    """A 4-band GeoTIFF of 3×1 tiles of the model's input size (no resampling) and a 4-band Net."""
    folder = tmp_path_factory.mktemp("band_groups")
    raster, model = str(folder / "four_bands.tif"), str(folder / "net4.aidx.pt")
    dataset = create_georeferenced_tiff(raster, 3 * SIZE, SIZE, 4, (400000.0, 2.0, 0.0, 5000000.0, 0.0, -2.0), 32633)
    for band in range(4):
        tiles = np.concatenate([random_tile((SIZE, SIZE, 4), seed=20 + tile)[..., band] for tile in range(3)], axis=1)
        dataset.GetRasterBand(band + 1).WriteArray(np.rint(tiles * 255).astype(np.uint8))
    dataset = None
    random_net_model_file(model, SIZE, CLASS_NAMES, bands=4, seed=12, logit_scale=30.0)
    return raster, model


def grouped_spec(inputs, folder, engine="exact", **request_fields):
    """An explain run by band group (RGB, NIR) of two classes on the 4-band raster, writing into `folder`."""
    raster, model = inputs
    folder.mkdir(exist_ok=True)
    outputs = ExplainOutputs(shap_raster=str(folder / "shap.tif"), tile_table=str(folder / "tiles.gpkg"), report=str(folder / "report.html"))
    request = ExplainRequest(**{"class_names": ["Crops", "Water"], "by_band_group": True, "band_groups": "RGB=1,2,3;NIR=4", **request_fields})
    return ExplainSpec(raster, model, TilingOptions(), request, SETTINGS, outputs, engine=engine)


def grouped_run(inputs, folder, progress=None, engine="exact", **request_fields):
    spec = grouped_spec(inputs, folder, engine, **request_fields)
    return spec, explain_raster(spec, progress)


def table_rows(path):
    source = ogr.Open(path)  # kept while its layer is read: GDAL frees a layer with its data source
    return [feature.items() for feature in source.GetLayer(0)]


def test_a_run_by_band_group_writes_a_band_per_class_and_group_that_sums_to_the_group_values(four_band_run_inputs, tmp_path):
    spec, result = grouped_run(four_band_run_inputs, tmp_path)
    assert result.explained == 3
    assert result.band_names == ["Crops · RGB", "Crops · NIR", "Water · RGB", "Water · NIR"]
    with rasterio.open(spec.outputs.shap_raster) as raster:
        values = raster.read().astype(np.float64)
        assert raster.descriptions == tuple(result.band_names)
        assert raster.tags()["AIDXAI_BAND_GROUPS"] == "RGB=1,2,3;NIR=4" and "AIDXAI_CONTRAST_CLASS" not in raster.tags()
    rows = table_rows(spec.outputs.tile_table)
    assert len(rows) == 3 * 2 * 2
    classifier = Classifier(load_model(spec.model), "cpu")
    background = masker_value(SETTINGS.masker)
    for tile in range(3):
        image = random_tile((SIZE, SIZE, 4), seed=20 + tile)
        image = (np.rint(image * 255).astype(np.uint8).astype(np.float32) / np.float32(255.0)).astype(np.float32)
        core = explain_band_groups(ExactPartitionEngine(), [image], [masked_background(image, background)], classifier, [np.array([0, 2])], SETTINGS, RGB_NIR)[0]
        on_tile = values[:, :, tile * SIZE : (tile + 1) * SIZE]
        np.testing.assert_array_equal(on_tile, core.maps.reshape(SIZE, SIZE, 4).transpose(2, 0, 1).astype(np.float32))  # the core's maps, as float32
        for rank, class_name in enumerate(("Crops", "Water")):
            by_group = {row["band_group"]: row for row in rows if row["tile_id"] == tile and row["class_name"] == class_name}
            assert set(by_group) == {"RGB", "NIR"}
            difference = by_group["RGB"]["output_value"] - by_group["RGB"]["base_value"]
            assert by_group["RGB"]["group_value"] + by_group["NIR"]["group_value"] == pytest.approx(difference, abs=8 * np.finfo(np.float64).eps * abs(difference))
            for position, group in enumerate(("RGB", "NIR")):
                row, band = by_group[group], on_tile[2 * rank + position]
                assert row["group_value"] == core.shapley[rank, position]
                # the float32 band sums to the group value: the games' float64 efficiency, plus 2^-24 of each stored value
                bound = 2 * efficiency_bound(band.size, SETTINGS.max_evals, abs(difference)) + np.abs(band).sum() * 2.0**-24
                assert abs(band.sum() - row["group_value"]) <= bound
                assert abs(row["shap_sum"] - row["group_value"]) <= 2 * efficiency_bound(band.size, SETTINGS.max_evals, abs(difference))
    report = (tmp_path / "report.html").read_text()
    assert "(RGB " in report and ", NIR " in report


def test_an_interrupted_run_by_band_group_resumes_with_the_group_maps(four_band_run_inputs, tmp_path):
    reference_spec, _ = grouped_run(four_band_run_inputs, tmp_path / "reference")
    fractions = []
    progress = Progress(lambda percent: fractions.append(percent / 100.0), lambda: len(fractions) > 0 and fractions[-1] > 0.5)
    with pytest.raises(Cancelled):
        grouped_run(four_band_run_inputs, tmp_path / "run", progress)
    logs = []
    spec, _ = grouped_run(four_band_run_inputs, tmp_path / "run", Progress(log=logs.append))
    assert any("of 3 tile(s) reused" in line for line in logs), logs
    for output in ("shap_raster", "tile_table"):
        if output == "shap_raster":
            with rasterio.open(spec.outputs.shap_raster) as resumed, rasterio.open(reference_spec.outputs.shap_raster) as reference:
                np.testing.assert_array_equal(resumed.read(), reference.read())
        else:
            assert sorted(map(sorted_items, table_rows(spec.outputs.tile_table))) == sorted(map(sorted_items, table_rows(reference_spec.outputs.tile_table)))


def sorted_items(row):
    return tuple(sorted(row.items()))


def test_runs_without_band_groups_have_one_all_bands_row_per_class(four_band_run_inputs, tmp_path):
    spec, result = grouped_run(four_band_run_inputs, tmp_path, by_band_group=False, band_groups="")
    assert result.band_names == ["Crops", "Water"]
    rows = table_rows(spec.outputs.tile_table)
    assert len(rows) == 3 * 2 and {row["band_group"] for row in rows} == {"all bands"}
    for row in rows:
        assert row["group_value"] == pytest.approx(row["output_value"] - row["base_value"], abs=1e-12)


def test_band_group_mistakes_are_refused_before_any_output(four_band_run_inputs, tmp_path):
    for fields, message in (
        (dict(by_band_group=False), "only used when explaining by band group"),
        (dict(band_groups="RGB=1,2,3;NIR=5"), "this model takes 4 band"),
        (dict(band_groups="RGB=1,2;NIR=2,4"), "in two groups"),
    ):
        with pytest.raises(AidXaiError, match=message):
            grouped_run(four_band_run_inputs, tmp_path, **fields)
    raster, model = four_band_run_inputs
    spec = ExplainSpec(
        raster, model, TilingOptions(), ExplainRequest(by_band_group=True), dataclasses.replace(SETTINGS, masker="inpaint_ns"), ExplainOutputs(shap_raster=str(tmp_path / "shap.tif"))
    )
    with pytest.raises(AidXaiError, match="blur or constant MASKER"):
        explain_raster(spec)
    assert sorted(os.listdir(tmp_path)) == []


def test_qgis_process_by_band_group_with_one_group_per_band(four_band_run_inputs, tmp_path):
    raster, model = four_band_run_inputs
    result = run_algorithm_json(
        "aid_xai:explain",
        {"INPUT": raster, "MODEL": model, "MAX_EVALS": 60, "MASKER": "blur", "MASKER_KERNEL": 8, "CLASSES": "Trees", "BY_BAND_GROUP": True, "OUTPUT": tmp_path / "shap.tif", "OUTPUT_TABLE": tmp_path / "tiles.gpkg"},
    )["results"]
    assert result["TILES_EXPLAINED"] == 3
    with rasterio.open(tmp_path / "shap.tif") as raster_file:
        assert raster_file.descriptions == tuple(f"Trees · band {band}" for band in range(1, 5))
    rows = table_rows(str(tmp_path / "tiles.gpkg"))
    assert sorted({row["band_group"] for row in rows}) == ["band 1", "band 2", "band 3", "band 4"] and len(rows) == 12
    assert """"rank" = 1 AND "band_group" = 'band 1'""" in html.unescape((tmp_path / "tiles.qml").read_text())  # each tile drawn and labelled once


# --- a model that uses NIR, and one that cannot --------------------------------------------------


@pytest.fixture(scope="module")
def nir_models_and_mosaics(tmp_path_factory):
    """{mode: (4-band Net trained on synthetic scenes with that NIR, a mosaic with the same NIR, truth)}
    for NIR modes physical (vegetation bright, water dark) and noise (a level per scene, unrelated to
    the class); seconds each on 2 cores."""
    made = {}
    for mode in ("physical", "noise"):
        folder = tmp_path_factory.mktemp(f"nir_{mode}")
        make_scene_folder(str(folder / "scenes"), per_class=40, size=64, seed=1, nir=mode)
        model = str(folder / "net.aidx.pt")
        train_model(TrainingConfig(dataset=str(folder / "scenes"), output=model, input_size=64, epochs=6, batch_size=16, seed=0, augment=True))
        mosaic = str(folder / "mosaic.tif")
        truth = make_scene_mosaic(mosaic, rows=2, cols=6, scene_px=64, seed=3, nir=mode)
        made[mode] = (model, mosaic, {(scene["row"], scene["col"]): scene["class_name"] for scene in truth})
    return made


def nir_shares(model, mosaic, folder):
    """{(row, col): (true-ish top class, NIR's share of the evidence |φ_NIR| / (|φ_RGB| + |φ_NIR|), φ_NIR)}
    from a qgis_process run by band group, blur masker over the whole tile."""
    run_algorithm_json(
        "aid_xai:explain",
        {
            "INPUT": mosaic, "MODEL": model, "MAX_EVALS": 300, "MASKER": "blur", "MASKER_KERNEL": 64, "TOP_K": 1,
            "BY_BAND_GROUP": True, "BAND_GROUPS": "RGB=1,2,3;NIR=4", "OUTPUT": folder / "shap.tif", "OUTPUT_TABLE": folder / "tiles.gpkg",
        },
    )  # fmt: skip
    values = {}
    for row in table_rows(str(folder / "tiles.gpkg")):
        values.setdefault((row["row"], row["col"]), {})[row["band_group"]] = (row["class_name"], row["group_value"])
    return {
        place: (groups["NIR"][0], abs(groups["NIR"][1]) / (abs(groups["NIR"][1]) + abs(groups["RGB"][1])), groups["NIR"][1]) for place, groups in values.items()
    }


def test_a_model_trained_with_physical_nir_uses_it_for_vegetation_and_one_trained_on_noise_nir_does_not(nir_models_and_mosaics, tmp_path):
    """A model that ignores a band has its group value 0. One trained on a class-independent NIR band
    keeps only what training never pushed out: measured ≤ 0.08 logit on every tile on 2 cores; the
    bound 0.25 logit (the class odds change by at most 28 %) leaves room for another machine's
    training rounding. The physical model draws 0.88–3.7 logits, 23–58 % of its Forest and Farmland
    evidence, from NIR's pattern (blur hides a band's pattern; NIR's level under a uniform canopy
    survives it), so bounds of 0.5 logit and 15 % tell the two apart."""
    physical_model, physical_mosaic, physical_truth = nir_models_and_mosaics["physical"]
    (tmp_path / "physical").mkdir()
    vegetation = 0
    for place, (top_class, share, nir_value) in nir_shares(physical_model, physical_mosaic, tmp_path / "physical").items():
        if physical_truth[place] in ("Forest", "Farmland"):
            assert top_class == physical_truth[place]
            assert nir_value >= 0.5 and share >= 0.15, f"{top_class} at {place}: NIR gives {nir_value:+.3f} ({share:.0%} of the evidence)"
            vegetation += 1
    assert vegetation == 4
    noise_model, noise_mosaic, _ = nir_models_and_mosaics["noise"]
    (tmp_path / "noise").mkdir()
    for place, (top_class, share, nir_value) in nir_shares(noise_model, noise_mosaic, tmp_path / "noise").items():
        assert abs(nir_value) <= 0.25, f"{top_class} at {place}: the noise-NIR model gets {nir_value:+.3f} ({share:.0%} of the evidence) from NIR"


# --- explanation quality per band group -----------------------------------------------------------


def test_a_groups_curves_hide_and_reveal_only_that_groups_bands(net4, tile4):
    """Deletion ends, and insertion starts, at the tile with the group hidden everywhere (the group
    game's v(others)); both end or start at the tile itself."""
    tile, background = tile4
    values = np.random.default_rng(2).normal(size=(SIZE, SIZE, 2))
    curves = faithfulness_curves(tile, values, [1, 1], net4, SETTINGS.masker, steps=4, random_orders=1, seed=0, batch_size=16, hidden_bands=[(0, 1, 2), (3,)])
    for k, visible in enumerate(({1}, {0})):  # map 0 hides RGB (NIR stays), map 1 hides NIR
        hidden = net4.predict_probabilities(coalition_tile(tile, background, RGB_NIR, visible)[None], 1)[0, 1]
        shown = net4.predict_probabilities(tile[None], 1)[0, 1]
        assert curves.deletion[k, -1] == pytest.approx(hidden, abs=1e-6) and curves.insertion[k, 0] == pytest.approx(hidden, abs=1e-6)
        assert curves.deletion[k, 0] == pytest.approx(shown, abs=1e-6) and curves.insertion[k, -1] == pytest.approx(shown, abs=1e-6)
    assert abs(curves.deletion[0, -1] - curves.deletion[1, -1]) > 1e-3  # the two groups' ends differ: the bands are told apart


def test_quality_by_band_group_has_a_row_per_class_and_group_and_nir_maps_beat_random_orders(nir_models_and_mosaics, tmp_path):
    model, mosaic, truth = nir_models_and_mosaics["physical"]
    farmland = [place for place, name in truth.items() if name == "Farmland"]
    request = ExplainRequest(tile_selector=None, class_names=["Farmland"], by_band_group=True, band_groups="RGB=1,2,3;NIR=4")
    outputs = QualityOutputs(table=str(tmp_path / "quality.gpkg"), report=str(tmp_path / "quality.html"))
    spec = QualitySpec(mosaic, model, TilingOptions(), request, ExplainSettings(masker="blur(64,64)", max_evals=300, seed=0), outputs, steps=10, random_orders=3)
    explanation_quality(spec)
    rows = table_rows(outputs.table)
    assert len(rows) == 12 * 2 and {row["band_group"] for row in rows} == {"RGB", "NIR"}
    for row in rows:
        if (row["row"], row["col"]) in farmland and row["band_group"] == "NIR":
            # hiding NIR where the NIR map is most positive takes Farmland's probability down faster than random orders
            assert row["deletion_auc"] < row["random_deletion_auc"], row
    assert "Farmland · NIR" in (tmp_path / "quality.html").read_text()


def test_a_graphical_model_makes_a_nir_mosaic_and_explains_it_by_band_group(aid_xai_provider, nir_models_and_mosaics, tmp_path):
    """Through the modeler: the synthetic mosaic with physical NIR, then explain by band group."""
    import processing
    from qgis.core import QgsProcessingModelAlgorithm, QgsProcessingModelChildAlgorithm
    from qgis.core import QgsProcessingModelChildParameterSource as Source

    model = QgsProcessingModelAlgorithm("NIR mosaic, then explain by band group", "tests")
    steps = {
        "mosaic": ("aid_xai:synthetic_mosaic", {"ROWS": 1, "COLUMNS": 2, "SCENE_SIZE": 64, "SEED": 3, "NIR_BAND": "physical"}),
        "explain": (
            "aid_xai:explain",
            {"MODEL": nir_models_and_mosaics["physical"][0], "MAX_EVALS": 60, "MASKER": "blur", "MASKER_KERNEL": 64, "TOP_K": 1, "BY_BAND_GROUP": True, "BAND_GROUPS": "RGB=1,2,3;NIR=4"},
        ),
    }
    for child_id, (algorithm_id, values) in steps.items():
        step = QgsProcessingModelChildAlgorithm(algorithm_id)
        step.setChildId(child_id)
        for name, value in values.items():
            step.addParameterSources(name, [Source.fromStaticValue(value)])
        model.addChildAlgorithm(step)
    model.childAlgorithm("explain").addParameterSources("INPUT", [Source.fromChildOutput("mosaic", "OUTPUT")])
    model.childAlgorithm("explain").addParameterSources("OUTPUT", [Source.fromStaticValue(str(tmp_path / "shap.tif"))])
    results = processing.run(model, {})
    assert results["CHILD_RESULTS"]["explain"]["TILES_EXPLAINED"] == 2
    with rasterio.open(results["CHILD_RESULTS"]["explain"]["OUTPUT"]) as raster:
        assert [name.split(" · ")[-1] for name in raster.descriptions] == ["RGB", "NIR"]
        assert raster.tags()["AIDXAI_BAND_GROUPS"] == "RGB=1,2,3;NIR=4"


def test_a_run_by_band_group_on_a_dask_cluster_writes_the_local_runs_values(four_band_run_inputs, tmp_path):
    local_spec, _ = grouped_run(four_band_run_inputs, tmp_path / "local")
    dask_spec = dataclasses.replace(grouped_spec(four_band_run_inputs, tmp_path / "dask"), execution="dask", dask=DaskSettings(workers=1, threads=1))
    explain_raster(dask_spec)
    with rasterio.open(dask_spec.outputs.shap_raster) as on_cluster, rasterio.open(local_spec.outputs.shap_raster) as here:
        np.testing.assert_array_equal(on_cluster.read(), here.read())
    assert sorted(map(sorted_items, table_rows(dask_spec.outputs.tile_table))) == sorted(map(sorted_items, table_rows(local_spec.outputs.tile_table)))
