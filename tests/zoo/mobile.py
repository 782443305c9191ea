"""MobileNet v3-Large, EfficientNet-B0 and ShuffleNet v2 x1.0 as torchvision.models builds them."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from .common import SqueezeExcitation, conv_norm_act, each, inverted_residual_units, rename


class Hardsigmoid(nn.Module):
    """nn.Hardsigmoid's function; PyTorch's own backward uses 1/6 rounded to float32 even in
    float64 (a 3e-8 relative error), which would hide the comparison's 1e-8."""

    def forward(self, x):
        return nn.functional.relu6(x + 3) / 6


def make_divisible(v, divisor=8):
    """torchvision's _make_divisible: the nearest multiple of divisor, never 10% below v."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class InvertedResidualV3(nn.Module):
    def __init__(self, cin, kernel, expanded, cout, use_se, activation, stride, norm):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        act = nn.Hardswish if activation == "HS" else nn.ReLU
        cna = partial(conv_norm_act, **norm)
        layers = []
        if expanded != cin:
            layers.append(cna(cin, expanded, 1, activation=act))
        layers.append(cna(expanded, expanded, kernel, stride, groups=expanded, activation=act))
        if use_se:
            layers.append(SqueezeExcitation(expanded, make_divisible(expanded // 4), scale_activation=Hardsigmoid))
        layers.append(cna(expanded, cout, 1, activation=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        y = self.block(x)
        return y + x if self.use_res_connect else y


V3_LARGE = [(16, 3, 16, 16, False, "RE", 1), (16, 3, 64, 24, False, "RE", 2), (24, 3, 72, 24, False, "RE", 1),
            (24, 5, 72, 40, True, "RE", 2), (40, 5, 120, 40, True, "RE", 1), (40, 5, 120, 40, True, "RE", 1),
            (40, 3, 240, 80, False, "HS", 2), (80, 3, 200, 80, False, "HS", 1), (80, 3, 184, 80, False, "HS", 1),
            (80, 3, 184, 80, False, "HS", 1), (80, 3, 480, 112, True, "HS", 1), (112, 3, 672, 112, True, "HS", 1),
            (112, 5, 672, 160, True, "HS", 2), (160, 5, 960, 160, True, "HS", 1), (160, 5, 960, 160, True, "HS", 1)]


def mobilenet_v3_large(num_classes=1000, dropout=0.2):
    norm = {"eps": 0.001, "momentum": 0.01}
    layers = [conv_norm_act(3, 16, 3, 2, activation=nn.Hardswish, **norm)]
    layers += [InvertedResidualV3(*cfg, norm=norm) for cfg in V3_LARGE]
    layers.append(conv_norm_act(160, 960, 1, activation=nn.Hardswish, **norm))
    model = nn.Sequential()
    model.features = nn.Sequential(*layers)
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.flatten = nn.Flatten(1)
    model.classifier = nn.Sequential(nn.Linear(960, 1280), nn.Hardswish(), nn.Dropout(dropout),
                                     nn.Linear(1280, num_classes))
    return model


class MBConv(nn.Module):
    """EfficientNet's block; stochastic depth is the identity here (the parity runs use rate 0)."""

    def __init__(self, expand_ratio, kernel, stride, cin, cout):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        expanded = make_divisible(cin * expand_ratio)
        layers = []
        if expanded != cin:
            layers.append(conv_norm_act(cin, expanded, 1, activation=nn.SiLU))
        layers.append(conv_norm_act(expanded, expanded, kernel, stride, groups=expanded, activation=nn.SiLU))
        layers.append(SqueezeExcitation(expanded, max(1, cin // 4), activation=nn.SiLU))
        layers.append(conv_norm_act(expanded, cout, 1, activation=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        y = self.block(x)
        return y + x if self.use_res_connect else y


B0 = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
      (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]


def efficientnet_b0(num_classes=1000, dropout=0.2):
    layers = [conv_norm_act(3, 32, 3, 2, activation=nn.SiLU)]
    for expand, kernel, stride, cin, cout, repeats in B0:
        layers.append(nn.Sequential(*(MBConv(expand, kernel, stride if i == 0 else 1, cin if i == 0 else cout, cout)
                                      for i in range(repeats))))
    layers.append(conv_norm_act(320, 1280, 1, activation=nn.SiLU))
    model = nn.Sequential()
    model.features = nn.Sequential(*layers)
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.flatten = nn.Flatten(1)
    model.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))
    return model


def channel_shuffle(x, groups):
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, inp, oup, stride):
        super().__init__()
        self.stride = stride
        f = oup // 2
        if stride > 1:
            self.branch1 = nn.Sequential(nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
                                         nn.BatchNorm2d(inp), nn.Conv2d(inp, f, 1, bias=False),
                                         nn.BatchNorm2d(f), nn.ReLU())
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(nn.Conv2d(inp if stride > 1 else f, f, 1, bias=False), nn.BatchNorm2d(f),
                                     nn.ReLU(), nn.Conv2d(f, f, 3, stride, 1, groups=f, bias=False),
                                     nn.BatchNorm2d(f), nn.Conv2d(f, f, 1, bias=False), nn.BatchNorm2d(f),
                                     nn.ReLU())

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), 1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), 1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, repeats=(4, 8, 4), channels=(24, 116, 232, 464, 1024), num_classes=1000):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, channels[0], 3, 2, 1, bias=False), nn.BatchNorm2d(channels[0]),
                                   nn.ReLU())
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = channels[0]
        for i, (r, cout) in enumerate(zip(repeats, channels[1:4]), start=2):
            setattr(self, f"stage{i}", nn.Sequential(ShuffleUnit(cin, cout, 2),
                                                     *(ShuffleUnit(cout, cout, 1) for _ in range(r - 1))))
            cin = cout
        self.conv5 = nn.Sequential(nn.Conv2d(cin, channels[-1], 1, bias=False), nn.BatchNorm2d(channels[-1]),
                                   nn.ReLU())
        self.fc = nn.Linear(channels[-1], num_classes)

    def forward(self, x):
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
        return self.fc(x.mean([2, 3]))


