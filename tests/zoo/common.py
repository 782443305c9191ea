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


def each(rename_one):
    """A renaming of a whole list of names from a renaming of one name."""
    return lambda names: {n: rename_one(n) for n in names}


_SUBLAYER = rename([
    (r"y/conv1\.(\w+)", r"0.\1"),               # Conv2dNormActivation's conv ...
    (r"y/batchnorm1\.(\w+)", r"1.\1"),          # ... and its batch norm
    (r"gate/conv(\d)\.(\w+)", r"fc\1.\2"),      # SqueezeExcitation's two 1x1 convs
])


def inverted_residual_units(units: dict[str, str], tail: dict[str, str]):
    """The renaming of a MobileNet v3 / EfficientNet style network: `units` maps the prefix of
    each netspec unit (a block instance, 'bneck3/') to its torchvision module path
    ('features.3.'); inside a unit, its sublayers (conv_bn and squeeze_excite instances) become
    `block.0`, `block.1`, ... in the order they appear, as torchvision's Sequential numbers
    them (a unit without an expansion starts at its depthwise conv). `tail` renames the rest."""
    other = rename(list(tail.items()))

    def apply(names):
        out, slots = {}, {}
        for n in names:
            unit = next((u for u in units if n.startswith(u)), None)
            if unit is None:
                out[n] = other(n)
                continue
            slot, _, param = n[len(unit):].rpartition("/")  # 'd/conv_bn1/y', 'conv1.weight'
            slot, _, inner = slot.rpartition("/")           # 'd/conv_bn1', 'y'
            seen = slots.setdefault(unit, [])
            if slot not in seen:
                seen.append(slot)
            out[n] = f"{units[unit]}block.{seen.index(slot)}.{_SUBLAYER(inner + '/' + param)}"
        return out
    return apply
