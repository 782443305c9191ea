"""Merges of several inputs: add, multiply, concat; and concat's inverse, split, the op of
several outputs."""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from .base import (Attr, Fusion, Op, OpKind, Traits, batch_channel_axis, channels, count_or_widths,
                   is_sequence, physical, register)
from .cases import Case, ErrorCase
from .reference.common import channel_axis

KINDS = {1: "a flat vector", 2: "a sequence", 3: "a feature map"}    # by rank


@register
class Add(Op):
    name = "add"
    traits = Traits(elementwise=True, fusion=Fusion.ADD, init_looks_through=True)
    kind = OpKind.MERGE
    doc = "elementwise sum of two or more inputs of equal shape (written a + b)"
    min_inputs = 2
    max_inputs = None
    infix = "+"

    def shape(self, a, ins):
        for k, s in enumerate(ins[1:], start=1):
            if s != ins[0]:
                raise ShapeError(f"add needs equal shapes: {{in0}} vs {{in{k}}}",
                                 hint="project the other branch with a 1x1 conv "
                                      "(with the same stride, and filters = the channels wanted)")
        return ins[0]

    def lower(self, node, ctx):
        ctx.emit("add", list(node.inputs), [ctx.output()])

    def vjp(self, node, ctx, gy):
        return [gy] * len(node.inputs)

    cases = (Case(inputs=("3@4x4", "3@4x4")), Case(inputs=("5", "5", "5"), batch=1),
             Case(body="x0 + x0 -> out", inputs=("2@2x3",)))      # one input twice: its gradient sums
    error_cases = (
        ErrorCase(inputs=("3@4x4", "2@4x4"),
                  words=("add needs equal shapes: 3@4x4 from x0 vs 2@4x4 from x1",)),
        ErrorCase(body="x0 + x1 -> out", inputs=("4", "5"), words=("add needs equal shapes",), at="+"),
    )

    def reference(self, a, xs, p, run):
        from .reference import merge
        return merge.add(xs)

    def onnx(self, a, xs, p, ctx):
        return ctx.op("Add" if len(xs) == 2 else "Sum", xs)

    def torch(self, a, xs, p, run):
        y = xs[0]
        for t in xs[1:]:
            y = y + t
        return y


@register
class Multiply(Op):
    """a * b: equal shapes elementwise, or a gate of one value per channel (C@1x1 or C, as a
    squeeze-and-excitation block makes it) scaling every position of a feature map C@HxW."""

    name = "multiply"
    kind = OpKind.MERGE
    doc = ("elementwise product of two inputs of equal shape, or of a feature map C@HxW and a "
           "gate C@1x1 (or C) scaling each channel (written a * b)")
    min_inputs = 2
    max_inputs = 2
    infix = "*"

    @staticmethod
    def gated(ins) -> int | None:
        """The index of the feature map a gate scales, or None for equal shapes."""
        if ins[0] == ins[1]:
            return None
        for m in (0, 1):
            gate = ins[1 - m]
            if len(ins[m]) == 3 and gate in ((ins[m][0], 1, 1), (ins[m][0],)):
                return m
        return -1

    def shape(self, a, ins):
        m = self.gated(ins)
        if m == -1:
            maps = [s for s in ins if len(s) == 3]
            hint = ("a gate scaling a feature map has its channels: C@1x1 or C "
                    "(x * (x -> global_avgpool -> dense(x.channels) -> sigmoid))")
            if maps and any(s[0] != maps[0][0] for s in ins):
                hint = "the gate and the map need the same channels; " + hint
            raise ShapeError("multiply needs equal shapes, or a feature map and a gate of its "
                             "channels (C@1x1 or C): {in0} vs {in1}", hint=hint)
        return ins[0] if m is None else ins[m]

    def lower(self, node, ctx):
        m = self.gated([ctx.in_shape(0), ctx.in_shape(1)])
        if m is None:
            ctx.emit("mul", list(node.inputs), [ctx.output()])
        else:
            ctx.emit("mul_channels", [ctx.x(m), ctx.x(1 - m)], [ctx.output()])

    def vjp(self, node, ctx, gy):
        """d(a*b) = gy*b, gy*a; for a gate g over a map x: gx = gy*g, gg = sum over the
        positions of gy*x."""
        m = self.gated([ctx.in_shape(0), ctx.in_shape(1)])
        grads: list[str | None] = [None, None]
        for i in (0, 1):
            if not ctx.needs_input_grad(i):
                continue
            grads[i] = ctx.input_grad(i)
            other = ctx.x(1 - i)
            if m is None:
                ctx.emit("mul", [gy, other], [grads[i]])
            elif i == m:
                ctx.emit("mul_channels", [gy, other], [grads[i]])
            else:
                ctx.emit("mul_channels_bwd_gate", [gy, other], [grads[i]])
        return grads

    cases = (Case(inputs=("3@4x4", "3@4x4")), Case(inputs=("5", "5"), batch=1),
             Case(inputs=("3@4x5", "3@1x1")), Case(inputs=("3", "3@2x3"), batch=3),
             Case(body="x0 * x0 -> out", inputs=("2@2x3",)),        # one input twice: 2 x gy
             Case(body="x0 * x1 * x0 -> out", inputs=("2@3x3", "2")),   # nested, left to right
             Case(body="g = x0 -> global_avgpool -> dense(4) -> sigmoid\n    x0 * g -> out",
                  inputs=("4@3x3",)))                               # squeeze-and-excitation
    error_cases = (
        ErrorCase(inputs=("3@4x4", "2@4x4"),
                  words=("multiply needs equal shapes, or a feature map and a gate",
                         "3@4x4 from x0 vs 2@4x4 from x1")),
        ErrorCase(inputs=("3@4x4", "3@2x2"), words=("a gate of its channels (C@1x1 or C)",)),
        ErrorCase(inputs=("3@4x4", "4"), words=("4 from x1",)),
        ErrorCase(inputs=("4", "5"), words=("multiply needs equal shapes",)),
        ErrorCase(body="x0 * x1 -> out", inputs=("3@4x4", "3@1x2"),
                  words=("multiply needs equal shapes",), at="*"),
        ErrorCase(body="x0 * 2.5 -> out", inputs=("3@4x4",),
                  words=("cannot multiply a tensor and 2.5",), at="2.5"),
        ErrorCase(inputs=("3@4x4", "3@4x4", "3@4x4"), words=("multiply",)),
    )

    def reference(self, a, xs, p, run):
        """float64, in the spec's layout (N, C, H, W): a gate broadcast as (N, C, 1, 1)."""
        x, y = (np.asarray(v, np.float64) for v in xs)
        if x.ndim != y.ndim:
            x, y = (v.reshape(*v.shape, 1, 1) if v.ndim == 2 else v for v in (x, y))
        return x * y

    def onnx(self, a, xs, p, ctx):
        # a vector (N, C) scales a map's channels (N, C, H, W): it broadcasts as (N, C, 1, 1)
        xs = [ctx.op("Unsqueeze", [x, ctx.const([2, 3])])
              if len(s) == 1 and len(ctx.shape) == 3 else x for x, s in zip(xs, ctx.ins)]
        return ctx.op("Mul", xs)

    def torch(self, a, xs, p, run):
        x, y = xs
        if x.dim() != y.dim():
            x, y = (v[:, :, None, None] if v.dim() == 2 else v for v in (x, y))
        return x * y


