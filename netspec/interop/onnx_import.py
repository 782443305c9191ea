"""`netspec import`: an ONNX model in, a readable .net spec (and its weights) out.

A frontend, as the language's parser is one: the ONNX graph is read, its constants folded,
its shapes inferred (onnx's shape inference, the batch fixed at 1), and each node translated
by the table `TRANSLATE` (ONNX op type -> a rule) into netspec layers (`Layer`): the layer's
op, its attributes (only those not at their defaults) and its parameters in PyTorch's layouts.
Rules recognise the common patterns: a Conv with group == C is a depthwise_conv, Gemm and
MatMul (+ Add) a dense, Clip(0, 6) a relu6, x * Sigmoid(x) a silu, x * HardSigmoid(x) a
hardswish, a global average (GlobalAveragePool, ReduceMean over H and W) before a flatten a
global_avgpool, explicit pads equal to netspec's `same` rule pad=same; across several nodes
(`_find_patterns`): a channel shuffle (Reshape, Transpose, Reshape), a layer between transposes
to channels last and back (layer_norm of a map, dense per position), to_tokens.

spec_writer.py then finds the repeated structures and writes the text; the text is formatted,
checked by netspec's own pipeline, and the initializers are named after the checked graph's
nodes (`NODE.PARAM`, as every weight file netspec writes).

Nodes no rule translates are collected, all of them, and reported together
(`UnsupportedModel`), never one at a time.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..ops import OPS
from ..ops.base import explicit_padding
from . import OnnxUnavailable
from . import require_onnx as _require_onnx
from .spec_writer import Layer, Translated, part_value, producer, write_spec

MAX_MODEL_BYTES = 2 * 1024**3      # protobuf's own limit for one message
MAX_FOLDED_ELEMENTS = 1 << 26      # a constant folded here holds at most this many (256 MB)


class OnnxImportError(Exception):
    """The file cannot be imported: not an ONNX model, or a model netspec cannot express."""


class UnsupportedModel(OnnxImportError):
    """Nodes no rule translates, each with its name and why."""

    def __init__(self, problems: list[tuple[str, str, str]]):
        self.problems = problems    # (op type, node name, why)
        shown = "; ".join(f"{op} '{name}' ({why})" for op, name, why in problems)
        super().__init__(f"{len(problems)} ONNX node{'s' * (len(problems) != 1)} netspec cannot "
                         f"translate: {shown}")


class _Unsupported(Exception):
    """A rule's refusal of one node: why."""


@dataclass
class Imported:
    text: str                               # the formatted spec
    weights: dict[str, np.ndarray]          # NODE.PARAM -> array, the checked graph's names
    graph: object                           # netspec's checked Graph of the spec
    translated: Translated
    network: str


def require_onnx():
    try:
        return _require_onnx("netspec import")
    except OnnxUnavailable as e:      # the command's one kind of refusal
        raise OnnxImportError(str(e)) from None


# ------------------------------------------------------------------ reading

def read_model(path):
    """The ONNX model at `path`, checked enough to translate."""
    onnx = require_onnx()
    from google.protobuf.message import DecodeError
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_MODEL_BYTES:
        raise OnnxImportError(f"{path} is too large for one ONNX file ({size} bytes)")
    try:
        # weights in an external file beside the model (PyTorch's dynamo exporter writes
        # MODEL.onnx.data) are read too; onnx refuses paths that leave the model's folder
        model = onnx.load(str(path), load_external_data=True)
    except FileNotFoundError as e:     # an external data file that is missing
        raise OnnxImportError(f"{path}: a file its weights are in is missing ({_short(e)})") from None
    except (DecodeError, ValueError, RuntimeError, TypeError, UnicodeDecodeError, EOFError) as e:
        raise OnnxImportError(f"{path} is not an ONNX model ({_short(e)})") from None
    except Exception as e:   # protobuf raises assorted errors on hostile bytes
        if isinstance(e, (OSError, MemoryError)):
            raise
        raise OnnxImportError(f"{path} is not an ONNX model ({type(e).__name__}: {_short(e)})") from None
    if not model.HasField("graph") or not model.graph.node:
        raise OnnxImportError(f"{path} is not an ONNX model (it holds no graph)")
    return model


def _short(e) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


# ------------------------------------------------------------------ the translation context

class _Context:
    def __init__(self, model):
        import onnx
        from onnx import numpy_helper
        self.onnx = onnx
        self.model = model
        graph = model.graph
        self.opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=1)
        self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.inputs = [i for i in graph.input if i.name not in self.consts]
        if not self.inputs:
            raise OnnxImportError("the model has no input")
        self.shapes = self._infer_shapes()
        self.values: dict[str, str] = {}         # ONNX value -> netspec value id
        self.value_shapes: dict[str, tuple] = {}  # netspec value id -> its shape
        self.layers: list[Layer] = []
        self.used_names: set[str] = set()
        self.consumers: dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
        self.skip: set[int] = set()              # nodes another rule absorbed (ids)
        self.fused: dict[int, tuple] = {}        # node id -> (pattern, data)
        self.reads: dict[int, list] = {}         # node id -> the values a pattern it ends reads
        self.region: dict[int, tuple] = {}       # node id -> (input, output) around its transposes
        # a Pad of -inf only max pools read -> (its input, (top, bottom, left, right))
        self.pool_pads: dict[str, tuple] = {}

    def _infer_shapes(self) -> dict[str, tuple]:
        onnx = self.onnx
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        for value in model.graph.input:
            if value.name in self.consts:
                continue
            dims = value.type.tensor_type.shape.dim
            if not value.type.tensor_type.HasField("shape") or len(dims) == 0:
                raise OnnxImportError(f"input '{value.name}' has no shape in the model")
            for k, d in enumerate(dims):
                if not d.HasField("dim_value") or d.dim_value <= 0:
                    if k == 0:
                        d.Clear()
                        d.dim_value = 1      # the batch
                    else:
                        raise OnnxImportError(f"input '{value.name}' has a dynamic size on axis {k} "
                                              f"({d.dim_param or '?'}); netspec needs a fixed shape")
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
        except Exception as e:   # the model itself is inconsistent
            raise OnnxImportError(f"the model's shapes cannot be inferred ({_short(e)})") from None
        shapes = {}
        for v in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
            t = v.type.tensor_type
            if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
                shapes[v.name] = tuple(int(d.dim_value) for d in t.shape.dim)
        for name, a in self.consts.items():
            shapes[name] = tuple(a.shape)
        return shapes

    # -- queries the rules make
    def const(self, name: str):
        return self.consts.get(name) if name else None

    def shape(self, name: str) -> tuple:
        if name in self.consts:
            return tuple(self.consts[name].shape)
        if name not in self.shapes:
            raise _Unsupported(f"the shape of '{name}' is unknown")
        return self.shapes[name]

    def value(self, name: str) -> str:
        return self.values[name]

    def add(self, node, op: str, attrs: dict, inputs: list[str], params=None, output: str | None = None) -> str:
        """A layer computing `output` (the node's first output by default)."""
        out = output if output is not None else node.output[0]
        key = out
        layer = Layer(key, op, {k: v for k, v in attrs.items() if v is not None},
                      [self.values[i] for i in inputs],
                      {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in (params or {}).items()},
                      node.name or node.output[0])
        self.layers.append(layer)
        self.values[out] = key
        if out in self.shapes:
            self.value_shapes[key] = self.shapes[out][1:]
        return key

    def alias(self, node, source: str, output: str | None = None) -> None:
        self.values[output if output is not None else node.output[0]] = self.values[source]

    def attr(self, node, name: str, default=None):
        for a in node.attribute:
            if a.name == name:
                value = self.onnx.helper.get_attribute_value(a)
                if isinstance(value, bytes):
                    value = value.decode("utf-8", "replace")
                return value
        return default

    def data_consumers(self, name: str) -> list:
        return [n for n in self.consumers.get(name, []) if id(n) not in self.skip]


# ------------------------------------------------------------------ helpers of the rules

def _channels_axis_ok(rank: int, axis: int) -> bool:
    """Whether ONNX axis `axis` of a tensor of `rank` (batch first) is netspec's channel axis:
    axis 1 of a map (N, C, H, W) or a vector (N, F), the last of a sequence (N, T, F)."""
    axis = axis % rank
    return (rank in (2, 4) and axis == 1) or (rank == 3 and axis == 2)


