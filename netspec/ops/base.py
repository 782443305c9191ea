"""What an op is, and the registry that is the only way to learn about ops.

An op is defined once, by a subclass of `Op` registered with `@register`:
its attributes (positional order, defaults, validation), its arity, its traits
(what passes, fusion, lowering and the initialisers may assume of it), its shape
rule, its parameters, its cost and its window (for receptive fields), its lowering
to ISA instructions and its vjp, and what the tests need of it: its cases (ops/cases.py),
a float64 NumPy reference (ops/reference/) and the PyTorch rule of the oracle.

Shapes are tuples without the batch dimension, in the spec's own order:
`(C, H, W)` for feature maps (written `C@HxW`), `(T, F)` for sequences of T tokens of F
features each (written `TxF`), `(F,)` for flat vectors.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..errors import AttrError, ShapeError
from .cases import Case, ErrorCase, Run

Shape = tuple[int, ...]

REQUIRED = object()  # marks an attribute without default


class OpKind(enum.Enum):
    """Op families: passes, diagrams and summaries group ops by these."""

    INPUT = "input"
    CONV = "conv"
    POOL = "pool"
    PAD = "pad"
    NORM = "norm"
    ACTIVATION = "activation"
    MERGE = "merge"
    SPLIT = "split"     # one input, several outputs (Op.parts)
    DENSE = "dense"
    RESHAPE = "reshape"
    RESAMPLE = "resample"        # moves pixels or channels (upsample, channel_shuffle)
    REGULARIZE = "regularize"
    IDENTITY = "identity"
    TOKENS = "tokens"           # sequences: made from a map, a token added, positions, one read
    ATTENTION = "attention"
    FUSED = "fused"


class Purity(enum.Enum):
    """Whether an op's output is a function of its inputs and attributes alone."""

    PURE = "pure"       # equal calls on equal inputs give equal values: they may be merged
    RANDOM = "random"   # draws from the run's random generator (dropout)
    SOURCE = "source"   # reads no tensor but the world outside: a graph input


class Fusion(enum.Enum):
    """An op's part in a group the fuse pass merges (netspec/passes.py, ops/fused.py)."""

    NONE = "none"
    ANCHOR = "anchor"           # a weight layer that starts a group and lowers as itself
    ADD = "add"                 # adds its other inputs to the value the group carries
    ACTIVATION = "activation"   # an elementwise function of that value: one fused_map step
    POOL = "pool"               # a pool: a step when its windows tile its input exactly


@dataclass(frozen=True)
class Traits:
    """What the rest of the compiler may assume of an op, declared once on it (`Op.traits`)
    and read from the registry: no other module lists op names for behaviour."""

    purity: Purity = Purity.PURE
    # each output element is a function of the same element of each input (and of
    # per-channel parameters)
    elementwise: bool = False
    # only reinterprets its input's elements in channel-major order (flatten, reshape): a
    # chain of such ops is its last one, and one that keeps its input's shape is the identity
    shape_only: bool = False
    fusion: Fusion = Fusion.NONE
    # a batch norm right after it folds into it: its weights' first axis is its output
    # channel, and its lowering computes with NodeContext.folded(weight, bias)
    folds_batchnorm: bool = False
    # a parameter-free activation function: a layer's act= may name it
    activation: bool = False
    # the initialiser suited to the weights of a layer this activation follows (He for the
    # ReLU family, LeCun for SELU; Geron, ch. 11); None: the weights' own default
    weight_init: str | None = None
    # between a weight layer and its activation, it leaves the activation's weight_init the
    # right choice (a batch norm, dropout, a residual add, identity)
    init_looks_through: bool = False
    # it turns logits into probabilities, and these losses take its input as their logits
    # (folding it into the loss, stably); the first is the default loss of a network ending
    # in it, and a network ending in it reports losses on probabilities
    logit_losses: tuple[str, ...] = ()
    # a regulariser that only acts while training (dropout, drop_path): the inference graph
    # drops it (the "dropout" pass)
    identity_at_inference: bool = False

    def __post_init__(self):
        if self.fusion in (Fusion.ADD, Fusion.ACTIVATION) and not self.elementwise:
            raise ValueError(f"a fused {self.fusion.value} step must be elementwise")
        if self.weight_init is not None and not self.activation:
            raise ValueError("only an activation chooses its layer's weight initialiser")


# ---------------------------------------------------------------- attributes

@dataclass(frozen=True)
class Attr:
    """One attribute: name, validator (value -> normalised value), default."""

    name: str
    check: Callable[[Any], Any]
    default: Any = REQUIRED
    doc: str = ""


