"""The separable-conv decomposition: a separable conv becomes its depthwise part and a 1x1
conv, under the separable's parameter names."""

from __future__ import annotations

from ..graph.graph import FoldedBatchNorm, Graph, Node
from ..ops import OPS, Param
from .base import graph_pass


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
    ins = [graph.shape_of(i) for i in inputs]
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
