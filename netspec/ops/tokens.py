"""Sequences of tokens, as a vision transformer (ViT) sees an image: to_tokens, class_token,
position_embedding, attention, token.

A sequence is T tokens of F features, shape (T, F), written `TxF`; it is stored as it is
written (each token's features contiguous), so a channels-last feature map's positions are
already a sequence. Parameters follow torchvision's VisionTransformer and PyTorch's
nn.MultiheadAttention (names and layouts), so their weights load by renaming alone.
"""

from __future__ import annotations

import math

from .base import (Attr, Op, OpKind, Param, Traits, boolean, channels, nonneg_int, pos_int, register,
                   require_sequence, require_spatial)
from .cases import Case, ErrorCase, not_a_map
from ..errors import ShapeError


def not_a_sequence(args: str = "") -> ErrorCase:
    return ErrorCase(args, ("2@3x3",), ("expects a sequence of tokens TxF", "got 2@3x3 from x0"))


@register
class ToTokens(Op):
    name = "to_tokens"
    kind = OpKind.TOKENS
    doc = ("a feature map's positions as a sequence: C@HxW -> (H*W)xC, token h*W + w holding the "
           "channels of position (h, w) (torchvision ViT's x.flatten(2).transpose(1, 2))")

    def shape(self, a, ins):
        c, h, w = require_spatial(self.name, ins[0])
        return (h * w, c)

    # channels-last, the map's positions in row-major order are its tokens: a view both ways
    def lower(self, node, ctx):
        ctx.alias(ctx.x())

    def vjp(self, node, ctx, gy):
        if not ctx.needs_input_grad():
            return [None]
        gx = ctx.input_grad()
        ctx.low.alias(gx, gy)
        return [gx]

    cases = (Case(inputs=("3@2x2",)), Case(inputs=("2@1x3",), batch=1))
    error_cases = (not_a_map(),)

    def reference(self, a, xs, p, run):
        from .reference import tokens
        return tokens.to_tokens(xs[0])

    def onnx(self, a, xs, p, ctx):
        c, h, w = ctx.ins[0]
        return ctx.op("Transpose", [ctx.reshaped(xs[0], [c, h * w])], perm=[0, 2, 1])

    def torch(self, a, xs, p, run):
        return xs[0].flatten(2).transpose(1, 2)


@register
class ClassToken(Op):
    name = "class_token"
    kind = OpKind.TOKENS
    doc = ("a learned token put before the sequence: TxF -> (T+1)xF (torchvision ViT's "
           "class_token (1, 1, F), starting at zeros)")

    def shape(self, a, ins):
        t, f = require_sequence(self.name, ins[0])
        return (t + 1, f)

    def params(self, a, ins):
        return [Param("class_token", (1, 1, channels(ins[0])), "zeros")]

    def lower(self, node, ctx):
        ctx.emit("prepend_token", [ctx.x(), ctx.param("class_token")], [ctx.output()])

    def vjp(self, node, ctx, gy):
        if ctx.wants_param_grad("class_token"):
            first = ctx.grad("first", (1, channels(node.shape)))
            ctx.emit("slice_tokens", [gy], [first], start=0)
            ctx.emit("sum_batch", [first], [ctx.param_grad("class_token")])
        return ctx.emit_input_grad("slice_tokens", [gy], start=1)

    cases = (Case(inputs=("3x4",)), Case(inputs=("1x2",), batch=1))
    error_cases = (not_a_sequence(),)

    def reference(self, a, xs, p, run):
        from .reference import tokens
        return tokens.class_token(xs[0], p["class_token"])

    def onnx(self, a, xs, p, ctx):
        # the (1, 1, F) token repeated for every sample of the (dynamic) batch
        batch = ctx.op("Slice", [ctx.op("Shape", xs), ctx.const([0]), ctx.const([1])])
        shape = ctx.op("Concat", [batch, ctx.const([1, ctx.ins[0][1]])], axis=0)
        return ctx.op("Concat", [ctx.op("Expand", [p["class_token"], shape]), xs[0]], axis=1)

    def torch(self, a, xs, p, run):
        import torch
        x = xs[0]
        return torch.cat([p["class_token"].expand(x.shape[0], -1, -1), x], dim=1)


