"""Passes that fold one layer into another: a batch norm into the conv or dense layer before
it, a chain of shape-only layers into its last one."""

from __future__ import annotations

from ..graph.graph import FoldedBatchNorm, Graph, Node
from ..ops import format_shape
from ..ops.base import channels
from .base import graph_pass, protected


@graph_pass("fold-batchnorm", "fold each inference batch norm into the conv or dense layer "
            "before it (its weights and bias rescaled once per weight change)", training_safe=False)
def fold_batchnorm(graph: Graph, training: bool) -> list[str]:
    """An inference graph only. Out: a batch norm that is the sole reader of a layer whose op
    folds batch norms (Traits.folds_batchnorm) is gone, recorded in that layer's `folded`
    (lowered as its rescaled weights: NodeContext.folded)."""
    changes = []
    for bn in list(graph.nodes()):
        if bn.op != "batchnorm" or protected(graph, bn.name):
            continue
        layer = graph.producer(bn.inputs[0])
        if (not layer.opdef.traits.folds_batchnorm or layer.folded or protected(graph, layer.name)
                or graph.consumers(layer.name) != [bn.name]):
            continue
        layer.folded = FoldedBatchNorm(bn.name, bn.attrs.epsilon, tuple(bn.params), bn.trainable,
                                       channels(bn.shape))
        graph.replace_uses(bn.name, layer.name)
        graph.remove(bn.name)
        changes.append(f"folded {bn.name} into {layer.name}")
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
            src = graph.producer(node.inputs[0])
            if (not _shape_only(src) or protected(graph, src.name)
                    or graph.consumers(src.name) != [node.name]):
                break
            changes.append(f"folded {src.name} into {node.name} ({_shape_op_text(src)} then "
                           f"{_shape_op_text(node)}: {node.name} reads {src.inputs[0]}, "
                           f"{format_shape(graph.shape_of(src.inputs[0]))} -> {format_shape(node.shape)})")
            graph.bypass(src.name)
        src = node.inputs[0]
        if tuple(graph.shape_of(src)) == tuple(node.shape) and not protected(graph, node.name):
            graph.bypass(node.name)
            changes.append(f"removed {node.name} ({_shape_op_text(node)} of {src} keeps its "
                           f"shape {format_shape(node.shape)})")
    return changes
