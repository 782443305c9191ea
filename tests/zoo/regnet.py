"""RegNetY as torchvision.models.regnet builds it (ResBottleneckBlock with squeeze-and-excitation)."""

from __future__ import annotations

from torch import nn

from .common import SqueezeExcitation, conv_norm_act, each, rename


class ResBottleneckBlock(nn.Module):
    def __init__(self, width_in, width_out, stride, group_width, se_ratio=0.25):
        super().__init__()
        self.proj = None
        if width_in != width_out or stride != 1:
            self.proj = conv_norm_act(width_in, width_out, 1, stride, activation=None)
        w_b = width_out                       # bottleneck multiplier 1
        self.f = nn.Sequential()
        self.f.a = conv_norm_act(width_in, w_b, 1)
        self.f.b = conv_norm_act(w_b, w_b, 3, stride, groups=w_b // group_width)
        self.f.se = SqueezeExcitation(w_b, int(round(se_ratio * width_in)))
        self.f.c = conv_norm_act(w_b, width_out, 1, activation=None)
        self.activation = nn.ReLU()

    def forward(self, x):
        return self.activation((x if self.proj is None else self.proj(x)) + self.f(x))


class RegNet(nn.Module):
    def __init__(self, widths, depths, group_width, num_classes=1000, stem_width=32):
        super().__init__()
        self.stem = conv_norm_act(3, stem_width, 3, 2)
        self.trunk_output = nn.Sequential()
        width_in = stem_width
        for s, (width, depth) in enumerate(zip(widths, depths), start=1):
            stage = nn.Sequential()
            for i in range(depth):
                stage.add_module(f"block{s}-{i}", ResBottleneckBlock(width_in if i == 0 else width, width,
                                                                      2 if i == 0 else 1, group_width))
            self.trunk_output.add_module(f"block{s}", stage)
            width_in = width
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width_in, num_classes)

    def forward(self, x):
        return self.fc(self.avgpool(self.trunk_output(self.stem(x))).flatten(1))


def regnet_y_400mf(num_classes=1000):
    return RegNet([48, 104, 208, 440], [1, 3, 6, 6], group_width=8, num_classes=num_classes)


_F = {"conv1": "a.0", "batchnorm1": "a.1", "conv2": "b.0", "batchnorm2": "b.1", "conv3": "c.0",
      "batchnorm3": "c.1", "squeeze_excite1/gate/conv1": "se.fc1", "squeeze_excite1/gate/conv2": "se.fc2"}


def _unit(m):
    s, i, branch, layer, param = m.groups()
    where = f"f.{_F[layer]}" if branch == "f" else {"conv1": "proj.0", "batchnorm1": "proj.1"}[layer]
    return f"trunk_output.block{s}.block{s}-{int(i) - 1}.{where}.{param}"


names = each(rename([
    (r"conv1\.(.*)", r"stem.0.\1"),
    (r"batchnorm1\.(.*)", r"stem.1.\1"),
    (r"dense1\.(.*)", r"fc.\1"),
    (r"stage(\d+)/unit(\d+)/(f|proj)/(.*)\.(\w+)", _unit),
]))
