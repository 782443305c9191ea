"""`netspec export`: a checked network, after the graph passes or before them, as an ONNX model.

Each op writes itself in ONNX (`Op.onnx`, beside its PyTorch rule, in the same layout: NCHW
maps, (N, T, F) sequences, (N, F) vectors); this module walks the graph in order, hands each
rule an `OnnxContext` to emit nodes into, and assembles the model:
- one dynamic batch dimension (`batch`) on every input and output;
- node and value names from netspec's paths (`stage1/bottleneck1/main/conv1`; a layer that
  needs several ONNX nodes names them `LAYER/op_type`), graph inputs and outputs as the spec
  names them;
- initializers hold the parameters, named as weight files name them (`NODE.weight`), in
  PyTorch's layouts; a batch norm the passes folded into its layer is exported folded (the
  layer's rescaled weights and bias); shape and index constants are Constant nodes, so the
  initializers are exactly the network's parameters;
- checked with `onnx.checker` (full check, shape inference included) before it is written.

    model = export(graph, params, opset=DEFAULT_OPSET)    # an onnx.ModelProto
    onnx_bytes(model)                                      # what `netspec export` writes

onnx is an optional dependency (`pip install 'netspec[onnx]'`); `require_onnx` says so."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..graph.graph import Graph, Node

from . import DEFAULT_OPSET, MIN_OPSET, OnnxUnavailable  # noqa: F401 (raised by require_onnx)
from . import require_onnx as _require_onnx

BATCH = "batch"


class ExportError(Exception):
    """What cannot be exported as asked (an op without an ONNX rule, an opset out of range),
    with a hint."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message, self.hint = message, hint


def require_onnx():
    return _require_onnx("ONNX export")


def latest_opset() -> int:
    """The newest opset of the default domain the installed onnx package knows."""
    return require_onnx().defs.onnx_opset_version()


# ---------------------------------------------------------------- what an op's rule writes with

