"""The pass manager: the passes by name (every pass module registers its own), a `--passes`
selection read against DEFAULT, and `optimize`, which runs a selection on a copy of a graph
and verifies the shapes after each pass."""

from __future__ import annotations

import copy
from typing import Callable

from ..errors import did_you_mean
from ..graph.graph import Graph
from ..graph.shapes import verify
from ..ops import format_parts, format_shape
from . import DEFAULT
from . import fold, fuse, separable, simplify  # noqa: F401  (their passes fill PASSES)
from .base import PASSES, PassRecord


class PassError(ValueError):
    """A --passes selection that names no pass."""


def select(text: str | None) -> list[str]:
    """Passes from a selection: None or '' -> the default order; 'a,b' -> exactly those, in
    that order; '-c' entries only -> the default without them; 'all' -> the default."""
    if not text or text.strip() == "all":
        return list(DEFAULT)
    if text.strip() == "none":
        return []
    items = [t.strip() for t in text.split(",") if t.strip()]
    for item in items:
        name = item.lstrip("+-")
        if name not in PASSES:
            hint = did_you_mean(name, PASSES)
            raise PassError(f"unknown pass '{name}'" + (f" ({hint})" if hint else "")
                            + f"; passes: {', '.join(DEFAULT)}")
    removed = {i[1:] for i in items if i.startswith("-")}
    chosen = [i.lstrip("+") for i in items if not i.startswith("-")]
    if chosen:
        return [p for p in chosen if p not in removed]
    return [p for p in DEFAULT if p not in removed]


def optimize(graph: Graph, training: bool, passes=None,
             dump: Callable[[str, Graph], None] | None = None) -> tuple[Graph, list[PassRecord]]:
    """Run `passes` (names; default: DEFAULT) on a copy of graph. Training graphs skip the
    passes that are not training-safe. dump(pass name, graph) sees the graph after each."""
    g = copy_graph(graph)
    records = []
    for name in (DEFAULT if passes is None else passes):
        p = PASSES[name]
        record = PassRecord(p.name, p.purpose)
        if training and not p.training_safe:
            record.skipped = "changes what training computes"
        else:
            record.changes = p.run(g, training)
            verify(g)
        records.append(record)
        if dump is not None:
            dump(name, g)
    return g, records


def graph_text(graph: Graph) -> str:
    """One line per node: name = op(inputs) -> shape."""
    lines = [f"# {graph.name}: {len(graph)} nodes"]
    for n in graph.nodes():
        op = f"fused[{n.attrs.pattern}: {' + '.join(n.attrs.members)}]" if n.op == "fused" else n.op
        shape = f"({format_parts(n.parts)})" if n.parts else format_shape(n.shape)
        lines.append(f"{n.name} = {op}({', '.join(n.inputs)}) -> {shape}")
    return "\n".join(lines)


def copy_graph(graph: Graph) -> Graph:
    """An independent copy: passes rewrite its nodes freely."""
    return copy.deepcopy(graph)