@register
class Concat(Op):
    name = "concat"
    kind = OpKind.MERGE
    doc = ("joins two or more inputs along the channels (feature maps of equal height and "
           "width) or the features (vectors, sequences of equal length)")
    min_inputs = 2
    max_inputs = None

    def shape(self, a, ins):
        first = ins[0]
        for k, s in enumerate(ins[1:], start=1):
            if len(s) != len(first):
                raise ShapeError(f"concat needs inputs of the same kind: {{in0}} vs {{in{k}}} "
                                 f"({KINDS.get(len(first))} and {KINDS.get(len(s))})",
                                 hint="flatten (or global_avgpool) the feature map first")
            if is_sequence(s) and s[0] != first[0]:
                raise ShapeError(f"concat joins the features of each token, so the token "
                                 f"counts must match: {{in0}} vs {{in{k}}}")
            if len(s) == 3 and s[1:] != first[1:]:
                raise ShapeError(f"concat joins channels, so height and width must match: "
                                 f"{{in0}} vs {{in{k}}}",
                                 hint="give the branches the same strides and pad=same")
        if is_sequence(first):
            return (first[0], sum(s[1] for s in ins))
        return (sum(s[0] for s in ins), *first[1:])

    def lower(self, node, ctx):
        ctx.emit("concat", list(node.inputs), [ctx.output()])

    def vjp(self, node, ctx, gy):
        outs = [ctx.input_grad_output(i) for i in range(len(node.inputs))]
        ctx.emit("split", [gy], outs)
        return ctx.needed(outs)

    cases = (Case(inputs=("2@3x3", "3@3x3", "1@3x3")), Case(inputs=("4", "2"), batch=1),
             Case(inputs=("3x2", "3x1")),
             Case(body="concat(x0, x1, x0) -> out", inputs=("2@2x2", "1@2x2")))  # x0's parts add
    error_cases = (
        ErrorCase(inputs=("2@3x3", "2@4x3"),
                  words=("concat joins channels, so height and width must match",)),
        ErrorCase(inputs=("2@3x3", "5"), words=("concat needs inputs of the same kind",)),
        ErrorCase(inputs=("3x2", "4x2"), words=("the token counts must match", "3x2 from x0")),
    )

    def reference(self, a, xs, p, run):
        from .reference import merge
        return merge.concat(xs, channel_axis(xs[0]))

    def onnx(self, a, xs, p, ctx):
        return ctx.op("Concat", xs, axis=batch_channel_axis(ctx.ins[0]))

    def torch(self, a, xs, p, run):
        import torch
        return torch.cat(xs, dim=channel_axis(xs[0]))


