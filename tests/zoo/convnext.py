"""torchvision's ConvNeXt (models/convnext.py), written out as torchvision builds it: features.0
(the 4x4/4 stem conv and a LayerNorm2d), then the stages of CNBlocks (features.1, .3, .5, .7),
each but the first entered through a LayerNorm2d and a 2x2/2 conv (features.2, .4, .6); then the
average pool and the classifier (LayerNorm2d, Flatten, Linear). A CNBlock: block.0 a 7x7
depthwise conv, a permute to channels last, block.2 LayerNorm, block.3 Linear(C, 4C), GELU,
block.5 Linear(4C, C), a permute back; times layer_scale (C, 1, 1), stochastic depth ('row'),
plus the input."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .common import each, rename


class LayerNorm2d(nn.LayerNorm):
    """A LayerNorm over the channels of each position of an NCHW map."""

    def forward(self, x):
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Permute(nn.Module):
    def __init__(self, dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


class StochasticDepth(nn.Module):
    """torchvision.ops.StochasticDepth(p, mode='row'): each sample kept with 1 - p, rescaled."""

    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        noise = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype).bernoulli_(keep)
        return x * noise.div_(keep)


class CNBlock(nn.Module):
    def __init__(self, dim, layer_scale, stochastic_depth_prob):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim, bias=True),
            Permute([0, 2, 3, 1]),
            nn.LayerNorm(dim, eps=1e-6),
            nn.Linear(dim, 4 * dim),
            nn.GELU(),
            nn.Linear(4 * dim, dim),
            Permute([0, 3, 1, 2]),
        )
        self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1) * layer_scale)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob)

    def forward(self, x):
        return self.stochastic_depth(self.layer_scale * self.block(x)) + x


class ConvNeXt(nn.Module):
    def __init__(self, stages, stochastic_depth_prob=0.0, layer_scale=1e-6, num_classes=1000):
        """stages: (channels, the next stage's channels or None, blocks) per stage."""
        super().__init__()
        norm = lambda c: LayerNorm2d(c, eps=1e-6)   # noqa: E731
        layers = [nn.Sequential(nn.Conv2d(3, stages[0][0], 4, 4), norm(stages[0][0]))]
        total, block_id = sum(n for _, _, n in stages), 0
        for dim, out, blocks in stages:
            stage = []
            for _ in range(blocks):
                stage.append(CNBlock(dim, layer_scale, stochastic_depth_prob * block_id / (total - 1.0)))
                block_id += 1
            layers.append(nn.Sequential(*stage))
            if out is not None:
                layers.append(nn.Sequential(norm(dim), nn.Conv2d(dim, out, 2, 2)))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        last = stages[-1][1] or stages[-1][0]
        self.classifier = nn.Sequential(norm(last), nn.Flatten(1), nn.Linear(last, num_classes))
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)))


def convnext_tiny(num_classes=1000, stochastic_depth_prob=0.1, width=96):
    """ConvNeXt-T (torchvision's convnext_tiny), or narrower: `width` channels in the first
    stage, doubled by each later one (as specs/convnext_tiny.net's `width`)."""
    w = width
    return ConvNeXt([(w, 2 * w, 3), (2 * w, 4 * w, 3), (4 * w, 8 * w, 9), (8 * w, None, 3)],
                    stochastic_depth_prob, num_classes=num_classes)


# netspec's cnblockK (K = 1 ... 18, in order) -> features.S.I: stage S (1, 3, 5, 7), block I
_STAGE_BLOCKS = (3, 3, 9, 3)
_BLOCK_PLACE = [(2 * s + 1, i) for s, n in enumerate(_STAGE_BLOCKS) for i in range(n)]
_LAYER = {"depthwise_conv1": "block.0", "layer_norm1": "block.2", "dense1": "block.3",
          "dense2": "block.5"}


def _block(m):
    stage, i = _BLOCK_PLACE[int(m[1]) - 1]
    where = "layer_scale" if m[2] == "layer_scale1" else f"{_LAYER[m[2]]}.{m[3]}"
    return f"features.{stage}.{i}.{where}"


# netspec's names in specs/convnext_tiny.net -> torchvision's
names = each(rename([
    (r"stem\.(\w+)", r"features.0.0.\1"),
    (r"stem_norm\.(\w+)", r"features.0.1.\1"),
    (r"cnblock(\d+)/y/(\w+)\.(\w+)", _block),
    (r"downsample(\d)/layer_norm1\.(\w+)", lambda m: f"features.{2 * int(m[1])}.0.{m[2]}"),
    (r"downsample(\d)/conv1\.(\w+)", lambda m: f"features.{2 * int(m[1])}.1.{m[2]}"),
    (r"head_norm\.(\w+)", r"classifier.0.\1"),
    (r"head\.(\w+)", r"classifier.2.\1"),
]))
