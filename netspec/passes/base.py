"""What a graph pass is (GraphPass), what it leaves behind (PassRecord), and the registry
the pass modules fill with `@graph_pass`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..graph.graph import Graph, producer


@dataclass(frozen=True)
class GraphPass:
    name: str
    purpose: str
    run: Callable[[Graph, bool], list[str]]   # (graph, training) -> its changes; rewrites graph
    training_safe: bool = True


@dataclass
class PassRecord:
    name: str
    purpose: str
    changes: list[str] = field(default_factory=list)
    skipped: str | None = None   # why the pass did not run on this graph

    def text(self) -> str:
        head = f"{self.name}: {self.purpose}"
        if self.skipped:
            return f"{head}\n    skipped: {self.skipped}"
        if not self.changes:
            return f"{head}\n    no change"
        return head + "".join(f"\n    {c}" for c in self.changes)


# name -> pass, filled as the pass modules are imported (manager.py imports them all)
PASSES: dict[str, GraphPass] = {}


def graph_pass(name: str, purpose: str, training_safe: bool = True):
    """Register the decorated `(graph, training) -> changes` function as pass `name`."""
    def register(fn):
        PASSES[name] = GraphPass(name, purpose, fn, training_safe)
        return fn
    return register


def protected(graph: Graph, name: str) -> bool:
    """Whether node `name` is an input of the graph or computes an output (one of its parts,
    for a node of several), which no pass removes."""
    return name in graph.inputs or any(producer(v) == name for v in graph.outputs)
