"""SSDlite320 with a MobileNet v3-Large backbone as torchvision.models.detection builds it
(ssdlite.py's ssdlite320_mobilenet_v3_large, ssd.py's SSDScoringHead), as its published COCO
weights use it: the backbone's reduced tail, every layer trainable, normal initialisation.
The model returns the head's raw outputs (SSD.forward before anchors and post-processing)."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from .common import conv_norm_act, each, inverted_residual_units, rename
from .mobile import V3_LARGE, InvertedResidualV3

NORM = {"eps": 0.001, "momentum": 0.03}          # ssdlite320's norm_layer
ANCHORS = 2 + 2 * len([2, 3])                    # DefaultBoxGenerator([[2, 3]] * 6): 6 per position


def _normal_init(module):
    """ssdlite.py's _normal_init: every conv's weight from N(0, 0.03), its bias zero."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.normal_(layer.weight, mean=0.0, std=0.03)
            if layer.bias is not None:
                nn.init.constant_(layer.bias, 0.0)


def _reduced_tail(config):
    """mobilenetv3.py's _mobilenet_v3_conf with reduced_tail=True: the last stage's 160 and 960
    channels halved."""
    halve = lambda c: c // 2 if c in (160, 960) else c   # noqa: E731
    return [(halve(cin), k, halve(exp), halve(cout), se, act, s) for cin, k, exp, cout, se, act, s in config]


def mobilenet_v3_large_features(reduced_tail=True):
    """torchvision's mobilenet_v3_large(...).features with SSDlite's norm layer."""
    config = V3_LARGE[:12] + (_reduced_tail(V3_LARGE[12:]) if reduced_tail else V3_LARGE[12:])
    last = config[-1][3]
    return nn.Sequential(conv_norm_act(3, 16, 3, 2, activation=nn.Hardswish, **NORM),
                         *(InvertedResidualV3(*cfg, norm=NORM) for cfg in config),
                         conv_norm_act(last, 6 * last, 1, activation=nn.Hardswish, **NORM))


def _extra_block(cin, cout):
    cna = partial(conv_norm_act, activation=nn.ReLU6, **NORM)
    mid = cout // 2
    return nn.Sequential(cna(cin, mid, 1), cna(mid, mid, 3, 2, groups=mid), cna(mid, cout, 1))


class FeatureExtractor(nn.Module):
    """SSDLiteFeatureExtractorMobileNet: the backbone cut at the C4 unit's expansion (features[13],
    the last strided unit before the end), then four extra blocks; six maps."""

    def __init__(self, backbone, c4_pos=13):
        super().__init__()
        assert not backbone[c4_pos].use_res_connect
        self.features = nn.Sequential(nn.Sequential(*backbone[:c4_pos], backbone[c4_pos].block[0]),
                                      nn.Sequential(backbone[c4_pos].block[1:], *backbone[c4_pos + 1:]))
        self.extra = nn.ModuleList([_extra_block(backbone[-1][0].out_channels, 512), _extra_block(512, 256),
                                    _extra_block(256, 256), _extra_block(256, 128)])
        _normal_init(self.extra)

    def forward(self, x):
        maps = []
        for block in [*self.features, *self.extra]:
            x = block(x)
            maps.append(x)
        return maps


class ScoringHead(nn.Module):
    """SSDScoringHead with SSDlite's prediction blocks (3x3 depthwise conv, batch norm, ReLU6,
    then a 1x1 conv with bias): (N, A * K, H, W) maps to (N, H * W * A, K), all maps joined."""

    def __init__(self, in_channels, columns):
        super().__init__()
        self.module_list = nn.ModuleList(
            nn.Sequential(conv_norm_act(c, c, 3, groups=c, activation=nn.ReLU6, **NORM),
                          nn.Conv2d(c, columns * ANCHORS, 1))
            for c in in_channels)
        _normal_init(self.module_list)
        self.num_columns = columns

    def forward(self, maps):
        results = []
        for module, x in zip(self.module_list, maps):
            r = module(x)
            n, _, h, w = r.shape
            r = r.view(n, -1, self.num_columns, h, w).permute(0, 3, 4, 1, 2)   # N, H, W, A, K
            results.append(r.reshape(n, -1, self.num_columns))
        return torch.cat(results, dim=1)


