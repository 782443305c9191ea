"""Fully connected and reshaping ops: dense, flatten, reshape."""

from __future__ import annotations

import math

from ..errors import AttrError, ShapeError
from .base import (Attr, Op, OpKind, Param, Traits, boolean, channels, format_shape, int_tuple, is_sequence,
                   physical, pos_int, register)
from .cases import Case, ErrorCase
from .conv import WEIGHT_LAYER, act_attr


@register
class Dense(Op):
    name = "dense"
    traits = WEIGHT_LAYER
    penalised = ("weight",)
    kind = OpKind.DENSE
    doc = ("fully connected layer on a flat vector (F -> units), on each token of a "
           "sequence (TxF -> Txunits, PyTorch's Linear on the last axis), or with "
           "per_position=true on each position of a feature map over its channels "
           "(C@HxW -> units@HxW: PyTorch's Linear after a permute to channels last, as ConvNeXt)")
    attrs = (
        Attr("units", pos_int, doc="output features"),
        Attr("bias", boolean, True),
        act_attr,
        # opt-in: a dense layer straight after a conv is far more often a forgotten flatten
        Attr("per_position", boolean, False, doc="on a feature map: apply at each position"),
    )

    def shape(self, a, ins):
        if is_sequence(ins[0]):
            return (ins[0][0], a.units)
        if len(ins[0]) == 3 and not a.per_position:
            raise ShapeError("dense expects a flat vector or a sequence, got {in0}",
                             hint="add flatten (or global_avgpool) before it; per_position=true "
                                  "applies it at each position over the channels")
        if len(ins[0]) != 3 and a.per_position:
            raise ShapeError("dense(per_position=true) expects a feature map C@HxW, got {in0}",
                             hint="leave out per_position: on a vector or a sequence dense "
                                  "needs no flag")
        return (a.units, *ins[0][1:])       # a vector, or each position of a map

    def params(self, a, ins):
        ps = [Param("weight", (a.units, channels(ins[0])), "glorot_uniform")]
        if a.bias:
            ps.append(Param("bias", (a.units,), "zeros"))
        return ps

    def macs(self, a, ins, out):
        return math.prod(ins[0]) * a.units

    def window(self, a):
        return "global"

    def window_on(self, a, ins):
        if len(ins[0]) == 1:
            return "global"
        return None         # a sequence's tokens, a map's positions: each alone

    def describe(self, a):
        return str(a.units)

    def lower(self, node, ctx):
        b = ctx.param("bias") if node.attrs.bias else None
        w, b = ctx.folded(ctx.param("weight"), b)
        ctx.emit("dense", [ctx.x(), w, b], [ctx.output()])

    def vjp(self, node, ctx, gy):
        if ctx.wants_param_grad("weight"):
            ctx.emit("dense_bwd_weight", [ctx.x(), gy], [ctx.param_grad("weight")])
        if node.attrs.bias and ctx.wants_param_grad("bias"):
            ctx.emit("bias_grad", [gy], [ctx.param_grad("bias")])
        return ctx.emit_input_grad("dense_bwd_data", [gy, ctx.param("weight")])

    cases = (Case("4", ("5",)), Case("3, bias=false", ("7",), batch=1), Case("3", ("4x5",)),
             Case("4, per_position=true", ("3@2x3",)), Case("2, bias=false, per_position=true", ("5@1x2",), batch=1))
    error_cases = (ErrorCase("0", ("5",), ("bad value for 'units'", "positive integer")),
                   ErrorCase("4", ("3@2x3",), ("dense expects a flat vector or a sequence", "got 3@2x3")),
                   ErrorCase("4, per_position=true", ("5",), ("expects a feature map",)))

    def reference(self, a, xs, p, run):
        from .reference import dense
        return dense.dense(xs[0], p["weight"], p.get("bias"))

    def onnx(self, a, xs, p, ctx):
        weight, bias = ctx.folded(p["weight"], p.get("bias"))
        x = xs[0]
        if len(ctx.ins[0]) == 1:    # (N, F): Gemm takes the (units, features) weight as it is
            return ctx.op("Gemm", [x, weight, *([bias] if bias else [])], transB=1)
        if len(ctx.ins[0]) == 3:    # NCHW: over the channels at each position
            x = ctx.op("Transpose", [x], perm=[0, 2, 3, 1])
        y = ctx.op("MatMul", [x, ctx.op("Transpose", [weight], perm=[1, 0])])
        if bias:
            y = ctx.op("Add", [y, bias])
        return ctx.op("Transpose", [y], perm=[0, 3, 1, 2]) if len(ctx.ins[0]) == 3 else y

    def torch(self, a, xs, p, run):
        from torch.nn import functional as F
        x = xs[0]
        if x.dim() == 4:        # NCHW: over the channels, as ConvNeXt's permute, Linear, permute
            return F.linear(x.permute(0, 2, 3, 1), p["weight"], p.get("bias")).permute(0, 3, 1, 2)
        return F.linear(x, p["weight"], p.get("bias"))


