"""Graph passes: small functions Graph -> Graph, each with a name, a purpose and a record
of what it changed; `optimize` runs a selection of them on a copy of the graph.

A pass function `(graph, training) -> list[str]` rewrites the graph it is given (a copy)
through the Graph's methods, which keep Node.inputs and the edges as one, and returns
one line per change (`optimize` makes them a PassRecord). Its docstring says what it
requires of the graph and what holds of the graph it leaves. What a pass needs to know of
an op it reads from the op's declared traits (ops/base.py Traits); what it learns about
a node it writes into the node's typed fields (Node.folded, Node.param_names) or, for a
fused group, into the fused op's typed attributes (ops/fused.py FusedGroup).

Two graphs come out of one spec: the inference graph (every pass) and the training graph
(training-safe passes only: removing dropout would change what training computes). The
checked graph itself is never modified; summaries and diagrams describe the spec as
written. Every pass keeps parameter names (node name + parameter name) as they were, so
weight files fit the optimised program unchanged (a node a pass splits into parts names
its parts' tensors in Node.param_names), and never removes an input or an output.
Shapes are verified after every pass.

    graph, records = optimize(graph, training=False)             # the default passes
    graph, records = optimize(graph, False, select("-cse"))      # all but one
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import networkx as nx

from .errors import did_you_mean
from .graph import FoldedBatchNorm, Graph, Node
from .ops import OPS, Fusion, Param, Purity, format_shape
from .ops.base import explicit_padding
from .ops.fused import FusedGroup
from .shapes import verify


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


PASSES: dict[str, GraphPass] = {}


def graph_pass(name: str, purpose: str, training_safe: bool = True):
    def register(fn):
        PASSES[name] = GraphPass(name, purpose, fn, training_safe)
        return fn
    return register


def copy_graph(graph: Graph) -> Graph:
    """An independent copy: passes rewrite its nodes freely."""
    return copy.deepcopy(graph)


def _protected(graph: Graph, name: str) -> bool:
    return name in graph.outputs or name in graph.inputs


# ---------------------------------------------------------------- the passes

def _bypass_each(graph: Graph, op: str, why: Callable[[Node], str] = lambda node: "") -> list[str]:
    """Bypass every layer of `op` but the graph's outputs: 'removed NAME' and why, each."""
    changes = []
    for node in list(graph.nodes()):
        if node.op == op and not _protected(graph, node.name):
            graph.bypass(node.name)
            changes.append(f"removed {node.name}{why(node)}")
    return changes


@graph_pass("identity", "remove identity layers: their consumers read their input")
def remove_identities(graph: Graph, training: bool) -> list[str]:
    """Out: no identity layer but the graph's outputs."""
    return _bypass_each(graph, "identity")


@graph_pass("dropout", "remove dropout, which is the identity at inference", training_safe=False)
def remove_dropout(graph: Graph, training: bool) -> list[str]:
    """An inference graph only. Out: no dropout layer but the graph's outputs."""
    return _bypass_each(graph, "dropout", lambda node: f" (rate {node.attrs.rate:g})")


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
        if first is None or _protected(graph, node.name):
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
    live = set(graph.outputs)
    for out in graph.outputs:
        live |= nx.ancestors(graph.g, out)
    for node in list(graph.nodes()):
        if node.name not in live and node.name not in graph.inputs:
            graph.remove(node.name)
            changes.append(f"removed {node.name} ({node.op}): no output reads it")
    return changes


@graph_pass("fold-batchnorm", "fold each inference batch norm into the conv or dense layer "
            "before it (its weights and bias rescaled once per weight change)", training_safe=False)
