"""The IR: a networkx.DiGraph of op instances, with helpers and a JSON form.

A node is an op instance. Its name is its path (`residual3/main/conv1`), which
is unique, stable, and what summaries, diagrams, weight files and `--freeze`
use. Shapes exclude the batch dimension.

`Node.inputs` is the one record of a node's inputs and their order. The DiGraph's
edges (src -> node, no data) follow it for graph algorithms, and only the Graph's
methods change either: `add`, `remove`, `set_inputs`, `replace_uses`, `bypass`,
`replace`, `insert_before` (shapes.verify checks they agree after every pass).

A node has one output, read by its name, except a node of several (`split`): its
`parts` are their shapes, and they are read as `NAME:0`, `NAME:1`... (`part_ref`). An
input, an output of the graph or a block is such a reference, a *value*; `producer` gives
its node, `Graph.shape_of` its shape. The edges join nodes (one edge, whichever parts
flow), so graph algorithms see one node; passes, lowering and reports read values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator

import networkx as nx

from ..errors import Pos
from ..ops import OPS, Op, Param, Shape, format_parts, format_shape, get_op


@dataclass(frozen=True)
class FoldedBatchNorm:
    """An inference batch norm the fold-batchnorm pass folded into the layer before it: the
    program's prepare phase rescales the layer's weights and bias with its parameters, which
    keep the batch norm's names (`node.running_mean`...), so weight files still fit."""

    node: str                   # the batch norm's name
    epsilon: float
    params: tuple[Param, ...]
    trainable: bool
    channels: int


def part_ref(node: str, k: int) -> str:
    """The value of part k of a node of several outputs: 'split1:0'. Node names never hold
    ':' (they are paths of names), and the part's program tensor has this name too."""
    return f"{node}:{k}"


def producer(value: str) -> str:
    """The node that computes a value: 'split1' for 'split1:0', a node's own name for its
    one output."""
    return value.partition(":")[0]


def part_index(value: str) -> int | None:
    """k for part k of a node ('split1:1' -> 1); None for a node's one output."""
    node, colon, k = value.partition(":")
    return int(k) if colon else None