@register
class Split(Op):
    """The channels of a feature map (the features of a vector or of each token) cut into
    parts, in order:
    concat's inverse, and the op of several outputs. Its node's parts are read as NODE:0,
    NODE:1 ... (graph.py); the spec gets them as a tuple (`a, b = split(x, 2)`)."""

    name = "split"
    kind = OpKind.SPLIT
    doc = ("cuts the channels of a feature map (the features of a vector or of each token) into "
           "parts, in order: `parts` equal ones, or parts of the given widths; gives them as a "
           "tuple")
    attrs = (Attr("parts", count_or_widths, doc="a count of equal parts, or the parts' widths"),)

    @staticmethod
    def widths(a, x) -> tuple[int, ...]:
        """The parts' widths along the channels of input shape x, or a ShapeError."""
        c, what = channels(x), "channels" if len(x) == 3 else "features"
        n = a.parts
        if isinstance(n, int):
            if c % n:
                near = tuple(c // n + (k < c % n) for k in range(n))   # nearly equal widths
                hint = (f"{n} parts need at least {n} {what}" if c < n else
                        f"a count that divides {c}, or the parts' widths adding up to {c}"
                        + (f": split({_tuple_text(near)})" if n <= 16 else ""))
                raise ShapeError(f"split cannot cut {{in0}} into {n} equal parts: its {c} "
                                 f"{what} are not a multiple of {n}", hint=hint)
            return (c // n,) * n
        if sum(a.parts) != c:
            raise ShapeError(f"split's widths {_tuple_text(a.parts)} add up to {sum(a.parts)}, "
                             f"but {{in0}} has {c} {what}",
                             hint=f"the widths must add up to its {c} {what}")
        return a.parts

    def shape(self, a, ins):
        self.widths(a, ins[0])
        return ins[0]

    def parts(self, a, ins):
        x = ins[0]
        if is_sequence(x):
            return tuple((x[0], w) for w in self.widths(a, x))
        return tuple((w, *x[1:]) for w in self.widths(a, x))

    def describe(self, a):
        return f"{a.parts} parts" if isinstance(a.parts, int) else _tuple_text(a.parts)

    def lower(self, node, ctx):
        ctx.emit("split", [ctx.x()], [ctx.output(k) for k in range(len(node.parts))])

    def vjp(self, node, ctx, gy):
        """concat of the parts' gradients; zeros for a part no gradient reaches (one that is
        discarded, or reaches no loss)."""
        parts = []
        for k, (g, shape) in enumerate(zip(gy, node.parts)):
            if g is None:
                g = ctx.grad(f"zeros{k}", physical(shape))
                ctx.emit("zeros", [], [g])
            parts.append(g)
        dx = ctx.input_grad(0)
        ctx.emit("concat", parts, [dx])
        return [dx]

    cases = (Case(body="x0 -> split(2) -> concat -> out", inputs=("4@2x3",)),
             Case(body="a, b = split(x0, (1, 3))\n    concat(b, a) -> out", inputs=("4@2x2",)),
             Case(body="a, b, c = x0 -> split(3)\n    a + b * c -> out", inputs=("6",), batch=1),
             Case(body="q, k = split(x0, 2)\n    concat(k, q) -> out", inputs=("3x4",)),  # tokens
             # a discarded part, which no gradient reaches: zeros in the backward pass
             Case(body="a, _ = split(x0, (3, 2))\n    a -> out", inputs=("5",)))
    error_cases = (
        ErrorCase("3", ("4@2x2",), ("split cannot cut 4@2x2 from x0 into 3 equal parts",
                                    "its 4 channels are not a multiple of 3")),
        ErrorCase("(2, 3)", ("6",), ("split's widths (2, 3) add up to 5, but 6 from x0 has 6 "
                                     "features",)),
        ErrorCase("1", ("4",), ("bad value for 'parts'", "got 1")),
        ErrorCase("(4,)", ("4",), ("bad value for 'parts'", "got (4)")),
        ErrorCase("(0, 4)", ("4",), ("bad value for 'parts'",)),
        ErrorCase(body="a, b = split(x0, 3)\n    concat(a, b) -> out", inputs=("6",),
                  words=("3 values", "2 names"), at="a, b"),
        ErrorCase(body="a, b = x0 -> relu\n    concat(a, b) -> out", inputs=("6",),
                  words=("cannot unpack a tensor 6",), at="a, b"),
        ErrorCase(body="x0 -> split(2) -> relu -> out", inputs=("6",),
                  words=("relu expects 1 input, got 2",), at="relu"),
    )

    def reference(self, a, xs, p, run):
        from .reference import merge
        return tuple(merge.split(xs[0], self.widths(a, xs[0].shape[1:]), channel_axis(xs[0])))

    def onnx(self, a, xs, p, ctx):
        widths = self.widths(a, ctx.ins[0])
        return tuple(ctx.op("Split", [xs[0], ctx.const(list(widths))], outputs=len(widths),
                            axis=batch_channel_axis(ctx.ins[0])))

    def torch(self, a, xs, p, run):
        import torch
        return torch.split(xs[0], list(self.widths(a, tuple(xs[0].shape[1:]))), dim=channel_axis(xs[0]))


def _tuple_text(t) -> str:
    return "(" + ", ".join(map(str, t)) + ")"
