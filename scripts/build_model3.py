"""Build resources/models/classify_explain_least_confident.model3 with QGIS's model API.

Run with the project's environment (bin/qgis_process's PYTHONPATH): `.venv/bin/python scripts/build_model3.py`.
Rebuild after changing algorithm parameters; the .model3 is committed so users need not run this.
"""

import os
import sys

from qgis.core import (
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from aid_xai_plugin.qgis_compat import NUMBER_INTEGER  # noqa: E402 (needs ROOT on sys.path)

TARGET = os.path.join(ROOT, "resources", "models", "classify_explain_least_confident.model3")
Source = QgsProcessingModelChildParameterSource


def child(model, algorithm_id, child_id, description, sources, outputs=()):
    step = QgsProcessingModelChildAlgorithm(algorithm_id)
    step.setChildId(child_id)
    step.setDescription(description)
    for name, source in sources.items():
        step.addParameterSources(name, [source])
    exposed = {}
    for name, child_output, description_text in outputs:
        output = QgsProcessingModelOutput(name, description_text)
        output.setChildId(child_id)
        output.setChildOutputName(child_output)
        exposed[name] = output
    step.setModelOutputs(exposed)
    model.addChildAlgorithm(step)


def build():
    model = QgsProcessingModelAlgorithm("Classify, then explain the least confident tiles", "AID XAI", "aid_xai")
    model.setHelpContent(
        {
            "ALG_DESC": "Classifies the raster, sorts the tiles by margin (p1 − p2, low = unsure), keeps the N least confident and explains them with partition SHAP.",
        }
    )
    for parameter in (
        QgsProcessingParameterRasterLayer("raster", "Raster"),
        QgsProcessingParameterFile("model", "Model file", fileFilter="AID-XAI model (*.aidx.pt)"),
        QgsProcessingParameterNumber("tiles_to_explain", "Number of least-confident tiles to explain", NUMBER_INTEGER, 3, minValue=1),
        QgsProcessingParameterNumber("max_evals", "Model evaluations per tile (max_evals)", NUMBER_INTEGER, 500, minValue=3),
    ):
        model.addModelParameter(parameter, QgsProcessingModelParameter(parameter.name()))
    child(model, "aid_xai:classify", "aid_xai:classify_1", "Classify tiles", {"INPUT": Source.fromModelParameter("raster"), "MODEL": Source.fromModelParameter("model")}, [("tiles", "OUTPUT_TILES", "Classified tiles")])
    child(model, "native:orderbyexpression", "native:orderbyexpression_1", "Least confident first", {"INPUT": Source.fromChildOutput("aid_xai:classify_1", "OUTPUT_TILES"), "EXPRESSION": Source.fromStaticValue('"margin"'), "ASCENDING": Source.fromStaticValue(True), "NULLS_FIRST": Source.fromStaticValue(False)})
    child(
        model,
        "native:extractbyexpression",
        "native:extractbyexpression_1",
        "Keep the N least confident",
        {"INPUT": Source.fromChildOutput("native:orderbyexpression_1", "OUTPUT"), "EXPRESSION": Source.fromExpression("'$id <= ' || to_string(@tiles_to_explain)")},
        [("explained_tiles", "OUTPUT", "Least confident tiles")],
    )
    child(
        model,
        "aid_xai:explain",
        "aid_xai:explain_1",
        "Explain them",
        {
            "INPUT": Source.fromModelParameter("raster"),
            "MODEL": Source.fromModelParameter("model"),
            "FEATURES": Source.fromChildOutput("native:extractbyexpression_1", "OUTPUT"),
            "MAX_EVALS": Source.fromModelParameter("max_evals"),
        },
        [("shap", "OUTPUT", "SHAP raster"), ("report", "OUTPUT_REPORT", "Explanation report")],
    )
    for step in ("native:orderbyexpression_1", "native:extractbyexpression_1", "aid_xai:explain_1"):
        model.childAlgorithm(step).setDependencies([])
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

    QgsApplication.processingRegistry().addProvider(AidXaiProvider())
    build()