class Attrs(dict):
    """Validated attribute values; readable as `a.kernel` as well as `a["kernel"]`."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(name) from e


def _describe(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, tuple):
        return "(" + ", ".join(_describe(v) for v in value) + ")"
    return str(value)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def pos_int(v):
    if not _is_int(v) or v < 1:
        raise AttrError(f"expected a positive integer, got {_describe(v)}")
    return v


def nonneg_int(v):
    if not _is_int(v) or v < 0:
        raise AttrError(f"expected an integer >= 0, got {_describe(v)}")
    return v


def pos_pair(v):
    """An int or a pair of ints, each >= 1, normalised to (h, w)."""
    pair = (v, v) if _is_int(v) else v
    if not (isinstance(pair, tuple) and len(pair) == 2 and all(_is_int(x) and x >= 1 for x in pair)):
        raise AttrError(f"expected a positive integer or a pair (h, w) of them, got {_describe(v)}")
    return pair


def pos_number_pair(v):
    """A number or a pair (h, w) of numbers, each finite and > 0 (a scale factor), normalised
    to (h, w) floats."""
    pair = v if isinstance(v, tuple) else (v, v)
    if not (len(pair) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                   and math.isfinite(x) and x > 0 for x in pair)):
        raise AttrError(f"expected a positive number or a pair (h, w) of them, got {_describe(v)}")
    return tuple(float(x) for x in pair)


def nonneg_pair(v):
    if _is_int(v):
        v = (v, v)
    if not (isinstance(v, tuple) and len(v) == 2 and all(_is_int(x) and x >= 0 for x in v)):
        raise AttrError(f"expected an integer >= 0 or a pair (h, w) of them, got {_describe(v)}")
    return v


def padding(v):
    """'same', 'valid', an int, or a pair (h, w) of symmetric paddings."""
    if v in ("same", "valid"):
        return v
    try:
        return nonneg_pair(v)
    except AttrError:
        raise AttrError(f"padding must be same, valid, an integer or a pair (h, w), got {_describe(v)}",
                        hint="same keeps ceil(input / stride); valid uses no padding") from None


def boolean(v):
    if not isinstance(v, bool):
        raise AttrError(f"expected true or false, got {_describe(v)}")
    return v


def number(lo=-math.inf, hi=math.inf, lo_open=False, hi_open=False):
    """A float in [lo, hi] (open ends where asked)."""
    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise AttrError(f"expected a number, got {_describe(v)}")
        v = float(v)
        if v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi):
            left = "(" if lo_open else "["
            right = ")" if hi_open else "]"
            raise AttrError(f"expected a number in {left}{lo:g}, {hi:g}{right}, got {v:g}")
        return v
    return check


def choice(*options):
    def check(v):
        if v is None and "none" in options:  # the keyword `none`
            return "none"
        if v not in options:
            raise AttrError(f"expected one of {', '.join(options)}, got {_describe(v)}")
        return v
    return check


def int_tuple(v):
    """A shape: an int or a tuple of positive ints (-1 allowed once, inferred)."""
    if _is_int(v):
        v = (v,)
    if not (isinstance(v, tuple) and v and all(_is_int(x) and (x >= 1 or x == -1) for x in v)
            and sum(x == -1 for x in v) <= 1):
        raise AttrError(f"expected a shape such as (1024, 1, 1), got {_describe(v)}")
    return v


def count_or_widths(v):
    """A count of equal parts (2 or more), or the parts' widths (two or more positive ints)."""
    if _is_int(v) and v >= 2:
        return v
    if isinstance(v, tuple) and len(v) >= 2 and all(_is_int(w) and w >= 1 for w in v):
        return v
    raise AttrError(f"expected a count of equal parts (2 or more) or the parts' widths, such "
                    f"as (16, 48), got {_describe(v)}")


# ---------------------------------------------------------------- parameters

@dataclass(frozen=True)
class Param:
    """A parameter tensor of a node. Names follow PyTorch (weight, bias, running_mean...)."""

    name: str
    shape: Shape
    init: str  # initialiser name: glorot_uniform, zeros, ones, he_normal, constant:0.25, normal:0.02 ...
    trainable: bool = True

    @property
    def size(self) -> int:
        return math.prod(self.shape)


# ---------------------------------------------------------------- ops


