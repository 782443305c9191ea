"""Detection heads: dfl, the integral of YOLOv8's distribution focal loss (ultralytics' DFL)."""

from __future__ import annotations

from ..errors import ShapeError
from .base import Attr, Op, OpKind, Param, physical, pos_int, register
from .cases import Case, ErrorCase
from .conv import OHWI

SIDES = 4   # a box's distances from its anchor: left, top, right, bottom


@register
class DFL(Op):
    """Each side's expected distance: the softmax over its `bins` logits, weighted by a fixed
    weight that starts at 0, 1, ..., bins - 1 (ultralytics' DFL, a bias-free 1x1 conv from
    the bins to 1 output that no gradient trains). One weight serves every input, as YOLOv8's
    one DFL serves its three levels."""

    name = "dfl"
    kind = OpKind.CONV      # a fixed 1x1 conv over the softmax of the bins
    min_inputs, max_inputs = 1, None
    doc = ("each of a box's 4 sides: the expected distance under the softmax of its `bins` "
           "logits (channels side-major), with a fixed weight 0 .. bins - 1 (YOLOv8's DFL); one "
           "weight for every input, one output per input")
    attrs = (Attr("bins", pos_int, 16, "logits per side (ultralytics' reg_max)"),)

    def _side_maps(self, a, ins):
        """Each input's output shape, or a ShapeError at the input that does not fit."""
        out = []
        for i, s in enumerate(ins):
            if len(s) != 3 or s[0] != SIDES * a.bins:
                raise ShapeError(f"dfl(bins={a.bins}) expects feature maps of {SIDES} x {a.bins} = "
                                 f"{SIDES * a.bins} channels, got {{in{i}}}",
                                 hint=f"the box branch's logits: {SIDES} sides, each {a.bins} bins")
            out.append((SIDES, s[1], s[2]))
        return out

    def shape(self, a, ins):
        return self._side_maps(a, ins)[0]

    def parts(self, a, ins):
        maps = self._side_maps(a, ins)
        return tuple(maps) if len(maps) > 1 else ()

    def params(self, a, ins):
        return [Param("weight", (1, a.bins, 1, 1), "arange", trainable=False)]

    def macs(self, a, ins, out):
        return sum(s[0] * s[1] * s[2] for s in ins)

    def describe(self, a):
        return f"{a.bins} bins"

    # In the kernels' channels-last layout an input (H, W, 4 * bins) is (H * W * 4, 1, bins):
    # one row of bins per side and pixel. The softmax instruction normalises each row, and a
    # 1x1 conv2d with the (1, 1, 1, bins) weight sums it into (H * W * 4, 1, 1), which is the
    # output (H, W, 4). No instruction of its own: the targets' softmax and conv kernels.
    @staticmethod
    def _rows(shape, bins):
        _, h, w = shape
        return (h * w * SIDES, 1, bins), (h * w * SIDES, 1, 1)

    _CONV_1X1 = dict(stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1), groups=1)

    def _part(self, node, i):
        return i if node.parts else None

    def lower(self, node, ctx):
        weight = ctx.param("weight", OHWI)
        for i in range(len(node.inputs)):
            rows, sums = self._rows(ctx.in_shape(i), node.attrs.bins)
            probs = ctx.tmp(f"probs{i}", rows)
            ctx.emit("softmax", [ctx.view(ctx.x(i), f"bins{i}", rows)], [probs])
            sides = ctx.tmp(f"sides{i}", sums)
            ctx.emit("conv2d", [probs, weight, None], [sides], **self._CONV_1X1)
            ctx.alias(sides, self._part(node, i))

    def vjp(self, node, ctx, gy):
        gys = gy if node.parts else [gy]
        weight, grads = ctx.param("weight", OHWI), []
        for i, g in enumerate(gys):
            if not ctx.needs_input_grad(i):
                grads.append(None)
                continue
            if g is None:       # a part no loss reaches: its input's gradient is zero
                grads.append(ctx.input_grad(i))
                ctx.emit("zeros", [], [grads[-1]])
                continue
            rows, sums = self._rows(ctx.in_shape(i), node.attrs.bins)
            gprobs = ctx.grad(f"probs{i}", rows)
            ctx.emit("conv2d_bwd_data", [ctx.view(g, f"dsides{i}", sums, kind="grad"), weight, None],
                     [gprobs], **self._CONV_1X1)
            glogits = ctx.grad(f"bins{i}", rows)
            ctx.emit("softmax_bwd", [gprobs, f"{node.name}:probs{i}"], [glogits])
            grads.append(ctx.view(glogits, f"in{i}", physical(ctx.in_shape(i)), kind="grad"))
        return grads

    cases = (
        Case("2", ("8@2x3",)),
        Case(inputs=("64@1x2",), batch=1),                         # ultralytics' 16 bins
        # two levels through one weight; a part no loss reaches gives its input a zero gradient
        Case(body="a, b = dfl(x0, x1, bins=3)\n    concat(a -> upsample(2), b) -> out",
             inputs=("12@2x2", "12@4x4")),
        Case(body="a, _ = dfl(x0, x1, bins=2)\n    concat(a, x1) -> out", inputs=("8@2x2", "8@2x2")),
    )
    error_cases = (
        ErrorCase("", ("60@2x2",), ("dfl(bins=16) expects feature maps of 4 x 16 = 64 channels",
                                    "got 60@2x2 from x0")),
        ErrorCase(body="a, b = dfl(x0, x1, bins=2)\n    concat(a, b) -> out", inputs=("8@2x2", "6@2x2"),
                  words=("4 x 2 = 8 channels", "got 6@2x2 from x1"), at="dfl"),
        ErrorCase("2", ("8",), ("expects feature maps", "got 8 from x0")),
        ErrorCase("0", ("8@2x2",), ("bad value for 'bins'",)),
    )

    def reference(self, a, xs, p, run):
        from .reference import detection
        outs = tuple(detection.dfl(x, p["weight"]) for x in xs)
        return outs if len(outs) > 1 else outs[0]

    def onnx(self, a, xs, p, ctx):
        # as the PyTorch rule: (N, 4, bins, H*W) -> bins first -> softmax -> the fixed 1x1 conv
        outs = []
        for x, (_, h, w) in zip(xs, ctx.ins):
            bins = ctx.op("Transpose", [ctx.reshaped(x, [SIDES, a.bins, h * w])], perm=[0, 2, 1, 3])
            y = ctx.op("Conv", [ctx.op("Softmax", [bins], axis=1), p["weight"]], kernel_shape=[1, 1])
            outs.append(ctx.reshaped(y, [SIDES, h, w]))
        return tuple(outs) if len(outs) > 1 else outs[0]

    def torch(self, a, xs, p, run):
        # ultralytics' DFL.forward: (N, 4, bins, A) -> bins first -> softmax -> 1x1 conv
        from torch.nn import functional as F
        outs = []
        for x in xs:
            n, _, h, w = x.shape
            bins = x.view(n, SIDES, a.bins, h * w).transpose(2, 1).softmax(1)
            outs.append(F.conv2d(bins, p["weight"]).view(n, SIDES, h, w))
        return tuple(outs) if len(outs) > 1 else outs[0]
