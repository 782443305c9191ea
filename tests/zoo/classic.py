"""VGG-19 and SqueezeNet 1.1 as torchvision.models builds them."""

from __future__ import annotations

import re

import torch
from torch import nn

from .common import each, rename


def vgg19(num_classes=1000, dropout=0.5, hidden=4096):
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
           512, 512, 512, 512, "M"]
    layers, cin = [], 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
            cin = v
    model = nn.Sequential()
    model.features = nn.Sequential(*layers)
    model.avgpool = nn.AdaptiveAvgPool2d((7, 7))
    model.flatten = nn.Flatten(1)
    model.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, hidden), nn.ReLU(), nn.Dropout(dropout),
                                     nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
                                     nn.Linear(hidden, num_classes))
    return model


class Fire(nn.Module):
    def __init__(self, inplanes, squeeze, expand1x1, expand3x3):
        super().__init__()
        self.squeeze = nn.Conv2d(inplanes, squeeze, 1)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.relu(self.squeeze(x))
        return torch.cat([self.relu(self.expand1x1(x)), self.relu(self.expand3x3(x))], 1)


def squeezenet1_1(num_classes=1000, dropout=0.5):
    model = nn.Sequential()
    model.features = nn.Sequential(
        nn.Conv2d(3, 64, 3, stride=2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(64, 16, 64, 64), Fire(128, 16, 64, 64), nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(128, 32, 128, 128), Fire(256, 32, 128, 128), nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(256, 48, 192, 192), Fire(384, 48, 192, 192), Fire(384, 64, 256, 256), Fire(512, 64, 256, 256))
    model.classifier = nn.Sequential(nn.Dropout(dropout), nn.Conv2d(512, num_classes, 1), nn.ReLU(),
                                     nn.AdaptiveAvgPool2d((1, 1)))
    model.flatten = nn.Flatten(1)
    return model


def _vgg19_name(name: str) -> str:
    """specs/vgg19.net's names -> torchvision's: blockB/convK is features.i, i counting each conv
    and its ReLU, and a pool after each block."""
    m = re.fullmatch(r"block(\d)/conv(\d)\.(\w+)", name)
    if m:
        block, conv, param = int(m[1]), int(m[2]), m[3]
        convs = [2, 2, 4, 4, 4]
        index = sum(2 * n + 1 for n in convs[:block - 1]) + 2 * (conv - 1)
        return f"features.{index}.{param}"
    return rename([(r"fc1\.(\w+)", r"classifier.0.\1"), (r"fc2\.(\w+)", r"classifier.3.\1"),
                   (r"predictions\.(\w+)", r"classifier.6.\1")])(name)


vgg19_names = each(_vgg19_name)

_FIRES = [3, 4, 6, 7, 9, 10, 11, 12]   # the fire modules' places in torchvision's features
squeezenet1_1_names = each(rename([
    (r"conv1\.(\w+)", r"features.0.\1"),
    (r"fire(\d)/s/conv1\.(\w+)", lambda m: f"features.{_FIRES[int(m[1]) - 1]}.squeeze.{m[2]}"),
    (r"fire(\d)/conv(\d)\.(\w+)",
     lambda m: f"features.{_FIRES[int(m[1]) - 1]}.expand{'1x1' if m[2] == '1' else '3x3'}.{m[3]}"),
    (r"conv2\.(\w+)", r"classifier.1.\1"),
]))
