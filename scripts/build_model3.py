"""Build resources/models/classify_explain_least_confident.model3 with QGIS's model API.

Run with the project's environment (bin/qgis_process's PYTHONPATH): `.venv/bin/python scripts/build_model3.py`.
Rebuild after changing algorithm parameters; the .model3 is committed so users need not run this.

What the graphical modeler should show when the file is opened (tests/test_model3.py checks it):
- inputs, steps and outputs laid out left to right, no two boxes overlapping; each output beside its step;
- every parameter of every step set explicitly (wired to an input or a previous step, or a static value
  equal to the algorithm's default), so "Validate model" finds nothing and Run doesn't say "Model is Invalid";
- inputs in the order raster → model → settings: QGIS 3.22 lists model inputs by name, so their names
  sort that way (input_raster < model_file < number_of_tiles < shap_evaluations); QGIS ≥ 3.26 also
  gets the order explicitly (setParameterOrder);
- the raster input has no default layer, and outputs are named after what they hold ("Classified tiles",
  "Least confident tiles", "SHAP map of the least confident tiles", "Explanation report").
"""

import os
import sys

os.environ.setdefault("QT_HASH_SEED", "0")  # a fixed attribute order in the XML: rebuilds give the same file

from qgis.core import (  # noqa: E402 (after the seed is set)
    QgsApplication,
    QgsProcessingModelAlgorithm,
    QgsProcessingModelChildAlgorithm,
    QgsProcessingModelChildParameterSource,
    QgsProcessingModelOutput,
    QgsProcessingModelParameter,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
)
from qgis.PyQt.QtCore import QPointF  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from aid_xai_plugin.qgis_compat import NUMBER_INTEGER  # noqa: E402 (needs ROOT on sys.path)

TARGET = os.path.join(ROOT, "resources", "models", "classify_explain_least_confident.model3")
Source = QgsProcessingModelChildParameterSource

# Model inputs in the order the run dialog should list them (QGIS 3.22 sorts by name: keep them sorted).
INPUTS = ("input_raster", "model_file", "number_of_tiles", "shap_evaluations")

# Outputs: the modeler labels each output with its name, so names are the words a user reads; on the
# command line they are `<step>:<name>`, e.g. "aid_xai:explain_1:SHAP map of the least confident tiles=shap.tif".
# "Least confident tiles" is Explain's tile table (the N tiles, per class: probability, SHAP sum…), styled
# and labelled by the plugin; the extract step's own output stays internal: QGIS would load it with a
# random opaque fill that hides the rasters below.
OUTPUT_SHAP = "SHAP map of the least confident tiles"

# Layout in model units: a grid of cells COLUMN × ROW, each holding one component box (≤ 200 × 60).
COLUMN, ROW = 280.0, 100.0
LEFT, TOP = 140.0, 80.0


def at(column, row):
    """Centre of grid cell (column, row): QGIS positions a component by its centre."""
    return QPointF(LEFT + column * COLUMN, TOP + row * ROW)


def child(model, algorithm_id, child_id, description, position, wired, outputs=()):
    """Add step `child_id`: `wired` maps parameters to sources; every other non-destination parameter
    gets a static value equal to the algorithm's default. `outputs`: (name, child output, description)
    exposed as model outputs, placed one row apart below the step."""
    step = QgsProcessingModelChildAlgorithm(algorithm_id)
    step.setChildId(child_id)
    step.setDescription(description)
    step.setPosition(position)
    algorithm = QgsApplication.processingRegistry().algorithmById(algorithm_id)
    if algorithm is None:
        sys.exit(f"{algorithm_id} is not registered (did the AID-XAI provider fail to load?)")
    unknown = set(wired) - {definition.name() for definition in algorithm.parameterDefinitions()}
    if unknown:
        sys.exit(f"{algorithm_id} has no parameter(s) {', '.join(sorted(unknown))}")
    for definition in algorithm.parameterDefinitions():
        if definition.isDestination():
            continue
        source = wired.get(definition.name(), Source.fromStaticValue(definition.defaultValue()))
        step.addParameterSources(definition.name(), [source])
    exposed = {}
    for index, (name, child_output, description_text) in enumerate(outputs, start=1):
        output = QgsProcessingModelOutput(name, description_text)
        output.setChildId(child_id)
        output.setChildOutputName(child_output)
        output.setPosition(QPointF(position.x(), position.y() + index * ROW))
        exposed[name] = output
    step.setModelOutputs(exposed)
    model.addChildAlgorithm(step)