# Keras' and PyTorch's argument names -> netspec's, for the hint when a spec uses one
KERAS_AND_TORCH_NAMES = {
    "activation": "act", "kernel_size": "kernel", "padding": "pad", "strides": "stride",
    "dilation_rate": "dilation", "use_bias": "bias", "out_channels": "filters",
    "out_features": "units", "p": "rate", "pool_size": "kernel", "num_heads": "heads",
    "eps": "epsilon", "ceil_mode": "ceil", "scale_factor": "scale",
}

class Op:
    """Base of every op. Subclasses set the class attributes and override rules."""

    name: str = ""
    kind: OpKind = OpKind.IDENTITY
    traits: Traits = Traits()
    attrs: tuple[Attr, ...] = ()
    min_inputs: int = 1
    max_inputs: int | None = 1  # None: any number
    doc: str = ""
    # parameters that l1= / l2= weight penalties apply to (Keras' kernel_regularizer: the
    # weights, not biases or batch-norm scales)
    penalised: tuple[str, ...] = ()
    # made by the compiler (a pass), never written in a spec: kept out of OPS, the language's ops
    internal: bool = False
    # the operator that writes the op between tensors (`a + b`); a chain `a + b + c` is one
    # node when the op takes any number of inputs, else nested nodes, left to right
    infix: str | None = None

    # -- attributes
    def make_attrs(self, positional: Sequence[Any], keywords: dict[str, Any]) -> Attrs:
        """Bind and validate attributes. Raises AttrError naming the attribute."""
        names = [a.name for a in self.attrs]
        if len(positional) > len(names):
            raise AttrError(f"{self.name} takes at most {len(names)} positional argument"
                            f"{'s' if len(names) != 1 else ''}, got {len(positional)}",
                            hint=self.signature())
        values: dict[str, Any] = dict(zip(names, positional))
        for key, v in keywords.items():
            if key not in names:
                from ..errors import did_you_mean
                known = KERAS_AND_TORCH_NAMES.get(key)
                hint = (did_you_mean(key, names)
                        or (f"netspec calls {key} '{known}'" if known in names else self.signature()))
                raise AttrError(f"{self.name} has no attribute '{key}'", hint=hint, arg=key)
            if key in values:
                raise AttrError(f"{self.name} got '{key}' twice", arg=key)
            values[key] = v
        out = Attrs()
        for a in self.attrs:
            if a.name in values:
                try:
                    out[a.name] = a.check(values[a.name])
                except AttrError as e:
                    raise AttrError(f"{self.name}: bad value for '{a.name}': {e.message}",
                                    hint=e.hint, arg=a.name) from None
            elif a.default is REQUIRED:
                raise AttrError(f"{self.name} needs '{a.name}'", hint=self.signature())
            else:  # defaults are written short (stride=1) and normalised like given values
                out[a.name] = a.default if a.default is None else a.check(a.default)
        self.finish_attrs(out, values)
        return out

    def finish_attrs(self, a: Attrs, given: dict[str, Any]) -> None:
        """Fill defaults that depend on other attributes (e.g. pool stride = kernel)."""

    def signature(self) -> str:
        parts = []
        for a in self.attrs:
            if a.default is REQUIRED:
                parts.append(a.name)
            else:
                parts.append(f"{a.name}={_describe(a.default) if a.default is not None else 'none'}")
        return f"{self.name}({', '.join(parts)})"

    # -- rules (override)
    def shape(self, a: Attrs, ins: Sequence[Shape]) -> Shape:
        """Output shape from input shapes, or ShapeError. An op of several outputs: what
        they hold together."""
        return ins[0]

    def parts(self, a: Attrs, ins: Sequence[Shape]) -> tuple[Shape, ...]:
        """An op of several outputs (split): each one's shape, in order; the node's consumers
        read them as NODE:0, NODE:1 ... (graph.py `part_ref`), and the spec gets them as a
        tuple. () for an op of one output, `shape`."""
        return ()

    def params(self, a: Attrs, ins: Sequence[Shape]) -> list[Param]:
        return []

    def macs(self, a: Attrs, ins: Sequence[Shape], out: Shape) -> int:
        """Multiply-accumulates per sample."""
        return 0

    def window(self, a: Attrs) -> tuple[int, int, int, int] | str | None:
        """Effective (kh, kw, sh, sw) for receptive fields; None if pointwise; 'global'."""
        return None

    def window_on(self, a: Attrs, ins: Sequence[Shape]) -> tuple[int, int, int, int] | str | None:
        """The window on inputs of these shapes (the summary's receptive fields): window(a),
        unless the op sees less on some inputs (dense on a sequence: one token) or its input's
        size decides it (an adaptive pool)."""
        return self.window(a)

    def describe(self, a: Attrs) -> str:
        """Short human description of key attributes, e.g. '3x3/2, 64'."""
        return ""

    # -- lowering to ISA kernels (netspec/lower/build.py, netspec/autodiff.py)
    def lower(self, node, ctx) -> None:
        """Emit the forward instructions computing ctx.output() (an op of several outputs:
        ctx.output(k) for each part k) from the inputs."""
        raise NotImplementedError(f"op {self.name} cannot be lowered yet")

    def vjp(self, node, ctx, gy) -> list[str | None]:
        """Emit the backward instructions: given gy (the gradient of the output; an op of
        several outputs: a list of one per part, None for a part no gradient reaches),
        register parameter gradients (ctx.param_grad) and return one gradient tensor per
        input (None where ctx.needs_input_grad(i) is false)."""
        raise NotImplementedError(f"op {self.name} has no gradient yet")

    # -- what the tests run (ops/cases.py; tests/test_op_cases.py runs every case on every target)
    cases: tuple[Case, ...] = ()
    error_cases: tuple[ErrorCase, ...] = ()
    # input values where the op's derivative jumps (ReLU's 0): the sampled inputs keep away
    kinks: tuple[float, ...] = ()

    def reference(self, a: Attrs, xs: list, p: dict, run: Run):
        """The output in float64 NumPy (netspec/ops/reference/): xs the inputs, (N, C, H, W) or
        (N, F); p the parameters by name (those the node has), in PyTorch's layouts. An op of
        several outputs returns a tuple of them, one per part."""
        raise NotImplementedError(f"op {self.name} has no reference")

    def torch(self, a: Attrs, xs: list, p: dict, run: Run):
        """The output in PyTorch, for the oracle (netspec/testing/torch_ref.py), from the inputs
        and the parameters as tensors (a tuple of them for an op of several outputs). torch is
        imported inside the rule, never by the compiler."""
        raise NotImplementedError(f"op {self.name} has no PyTorch rule")

    def onnx(self, a: Attrs, xs: list, p: dict, ctx):
        """The op in ONNX (netspec/interop/onnx_export.py), in the layout of the PyTorch rule:
        xs the inputs' value names, p the parameters' initializer names (those the node has;
        a folded batch norm's layer gets its rescaled weight and bias), ctx the OnnxContext to
        emit nodes with (`ctx.op`, `ctx.const`; ctx.ins and ctx.shape are the input and output
        shapes). Returns the output's value name (a tuple of them for an op of several)."""
        raise NotImplementedError(f"op {self.name} has no ONNX rule")

    def torch_param(self, a: Attrs, param: Param, rng):
        """A random value of `param` for the oracle (torch_ref.torch_params, a NumPy
        generator): weights He-normal over the inputs feeding one output (PyTorch's layouts put
        them after the first axis), biases small, constants and ones perturbed a little."""
        shape = param.shape
        if param.init.startswith("constant:"):
            return float(param.init.split(":", 1)[1]) + 0.05 * rng.standard_normal(shape)
        if param.name == "bias":
            return 0.05 * rng.standard_normal(shape)
        if "weight" in param.name:
            return rng.standard_normal(shape) * math.sqrt(2.0 / math.prod(shape[1:]))
        if param.init == "ones":
            return 1.0 + 0.1 * rng.standard_normal(shape)
        return 0.1 * rng.standard_normal(shape)