@register
class PositionEmbedding(Op):
    name = "position_embedding"
    kind = OpKind.TOKENS
    doc = ("adds a learned embedding of each position to the sequence (torchvision ViT's "
           "pos_embedding (1, T, F), starting from a normal of std 0.02)")

    def shape(self, a, ins):
        return require_sequence(self.name, ins[0])

    def params(self, a, ins):
        return [Param("pos_embedding", (1, *ins[0]), "normal:0.02")]

    def lower(self, node, ctx):
        ctx.emit("add_broadcast", [ctx.x(), ctx.param("pos_embedding")], [ctx.output()])

    def vjp(self, node, ctx, gy):
        if ctx.wants_param_grad("pos_embedding"):
            ctx.emit("sum_batch", [gy], [ctx.param_grad("pos_embedding")])
        return [gy if ctx.needs_input_grad() else None]

    cases = (Case(inputs=("3x4",)), Case(inputs=("2x3",), batch=1))
    error_cases = (not_a_sequence(),)

    def reference(self, a, xs, p, run):
        from .reference import tokens
        return tokens.position_embedding(xs[0], p["pos_embedding"])

    def onnx(self, a, xs, p, ctx):
        return ctx.op("Add", [xs[0], p["pos_embedding"]])

    def torch(self, a, xs, p, run):
        return xs[0] + p["pos_embedding"]


@register
class Attention(Op):
    name = "attention"
    kind = OpKind.ATTENTION
    penalised = ("in_proj_weight", "out_proj.weight")
    doc = ("multi-head self-attention over a sequence TxE (PyTorch's nn.MultiheadAttention with "
           "query = key = value): q, k, v projected together (in_proj), each head's softmax over "
           "the keys of q k^T / sqrt(E / heads) weighting its values, the heads side by side, "
           "then the output projection (out_proj)")
    attrs = (
        Attr("heads", pos_int, doc="attention heads; they divide the features"),
        Attr("bias", boolean, True, "the projections' biases"),
    )

    def shape(self, a, ins):
        t, e = require_sequence(self.name, ins[0])
        if e % a.heads:
            raise ShapeError(f"attention splits the features of {{in0}} among {a.heads} heads, "
                             f"but {e} is not a multiple of {a.heads}",
                             hint="choose heads dividing the features (ViT-B: 768 = 12 x 64)")
        return ins[0]

    def params(self, a, ins):
        e = ins[0][1]
        ps = [Param("in_proj_weight", (3 * e, e), "glorot_uniform")]
        if a.bias:
            ps.append(Param("in_proj_bias", (3 * e,), "zeros"))
        ps.append(Param("out_proj.weight", (e, e), "glorot_uniform"))
        if a.bias:
            ps.append(Param("out_proj.bias", (e,), "zeros"))
        return ps

    def macs(self, a, ins, out):
        t, e = ins[0]
        return 4 * t * e * e + 2 * t * t * e   # the projections (3E + E outputs), q k^T, weights v

    def window(self, a):
        return "global"

    def describe(self, a):
        return f"{a.heads} heads"

    def _param(self, node, ctx, pname):
        return ctx.param(pname) if any(p.name == pname for p in node.params) else None

    # tensors: qkv (T, 3E), q, k, v side by side; heads (T, E), the heads' weighted values
    # side by side; weights (heads, T, T), each head's softmax over the keys
    def _tensors(self, node, ctx):
        t, e = node.shape
        return (ctx.tmp("qkv", (t, 3 * e)), ctx.tmp("heads", (t, e)),
                ctx.tmp("weights", (node.attrs.heads, t, t)))

    def lower(self, node, ctx):
        qkv, heads, weights = self._tensors(node, ctx)
        ctx.emit("dense", [ctx.x(), ctx.param("in_proj_weight"),
                           self._param(node, ctx, "in_proj_bias")], [qkv])
        ctx.emit("attention", [qkv], [heads, weights], heads=node.attrs.heads)
        ctx.emit("dense", [heads, ctx.param("out_proj.weight"),
                           self._param(node, ctx, "out_proj.bias")], [ctx.output()])

    def vjp(self, node, ctx, gy):
        t, e = node.shape
        qkv, heads, weights = self._tensors(node, ctx)
        has_bias = node.attrs.bias
        if ctx.wants_param_grad("out_proj.weight"):
            ctx.emit("dense_bwd_weight", [heads, gy], [ctx.param_grad("out_proj.weight")])
        if has_bias and ctx.wants_param_grad("out_proj.bias"):
            ctx.emit("bias_grad", [gy], [ctx.param_grad("out_proj.bias")])
        want_in_weight = ctx.wants_param_grad("in_proj_weight")
        want_in_bias = has_bias and ctx.wants_param_grad("in_proj_bias")
        if not (ctx.needs_input_grad() or want_in_weight or want_in_bias):
            return [None]
        gheads = ctx.grad("heads", (t, e))
        ctx.emit("dense_bwd_data", [gy, ctx.param("out_proj.weight")], [gheads])
        gqkv = ctx.grad("qkv", (t, 3 * e))
        gscores = ctx.grad("scores", (node.attrs.heads, t, t))
        ctx.emit("attention_bwd", [gheads, qkv, weights, heads], [gqkv, gscores],
                 heads=node.attrs.heads)
        if want_in_weight:
            ctx.emit("dense_bwd_weight", [ctx.x(), gqkv], [ctx.param_grad("in_proj_weight")])
        if want_in_bias:
            ctx.emit("bias_grad", [gqkv], [ctx.param_grad("in_proj_bias")])
        return ctx.emit_input_grad("dense_bwd_data", [gqkv, ctx.param("in_proj_weight")])

    cases = (
        Case("2", ("3x4",)),                     # two heads of two features
        Case("1, bias=false", ("2x3",), batch=1),
        Case("3", ("4x3",), batch=1),            # heads of one feature
    )
    error_cases = (
        ErrorCase("3", ("5x4",), ("attention splits the features of 5x4 from x0 among 3 heads",
                                  "4 is not a multiple of 3")),
        not_a_sequence("2"),
        ErrorCase(inputs=("3x4",), words=("attention needs 'heads'",)),
    )

    def reference(self, a, xs, p, run):
        from .reference import tokens
        return tokens.attention(xs[0], p["in_proj_weight"], p.get("in_proj_bias"),
                                p["out_proj.weight"], p.get("out_proj.bias"), a.heads)

    def onnx(self, a, xs, p, ctx):
        # as F.multi_head_attention_forward: q, k, v from one projection, heads of E / h
        # features, softmax(q k^T / sqrt(d)) v, the heads concatenated and projected
        t, e = ctx.ins[0]
        d = e // a.heads

        def project(x, weight, bias):
            y = ctx.op("MatMul", [x, ctx.op("Transpose", [weight], perm=[1, 0])])
            return ctx.op("Add", [y, bias]) if bias else y

        qkv = project(xs[0], p["in_proj_weight"], p.get("in_proj_bias"))
        q, k, v = (ctx.op("Transpose", [ctx.reshaped(part, [t, a.heads, d])], perm=[0, 2, 1, 3])
                   for part in ctx.op("Split", [qkv, ctx.const([e, e, e])], outputs=3, axis=2))
        scores = ctx.op("MatMul", [ctx.op("Mul", [q, ctx.weight(1 / math.sqrt(d), "scale")]),
                                   ctx.op("Transpose", [k], perm=[0, 1, 3, 2])])
        heads = ctx.op("MatMul", [ctx.op("Softmax", [scores], axis=-1), v])
        joined = ctx.reshaped(ctx.op("Transpose", [heads], perm=[0, 2, 1, 3]), [t, e])
        return project(joined, p["out_proj.weight"], p.get("out_proj.bias"))

    def torch(self, a, xs, p, run):
        from torch.nn import functional as F
        x = xs[0].transpose(0, 1)             # (T, N, E): the layout the function takes
        e = x.shape[-1]
        y, _ = F.multi_head_attention_forward(
            x, x, x, e, a.heads, p["in_proj_weight"], p.get("in_proj_bias"), None, None, False,
            0.0, p["out_proj.weight"], p.get("out_proj.bias"), training=run.training,
            need_weights=False)
        return y.transpose(0, 1)


