"""Pieces several references share, as torchvision.ops builds them."""

from __future__ import annotations

import re

from torch import nn


def conv_norm_act(cin, cout, kernel=3, stride=1, groups=1, activation=nn.ReLU, eps=1e-5, momentum=0.1):
    """torchvision.ops.Conv2dNormActivation: bias-free conv ('.0'), batch norm ('.1'), activation."""
    layers = [nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout, eps=eps, momentum=momentum)]
    if activation is not None:
        layers.append(activation())
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation: x * scale(fc2(act(fc1(avgpool(x)))))."""

    def __init__(self, channels, squeeze, activation=nn.ReLU, scale_activation=nn.Sigmoid):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation, self.scale_activation = activation(), scale_activation()

    def forward(self, x):
        return x * self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))


def rename(rules):
    """A renaming from an ordered list of (pattern, replacement) rules: the first pattern that
    matches the whole name (re.fullmatch) rewrites it; the replacement may be a function of
    the match. A name no rule matches is returned unchanged (the test then finds it unknown)."""
    compiled = [(re.compile(p), r) for p, r in rules]

    def apply(name: str) -> str:
        for pattern, replacement in compiled:
            m = pattern.fullmatch(name)
            if m:
                return replacement(m) if callable(replacement) else m.expand(replacement)
        return name
    return apply
