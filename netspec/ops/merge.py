"""Merges of several inputs: add, concat."""

from __future__ import annotations

from ..errors import ShapeError
from .base import Fusion, Op, OpKind, Traits, register
from .cases import Case, ErrorCase


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

    def torch(self, a, xs, p, run):
        y = xs[0]
        for t in xs[1:]:
            y = y + t
        return y


@register
class Concat(Op):
    name = "concat"
    kind = OpKind.MERGE
    doc = ("joins two or more inputs along the channels (feature maps of equal height and "
           "width) or the features (vectors)")
    min_inputs = 2
    max_inputs = None

    def shape(self, a, ins):
        first = ins[0]
        for k, s in enumerate(ins[1:], start=1):
            if len(s) != len(first):
                raise ShapeError(f"concat needs inputs of the same kind: {{in0}} vs {{in{k}}} "
                                 f"(a feature map and a flat vector)",
                                 hint="flatten (or global_avgpool) the feature map first")
            if s[1:] != first[1:]:
                raise ShapeError(f"concat joins channels, so height and width must match: "
                                 f"{{in0}} vs {{in{k}}}",
                                 hint="give the branches the same strides and pad=same")
        return (sum(s[0] for s in ins), *first[1:])

    def lower(self, node, ctx):
        ctx.emit("concat", list(node.inputs), [ctx.output()])

    def vjp(self, node, ctx, gy):
        outs = [ctx.input_grad_output(i) for i in range(len(node.inputs))]
        ctx.emit("split", [gy], outs)
        return ctx.needed(outs)

    cases = (Case(inputs=("2@3x3", "3@3x3", "1@3x3")), Case(inputs=("4", "2"), batch=1),
             Case(body="concat(x0, x1, x0) -> out", inputs=("2@2x2", "1@2x2")))  # x0's parts add
    error_cases = (
        ErrorCase(inputs=("2@3x3", "2@4x3"),
                  words=("concat joins channels, so height and width must match",)),
        ErrorCase(inputs=("2@3x3", "5"), words=("concat needs inputs of the same kind",)),
    )

    def reference(self, a, xs, p, run):
        from .reference import merge
        return merge.concat(xs)

    def torch(self, a, xs, p, run):
        import torch
        return torch.cat(xs, dim=1)
