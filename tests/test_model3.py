"""The shipped modeler workflow (resources/models/classify_explain_least_confident.model3) opens clean:
valid, every step's parameters set, inputs raster → model → settings, no overlapping boxes; and
neither starting QGIS nor running the model logs noise ("Duplicate output …", "[OGR] Cannot open …")."""

import os

import pytest
from conftest import ROOT, run_qgis_process

MODEL3 = os.path.join(ROOT, "resources", "models", "classify_explain_least_confident.model3")
INPUTS = ["input_raster", "model_file", "number_of_tiles", "shap_evaluations"]
OUTPUTS = {
    "aid_xai:classify_1:Classified tiles",
    "aid_xai:explain_1:Least confident tiles",
    "aid_xai:explain_1:SHAP map of the least confident tiles",
    "aid_xai:explain_1:Explanation report",
}
BOX = (200.0, 60.0)  # a component box in the modeler is at most about this large (model units)
NOISE = ("Duplicate output", "Cannot open")


def load_model():
    from qgis.core import QgsProcessingModelAlgorithm

    model = QgsProcessingModelAlgorithm()
    assert model.fromFile(MODEL3), f"could not load {MODEL3}"
    return model


def component_boxes(model):
    """(label, left, top, right, bottom) of every input, step and output component, each at least
    BOX large around its centre (QGIS positions components by their centre)."""
    components = [(f"input {name}", component) for name, component in model.parameterComponents().items()]
    for child_id, child in model.childAlgorithms().items():
        components.append((f"step {child_id}", child))
        components += [(f"output {child_id}:{name}", output) for name, output in child.modelOutputs().items()]
    boxes = []
    for label, component in components:
        centre, size = component.position(), component.size()
        width, height = max(size.width(), BOX[0]), max(size.height(), BOX[1])
        boxes.append((label, centre.x() - width / 2, centre.y() - height / 2, centre.x() + width / 2, centre.y() + height / 2))
    return boxes


def overlaps(boxes):
    found = []
    for i, (label_a, left_a, top_a, right_a, bottom_a) in enumerate(boxes):
        for label_b, left_b, top_b, right_b, bottom_b in boxes[i + 1 :]:
            if left_a < right_b and left_b < right_a and top_a < bottom_b and top_b < bottom_a:
                found.append((label_a, label_b))
    return found


def test_shipped_model_validates_with_every_step_parameter_set(aid_xai_provider):
    model = load_model()
    ok, issues = model.validate()
    assert ok and list(issues) == [], issues
    for child_id, child in model.childAlgorithms().items():
        ok, issues = model.validateChildAlgorithm(child_id)
        assert ok and list(issues) == [], (child_id, issues)
        algorithm = child.algorithm()
        expected = {d.name() for d in algorithm.parameterDefinitions() if not d.isDestination()}
        missing = expected - set(child.parameterSources())
        assert not missing, f"{child_id}: parameters not set in the model (rebuild it with scripts/build_model3.py): {sorted(missing)}"


def test_inputs_come_raster_first_and_outputs_say_what_they_are(aid_xai_provider):
    model = load_model()
    inputs = [d for d in model.parameterDefinitions() if not d.isDestination()]
    assert [d.name() for d in inputs] == INPUTS
    assert INPUTS == sorted(INPUTS)  # QGIS 3.22 lists model inputs by name
    raster = model.parameterDefinition("input_raster")
    assert raster.type() == "raster" and raster.defaultValue() is None
    assert {d.name() for d in model.parameterDefinitions() if d.isDestination()} == OUTPUTS
    for name in OUTPUTS:
        assert model.parameterDefinition(name).description() == name.split(":")[-1]


def test_components_are_laid_out_left_to_right_without_overlap(aid_xai_provider):
    model = load_model()
    boxes = component_boxes(model)
    assert len(boxes) == 4 + 4 + 4  # inputs, steps, outputs
    assert overlaps(boxes) == []
    children = model.childAlgorithms()
    x = {child_id: child.position().x() for child_id, child in children.items()}
    inputs_right = max(c.position().x() for c in model.parameterComponents().values())
    assert inputs_right < x["aid_xai:classify_1"] < x["native:orderbyexpression_1"] < x["native:extractbyexpression_1"] < x["aid_xai:explain_1"]
    for child_id, child in children.items():
        for output in child.modelOutputs().values():  # each output sits beside its step
            assert abs(output.position().x() - child.position().x()) <= 300 and abs(output.position().y() - child.position().y()) <= 300


def test_registering_the_provider_logs_no_duplicate_outputs(qgis_app, qgis_processing):
    from qgis.core import QgsApplication

    from aid_xai_plugin.provider import AidXaiProvider

    messages = []
    handler = lambda message, tag, level: messages.append(f"[{tag}] {message}")  # noqa: E731
    QgsApplication.messageLog().messageReceived.connect(handler)
    try:
        provider = AidXaiProvider()
        provider.refreshAlgorithms()  # adds each algorithm: its initAlgorithm runs
        for algorithm in provider.algorithms():
            algorithm.create()
    finally:
        QgsApplication.messageLog().messageReceived.disconnect(handler)
    assert not [m for m in messages if "Duplicate output" in m], messages


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    from aid_xai_plugin.core.data.synthetic import make_scene_mosaic

    path = str(tmp_path_factory.mktemp("model3_mosaic") / "mosaic.tif")
    make_scene_mosaic(path, rows=2, cols=3, scene_px=64, pixel_size=2.0, seed=5)
    return path


