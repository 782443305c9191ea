"""Convolutions: conv, depthwise_conv, separable_conv, conv_transpose."""

from __future__ import annotations

import math

from ..errors import AttrError, ShapeError
from .base import (Attr, Fusion, Op, OpKind, Param, Traits, boolean, choice, explicit_padding, op_names,
                   pos_int, pos_pair, nonneg_pair, padding, register, require_spatial, spatial_out)
from .cases import Case, ErrorCase, not_a_map, too_large

OHWI = (0, 2, 3, 1)   # PyTorch's OIHW weights -> the kernels' OHWI (channels last)


def conv_attrs(a, in_shape, groups: int) -> dict:
    """ISA attributes of a convolution reading an input of spec shape (C, H, W)."""
    return {"stride": a.stride, "pad": explicit_padding(a.pad, in_shape[1:], a.kernel, a.stride,
                                                         a.dilation),
            "dilation": a.dilation, "groups": groups}


def lower_conv(ctx, x: str, y: str, weight: str, bias: str | None, attrs: dict) -> None:
    w, b = ctx.param(weight, OHWI), ctx.param(bias) if bias else None
    if y == ctx.output():   # the conv that writes the node's output takes a folded batch norm
        w, b = ctx.folded(w, b)
    ctx.emit("conv2d", [x, w, b], [y], **attrs)


def conv_vjp(ctx, x: str, gy: str, weight: str, bias: str | None, attrs: dict,
             gx: str | None) -> None:
    """Gradients of y = conv2d(x, w) + b: weight and bias (if trainable), and x into gx."""
    if ctx.wants_param_grad(weight):
        ctx.emit("conv2d_bwd_weight", [x, gy], [ctx.param_grad(weight)], **attrs)
    if bias and ctx.wants_param_grad(bias):
        ctx.emit("bias_grad", [gy], [ctx.param_grad(bias)])
    if gx is not None:
        ctx.emit("conv2d_bwd_data", [gy, ctx.param(weight, OHWI), None], [gx], **attrs)


def reference_conv(a, x, weight, bias, groups):
    """The float64 reference of a convolution with `a`'s window (netspec/ops/reference/)."""
    from .reference import conv
    pads = conv.window_pads(a.pad, x.shape[2:], a.kernel, a.stride, a.dilation)
    return conv.conv2d(x, weight, bias, a.stride, pads, a.dilation, groups)


def torch_conv(a, x, weight, bias, groups):
    """The PyTorch rule of a convolution with `a`'s window (TensorFlow's same)."""
    from torch.nn import functional as F
    from .reference.common import torch_padded
    return F.conv2d(torch_padded(x, a, a.dilation), weight, bias, a.stride, 0, a.dilation, groups)


def onnx_window(a, in_hw, dilation=(1, 1), out_hw=None) -> dict:
    """ONNX's attributes of a window (conv or pool) with `a`'s kernel, stride and padding on an
    input of (H, W): explicit pads (top, left, bottom, right), TensorFlow's same included. With
    `out_hw` (a pool in ceil mode), the end pads also cover the last window's overhang, which
    ONNX's pools leave out as they leave out padding."""
    from .reference.common import window_pads
    t, b, l, r = window_pads(a.pad, in_hw, a.kernel, a.stride, dilation)
    if out_hw is not None:
        b, r = (max(pad, (n - 1) * s + d * (k - 1) + 1 - size - before)
                for pad, n, s, d, k, size, before in zip((b, r), out_hw, a.stride, dilation, a.kernel,
                                                         in_hw, (t, l)))
    return {"kernel_shape": list(a.kernel), "strides": list(a.stride), "pads": [t, l, b, r]}


def onnx_conv(ctx, a, x: str, weight: str, bias: str | None, groups: int, in_hw, writes_output=True) -> str:
    """A convolution with `a`'s window in ONNX; the one that writes the layer's output takes
    a folded batch norm (as lower_conv)."""
    if writes_output:
        weight, bias = ctx.folded(weight, bias)
    return ctx.op("Conv", [x, weight, *([bias] if bias else [])], group=groups,
                  dilations=list(a.dilation), **onnx_window(a, in_hw, a.dilation))


