"""Elementwise activations: relu, relu6, leaky_relu, prelu, elu, selu, tanh, sigmoid, silu,
hardswish, hardsigmoid, gelu, softmax, log_softmax, and identity. All keep their input's
shape."""

from __future__ import annotations

import math

from ..runtime.isa import ACTIVATIONS, Activation
from .base import (Attr, Fusion, Op, OpKind, Param, Traits, batch_channel_axis, channels, choice, number,
                   register)
from .cases import Case, ErrorCase
from .reference.common import channel_axis


def _function(weight_init: str | None = None, logit_losses: tuple[str, ...] = ()) -> Traits:
    """A parameter-free elementwise activation: act= may name it, the fuse pass makes it a
    step, and weight_init is the initialiser it suits for the layer before it."""
    return Traits(elementwise=True, fusion=Fusion.ACTIVATION, activation=True, weight_init=weight_init,
                  logit_losses=logit_losses)


class _Elementwise(Op):
    """An activation applied to each element (softmax: to each position's channels)."""

    kind = OpKind.ACTIVATION
    traits = _function()
    cases = (Case(inputs=("3@3x3",)), Case(inputs=("6",), batch=1))

    def isa_activation(self, a) -> Activation:
        """The ISA's activation that computes the op with attributes `a`: the one of its name
        (gelu's tanh form is another)."""
        return ACTIVATIONS[self.name]

    def lower(self, node, ctx):
        act = self.isa_activation(node.attrs)
        ctx.emit(act.name, [ctx.x()], [ctx.output()], **{k: node.attrs[k] for k in act.attrs})

    def vjp(self, node, ctx, gy):
        if not ctx.needs_input_grad():
            return [None]
        gx = ctx.input_grad()
        act = self.isa_activation(node.attrs)
        # the derivative from the output, or from the input where the output does not fix it
        reads = ctx.x() if act.grad_reads == "x" else ctx.y
        ctx.emit(act.name + "_bwd", [gy, reads], [gx], **{k: node.attrs[k] for k in act.attrs})
        return [gx]

    # The float64 reference (ops/reference/activation.py) and PyTorch's function of the op's
    # name, each called with the input, the op's attributes in order and its parameters
    # (prelu's slope); softmax, whose axis they take by keyword, says its own.
    def reference(self, a, xs, p, run):
        from .reference import activation
        return getattr(activation, self.name)(xs[0], *self._arguments(a, p))

    def torch(self, a, xs, p, run):
        import torch
        from torch.nn import functional as F
        function = getattr(torch, self.name, None) or getattr(F, self.name)
        return function(xs[0], *self._arguments(a, p))

    def _arguments(self, a, p) -> list:
        return [a[attr.name] for attr in self.attrs] + list(p.values())

    # ONNX's operator of the same function, given the op's attributes as its own attributes
    # of the same meaning (`onnx_attrs`)
    onnx_op: str = ""
    onnx_attrs: dict = {}

    def onnx(self, a, xs, p, ctx):
        return ctx.op(self.onnx_op, xs, **{theirs: a[ours] for ours, theirs in self.onnx_attrs.items()})


class _ReLUFamily(_Elementwise):
    """ReLU and its variants: the weights before them start from He's initialiser."""

    traits = _function("he_normal")
    kinks = (0.0,)


@register
class ReLU(_ReLUFamily):
    name = "relu"
    onnx_op = "Relu"
    doc = "max(x, 0)"
    cases = (*_Elementwise.cases, Case(inputs=("3x4",)))     # a sequence, as every activation takes

    error_cases = (ErrorCase("1", ("4",), ("relu takes at most 0 positional arguments, got 1",)),)


@register
class ReLU6(_ReLUFamily):
    name = "relu6"
    doc = "min(max(x, 0), 6)"
    kinks = (0.0, 6.0)

    def onnx(self, a, xs, p, ctx):
        return ctx.op("Clip", [xs[0], ctx.weight(0.0, "min"), ctx.weight(6.0, "max")])


@register
class LeakyReLU(_ReLUFamily):
    name = "leaky_relu"
    onnx_op = "LeakyRelu"
    onnx_attrs = {"alpha": "alpha"}
    doc = "x if x > 0 else alpha * x"
    attrs = (Attr("alpha", number(0), 0.01, "slope for negative inputs"),)

    def describe(self, a):
        return f"alpha={a.alpha:g}"

    cases = (Case("0.2", ("3@3x3",)), Case(inputs=("6",), batch=1))
    error_cases = (ErrorCase("-0.1", ("4",), ("bad value for 'alpha'",)),)


