"""Pooling: maxpool, avgpool, global_avgpool, global_maxpool."""

from __future__ import annotations

import math

from ..errors import AttrError
from .base import (Attr, Fusion, Op, OpKind, Traits, boolean, explicit_padding, padding, pos_pair,
                   register, require_spatial, spatial_out)
from .cases import Case, ErrorCase, not_a_map, too_large
from .conv import _k


class _Pool(Op):
    """A windowed pool; the stride defaults to the kernel (non-overlapping windows)."""

    kind = OpKind.POOL
    traits = Traits(fusion=Fusion.POOL)

    def finish_attrs(self, a, given):
        if "stride" not in given:
            a["stride"] = a.kernel
        if isinstance(a.pad, tuple):
            for axis in (0, 1):
                if a.pad[axis] > a.kernel[axis] // 2:
                    raise AttrError(
                        f"{self.name}: padding {a.pad[axis]} is more than half the kernel "
                        f"({a.kernel[axis]}) on the {'width' if axis else 'height'}",
                        hint="a window could then see only padding; use at most kernel // 2 "
                             "(PyTorch's rule) or pad=same", arg="pad")

    def signature(self):
        return super().signature().replace("stride=none", "stride=kernel")

    def shape(self, a, ins):
        c, _, _ = require_spatial(self.name, ins[0])
        return (c, *spatial_out(self.name, ins[0], a.kernel, a.stride, a.pad))

    def window(self, a):
        return (*a.kernel, *a.stride)

    def describe(self, a):
        return _k(a)

    def _attrs(self, node, ctx) -> dict:
        a = node.attrs
        return {"kernel": a.kernel, "stride": a.stride,
                "pad": explicit_padding(a.pad, ctx.in_shape()[1:], a.kernel, a.stride)}

    error_cases = (
        not_a_map("2"),
        too_large("5"),
        ErrorCase("3, pad=2", ("2@8x8",), ("padding 2 is more than half the kernel (3) on the height",)),
    )

    @staticmethod
    def _reference_pads(a, x):
        from .reference.common import window_pads
        return window_pads(a.pad, x.shape[2:], a.kernel, a.stride)


@register
class MaxPool(_Pool):
    name = "maxpool"
    doc = "maximum over each window; padding never wins (it counts as -infinity)"
    attrs = (
        Attr("kernel", pos_pair, doc="window size k or (kh, kw)"),
        Attr("stride", pos_pair, None, "default: the kernel"),
        Attr("pad", padding, "valid"),
    )

    def lower(self, node, ctx):
        y = ctx.output()
        argmax = ctx.tmp("argmax", ctx.shape_of(y), "int32")
        ctx.emit("maxpool2d", [ctx.x()], [y, argmax], **self._attrs(node, ctx))

    def vjp(self, node, ctx, gy):
        if not ctx.needs_input_grad():
            return [None]
        gx = ctx.input_grad()
        ctx.emit("maxpool2d_bwd", [gy, f"{node.name}:argmax"], [gx], **self._attrs(node, ctx))
        return [gx]

    cases = (
        Case("3, stride=2, pad=1", ("2@7x7",)),      # windows that start inside the padding
        Case("2, pad=same", ("2@5x5",)),
        Case("2", ("3@4x6",)),                        # tiles its input: fusable
        Case("2, stride=3", ("2@8x7",)),              # stride > kernel
        Case("3, stride=1, pad=same", ("1@4x5",), batch=1),
        Case("(2, 3), stride=(2, 1), pad=(1, 1)", ("2@5x6",)),
    )

    def reference(self, a, xs, p, run):
        from .reference import pool
        return pool.maxpool2d(xs[0], a.kernel, a.stride, self._reference_pads(a, xs[0]))[0]

    def torch(self, a, xs, p, run):
        from torch.nn import functional as F
        from .reference.common import torch_padded
        return F.max_pool2d(torch_padded(xs[0], a, value=-math.inf), a.kernel, a.stride)