class SSDLiteHead(nn.Module):
    def __init__(self, in_channels, num_classes):
        super().__init__()
        self.classification_head = ScoringHead(in_channels, num_classes)
        self.regression_head = ScoringHead(in_channels, 4)

    def forward(self, maps):
        return {"bbox_regression": self.regression_head(maps), "cls_logits": self.classification_head(maps)}


class SSDLite(nn.Module):
    def __init__(self, num_classes=91):
        super().__init__()
        features = mobilenet_v3_large_features()
        _normal_init(features)     # not pretrained: torchvision's ssdlite re-initialises the backbone
        self.backbone = FeatureExtractor(features)
        self.head = SSDLiteHead([672, 480, 512, 256, 256, 128], num_classes)

    def forward(self, x):
        return self.head(self.backbone(x))


def ssdlite320_mobilenet_v3_large(num_classes=91):
    return SSDLite(num_classes)


def outputs(model, x):
    """specs/ssdlite320.net's outputs (one) from the reference's head: box codes, then logits."""
    head = model(x)
    return [torch.cat((head["bbox_regression"], head["cls_logits"]), dim=-1)]


_LAYER = {"conv1": 0, "batchnorm1": 1}    # Conv2dNormActivation's conv '.0' and batch norm '.1'


def _conv_bn(block: str, target: str):
    """The renaming rule of the conv_bn block instance at path `block`: torchvision's `target`."""
    return block + r"/y/(conv1|batchnorm1)\.(\w+)", lambda m: f"{target}.{_LAYER[m[1]]}.{m[2]}"


_HEADS = {"box": "regression_head", "cls": "classification_head"}
_TAIL = [  # specs/ssdlite320.net's layers outside the inverted residual units
    _conv_bn(r"c4/conv_bn1", "backbone.features.0.0"),                     # the stem
    _conv_bn(r"c4/conv_bn2", "backbone.features.0.13"),                    # C4's expansion
    # C4's depthwise conv, gate and projection: block[1:] keeps block's numbers 1, 2, 3
    _conv_bn(r"c5/conv_bn1", "backbone.features.1.0.1"),
    (r"c5/squeeze_excite1/gate/conv(\d)\.(\w+)", r"backbone.features.1.0.2.fc\1.\2"),
    _conv_bn(r"c5/conv_bn2", "backbone.features.1.0.3"),
    _conv_bn(r"c5/conv_bn3", "backbone.features.1.3"),                     # the last 1x1 conv
    (r"e(\d)/extra1/conv_bn(\d)/y/(conv1|batchnorm1)\.(\w+)",
     lambda m: f"backbone.extra.{int(m[1]) - 1}.{int(m[2]) - 1}.{_LAYER[m[3]]}.{m[4]}"),
    (r"(box|cls)/predict(\d)/conv_bn1/y/(conv1|batchnorm1)\.(\w+)",
     lambda m: f"head.{_HEADS[m[1]]}.module_list.{int(m[2]) - 1}.0.{_LAYER[m[3]]}.{m[4]}"),
    (r"(box|cls)/predict(\d)/conv1\.(\w+)",
     lambda m: f"head.{_HEADS[m[1]]}.module_list.{int(m[2]) - 1}.1.{m[3]}"),
]

# c4/bneck1..12 are features.0.1..12; c5/bneck1..2 are the reduced tail's features.1.1..2
names = inverted_residual_units(
    {**{f"c4/bneck{k}/": f"backbone.features.0.{k}." for k in range(1, 13)},
     **{f"c5/bneck{k}/": f"backbone.features.1.{k}." for k in range(1, 3)}},
    dict(_TAIL))