def fold_batchnorm(graph: Graph, training: bool) -> list[str]:
    """An inference graph only. Out: a batch norm that is the sole reader of a layer whose op
    folds batch norms (Traits.folds_batchnorm) is gone, recorded in that layer's `folded`
    (lowered as its rescaled weights: NodeContext.folded)."""
    changes = []
    for bn in list(graph.nodes()):
        if bn.op != "batchnorm" or _protected(graph, bn.name):
            continue
        layer = graph.node(bn.inputs[0])
        if (not layer.opdef.traits.folds_batchnorm or layer.folded or _protected(graph, layer.name)
                or graph.consumers(layer.name) != [bn.name]):
            continue
        layer.folded = FoldedBatchNorm(bn.name, bn.attrs.epsilon, tuple(bn.params), bn.trainable,
                                       bn.shape[0])
        graph.replace_uses(bn.name, layer.name)
        graph.remove(bn.name)
        changes.append(f"folded {bn.name} into {layer.name}")
    return changes


def _fresh_name(graph: Graph, base: str, taken=()) -> str:
    """base, or base2, base3 ... whichever no node has (and is not in taken)."""
    name, i = base, 1
    while name in graph or name in taken:
        i += 1
        name = f"{base}{i}"
    return name


def _part_of(graph: Graph, whole: Node, name: str, op: str, attrs, inputs: list[str],
             names: dict[str, str], folded: FoldedBatchNorm | None = None) -> Node:
    """A node computing part of node `whole` with `whole`'s parameters: names maps the part's
    parameter names to the whole's (kept as the tensors' names in Node.param_names, as are
    their initialisers and trainability); trainable, penalty, position, scope and label are
    the whole's."""
    op_def = OPS[op]
    ins = [graph.node(i).shape for i in inputs]
    own = {p.name: p for p in whole.params}
    params = []
    for p in op_def.params(attrs, ins):
        orig = own[names[p.name]]
        if p.shape != orig.shape:
            raise RuntimeError(f"{whole.name}: the {op} part's {p.name} {p.shape} is not "
                               f"{orig.name} {orig.shape}")
        params.append(Param(p.name, p.shape, orig.init, orig.trainable))
    return Node(name=name, op=op, attrs=attrs, inputs=list(inputs), shape=tuple(op_def.shape(attrs, ins)),
                params=params, pos=whole.pos, scope=whole.scope, label=whole.label,
                trainable=whole.trainable, penalty=dict(whole.penalty) if whole.penalty else None,
                folded=folded, param_names={p: f"{whole.name}.{w}" for p, w in names.items()})


@graph_pass("separable", "split each separable conv into its depthwise conv and a 1x1 conv "
            "(separable-conv decomposition; a batch norm after it then folds into the 1x1 conv)")
def decompose_separable(graph: Graph, training: bool) -> list[str]:
    """Out: no separable_conv; each is its depthwise part (a new node, named NODE/depthwise
    or a free variant, scheduled just before) then a 1x1 conv under its name, which keeps a
    batch norm folded into it. Both parts keep the separable's tensor names (param_names)."""
    changes = []
    seps = [n for n in graph.nodes() if n.op == "separable_conv"]
    depthwise = {}
    for sep in seps:
        a = sep.attrs
        dw_attrs = OPS["depthwise_conv"].make_attrs([], {
            "kernel": a.kernel, "stride": a.stride, "pad": a.pad, "multiplier": a.multiplier,
            "dilation": a.dilation, "bias": False})
        name = _fresh_name(graph, f"{sep.name}/depthwise", {d.name for d in depthwise.values()})
        depthwise[sep.name] = _part_of(graph, sep, name, "depthwise_conv", dw_attrs, sep.inputs,
                                       {"weight": "depthwise_weight"})
    graph.insert_before(depthwise)
    for sep in seps:
        # the 1x1 conv takes the separable's place: its name, consumers and schedule slot; a
        # batch norm folded before this pass ran goes with it
        a, dw = sep.attrs, depthwise[sep.name]
        pw_attrs = OPS["conv"].make_attrs([], {"filters": a.filters, "kernel": 1, "bias": a.bias,
                                               "act": a.act})
        pw = _part_of(graph, sep, sep.name, "conv", pw_attrs, [dw.name],
                      {"weight": "pointwise_weight", **({"bias": "bias"} if a.bias else {})}, sep.folded)
        graph.replace(pw)
        changes.append(f"split {sep.name} into {dw.name} (depthwise_conv "
                       f"{OPS['depthwise_conv'].describe(dw.attrs)}) then {pw.name} (1x1 conv, {a.filters})")
    return changes