def _rank(c: _Context, name: str, allowed=(2, 3, 4)) -> int:
    r = len(c.shape(name))
    if r not in allowed:
        kinds = {2: "a vector", 3: "a sequence", 4: "a feature map"}
        raise _Unsupported(f"its input is a rank-{r} tensor; netspec takes "
                           + " or ".join(kinds[a] for a in allowed) + " here")
    return r


def _map_input(c: _Context, name: str, what: str) -> tuple:
    shape = c.shape(name)
    if len(shape) != 4:
        dims = len(shape) - 2
        raise _Unsupported(f"a {dims}-D {what}: netspec works on 2-D feature maps (N, C, H, W)"
                           if dims >= 1 else f"{what} of a rank-{len(shape)} tensor")
    return shape


def _ints(values, n=2, default=1) -> tuple:
    values = list(values) if values is not None else [default] * n
    return tuple(int(v) for v in values)


def _pair(p):
    """(a, a) -> a: netspec writes a square size once."""
    return p[0] if p[0] == p[1] else tuple(p)


def _float(v) -> float:
    """A float32 attribute as the shortest decimal that reads back to it (1e-05, not
    9.999999747378752e-06)."""
    return float(str(np.float32(v)))


def _pads(c: _Context, node, hw, kernel, stride, dilation, allow_same=True):
    """(spellings of pad=, or None) and (top, bottom, left, right): spellings when netspec's
    pad= can say it (same, an int, a pair), None when only a pad layer can."""
    auto = c.attr(node, "auto_pad", "NOTSET")
    if auto in ("VALID",):
        return ("valid",), (0, 0, 0, 0)
    if auto == "SAME_UPPER":
        sides = explicit_padding("same", hw, kernel, stride, dilation)
        return ("same",), sides
    if auto == "SAME_LOWER":
        t, b, l, r = explicit_padding("same", hw, kernel, stride, dilation)
        sides = (b, t, r, l)
    else:
        p = _ints(c.attr(node, "pads"), 4, 0)
        if len(p) != 4:
            raise _Unsupported(f"pads {list(p)} are not 2-D")
        sides = (p[0], p[2], p[1], p[3])    # ONNX: (top, left, bottom, right)
    return _pad_spellings(sides, hw, kernel, stride, dilation, allow_same), sides


def _pad_spellings(sides, hw, kernel, stride, dilation, allow_same=True):
    """How netspec's pad= says padding (top, bottom, left, right) of a window on an input of
    `hw`: same, an int, a pair (in that order of preference); None when it cannot."""
    spellings = []
    if allow_same and sides == explicit_padding("same", hw, kernel, stride, dilation) and sides != (0, 0, 0, 0):
        spellings.append("same")
    t, b, l, r = sides
    if t == b and l == r:
        spellings.append("valid" if (t, l) == (0, 0) else _pair((t, l)))
    return tuple(spellings) or None


def _pad_layer(c: _Context, node, x: str, sides) -> str:
    """A pad layer before a windowed layer whose padding is not symmetric."""
    t, b, l, r = sides
    out = f"{node.output[0]}__pad"
    c.add(node, "pad", _pad_attrs(t, b, l, r), [x], output=out)
    return out


def _pad_attrs(t, b, l, r, mode="constant", value=0.0) -> dict:
    attrs = {}
    if t == b == l == r:
        attrs["amount"] = (t,)
    elif t == b and l == r:
        attrs["amount"] = ((t, l),)
    else:
        attrs.update({k: (v,) for k, v in zip(("top", "bottom", "left", "right"), (t, b, l, r)) if v})
    if mode != "constant":
        attrs["mode"] = (mode,)
    if value != 0.0:
        attrs["value"] = (_float(value),)
    return attrs


# ------------------------------------------------------------------ the rules

