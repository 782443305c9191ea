"""DeepLabV3-ResNet50 as torchvision.models.segmentation builds it (no auxiliary head): a
ResNet-50 whose last two stages trade their stride for dilation (output stride 8), ASPP with
its pooling branch, and bilinear upsampling to the input."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .common import each, rename
from .resnet import resnet_names


class Bottleneck(nn.Module):
    def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class Backbone(nn.Module):
    """torchvision's ResNet-50 with replace_stride_with_dilation=[False, True, True], up to layer4."""

    def __init__(self):
        super().__init__()
        self.inplanes, self.dilation = 64, 1
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(64, 3)
        self.layer2 = self._make_layer(128, 4, 2)
        self.layer3 = self._make_layer(256, 6, 2, dilate=True)
        self.layer4 = self._make_layer(512, 3, 2, dilate=True)

    def _make_layer(self, planes, blocks, stride=1, dilate=False):
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes * 4))
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, previous_dilation)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class ASPPPooling(nn.Sequential):
    def __init__(self, cin, cout):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())

    def forward(self, x):
        size = x.shape[-2:]
        return F.interpolate(super().forward(x), size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    def __init__(self, cin, rates, cout=256, dropout=0.5):
        super().__init__()
        branches = [nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())]
        branches += [nn.Sequential(nn.Conv2d(cin, cout, 3, padding=r, dilation=r, bias=False),
                                   nn.BatchNorm2d(cout), nn.ReLU()) for r in rates]
        branches.append(ASPPPooling(cin, cout))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(nn.Conv2d(len(branches) * cout, cout, 1, bias=False), nn.BatchNorm2d(cout),
                                     nn.ReLU(), nn.Dropout(dropout))

    def forward(self, x):
        return self.project(torch.cat([conv(x) for conv in self.convs], dim=1))


class DeepLabV3(nn.Module):
    def __init__(self, num_classes=21, dropout=0.5):
        super().__init__()
        self.backbone = Backbone()
        self.classifier = nn.Sequential(ASPP(2048, [12, 24, 36], dropout=dropout), nn.Conv2d(256, 256, 3, padding=1, bias=False),
                                        nn.BatchNorm2d(256), nn.ReLU(), nn.Conv2d(256, num_classes, 1))

    def forward(self, x):
        y = self.classifier(self.backbone(x))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


def deeplabv3_resnet50(num_classes=21, dropout=0.5):
    return DeepLabV3(num_classes, dropout)


def _name(name: str) -> str:
    if name.startswith(("stem1/", "stage")):
        return "backbone." + resnet_names([name])[name]
    return rename([
        (r"aspp1/conv_bn_relu([1-4])/conv1\.(\w+)", lambda m: f"classifier.0.convs.{int(m[1]) - 1}.0.{m[2]}"),
        (r"aspp1/conv_bn_relu([1-4])/batchnorm1\.(\w+)", lambda m: f"classifier.0.convs.{int(m[1]) - 1}.1.{m[2]}"),
        (r"aspp1/image_pool1/conv_bn_relu1/conv1\.(\w+)", r"classifier.0.convs.4.1.\1"),
        (r"aspp1/image_pool1/conv_bn_relu1/batchnorm1\.(\w+)", r"classifier.0.convs.4.2.\1"),
        (r"aspp1/conv_bn_relu5/conv1\.(\w+)", r"classifier.0.project.0.\1"),
        (r"aspp1/conv_bn_relu5/batchnorm1\.(\w+)", r"classifier.0.project.1.\1"),
        (r"conv_bn_relu1/conv1\.(\w+)", r"classifier.1.\1"),
        (r"conv_bn_relu1/batchnorm1\.(\w+)", r"classifier.2.\1"),
        (r"conv1\.(\w+)", r"classifier.4.\1"),
    ])(name)


names = each(_name)
