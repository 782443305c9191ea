"""ResNet / ResNeXt bottleneck networks as torchvision.models.resnet builds them (v1.5: the
stride in the 3x3 conv), written out here so that the test needs no torchvision."""

from __future__ import annotations

import re

from torch import nn

from .common import each


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        # in torchvision's order (the shortcut after the main path), which exporters follow
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, layers, num_classes=1000, groups=1, width_per_group=64):
        super().__init__()
        self.inplanes, self.groups, self.base_width = 64, groups, width_per_group
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], 2)
        self.layer3 = self._make_layer(256, layers[2], 2)
        self.layer4 = self._make_layer(512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * Bottleneck.expansion, num_classes)

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, 1, stride,
                                                 bias=False), nn.BatchNorm2d(planes * Bottleneck.expansion))
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, self.groups, self.base_width)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes, groups=self.groups, base_width=self.base_width)
                   for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def resnext50_32x4d(num_classes=1000):
    return ResNet([3, 4, 6, 3], num_classes, groups=32, width_per_group=4)


def _resnet_name(name: str) -> str:
    """netspec's name of a parameter of specs/lib/resnet_blocks.net's networks -> torchvision's."""
    name = re.sub(r"^stem1/conv1\.", "conv1.", name)
    name = re.sub(r"^stem1/batchnorm1\.", "bn1.", name)
    name = re.sub(r"^dense1\.", "fc.", name)
    m = re.match(r"^stage(\d+)/bottleneck(\d+)/(main|skip)/(conv|batchnorm)(\d)\.(.*)$", name)
    if m:
        stage, unit, branch, kind, i, param = m.groups()
        prefix = f"layer{stage}.{int(unit) - 1}."
        if branch == "main":
            return prefix + f"{'conv' if kind == 'conv' else 'bn'}{i}.{param}"
        return prefix + f"downsample.{0 if kind == 'conv' else 1}.{param}"
    return name


resnet_names = each(_resnet_name)
