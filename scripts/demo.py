"""The main job, end to end through qgis_process: train → classify → explain → report → map.

Everything runs on data the project makes itself (synthetic, georeferenced scenes), so it works on a
fresh machine: a few minutes on 2 CPU cores. Re-running reuses the trained model.
"""

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from helpers import qgis_process_json, run_algorithm  # noqa: E402

# how the demo explains (default output space: logits), shared with the test that checks its maps
EXPLAIN_SETTINGS = dict(MASKER="blur", MASKER_KERNEL=64)
MAX_EVALS = 1000


def run(algorithm, **parameters):
    """One `bin/qgis_process --json run` call; returns its results and echoes its log on failure."""
    print(f"$ bin/qgis_process run {algorithm} -- " + " ".join(f"{k}={v}" for k, v in parameters.items()), flush=True)
    start = time.time()
    completed = run_algorithm(algorithm, parameters, timeout=None)
    if completed.returncode != 0:
        sys.exit(f"{algorithm} failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}")
    results = qgis_process_json(completed.stdout)["results"]
    print(f"  done in {time.time() - start:.0f} s", flush=True)
    return results


def render_map(imagery, shap_raster, tiles=None, band=1, width=1200, extent=None):
    """A QImage of one band of a SHAP raster over the imagery (a QgsRasterLayer), drawn by QGIS's map
    renderer with the styles from the sidecars, of `extent` (a QgsRectangle; default: the imagery's)."""
    from qgis.core import QgsMapRendererParallelJob, QgsMapSettings, QgsRasterLayer, QgsVectorLayer
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtGui import QColor

    shap_layer = QgsRasterLayer(shap_raster, "shap")
    shap_layer.loadNamedStyle(os.path.splitext(shap_raster)[0] + ".qml")
    if band != 1:  # the style's ramp (one scale for every band) on another band
        renderer = shap_layer.renderer().clone()
        (renderer.setInputBand if hasattr(renderer, "setInputBand") else renderer.setBand)(band)
        shap_layer.setRenderer(renderer)
    layers = [shap_layer, imagery]
    if tiles:
        layers.insert(1, QgsVectorLayer(tiles, "tiles"))
        layers[1].loadNamedStyle(os.path.splitext(tiles)[0] + ".qml")
        layers[1].setOpacity(0.35)
    settings = QgsMapSettings()
    settings.setLayers(layers)
    settings.setDestinationCrs(imagery.crs())
    extent = imagery.extent() if extent is None else extent.intersect(imagery.extent())
    settings.setExtent(extent)
    settings.setOutputSize(QSize(width, int(width * extent.height() / extent.width())))
    settings.setBackgroundColor(QColor(255, 255, 255))
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    return job.renderedImage().copy()


def side_by_side(images, captions, png):
    """Save QImages next to each other, each with a caption above it."""
    from qgis.PyQt.QtCore import QRect, Qt
    from qgis.PyQt.QtGui import QColor, QFont, QImage, QPainter

    gap, caption_height = 16, 36
    width = sum(image.width() for image in images) + gap * (len(images) - 1)
    canvas = QImage(width, max(image.height() for image in images) + caption_height, QImage.Format.Format_ARGB32)
    canvas.fill(QColor(255, 255, 255))
    painter = QPainter(canvas)
    painter.setFont(QFont("DejaVu Sans", 14))
    left = 0
    for image, caption in zip(images, captions):
        painter.drawText(QRect(left, 0, image.width(), caption_height), int(Qt.AlignmentFlag.AlignCenter), caption)
        painter.drawImage(left, caption_height, image)
        left += image.width() + gap
    painter.end()
    canvas.save(png, "png")


def render_maps(pictures):
    """Draw the demo's pictures with QGIS: (imagery raster, [(SHAP raster, band, tile layer or None,
    caption)], PNG, extent as (xmin, ymin, xmax, ymax) or None) each; several maps in one picture
    stand side by side, under their captions."""
    from qgis.core import QgsApplication, QgsRasterLayer, QgsRectangle

    app = QgsApplication([], False)
    app.initQgis()
    for raster, maps, png, extent in pictures:
        imagery = QgsRasterLayer(raster, "imagery")
        area = QgsRectangle(*extent) if extent else None
        images = [render_map(imagery, shap_raster, tiles, band, 1200, area) for shap_raster, band, tiles, _ in maps]
        captions = [caption for *_, caption in maps]
        if any(captions):
            side_by_side(images, captions, png)
        else:
            images[0].save(png, "png")
        del imagery, images  # layers must go before QGIS shuts down
    app.exitQgis()