@register
class PReLU(_Elementwise):
    name = "prelu"
    traits = Traits(elementwise=True)   # its learned slope is a parameter: act= cannot name it
    doc = ("x if x > 0 else weight * x, with a learned slope per channel (feature maps) "
           "or per feature (vectors), starting at 0.25 (PyTorch PReLU(num_parameters=C))")

    def params(self, a, ins):
        return [Param("weight", (channels(ins[0]),), "constant:0.25")]

    def lower(self, node, ctx):
        ctx.emit("prelu", [ctx.x(), ctx.param("weight")], [ctx.output()])

    def reference(self, a, xs, p, run):
        from .reference import activation
        return activation.prelu(xs[0], p["weight"], channel_axis(xs[0]))

    def onnx(self, a, xs, p, ctx):
        # the slope along the channel axis: (C, 1, 1) for a map, the last axis otherwise
        return ctx.op("PRelu", [xs[0], ctx.per_channel(p["weight"], len(ctx.ins[0]) + 1)])

    def torch(self, a, xs, p, run):
        from torch.nn import functional as F
        if channel_axis(xs[0]) != 1:     # a sequence (N, T, F): PyTorch's channels are axis 1
            return F.prelu(xs[0].transpose(1, 2), p["weight"]).transpose(1, 2)
        return F.prelu(xs[0], p["weight"])

    def vjp(self, node, ctx, gy):
        gx = ctx.input_grad_output()
        ctx.emit("prelu_bwd", [gy, ctx.x(), ctx.param("weight")],
                 [gx, ctx.param_grad_output("weight")])
        return ctx.needed([gx])

    cases = (*_Elementwise.cases, Case(inputs=("3x4",)))
    kinks = (0.0,)


@register
class ELU(_ReLUFamily):
    name = "elu"
    onnx_op = "Elu"
    onnx_attrs = {"alpha": "alpha"}
    doc = "x if x > 0 else alpha * (exp(x) - 1)"
    attrs = (Attr("alpha", number(0), 1.0),)

    def describe(self, a):
        return f"alpha={a.alpha:g}" if a.alpha != 1.0 else ""

    cases = (Case(inputs=("3@3x3",)), Case("0.5", ("6",), batch=1))


@register
class SELU(_Elementwise):
    name = "selu"
    onnx_op = "Selu"      # its default alpha and gamma are PyTorch's constants
    traits = _function("lecun_normal")
    doc = "scale * elu(x, alpha) with the self-normalising constants (1.0507..., 1.6733...)"
    kinks = (0.0,)


@register
class Tanh(_Elementwise):
    name = "tanh"
    onnx_op = "Tanh"
    doc = "hyperbolic tangent"


@register
class Sigmoid(_Elementwise):
    name = "sigmoid"
    onnx_op = "Sigmoid"
    traits = _function(logit_losses=("binary_crossentropy",))
    doc = "1 / (1 + exp(-x))"
    cases = (*_Elementwise.cases, Case(inputs=("4",), loss="binary_crossentropy"))


@register
class SiLU(_Elementwise):
    name = "silu"
    traits = _function("he_normal")    # He's, as torchvision's EfficientNet (fan out there)
    doc = "x * sigmoid(x) (swish; EfficientNet)"

    def onnx(self, a, xs, p, ctx):
        return ctx.op("Mul", [xs[0], ctx.op("Sigmoid", xs)])


@register
class HardSwish(_Elementwise):
    name = "hardswish"
    onnx_op = "HardSwish"
    traits = _function("he_normal")    # He's, as torchvision's MobileNetV3 (fan out there)
    doc = "x * relu6(x + 3) / 6 (MobileNetV3)"
    kinks = (-3.0, 3.0)


@register
class HardSigmoid(_Elementwise):
    name = "hardsigmoid"
    doc = "relu6(x + 3) / 6 (MobileNetV3's squeeze-and-excitation gate)"
    kinks = (-3.0, 3.0)

    def onnx(self, a, xs, p, ctx):
        return ctx.op("HardSigmoid", xs, alpha=1 / 6, beta=0.5)    # ONNX's default alpha is 0.2

    def torch(self, a, xs, p, run):
        # F.hardsigmoid's function and gradient (1/6 strictly between the kinks, else 0), by
        # relu6: PyTorch's own float64 backward scales by float32's 1/6 (1.0f / 6.0f)
        from torch.nn import functional as F
        return F.relu6(xs[0] + 3) / 6