def _conv(c: _Context, node):
    x, w = node.input[0], node.input[1]
    b = node.input[2] if len(node.input) > 2 else ""
    W = c.const(w)
    if W is None:
        raise _Unsupported("its weights are computed, not stored")
    if W.ndim != 4:
        raise _Unsupported(f"a {W.ndim - 2}-D convolution: netspec convolves 2-D feature maps only")
    _, C, H, Wd = _map_input(c, x, "convolution")
    group = int(c.attr(node, "group", 1))
    kernel = tuple(int(k) for k in W.shape[2:])
    stride = _ints(c.attr(node, "strides"))
    dilation = _ints(c.attr(node, "dilations"))
    M = int(W.shape[0])
    pads, sides = _pads(c, node, (H, Wd), kernel, stride, dilation)
    if pads is None:
        x = _pad_layer(c, node, x, sides)
        pads = ("valid",)
    params = {"weight": W}
    attrs = {}
    if group == C and group > 1 and M % C == 0:
        op = "depthwise_conv"
        attrs["kernel"] = (_pair(kernel),)
        if M // C != 1:
            attrs["multiplier"] = (M // C,)
    else:
        op = "conv"
        attrs["filters"] = (M,)
        attrs["kernel"] = (_pair(kernel),)
        if group != 1:
            attrs["groups"] = (group,)
    if stride != (1, 1):
        attrs["stride"] = (_pair(stride),)
    if pads != ("valid",):
        attrs["pad"] = pads
    if dilation != (1, 1):
        attrs["dilation"] = (_pair(dilation),)
    bias = c.const(b)
    if b and bias is None:
        raise _Unsupported("its bias is computed, not stored")
    if bias is not None:
        params["bias"] = bias.reshape(M)
    else:
        attrs["bias"] = (False,)
    c.add(node, op, attrs, [x], params)


def _conv_transpose(c: _Context, node):
    x, w = node.input[0], node.input[1]
    b = node.input[2] if len(node.input) > 2 else ""
    W = c.const(w)
    if W is None or W.ndim != 4:
        raise _Unsupported("its weights are computed, or it is not 2-D")
    _map_input(c, x, "transposed convolution")
    if c.attr(node, "output_shape") is not None or c.attr(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise _Unsupported("output_shape / auto_pad are not translated; explicit pads are")
    group = int(c.attr(node, "group", 1))
    kernel = tuple(int(k) for k in W.shape[2:])
    stride = _ints(c.attr(node, "strides"))
    dilation = _ints(c.attr(node, "dilations"))
    out_pad = _ints(c.attr(node, "output_padding"), 2, 0)
    p = _ints(c.attr(node, "pads"), 4, 0)
    filters = int(W.shape[1]) * group
    attrs = {"filters": (filters,), "kernel": (_pair(kernel),)}
    if stride != (1, 1):
        attrs["stride"] = (_pair(stride),)
    if (list(p), list(out_pad)) == _transpose_same(c.shape(x)[2:], kernel, stride, dilation):
        attrs["pad"] = ("same",)
    elif (p[0], p[1]) != (p[2], p[3]):
        raise _Unsupported(f"asymmetric pads {list(p)} that are not netspec's same")
    else:
        if (p[0], p[1]) != (0, 0):
            attrs["pad"] = (_pair((p[0], p[1])),)
        if out_pad != (0, 0):
            attrs["output_padding"] = (_pair(out_pad),)
    if dilation != (1, 1):
        attrs["dilation"] = (_pair(dilation),)
    if group != 1:
        attrs["groups"] = (group,)
    params = {"weight": W}
    bias = c.const(b)
    if bias is not None:
        params["bias"] = bias.reshape(filters)
    else:
        attrs["bias"] = (False,)
    c.add(node, "conv_transpose", attrs, [x], params)


def _transpose_same(hw, kernel, stride, dilation) -> tuple[list, list]:
    """The pads and output_padding of netspec's conv_transpose with pad=same (output H*s, the
    adjoint of a same-padded conv of an H*s input), as ONNX writes them."""
    from ..ops.reference.common import window_pads
    pads, extra = [0, 0, 0, 0], [0, 0]
    for axis in (0, 1):
        size, k, s, d = hw[axis], kernel[axis], stride[axis], dilation[axis]
        before = window_pads("same", (size * s, 1), (k, 1), (s, 1), (d, 1))[0]
        after = (size - 1) * s + d * (k - 1) + 1 - size * s - before
        pads[axis], pads[2 + axis] = before, max(after, 0)
        extra[axis] = max(-after, 0)
    return pads, extra


def _dense_from(c: _Context, node, x: str, weight: np.ndarray, bias, output=None) -> None:
    """A dense layer of x: weight (units, features), PyTorch's Linear layout."""
    r = _rank(c, x, (2, 3))
    if c.shape(x)[-1] != weight.shape[1]:
        raise _Unsupported("its weight does not multiply the input's last axis")
    attrs = {"units": (int(weight.shape[0]),)}
    params = {"weight": weight}
    if bias is None:
        attrs["bias"] = (False,)
    else:
        params["bias"] = np.broadcast_to(bias, (weight.shape[0],)).copy()
    del r
    c.add(node, "dense", attrs, [x], params, output=output)


def _gemm(c: _Context, node):
    a, b = node.input[0], node.input[1]
    cc = node.input[2] if len(node.input) > 2 else ""
    B, C = c.const(b), c.const(cc)
    if B is None or c.const(a) is not None:
        raise _Unsupported("it multiplies two computed tensors (only stored weights make a dense layer)")
    if c.attr(node, "transA", 0):
        raise _Unsupported("transA=1")
    alpha, beta = float(c.attr(node, "alpha", 1.0)), float(c.attr(node, "beta", 1.0))
    weight = alpha * (B if c.attr(node, "transB", 0) else B.T)
    if cc and C is None:
        raise _Unsupported("its bias is computed, not stored")
    bias = None if C is None else beta * np.asarray(C).reshape(-1)
    if bias is not None and bias.size not in (1, weight.shape[0]):
        raise _Unsupported("its bias does not broadcast over the units")
    _dense_from(c, node, a, weight, bias)


def _matmul(c: _Context, node):
    a, b = node.input
    B = c.const(b)
    if B is None or B.ndim != 2 or c.const(a) is not None:
        raise _Unsupported("it multiplies two computed tensors (only a stored 2-D weight makes a dense layer)")
    bias, output = None, None
    if c.fused.get(id(node), ("",))[0] == "attention":
        _, heads, params, output, x = c.fused[id(node)]
        attrs = {"heads": (heads,)} if "in_proj_bias" in params else {"heads": (heads,), "bias": (False,)}
        c.add(node, "attention", attrs, [x], params, output=output)
        return
    if id(node) in c.fused:     # MatMul + Add of a stored bias
        _, bias, output = c.fused[id(node)]
    if id(node) in c.region:    # between transposes: at each position of a map, over its channels
        a, output = c.region[id(node)]
        _map_input(c, a, "dense per position")
        if c.shape(a)[1] != B.shape[0]:
            raise _Unsupported("its weight does not multiply the channels")
        attrs = {"units": (int(B.shape[1]),), "per_position": (True,)}
        params = {"weight": B.T}
        if bias is None:
            attrs["bias"] = (False,)
        else:
            params["bias"] = np.broadcast_to(bias, (B.shape[1],)).copy()
        c.add(node, "dense", attrs, [a], params, output=output)
        return
    _dense_from(c, node, a, B.T, bias, output)


def _batchnorm(c: _Context, node):
    x, output = node.input[0], None
    if id(node) in c.region:    # a sequence's features, between transposes
        x, output = c.region[id(node)]
    _rank(c, x, (2, 3, 4) if output else (2, 4))
    scale, bias, mean, var = (c.const(n) for n in node.input[1:5])
    if any(v is None for v in (scale, bias, mean, var)):
        raise _Unsupported("its statistics are computed, not stored")
    attrs = {"momentum": (_float(c.attr(node, "momentum", 0.9)),),
             "epsilon": (_float(c.attr(node, "epsilon", 1e-5)),)}
    c.add(node, "batchnorm", attrs, [x], {"weight": scale, "bias": bias, "running_mean": mean,
                                          "running_var": var}, output=output)


def _layer_norm(c: _Context, node):
    x, output = node.input[0], None
    r = _rank(c, x, (2, 3, 4) if id(node) in c.region else (2, 3))
    if id(node) in c.region:    # each position of a map over its channels, between transposes
        x, output = c.region[id(node)]
    if int(c.attr(node, "axis", -1)) % r != r - 1:
        raise _Unsupported("it normalises over more than the last axis")
    scale = c.const(node.input[1])
    bias = c.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if scale is None or bias is None:
        raise _Unsupported("netspec's layer_norm has a stored scale and bias")
    attrs = {"epsilon": (_float(c.attr(node, "epsilon", 1e-5)),)}   # the writer drops netspec's defaults
    c.add(node, "layer_norm", attrs, [x], {"weight": scale, "bias": bias}, output=output)


def _simple(op: str, **names):
    """An activation with attributes named as netspec names them (ONNX name -> (netspec name,
    ONNX's default)); the spec writer leaves out those at netspec's defaults."""
    def rule(c: _Context, node):
        attrs = {ns_name: (_float(c.attr(node, onnx_name, onnx_default)),)
                 for onnx_name, (ns_name, onnx_default) in names.items()}
        c.add(node, op, attrs, [node.input[0]])
    return rule


def _selu(c: _Context, node):
    alpha, gamma = c.attr(node, "alpha", 1.67326319217681884765625), c.attr(node, "gamma", 1.05070102214813232421875)
    if abs(alpha - 1.6732632) > 1e-6 or abs(gamma - 1.0507010) > 1e-6:
        raise _Unsupported("alpha and gamma other than SELU's constants")
    c.add(node, "selu", {}, [node.input[0]])


def _hardsigmoid(c: _Context, node):
    alpha, beta = c.attr(node, "alpha", 0.2), c.attr(node, "beta", 0.5)
    if abs(alpha - 1 / 6) > 1e-6 or abs(beta - 0.5) > 1e-6:
        raise _Unsupported(f"alpha {alpha:g}, beta {beta:g}: netspec's hardsigmoid is PyTorch's (1/6, 0.5)")
    x = node.input[0]
    if id(node) in c.fused:
        c.add(node, "hardswish", {}, [x], output=c.fused[id(node)][1])
        return
    c.add(node, "hardsigmoid", {}, [x])


def _sigmoid(c: _Context, node):
    if id(node) in c.fused:
        c.add(node, "silu", {}, [node.input[0]], output=c.fused[id(node)][1])
        return
    c.add(node, "sigmoid", {}, [node.input[0]])


def _gelu(c: _Context, node):
    approximate = c.attr(node, "approximate", "none")
    c.add(node, "gelu", {} if approximate == "none" else {"approximate": (approximate,)}, [node.input[0]])


def _softmax(op: str):
    def rule(c: _Context, node):
        x = node.input[0]
        shape = c.shape(x)
        r = _rank(c, x)
        if c.opset < 13:
            axis = int(c.attr(node, "axis", 1)) % r
            # before opset 13: over every axis from `axis` on, as one
            reduced = [a for a in range(axis, r) if shape[a] != 1]
            channel = 1 if r in (2, 4) else 2
            ok = axis <= channel and reduced in ([channel], [])
        else:
            ok = _channels_axis_ok(r, int(c.attr(node, "axis", -1)))
        if not ok:
            raise _Unsupported("over an axis other than the channels (netspec's softmax is over "
                               "the channels, or a vector's or token's features)")
        c.add(node, op, {}, [x])
    return rule


def _clip(c: _Context, node):
    if c.opset < 11:
        lo, hi = c.attr(node, "min", -math.inf), c.attr(node, "max", math.inf)
    else:
        lo = c.const(node.input[1]) if len(node.input) > 1 and node.input[1] else -math.inf
        hi = c.const(node.input[2]) if len(node.input) > 2 and node.input[2] else math.inf
        if lo is None or hi is None:
            raise _Unsupported("its bounds are computed, not stored")
        lo, hi = float(np.asarray(lo)), float(np.asarray(hi))
    if lo == 0 and hi == 6:
        c.add(node, "relu6", {}, [node.input[0]])
    elif lo == 0 and hi == math.inf:
        c.add(node, "relu", {}, [node.input[0]])
    else:
        raise _Unsupported(f"Clip({lo:g}, {hi:g}): only Clip(0, 6) (relu6) and Clip(0) (relu) are activations")


def _prelu(c: _Context, node):
    x, s = node.input
    slope = c.const(s)
    if slope is None:
        raise _Unsupported("its slope is computed, not stored")
    shape = c.shape(x)
    r = _rank(c, x)
    if c.opset < 7 and slope.size == shape[1] and slope.size > 1:
        # before opset 7 a slope of C values is one per channel (axis 1), not broadcast
        slope = slope.reshape((shape[1],) + (1,) * (r - 2))
    try:
        full = np.broadcast_to(slope, shape[1:])
    except ValueError:
        raise _Unsupported(f"its slope {list(slope.shape)} does not broadcast over one sample "
                           f"{list(shape[1:])}") from None
    axis = 0 if r == 4 else r - 2          # netspec's channel axis of the sample
    per_channel = np.moveaxis(full, axis, 0).reshape(full.shape[axis], -1)
    if not np.all(per_channel == per_channel[:, :1]):
        raise _Unsupported("its slope varies along an axis other than the channels")
    c.add(node, "prelu", {}, [x], {"weight": per_channel[:, 0].copy()})


def _pool(op: str):
    def rule(c: _Context, node):
        x = node.input[0]
        before = c.pool_pads.get(x)     # a Pad of -inf before a max pool: the pool's padding
        if before is not None:
            x = before[0]
        _, C, H, W = _map_input(c, x, "pool")
        kernel = _ints(c.attr(node, "kernel_shape"))
        if len(kernel) != 2:
            raise _Unsupported(f"a {len(kernel)}-D pool")
        stride = _ints(c.attr(node, "strides"))
        dilation = _ints(c.attr(node, "dilations"))
        ceil = bool(c.attr(node, "ceil_mode", 0))
        if len(node.output) > 1 and node.output[1] and c.consumers.get(node.output[1]):
            raise _Unsupported("its indices output is read")
        if op == "avgpool" and dilation != (1, 1):
            raise _Unsupported("a dilated average pool")
        pads, sides = _pads(c, node, (H, W), kernel, stride, dilation, allow_same=not ceil)
        if before is not None:
            sides = tuple(a + b for a, b in zip(sides, before[1]))
            pads = _pad_spellings(sides, (H, W), kernel, stride, dilation, allow_same=not ceil)
        if pads is None:
            raise _Unsupported(f"asymmetric pads {sides} (top, bottom, left, right) that are not `same`")
        if pads[0] not in ("same", "valid") and any(p > k // 2 for p, k in zip(_as_pair(pads[0]), kernel)):
            raise _Unsupported("padding over half the kernel")
        attrs = {"kernel": (_pair(kernel),)}
        if stride != kernel:
            attrs["stride"] = (_pair(stride),)
        if pads != ("valid",):
            attrs["pad"] = pads
            if op == "avgpool" and c.attr(node, "count_include_pad", 0):
                attrs["include_pad"] = (True,)
        if dilation != (1, 1):
            attrs["dilation"] = (_pair(dilation),)
        if ceil:
            attrs["ceil"] = (True,)
        c.add(node, op, attrs, [x])
    return rule


def _as_pair(v):
    return v if isinstance(v, tuple) else (v, v)


def _flatten_like(c: _Context, n) -> bool:
    """A node that turns (N, C, 1, 1) into (N, C): a flatten from axis 1, a reshape to (N, -1)."""
    if n.op_type == "Flatten":
        return int(c.attr(n, "axis", 1)) == 1
    if n.op_type in ("Reshape", "Squeeze"):
        out = c.shapes.get(n.output[0])
        return out is not None and len(out) == 2
    return False


def _global_pool(op: str, window_op: str):
    """A global pool: netspec's global pool gives a vector C, ONNX's a map C@1x1; before a
    flatten (the usual classifier) it is the global pool and the flatten goes, otherwise the
    map is kept (adaptive_avgpool(1), or a max pool over the whole map)."""
    def rule(c: _Context, node):
        if _adaptive(c, node):
            return
        x = node.input[0]
        _, C, H, W = _map_input(c, x, "global pool")
        out = node.output[0]
        keep = True
        if node.op_type.startswith("Reduce"):
            axes = c.attr(node, "axes")
            if axes is None and len(node.input) > 1 and node.input[1]:
                axes = c.const(node.input[1])
                if axes is None:
                    raise _Unsupported("its axes are computed")
            axes = sorted(int(a) % 4 for a in (axes if axes is not None else [0, 1, 2, 3]))
            if axes != [2, 3]:
                raise _Unsupported(f"a reduction over axes {axes}, not H and W")
            keep = bool(c.attr(node, "keepdims", 1))
        consumers = c.data_consumers(out)
        if not keep:
            c.add(node, op, {}, [x])
        elif consumers and all(_flatten_like(c, n) for n in consumers):
            c.add(node, op, {}, [x])
            for n in consumers:
                c.skip.add(id(n))
                c.alias(n, out)
        elif window_op == "adaptive_avgpool":
            c.add(node, "adaptive_avgpool", {"size": (1,)}, [x])
        else:
            c.add(node, window_op, {"kernel": (_pair((H, W)),)}, [x])
    return rule


def _flatten(c: _Context, node):
    x = node.input[0]
    r = len(c.shape(x))
    if int(c.attr(node, "axis", 1)) % max(r, 1) != 1 and r > 1:
        raise _Unsupported("a flatten from an axis other than 1 mixes the batch")
    if r == 2:
        c.alias(node, x)
        return
    c.add(node, "flatten", {}, [x])


def _reshape(c: _Context, node):
    if c.fused.get(id(node), ("",))[0] == "dfl":
        _, xs, outputs, weight = c.fused[id(node)]
        bins = int(weight.shape[1])
        key = c.add(node, "dfl", {"bins": (bins,)} if bins != 16 else {}, xs, {"weight": weight},
                    output=outputs[0] if len(outputs) == 1 else f"{outputs[0]}#dfl")
        if len(outputs) > 1:     # one output per input: the layer's parts
            c.layers[-1].parts = len(outputs)
            for i, o in enumerate(outputs):
                c.values[o] = part_value(key, i)
                c.value_shapes[part_value(key, i)] = c.shape(o)[1:]
        return
    if c.fused.get(id(node), ("",))[0] == "shuffle":
        _, groups, source = c.fused[id(node)]
        c.add(node, "channel_shuffle", {"groups": (groups,)}, [source])
        return
    x = node.input[0]
    target = c.const(node.input[1]) if len(node.input) > 1 else None
    if node.op_type == "Reshape" and target is None:
        raise _Unsupported("its shape is computed from data")
    ins, out = c.shape(x), c.shape(node.output[0])
    if node.op_type in ("Squeeze", "Unsqueeze"):
        axes = c.attr(node, "axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = c.const(node.input[1])
        if axes is None or any(int(a) % (max(len(ins), len(out))) == 0 for a in axes):
            raise _Unsupported("it squeezes or adds the batch axis")
    if node.op_type == "Reshape":
        first = int(target[0]) if target.size else None
        rest_known = all(int(t) > 0 for t in target[1:])
        if not (first in (0, ins[0]) or (first == -1 and rest_known)):
            raise _Unsupported(f"a reshape to {list(map(int, target))} moves the batch axis")
    if out[0] != ins[0] or len(out) > 4 or len(out) < 2:
        raise _Unsupported(f"a reshape of {list(ins)} to {list(out)}")
    if out[1:] == ins[1:]:
        c.alias(node, x)
    elif len(out) == 2:
        c.add(node, "flatten", {}, [x])
    else:
        c.add(node, "reshape", {"shape": (tuple(out[1:]),)}, [x])


def _merge(op: str):
    def rule(c: _Context, node):
        a, b = node.input[0], node.input[1]
        ca, cb = c.const(a), c.const(b)
        if ca is not None or cb is not None:
            const = ca if ca is not None else cb
            neutral = 0.0 if op == "add" else 1.0
            x = a if ca is None else b
            if np.all(const == neutral) and c.shape(node.output[0]) == c.shape(x):
                c.alias(node, x)
                return
            _stored_operand(c, node, op, x, const)
            return
        sa, sb = c.shape(a), c.shape(b)
        if sa != sb:
            gate = op == "multiply" and len(sa) == 4 and len(sb) == 4 and sa[:2] == sb[:2] and (
                sa[2:] == (1, 1) or sb[2:] == (1, 1))
            if not gate:
                raise _Unsupported(f"it broadcasts {list(sa)} with {list(sb)}")
        c.add(node, op, {}, [a, b])
    return rule


def _stored_operand(c: _Context, node, op: str, x: str, const: np.ndarray) -> None:
    """A tensor times a stored per-channel scale (ConvNeXt's layer_scale), or plus a stored
    value per position (a transformer's position_embedding)."""
    shape = c.shape(x)
    r = len(shape)
    if op == "multiply" and const.size == (shape[1] if r == 4 else shape[-1]) and const.size > 1:
        along = (shape[1], 1, 1) if r == 4 else (shape[-1],)
        if np.broadcast_shapes(const.shape, shape) == shape and \
                const.reshape(-1).size == const.size and _per_channel(const, r):
            c.add(node, "layer_scale", {}, [x], {"layer_scale": const.reshape(along)})
            return
    if op == "add" and r == 3 and tuple(const.shape) == (1, *shape[1:]):
        c.add(node, "position_embedding", {}, [x], {"pos_embedding": const})
        return
    raise _Unsupported(f"it {'adds' if op == 'add' else 'multiplies by'} a constant")


def _per_channel(const: np.ndarray, rank: int) -> bool:
    """Whether a constant broadcast over a tensor of `rank` varies along its channels only."""
    dims = [d for d in const.shape[-(rank - 1):] if d != 1] if const.ndim else []
    channel_dim = const.shape[-3] if rank == 4 and const.ndim >= 3 else const.shape[-1] if const.ndim else 1
    return dims == [channel_dim]


def _adaptive(c: _Context, node) -> bool:
    """The end of an adaptive pool's pattern: its layer, made."""
    if c.fused.get(id(node), ("",))[0] != "adaptive":
        return False
    _, size, x = c.fused[id(node)]
    c.add(node, "adaptive_avgpool", {"size": (_pair(size),)}, [x])
    return True


def _concat(c: _Context, node):
    if _adaptive(c, node):
        return
    ins = [n for n in node.input if n]
    stored = [c.const(n) for n in ins]
    if len(ins) == 2 and stored[0] is not None and stored[1] is None and len(c.shape(ins[1])) == 3 \
            and int(c.attr(node, "axis", 1)) % 3 == 1 and stored[0].shape == (1, 1, c.shape(ins[1])[2]):
        # a stored token before the sequence: ViT's class token
        c.add(node, "class_token", {}, [ins[1]], {"class_token": stored[0]})
        return
    if any(v is not None for v in stored):
        raise _Unsupported("it joins a constant")
    r = len(c.shape(ins[0]))
    if not _channels_axis_ok(r, int(c.attr(node, "axis", 1))):
        raise _Unsupported("along an axis other than the channels")
    if len(ins) == 1:
        c.alias(node, ins[0])
        return
    c.add(node, "concat", {}, ins)


def _split(c: _Context, node):
    x = node.input[0]
    shape = c.shape(x)
    r = _rank(c, x)
    if not _channels_axis_ok(r, int(c.attr(node, "axis", 0))):
        raise _Unsupported("along an axis other than the channels")
    outs = list(node.output)
    widths = [c.shape(o)[int(c.attr(node, "axis", 0)) % r] for o in outs]
    if len(outs) < 2 or sum(widths) != shape[int(c.attr(node, "axis", 0)) % r]:
        raise _Unsupported(f"parts {widths}")
    parts = len(widths) if len(set(widths)) == 1 else tuple(widths)
    key = c.add(node, "split", {"parts": (parts,)}, [x])
    c.layers[-1].parts = len(outs)
    for i, o in enumerate(outs):
        c.values[o] = part_value(key, i)
        c.value_shapes[part_value(key, i)] = c.shape(o)[1:]


def _gather(c: _Context, node):
    x, index = node.input
    i = c.const(index)
    shape = c.shape(x)
    if i is None or np.ndim(i) != 0 or len(shape) != 3 or int(c.attr(node, "axis", 0)) % 3 != 1:
        raise _Unsupported("netspec reads one token of a sequence (Gather of one index on axis 1) only")
    index_value = int(i) % shape[1]
    c.add(node, "token", {"index": (index_value,)} if index_value else {}, [x])


def _pad(c: _Context, node):
    x = node.input[0]
    _map_input(c, x, "pad")
    mode = c.attr(node, "mode", "constant")
    if c.opset < 11:
        pads = c.attr(node, "pads")
        value = float(c.attr(node, "value", 0.0))
    else:
        pads = c.const(node.input[1])
        value = c.const(node.input[2]) if len(node.input) > 2 and node.input[2] else 0.0
        if pads is None or value is None:
            raise _Unsupported("its amounts are computed")
        if len(node.input) > 3 and node.input[3]:
            raise _Unsupported("padding chosen axes")
        value = float(np.asarray(value).reshape(-1)[0]) if np.size(value) else 0.0
    p = [int(v) for v in pads]
    if len(p) != 8 or any(p[i] for i in (0, 1, 4, 5)) or min(p) < 0:
        raise _Unsupported(f"pads {p}: netspec pads H and W, by amounts >= 0")
    modes = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}
    if mode not in modes:
        raise _Unsupported(f"mode {mode}")
    t, l, b, r = p[2], p[3], p[6], p[7]
    if mode == "constant" and value == -np.inf:
        # the padding of the max pools that read it (PyTorch pads by hand where its pools
        # cannot say TensorFlow's same): netspec's max pool ignores its padding as -inf would
        readers = c.data_consumers(node.output[0])
        if not readers or any(n.op_type != "MaxPool" for n in readers):
            raise _Unsupported("padding with -inf that is not a max pool's")
        c.pool_pads[node.output[0]] = (x, (t, b, l, r))
        c.alias(node, x)
        return
    if not np.isfinite(value):
        raise _Unsupported(f"padding with {value}")
    c.add(node, "pad", _pad_attrs(t, b, l, r, modes[mode], value), [x])


def _lrn(c: _Context, node):
    _map_input(c, node.input[0], "LRN")
    attrs = {"size": (int(c.attr(node, "size")),)}     # the writer drops netspec's defaults
    for onnx_name, ns_name, onnx_default in (("alpha", "alpha", 1e-4), ("beta", "beta", 0.75),
                                             ("bias", "k", 1.0)):
        attrs[ns_name] = (_float(c.attr(node, onnx_name, onnx_default)),)
    c.add(node, "lrn", attrs, [node.input[0]])


def _identity(c: _Context, node):
    c.alias(node, node.input[0])


def _dropout(c: _Context, node):
    if len(node.output) > 1 and node.output[1] and c.consumers.get(node.output[1]):
        raise _Unsupported("its mask output is read")
    c.alias(node, node.input[0])        # the identity at inference, which is what ONNX holds


def _resize(c: _Context, node):
    x = node.input[0]
    _, C, H, W = _map_input(c, x, "resize")
    out = c.shape(node.output[0])
    mode = c.attr(node, "mode", "nearest")
    if node.op_type == "Upsample":
        coord, nearest = "asymmetric", "floor"
    else:
        coord = c.attr(node, "coordinate_transformation_mode", "half_pixel")
        nearest = c.attr(node, "nearest_mode", "round_prefer_floor")
    attrs = {}
    if mode == "nearest" and coord == "asymmetric" and nearest == "floor":
        pass
    elif mode == "linear" and coord in ("half_pixel", "pytorch_half_pixel"):
        attrs["mode"] = ("bilinear",)
    elif mode == "linear" and coord == "align_corners":
        attrs["mode"] = ("bilinear",)
        attrs["align_corners"] = (True,)
    else:
        raise _Unsupported(f"mode {mode} with {coord} coordinates ({nearest}): netspec's upsample is "
                           "PyTorch's interpolate (nearest: asymmetric, floor; bilinear)")
    sh, sw = out[2] / H, out[3] / W
    if out[:2] != c.shape(x)[:2]:
        raise _Unsupported("it resizes the batch or the channels")
    if sh == int(sh) and sw == int(sw):
        scale = _pair((int(sh), int(sw)))
        if scale != 2:
            attrs["scale"] = (scale,)
    else:
        attrs["size"] = (_pair((out[2], out[3])),)
    c.add(node, "upsample", attrs, [x])


def _transpose(c: _Context, node):
    if c.fused.get(id(node), ("",))[0] == "to_tokens":
        c.add(node, "to_tokens", {}, [c.fused[id(node)][1]])
        return
    raise _Unsupported(f"a transpose {list(c.attr(node, 'perm', []))} outside the patterns netspec "
                       "reads (channels last around a layer, to_tokens, a channel shuffle)")


TRANSLATE = {
    # ONNX op type: the rule that writes it as netspec layers
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "BatchNormalization": _batchnorm,
    "LayerNormalization": _layer_norm,
    "Relu": _simple("relu"),
    "Sigmoid": _sigmoid,
    "Tanh": _simple("tanh"),
    "Elu": _simple("elu", alpha=("alpha", 1.0)),
    "LeakyRelu": _simple("leaky_relu", alpha=("alpha", 0.01)),
    "Selu": _selu,
    "HardSigmoid": _hardsigmoid,
    "HardSwish": _simple("hardswish"),
    "Gelu": _gelu,
    "Softmax": _softmax("softmax"),
    "LogSoftmax": _softmax("log_softmax"),
    "Clip": _clip,
    "PRelu": _prelu,
    "MaxPool": _pool("maxpool"),
    "AveragePool": _pool("avgpool"),
    "GlobalAveragePool": _global_pool("global_avgpool", "adaptive_avgpool"),
    "ReduceMean": _global_pool("global_avgpool", "adaptive_avgpool"),
    "GlobalMaxPool": _global_pool("global_maxpool", "maxpool"),
    "ReduceMax": _global_pool("global_maxpool", "maxpool"),
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Squeeze": _reshape,
    "Unsqueeze": _reshape,
    "Add": _merge("add"),
    "Mul": _merge("multiply"),
    "Concat": _concat,
    "Split": _split,
    "Transpose": _transpose,
    "Gather": _gather,
    "Pad": _pad,
    "LRN": _lrn,
    "Identity": _identity,
    "Dropout": _dropout,
    "Resize": _resize,
    "Upsample": _resize,
}

assert all(layer_op in OPS for layer_op in ("conv", "depthwise_conv", "dense", "batchnorm", "silu",
                                             "relu6", "global_avgpool", "upsample", "pad"))


# ------------------------------------------------------------------ patterns across nodes

def _find_patterns(c: _Context) -> None:
    """Nodes a rule writes together with another: x * Sigmoid(x) (silu), x * HardSigmoid(x)
    (hardswish), MatMul + Add of a stored bias (dense)."""
    for node in c.model.graph.node:
        if node.op_type in ("Sigmoid", "HardSigmoid"):
            x, y = node.input[0], node.output[0]
            users = c.consumers.get(y, [])
            if len(users) == 1 and users[0].op_type == "Mul" and sorted(users[0].input) == sorted([x, y]):
                c.fused[id(node)] = ("activation", users[0].output[0])
                c.skip.add(id(users[0]))
        elif node.op_type == "Transpose" and list(c.attr(node, "perm", [])) == [0, 2, 1, 3, 4]:
            _channel_shuffle_pattern(c, node)
        elif node.op_type == "Transpose":
            _tokens_pattern(c, node)
        elif node.op_type == "MatMul":
            users = c.consumers.get(node.output[0], [])
            if len(users) == 1 and users[0].op_type == "Add":
                other = [n for n in users[0].input if n != node.output[0]]
                bias = c.const(other[0]) if len(other) == 1 else None
                B = c.const(node.input[1])
                if bias is not None and B is not None and B.ndim == 2 and bias.size == B.shape[1] \
                        and c.shapes.get(users[0].output[0]) == c.shapes.get(node.output[0]):
                    c.fused[id(node)] = ("dense", bias.reshape(-1), users[0].output[0])
                    c.skip.add(id(users[0]))
    _dfl_patterns(c)
    for node in c.model.graph.node:
        if node.op_type == "Softmax" and id(node) not in c.skip:
            _attention_pattern(c, node)
    for node in reversed(c.model.graph.node):      # a pattern's last node first: its parts go
        if node.op_type in ("Concat", "ReduceMean") and id(node) not in c.skip:
            _adaptive_pool_pattern(c, node)
    for node in c.model.graph.node:      # after the dense layers: a region may end at one's bias
        if node.op_type == "Transpose" and id(node) not in c.skip and id(node) not in c.fused:
            _channels_last_pattern(c, node)


def _channel_shuffle_pattern(c: _Context, transpose) -> None:
    """Reshape (N, C, H, W) -> (N, g, C/g, H, W), Transpose(0, 2, 1, 3, 4), Reshape back:
    PyTorch's ChannelShuffle(g), netspec's channel_shuffle(g)."""
    before = [n for n in c.model.graph.node if transpose.input[0] in n.output]
    after = c.consumers.get(transpose.output[0], [])
    if len(before) != 1 or len(after) != 1 or before[0].op_type != "Reshape" or after[0].op_type != "Reshape":
        return
    first, last = before[0], after[0]
    ins, mid, out = (c.shapes.get(v) for v in (first.input[0], first.output[0], last.output[0]))
    if not (ins and mid and out) or len(ins) != 4 or len(mid) != 5 or out != ins:
        return
    if mid[0] != ins[0] or mid[1] * mid[2] != ins[1] or mid[3:] != ins[2:]:
        return
    if len(c.consumers.get(first.output[0], [])) != 1:
        return
    c.skip.update((id(first), id(transpose)))
    c.fused[id(last)] = ("shuffle", int(mid[1]), first.input[0])
    c.reads[id(last)] = [first.input[0]]


CHANNELS_LAST = {(0, 2, 3, 1): (0, 3, 1, 2), (0, 2, 1): (0, 2, 1)}


def _channels_last_pattern(c: _Context, transpose) -> None:
    """Transpose to channels last, one layer over the last axis (LayerNormalization; MatMul of a
    stored weight, with its bias; BatchNormalization of a sequence's features), Transpose back:
    the layer over netspec's channels (layer_norm of a map, dense per position, batchnorm)."""
    perm = tuple(c.attr(transpose, "perm", ()))
    users = c.consumers.get(transpose.output[0], [])
    if perm not in CHANNELS_LAST or len(users) != 1:
        return
    layer = users[0]
    wanted = {4: ("LayerNormalization", "MatMul"), 3: ("BatchNormalization",)}[len(perm)]
    if layer.op_type not in wanted or layer.input[0] != transpose.output[0]:
        return
    end = c.fused[id(layer)][2] if c.fused.get(id(layer), ("",))[0] == "dense" else layer.output[0]
    after = c.consumers.get(end, [])
    if len(after) != 1 or after[0].op_type != "Transpose" \
            or tuple(c.attr(after[0], "perm", ())) != CHANNELS_LAST[perm]:
        return
    c.skip.update((id(transpose), id(after[0])))
    c.region[id(layer)] = (transpose.input[0], after[0].output[0])
    c.reads[id(layer)] = [transpose.input[0]]


def _attention_pattern(c: _Context, softmax) -> None:
    """Multi-head self-attention as netspec's exporter (and F.multi_head_attention_forward)
    writes it: one projection of x to q, k, v (MatMul + Add, Split in three), each cut into
    heads (Reshape, Transpose), softmax(q * scale @ k^T) @ v, the heads joined (Transpose,
    Reshape) and projected (MatMul + Add): netspec's attention(heads)."""
    made = {o: n for n in c.model.graph.node for o in n.output}

    def source(value, op, perm=None):
        n = made.get(value)
        if n is None or n.op_type != op or id(n) in c.skip:
            return None
        if perm is not None and list(c.attr(n, "perm", [])) != perm:
            return None
        return n

    scores = source(softmax.input[0], "MatMul")
    users = c.consumers.get(softmax.output[0], [])
    if scores is None or len(users) != 1 or users[0].op_type != "MatMul" or users[0].input[0] != softmax.output[0]:
        return
    weighted = users[0]
    scaled, key_t = source(scores.input[0], "Mul"), source(scores.input[1], "Transpose", [0, 1, 3, 2])
    if scaled is None or key_t is None:
        return
    q_in = [v for v in scaled.input if c.const(v) is None]
    scale = [c.const(v) for v in scaled.input if c.const(v) is not None]
    if len(q_in) != 1 or len(scale) != 1 or np.size(scale[0]) != 1:
        return
    heads_of = [source(v, "Transpose", [0, 2, 1, 3]) for v in (q_in[0], key_t.input[0], weighted.input[1])]
    if None in heads_of:
        return
    reshapes = [source(t.input[0], "Reshape") for t in heads_of]
    if None in reshapes:
        return
    split = made.get(reshapes[0].input[0])
    if split is None or split.op_type != "Split" or [r.input[0] for r in reshapes] != list(split.output):
        return
    qkv = made.get(split.input[0])
    fused_in = next((n for n in c.model.graph.node if c.fused.get(id(n), ("",))[0] == "dense"
                     and c.fused[id(n)][2] == split.input[0]), None)
    project_in = fused_in or (qkv if qkv is not None and qkv.op_type == "MatMul" else None)
    if project_in is None or c.const(project_in.input[1]) is None:
        return
    after = c.consumers.get(weighted.output[0], [])
    joined_t = after[0] if len(after) == 1 and after[0].op_type == "Transpose" \
        and list(c.attr(after[0], "perm", [])) == [0, 2, 1, 3] else None
    joined = c.consumers.get(joined_t.output[0], []) if joined_t is not None else []
    if len(joined) != 1 or joined[0].op_type != "Reshape":
        return
    out_users = c.consumers.get(joined[0].output[0], [])
    if len(out_users) != 1 or out_users[0].op_type != "MatMul" or c.const(out_users[0].input[1]) is None:
        return
    project_out = out_users[0]
    x = project_in.input[0]
    shape, mid = c.shapes.get(x), c.shapes.get(reshapes[0].output[0])
    if not shape or not mid or len(shape) != 3 or len(mid) != 4:
        return
    heads, d = mid[2], mid[3]
    if heads * d != shape[2] or abs(float(np.asarray(scale[0]).reshape(())) - 1 / math.sqrt(d)) > 1e-6:
        return
    w_in, w_out = c.const(project_in.input[1]).T, c.const(project_out.input[1]).T
    params = {"in_proj_weight": w_in, "out_proj.weight": w_out}
    bias_in = c.fused[id(project_in)][1] if fused_in is not None else None
    bias_out = c.fused[id(project_out)][1] if c.fused.get(id(project_out), ("",))[0] == "dense" else None
    if (bias_in is None) != (bias_out is None):
        return
    if bias_in is not None:
        params.update({"in_proj_bias": bias_in, "out_proj.bias": bias_out})
    output = c.fused[id(project_out)][2] if bias_out is not None else project_out.output[0]
    for n in (project_in, split, *reshapes, *heads_of, scaled, key_t, scores, softmax, weighted,
              joined_t, joined[0]):
        c.skip.add(id(n))
    c.fused[id(project_out)] = ("attention", heads, params, output, x)
    c.reads[id(project_out)] = [x]


def _axis_means(c: _Context, made: dict, value: str, axis: int):
    """(source, [(start, end)...], nodes) when `value` is the means over windows of one axis of
    a source: ReduceMean(Slice(source, start, end, axis), axis), side by side (Concat along the
    axis) when there are several; None otherwise."""
    node = made.get(value)
    if node is None:
        return None
    means = [made.get(v) for v in node.input] if node.op_type == "Concat" and \
        int(c.attr(node, "axis", 0)) % 4 == axis else [node]
    nodes, windows, source = ([node] if means != [node] else []), [], None
    for mean in means:
        if mean is None or mean.op_type != "ReduceMean" or not c.attr(mean, "keepdims", 1):
            return None
        axes = c.attr(mean, "axes")
        if axes is None and len(mean.input) > 1:
            axes = c.const(mean.input[1])
        cut = made.get(mean.input[0])
        if axes is None or [int(a) % 4 for a in np.atleast_1d(axes)] != [axis] or cut is None \
                or cut.op_type != "Slice" or len(cut.input) < 4:
            return None
        start, end, cut_axes = (c.const(v) for v in cut.input[1:4])
        if start is None or end is None or cut_axes is None or [int(a) % 4 for a in np.atleast_1d(cut_axes)] != [axis]:
            return None
        if source not in (None, cut.input[0]) or (len(cut.input) > 4 and cut.input[4]):
            return None
        source = cut.input[0]
        windows.append((int(np.atleast_1d(start)[0]), int(np.atleast_1d(end)[0])))
        nodes += [mean, cut]
    return source, windows, nodes


def _adaptive_pool_pattern(c: _Context, last) -> None:
    """An adaptive average pool as means over windows, rows then columns (what netspec's
    exporter writes when the windows do not tile the map): adaptive_avgpool((h, w))."""
    made = {o: n for n in c.model.graph.node for o in n.output}
    cols = _axis_means(c, made, last.output[0], 3)
    rows = _axis_means(c, made, cols[0], 2) if cols else None
    if rows is None:
        return
    x = rows[0]
    shape = c.shapes.get(x)
    if not shape or len(shape) != 4:
        return
    for size, windows in ((shape[2], rows[1]), (shape[3], cols[1])):
        n = len(windows)
        if windows != [(i * size // n, -(-(i + 1) * size // n)) for i in range(n)]:
            return      # not PyTorch's adaptive windows
    for node in rows[2] + cols[2]:
        if node is not last:
            c.skip.add(id(node))
    c.fused[id(last)] = ("adaptive", (len(rows[1]), len(cols[1])), x)
    c.reads[id(last)] = [x]


def _dfl_patterns(c: _Context) -> None:
    """YOLOv8's DFL as ultralytics computes it: each box map (N, 4*bins, H, W) Reshape to
    (N, 4, bins, H*W), Transpose(0, 2, 1, 3), Softmax over the bins, a Conv with the fixed
    (1, bins, 1, 1) weight, Reshape to (N, 4, H, W); the maps that share one weight are one
    dfl layer of several inputs and outputs."""
    made = {o: n for n in c.model.graph.node for o in n.output}
    groups: dict[str, list] = {}
    for conv in c.model.graph.node:
        if conv.op_type != "Conv" or len(conv.input) < 2 or c.const(conv.input[1]) is None:
            continue
        weight = c.const(conv.input[1])
        softmax = made.get(conv.input[0])
        transpose = made.get(softmax.input[0]) if softmax is not None and softmax.op_type == "Softmax" else None
        cut = made.get(transpose.input[0]) if transpose is not None and transpose.op_type == "Transpose" else None
        after = c.consumers.get(conv.output[0], [])
        if weight.ndim != 4 or weight.shape[0] != 1 or weight.shape[2:] != (1, 1) or cut is None \
                or cut.op_type != "Reshape" or int(c.attr(softmax, "axis", -1)) % 4 != 1 \
                or list(c.attr(transpose, "perm", [])) != [0, 2, 1, 3] \
                or len(after) != 1 or after[0].op_type != "Reshape" or len(conv.input) > 2:
            continue
        bins = weight.shape[1]
        x = cut.input[0]
        ins, out = c.shapes.get(x), c.shapes.get(after[0].output[0])
        if not ins or not out or len(ins) != 4 or ins[1] != 4 * bins or out != (ins[0], 4, *ins[2:]):
            continue
        groups.setdefault(conv.input[1], []).append((x, after[0], [cut, transpose, softmax, conv]))
    for weight_name, members in groups.items():
        last = members[-1][1]
        for _, final, nodes in members:
            c.skip.update(id(n) for n in nodes)
            if final is not last:
                c.skip.add(id(final))
        xs = [x for x, _, _ in members]
        c.fused[id(last)] = ("dfl", xs, [f.output[0] for _, f, _ in members], c.const(weight_name))
        c.reads[id(last)] = xs


def _tokens_pattern(c: _Context, transpose) -> None:
    """Reshape (N, C, H, W) -> (N, C, H*W), Transpose(0, 2, 1): netspec's to_tokens."""
    before = [n for n in c.model.graph.node if transpose.input[0] in n.output]
    if tuple(c.attr(transpose, "perm", ())) != (0, 2, 1) or len(before) != 1 \
            or before[0].op_type != "Reshape" or len(c.consumers.get(before[0].output[0], [])) != 1:
        return
    ins, mid = c.shapes.get(before[0].input[0]), c.shapes.get(before[0].output[0])
    if not ins or not mid or len(ins) != 4 or mid != (ins[0], ins[1], ins[2] * ins[3]):
        return
    c.skip.add(id(before[0]))
    c.fused[id(transpose)] = ("to_tokens", before[0].input[0])
    c.reads[id(transpose)] = [before[0].input[0]]


def _fold_constants(c: _Context) -> list:
    """Evaluate the nodes that read no input (Constant, shape arithmetic, a weight's Transpose)
    and the Shape of a tensor whose shape is known; return the rest, in order."""
    from onnx.reference import ReferenceEvaluator
    onnx = c.onnx
    rest = []
    for node in c.model.graph.node:
        if node.op_type == "Shape" and node.input[0] not in c.consts and node.input[0] in c.shapes \
                and not node.attribute:
            c.consts[node.output[0]] = np.array(c.shapes[node.input[0]], dtype=np.int64)
            continue
        if node.op_type == "CastLike" and node.input[0] in c.consts and node.input[1] not in c.consts:
            # a constant cast like a data tensor: netspec's tensors are float32
            c.consts[node.output[0]] = c.consts[node.input[0]].astype(np.float32)
            c.shapes[node.output[0]] = tuple(c.consts[node.output[0]].shape)
            continue
        inputs = [n for n in node.input if n]
        sizes = [math.prod(c.shapes[o]) for o in node.output if o in c.shapes]
        if any(size > MAX_FOLDED_ELEMENTS for size in sizes):
            rest.append(node)      # translated (or refused) rather than computed here
            continue
        if node.domain in ("", "ai.onnx") and all(n in c.consts for n in inputs) \
                and node.op_type not in ("RandomNormal", "RandomUniform", "RandomNormalLike",
                                         "RandomUniformLike", "Multinomial", "Bernoulli"):
            try:
                graph = onnx.helper.make_graph(
                    [node], "fold", [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None)
                                     for n in dict.fromkeys(inputs)],
                    [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None)
                     for o in node.output if o])
                model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", c.opset)])
                results = ReferenceEvaluator(model).run(None, {n: c.consts[n] for n in inputs})
                for name, value in zip([o for o in node.output if o], results):
                    c.consts[name] = np.asarray(value)
                    c.shapes[name] = tuple(np.shape(value))
                continue
            except Exception:    # noqa: BLE001 -- a node we cannot fold is translated (or refused)
                pass
        rest.append(node)
    return rest


# ------------------------------------------------------------------ the whole model

def _identifier(name: str, taken: set, fallback: str) -> str:
    from ..lang.parser import KEYWORDS
    ident = re.sub(r"[^A-Za-z0-9_]", "_", name).strip("_") or fallback
    if ident[0].isdigit():
        ident = f"{fallback}_{ident}"
    base, k = ident, 2
    while ident in KEYWORDS or ident in OPS or ident in taken:
        ident = f"{base}_{k}"
        k += 1
    taken.add(ident)
    return ident


def translate(model) -> Translated:
    """The model as netspec layers; UnsupportedModel lists every node no rule translates."""
    c = _Context(model)
    names: set[str] = set()
    inputs = []
    problems = []
    poisoned: set[str] = set()
    for value in c.inputs:
        shape = c.shapes.get(value.name)
        if shape is None or len(shape) not in (2, 3, 4):
            problems.append(("input", value.name, f"a rank-{len(shape or ())} tensor: netspec takes a "
                             "vector (N, F), a sequence (N, T, F) or a feature map (N, C, H, W)"))
            poisoned.add(value.name)
            continue
        name = _identifier(value.name, names, "input")
        c.values[value.name] = name
        c.value_shapes[name] = shape[1:]
        inputs.append((name, shape[1:]))
    nodes = _fold_constants(c)
    _find_patterns(c)
    for node in nodes:
        if id(node) in c.skip:
            continue
        rule = TRANSLATE.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        name = node.name or (node.output[0] if node.output else "?")
        if rule is None:
            what = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
            problems.append((what, name, "no netspec op"))
            poisoned.update(node.output)
            continue
        # a node that ends a pattern reads what the pattern began with
        data_inputs = c.reads.get(id(node)) or [n for n in node.input if n and n not in c.consts]
        if any(n in poisoned for n in data_inputs):
            poisoned.update(node.output)
            continue
        try:
            if any(n not in c.values for n in data_inputs):
                raise _Unsupported("it reads a value netspec did not make")
            rule(c, node)
        except _Unsupported as e:
            problems.append((node.op_type, name, str(e)))
            poisoned.update(node.output)
    outputs, output_names = [], {}
    for value in model.graph.output:
        if value.name in poisoned:
            continue
        if value.name not in c.values:
            if value.name in c.consts:
                problems.append(("output", value.name, "a constant output"))
            else:
                problems.append(("output", value.name, "made by no translated node"))
            continue
        if c.values[value.name] in dict(inputs):
            problems.append(("output", value.name, "the output is an input unchanged"))
            continue
        outputs.append(c.values[value.name])
        output_names.setdefault(c.values[value.name], _identifier(value.name, names, "output"))
    if problems:
        raise UnsupportedModel(problems)
    layers = _reachable(c.layers, outputs)
    return Translated(inputs, layers, list(dict.fromkeys(outputs)), c.value_shapes, output_names)


def _reachable(layers: list[Layer], outputs: list[str]) -> list[Layer]:
    """The layers some output reads (a graph's dead ends dropped, as the ONNX runtime would)."""
    by_key = {l.key: l for l in layers}
    needed, stack = set(), [producer(v) for v in outputs]
    while stack:
        v = stack.pop()
        if v in needed or v not in by_key:
            continue
        needed.add(v)
        stack.extend(producer(u) for u in by_key[v].inputs)
    return [l for l in layers if l.key in needed]


def import_onnx(path, network: str | None = None) -> Imported:
    """An ONNX file as a formatted spec, its checked graph and its weights by netspec name."""
    from .. import pipeline
    from ..errors import SpecError
    from ..lang.formatter import format_text
    model = read_model(path)
    translated = translate(model)
    name = network or _identifier(Path(path).stem, set(), "model")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z_0-9]*", name):
        raise OnnxImportError(f"'{name}' is not a network name (letters, digits and _)")
    source = Path(path).name
    text = write_spec(translated, name, header=f"# Imported by `netspec import` from {source}.\n")
    text = format_text(text, f"{name}.net")
    try:
        _, graph = pipeline.loads(text, f"{name}.net")
    except SpecError as e:   # a translation netspec refuses: a bug here, said plainly
        raise OnnxImportError(f"the spec written for {source} does not check: {e}") from None
    weights = name_weights(translated, graph)
    return Imported(text, weights, graph, translated, name)


def name_weights(translated: Translated, graph) -> dict[str, np.ndarray]:
    """Each layer's parameters under its node's name in the checked graph. The nodes are
    matched by structure: a layer's node has its op and reads the nodes of the layer's inputs
    (among equal candidates, the first in the graph's order, which is the text's)."""
    value_of = {name: name for name, _ in translated.inputs}
    readers: dict[str, list] = {}
    for node in graph.nodes():
        for v in node.inputs:
            readers.setdefault(v, []).append(node)
    used: set[str] = set()
    weights = {}
    for layer in translated.layers:
        want = [value_of[v] for v in layer.inputs]
        candidates = [n for n in readers.get(want[0], []) if n.name not in used and n.op == layer.op
                      and list(n.inputs) == want
                      and {p.name: p.shape for p in n.params} == {k: v.shape for k, v in layer.params.items()}]
        if not candidates:
            raise OnnxImportError(f"internal: no node of the written spec computes ONNX node "
                                  f"'{layer.source}' ({layer.op})")
        node = candidates[0]
        used.add(node.name)
        value_of[layer.key] = node.name
        for i in range(len(node.parts)):       # a split's parts: NODE:0, NODE:1 ...
            value_of[part_value(layer.key, i)] = f"{node.name}:{i}"
        for pname, array in layer.params.items():
            weights[f"{node.name}.{pname}"] = array
    missing = [f"{n.name}.{p.name}" for n in graph.nodes() for p in n.params
               if f"{n.name}.{p.name}" not in weights]
    if missing:
        raise OnnxImportError(f"internal: no ONNX tensor for {', '.join(missing[:5])}")
    return weights


def save_weights(imported: Imported, path) -> None:
    """The weights as netspec writes a weights file (safetensors or npz, the network's
    fingerprint in its metadata), atomically."""
    from ..fingerprint import metadata
    from ..runtime.checkpoint import save_arrays
    from ..training.metadata import WEIGHTS_FORMAT
    save_arrays(path, imported.weights, {"network": imported.network, "format": WEIGHTS_FORMAT,
                                         **metadata(imported.graph, "float32")})
