"""`fused`: a group of layers the fusion pass (netspec/passes.py) merged into one node.

A group is an optional anchor (a conv, depthwise or separable conv, or dense layer, batch
norm possibly folded in) followed by elementwise steps: adds of other tensors, at most one
activation, then at most one non-overlapping pool, and after it at most one activation. The anchor lowers as itself; the steps
become one `fused_map` instruction, whose kernel each target generates from the steps
(runtime/cpu/fused.py), so the activation and the pool cost one pass over memory instead of
one each, and in training the backward `fused_map_bwd` also sums the anchor's bias gradient.

Which ops may be anchors and steps is each op's `traits.fusion` (ops/base.py Fusion).
The node keeps the last member's name (its consumers and the outputs read it) and the
anchor's parameters, under the anchor's own names, so weight files fit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..runtime.fused_steps import pattern, split
from .base import Op, OpKind, get_op, physical, register
from .cases import Case


@dataclass(frozen=True)
class FusedGroup:
    """The attributes of a fused node: the group the fuse pass made, typed."""

    pattern: str                   # the members' ops, e.g. 'conv+add+relu'
    anchor: Any                    # the anchor layer's Node (a copy), or None
    chain: tuple                   # (op, attrs, number of extra inputs) per step member, in order
    steps: tuple                   # the ISA's fused_map steps: ('add',), ('relu', alpha), ('maxpool', kh, kw)
    members: tuple[str, ...]       # the merged layers' names, in order

    def to_json(self) -> dict:
        return {"pattern": self.pattern, "anchor": self.anchor.name if self.anchor else None,
                "steps": [list(s) for s in self.steps], "members": list(self.members)}


@register
class Fused(Op):
    name = "fused"
    internal = True
    kind = OpKind.FUSED
    max_inputs = None
    doc = "layers merged by the fusion pass: an optional anchor layer, then elementwise steps"

    def shape(self, a: FusedGroup, ins):
        s, k = ins[0], 1
        if a.anchor is not None:
            s = a.anchor.opdef.shape(a.anchor.attrs, [s])
        for op, attrs, extra in a.chain:
            s = get_op(op).shape(attrs, [s, *ins[k:k + extra]])
            k += extra
        return tuple(s)

    def macs(self, a, ins, out):
        if a.anchor is None:
            return 0
        return a.anchor.opdef.macs(a.anchor.attrs, [ins[0]], a.anchor.shape)

    def describe(self, a):
        return a.pattern

    # -- lowering
    @staticmethod
    def _parts(a):
        """(activation before the pool, pool, activation after it): the ISA's names, or None."""
        _, act, pool, after = split(pattern(a.steps))
        return act, (pool[0] if pool else None), after

    def _pre_pool_shape(self, node, ctx):
        """Physical shape of the value entering the steps (and the pool)."""
        a = node.attrs
        return physical(a.anchor.shape if a.anchor is not None else ctx.in_shape(0))

    def _saves(self, node, ctx) -> bool:
        """Training keeps the pool's input when the backward reads it (the activation's
        derivative, or maxpool's choice of window element)."""
        act, pool, _ = self._parts(node.attrs)
        return ctx.training and pool is not None and (act is not None or pool == "maxpool")

    def _anchor_ctx(self, node, ctx):
        """The anchor's own context: it lowers (and differentiates) as itself, reading the
        group's first input and writing a tensor under its own name."""
        member = dataclasses.replace(node.attrs.anchor, inputs=[node.inputs[0]])
        return ctx.low.context(member)

    def lower(self, node, ctx):
        a = node.attrs
        x = ctx.x(0)
        if a.anchor is not None:
            actx = self._anchor_ctx(node, ctx)
            a.anchor.opdef.lower(actx.node, actx)
            x = actx.y
        outs = [ctx.output()]
        if self._saves(node, ctx):
            outs.append(ctx.tmp("pool_input", self._pre_pool_shape(node, ctx)))
        ctx.emit("fused_map", [x, *node.inputs[1:]], outs, steps=a.steps)

    def vjp(self, node, ctx, gy):
        a = node.attrs
        actx = self._anchor_ctx(node, ctx) if a.anchor is not None else None
        act, pool, after = self._parts(a)
        if act is None and pool is None:
            g = gy   # adds only: each input receives the output's gradient
        else:
            g = ctx.grad("steps", self._pre_pool_shape(node, ctx))
            outs = [g]
            if actx is not None and "bias" in {p.name for p in a.anchor.params} \
                    and actx.wants_param_grad("bias"):
                outs.append(actx.param_grad("bias"))
                actx.computed.add("bias")    # the anchor's vjp leaves it alone
            if pool is not None:
                saved = f"{node.name}:pool_input" if self._saves(node, ctx) else None
            else:
                saved = ctx.y
            ins = [gy, saved] + ([ctx.y] if after else [])
            ctx.emit("fused_map_bwd", ins, outs, steps=a.steps)
        grads = [g if ctx.needs_input_grad(i) else None for i in range(len(node.inputs))]
        if actx is not None:
            grads[0] = a.anchor.opdef.vjp(actx.node, actx, g)[0]
        return grads

    def onnx(self, a, xs, p, ctx):
        # the members one after the other, as the graph had them before the fuse pass
        x, shape, k = xs[0], ctx.ins[0], 1
        if a.anchor is not None:
            x, shape = ctx.member(a.anchor, [x], [shape]), a.anchor.shape
        for i, (op, attrs, extra) in enumerate(a.chain):
            step, ins = get_op(op), [shape, *ctx.ins[k:k + extra]]
            x = ctx.step(step, attrs, [x, *xs[k:k + extra]], ins, f"{op}{i + 1}")
            shape, k = step.shape(attrs, ins), k + extra
        return x

    # Chains the fuse pass merges (the suite runs an internal op's cases through the graph
    # passes): every kind of step, with and without an anchor, batch norms folded in (after a
    # layer without bias: a batch norm in training makes a bias's gradient 0)
    cases = (
        Case(body="x0 -> conv(3, 3, pad=same) -> relu -> maxpool(2) -> out", inputs=("2@6x6",)),
        Case(body="x0 -> conv(4, 3, pad=same, bias=false) -> batchnorm -> relu -> out",
             inputs=("2@5x5",)),
        Case(body="y = x0 -> conv(2, 1)\n    x0 + y -> relu -> out", inputs=("2@4x4",)),
        Case(body="x0 -> depthwise_conv(3, pad=same) -> relu6 -> avgpool(2) -> tanh -> out",
             inputs=("2@4x4",)),
        Case(body="x0 -> dense(5, bias=false) -> batchnorm -> leaky_relu(0.2) -> out", inputs=("6",)),
        Case(body="x0 -> dense(3, per_position=true) -> relu -> maxpool(2) -> out", inputs=("2@2x4",)),   # at each position
        Case(body="x0 -> elu -> maxpool(2) -> sigmoid -> out", inputs=("2@4x6",), batch=1),
        # activations whose derivative reads their input: fused for inference only
        Case(body="x0 -> conv(3, 3, pad=same, act=silu) -> maxpool(2) -> gelu(tanh) -> out",
             inputs=("2@4x4",)),
    )