@register
class GELU(_Elementwise):
    name = "gelu"
    traits = _function("he_normal")    # He for GELU too (Geron, ch. 11)
    doc = ("x * Phi(x), Phi the standard normal's distribution function (erf); "
           "approximate=tanh: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))")
    attrs = (Attr("approximate", choice("none", "tanh"), "none",
                  "none: the exact form (erf); tanh: the tanh approximation (PyTorch's names)"),)

    def isa_activation(self, a):
        return ACTIVATIONS["gelu_tanh" if a.approximate == "tanh" else "gelu"]

    def describe(self, a):
        return "approximate=tanh" if a.approximate == "tanh" else ""

    def onnx(self, a, xs, p, ctx):
        if ctx.opset >= 20:
            return ctx.op("Gelu", xs, approximate=a.approximate)
        x = xs[0]
        if a.approximate == "tanh":     # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
            cube = ctx.op("Mul", [ctx.op("Mul", [x, x]), x])
            inner = ctx.op("Add", [x, ctx.op("Mul", [cube, ctx.weight(0.044715, "c")])])
            t = ctx.op("Tanh", [ctx.op("Mul", [inner, ctx.weight(math.sqrt(2 / math.pi), "k")])])
        else:                           # 0.5 x (1 + erf(x / sqrt(2)))
            t = ctx.op("Erf", [ctx.op("Mul", [x, ctx.weight(1 / math.sqrt(2), "k")])])
        half = ctx.op("Mul", [x, ctx.weight(0.5, "half")])
        return ctx.op("Mul", [half, ctx.op("Add", [t, ctx.weight(1.0, "one")])])

    def torch(self, a, xs, p, run):
        from torch.nn import functional as F
        return F.gelu(xs[0], approximate=a.approximate)

    cases = (Case(inputs=("3@3x3",)), Case("approximate=tanh", ("3@2x2",)),
             Case("tanh", ("6",), batch=1), Case(inputs=("3x4",)))   # a transformer's MLP
    error_cases = (ErrorCase("approximate=erf", ("4",), ("bad value for 'approximate'", "none, tanh")),)


class _OverChannels(_Elementwise):
    """softmax and log_softmax: over the channels of each position, the reference's and
    PyTorch's function of the op's name."""

    def reference(self, a, xs, p, run):
        from .reference import activation
        return getattr(activation, self.name)(xs[0], axis=channel_axis(xs[0]))

    def onnx(self, a, xs, p, ctx):
        return ctx.op(self.onnx_op, xs, axis=batch_channel_axis(ctx.ins[0]))

    def torch(self, a, xs, p, run):
        from torch.nn import functional as F
        return getattr(F, self.name)(xs[0], dim=channel_axis(xs[0]))


@register
class Softmax(_OverChannels):
    name = "softmax"
    onnx_op = "Softmax"
    traits = Traits(activation=True,     # each output reads every channel of its position
                    logit_losses=("sparse_categorical_crossentropy", "categorical_crossentropy"))
    doc = ("exp(x) / sum(exp(x)) over the channels of each position (the features of a vector "
           "or of a token)")
    # on a map the cross-entropies classify each pixel (segmentation): labels (N, H, W)
    cases = (*_Elementwise.cases, Case(inputs=("5",), loss="sparse_categorical_crossentropy"),
             Case(inputs=("5",), loss="categorical_crossentropy"),
             Case(inputs=("3@2x3",), loss="sparse_categorical_crossentropy"),
             Case(inputs=("3@2x2",), loss="categorical_crossentropy"), Case(inputs=("3x4",)))


@register
class LogSoftmax(_OverChannels):
    name = "log_softmax"
    onnx_op = "LogSoftmax"
    traits = Traits(activation=True)     # each output reads every channel of its position
    doc = ("x - log(sum(exp(x))) over the channels of each position (the features of a vector "
           "or of a token): the log of softmax, computed stably")
    cases = (*_Elementwise.cases, Case(inputs=("3x4",)))


@register
class Identity(Op):
    name = "identity"
    traits = Traits(elementwise=True, init_looks_through=True)
    kind = OpKind.IDENTITY
    doc = "passes its input through unchanged"

    def lower(self, node, ctx):
        ctx.alias(ctx.x())

    def vjp(self, node, ctx, gy):
        return [gy]

    cases = (Case(inputs=("4",)), Case(inputs=("2@3x3",)))

    def reference(self, a, xs, p, run):
        return xs[0]

    def onnx(self, a, xs, p, ctx):
        return xs[0]

    def torch(self, a, xs, p, run):
        return xs[0]
