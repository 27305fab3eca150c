"""A copy of a classifier with re-initialised layers, for the model-randomisation sanity check
(Adebayo et al., 2018): an explanation that depends on what the model learned must change when the
learned weights are replaced by fresh random ones.

Layers are re-initialised with their own `reset_parameters` (PyTorch's default initialisation) on a
CPU copy, drawing from a seeded torch RNG inside `torch.random.fork_rng`: the same seed gives the
same copy, the process's RNG state is left as it was, and the original model is not touched.
"""

import copy
import hashlib

from ..common.errors import AidXaiError
from .classifier import Classifier
from .model_file import LoadedModel

RANDOMISE_SCOPES = ("head", "all")


def layers_to_randomise(module, scope):
    """[(name, layer)] re-initialised for `scope`: 'all' = every layer with parameters; 'head' =
    those registered after the last convolution (Net: fc1, fc2, fc3), in registration order."""
    from torch import nn

    if scope not in RANDOMISE_SCOPES:
        raise AidXaiError(f"Unknown RANDOMISE '{scope}'; use one of: {', '.join(RANDOMISE_SCOPES)}.")
    layers = [(name, layer) for name, layer in module.named_modules() if list(layer.parameters(recurse=False))]
    if not layers:
        raise AidXaiError("The model has no torch layers to re-initialise (an imported ONNX/TorchScript graph keeps its weights inside the graph); the randomisation check needs a model trained or loaded as torch layers.")
    if scope == "head":
        convolutions = [index for index, (_, layer) in enumerate(layers) if isinstance(layer, nn.modules.conv._ConvNd)]
        if not convolutions:
            raise AidXaiError("The model has no convolution, so it has no head after one to randomise; use RANDOMISE=all.")
        layers = layers[convolutions[-1] + 1 :]
        if not layers:
            raise AidXaiError("The model has no layer with weights after its last convolution; use RANDOMISE=all.")
    lacking = [name for name, layer in layers if not hasattr(layer, "reset_parameters")]
    if lacking:
        raise AidXaiError(f"Layers {lacking} have no reset_parameters, so they cannot be re-initialised; this check supports standard torch layers.")
    return layers


def randomised_classifier(classifier, scope="head", seed=0):
    """A new Classifier on `classifier`'s device whose `scope` layers are re-initialised from `seed`."""
    import torch

    module = copy.deepcopy(classifier.module).cpu()  # CPU: one generator to fork, whatever the device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _, layer in layers_to_randomise(module, scope):
            layer.reset_parameters()
    # its own identity: anything keyed by a model's SHA-256 must never take it for the trained model
    identity = hashlib.sha256(f"{classifier.sha256} randomised {scope} seed {seed}".encode("ascii")).hexdigest()
    loaded = LoadedModel(module=module, info=classifier.info, path=f"(randomised {scope}, seed {seed})", sha256=identity)
    return Classifier(loaded, classifier.device)
