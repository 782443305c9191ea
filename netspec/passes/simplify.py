"""Passes that remove what computes nothing new: identity layers, dropout at inference,
repeated computations (cse) and layers no output reads."""

from __future__ import annotations

from typing import Callable

import networkx as nx

from ..graph.graph import Graph, Node, producer
from ..ops import Purity
from .base import graph_pass, protected


def _bypass_each(graph: Graph, chosen: Callable[[Node], bool],
                 why: Callable[[Node], str] = lambda node: "") -> list[str]:
    """Bypass every chosen layer but the graph's outputs: 'removed NAME' and why, each."""
    changes = []
    for node in list(graph.nodes()):
        if chosen(node) and not protected(graph, node.name):
            graph.bypass(node.name)
            changes.append(f"removed {node.name}{why(node)}")
    return changes


@graph_pass("identity", "remove identity layers: their consumers read their input")
def remove_identities(graph: Graph, training: bool) -> list[str]:
    """Out: no identity layer but the graph's outputs."""
    return _bypass_each(graph, lambda node: node.op == "identity")


@graph_pass("dropout", "remove dropout and drop_path, which are the identity at inference",
            training_safe=False)
def remove_dropout(graph: Graph, training: bool) -> list[str]:
    """An inference graph only. Out: no layer that only acts while training (the ops whose
    traits say identity_at_inference) but the graph's outputs."""
    return _bypass_each(graph, lambda node: node.opdef.traits.identity_at_inference,
                        lambda node: f" (rate {node.attrs.rate:g})")


def _attrs_key(attrs) -> str:
    """Attributes as a comparable text (a fused group's are one typed record)."""
    return repr(sorted(attrs.items())) if isinstance(attrs, dict) else repr(attrs)


@graph_pass("cse", "merge layers that compute the same thing from the same inputs "
            "(common-subexpression elimination; layers with weights are never merged)")
def eliminate_common_subexpressions(graph: Graph, training: bool) -> list[str]:
    """Out: no two pure, weightless layers of one op, attributes and inputs (outputs stay)."""
    changes = []
    seen: dict[tuple, str] = {}
    for node in list(graph.nodes()):
        if node.params or node.opdef.traits.purity is not Purity.PURE:
            continue
        key = (node.op, tuple(node.inputs), _attrs_key(node.attrs))
        first = seen.get(key)
        if first is None or protected(graph, node.name):
            seen.setdefault(key, node.name)
            continue
        graph.replace_uses(node.name, first)
        graph.remove(node.name)
        changes.append(f"merged {node.name} into {first} (both {node.op} of {', '.join(node.inputs)})")
    return changes


@graph_pass("dead-nodes", "remove layers that no output depends on")
def remove_dead_nodes(graph: Graph, training: bool) -> list[str]:
    """Out: every layer but the inputs feeds an output."""
    changes = []
    live = {producer(v) for v in graph.outputs}
    for out in list(live):
        live |= nx.ancestors(graph.g, out)
    for node in list(graph.nodes()):
        if node.name not in live and node.name not in graph.inputs:
            graph.remove(node.name)
            changes.append(f"removed {node.name} ({node.op}): no output reads it")
    return changes
