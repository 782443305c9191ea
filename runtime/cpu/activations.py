"""The activations as scalar functions for jitted code: `FORWARD[name](v, alpha)` is
act(v) and `BACKWARD[name](g, u, alpha)` is g * act'(x) written with what the activation's
backward instruction reads (the ISA's Activation.grad_reads): u = y = act(x) for most, u = x
for those whose output does not determine the derivative (silu, gelu...), for each of the
ISA's POINTWISE_ACTIVATIONS (its one list of them, with their properties).

They are the one definition of the formulas on this target, for the activation kernels
(elementwise.py) and the generated ones (fused.py) alike: each is an `overload`, so its
constants take the argument's dtype (a float64 literal would turn float32 arithmetic into
float64) and the caller's loop inlines and vectorises it. Those that runtime/formulas.py
writes for both targets (`activation_scalars`) are overloads of its formulas.
alpha is the slope of leaky_relu and elu; the others ignore it.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic, overload
from numba.np.numpy_support import as_dtype

from ..formulas import activation_scalars
from ..isa import POINTWISE_ACTIVATIONS

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


# ---- tanh: float32 by a rational approximation that vectorises (no SVML here),
# max relative error about 3e-7; float64 by libm

def fast_tanh(v):  # pragma: no cover - replaced by the overload inside jitted code
    return np.tanh(v)


@overload(fast_tanh)
def _fast_tanh_impl(v):
    if v == types.float32:
        # Eigen's ptanh_float: odd 13/even 6 rational fit on [-c, c], tanh(+-c) rounds to +-1
        a1, a3 = np.float32(4.89352455891786e-03), np.float32(6.37261928875436e-04)
        a5, a7 = np.float32(1.48572235717979e-05), np.float32(5.12229709037114e-08)
        a9, a11 = np.float32(-8.60467152213735e-11), np.float32(2.00018790482477e-13)
        a13 = np.float32(-2.76076847742355e-16)
        b0, b2 = np.float32(4.89352518554385e-03), np.float32(2.26843463243900e-03)
        b4, b6 = np.float32(1.18534705686654e-04), np.float32(1.19825839466702e-06)
        clamp = np.float32(7.99881172180175781)

        def impl(v):
            z = min(max(v, -clamp), clamp)
            z2 = z * z
            p = ((((((a13 * z2 + a11) * z2 + a9) * z2 + a7) * z2 + a5) * z2 + a3) * z2 + a1) * z
            q = ((b6 * z2 + b4) * z2 + b2) * z2 + b0
            return p / q if v == v else v
        return impl
    return lambda v: np.tanh(v)


# ---- exp: float32 by Cephes' expf (range reduction to |r| <= ln2/2, a degree-7 polynomial,
# 2^n built in the exponent bits of two halves), which vectorises where libm's expf does not
# (no SVML here): SiLU ran 3x faster on a 2-core x86 machine; max relative error 6e-8, libm's
# 1.5e-7. Results under 2^-126 (arguments below -87.34) flush to zero; above 88.72, inf.

def fast_exp(v):  # pragma: no cover - replaced by the overload inside jitted code
    return np.exp(v)


@intrinsic
def _int32_as_float32(typingctx, bits):
    """The float32 whose IEEE bits are the int32 `bits` (a bitcast, no conversion)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@overload(fast_exp, inline="always")
def _fast_exp_impl(v):
    if v == types.float32:
        f = np.float32
        inv_ln2, ln2_hi, ln2_lo = f(1.44269504088896341), f(0.693359375), f(-2.12194440e-4)
        lo, hi = f(-87.33654475), f(88.72283935546875)   # ln of the least normal, the greatest
        p0, p1, p2 = f(1.9875691500e-4), f(1.3981999507e-3), f(8.3334519073e-3)
        p3, p4, p5 = f(4.1665795894e-2), f(1.6666665459e-1), f(5.0000001201e-1)
        zero, one, half, inf = f(0), f(1), f(0.5), f(np.inf)
        bias, shift = np.int32(127), np.int32(23)

        def impl(v):
            t = min(max(v, lo), hi)
            n = math.floor(t * inv_ln2 + half)
            r = t - n * ln2_hi - n * ln2_lo
            p = ((((p0 * r + p1) * r + p2) * r + p3) * r + p4) * r + p5
            # 2^n as 2^h * 2^(n - h), each a normal number for n in -126..128
            k = np.int32(n)
            h = k >> np.int32(1)
            e = ((p * r * r + r + one) * _int32_as_float32((h + bias) << shift)
                 * _int32_as_float32((k - h + bias) << shift))
            e = inf if v > hi else (zero if v < lo else e)
            return e if v == v else v       # a NaN stays a NaN
        return impl
    return lambda v: np.exp(v)


def _dtype(numba_type):
    return as_dtype(numba_type).type


def _scalar(name, reference):
    """A stub with a NumPy body (for reading, and calls from Python), overloaded below."""
    reference.__name__ = name
    return reference


# -- forward: act(v)

relu = _scalar("relu", lambda v, alpha: np.maximum(v, 0))
relu6 = _scalar("relu6", lambda v, alpha: np.minimum(np.maximum(v, 0), 6))
leaky_relu = _scalar("leaky_relu", lambda v, alpha: np.where(v > 0, v, v * alpha))
elu = _scalar("elu", lambda v, alpha: np.where(v > 0, v, alpha * np.expm1(v)))
selu = _scalar("selu", lambda v, alpha: SELU_SCALE * np.where(v > 0, v, SELU_ALPHA * np.expm1(v)))
tanh = _scalar("tanh", lambda v, alpha: np.tanh(v))
sigmoid = _scalar("sigmoid", lambda v, alpha: 1 / (1 + np.exp(-v)))


