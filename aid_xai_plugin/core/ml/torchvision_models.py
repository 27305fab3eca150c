"""torchvision's scene-classification backbones, for any number of input bands.

The models are built with random weights (the plugin never downloads); a weights file the user
downloaded (a torchvision/timm-style state dict, read with `weights_only=True`) can start training
from it. With more or fewer bands than the 3 of ImageNet weights, the first convolution is rebuilt
for the bands and starts from the RGB filters: bands 1-3 keep them, further bands start from their
mean (a 1- or 2-band model gets the mean, scaled so the response keeps its size).
"""

import os

from ..common.errors import AidXaiError

TORCHVISION_ARCHITECTURES = ("resnet18", "resnet50", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny")
# The classifier head of each family (replaced for the classes, and left trainable when the backbone is frozen)
HEAD_PREFIXES = {"resnet": ("fc.",), "mobilenet": ("classifier.",), "efficientnet": ("classifier.",), "convnext": ("classifier.",)}


def build_torchvision_model(name, num_classes=30, in_bands=3):
    """torchvision's `name` with random weights, `num_classes` outputs and `in_bands` input bands."""
    import torchvision

    if name not in TORCHVISION_ARCHITECTURES:
        raise KeyError(name)
    model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    if in_bands != 3:
        _, parent, attribute, conv = first_convolution(model)
        setattr(parent, attribute, _conv_like(conv, in_bands))
    return model


def first_convolution(model):
    """(qualified name, parent module, attribute name, Conv2d) of the model's first convolution."""
    from torch import nn

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            path = name.split(".")
            parent = model
            for part in path[:-1]:
                parent = getattr(parent, part)
            return name, parent, path[-1], module
    raise AidXaiError("The model has no convolution to take the input bands.")


def _conv_like(conv, in_bands):
    from torch import nn

    return nn.Conv2d(
        in_bands, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode
    )


def head_prefixes(architecture):
    """State-dict key prefixes of the classifier head (Net: its three Linear layers)."""
    if architecture == "Net":
        return ("fc1.", "fc2.", "fc3.")
    family = next((family for family in HEAD_PREFIXES if architecture.startswith(family)), None)
    return HEAD_PREFIXES.get(family, ())


def load_initial_weights(model, path, architecture):
    """Copy the matching tensors of the weights file at `path` into `model`; returns (loaded, skipped)
    key counts. The head is skipped when its class count differs; the first convolution is adapted to
    the model's bands. Refuses files that would run code, and files that match nothing."""
    import pickle

    import torch

    if not os.path.isfile(path):
        raise AidXaiError(f"Initial weights '{path}' do not exist; give the path of a downloaded weights file (.pth/.pt).")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise AidXaiError(f"Initial weights '{path}' were refused: the file holds objects other than tensors (it could run code when loaded). Give a plain state dict.") from error
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise AidXaiError(f"Initial weights '{path}' cannot be read (truncated or not a torch file): {str(error).splitlines()[0]}") from error
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise AidXaiError(f"Initial weights '{path}' are not a state dict (a mapping of parameter names to tensors).")
    state = {key[len("module.") :] if key.startswith("module.") else key: value for key, value in state.items() if torch.is_tensor(value)}
    own = model.state_dict()
    conv_key = first_convolution(model)[0] + ".weight"
    loaded, skipped = {}, []
    for key, target in own.items():
        source = state.get(key)
        if source is None:
            skipped.append(key)
        elif source.shape == target.shape:
            loaded[key] = source.to(target.dtype)
        elif key == conv_key and source.dim() == 4 and source.shape[0] == target.shape[0] and source.shape[2:] == target.shape[2:]:
            loaded[key] = adapt_first_convolution(source, target.shape[1]).to(target.dtype)
        else:
            skipped.append(key)
    if not loaded:
        raise AidXaiError(f"Initial weights '{path}' match none of {architecture}'s layers; give weights of the same architecture (torchvision's {architecture}).")
    model.load_state_dict(loaded, strict=False)
    return len(loaded), len(skipped)


def adapt_first_convolution(weight, bands):
    """First-convolution filters for `bands` input bands from RGB ones (out × 3 × k × k)."""
    import torch

    mean = weight.mean(dim=1, keepdim=True)
    if bands < weight.shape[1]:
        return mean.repeat(1, bands, 1, 1) * (weight.shape[1] / bands)
    return torch.cat([weight, mean.repeat(1, bands - weight.shape[1], 1, 1)], dim=1)