@dataclass
class Node:
    name: str
    op: str
    attrs: dict
    inputs: list[str]                  # values: node names, or parts 'split1:0' (part_ref)
    shape: Shape                       # its output's; a node of several: what they hold together
    params: list[Param] = field(default_factory=list)
    pos: Pos | None = None
    scope: tuple[str, ...] = ()        # enclosing block instances / named values
    label: str | None = None
    trainable: bool = True
    penalty: dict | None = None        # {"l1": .., "l2": ..} from l1= / l2= on its call (or block's)
    # set by passes (netspec/passes/) on the graphs they return, never by a spec:
    folded: FoldedBatchNorm | None = None       # fold-batchnorm: the batch norm after it
    # a part of a layer a pass split (the separable pass): its parameters' tensor names,
    # {own name: the layer's tensor name} ('weight' -> 'sep1.depthwise_weight')
    param_names: dict[str, str] | None = None
    # a node of several outputs (Op.parts): each one's shape, read as NAME:0, NAME:1...
    parts: tuple[Shape, ...] = ()

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
    output: str | None = None   # the value the block returns (its first, if several)

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
        self.detect: dict | None = None  # validated detect section (lang/detect_section.py)
        self.source_file: str | None = None

    # -- building and rewriting: Node.inputs is the truth, the edges follow it
    def add(self, node: Node) -> Node:
        if node.name in self.g:
            raise ValueError(f"duplicate node name {node.name}")
        self.g.add_node(node.name, node=node)
        self.g.add_edges_from((producer(src), node.name) for src in node.inputs)
        if node.op == "input":
            self.inputs.append(node.name)
        return node

    def remove(self, name: str) -> None:
        self.g.remove_node(name)

    def _rewire(self, name: str, old: Iterable[str], new: Iterable[str]) -> None:
        """The edges into `name` for inputs `new` instead of `old` (edges kept where both have them)."""
        old, new = {producer(v) for v in old}, {producer(v) for v in new}
        self.g.remove_edges_from((src, name) for src in old - new)
        self.g.add_edges_from((src, name) for src in new - old)

    def set_inputs(self, name: str, inputs: list[str]) -> None:
        """Node `name` reads `inputs` (in this order) from now on."""
        node = self.node(name)
        self._rewire(name, node.inputs, inputs)
        node.inputs = list(inputs)

    def replace_uses(self, old: str, new: str) -> None:
        """Every consumer of value `old` reads `new` instead, in the same slots; of a node of
        several outputs, each part's consumers read the same part of node `new`."""
        def moved(src: str) -> str:
            if src == old:
                return new
            k = part_index(src)
            return part_ref(new, k) if k is not None and producer(src) == old else src
        for consumer in self.consumers(old):
            self.set_inputs(consumer, [moved(src) for src in self.node(consumer).inputs])

    def bypass(self, name: str) -> None:
        """Remove a one-input node, its consumers reading its input instead."""
        self.replace_uses(name, self.node(name).inputs[0])
        self.remove(name)

    def replace(self, node: Node) -> None:
        """`node` takes the place of the node of its name: its schedule position and consumers,
        reading its own inputs."""
        self._rewire(node.name, self.node(node.name).inputs, node.inputs)
        self.g.nodes[node.name]["node"] = node

    def insert_before(self, new: dict[str, Node]) -> None:
        """Add nodes, each just before its anchor in the creation order (new: {anchor: node}),
        which breaks the schedule's ties: the program runs them where the spec would have.
        They read existing nodes. One rebuild of the DiGraph for all of them."""
        g = nx.DiGraph()
        for name, data in self.g.nodes(data=True):
            if name in new:
                g.add_node(new[name].name, node=new[name])
            g.add_node(name, **data)
        g.add_edges_from(self.g.edges)
        for node in new.values():
            g.add_edges_from((producer(src), node.name) for src in node.inputs)
        self.g = g

    # -- reading
    def __contains__(self, name: str) -> bool:
        return name in self.g

    def __len__(self) -> int:
        return self.g.number_of_nodes()

    def node(self, name: str) -> Node:
        return self.g.nodes[name]["node"]

    def producer(self, value: str) -> Node:
        """The node computing `value` (a node's name, or a part: 'split1:0')."""
        return self.node(producer(value))

    def shape_of(self, value: str) -> Shape:
        """The shape of a value: a node's output, or one part of a node of several."""
        node = self.producer(value)
        k = part_index(value)
        return node.shape if k is None else node.parts[k]

    def values(self, node: Node) -> list[str]:
        """The values a node computes: its name, or its parts' references."""
        return [part_ref(node.name, k) for k in range(len(node.parts))] if node.parts else [node.name]

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

    def consumers(self, value: str) -> list[str]:
        """The nodes reading `value`: a node's output (any of its parts, for a node of
        several), or one part ('split1:0')."""
        if part_index(value) is None:
            return list(self.g.successors(value))
        return [c for c in self.g.successors(producer(value)) if value in self.node(c).inputs]

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
                    "attrs": _attrs_json(n.attrs),
                    "inputs": list(n.inputs), "shape": list(n.shape),
                    "shape_text": format_shape(n.shape),
                    **({"parts": [list(p) for p in n.parts],
                        "parts_text": format_parts(n.parts)} if n.parts else {}),
                    "params": [{"name": p.name, "shape": list(p.shape), "init": p.init,
                                "trainable": p.trainable and n.trainable} for p in n.params],
                    **({"penalty": n.penalty} if n.penalty else {}),
                    **({"folded_batchnorm": _folded_json(n.folded)} if n.folded else {}),
                    **({"param_names": dict(n.param_names)} if n.param_names else {}),
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
            "detect": _jsonable(self.detect) if self.detect is not None else None,
        }


def _attrs_json(attrs) -> dict:
    """A node's attributes; the fused op's are its typed group (ops/fused.py FusedGroup)."""
    if not isinstance(attrs, dict):
        return attrs.to_json()
    return {k: _jsonable(v) for k, v in attrs.items()}


def _folded_json(fold: FoldedBatchNorm) -> dict:
    return {"node": fold.node, "epsilon": fold.epsilon, "channels": fold.channels,
            "trainable": fold.trainable, "params": [p.name for p in fold.params]}


def _jsonable(v):
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    return str(v)
