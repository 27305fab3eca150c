"""The scene classifier of the source document ("Net"), parameterised by input size, bands, classes.

At 256×256×3 and 30 classes it has exactly the source's 29,623,006 parameters: 5×5 then two 3×3
convolutions, each followed by ReLU and a 2×2 max-pool, then a 256-128-classes head with dropout.
"""

import torch
from torch import nn

from .net_geometry import MIN_INPUT_SIZE, feature_side

ARCHITECTURES = {}


def register(cls):
    ARCHITECTURES[cls.__name__] = cls
    return cls


@register
class Net(nn.Module):
    def __init__(self, num_classes=30, input_size=256, in_bands=3, dropout=0.5):
        super().__init__()
        self.conv1 = nn.Conv2d(in_bands, 32, 5)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(64, 128, 3)
        self.pool3 = nn.MaxPool2d(2)
        side = feature_side(input_size)
        if side < 1:
            raise ValueError(f"input_size {input_size} is too small for Net (needs at least {MIN_INPUT_SIZE} pixels)")
        self.fc1 = nn.Linear(128 * side * side, 256)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(256, 128)
        self.fc3 = nn.Linear(128, num_classes)

    def features(self, x):
        x = self.pool1(torch.relu(self.conv1(x)))
        x = self.pool2(torch.relu(self.conv2(x)))
        return self.pool3(torch.relu(self.conv3(x)))

    def head(self, features):
        x = self.dropout(self.relu(self.fc1(torch.flatten(features, 1))))
        return self.fc3(torch.relu(self.fc2(x)))

    def forward(self, x):
        return self.head(self.features(x))


def build_model(architecture, arguments):
    """The module a model file describes: the source's Net, one of torchvision's backbones, or an
    imported ONNX/TorchScript graph."""
    from .imported_graphs import IMPORTED_ARCHITECTURES, build_imported_model
    from .torchvision_models import TORCHVISION_ARCHITECTURES, build_torchvision_model

    if architecture in ARCHITECTURES:
        return ARCHITECTURES[architecture](**arguments)
    if architecture in TORCHVISION_ARCHITECTURES:
        return build_torchvision_model(architecture, **arguments)
    if architecture in IMPORTED_ARCHITECTURES:
        return build_imported_model(architecture, **arguments)
    raise KeyError(architecture)