def lower_reshape(ctx, src_shape, dst_shape) -> None:
    """Move between spec shapes in channel-major order. Channels-last maps go through
    to_flat / from_flat; vectors and sequences are stored in their spec order, so a reshape
    between them is a view."""
    x, size = ctx.x(), math.prod(src_shape)
    if len(src_shape) == 3:
        flat = ctx.output() if len(dst_shape) == 1 else ctx.tmp("flat", (size,))
        ctx.emit("to_flat", [x], [flat])
    else:
        flat = x if len(src_shape) == 1 else _view(ctx.tmp("flat", (size,)), x, ctx)
    if len(dst_shape) == 3:
        ctx.emit("from_flat", [flat], [ctx.output()])
    elif flat != ctx.y:
        ctx.alias(flat)


def reshape_vjp(ctx, src_shape, dst_shape, gy):
    """The gradient reshaped back, from dst_shape to src_shape: lower_reshape's adjoint."""
    if not ctx.needs_input_grad():
        return [None]
    if src_shape == dst_shape:
        return [gy]
    gx, size = ctx.input_grad(), math.prod(src_shape)
    if len(dst_shape) == 3:
        flat = gx if len(src_shape) == 1 else ctx.grad("flat", (size,))
        ctx.emit("to_flat", [gy], [flat])
    else:
        flat = gy if len(dst_shape) == 1 else _view(ctx.grad("flat", (size,)), gy, ctx)
    if len(src_shape) == 3:
        ctx.emit("from_flat", [flat], [gx])
    elif flat != gx:
        _view(gx, flat, ctx)
    return [gx]


def _view(tensor: str, source: str, ctx) -> str:
    """`tensor`, declared, made a view of `source`'s buffer (of as many elements)."""
    ctx.low.alias(tensor, source)
    return tensor


class _Reinterpret(Op):
    """An op that only reads its input's elements in channel-major order as another shape."""

    kind = OpKind.RESHAPE
    traits = Traits(shape_only=True)

    def window(self, a):
        return "global"

    def lower(self, node, ctx):
        lower_reshape(ctx, ctx.in_shape(), node.shape)

    def vjp(self, node, ctx, gy):
        return reshape_vjp(ctx, ctx.in_shape(), node.shape, gy)

    def onnx(self, a, xs, p, ctx):
        return ctx.reshaped(xs[0], ctx.shape)     # both are channel-major, as NCHW is

    def torch(self, a, xs, p, run):
        return xs[0].reshape(xs[0].shape[0], *run.shape)


@register
class Flatten(_Reinterpret):
    name = "flatten"
    doc = ("C@HxW -> C*H*W features (channel-major, as PyTorch); a sequence TxF -> T*F (token "
           "by token); a flat vector passes through")

    def shape(self, a, ins):
        return (math.prod(ins[0]),)

    cases = (Case(inputs=("2@3x4",)), Case(inputs=("6",)), Case(inputs=("3x4",)))

    def reference(self, a, xs, p, run):
        from .reference import dense
        return dense.reshape(xs[0], (-1,))


def _target_shape(v):
    v = int_tuple(v)
    if len(v) not in (1, 2, 3):
        raise AttrError(f"a shape has 1 dimension (features), 2 (tokens, features) or 3 "
                        f"(channels, height, width), got {len(v)}",
                        hint="e.g. reshape((1024, 1, 1)), reshape((28, 28)) or reshape(-1)")
    return v


@register
class Reshape(_Reinterpret):
    name = "reshape"
    doc = ("reinterpret the elements (channel-major order) as another shape, F, (T, F) or "
           "(C, H, W); "
           "one dimension may be -1, inferred from the element count")
    attrs = (Attr("shape", _target_shape, doc="target shape without batch, e.g. (1024, 1, 1)"),)

    def shape(self, a, ins):
        total = math.prod(ins[0])
        target = a.shape
        known = math.prod(d for d in target if d != -1)
        written = "(" + ", ".join(str(d) for d in target) + ")"
        if -1 in target:
            if total % known:
                raise ShapeError(f"reshape cannot infer -1 in {written}: {{in0}} has {total} "
                                 f"elements, not a multiple of {known}",
                                 hint="the known dimensions must divide the element count")
            return tuple(total // known if d == -1 else d for d in target)
        if known != total:
            raise ShapeError(f"reshape cannot turn {{in0}} ({total} elements) into "
                             f"{format_shape(target)} ({known} elements)",
                             hint="the element counts must be equal; -1 infers one dimension")
        return target

    def describe(self, a):
        return "(" + ", ".join(str(d) for d in a.shape) + ")"

    cases = (
        Case("(3, 2, 2)", ("12",)),
        Case("(3, 2, 2)", ("2@2x3",)),
        Case("-1", ("2@2x3",)),
        Case("(2, -1, 3)", ("12",), batch=1),
        Case("(4, 3)", ("2@2x3",)),             # a map read as a sequence, channel-major
        Case("(3, 2, 2)", ("3x4",)),
        Case("-1", ("3x4",)),
    )
    error_cases = (
        ErrorCase("(64, 8, 8)", ("64@7x7",),
                  ("reshape cannot turn 64@7x7 from x0 (3136 elements) into 64@8x8 (4096 elements)",)),
        ErrorCase("(3, -1, 28)", ("784",), ("cannot infer -1 in (3, -1, 28)", "784 elements")),
        ErrorCase("(7, 4, 4, 7)", ("784",), ("a shape has 1 dimension (features), 2",)),
    )

    def reference(self, a, xs, p, run):
        from .reference import dense
        return dense.reshape(xs[0], a.shape)