@overload(relu, inline="always")
def _relu(v, alpha):
    zero = _dtype(v)(0)
    return lambda v, alpha: zero if v <= zero else v      # a NaN stays a NaN


@overload(relu6, inline="always")
def _relu6(v, alpha):
    zero, six = _dtype(v)(0), _dtype(v)(6)
    return lambda v, alpha: min(max(v, zero), six) if v == v else v


@overload(leaky_relu, inline="always")
def _leaky_relu(v, alpha):
    zero = _dtype(v)(0)
    return lambda v, alpha: v if v > zero else v * alpha


@overload(elu, inline="always")
def _elu(v, alpha):
    zero = _dtype(v)(0)
    return lambda v, alpha: v if v > zero else alpha * np.expm1(v)


@overload(selu, inline="always")
def _selu(v, alpha):
    zero = _dtype(v)(0)
    s_alpha, s_scale = _dtype(v)(SELU_ALPHA * SELU_SCALE), _dtype(v)(SELU_SCALE)
    return lambda v, alpha: s_scale * v if v > zero else s_alpha * np.expm1(v)


@overload(tanh, inline="always")
def _tanh(v, alpha):
    return lambda v, alpha: fast_tanh(v)


@overload(sigmoid, inline="always")
def _sigmoid(v, alpha):
    zero, one = _dtype(v)(0), _dtype(v)(1)

    def impl(v, alpha):   # stable for both signs: one exp of -|v|
        e = fast_exp(-abs(v))
        s = one / (one + e)
        return s if v >= zero else e * s
    return impl


# -- backward: g * act'(x), from y = act(x) (alpha >= 0: y > 0 exactly where x > 0)

relu_grad = _scalar("relu_grad", lambda g, y, alpha: np.where(y > 0, g, 0))
relu6_grad = _scalar("relu6_grad", lambda g, y, alpha: np.where((y > 0) & (y < 6), g, 0))
leaky_relu_grad = _scalar("leaky_relu_grad", lambda g, y, alpha: np.where(y > 0, g, g * alpha))
elu_grad = _scalar("elu_grad", lambda g, y, alpha: np.where(y > 0, g, g * (y + alpha)))
selu_grad = _scalar("selu_grad", lambda g, y, alpha: np.where(
    y > 0, g * SELU_SCALE, g * (y + SELU_ALPHA * SELU_SCALE)))
tanh_grad = _scalar("tanh_grad", lambda g, y, alpha: g * (1 - y * y))
sigmoid_grad = _scalar("sigmoid_grad", lambda g, y, alpha: g * y * (1 - y))


@overload(relu_grad, inline="always")
def _relu_grad(g, y, alpha):
    zero = _dtype(y)(0)
    return lambda g, y, alpha: g if y > zero else zero


@overload(relu6_grad, inline="always")
def _relu6_grad(g, y, alpha):
    zero, six = _dtype(y)(0), _dtype(y)(6)
    return lambda g, y, alpha: g if (y > zero and y < six) else zero


@overload(leaky_relu_grad, inline="always")
def _leaky_relu_grad(g, y, alpha):
    zero = _dtype(y)(0)
    return lambda g, y, alpha: g if y > zero else g * alpha


@overload(elu_grad, inline="always")
def _elu_grad(g, y, alpha):
    zero = _dtype(y)(0)
    return lambda g, y, alpha: g if y > zero else g * (y + alpha)


@overload(selu_grad, inline="always")
def _selu_grad(g, y, alpha):
    zero = _dtype(y)(0)
    s_alpha, s_scale = _dtype(y)(SELU_ALPHA * SELU_SCALE), _dtype(y)(SELU_SCALE)
    return lambda g, y, alpha: g * s_scale if y > zero else g * (y + s_alpha)


@overload(tanh_grad, inline="always")
def _tanh_grad(g, y, alpha):
    one = _dtype(y)(1)
    return lambda g, y, alpha: g * (one - y * y)


@overload(sigmoid_grad, inline="always")
def _sigmoid_grad(g, y, alpha):
    one = _dtype(y)(1)
    return lambda g, y, alpha: g * (y * (one - y))


# -- the activations written once for both targets (runtime/formulas.py), as overloads of
# stubs that run the float64 formulas elementwise when called from Python

def _shared(name):
    """(forward, backward) stubs of formulas.activation_scalars' `name`, overloaded with its
    formulas in the argument's dtype."""
    forward_64, backward_64 = (np.vectorize(f, otypes=[np.float64])
                               for f in activation_scalars(np.float64)[name])
    forward = _scalar(name, lambda v, alpha: forward_64(v, alpha))
    # (numba asks an overload's parameters to be named as its formula's: each reads x)
    backward = _scalar(name + "_grad", lambda g, x, alpha: backward_64(g, x, alpha))

    @overload(forward, inline="always")
    def _forward(v, alpha):
        return activation_scalars(_dtype(v), fast_exp)[name][0]

    @overload(backward, inline="always")
    def _backward(g, x, alpha):
        return activation_scalars(_dtype(x), fast_exp)[name][1]
    return forward, backward


silu, silu_grad = _shared("silu")
hardswish, hardswish_grad = _shared("hardswish")
hardsigmoid, hardsigmoid_grad = _shared("hardsigmoid")
gelu, gelu_grad = _shared("gelu")
gelu_tanh, gelu_tanh_grad = _shared("gelu_tanh")


# every pointwise activation of the ISA has both formulas here (a KeyError on import if not)
FORWARD = {n: globals()[n] for n in POINTWISE_ACTIVATIONS}
BACKWARD = {n: globals()[n + "_grad"] for n in POINTWISE_ACTIVATIONS}