class OnnxContext:
    """What `Op.onnx(a, xs, p, ctx)` writes with: the node being exported (its input and output
    shapes in the spec's layout, without the batch) and the model's node list, into which
    `op` emits nodes whose names start with the layer's name."""

    def __init__(self, model: "_ModelBuilder", name: str, ins: Sequence[tuple], shape: tuple,
                 fold=None):
        self.model = model
        self.name = name
        self.fold = fold                # the batch norm the passes folded into this layer
        self.ins = [tuple(s) for s in ins]
        self.shape = tuple(shape)
        self.opset = model.opset
        self.nodes: list = []           # what this layer emitted, in order

    def op(self, op_type: str, inputs: Sequence[str | None], outputs: int = 1, **attrs):
        """Emit one ONNX node; its output value name (a list of them when outputs > 1). An
        input None is an omitted optional input ('')."""
        onnx = require_onnx()
        k = len(self.nodes)
        outs = [f"{self.name}/{op_type.lower()}{k}" + (f":{i}" if outputs > 1 else "")
                for i in range(outputs)]
        attrs = {key: v for key, v in attrs.items() if v is not None}
        for i in inputs:
            self.model.use(i)
        node = onnx.helper.make_node(op_type, ["" if i is None else i for i in inputs], outs,
                                     name=f"{self.name}/{op_type.lower()}{k}", **attrs)
        self.nodes.append(node)
        self.model.nodes.append(node)
        return outs if outputs > 1 else outs[0]

    def const(self, values, dtype=np.int64) -> str:
        """A Constant node holding `values` (shapes, axes, pads, scalars): int64 by default."""
        onnx = require_onnx()
        array = np.asarray(values, dtype=dtype)
        return self.op("Constant", [], value=onnx.numpy_helper.from_array(array))

    def weight(self, array: np.ndarray, label: str) -> str:
        """A float tensor the rule computes from the attributes (not a parameter): a Constant."""
        onnx = require_onnx()
        return self.op("Constant", [], value=onnx.numpy_helper.from_array(
            np.asarray(array, dtype=np.float32), name=f"{self.name}/{label}"))

    def reshaped(self, value: str, shape: Sequence[int]) -> str:
        """`value` reshaped to (batch, *shape): 0 keeps the batch as it is."""
        return self.op("Reshape", [value, self.const([0, *shape])])

    def per_channel(self, value: str, rank: int) -> str:
        """A per-channel vector (C,) shaped to broadcast along the channel axis of a batch of
        `rank` dimensions in the spec's layout: (C, 1, 1) for maps, as is for the last axis."""
        return self.op("Reshape", [value, self.const([-1, 1, 1])]) if rank == 4 else value

    def folded(self, weight: str, bias: str | None) -> tuple[str, str | None]:
        """The weight and bias the layer computes with (as its lowering's NodeContext.folded):
        its own, or, when the passes folded the batch norm after it into it, those tensors
        rescaled: w * s and (b - mean) * s + beta with s = gamma / sqrt(var + eps) along the
        weight's first axis (its output channel: Traits.folds_batchnorm). They keep the
        layer's names; a layer without bias gets one, NODE.bias."""
        if self.fold is None:
            return weight, bias
        values = self.model.params
        fold = self.fold
        bn = {p.name: np.asarray(values[f"{fold.node}.{p.name}"], np.float64) for p in fold.params}
        c = fold.channels
        scale = bn.get("weight", np.ones(c)) / np.sqrt(bn["running_var"] + fold.epsilon)
        w = np.asarray(values[weight], np.float64)
        b = np.asarray(values[bias], np.float64) if bias else np.zeros(c)
        bias = bias or f"{self.name}.bias"
        self.model.set(weight, w * scale.reshape(-1, *(1,) * (w.ndim - 1)))
        self.model.set(bias, (b - bn["running_mean"]) * scale + bn.get("bias", np.zeros(c)))
        return weight, bias

    def member(self, node: Node, xs: list[str], ins: Sequence[tuple]):
        """Export a member of this layer (a fused group's anchor) through its op's rule, its
        nodes named by the member; its output value."""
        sub = OnnxContext(self.model, node.name, ins, node.shape, node.folded)
        sub.nodes = self.nodes
        return node.opdef.onnx(node.attrs, xs, parameter_names(node), sub)

    def step(self, op, attrs, xs: list[str], ins: Sequence[tuple], label: str):
        """Export a parameter-free op with attributes `attrs` on inputs of shapes `ins` (a
        fused group's steps), its nodes named LAYER/label; its output value."""
        sub = OnnxContext(self.model, f"{self.name}/{label}", ins, op.shape(attrs, ins))
        sub.nodes = self.nodes
        return op.onnx(attrs, xs, {}, sub)


# ---------------------------------------------------------------- the model

class _ModelBuilder:
    """The model being assembled: its nodes, and its initializers, which are the parameters
    the nodes read (a parameter no node reads, a batch norm's folded away, is left out)."""

    def __init__(self, opset: int, params: dict):
        self.opset = opset
        self.params = params
        self.nodes: list = []
        self.initializers: dict[str, np.ndarray] = {}

    def use(self, value: str | None) -> None:
        if value in self.params and value not in self.initializers:
            self.set(value, self.params[value])

    def set(self, name: str, value) -> None:
        self.initializers[name] = np.ascontiguousarray(value, dtype=np.float32)


def parameter_names(node: Node) -> dict[str, str]:
    """{the node's own parameter name: its tensor's name in weight files} (a part of a layer a
    pass split keeps the layer's names: Node.param_names)."""
    names = node.param_names or {}
    return {p.name: names.get(p.name, f"{node.name}.{p.name}") for p in node.params}


def export_node(node: Node, ctx: OnnxContext, xs: list[str]):
    """Emit `node` through its op's rule; its output value(s)."""
    return node.opdef.onnx(node.attrs, xs, parameter_names(node), ctx)


def _rename(ctx: OnnxContext, got: str, want: str, inputs_of: list[str]) -> None:
    """Make the value `got`, which the layer's own nodes computed, be called `want`."""
    for n in ctx.nodes:
        for i, v in enumerate(n.output):
            if v == got:
                n.output[i] = want
        for i, v in enumerate(n.input):
            if v == got:
                n.input[i] = want