def test_running_the_model_logs_no_noise(aid_xai_provider, mosaic, synthetic_model, tmp_path):
    """In process, as the desktop runs it: QGIS's message log stays free of noise (the
    "[OGR] Cannot open …OUTPUT_CLASSES.tif" QGIS 3.22 logs when a raster output is left to a
    temporary file and returned to the model)."""
    import processing
    from qgis.core import QgsApplication

    model = load_model()
    messages = []
    handler = lambda message, tag, level: messages.append(f"[{tag}] {message}")  # noqa: E731
    QgsApplication.messageLog().messageReceived.connect(handler)
    try:
        processing.run(
            model,
            {
                "input_raster": mosaic,
                "model_file": synthetic_model,
                "number_of_tiles": 2,
                "shap_evaluations": 40,
                "aid_xai:classify_1:Classified tiles": str(tmp_path / "tiles.gpkg"),
                "aid_xai:explain_1:Least confident tiles": str(tmp_path / "least.gpkg"),
                "aid_xai:explain_1:SHAP map of the least confident tiles": str(tmp_path / "shap.tif"),
                "aid_xai:explain_1:Explanation report": str(tmp_path / "report.html"),
            },
        )
    finally:
        QgsApplication.messageLog().messageReceived.disconnect(handler)
    assert (tmp_path / "shap.tif").exists()
    assert not [m for m in messages if any(noise in m for noise in NOISE)], messages


def test_qgis_process_prints_no_noise(mosaic, synthetic_model, tmp_path):
    """qgis_process listing, help and a model run: neither message in stdout or stderr (QGIS 3.22's
    qgis_process doesn't print its message log; newer ones may)."""
    runs = [
        run_qgis_process("list"),
        run_qgis_process("help", "aid_xai:synthetic_scenes"),
        run_qgis_process("help", MODEL3),
        run_qgis_process(
            "run", MODEL3, "--", f"input_raster={mosaic}", f"model_file={synthetic_model}", "number_of_tiles=2", "shap_evaluations=40",
            f"aid_xai:explain_1:Least confident tiles={tmp_path / 'least.gpkg'}",
            f"aid_xai:explain_1:SHAP map of the least confident tiles={tmp_path / 'shap.tif'}",
        ),
    ]  # fmt: skip
    for completed in runs:
        assert completed.returncode == 0, f"{completed.args}:\n{completed.stdout[-2000:]}\n{completed.stderr[-2000:]}"
        output = completed.stdout + completed.stderr
        assert not [noise for noise in NOISE if noise in output], f"{completed.args}:\n{output[-3000:]}"
    assert "aid_xai:synthetic_scenes" in runs[0].stdout
    assert "OUTPUT: <outputFolder>" in runs[1].stdout  # the destination parameter's output is still listed
    assert (tmp_path / "shap.tif").exists()


def test_a_model_step_after_the_synthetic_mosaic_logs_no_ogr_noise(aid_xai_provider, tmp_path):
    """The mosaic's raster output, described to the next step of a model, is opened as a raster
    (QGIS 3.22 otherwise tries it as a vector first: "[OGR] Cannot open …/OUTPUT.tif")."""
    import processing
    from qgis.core import QgsApplication, QgsProcessingModelAlgorithm, QgsProcessingModelChildAlgorithm
    from qgis.core import QgsProcessingModelChildParameterSource as Source

    model = QgsProcessingModelAlgorithm("mosaic, then statistics", "tests")
    mosaic = QgsProcessingModelChildAlgorithm("aid_xai:synthetic_mosaic")
    mosaic.setChildId("mosaic")
    for name, value in (("ROWS", 1), ("COLUMNS", 2)):
        mosaic.addParameterSources(name, [Source.fromStaticValue(value)])
    model.addChildAlgorithm(mosaic)
    statistics = QgsProcessingModelChildAlgorithm("native:rasterlayerstatistics")
    statistics.setChildId("statistics")
    statistics.addParameterSources("INPUT", [Source.fromChildOutput("mosaic", "OUTPUT")])
    statistics.addParameterSources("BAND", [Source.fromStaticValue(1)])
    model.addChildAlgorithm(statistics)
    messages = []
    handler = lambda message, tag, level: messages.append(f"[{tag}] {message}")  # noqa: E731
    QgsApplication.messageLog().messageReceived.connect(handler)
    try:
        results = processing.run(model, {})
    finally:
        QgsApplication.messageLog().messageReceived.disconnect(handler)
    assert results["CHILD_RESULTS"]["statistics"]["MAX"] > 0
    assert not [m for m in messages if "Cannot open" in m], messages
