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


def render_maps(raster, maps):
    """Draw SHAP layers (band 1) over the imagery with QGIS's map renderer, styles from the sidecars;
    `maps`: (SHAP raster, PNG to write, tile layer or None) per picture."""
    from qgis.core import QgsApplication, QgsMapRendererParallelJob, QgsMapSettings, QgsRasterLayer, QgsVectorLayer
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtGui import QColor

    app = QgsApplication([], False)
    app.initQgis()
    imagery = QgsRasterLayer(raster, "imagery")
    for shap_raster, png, tiles in maps:
        shap_layer = QgsRasterLayer(shap_raster, "shap")
        shap_layer.loadNamedStyle(os.path.splitext(shap_raster)[0] + ".qml")
        layers = [shap_layer, imagery]
        if tiles:
            layers.insert(1, QgsVectorLayer(tiles, "tiles"))
            layers[1].loadNamedStyle(os.path.splitext(tiles)[0] + ".qml")
            layers[1].setOpacity(0.35)
        settings = QgsMapSettings()
        settings.setLayers(layers)
        settings.setDestinationCrs(imagery.crs())
        settings.setExtent(imagery.extent())
        settings.setOutputSize(QSize(1200, int(1200 * imagery.height() / imagery.width())))
        settings.setBackgroundColor(QColor(255, 255, 255))
        job = QgsMapRendererParallelJob(settings)
        job.start()
        job.waitForFinished()
        job.renderedImage().save(png, "png")
        del job, settings, shap_layer, layers  # layers must go before QGIS shuts down
    del imagery
    app.exitQgis()


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
    render_maps(path("mosaic.tif"), [(path("shap.tif"), path("shap_map.png"), path("tiles.gpkg")), (path("shap_scene.tif"), path("shap_scene_map.png"), None)])
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
        ("quality.html", "faithfulness: deletion/insertion curves vs random, model-randomisation check"),
    ):
        print(f"  {path(name)}  — {what}")


if __name__ == "__main__":
    main()