def shufflenet_v2_x1_0(num_classes=1000):
    return ShuffleNetV2(num_classes=num_classes)


# netspec's specs/mobilenet_v3_large.net: bneck1..15 are features.1..15
mobilenet_v3_large_names = inverted_residual_units(
    {f"bneck{k}/": f"features.{k}." for k in range(1, 16)},
    {r"conv_bn1/y/conv1\.(\w+)": r"features.0.0.\1", r"conv_bn1/y/batchnorm1\.(\w+)": r"features.0.1.\1",
     r"conv_bn2/y/conv1\.(\w+)": r"features.16.0.\1", r"conv_bn2/y/batchnorm1\.(\w+)": r"features.16.1.\1",
     r"dense1\.(\w+)": r"classifier.0.\1", r"dense2\.(\w+)": r"classifier.3.\1"})

# specs/efficientnet_b0.net: mbconv1..16 are the units of features.1..7, stage by stage
_B0_UNITS = [(stage, i) for stage, cfg in enumerate(B0, start=1) for i in range(cfg[-1])]
efficientnet_b0_names = inverted_residual_units(
    {f"mbconv{k}/": f"features.{stage}.{i}." for k, (stage, i) in enumerate(_B0_UNITS, start=1)},
    {r"conv_bn1/y/conv1\.(\w+)": r"features.0.0.\1", r"conv_bn1/y/batchnorm1\.(\w+)": r"features.0.1.\1",
     r"conv_bn2/y/conv1\.(\w+)": r"features.8.0.\1", r"conv_bn2/y/batchnorm1\.(\w+)": r"features.8.1.\1",
     r"dense1\.(\w+)": r"classifier.1.\1"})

# specs/shufflenet_v2.net: stageS is torchvision's stage{S+1}, down_unit1 its unit 0 and unitK
# unit K; `left` is torchvision's branch1 and the spec's `branch` block its branch2
_LEFT = {"depthwise_conv1": 0, "batchnorm1": 1, "conv1": 2, "batchnorm2": 3}
_RIGHT = {"conv1": 0, "batchnorm1": 1, "depthwise_conv1": 3, "batchnorm2": 4, "conv2": 5, "batchnorm3": 6}
shufflenet_v2_names = each(rename([
    (r"conv1\.(\w+)", r"conv1.0.\1"), (r"batchnorm1\.(\w+)", r"conv1.1.\1"),
    (r"conv2\.(\w+)", r"conv5.0.\1"), (r"batchnorm2\.(\w+)", r"conv5.1.\1"),
    (r"dense1\.(\w+)", r"fc.\1"),
    (r"stage(\d)/down_unit1/left/(\w+)\.(\w+)",
     lambda m: f"stage{int(m[1]) + 1}.0.branch1.{_LEFT[m[2]]}.{m[3]}"),
    (r"stage(\d)/(?:down_unit1|unit(\d+))/branch1/(\w+)\.(\w+)",
     lambda m: f"stage{int(m[1]) + 1}.{m[2] or 0}.branch2.{_RIGHT[m[3]]}.{m[4]}"),
]))