OPS: dict[str, Op] = {}            # the ops a spec may call
INTERNAL_OPS: dict[str, Op] = {}   # ops only passes create


def register(cls: type[Op]) -> type[Op]:
    op = cls()
    table = INTERNAL_OPS if op.internal else OPS
    if op.name in OPS or op.name in INTERNAL_OPS:
        raise RuntimeError(f"op {op.name} registered twice")
    if op.infix is not None and infix_op(op.infix) is not None:
        raise RuntimeError(f"ops {infix_op(op.infix).name} and {op.name} both claim '{op.infix}'")
    table[op.name] = op
    return cls


def get_op(name: str) -> Op | None:
    """A language op, or one the compiler's passes make (netspec/ops/fused.py)."""
    return OPS.get(name) or INTERNAL_OPS.get(name)


def infix_op(operator: str) -> Op | None:
    """The op a binary operator writes between tensors (`+`: add), if any."""
    return next((op for op in OPS.values() if op.infix == operator), None)


def op_names(where: Callable[[Traits], bool]) -> tuple[str, ...]:
    """The language's ops whose traits satisfy `where`, in registration order."""
    return tuple(name for name, op in OPS.items() if where(op.traits))


# ---------------------------------------------------------------- shape helpers

def format_shape(shape: Shape) -> str:
    """(64, 56, 56) -> '64@56x56'; (197, 768) -> '197x768' (a sequence); (784,) -> '784'."""
    if len(shape) == 1:
        return str(shape[0])
    if len(shape) == 2:
        return f"{shape[0]}x{shape[1]}"
    return f"{shape[0]}@" + "x".join(str(d) for d in shape[1:])