def act_choices() -> tuple[str, ...]:
    """What a layer's act= accepts: none, or an op with the activation trait (read when a
    value is checked, once every op module has registered)."""
    return ("none", *op_names(lambda t: t.activation))


def _act(v):
    return choice(*act_choices())(v)


act_attr = Attr("act", _act, "none", "activation applied after (a separate node)")

# a weight layer whose output channel is its weights' first axis: it anchors a fused group
# and takes a batch norm after it into its weights (lower_conv / Dense.lower: ctx.folded)
WEIGHT_LAYER = Traits(fusion=Fusion.ANCHOR, folds_batchnorm=True)


def _k(a) -> str:
    kh, kw = a.kernel
    sh, sw = a.stride
    s = f"/{sh}" if sh == sw and sh > 1 else (f"/{sh}x{sw}" if (sh, sw) != (1, 1) else "")
    return f"{kh}x{kw}{s}"


@register
class Conv(Op):
    name = "conv"
    traits = WEIGHT_LAYER
    penalised = ("weight",)
    kind = OpKind.CONV
    doc = "2-D convolution (cross-correlation) with optional bias"
    attrs = (
        Attr("filters", pos_int, doc="output channels"),
        Attr("kernel", pos_pair, doc="kernel size k or (kh, kw)"),
        Attr("stride", pos_pair, 1),
        Attr("pad", padding, "valid"),
        Attr("dilation", pos_pair, 1),
        Attr("groups", pos_int, 1),
        Attr("bias", boolean, True),
        act_attr,
    )

    def shape(self, a, ins):
        c, h, w = require_spatial(self.name, ins[0])
        if c % a.groups or a.filters % a.groups:
            raise ShapeError(f"conv groups={a.groups} must divide both input channels ({c}) "
                             f"and filters ({a.filters})")
        oh, ow = spatial_out(self.name, ins[0], a.kernel, a.stride, a.pad, a.dilation)
        return (a.filters, oh, ow)

    def params(self, a, ins):
        c = ins[0][0]
        ps = [Param("weight", (a.filters, c // a.groups, *a.kernel), "glorot_uniform")]
        if a.bias:
            ps.append(Param("bias", (a.filters,), "zeros"))
        return ps

    def macs(self, a, ins, out):
        c = ins[0][0]
        return out[0] * out[1] * out[2] * (c // a.groups) * a.kernel[0] * a.kernel[1]

    def window(self, a):
        (kh, kw), (dh, dw) = a.kernel, a.dilation
        return (dh * (kh - 1) + 1, dw * (kw - 1) + 1, *a.stride)

    def describe(self, a):
        return f"{_k(a)}, {a.filters}"

    def _groups(self, node, ctx):
        return node.attrs.groups

    def lower(self, node, ctx):
        a = node.attrs
        lower_conv(ctx, ctx.x(), ctx.output(), "weight", "bias" if a.bias else None,
                   conv_attrs(a, ctx.in_shape(), self._groups(node, ctx)))

    def vjp(self, node, ctx, gy):
        a = node.attrs
        gx = ctx.input_grad() if ctx.needs_input_grad() else None
        conv_vjp(ctx, ctx.x(), gy, "weight", "bias" if a.bias else None,
                 conv_attrs(a, ctx.in_shape(), self._groups(node, ctx)), gx)
        return [gx]

    cases = (
        Case("3, 3, stride=2, pad=same", ("2@7x6",)),       # TensorFlow's same: the odd row after
        Case("3, (3, 2), stride=2, pad=(1, 2)", ("2@7x7",)),
        Case("2, 3, dilation=2, pad=1, bias=false", ("2@7x7",)),
        Case("6, 3, groups=2", ("4@5x5",)),
        Case("2, 2, stride=3", ("2@8x8",)),                  # stride > kernel
        Case("3, 3", ("1@5x6",), batch=1),
    )
    error_cases = (
        not_a_map("4, 3"),
        too_large("4, 5"),
        ErrorCase("4, 3, groups=2", ("3@8x8",), ("groups=2 must divide", "(3)")),
        ErrorCase("4, 3, pad=sam", ("3@8x8",), ("bad value for 'pad'", "'sam'")),
    )

    def reference(self, a, xs, p, run):
        return reference_conv(a, xs[0], p["weight"], p.get("bias"), a.groups)

    def onnx(self, a, xs, p, ctx):
        return onnx_conv(ctx, a, xs[0], p["weight"], p.get("bias"), a.groups, ctx.ins[0][1:])

    def torch(self, a, xs, p, run):
        return torch_conv(a, xs[0], p["weight"], p.get("bias"), a.groups)


@register
class DepthwiseConv(Op):
    name = "depthwise_conv"
    traits = WEIGHT_LAYER
    penalised = ("weight",)
    kind = OpKind.CONV
    doc = ("depthwise 2-D convolution: each input channel convolved with `multiplier` "
           "kernels of its own (Keras DepthwiseConv2D; conv with groups = channels)")
    attrs = (
        Attr("kernel", pos_pair, doc="kernel size k or (kh, kw)"),
        Attr("stride", pos_pair, 1),
        Attr("pad", padding, "valid"),
        Attr("multiplier", pos_int, 1, "output channels per input channel"),
        Attr("dilation", pos_pair, 1),
        Attr("bias", boolean, True),
        act_attr,
    )

    def shape(self, a, ins):
        c, _, _ = require_spatial(self.name, ins[0])
        oh, ow = spatial_out(self.name, ins[0], a.kernel, a.stride, a.pad, a.dilation)
        return (c * a.multiplier, oh, ow)

    def params(self, a, ins):
        cm = ins[0][0] * a.multiplier
        ps = [Param("weight", (cm, 1, *a.kernel), "glorot_uniform")]
        if a.bias:
            ps.append(Param("bias", (cm,), "zeros"))
        return ps

    def macs(self, a, ins, out):
        return out[0] * out[1] * out[2] * a.kernel[0] * a.kernel[1]

    def window(self, a):
        return Conv.window(self, a)

    def describe(self, a):
        return _k(a) + (f", x{a.multiplier}" if a.multiplier > 1 else "")

    def _groups(self, node, ctx):
        return ctx.in_shape()[0]

    lower = Conv.lower
    vjp = Conv.vjp

    cases = (
        Case("3, stride=2, pad=same, multiplier=2", ("3@6x6",)),
        Case("(2, 3), pad=(1, 0), dilation=(2, 1), bias=false", ("2@6x5",)),
        Case("2, stride=3", ("2@7x7",), batch=1),
    )
    error_cases = (not_a_map("3"), too_large("3, dilation=2"))

    def reference(self, a, xs, p, run):
        return reference_conv(a, xs[0], p["weight"], p.get("bias"), xs[0].shape[1])

    def onnx(self, a, xs, p, ctx):
        return onnx_conv(ctx, a, xs[0], p["weight"], p.get("bias"), ctx.ins[0][0], ctx.ins[0][1:])

    def torch(self, a, xs, p, run):
        return torch_conv(a, xs[0], p["weight"], p.get("bias"), xs[0].shape[1])


@register
class SeparableConv(Op):
    name = "separable_conv"
    traits = WEIGHT_LAYER
    penalised = ("depthwise_weight", "pointwise_weight")
    kind = OpKind.CONV
    doc = ("depthwise separable convolution: a depthwise conv (multiplier kernels per channel) "
           "then a 1x1 conv to `filters` channels, one node (Keras SeparableConv2D); "
           "the bias belongs to the pointwise part")
    attrs = (
        Attr("filters", pos_int, doc="output channels"),
        Attr("kernel", pos_pair, doc="kernel size k or (kh, kw) of the depthwise part"),
        Attr("stride", pos_pair, 1),
        Attr("pad", padding, "valid"),
        Attr("multiplier", pos_int, 1, "depthwise output channels per input channel"),
        Attr("dilation", pos_pair, 1),
        Attr("bias", boolean, True),
        act_attr,
    )

    def shape(self, a, ins):
        require_spatial(self.name, ins[0])
        oh, ow = spatial_out(self.name, ins[0], a.kernel, a.stride, a.pad, a.dilation)
        return (a.filters, oh, ow)

    def params(self, a, ins):
        cm = ins[0][0] * a.multiplier
        ps = [Param("depthwise_weight", (cm, 1, *a.kernel), "glorot_uniform"),
              Param("pointwise_weight", (a.filters, cm, 1, 1), "glorot_uniform")]
        if a.bias:
            ps.append(Param("bias", (a.filters,), "zeros"))
        return ps

    def macs(self, a, ins, out):
        cm = ins[0][0] * a.multiplier
        pixels = out[1] * out[2]
        return pixels * cm * a.kernel[0] * a.kernel[1] + pixels * cm * a.filters

    def window(self, a):
        return Conv.window(self, a)

    def describe(self, a):
        return f"{_k(a)}, {a.filters}" + (f", x{a.multiplier}" if a.multiplier > 1 else "")

    # Lowered as its two parts: depthwise into a temporary, then a 1x1 conv with the bias.
    def _parts(self, node, ctx):
        a = node.attrs
        c, h, w = ctx.in_shape()
        _, oh, ow = node.shape
        mid = ctx.tmp("depthwise", (oh, ow, c * a.multiplier))
        one = {"stride": (1, 1), "pad": (0, 0, 0, 0), "dilation": (1, 1), "groups": 1}
        return mid, conv_attrs(a, ctx.in_shape(), c), one

    def lower(self, node, ctx):
        mid, depthwise, pointwise = self._parts(node, ctx)
        lower_conv(ctx, ctx.x(), mid, "depthwise_weight", None, depthwise)
        lower_conv(ctx, mid, ctx.output(), "pointwise_weight", "bias" if node.attrs.bias else None,
                   pointwise)

    def vjp(self, node, ctx, gy):
        mid, depthwise, pointwise = self._parts(node, ctx)
        need_mid = ctx.needs_input_grad() or ctx.wants_param_grad("depthwise_weight")
        gmid = ctx.grad("depthwise", ctx.shape_of(mid)) if need_mid else None
        conv_vjp(ctx, mid, gy, "pointwise_weight", "bias" if node.attrs.bias else None, pointwise,
                 gmid)
        gx = ctx.input_grad() if ctx.needs_input_grad() else None
        if gmid is not None:
            conv_vjp(ctx, ctx.x(), gmid, "depthwise_weight", None, depthwise, gx)
        return [gx]

    cases = (
        Case("4, 3, pad=same", ("3@5x5",)),
        Case("3, 2, stride=2, multiplier=2, bias=false", ("2@5x6",)),
    )
    error_cases = (not_a_map("4, 3"), too_large("4, 5"))

    def reference(self, a, xs, p, run):
        from .reference import conv
        mid = reference_conv(a, xs[0], p["depthwise_weight"], None, xs[0].shape[1])
        return conv.conv2d(mid, p["pointwise_weight"], p.get("bias"))

    def onnx(self, a, xs, p, ctx):
        mid = onnx_conv(ctx, a, xs[0], p["depthwise_weight"], None, ctx.ins[0][0], ctx.ins[0][1:],
                        writes_output=False)
        weight, bias = ctx.folded(p["pointwise_weight"], p.get("bias"))
        return ctx.op("Conv", [mid, weight, *([bias] if bias else [])], kernel_shape=[1, 1])

    def torch(self, a, xs, p, run):
        from torch.nn import functional as F
        mid = torch_conv(a, xs[0], p["depthwise_weight"], None, xs[0].shape[1])
        return F.conv2d(mid, p["pointwise_weight"], p.get("bias"))


@register
class ConvTranspose(Op):
    name = "conv_transpose"
    penalised = ("weight",)
    kind = OpKind.CONV
    doc = ("transposed 2-D convolution (the gradient of conv; 'deconvolution'). Output size: "
           "valid (H-1)*s + d*(k-1) + 1 + output_padding; same H*s (Keras); explicit p "
           "(H-1)*s - 2p + d*(k-1) + output_padding + 1 (PyTorch)")
    attrs = (
        Attr("filters", pos_int, doc="output channels"),
        Attr("kernel", pos_pair, doc="kernel size k or (kh, kw)"),
        Attr("stride", pos_pair, 1),
        Attr("pad", padding, "valid"),
        Attr("output_padding", nonneg_pair, 0, "extra rows/columns added on the bottom/right"),
        Attr("dilation", pos_pair, 1),
        Attr("groups", pos_int, 1),
        Attr("bias", boolean, True),
        act_attr,
    )

    def finish_attrs(self, a, given):
        op = a.output_padding
        if op == (0, 0):
            return
        if a.pad == "same":
            raise AttrError("conv_transpose: output_padding cannot be used with pad=same "
                            "(same always gives input * stride)",
                            hint="use pad=valid or an explicit padding", arg="output_padding")
        for axis in (0, 1):
            limit = max(a.stride[axis], a.dilation[axis])
            if op[axis] >= limit:
                raise AttrError(f"conv_transpose: output_padding {op[axis]} must be smaller than "
                                f"the stride or the dilation ({limit}) on the "
                                f"{'width' if axis else 'height'}",
                                hint="output_padding only picks among the sizes a stride "
                                     "can map to the same input size", arg="output_padding")

    def shape(self, a, ins):
        c, h, w = require_spatial(self.name, ins[0])
        if c % a.groups or a.filters % a.groups:
            raise ShapeError(f"conv_transpose groups={a.groups} must divide both input channels "
                             f"({c}) and filters ({a.filters})")
        out = []
        for axis, size in enumerate((h, w)):
            k, s, d = a.kernel[axis], a.stride[axis], a.dilation[axis]
            if a.pad == "same":
                n = size * s
            else:
                p = 0 if a.pad == "valid" else a.pad[axis]
                n = (size - 1) * s - 2 * p + d * (k - 1) + a.output_padding[axis] + 1
            if n <= 0:
                raise ShapeError(f"conv_transpose output {'width' if axis else 'height'} would be "
                                 f"{n} for input {{in0}}: the padding is too large",
                                 hint="use a smaller padding")
            out.append(n)
        return (a.filters, out[0], out[1])

    def params(self, a, ins):
        c = ins[0][0]
        ps = [Param("weight", (c, a.filters // a.groups, *a.kernel), "glorot_uniform")]
        if a.bias:
            ps.append(Param("bias", (a.filters,), "zeros"))
        return ps

    def macs(self, a, ins, out):
        c, h, w = ins[0]
        return h * w * c * (a.filters // a.groups) * a.kernel[0] * a.kernel[1]

    def window(self, a):
        # An output pixel sees at most ceil(span / s) input pixels; consecutive outputs move
        # 1/s input pixels, which a whole-number stride cannot say: 1 is an upper bound.
        (kh, kw), (sh, sw), (dh, dw) = a.kernel, a.stride, a.dilation
        return (-(-(dh * (kh - 1) + 1) // sh), -(-(dw * (kw - 1) + 1) // sw), 1, 1)

    def describe(self, a):
        return f"{_k(a)}, {a.filters}"

    # A transposed conv is the adjoint of the conv that maps its output back to its input:
    # forward = conv2d_bwd_data, gradient in x = conv2d, in w = conv2d_bwd_weight(gy, x).
    def _adjoint_attrs(self, node, ctx) -> dict:
        a = node.attrs
        (_, h, w), (_, oh, ow) = ctx.in_shape(), node.shape
        if a.pad == "same":
            pads = []
            for axis, (size, out) in enumerate(((h, oh), (w, ow))):
                k, st, d = a.kernel[axis], a.stride[axis], a.dilation[axis]
                total = max((size - 1) * st + d * (k - 1) + 1 - out, 0)
                pads += [total // 2, total - total // 2]
            pad = tuple(pads)
        else:
            pad = explicit_padding(a.pad, (oh, ow), a.kernel, a.stride, a.dilation)
        return {"stride": a.stride, "pad": pad, "dilation": a.dilation, "groups": a.groups}

    def lower(self, node, ctx):
        b = ctx.param("bias") if node.attrs.bias else None
        ctx.emit("conv2d_bwd_data", [ctx.x(), ctx.param("weight", OHWI), b], [ctx.output()],
                 **self._adjoint_attrs(node, ctx))

    def vjp(self, node, ctx, gy):
        attrs = self._adjoint_attrs(node, ctx)
        if ctx.wants_param_grad("weight"):
            ctx.emit("conv2d_bwd_weight", [gy, ctx.x()], [ctx.param_grad("weight")], **attrs)
        if node.attrs.bias and ctx.wants_param_grad("bias"):
            ctx.emit("bias_grad", [gy], [ctx.param_grad("bias")])
        gx = None
        if ctx.needs_input_grad():
            gx = ctx.input_grad()
            ctx.emit("conv2d", [gy, ctx.param("weight", OHWI), None], [gx], **attrs)
        return [gx]

    cases = (
        Case("2, 3, stride=2", ("3@3x3",)),
        Case("2, 3, stride=2, pad=same", ("3@3x4",)),
        Case("2, 3, stride=2, pad=1, output_padding=1", ("2@3x3",)),
        Case("4, 1, stride=2, pad=same, groups=2", ("2@3x3",)),     # a kernel below its stride
        Case("2, 2, dilation=2, bias=false", ("2@3x2",), batch=1),
    )
    error_cases = (
        not_a_map("4, 3"),
        ErrorCase("8, 1, pad=1", ("4@1x1",), ("height would be -1", "padding is too large")),
        ErrorCase("8, 3, groups=4", ("6@4x4",), ("groups=4 must divide",)),
        ErrorCase("8, 3, stride=2, output_padding=2", ("2@4x4",),
                  ("output_padding 2 must be smaller than the stride or the dilation (2)",)),
    )

    def reference(self, a, xs, p, run):
        from .reference import conv
        return conv.conv_transpose2d(xs[0], p["weight"], p.get("bias"), a.stride, a.pad,
                                     a.output_padding, a.dilation, a.groups)

    def onnx(self, a, xs, p, ctx):
        from .reference.common import window_pads
        pads, extra = [0, 0, 0, 0], [0, 0]      # (top, left, bottom, right), output_padding
        if a.pad == "same":
            # the adjoint of a same-padded conv of an H*s input (see the PyTorch rule): the
            # full output cropped by that conv's padding, zeros where it ends short of H*s
            for axis in (0, 1):
                size, k, s, d = ctx.ins[0][1 + axis], a.kernel[axis], a.stride[axis], a.dilation[axis]
                before, _ = window_pads("same", (size * s, 1), (k, 1), (s, 1), (d, 1))[:2]
                after = (size - 1) * s + d * (k - 1) + 1 - size * s - before
                pads[axis], pads[2 + axis] = before, max(after, 0)
                extra[axis] = max(-after, 0)
        else:
            if a.pad != "valid":
                pads = [a.pad[0], a.pad[1], a.pad[0], a.pad[1]]
            extra = list(a.output_padding)
        bias = p.get("bias")
        return ctx.op("ConvTranspose", [xs[0], p["weight"], *([bias] if bias else [])],
                      kernel_shape=list(a.kernel), strides=list(a.stride), pads=pads,
                      output_padding=extra, dilations=list(a.dilation), group=a.groups)

    def torch(self, a, xs, p, run):
        from torch.nn import functional as F
        from .reference.common import window_pads
        x, w, b = xs[0], p["weight"], p.get("bias")
        if a.pad != "same":
            pad = (0, 0) if a.pad == "valid" else a.pad
            return F.conv_transpose2d(x, w, b, a.stride, pad, a.output_padding, a.groups, a.dilation)
        # The adjoint of a same-padded conv whose input is H*s: the full transposed output
        # lands in that conv's padded input (length H*s + total), from which the padding is cut.
        y = F.conv_transpose2d(x, w, None, a.stride, 0, 0, a.groups, a.dilation)
        for axis in (0, 1):
            size, k, s, d = x.shape[2 + axis], a.kernel[axis], a.stride[axis], a.dilation[axis]
            target = size * s
            before, after = window_pads("same", (target, 1), (k, 1), (s, 1), (d, 1))[:2]
            # padded length = target + before + after >= the full output; the tail the conv
            # never read (when d*(k-1)+1 < s) is zeros
            extra = target + before + after - y.shape[2 + axis]
            if extra > 0:
                y = F.pad(y, (0, extra, 0, 0) if axis else (0, 0, 0, extra))
            y = y.narrow(2 + axis, before, target)
        return y if b is None else y + b.view(1, -1, 1, 1)

    def torch_param(self, a, param, rng):
        if param.name != "weight":
            return super().torch_param(a, param, rng)
        # (C, F/groups, kh, kw): each output pixel sees ~ C/groups * kh*kw / (sh*sw) inputs
        c, _, kh, kw = param.shape
        fan_in = max(1.0, c / a.groups * kh * kw / (a.stride[0] * a.stride[1]))
        return rng.standard_normal(param.shape) * math.sqrt(2.0 / fan_in)