@register
class Token(Op):
    name = "token"
    kind = OpKind.TOKENS
    doc = ("the features of one token: TxF -> F, x[:, index] (ViT's class token, index 0, "
           "feeds its head)")
    attrs = (Attr("index", nonneg_int, 0, "which token, from 0"),)

    def shape(self, a, ins):
        t, f = require_sequence(self.name, ins[0])
        if a.index >= t:
            raise ShapeError(f"token {a.index} is past the end of {{in0}} (tokens 0 to {t - 1})")
        return (f,)

    def describe(self, a):
        return str(a.index)

    def lower(self, node, ctx):
        ctx.emit("slice_tokens", [ctx.x()], [ctx.output()], start=node.attrs.index)

    def vjp(self, node, ctx, gy):
        return ctx.emit_input_grad("pad_tokens", [gy], start=node.attrs.index)

    cases = (Case(inputs=("3x4",)), Case("2", ("3x2",), batch=1))
    error_cases = (ErrorCase("3", ("3x4",), ("token 3 is past the end of 3x4 from x0",)),
                   not_a_sequence())

    def reference(self, a, xs, p, run):
        from .reference import tokens
        return tokens.token(xs[0], a.index)

    def onnx(self, a, xs, p, ctx):
        return ctx.op("Gather", [xs[0], ctx.const(a.index)], axis=1)

    def torch(self, a, xs, p, run):
        return xs[0][:, a.index]