def is_sequence(shape: Shape) -> bool:
    """A sequence of tokens (T, F), as a transformer sees its input."""
    return len(shape) == 2


def channels(shape: Shape) -> int:
    """What per-channel parameters count: C of a feature map, F of a vector or of a
    sequence's tokens. It is the last axis of every physical layout."""
    return shape[-1] if is_sequence(shape) else shape[0]


def batch_channel_axis(shape: Shape) -> int:
    """The channel axis of a batch of values of spec shape `shape` (the batch axis first, as
    the references and the PyTorch and ONNX rules hold them): a sequence's features (N, T, F),
    else axis 1."""
    return 2 if is_sequence(shape) else 1


def format_parts(parts) -> str:
    """The shapes of a node's several outputs: '16@8x8, 48@8x8'."""
    return ", ".join(format_shape(s) for s in parts)


def physical(shape: Shape) -> Shape:
    """The layout every target stores a spec shape in (the ISA's choice): feature maps
    channels-last, (C, H, W) -> (H, W, C); sequences (T, F) and vectors unchanged. Ops lower
    with it."""
    if len(shape) == 3:
        c, h, w = shape
        return (h, w, c)
    return tuple(shape)


def require_sequence(op: str, s: Shape) -> tuple[int, int]:
    if not is_sequence(s):
        raise ShapeError(f"{op} expects a sequence of tokens TxF, got {{in0}}",
                         hint="a feature map becomes one with to_tokens (a token per position)")
    return s  # type: ignore[return-value]


def require_spatial(op: str, s: Shape) -> tuple[int, int, int]:
    if len(s) != 3:
        raise ShapeError(f"{op} expects a feature map C@HxW, got {{in0}}",
                         hint="it works on images; flat vectors come from flatten or dense")
    return s  # type: ignore[return-value]


def conv_out(size: int, k: int, s: int, pad, d: int, axis: int) -> int:
    """Output length of a convolution/pool along one axis.

    same: ceil(size / s) (TensorFlow; the extra padding goes bottom/right);
    valid: no padding; (ph, pw): symmetric explicit padding (PyTorch).
    """
    span = d * (k - 1) + 1
    if pad == "same":
        return -(-size // s)
    p = 0 if pad == "valid" else pad[axis]
    return (size + 2 * p - span) // s + 1


def same_padding(size: int, k: int, s: int, d: int = 1) -> tuple[int, int]:
    """TensorFlow 'same' padding (before, after): the odd pixel goes after."""
    span = d * (k - 1) + 1
    out = -(-size // s)
    total = max((out - 1) * s + span - size, 0)
    return total // 2, total - total // 2


def explicit_padding(pad, size_hw, kernel, stride, dilation=(1, 1)) -> tuple[int, int, int, int]:
    """'same' / 'valid' / (ph, pw) -> (top, bottom, left, right) for input (H, W)."""
    if pad == "same":
        top, bottom = same_padding(size_hw[0], kernel[0], stride[0], dilation[0])
        left, right = same_padding(size_hw[1], kernel[1], stride[1], dilation[1])
        return top, bottom, left, right
    if pad == "valid":
        return 0, 0, 0, 0
    return pad[0], pad[0], pad[1], pad[1]


def spatial_out(op: str, x: Shape, kernel, stride, pad, dilation=(1, 1)) -> tuple[int, int]:
    """Output (H, W) of a windowed op with clear errors for windows too large."""
    _, h, w = x
    out = []
    for axis, size in enumerate((h, w)):
        k, s, d = kernel[axis], stride[axis], dilation[axis]
        n = conv_out(size, k, s, pad, d, axis)
        if n <= 0:
            span = d * (k - 1) + 1
            padded = size + (2 * pad[axis] if isinstance(pad, tuple) else 0)
            what = "width" if axis else "height"
            extent = f"{padded} with padding" if padded != size else f"{size}"
            raise ShapeError(
                f"{op} window {kernel[0]}x{kernel[1]} is larger than its input {{in0}} "
                f"(window spans {span} on the {what}, input is {extent})",
                hint="use a smaller kernel, pad=same, or a larger input")
        out.append(n)
    return out[0], out[1]