def build():
    model = QgsProcessingModelAlgorithm("Classify, then explain the least confident tiles", "AID XAI", "aid_xai")
    model.setHelpContent(
        {
            "ALG_DESC": "Classifies the raster, sorts the tiles by margin (p1 − p2, low = unsure), keeps the N least confident and explains them with partition SHAP.",
            "input_raster": "The imagery to classify (a GDAL raster: GeoTIFF, VRT…).",
            "model_file": "An AID-XAI model file (.aidx.pt) written by Train.",
            "number_of_tiles": "How many of the least confident tiles to explain.",
            "shap_evaluations": "Model evaluations per tile (MAX_EVALS of Explain): more gives finer maps and takes longer.",
        }
    )
    parameters = (
        QgsProcessingParameterRasterLayer("input_raster", "Input raster"),
        QgsProcessingParameterFile("model_file", "Model file (from Train)", fileFilter="AID-XAI model (*.aidx.pt *.pt);;All files (*.*)"),
        QgsProcessingParameterNumber("number_of_tiles", "Number of least confident tiles to explain", NUMBER_INTEGER, 3, minValue=1),
        QgsProcessingParameterNumber("shap_evaluations", "SHAP model evaluations per tile (max_evals)", NUMBER_INTEGER, 500, minValue=3),
    )
    assert tuple(parameter.name() for parameter in parameters) == INPUTS == tuple(sorted(INPUTS))
    for row, parameter in enumerate(parameters):
        component = QgsProcessingModelParameter(parameter.name())
        component.setPosition(at(0, row))
        component.setDescription(parameter.description())
        model.addModelParameter(parameter, component)
    if hasattr(model, "setParameterOrder"):  # QGIS ≥ 3.26
        model.setParameterOrder(list(INPUTS))

    raster, model_file = Source.fromModelParameter("input_raster"), Source.fromModelParameter("model_file")
    child(
        model,
        "aid_xai:classify",
        "aid_xai:classify_1",
        "Classify tiles",
        at(1, 0.5),
        {"INPUT": raster, "MODEL": model_file},
        [("Classified tiles", "OUTPUT_TILES", "Classified tiles")],
    )
    child(
        model,
        "native:orderbyexpression",
        "native:orderbyexpression_1",
        "Least confident first",
        at(2, 0.5),
        {
            "INPUT": Source.fromChildOutput("aid_xai:classify_1", "OUTPUT_TILES"),
            "EXPRESSION": Source.fromStaticValue('"margin"'),
            "ASCENDING": Source.fromStaticValue(True),
            "NULLS_FIRST": Source.fromStaticValue(False),
        },
    )
    child(
        model,
        "native:extractbyexpression",
        "native:extractbyexpression_1",
        "Keep the N least confident",
        at(3, 0.5),
        {
            "INPUT": Source.fromChildOutput("native:orderbyexpression_1", "OUTPUT"),
            "EXPRESSION": Source.fromExpression("'$id <= ' || to_string(@number_of_tiles)"),
        },
    )
    child(
        model,
        "aid_xai:explain",
        "aid_xai:explain_1",
        "Explain them (partition SHAP)",
        at(4, 0.5),
        {
            "INPUT": raster,
            "MODEL": model_file,
            "FEATURES": Source.fromChildOutput("native:extractbyexpression_1", "OUTPUT"),
            "MAX_EVALS": Source.fromModelParameter("shap_evaluations"),
        },
        [(OUTPUT_SHAP, "OUTPUT", OUTPUT_SHAP), ("Least confident tiles", "OUTPUT_TABLE", "Least confident tiles"), ("Explanation report", "OUTPUT_REPORT", "Explanation report")],
    )
    for step in ("native:orderbyexpression_1", "native:extractbyexpression_1", "aid_xai:explain_1"):
        model.childAlgorithm(step).setDependencies([])

    ok, issues = model.validate()
    if not ok:
        sys.exit("the model does not validate:\n" + "\n".join(issues))
    os.makedirs(os.path.dirname(TARGET), exist_ok=True)
    if not model.toFile(TARGET):
        sys.exit(f"could not write {TARGET}")
    print(TARGET)


if __name__ == "__main__":
    app = QgsApplication([], False)
    app.initQgis()
    sys.path.append("/usr/share/qgis/python/plugins")
    from processing.core.Processing import Processing

    Processing.initialize()
    from aid_xai_plugin.provider import AidXaiProvider

    provider = AidXaiProvider()  # keep a Python reference while the registry uses it
    QgsApplication.processingRegistry().addProvider(provider)
    build()
