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

from ..graph.graph import Graph
from ..ops.base import physical


def needs_gradient(graph: Graph, wrt_inputs: bool) -> dict[str, bool]:
    """node -> whether a gradient must flow through its output."""
    needs: dict[str, bool] = {}
    for node in graph.nodes():
        if node.op == "input":
            needs[node.name] = wrt_inputs
            continue
        own = node.trainable and any(p.trainable for p in node.params)
        needs[node.name] = own or any(needs[i] for i in node.inputs)
    return needs


def backward(graph: Graph, low, seeds: dict[str, str], wrt_inputs: bool = False) -> None:
    """Emit the backward pass into `low`, starting from `seeds` {tensor: its gradient}."""
    low.needs = needs_gradient(graph, wrt_inputs)
    flowing: dict[str, list[str]] = {t: [g] for t, g in seeds.items()}
    for node in reversed(list(graph.nodes())):
        parts = flowing.pop(node.name, None)
        if not parts or not low.needs[node.name]:
            continue
        gy = _sum(low, node.name, parts, physical(node.shape))
        if node.op == "input":
            low.program.input_grads[node.name] = gy
            continue
        grads = node.opdef.vjp(node, low.context(node), gy)
        for src, g in zip(node.inputs, grads):
            if g is not None and low.needs[src]:
                flowing.setdefault(src, []).append(g)


def _sum(low, name: str, parts: list[str], shape) -> str:
    """One gradient from several consumers' contributions (a fan-out's adjoint is a sum)."""
    if len(parts) == 1:
        return parts[0]
    total = low.declare(f"d:{name}", shape, "grad")
    low.emit("add", parts, [total], name)
    return total
