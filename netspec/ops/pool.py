"""Pooling and padding, the ops that resample a feature map's grid: maxpool, avgpool,
adaptive_avgpool, global_avgpool, global_maxpool, pad."""

from __future__ import annotations

import math

import numpy as np

from ..errors import AttrError, ShapeError
from .base import (Attr, Fusion, Op, OpKind, Traits, boolean, choice, explicit_padding,
                   nonneg_int, nonneg_pair, number, padding, pos_pair, register, require_spatial,
                   spatial_out)
from .cases import Case, ErrorCase, not_a_map, too_large
from .conv import _k


def ceil_length(size: int, k: int, s: int, p: int, d: int) -> int:
    """Windows along an axis in ceil mode (PyTorch's ceil_mode, symmetric padding p): the
    count rounded up, less a last window that would start in the padding after the input."""
    n = -(-(size + 2 * p - d * (k - 1) - 1) // s) + 1
    return n - 1 if (n - 1) * s >= size + p else n


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
        if a.ceil and a.pad == "same":
            raise AttrError(f"{self.name}: ceil=true does not go with pad=same",
                            hint="same already makes ceil(input / stride) windows; ceil=true "
                                 "rounds up the windows of valid or explicit padding "
                                 "(PyTorch's ceil_mode)", arg="ceil")

    def signature(self):
        return super().signature().replace("stride=none", "stride=kernel")

    @staticmethod
    def dilation(a) -> tuple[int, int]:
        return a.get("dilation", (1, 1))

    def shape(self, a, ins):
        c, h, w = require_spatial(self.name, ins[0])
        d = self.dilation(a)
        if not a.ceil:
            out = spatial_out(self.name, ins[0], a.kernel, a.stride, a.pad, d)
        else:
            pads = (0, 0) if a.pad == "valid" else a.pad
            out = tuple(ceil_length(size, k, s, p, dd)
                        for size, k, s, p, dd in zip((h, w), a.kernel, a.stride, pads, d))
            if min(out) < 1:   # then no window fits rounding down either: its error
                spatial_out(self.name, ins[0], a.kernel, a.stride, a.pad, d)
        if d != (1, 1):
            self._check_windows_see_the_input(a, (h, w), out)
        return (c, *out)

    def _check_windows_see_the_input(self, a, size_hw, out) -> None:
        """A dilated window starting in the padding may step over the whole input (2 taps 3
        apart from -1 on a 2-pixel axis): refused, as a window of padding alone has no maximum."""
        top, _, left, _ = explicit_padding(a.pad, size_hw, a.kernel, a.stride, self.dilation(a))
        for axis, (size, k, s, d, before, n) in enumerate(
                zip(size_hw, a.kernel, a.stride, self.dilation(a), (top, left), out)):
            for o in range(min(n, -(-before // s))):         # the windows that start before 0
                start = o * s - before
                first = start + d * -(start // d)               # its first tap at or after 0
                if first >= size or first > start + d * (k - 1):
                    what = "width" if axis else "height"
                    raise ShapeError(
                        f"{self.name} window {a.kernel[0]}x{a.kernel[1]} with dilation "
                        f"{d} sees only padding at the start of the {what} of its input {{in0}}",
                        hint="use less padding or a smaller dilation")

    def window(self, a):
        (kh, kw), (dh, dw) = a.kernel, self.dilation(a)
        return (dh * (kh - 1) + 1, dw * (kw - 1) + 1, *a.stride)

    def describe(self, a):
        dh, dw = self.dilation(a)
        dilation = f"dilation {dh}" if dh == dw else f"dilation {dh}x{dw}"
        dilated = [] if (dh, dw) == (1, 1) else [dilation]
        return ", ".join([_k(a), *dilated, *(["ceil"] if a.ceil else [])])

    def _attrs(self, node, ctx) -> dict:
        a = node.attrs
        return {"kernel": a.kernel, "stride": a.stride, "ceil": a.ceil,
                "pad": explicit_padding(a.pad, ctx.in_shape()[1:], a.kernel, a.stride,
                                        self.dilation(a))}

    error_cases = (
        not_a_map("2"),
        too_large("5"),
        ErrorCase("3, pad=2", ("2@8x8",), ("padding 2 is more than half the kernel (3) on the height",)),
        ErrorCase("3, stride=2, pad=same, ceil=true", ("2@8x8",),
                  ("ceil=true does not go with pad=same",)),
        too_large("5, stride=2, ceil=true", "3@3x3"),   # rounding up cannot make room: 0 windows
    )

    def _reference_pads(self, a, x):
        from .reference.common import window_pads
        return window_pads(a.pad, x.shape[2:], a.kernel, a.stride, self.dilation(a))

    def _torch_padding(self, a):
        """The padding PyTorch's pool takes, where it can say it: valid or explicit."""
        return 0 if a.pad == "valid" else a.pad


_CEIL = Attr("ceil", boolean, False,
             "round the number of windows up (PyTorch's ceil_mode): a last window may hang past "
             "the input's end, if it starts inside the input or the padding before it")


@register
class MaxPool(_Pool):
    name = "maxpool"
    doc = "maximum over each window; padding never wins (it counts as -infinity)"
    attrs = (
        Attr("kernel", pos_pair, doc="window size k or (kh, kw)"),
        Attr("stride", pos_pair, None, "default: the kernel"),
        Attr("pad", padding, "valid"),
        Attr("dilation", pos_pair, 1, "the window's taps this far apart (PyTorch's dilation)"),
        _CEIL,
    )

    def _attrs(self, node, ctx):
        return {**super()._attrs(node, ctx), "dilation": node.attrs.dilation}

    def lower(self, node, ctx):
        y = ctx.output()
        argmax = ctx.tmp("argmax", ctx.shape_of(y), "int32")
        ctx.emit("maxpool2d", [ctx.x()], [y, argmax], **self._attrs(node, ctx))

    def vjp(self, node, ctx, gy):
        return ctx.emit_input_grad("maxpool2d_bwd", [gy, f"{node.name}:argmax"], **self._attrs(node, ctx))

    cases = (
        Case("3, stride=2, pad=1", ("2@7x7",)),      # windows that start inside the padding
        Case("2, pad=same", ("2@5x5",)),
        Case("2", ("3@4x6",)),                        # tiles its input: fusable
        Case("2, stride=3", ("2@8x7",)),              # stride > kernel
        Case("3, stride=1, pad=same", ("1@4x5",), batch=1),
        Case("(2, 3), stride=(2, 1), pad=(1, 1)", ("2@5x6",)),
        Case("3, stride=2, ceil=true", ("2@6x5",)),   # 3 rows of windows, the last hanging off
        Case("2, pad=1, ceil=true", ("2@3x4",)),      # a last window in the padding: dropped
        Case("2, stride=1, pad=1, dilation=2", ("2@4x5",)),
        Case("(3, 2), stride=2, pad=same, dilation=(1, 2), ceil=false", ("1@5x6",), batch=1),
    )
    error_cases = (
        *_Pool.error_cases,
        ErrorCase("2, stride=1, pad=1, dilation=3", ("2@2x5",),
                  ("window 2x2 with dilation 3 sees only padding", "height", "2@2x5 from x0")),
    )

    def reference(self, a, xs, p, run):
        from .reference import pool
        return pool.maxpool2d(xs[0], a.kernel, a.stride, self._reference_pads(a, xs[0]),
                              a.dilation, a.ceil)[0]

    def onnx(self, a, xs, p, ctx):
        from .conv import onnx_window
        # ONNX's max pool ignores padded positions, as the -inf padding of the PyTorch rule
        return ctx.op("MaxPool", xs, dilations=list(a.dilation),
                      **onnx_window(a, ctx.ins[0][1:], a.dilation, ctx.shape[1:]))

    def torch(self, a, xs, p, run):
        from torch.nn import functional as F
        from .reference.common import torch_padded
        if a.pad == "same":      # TensorFlow's padding, which PyTorch's pools cannot say
            return F.max_pool2d(torch_padded(xs[0], a, a.dilation, value=-math.inf), a.kernel,
                                a.stride, dilation=a.dilation)
        return F.max_pool2d(xs[0], a.kernel, a.stride, self._torch_padding(a), a.dilation,
                            ceil_mode=a.ceil)


@register
class AvgPool(_Pool):
    name = "avgpool"
    doc = ("mean over each window. include_pad says whether padded zeros count in the divisor: "
           "false (default, as Keras/TensorFlow) divides by the number of real pixels in the "
           "window, true (PyTorch's default count_include_pad) by the window's pixels inside "
           "the padded input (kh*kw, but for a ceil window hanging past the padding)")
    attrs = (
        Attr("kernel", pos_pair, doc="window size k or (kh, kw)"),
        Attr("stride", pos_pair, None, "default: the kernel"),
        Attr("pad", padding, "valid"),
        Attr("include_pad", boolean, False, "padded zeros count in the divisor"),
        _CEIL,
    )

    def _attrs(self, node, ctx):
        return {**super()._attrs(node, ctx), "include_pad": node.attrs.include_pad}

    def lower(self, node, ctx):
        ctx.emit("avgpool2d", [ctx.x()], [ctx.output()], **self._attrs(node, ctx))

    def vjp(self, node, ctx, gy):
        return ctx.emit_input_grad("avgpool2d_bwd", [gy], **self._attrs(node, ctx))

    cases = (
        Case("3, stride=2, pad=same", ("2@5x5",)),   # the divisor counts real pixels only
        Case("3, stride=2, pad=1, include_pad=true", ("2@5x5",)),
        Case("2", ("3@4x6",)),
        Case("2, stride=3", ("2@8x7",), batch=1),
        Case("3, stride=1, pad=1", ("2@4x4",)),
        # ceil: the last row of windows hangs past the padding, which include_pad counts and
        # the overhang does not (divisor 2x3 there)
        Case("3, stride=2, pad=1, include_pad=true, ceil=true", ("2@4x5",)),
        Case("2, ceil=true", ("2@5x3",)),             # a last window of one real row
    )

    def reference(self, a, xs, p, run):
        from .reference import pool
        return pool.avgpool2d(xs[0], a.kernel, a.stride, self._reference_pads(a, xs[0]),
                              a.include_pad, a.ceil)

    def onnx(self, a, xs, p, ctx):
        from .conv import onnx_window
        window = onnx_window(a, ctx.ins[0][1:], out_hw=ctx.shape[1:])
        y = ctx.op("AveragePool", xs, **window)     # the mean of the pixels in each window
        if not a.include_pad:
            return y
        # PyTorch's divisor counts the padding a window covers, not a ceil window's overhang
        t, l, *_ = window["pads"]
        real, counted = (np.ones(ctx.shape[1:]) for _ in range(2))
        for axis, (size, before, pad) in enumerate(zip(ctx.ins[0][1:], (t, l), self._pads(a, ctx))):
            k, s = a.kernel[axis], a.stride[axis]
            starts = np.arange(ctx.shape[1 + axis]) * s - before
            inside = np.minimum(starts + k, size) - np.maximum(starts, 0)
            padded = np.minimum(starts + k, size + pad[1]) - np.maximum(starts, -pad[0])
            shape = (-1, 1) if axis == 0 else (1, -1)
            real, counted = real * inside.reshape(shape), counted * padded.reshape(shape)
        ratio = real / counted
        return y if np.all(ratio == 1) else ctx.op("Mul", [y, ctx.weight(ratio, "divisor")])

    @staticmethod
    def _pads(a, ctx):
        """(before, after) of the padding along H and W."""
        from .reference.common import window_pads
        t, b, l, r = window_pads(a.pad, ctx.ins[0][1:], a.kernel, a.stride)
        return (t, b), (l, r)

    def torch(self, a, xs, p, run):
        import torch
        from torch.nn import functional as F
        from .reference.common import torch_padded
        x = xs[0]
        if a.pad != "same":
            return F.avg_pool2d(x, a.kernel, a.stride, self._torch_padding(a), ceil_mode=a.ceil,
                                count_include_pad=a.include_pad)
        # TensorFlow's padding, which PyTorch's pools cannot say: padded by hand, divided by kh*kw
        y = F.avg_pool2d(torch_padded(x, a), a.kernel, a.stride)
        if a.include_pad:
            return y
        ones = torch_padded(torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype), a)
        return y / F.avg_pool2d(ones, a.kernel, a.stride)                   # real pixels / (kh*kw)


@register
class AdaptiveAvgPool(Op):
    name = "adaptive_avgpool"
    kind = OpKind.POOL
    doc = ("mean over the windows that split the map into size (an int or (h, w)) rows and "
           "columns (PyTorch's AdaptiveAvgPool2d): row window i covers input rows "
           "floor(i*H/h) to ceil((i+1)*H/h) - 1; adaptive_avgpool(1) is global_avgpool kept "
           "as a map C@1x1")
    attrs = (Attr("size", pos_pair, doc="the output's size: h or (h, w)"),)

    def shape(self, a, ins):
        c, _, _ = require_spatial(self.name, ins[0])
        return (c, *a.size)

    def window(self, a):
        """Without the input's size, the whole input (an upper bound): see window_on."""
        return "global"

    def window_on(self, a, ins):
        """The largest window and the largest step between windows along each axis: exact when
        the input's size is a multiple of the output's, an upper bound otherwise."""
        _, h, w = ins[0]
        if a.size == (1, 1):
            return "global"
        sizes, steps = [], []
        for n, out in ((h, a.size[0]), (w, a.size[1])):
            starts = [i * n // out for i in range(out)]
            stops = [-(-(i + 1) * n // out) for i in range(out)]
            sizes.append(max(b - s for s, b in zip(starts, stops)))
            steps.append(max([1] + [b - s for s, b in zip(starts, starts[1:])]))
        return (*sizes, *steps)

    def describe(self, a):
        return f"{a.size[0]}x{a.size[1]}"

    def lower(self, node, ctx):
        ctx.emit("adaptive_avgpool2d", [ctx.x()], [ctx.output()])

    def vjp(self, node, ctx, gy):
        return ctx.emit_input_grad("adaptive_avgpool2d_bwd", [gy])

    cases = (
        Case("(3, 2)", ("2@5x7",)),           # windows of 2 and 3 rows that overlap
        Case("2", ("3@4x6",)),                # multiples: avgpool(2, 3)'s windows
        Case("1", ("2@3x3",), batch=1),       # global_avgpool, as a map C@1x1
        Case("(4, 3)", ("2@3x2",)),           # more windows than pixels: they repeat
    )
    error_cases = (
        not_a_map("2"),
        ErrorCase("0", ("2@4x4",), ("bad value for 'size'", "positive")),
    )

    def reference(self, a, xs, p, run):
        from .reference import pool
        return pool.adaptive_avgpool2d(xs[0], a.size)

    def onnx(self, a, xs, p, ctx):
        (_, h, w), (oh, ow) = ctx.ins[0], a.size
        if h % oh == 0 and w % ow == 0:     # equal windows tiling the map: an average pool
            return ctx.op("AveragePool", xs, kernel_shape=[h // oh, w // ow], strides=[h // oh, w // ow])
        # PyTorch's windows [floor(i * H / oh), ceil((i + 1) * H / oh)): the mean over a
        # window is the mean over its rows of the means over its columns
        y = xs[0]
        for axis, size, n in ((2, h, oh), (3, w, ow)):
            means = [ctx.op("ReduceMean", [ctx.op("Slice", [y, ctx.const([i * size // n]),
                                                           ctx.const([-(-(i + 1) * size // n)]),
                                                           ctx.const([axis])]),
                                           ctx.const([axis])], keepdims=1) for i in range(n)]
            y = ctx.op("Concat", means, axis=axis) if n > 1 else means[0]
        return y

    def torch(self, a, xs, p, run):
        from torch.nn import functional as F
        return F.adaptive_avg_pool2d(xs[0], a.size)


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
        return ctx.emit_input_grad("global_avgpool_bwd", [gy])

    def reference(self, a, xs, p, run):
        from .reference import pool
        return pool.global_avgpool(xs[0])

    def onnx(self, a, xs, p, ctx):
        return ctx.op("ReduceMean", [xs[0], ctx.const([2, 3])], keepdims=0)

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
        return ctx.emit_input_grad("global_maxpool_bwd", [gy, f"{node.name}:argmax"])

    def reference(self, a, xs, p, run):
        from .reference import pool
        return pool.global_maxpool(xs[0])[0]

    def onnx(self, a, xs, p, ctx):
        return ctx.op("ReduceMax", [xs[0], ctx.const([2, 3])], keepdims=0)

    def torch(self, a, xs, p, run):
        return xs[0].flatten(2).max(dim=2).values


# ---------------------------------------------------------------- padding

@register
class Pad(Op):
    name = "pad"
    kind = OpKind.PAD
    doc = ("pads the map's borders: `amount` rows and columns on every side (an int, or (h, w): "
           "h rows on top and bottom, w columns left and right), any side set apart by "
           "top=, bottom=, left=, right=; mode constant (the value `value`), reflect (mirrored "
           "about the edge, the edge not repeated; each padding smaller than its axis) or "
           "replicate (the edge repeated), as PyTorch's F.pad")
    attrs = (
        Attr("amount", nonneg_pair, 0, "rows and columns on each side: p or (h, w)"),
        Attr("mode", choice("constant", "reflect", "replicate"), "constant"),
        Attr("value", number(), 0.0, "what constant padding holds"),
        Attr("top", nonneg_int, None, "rows on top (default: amount)"),
        Attr("bottom", nonneg_int, None, "rows below (default: amount)"),
        Attr("left", nonneg_int, None, "columns on the left (default: amount)"),
        Attr("right", nonneg_int, None, "columns on the right (default: amount)"),
    )

    def finish_attrs(self, a, given):
        if "value" in given and a.mode != "constant":
            raise AttrError(f"pad: value is for mode=constant, not mode={a.mode}",
                            hint=f"{a.mode} padding copies the map's own values", arg="value")

    @staticmethod
    def sides(a) -> tuple[int, int, int, int]:
        """(top, bottom, left, right): each side's own attribute, else the amount."""
        h, w = a.amount
        return tuple(h if v is None else v for v in (a.top, a.bottom)) + \
            tuple(w if v is None else v for v in (a.left, a.right))

    def shape(self, a, ins):
        c, h, w = require_spatial(self.name, ins[0])
        top, bottom, left, right = self.sides(a)
        if a.mode == "reflect":
            for side, amount, size, what in (
                    ("top", top, h, "height"), ("bottom", bottom, h, "height"),
                    ("left", left, w, "width"), ("right", right, w, "width")):
                if amount >= size:
                    raise ShapeError(
                        f"pad mode=reflect needs each padding smaller than its axis: {side} "
                        f"{amount} on a {what} of {size} ({{in0}})",
                        hint="reflect mirrors the map about its edge; pad less, or use replicate")
        return (c, h + top + bottom, w + left + right)

    def describe(self, a):
        top, bottom, left, right = self.sides(a)
        amounts = str(top) if top == bottom == left == right else \
            f"top {top}, bottom {bottom}, left {left}, right {right}"
        value = [f"value {a.value:g}"] if a.mode == "constant" and a.value != 0 else []
        return ", ".join([amounts, *([a.mode] if a.mode != "constant" else []), *value])

    def lower(self, node, ctx):
        a = node.attrs
        ctx.emit("pad2d", [ctx.x()], [ctx.output()], pad=self.sides(a), mode=a.mode,
                 value=a.value)

    def vjp(self, node, ctx, gy):
        return ctx.emit_input_grad("pad2d_bwd", [gy], pad=self.sides(node.attrs), mode=node.attrs.mode)

    cases = (
        Case("1", ("2@3x4",)),                                 # zeros on every side
        Case("top=1, right=2, value=0.5", ("2@3x3",)),         # one side each, another value
        Case("2, reflect", ("2@3x4",)),
        Case("left=2, bottom=1, mode=reflect", ("1@3x3",), batch=1),
        Case("(1, 2), replicate, bottom=3", ("2@2x3",)),       # the edges read many times
    )
    error_cases = (
        not_a_map("1"),
        ErrorCase("(1, 3), reflect", ("2@5x3",),
                  ("reflect needs each padding smaller than its axis", "left 3 on a width of 3",
                   "2@5x3 from x0")),
        ErrorCase("1, reflect, value=1", ("2@4x4",), ("value is for mode=constant",)),
        ErrorCase("1, mode=wrap", ("2@4x4",), ("bad value for 'mode'",)),
        ErrorCase("top=-1", ("2@4x4",), ("bad value for 'top'",)),
    )

    def reference(self, a, xs, p, run):
        from .reference import pool
        return pool.pad2d(xs[0], self.sides(a), a.mode, a.value)

    def onnx(self, a, xs, p, ctx):
        top, bottom, left, right = self.sides(a)
        mode = {"replicate": "edge"}.get(a.mode, a.mode)
        value = [ctx.weight(a.value, "value")] if a.mode == "constant" else []
        return ctx.op("Pad", [xs[0], ctx.const([0, 0, top, left, 0, 0, bottom, right]), *value],
                      mode=mode)

    def torch(self, a, xs, p, run):
        from torch.nn import functional as F
        top, bottom, left, right = self.sides(a)
        if a.mode == "constant":
            return F.pad(xs[0], (left, right, top, bottom), value=a.value)
        return F.pad(xs[0], (left, right, top, bottom), mode=a.mode)
