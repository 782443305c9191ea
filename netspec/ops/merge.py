"""Merges of several inputs: add, concat."""

from __future__ import annotations

from ..errors import ShapeError
from .base import Fusion, Op, OpKind, Traits, register


@register
class Add(Op):
    name = "add"
    traits = Traits(elementwise=True, fusion=Fusion.ADD, init_looks_through=True)
    kind = OpKind.MERGE
    doc = "elementwise sum of two or more inputs of equal shape (written a + b)"
    min_inputs = 2
    max_inputs = None

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
