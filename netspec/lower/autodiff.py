"""Reverse-mode autodiff: the backward pass built from each op's vjp rule.

Walking the forward graph in reverse schedule order, each node that lies on a
path from a trainable parameter (or a requested input) to the loss receives the
sum of the gradients flowing into its output and emits, through its op's `vjp`,
the instructions that compute its parameters' gradients and its inputs'. The
result is more instructions in the same Program, over named tensors: a dataflow
graph that later passes and the memory planner treat like the forward one.

`low` below is the training phase's Lowering (build.py, which calls
`backward` after the forward and the loss): this module uses its methods and the
NodeContexts it hands out, as the ops' own rules do, and imports nothing of it.
"""

from __future__ import annotations

from ..graph.graph import Graph, producer
from ..ops.base import physical


def needs_gradient(graph: Graph, wrt_inputs: bool) -> dict[str, bool]:
    """node -> whether a gradient must flow through its output."""
    needs: dict[str, bool] = {}
    for node in graph.nodes():
        if node.op == "input":
            needs[node.name] = wrt_inputs
            continue
        own = node.trainable and any(p.trainable for p in node.params)
        needs[node.name] = own or any(needs[producer(i)] for i in node.inputs)
    return needs


def backward(graph: Graph, low, seeds: dict[str, str], wrt_inputs: bool = False) -> None:
    """Emit the backward pass into `low`, starting from `seeds` {value: its gradient}."""
    low.needs = needs_gradient(graph, wrt_inputs)
    flowing: dict[str, list[str]] = {t: [g] for t, g in seeds.items()}
    for node in reversed(list(graph.nodes())):
        if not low.needs[node.name]:
            continue
        # the gradient of each value the node computes: its output, or each of its parts
        # (None for a part no gradient reaches)
        gys = [_sum(low, value, flowing.pop(value), physical(graph.shape_of(value)))
               if value in flowing else None for value in graph.values(node)]
        if all(g is None for g in gys):
            continue
        if node.op == "input":
            low.program.input_grads[node.name] = gys[0]
            continue
        grads = node.opdef.vjp(node, low.context(node), gys if node.parts else gys[0])
        for src, g in zip(node.inputs, grads):
            if g is not None and low.needs[producer(src)]:
                flowing.setdefault(src, []).append(g)


def _sum(low, value: str, parts: list[str], shape) -> str:
    """One gradient from several consumers' contributions (a fan-out's adjoint is a sum)."""
    if len(parts) == 1:
        return parts[0]
    total = low.declare(f"d:{value}", shape, "grad")
    low.emit("add", parts, [total], producer(value))
    return total
