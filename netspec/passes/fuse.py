"""Fusion: a conv or dense layer and the adds, activation, non-overlapping pool and activation
after it become one `fused` node (ops/fused.py), one generated kernel per pattern. In training,
an activation whose derivative reads its input (silu, gelu...: the ISA's grad_reads) is no
step: the group's backward kernel differentiates its activations from their outputs."""

from __future__ import annotations

import copy

from ..graph.graph import Graph, Node
from ..ops import Fusion
from ..ops.base import explicit_padding
from ..ops.fused import FusedGroup
from .base import graph_pass


def _sole_consumer(graph: Graph, name: str):
    """The one node reading `name` (once), if `name` is not an output; else None."""
    consumers = graph.consumers(name)
    if len(consumers) != 1 or name in graph.outputs:
        return None
    node = graph.node(consumers[0])
    return node if node.inputs.count(name) == 1 else None


def _pool_step(graph: Graph, node) -> tuple | None:
    """(the pool's op, kh, kw) if the pool's windows tile its input exactly: stride = kernel,
    no padding or dilation, and H, W multiples of the kernel (so ceil mode adds no window)."""
    a = node.attrs
    _, h, w = graph.shape_of(node.inputs[0])
    (kh, kw), stride = a.kernel, a.stride
    if a.get("dilation", (1, 1)) != (1, 1):
        return None
    pad = explicit_padding(a.pad, (h, w), a.kernel, a.stride)
    if stride != (kh, kw) or any(pad) or h % kh or w % kw:
        return None
    return (node.op, kh, kw)


def _act_step(node, training: bool) -> tuple | None:
    """(the ISA's activation, its alpha) for an activation node; None where it may not be a
    step: in training, an activation whose derivative reads its input, which a group does not
    keep (fused_map_bwd reads the activation's output)."""
    act = node.opdef.isa_activation(node.attrs)
    if training and act.grad_reads != "y":
        return None
    return (act.name, float(node.attrs.get("alpha", 0.0)))


def _add_steps(node) -> tuple:
    """One step per input an add adds to the value the group carries (its first input)."""
    return tuple((node.op,) for _ in node.inputs[1:])


def _fusion(node: Node) -> Fusion:
    return node.opdef.traits.fusion


def _steps_after(graph: Graph, first, phase: int, training: bool) -> list[tuple]:
    """(node, its steps) for the nodes that may follow `first` in a group, in order: adds
    (phase 0), one activation (phase 0 -> 1), one pool (-> 2), one activation after the
    pool (-> 3, the end; LeNet-5's subsampling layers are followed by a tanh)."""
    members, cur = [], first
    while phase < 3:
        nxt = _sole_consumer(graph, cur.name)
        if nxt is None:
            break
        role = _fusion(nxt)
        if role is Fusion.ADD and phase == 0:
            steps = _add_steps(nxt)
        elif role is Fusion.ACTIVATION and phase != 1 and (act := _act_step(nxt, training)):
            steps, phase = (act,), (1 if phase == 0 else 3)
        elif role is Fusion.POOL and phase < 2 and (pool := _pool_step(graph, nxt)):
            steps, phase = (pool,), 2
        else:
            break
        members.append((nxt, steps))
        cur = nxt
    return members


@graph_pass("fuse", "merge a conv or dense layer with the adds, activation, non-overlapping "
            "pool and activation after it, and chains of those (one generated kernel each)")
def fuse(graph: Graph, training: bool) -> list[str]:
    """Out: each group (an optional anchor, Fusion.ANCHOR, then the steps after it, each read
    only by the next) is one `fused` node under its last member's name, reading the group's
    inputs, its attributes a FusedGroup. Last in the default order."""
    changes = []
    for node in list(graph.nodes()):
        if node.name not in graph or node.name in graph.inputs:
            continue
        role = _fusion(node)
        if role is Fusion.ANCHOR:
            anchor, members = node, _steps_after(graph, node, 0, training)
        elif role is Fusion.ADD:   # its first input is the value the steps map
            anchor, members = None, [(node, _add_steps(node))]
            members += _steps_after(graph, node, 0, training)
        elif role is Fusion.ACTIVATION and (act := _act_step(node, training)):
            anchor, members = None, [(node, (act,))]
            members += _steps_after(graph, node, 1, training)
        else:
            continue
        if len(members) + (anchor is not None) < 2:
            continue
        last = members[-1][0]
        x = anchor.inputs[0] if anchor is not None else node.inputs[0]
        inputs, chain, prev = [x], [], anchor.name if anchor is not None else None
        for m, step in members:
            extra = [i for i in m.inputs if i != prev] if prev is not None else m.inputs[1:]
            inputs += extra
            chain.append((m.op, m.attrs, len(extra)))
            prev = m.name
        steps = tuple(s for _, st in members for s in st)
        names = ([anchor.name] if anchor is not None else []) + [m.name for m, _ in members]
        pattern = "+".join(([anchor.op] if anchor is not None else []) + [m.op for m, _ in members])
        group = FusedGroup(pattern=pattern, anchor=copy.deepcopy(anchor), chain=tuple(chain),
                           steps=steps, members=tuple(names))
        for name in names[:-1]:
            graph.remove(name)
        own = anchor if anchor is not None else last   # whose weights, trainability, penalty
        graph.replace(Node(
            name=last.name, op="fused", attrs=group, inputs=inputs, shape=last.shape,
            params=list(anchor.params) if anchor is not None else [], pos=last.pos,
            scope=last.scope, label=last.label, trainable=own.trainable, penalty=own.penalty))
        changes.append(f"fused {' + '.join(names)} ({pattern})")
    return changes
