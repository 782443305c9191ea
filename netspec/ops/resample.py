"""Resampling and moving channels: upsample, channel_shuffle."""

from __future__ import annotations

import math

import numpy as np

from ..errors import AttrError, ShapeError
from .base import (Attr, Op, OpKind, boolean, choice, pos_int, pos_number_pair, pos_pair, register,
                   require_spatial)
from .cases import Case, ErrorCase, not_a_map


@register
class Upsample(Op):
    """F.interpolate(x, scale_factor or size, mode, align_corners), PyTorch's rules exactly
    (runtime/resample.py): with `scale`, the sizes are floor(H * scale) and the source step
    is 1 / scale, not in / out, as PyTorch passes a given scale factor on to its kernels."""

    name = "upsample"
    kind = OpKind.RESAMPLE
    doc = ("resizes a feature map as PyTorch's F.interpolate (nn.Upsample): by `scale` (output "
           "floor(H * scale)), or to `size`; nearest (the pixel at floor(out * step)) or bilinear "
           "(align_corners as PyTorch's)")
    attrs = (
        Attr("scale", pos_number_pair, 2, "factor, or (h, w) factors; default 2 unless size is given"),
        Attr("size", pos_pair, None, "output (h, w) instead of a scale"),
        Attr("mode", choice("nearest", "bilinear"), "nearest"),
        Attr("align_corners", boolean, False,
             "bilinear: the corner pixels' centres align (PyTorch's align_corners)"),
    )

    def finish_attrs(self, a, given):
        if "size" in given:
            if "scale" in given:
                raise AttrError("upsample takes a scale or a size, not both", arg="size",
                                hint="size=(h, w) is the output's size; scale multiplies the input's")
            a["scale"] = None
        if a.align_corners and a.mode != "bilinear":
            raise AttrError("upsample: align_corners applies to mode=bilinear only (as in PyTorch)",
                            arg="align_corners")

    def shape(self, a, ins):
        c, h, w = require_spatial(self.name, ins[0])
        if a.size is not None:
            return (c, *a.size)
        # PyTorch: floor(size * scale) in double precision
        exact = (h * a.scale[0], w * a.scale[1])
        if not all(map(math.isfinite, exact)):
            raise ShapeError(f"upsample by {a.scale[0]:g}x{a.scale[1]:g}: the output of {{in0}} is "
                             "too large to count", hint="use a smaller scale or give size=(h, w)")
        oh, ow = (math.floor(s) for s in exact)
        if min(oh, ow) < 1:
            raise ShapeError(f"upsample by {a.scale[0]:g}x{a.scale[1]:g} leaves nothing of {{in0}} "
                             f"(an output of {oh}x{ow})",
                             hint="use a larger scale or give size=(h, w)")
        return (c, oh, ow)

    def describe(self, a):
        how = f"to {a.size[0]}x{a.size[1]}" if a.size else f"x{a.scale[0]:g}" + (
            f",{a.scale[1]:g}" if a.scale[1] != a.scale[0] else "")
        return f"{how} {a.mode}" + (" corners" if a.align_corners else "")

    @staticmethod
    def _attrs(a) -> dict:
        # PyTorch's convention: no scale (the size was given) is a scale of 0
        return {"mode": a.mode, "scale": a.scale or (0.0, 0.0), "align_corners": a.align_corners}

    def lower(self, node, ctx):
        ctx.emit("upsample", [ctx.x()], [ctx.output()], **self._attrs(node.attrs))

    def vjp(self, node, ctx, gy):
        return ctx.emit_input_grad("upsample_bwd", [gy], **self._attrs(node.attrs))

    cases = (
        Case(inputs=("2@3x3",)),                            # YOLO's nearest x2
        Case("1.3", ("2@5x3",), batch=1),                   # step 1/1.3, not 5/6; 3 * 1.3 -> 3 copies
        Case("size=(2, 2)", ("1@5x3",)),                    # shrinks: inputs no output reads
        Case("size=(4, 7), mode=bilinear", ("2@3x3",)),     # DeepLab: to a size
        Case("1.7, mode=bilinear", ("1@3x4",), batch=1),    # step 1/1.7, not 3/5
        Case("(1.5, 2.5), mode=bilinear, align_corners=true", ("1@3x2",)),
        Case("size=(3, 4), mode=bilinear", ("3@1x1",)),     # ASPP's pooled branch
    )
    error_cases = (
        not_a_map(),
        ErrorCase("2, size=4", words=("a scale or a size, not both",)),
        ErrorCase("align_corners=true", words=("align_corners applies to mode=bilinear",)),
        ErrorCase("0.1", words=("leaves nothing of 2@5x5 from x0", "0x0")),
        ErrorCase("(1, 1e308)", words=("the output of 2@5x5 from x0 is too large to count",)),
        ErrorCase("mode=bicubic", words=("bad value for 'mode'", "nearest, bilinear")),
        ErrorCase("(2, 0)", words=("bad value for 'scale'", "positive number or a pair")),
    )

    def reference(self, a, xs, p, run):
        from .reference import resample
        return resample.upsample(xs[0], run.shape[1:], a.scale, a.mode, a.align_corners)

    def onnx(self, a, xs, p, ctx):
        # PyTorch's sampling: nearest takes floor(dst * in / out), bilinear its half-pixel
        # centres (or the corners aligned); the coordinates divide by the scale given, or by
        # out / in for a size
        how = ({"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
               if a.mode == "nearest" else
               {"mode": "linear", "coordinate_transformation_mode":
                "align_corners" if a.align_corners else "pytorch_half_pixel"})
        if a.size:
            return ctx.op("Resize", [xs[0], None, None, ctx.const(list(a.size))], axes=[2, 3], **how)
        scale = list(a.scale)
        if a.mode == "nearest":     # PyTorch copies an axis the scale leaves the same length
            scale = [1.0 if n == size else f for f, n, size in zip(scale, ctx.shape[1:], ctx.ins[0][1:])]
        scales = ctx.weight(np.asarray(scale), "scales")
        return ctx.op("Resize", [xs[0], None, scales], axes=[2, 3], **how)

    def torch(self, a, xs, p, run):
        from torch.nn import functional as F
        how = {"size": a.size} if a.size else {"scale_factor": a.scale}
        return F.interpolate(xs[0], mode=a.mode, **how,
                             align_corners=a.align_corners if a.mode == "bilinear" else None)


@register
class ChannelShuffle(Op):
    name = "channel_shuffle"
    kind = OpKind.RESAMPLE
    doc = ("interleaves the channels of `groups` groups (ShuffleNet; PyTorch's nn.ChannelShuffle): "
           "channel k of group g moves to k * groups + g")
    attrs = (Attr("groups", pos_int, doc="the number of groups; it divides the channels"),)

    def shape(self, a, ins):
        c, _, _ = require_spatial(self.name, ins[0])
        if c % a.groups:
            raise ShapeError(f"channel_shuffle: {a.groups} groups do not divide the {c} channels "
                             "of {in0}", hint="groups must divide the channels, as in the grouped "
                                              "conv before it")
        return ins[0]

    def describe(self, a):
        return f"groups={a.groups}"

    def lower(self, node, ctx):
        ctx.emit("channel_shuffle", [ctx.x()], [ctx.output()], groups=node.attrs.groups)

    def vjp(self, node, ctx, gy):
        """The inverse permutation: a shuffle of C / groups groups."""
        return ctx.emit_input_grad("channel_shuffle", [gy], groups=node.shape[0] // node.attrs.groups)

    cases = (Case("2", ("6@2x2",)), Case("3", ("6@1x2",), batch=1), Case("4", ("8@1x1",)))
    error_cases = (
        not_a_map("2"),
        ErrorCase("4", ("6@2x2",), ("4 groups do not divide the 6 channels of 6@2x2 from x0",)),
        ErrorCase("0", ("6@2x2",), ("bad value for 'groups'",)),
    )

    def reference(self, a, xs, p, run):
        from .reference import resample
        return resample.channel_shuffle(xs[0], a.groups)

    def onnx(self, a, xs, p, ctx):
        c, h, w = ctx.ins[0]
        grouped = ctx.reshaped(xs[0], [a.groups, c // a.groups, h, w])
        return ctx.reshaped(ctx.op("Transpose", [grouped], perm=[0, 2, 1, 3, 4]), [c, h, w])

    def torch(self, a, xs, p, run):
        from torch.nn import functional as F
        return F.channel_shuffle(xs[0], a.groups)