def export(graph: Graph, params: dict, opset: int = DEFAULT_OPSET, doc: str = "",
           metadata: dict | None = None, input_norm: dict | None = None):
    """The ONNX model of `graph` with `params` ({'node.param': array}, PyTorch layouts, every
    parameter and running statistic of the graph's nodes), checked. ExportError names a layer
    whose op ONNX cannot express, with its place in the spec.

    input_norm: how training standardised the (single) input ({"mean": [...], "std": [...]}
    per channel, training.data's norm): the model then takes inputs scaled as `netspec predict`
    reads them (floats in [0, 1]) and standardises them itself, first thing."""
    onnx = require_onnx()
    from onnx import TensorProto, helper
    if not MIN_OPSET <= opset <= latest_opset():
        raise ExportError(f"opset {opset} is not one netspec exports: choose {MIN_OPSET} to "
                          f"{latest_opset()} (the installed onnx's newest)")
    model = _ModelBuilder(opset, params)
    renamed = {}        # a graph input -> the value the layers read instead (standardised)
    if input_norm is not None:
        (name,) = graph.inputs
        ctx = OnnxContext(model, f"{name}/standardise", [], graph.node(name).shape)
        rank = len(graph.node(name).shape) + 1
        mean, std = (ctx.weight(np.asarray(input_norm[k], np.float32), k) for k in ("mean", "std"))
        renamed[name] = ctx.op("Div", [ctx.op("Sub", [name, ctx.per_channel(mean, rank)]),
                                       ctx.per_channel(std, rank)])
    for node in graph.nodes():
        if node.name in graph.inputs:
            continue
        ins = [graph.shape_of(v) for v in node.inputs]
        ctx = OnnxContext(model, node.name, ins, node.shape, node.folded)
        try:
            out = export_node(node, ctx, [renamed.get(v, v) for v in node.inputs])
        except NotImplementedError as e:
            where = f"{node.pos}: " if node.pos else ""
            raise ExportError(f"{where}{node.name} ({node.op}): {e}",
                              hint="ONNX has no operator for it that netspec knows how to "
                                   "write; export the network without it, or before the passes "
                                   "that made it (--passes none)") from None
        wanted = graph.values(node)
        got = list(out) if isinstance(out, (tuple, list)) else [out]
        for g, w in zip(got, wanted):
            if g == w:
                continue
            if any(g in n.output for n in ctx.nodes):
                _rename(ctx, g, w, node.inputs)
            else:       # the rule returned an input as it was (identity, dropout)
                ctx.op("Identity", [g])
                _rename(ctx, ctx.nodes[-1].output[0], w, node.inputs)
        # a layer written as one node is named as the layer
        real = [n for n in ctx.nodes if n.op_type != "Constant"]
        if len(real) == 1:
            real[0].name = node.name

    def value_info(name, shape):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [BATCH, *shape])

    inputs = [value_info(name, graph.node(name).shape) for name in graph.inputs]
    outputs = [value_info(name, graph.shape_of(name)) for name in graph.outputs]
    initializers = [onnx.numpy_helper.from_array(v, name) for name, v in model.initializers.items()]
    onnx_graph = helper.make_graph(model.nodes, graph.name, inputs, outputs, initializers, doc_string=doc)
    from importlib.metadata import version
    proto = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="netspec", producer_version=version("netspec"),
                              doc_string=doc)
    # the IR version of this opset (helper.make_model writes the library's newest, which older
    # runtimes refuse)
    proto.ir_version = _ir_version(opset)
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:     # a rule's bug, not the user's
        raise RuntimeError(f"the exported model of {graph.name} fails onnx.checker: {e}") from None
    return proto


def _ir_version(opset: int) -> int:
    """The IR version of the first onnx release whose default opset reached `opset`."""
    from onnx import helper
    rows = [row for row in helper.VERSION_TABLE if row[2] >= opset]   # (release, ir, opset, ...)
    return min(row[1] for row in rows) if rows else require_onnx().IR_VERSION


def onnx_bytes(model) -> bytes:
    return model.SerializeToString()


def parameter_count(model) -> int:
    """Elements held by the model's initializers: its parameters (and running statistics)."""
    return sum(math.prod(t.dims) for t in model.graph.initializer)


def op_counts(model) -> dict[str, int]:
    """{ONNX op type: nodes}, Constant nodes left out."""
    counts: dict[str, int] = {}
    for n in model.graph.node:
        if n.op_type != "Constant":
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
