"""One module per Processing algorithm; the provider instantiates every class listed here."""


def all_algorithms():
    from .classify import ClassifyAlgorithm
    from .evaluate import EvaluateAlgorithm
    from .explain import ExplainAlgorithm
    from .explanation_quality import ExplanationQualityAlgorithm
    from .synthetic_mosaic import SyntheticMosaicAlgorithm
    from .synthetic_scenes import SyntheticScenesAlgorithm
    from .train import TrainAlgorithm

    return [
        TrainAlgorithm(),
        EvaluateAlgorithm(),
        ClassifyAlgorithm(),
        ExplainAlgorithm(),
        ExplanationQualityAlgorithm(),
        SyntheticScenesAlgorithm(),
        SyntheticMosaicAlgorithm(),
    ]
