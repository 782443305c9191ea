"""YOLOv8n as ultralytics builds it (ultralytics/nn/modules/conv.py, block.py, head.py and
cfg/models/v8/yolov8.yaml at scale n), under ultralytics' parameter names (model.0.conv.weight,
model.22.cv2.0.2.bias, model.22.dfl.conv.weight); and the renaming from specs/yolov8n.net."""

from __future__ import annotations

import torch
from torch import nn

from .common import each, rename


class Conv(nn.Module):
    """ultralytics' Conv: bias-free conv with 'same' padding, batch norm, SiLU. Ultralytics'
    initialize_weights sets every batch norm's eps to 1e-3 and momentum to 0.03."""

    def __init__(self, c1, c2, k=1, s=1):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c, shortcut):
        super().__init__()
        self.cv1, self.cv2 = Conv(c, c, 3), Conv(c, c, 3)
        self.add = shortcut

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    def __init__(self, c1, c2, n=1, shortcut=False):
        super().__init__()
        self.c = c2 // 2
        self.cv1 = Conv(c1, 2 * self.c)
        self.cv2 = Conv((2 + n) * self.c, c2)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, c1, c2, k=5):
        super().__init__()
        self.cv1 = Conv(c1, c1 // 2)
        self.cv2 = Conv(c1 // 2 * 4, c2)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x):
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class DFL(nn.Module):
    """A fixed 1x1 conv from the bins to 1 holding 0 .. c1 - 1, over each side's softmax."""

    def __init__(self, c1=16):
        super().__init__()
        self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.arange(c1, dtype=torch.float).view(1, c1, 1, 1))
        self.c1 = c1

    def forward(self, x):
        b, _, a = x.shape
        return self.conv(x.view(b, 4, self.c1, a).transpose(2, 1).softmax(1)).view(b, 4, a)


class Detect(nn.Module):
    def __init__(self, nc, ch, reg_max=16):
        super().__init__()
        self.nc, self.reg_max = nc, reg_max
        c2, c3 = max(16, ch[0] // 4, reg_max * 4), max(ch[0], min(nc, 100))
        self.cv2 = nn.ModuleList(nn.Sequential(Conv(x, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * reg_max, 1))
                                 for x in ch)
        self.cv3 = nn.ModuleList(nn.Sequential(Conv(x, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, nc, 1))
                                 for x in ch)
        self.dfl = DFL(reg_max)

    def forward(self, xs):
        """Training mode's outputs: per level, cat(box bins, class logits)."""
        return [torch.cat((self.cv2[i](x), self.cv3[i](x)), 1) for i, x in enumerate(xs)]


class Concat(nn.Module):
    def forward(self, xs):
        return torch.cat(xs, 1)


class YOLOv8(nn.Module):
    """yolov8.yaml at depth 0.33, width 0.25: `model` holds its 23 layers; `sources` what each
    reads (-1: the previous layer)."""

    sources = [-1] * 10 + [-1, [-1, 6], -1, -1, [-1, 4], -1, -1, [-1, 12], -1, -1, [-1, 9], -1, [15, 18, 21]]

    def __init__(self, nc=80):
        super().__init__()
        up = nn.Upsample(None, 2, "nearest")
        self.model = nn.ModuleList([
            Conv(3, 16, 3, 2), Conv(16, 32, 3, 2), C2f(32, 32, 1, True), Conv(32, 64, 3, 2),
            C2f(64, 64, 2, True), Conv(64, 128, 3, 2), C2f(128, 128, 2, True), Conv(128, 256, 3, 2),
            C2f(256, 256, 1, True), SPPF(256, 256),
            up, Concat(), C2f(384, 128), up, Concat(), C2f(192, 64),
            Conv(64, 64, 3, 2), Concat(), C2f(192, 128), Conv(128, 128, 3, 2), Concat(), C2f(384, 256),
            Detect(nc, (64, 128, 256))])

    def forward(self, x):
        seen = []
        for m, src in zip(self.model, self.sources):
            x = [seen[j] for j in src] if isinstance(src, list) else (x if src == -1 else seen[src])
            x = m(x)
            seen.append(x)
        return x


def yolov8n(num_classes=80):
    return YOLOv8(num_classes)


def outputs(model, x):
    """specs/yolov8n.net's outputs from the training-mode head: per level, the DFL applied to
    the box bins (ultralytics' own DFL, on the level's anchors) and the class logits."""
    detect, out = model.model[-1], []
    for level in model(x):
        n, _, h, w = level.shape
        box, cls = level.split((4 * detect.reg_max, detect.nc), 1)
        out += [detect.dfl(box.reshape(n, 4 * detect.reg_max, h * w)).view(n, 4, h, w), cls]
    return out


# specs/yolov8n.net's block instances -> ultralytics' layer indices
_LAYERS = {"p3_in/cbs1": 0, "p3_in/cbs2": 1, "p3_in/c2f1": 2, "p3_in/cbs3": 3, "p3_in/c2f2": 4,
           "p4_in/cbs1": 5, "p4_in/c2f1": 6, "p5_in/cbs1": 7, "p5_in/c2f1": 8, "p5_in/sppf1": 9,
           "up4/c2f1": 12, "p3/c2f1": 15, "p4/cbs1": 16, "p4/c2f1": 18, "p5/cbs1": 19, "p5/c2f1": 21}
_CONV = {"conv1": "conv", "batchnorm1": "bn"}    # inside a cbs: ultralytics' Conv
_BRANCH = {"box": "cv2", "cls": "cv3"}


def _layer(m):
    unit, rest, layer, param = m[1], m[2], m[3], m[4]
    idx = _LAYERS[unit]
    if not rest:                                              # a plain Conv layer
        return f"model.{idx}.{_CONV[layer]}.{param}"
    if unit.endswith("sppf1"):                                # SPPF: a/cbs1 is cv1, cbs1 cv2
        cv = "cv1" if rest == "a/cbs1/" else "cv2"
        return f"model.{idx}.{cv}.{_CONV[layer]}.{param}"
    step = rest.rstrip("/").split("/")                        # 'cbs1' or 'c2f_step2/bottleneck1/y/cbs1'
    if len(step) == 1:
        return f"model.{idx}.cv{step[0][-1]}.{_CONV[layer]}.{param}"
    k = int(step[0][len("c2f_step"):]) - 1
    return f"model.{idx}.m.{k}.cv{step[-1][-1]}.{_CONV[layer]}.{param}"


names = each(rename([
    (r"(" + "|".join(_LAYERS) + r")/((?:[\w]+/)*?)(conv1|batchnorm1)\.(\w+)", _layer),
    # Detect: level L's branches (cv2 box, cv3 classes): Conv, Conv, then the plain 1x1 conv
    (r"box(\d)_cls_p\d/detect_level1/(box|cls)/cbs(\d)/(conv1|batchnorm1)\.(\w+)",
     lambda m: f"model.22.{_BRANCH[m[2]]}.{int(m[1]) - 3}.{int(m[3]) - 1}.{_CONV[m[4]]}.{m[5]}"),
    (r"box(\d)_cls_p\d/detect_level1/(box|cls)/conv1\.(\w+)",
     lambda m: f"model.22.{_BRANCH[m[2]]}.{int(m[1]) - 3}.2.{m[3]}"),
    (r"box_p3_box_p4_box_p5/dfl1\.weight", "model.22.dfl.conv.weight"),
]))