@register
class AvgPool(_Pool):
    name = "avgpool"
    doc = ("mean over each window. include_pad says whether padded zeros count in the divisor: "
           "false (default, as Keras/TensorFlow) divides by the number of real pixels in the "
           "window, true (PyTorch's default count_include_pad) always by kh*kw")
    attrs = (
        Attr("kernel", pos_pair, doc="window size k or (kh, kw)"),
        Attr("stride", pos_pair, None, "default: the kernel"),
        Attr("pad", padding, "valid"),
        Attr("include_pad", boolean, False, "padded zeros count in the divisor"),
    )

    def _attrs(self, node, ctx):
        return {**super()._attrs(node, ctx), "include_pad": node.attrs.include_pad}

    def lower(self, node, ctx):
        ctx.emit("avgpool2d", [ctx.x()], [ctx.output()], **self._attrs(node, ctx))

    def vjp(self, node, ctx, gy):
        if not ctx.needs_input_grad():
            return [None]
        gx = ctx.input_grad()
        ctx.emit("avgpool2d_bwd", [gy], [gx], **self._attrs(node, ctx))
        return [gx]

    cases = (
        Case("3, stride=2, pad=same", ("2@5x5",)),   # the divisor counts real pixels only
        Case("3, stride=2, pad=1, include_pad=true", ("2@5x5",)),
        Case("2", ("3@4x6",)),
        Case("2, stride=3", ("2@8x7",), batch=1),
        Case("3, stride=1, pad=1", ("2@4x4",)),
    )

    def reference(self, a, xs, p, run):
        from .reference import pool
        return pool.avgpool2d(xs[0], a.kernel, a.stride, self._reference_pads(a, xs[0]),
                              a.include_pad)

    def torch(self, a, xs, p, run):
        import torch
        from torch.nn import functional as F
        from .reference.common import torch_padded
        x = xs[0]
        y = F.avg_pool2d(torch_padded(x, a), a.kernel, a.stride)               # divisor kh*kw
        if a.include_pad:
            return y
        ones = torch_padded(torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype), a)
        return y / F.avg_pool2d(ones, a.kernel, a.stride)                   # real pixels / (kh*kw)


class _GlobalPool(Op):
    kind = OpKind.POOL
    cases = (Case(inputs=("3@4x5",)), Case(inputs=("2@1x1",), batch=1))
    error_cases = (not_a_map(),)

    def shape(self, a, ins):
        c, _, _ = require_spatial(self.name, ins[0])
        return (c,)

    def window(self, a):
        return "global"


@register
class GlobalAvgPool(_GlobalPool):
    name = "global_avgpool"
    doc = "mean of each channel over the whole map: C@HxW -> C"

    def lower(self, node, ctx):
        ctx.emit("global_avgpool", [ctx.x()], [ctx.output()])

    def vjp(self, node, ctx, gy):
        if not ctx.needs_input_grad():
            return [None]
        gx = ctx.input_grad()
        ctx.emit("global_avgpool_bwd", [gy], [gx])
        return [gx]

    def reference(self, a, xs, p, run):
        from .reference import pool
        return pool.global_avgpool(xs[0])

    def torch(self, a, xs, p, run):
        return xs[0].mean(dim=(2, 3))


@register
class GlobalMaxPool(_GlobalPool):
    name = "global_maxpool"
    doc = "maximum of each channel over the whole map: C@HxW -> C"

    def lower(self, node, ctx):
        y = ctx.output()
        ctx.emit("global_maxpool", [ctx.x()], [y, ctx.tmp("argmax", node.shape, "int32")])

    def vjp(self, node, ctx, gy):
        if not ctx.needs_input_grad():
            return [None]
        gx = ctx.input_grad()
        ctx.emit("global_maxpool_bwd", [gy, f"{node.name}:argmax"], [gx])
        return [gx]

    def reference(self, a, xs, p, run):
        from .reference import pool
        return pool.global_maxpool(xs[0])[0]

    def torch(self, a, xs, p, run):
        return xs[0].flatten(2).max(dim=2).values