def least_confident_tile(tiles):
    """(tile_id, (xmin, ymin, xmax, ymax) of the tile and its neighbours) of the classify tile
    layer's tile with the smallest margin (p1 − p2)."""
    from osgeo import ogr

    source = ogr.Open(tiles)  # kept while its layer is read
    _, tile_id, (xmin, xmax, ymin, ymax) = min((feature.GetField("margin"), feature.GetField("tile_id"), feature.GetGeometryRef().GetEnvelope()) for feature in source.GetLayer(0))
    return tile_id, (2 * xmin - xmax, 2 * ymin - ymax, 2 * xmax - xmin, 2 * ymax - ymin)


def contrast_caption(table):
    """'A rather than B (logit difference)' of the one explained class in a contrast-space tile table."""
    from osgeo import ogr

    source = ogr.Open(table)
    feature = next(iter(source.GetLayer(0)))
    return f"Why {feature.GetField('class_name')} rather than {feature.GetField('rival_class')} (red: towards {feature.GetField('class_name')})"


def group_values(table):
    """'Forest (row 0, col 1): RGB +2.57, NIR +0.96' lines of an explained-by-band-group tile table."""
    from osgeo import ogr

    source = ogr.Open(table)
    tiles = {}
    for feature in source.GetLayer(0):
        key = (feature.GetField("label") or feature.GetField("class_name"), feature.GetField("row"), feature.GetField("col"), feature.GetField("class_name"))
        tiles.setdefault(key, []).append(f"{feature.GetField('band_group')} {feature.GetField('group_value'):+.2f}")
    return [f"{label} tile (row {row}, col {col}), explained as {name}: {', '.join(values)} logits" for (label, row, col, name), values in sorted(tiles.items(), key=lambda item: item[0][1:3])]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=os.path.join(ROOT, "demo_output"))
    parser.add_argument("--max-evals", type=int, default=MAX_EVALS)
    args = parser.parse_args()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    path = lambda name: os.path.join(out, name)  # noqa: E731

    if not os.path.exists(path("model.aidx.pt")):
        run("aid_xai:synthetic_scenes", PER_CLASS=60, SIZE=64, SEED=0, OUTPUT=path("scenes"))
        trained = run("aid_xai:train", DATASET=path("scenes"), INPUT_SIZE=64, EPOCHS=8, BATCH_SIZE=16, AUGMENT=True, OUTPUT=path("model.aidx.pt"), METRICS=path("training_metrics.json"))
        print(f"  validation accuracy {trained['ACCURACY']:.3f}, macro-F1 {trained['MACRO_F1']:.3f}")
    run("aid_xai:synthetic_scenes", PER_CLASS=20, SIZE=64, SEED=42, OUTPUT=path("heldout_scenes"))
    evaluated = run("aid_xai:evaluate", MODEL=path("model.aidx.pt"), DATASET=path("heldout_scenes"), OUTPUT_HTML=path("evaluation.html"))
    print(f"  held-out accuracy {evaluated['ACCURACY']:.3f}, macro-F1 {evaluated['MACRO_F1']:.3f}")
    run("aid_xai:synthetic_mosaic", ROWS=4, COLUMNS=6, SCENE_SIZE=64, PIXEL_SIZE=2.0, SEED=7, OUTPUT=path("mosaic.tif"), TRUTH=path("truth.gpkg"))
    classified = run("aid_xai:classify", INPUT=path("mosaic.tif"), MODEL=path("model.aidx.pt"), OUTPUT_CLASSES=path("classes.tif"), OUTPUT_PROBABILITIES=path("probabilities.tif"), OUTPUT_TILES=path("tiles.gpkg"))
    print(f"  {classified['TILES_CLASSIFIED']} tiles classified")
    explained = dict(FEATURES=path("truth.gpkg") + "|layername=truth|subset=\"scene_id\" < 4", LABEL_FIELD="label", MAX_EVALS=args.max_evals, **EXPLAIN_SETTINGS)
    run("aid_xai:explain", INPUT=path("mosaic.tif"), MODEL=path("model.aidx.pt"), **explained, TOP_K=3, OUTPUT=path("shap.tif"), OUTPUT_TABLE=path("explained_tiles.gpkg"), OUTPUT_REPORT=path("explanations.html"))
    run(
        "aid_xai:explain",
        INPUT=path("mosaic.tif"),
        MODEL=path("model.aidx.pt"),
        STRIDE=32,
        OVERLAP="blend",
        CLASSES="StorageTank",
        MAX_EVALS=args.max_evals // 2,
        **EXPLAIN_SETTINGS,
        OUTPUT=path("shap_scene.tif"),
        OUTPUT_TABLE=path("scene_tiles.gpkg"),
        OUTPUT_REPORT=path("scene_explanations.html"),
    )
    unsure, around_unsure = least_confident_tile(path("tiles.gpkg"))
    run(
        "aid_xai:explain",
        INPUT=path("mosaic.tif"),
        MODEL=path("model.aidx.pt"),
        FEATURES=path("tiles.gpkg") + f'|layername=tiles|subset="tile_id" = {unsure}',
        MAX_EVALS=args.max_evals,
        **EXPLAIN_SETTINGS,
        TOP_K=1,
        OUTPUT_SPACE="contrast",
        OUTPUT=path("shap_contrast.tif"),
        OUTPUT_TABLE=path("contrast_tiles.gpkg"),
        OUTPUT_REPORT=path("contrast_explanations.html"),
    )

    if not os.path.exists(path("model_nir.aidx.pt")):
        run("aid_xai:synthetic_scenes", PER_CLASS=60, SIZE=64, SEED=0, NIR_BAND="physical", OUTPUT=path("scenes_nir"))
        run("aid_xai:train", DATASET=path("scenes_nir"), INPUT_SIZE=64, EPOCHS=8, BATCH_SIZE=16, AUGMENT=True, OUTPUT=path("model_nir.aidx.pt"))
    run("aid_xai:synthetic_mosaic", ROWS=2, COLUMNS=6, SCENE_SIZE=64, PIXEL_SIZE=2.0, SEED=3, NIR_BAND="physical", OUTPUT=path("mosaic_nir.tif"), TRUTH=path("truth_nir.gpkg"))
    run(
        "aid_xai:explain",
        INPUT=path("mosaic_nir.tif"),
        MODEL=path("model_nir.aidx.pt"),
        FEATURES=path("truth_nir.gpkg") + "|layername=truth_nir",
        LABEL_FIELD="label",
        MAX_EVALS=args.max_evals,
        **EXPLAIN_SETTINGS,
        TOP_K=1,
        BY_BAND_GROUP=True,
        BAND_GROUPS="RGB=1,2,3;NIR=4",
        OUTPUT=path("shap_groups.tif"),
        OUTPUT_TABLE=path("explained_groups.gpkg"),
        OUTPUT_REPORT=path("group_explanations.html"),
    )
    for line in group_values(path("explained_groups.gpkg")):
        print("  " + line)
    render_maps(
        [
            (path("mosaic.tif"), [(path("shap.tif"), 1, path("tiles.gpkg"), "")], path("shap_map.png"), None),
            (path("mosaic.tif"), [(path("shap_scene.tif"), 1, None, "")], path("shap_scene_map.png"), None),
            (path("mosaic.tif"), [(path("shap_contrast.tif"), 1, path("tiles.gpkg"), contrast_caption(path("contrast_tiles.gpkg")))], path("shap_contrast_map.png"), around_unsure),
            (path("mosaic_nir.tif"), [(path("shap_groups.tif"), 1, None, "RGB evidence (each tile's top class)"), (path("shap_groups.tif"), 2, None, "NIR evidence (the same classes, same scale)")], path("shap_groups_map.png"), None),
        ]
    )
    quality = run("aid_xai:explanation_quality", INPUT=path("mosaic.tif"), MODEL=path("model.aidx.pt"), **explained, TOP_K=1, OUTPUT_TABLE=path("quality.gpkg"), OUTPUT_REPORT=path("quality.html"))
    print("  " + ", ".join(f"{name.lower()} {value:.3f}" for name, value in quality.items() if isinstance(value, float)))
    print("\nOutputs (open the .tif/.gpkg in QGIS: each picks up its .qml style):")
    for name, what in (
        ("model.aidx.pt", "trained model"),
        ("evaluation.html", "evaluation report (held-out synthetic scenes)"),
        ("mosaic.tif", "georeferenced synthetic imagery (EPSG:32633)"),
        ("truth.gpkg", "true class per scene"),
        ("classes.tif", "class raster, one cell per tile"),
        ("probabilities.tif", "probability raster, one band per class"),
        ("tiles.gpkg", "tile layer: top-k classes, margin, entropy"),
        ("shap.tif", "partition-SHAP raster (logits), band per rank (red = pushes the class up)"),
        ("explained_tiles.gpkg", "per tile and class: probability, logit, base value, sum of SHAP"),
        ("explanations.html", "shap.image_plot-style report"),
        ("shap_map.png", "map: SHAP rank 1 over the imagery, rendered by QGIS"),
        ("shap_scene.tif", "whole-mosaic StorageTank evidence: overlapping tiles (stride ½ tile) blended"),
        ("shap_scene_map.png", "map: that seamless layer over the imagery, rendered by QGIS"),
        ("shap_contrast_map.png", "map: the least confident tile, why its top class rather than its runner-up (logit difference)"),
        ("explained_groups.gpkg", "4-band mosaic: per tile, class and band group (RGB, NIR), the group's exact Shapley value"),
        ("shap_groups_map.png", "map: RGB evidence next to NIR evidence for each tile's top class, on one scale"),
        ("quality.html", "faithfulness: deletion/insertion curves vs random, model-randomisation check"),
    ):
        print(f"  {path(name)}  — {what}")


if __name__ == "__main__":
    main()
