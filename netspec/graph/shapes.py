"""Shape inference and verification over a whole graph, using the ops' own rules.

Elaboration infers shapes as it builds; `infer_shapes` recomputes them after a
pass rewrites the graph, and `verify` checks a graph is well formed (every input
exists, the edges are the inputs', arity holds, stored shapes match the rules, no
cycles) so each pass can be followed by a check, as the pass pipeline requires.
"""

from __future__ import annotations

import networkx as nx

from ..errors import ShapeError, SpecError
from .graph import Graph
from ..ops import format_shape, get_op


def infer_shapes(graph: Graph) -> None:
    """Recompute every node's shape from its inputs, in topological order."""
    for node in graph.nodes():
        node.shape = _rule(graph, node)


def verify(graph: Graph) -> None:
    """Raise SpecError (internal inconsistencies included) if the graph is not well formed."""
    if not nx.is_directed_acyclic_graph(graph.g):
        raise SpecError(f"graph {graph.name} has a cycle")
    for node in graph.nodes():
        op = get_op(node.op)
        if op is None:
            raise SpecError(f"node {node.name}: unknown op {node.op}", node.pos)
        for src in node.inputs:
            if src not in graph:
                raise SpecError(f"node {node.name}: input {src} does not exist", node.pos)
        if set(graph.g.predecessors(node.name)) != set(node.inputs):
            raise SpecError(f"node {node.name}: its edges do not match its inputs (rewire a graph "
                            f"through the Graph's methods)", node.pos)
        n = len(node.inputs)
        if n < op.min_inputs or (op.max_inputs is not None and n > op.max_inputs):
            raise SpecError(f"node {node.name}: {node.op} cannot take {n} inputs", node.pos)
        expected = _rule(graph, node)
        if tuple(expected) != tuple(node.shape):
            raise SpecError(f"node {node.name}: stored shape {format_shape(node.shape)} but the "
                            f"rule gives {format_shape(expected)}", node.pos)
    for name in graph.outputs:
        if name not in graph:
            raise SpecError(f"output {name} does not exist")


def _rule(graph: Graph, node):
    op = get_op(node.op)
    ins = [graph.node(i).shape for i in node.inputs]
    try:
        return tuple(op.shape(node.attrs, ins))
    except ShapeError as e:
        text = e.message.format(**{f"in{i}": f"{format_shape(s)} from {src}"
                                   for i, (s, src) in enumerate(zip(ins, node.inputs))})
        raise SpecError(text, node.pos, hint=e.hint) from None