def _shape_only(node: Node) -> bool:
    return node.opdef.traits.shape_only


def _shape_op_text(node) -> str:
    return "flatten" if node.op == "flatten" else f"reshape{node.opdef.describe(node.attrs)}"


@graph_pass("fold-shapes", "fold shape arithmetic: a chain of flatten/reshape layers becomes its "
            "last one, reading the chain's input; one that keeps its input's shape is removed")
def fold_shapes(graph: Graph, training: bool) -> list[str]:
    """Out: no shape-only layer (Traits.shape_only) reads another that only it reads, and none
    keeps its input's shape, the graph's outputs excepted."""
    changes = []
    for node in list(graph.nodes()):
        if node.name not in graph or not _shape_only(node):
            continue
        # flatten and reshape depend only on the channel-major order of their input's
        # elements, which the one before also only reinterprets: skip it
        while True:
            src = graph.node(node.inputs[0])
            if (not _shape_only(src) or _protected(graph, src.name)
                    or graph.consumers(src.name) != [node.name]):
                break
            changes.append(f"folded {src.name} into {node.name} ({_shape_op_text(src)} then "
                           f"{_shape_op_text(node)}: {node.name} reads {src.inputs[0]}, "
                           f"{format_shape(graph.node(src.inputs[0]).shape)} -> {format_shape(node.shape)})")
            graph.bypass(src.name)
        src = graph.node(node.inputs[0])
        if tuple(src.shape) == tuple(node.shape) and not _protected(graph, node.name):
            graph.bypass(node.name)
            changes.append(f"removed {node.name} ({_shape_op_text(node)} of {src.name} keeps its "
                           f"shape {format_shape(node.shape)})")
    return changes


# ---------------------------------------------------------------- fusion

def _sole_consumer(graph: Graph, name: str):
    """The one node reading `name` (once), if `name` is not an output; else None."""
    consumers = graph.consumers(name)
    if len(consumers) != 1 or name in graph.outputs:
        return None
    node = graph.node(consumers[0])
    return node if node.inputs.count(name) == 1 else None


def _pool_step(graph: Graph, node) -> tuple | None:
    """(the pool's op, kh, kw) if the pool's windows tile its input exactly."""
    a = node.attrs
    _, h, w = graph.node(node.inputs[0]).shape
    (kh, kw), stride = a.kernel, a.stride
    pad = explicit_padding(a.pad, (h, w), a.kernel, a.stride)
    if stride != (kh, kw) or any(pad) or h % kh or w % kw:
        return None
    return (node.op, kh, kw)


def _act_step(node) -> tuple:
    return (node.op, float(node.attrs.get("alpha", 0.0)))


def _add_steps(node) -> tuple:
    """One step per input an add adds to the value the group carries (its first input)."""
    return tuple((node.op,) for _ in node.inputs[1:])


def _fusion(node: Node) -> Fusion:
    return node.opdef.traits.fusion


def _steps_after(graph: Graph, first, phase: int) -> list[tuple]:
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
        elif role is Fusion.ACTIVATION and phase != 1:
            steps, phase = (_act_step(nxt),), (1 if phase == 0 else 3)
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
            anchor, members = node, _steps_after(graph, node, 0)
        elif role is Fusion.ADD:   # its first input is the value the steps map
            anchor, members = None, [(node, _add_steps(node))]
            members += _steps_after(graph, node, 0)
        elif role is Fusion.ACTIVATION:
            anchor, members = None, [(node, (_act_step(node),))]
            members += _steps_after(graph, node, 1)
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


DEFAULT = ("identity", "dropout", "separable", "fold-shapes", "fold-batchnorm", "cse", "dead-nodes",
           "fuse")


# ---------------------------------------------------------------- running them

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
        lines.append(f"{n.name} = {op}({', '.join(n.inputs)}) -> {format_shape(n.shape)}")
    return "\n".join(lines)
