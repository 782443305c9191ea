"""Shape inference and verification over a whole graph, using the ops' own rules.

Elaboration infers shapes as it builds; `infer_shapes` recomputes them after a
pass rewrites the graph, and `verify` checks a graph is well formed (every input
exists, the edges are the inputs', arity holds, stored shapes match the rules, no
cycles) so each pass can be followed by a check, as the pass pipeline requires.
"""

from __future__ import annotations

import networkx as nx

from ..errors import ShapeError, SpecError
from .graph import Graph, part_index, producer
from ..ops import format_parts, format_shape, get_op


def infer_shapes(graph: Graph) -> None:
    """Recompute every node's shape (and parts) from its inputs, in topological order."""
    for node in graph.nodes():
        node.shape, node.parts = _rule(graph, node)


def verify(graph: Graph) -> None:
    """Raise SpecError (internal inconsistencies included) if the graph is not well formed."""
    if not nx.is_directed_acyclic_graph(graph.g):
        raise SpecError(f"graph {graph.name} has a cycle")
    for node in graph.nodes():
        op = get_op(node.op)
        if op is None:
            raise SpecError(f"node {node.name}: unknown op {node.op}", node.pos)
        for src in node.inputs:
            if not _exists(graph, src):
                raise SpecError(f"node {node.name}: input {src} does not exist", node.pos)
        if set(graph.g.predecessors(node.name)) != {producer(src) for src in node.inputs}:
            raise SpecError(f"node {node.name}: its edges do not match its inputs (rewire a graph "
                            f"through the Graph's methods)", node.pos)
        n = len(node.inputs)
        if n < op.min_inputs or (op.max_inputs is not None and n > op.max_inputs):
            raise SpecError(f"node {node.name}: {node.op} cannot take {n} inputs", node.pos)
        shape, parts = _rule(graph, node)
        if shape != tuple(node.shape):
            raise SpecError(f"node {node.name}: stored shape {format_shape(node.shape)} but the "
                            f"rule gives {format_shape(shape)}", node.pos)
        if parts != tuple(map(tuple, node.parts)):
            raise SpecError(f"node {node.name}: stored parts ({format_parts(node.parts)}) but "
                            f"the rule gives ({format_parts(parts)})", node.pos)
    for name in graph.outputs:
        if not _exists(graph, name):
            raise SpecError(f"output {name} does not exist")


def _exists(graph: Graph, value: str) -> bool:
    """Whether a value (a node, or a part 'split1:0' of a node of several outputs) exists."""
    k = part_index(value)
    if producer(value) not in graph:
        return False
    parts = graph.producer(value).parts
    return not parts if k is None else 0 <= k < len(parts)


def _rule(graph: Graph, node) -> tuple:
    """(shape, parts) by the op's rules."""
    op = get_op(node.op)
    ins = [graph.shape_of(i) for i in node.inputs]
    try:
        return tuple(op.shape(node.attrs, ins)), tuple(tuple(p) for p in op.parts(node.attrs, ins))
    except ShapeError as e:
        text = e.message.format(**{f"in{i}": f"{format_shape(s)} from {src}"
                                   for i, (s, src) in enumerate(zip(ins, node.inputs))})
        raise SpecError(text, node.pos, hint=e.hint) from None
