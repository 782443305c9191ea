"""The IR: a networkx.DiGraph of op instances, with helpers and a JSON form.

A node is an op instance. Its name is its path (`residual3/main/conv1`), which
is unique, stable, and what summaries, diagrams, weight files and `--freeze`
use. `Node.inputs` keeps the input order (slots); the DiGraph's edges mirror it
for graph algorithms. Shapes exclude the batch dimension.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import networkx as nx

from .errors import Pos
from .ops import OPS, Op, Param, Shape, format_shape, get_op


@dataclass
class Node:
    name: str
    op: str
    attrs: dict
    inputs: list[str]
    shape: Shape
    params: list[Param] = field(default_factory=list)
    pos: Pos | None = None
    scope: tuple[str, ...] = ()        # enclosing block instances / named values
    label: str | None = None
    trainable: bool = True
    penalty: dict | None = None        # {"l1": .., "l2": ..} from l1= / l2= on its call (or block's)

    @property
    def opdef(self) -> Op:
        return get_op(self.op)

    @property
    def param_count(self) -> int:
        return sum(p.size for p in self.params)


@dataclass
class BlockInstance:
    """One expansion of a block: where it was called and with what."""
    path: str               # 'residual3'
    block: str              # 'residual'
    args: dict              # bound parameters
    pos: Pos | None = None
    output: str | None = None   # node whose value the block returns (first, if several)

    def args_text(self, keywords: bool = True) -> str:
        """The arguments as written in a call: '(filters=128, stride=2)' or '(128, 2)'; '' if none."""
        if not self.args:
            return ""
        parts = (f"{k}={_spec_text(v)}" if keywords else _spec_text(v) for k, v in self.args.items())
        return "(" + ", ".join(parts) + ")"


def _spec_text(v) -> str:
    """A value the way a spec writes it (true, (3, 3), same)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, tuple):
        return "(" + ", ".join(_spec_text(x) for x in v) + ")"
    return "none" if v is None else str(v)


class Graph:
    def __init__(self, name: str):
        self.name = name
        self.g = nx.DiGraph()
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.blocks: dict[str, BlockInstance] = {}
        self.params: dict = {}          # network parameters as bound
        self.train: dict | None = None  # validated train section
        self.source_file: str | None = None

    # -- building
    def add(self, node: Node) -> Node:
        if node.name in self.g:
            raise ValueError(f"duplicate node name {node.name}")
        self.g.add_node(node.name, node=node)
        for slot, src in enumerate(node.inputs):
            if self.g.has_edge(src, node.name):
                self.g.edges[src, node.name]["slots"].append(slot)
            else:
                self.g.add_edge(src, node.name, slots=[slot])
        if node.op == "input":
            self.inputs.append(node.name)
        return node

    def remove(self, name: str) -> None:
        self.g.remove_node(name)

    # -- reading
    def __contains__(self, name: str) -> bool:
        return name in self.g

    def __len__(self) -> int:
        return self.g.number_of_nodes()

    def node(self, name: str) -> Node:
        return self.g.nodes[name]["node"]

    def nodes(self) -> Iterator[Node]:
        """Nodes in a deterministic topological order (creation order breaks ties)."""
        order = {n: i for i, n in enumerate(self.g.nodes)}
        for name in nx.lexicographical_topological_sort(self.g, key=order.__getitem__):
            yield self.node(name)

    def enclosing_blocks(self, name: str) -> tuple[str, ...]:
        """Paths of the block instances around node `name`, outermost first.

        `--depth N` (summary and render alike) opens N of these levels and folds
        everything deeper into the block at level N.
        """
        parts = name.split("/")
        paths = ("/".join(parts[: i + 1]) for i in range(len(parts) - 1))
        return tuple(p for p in paths if p in self.blocks)

    def consumers(self, name: str) -> list[str]:
        return list(self.g.successors(name))

    def total_params(self) -> tuple[int, int]:
        """(trainable, non-trainable) parameter counts."""
        t = n = 0
        for node in self.nodes():
            for p in node.params:
                if p.trainable and node.trainable:
                    t += p.size
                else:
                    n += p.size
        return t, n

    # -- serialising
    def to_json(self) -> dict:
        return {
            "network": self.name,
            "parameters": {k: _jsonable(v) for k, v in self.params.items()},
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "nodes": [
                {
                    "name": n.name, "op": n.op,
                    "attrs": {k: _jsonable(v) for k, v in n.attrs.items()},
                    "inputs": list(n.inputs), "shape": list(n.shape),
                    "shape_text": format_shape(n.shape),
                    "params": [{"name": p.name, "shape": list(p.shape), "init": p.init,
                                "trainable": p.trainable and n.trainable} for p in n.params],
                    **({"penalty": n.penalty} if n.penalty else {}),
                    "scope": list(n.scope), "label": n.label,
                    "pos": str(n.pos) if n.pos else None,
                }
                for n in self.nodes()
            ],
            "blocks": [
                {"path": b.path, "block": b.block,
                 "args": {k: _jsonable(v) for k, v in b.args.items()},
                 "pos": str(b.pos) if b.pos else None, "output": b.output}
                for b in self.blocks.values()
            ],
            "train": _jsonable(self.train) if self.train is not None else None,
        }


def _jsonable(v):
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    return str(v)
