"""One module per Processing algorithm; the provider instantiates every class listed here."""


def all_algorithms():
    from .classify import ClassifyAlgorithm
    from .evaluate import EvaluateAlgorithm
    from .explain import ExplainAlgorithm
    from .explanation_quality import ExplanationQualityAlgorithm
    from .export_onnx import ExportOnnxAlgorithm
    from .import_model import ImportModelAlgorithm
    from .synthetic_mosaic import SyntheticMosaicAlgorithm
    from .synthetic_scenes import SyntheticScenesAlgorithm
    from .train import TrainAlgorithm

    return [
        TrainAlgorithm(),
        EvaluateAlgorithm(),
        ImportModelAlgorithm(),
        ExportOnnxAlgorithm(),
        ClassifyAlgorithm(),
        ExplainAlgorithm(),
        ExplanationQualityAlgorithm(),
        SyntheticScenesAlgorithm(),
        SyntheticMosaicAlgorithm(),
    ]
