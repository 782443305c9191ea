"""Activations: forward, and the vector-Jacobian product gy * f'(x) the kernels are checked
against. All are elementwise but softmax and log_softmax (over the channel axis) and prelu (a
slope per channel); `axis` is the channel axis: 1 in the spec's layout, -1 in the kernels'.
Where a derivative jumps, its value at the jump is PyTorch's (hardswish, hardsigmoid)."""

from __future__ import annotations

import math

import numpy as np

from .common import f64

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def relu(x):
    x = f64(x)
    return np.where(x > 0, x, 0.0)


def relu_vjp(gy, x):
    return np.where(f64(x) > 0, f64(gy), 0.0)


def relu6(x):
    x = f64(x)
    return np.where(x < 0, 0.0, np.where(x > 6, 6.0, x))


def relu6_vjp(gy, x):
    x = f64(x)
    return np.where((x > 0) & (x < 6), f64(gy), 0.0)


def leaky_relu(x, alpha=0.01):
    x = f64(x)
    return np.where(x > 0, x, alpha * x)


def leaky_relu_vjp(gy, x, alpha=0.01):
    return f64(gy) * np.where(f64(x) > 0, 1.0, alpha)


def elu(x, alpha=1.0):
    x = f64(x)
    return np.where(x > 0, x, alpha * (np.exp(np.minimum(x, 0.0)) - 1.0))


def elu_vjp(gy, x, alpha=1.0):
    x = f64(x)
    return f64(gy) * np.where(x > 0, 1.0, alpha * np.exp(np.minimum(x, 0.0)))


def selu(x):
    return SELU_SCALE * elu(x, SELU_ALPHA)


def selu_vjp(gy, x):
    return SELU_SCALE * elu_vjp(gy, x, SELU_ALPHA)


def tanh(x):
    return np.tanh(f64(x))


def tanh_vjp(gy, x):
    return f64(gy) / np.cosh(f64(x)) ** 2


def sigmoid(x):
    x = f64(x)
    out = np.empty_like(x)
    for i, v in np.ndenumerate(x):
        out[i] = 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))
    return out


def sigmoid_vjp(gy, x):
    s = sigmoid(x)
    return f64(gy) * s * (1.0 - s)


def softmax(x, axis=1):
    x = f64(x)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def softmax_vjp(gy, x, axis=1):
    """gx_i = sum_j gy_j dy_j/dx_i = sum_j gy_j y_j (delta_ij - y_i), position by position."""
    y = np.moveaxis(softmax(x, axis), axis, -1)
    gy = np.moveaxis(f64(gy), axis, -1)
    out = np.empty_like(y)
    for idx in np.ndindex(*y.shape[:-1]):
        yr, gr = y[idx], gy[idx]
        jac = np.diag(yr) - np.outer(yr, yr)       # jac[i, j] = dy_i / dx_j
        out[idx] = jac.T @ gr
    return np.moveaxis(out, -1, axis)


def silu(x):
    x = f64(x)
    return x * sigmoid(x)


def silu_vjp(gy, x):
    x = f64(x)
    s = sigmoid(x)
    return f64(gy) * (s + x * s * (1.0 - s))


def hardsigmoid(x):
    x = f64(x)
    return np.where(x <= -3, 0.0, np.where(x >= 3, 1.0, (x + 3) / 6))


def hardsigmoid_vjp(gy, x):
    """1/6 strictly between the kinks at -3 and 3, 0 at and beyond them."""
    x = f64(x)
    return f64(gy) * np.where((x > -3) & (x < 3), 1 / 6, 0.0)


def hardswish(x):
    x = f64(x)
    return x * hardsigmoid(x)


def hardswish_vjp(gy, x):
    """0 up to -3, x/3 + 1/2 strictly between the kinks, 1 from 3 on."""
    x = f64(x)
    return f64(gy) * np.where(x <= -3, 0.0, np.where(x < 3, x / 3 + 0.5, 1.0))


_erf = np.vectorize(math.erf, otypes=[np.float64])


def _normal_cdf(x):
    return 0.5 * (1.0 + _erf(x / math.sqrt(2.0)))


def _gelu_tanh_inner(x):
    return math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)


def gelu(x, approximate="none"):
    """x * Phi(x), Phi the standard normal's distribution function; approximate='tanh':
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    x = f64(x)
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(_gelu_tanh_inner(x)))
    return x * _normal_cdf(x)


def gelu_vjp(gy, x, approximate="none"):
    x = f64(x)
    if approximate == "tanh":
        t = np.tanh(_gelu_tanh_inner(x))
        d_inner = math.sqrt(2.0 / math.pi) * (1.0 + 3 * 0.044715 * x ** 2)
        return f64(gy) * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t ** 2) * d_inner)
    density = np.exp(-x ** 2 / 2) / math.sqrt(2 * math.pi)
    return f64(gy) * (_normal_cdf(x) + x * density)


def log_softmax(x, axis=1):
    x = f64(x)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def log_softmax_vjp(gy, x, axis=1):
    """gx_j = sum_i gy_i dy_i/dx_j, dy_i/dx_j = delta_ij - softmax_j: gy_j - softmax_j sum(gy)."""
    gy = f64(gy)
    return gy - softmax(x, axis) * gy.sum(axis=axis, keepdims=True)


def _per_channel(w, ndim, axis):
    """A per-channel vector shaped to broadcast along `axis` of an ndim-array."""
    shape = [1] * ndim
    shape[axis] = -1
    return f64(w).reshape(shape)


def prelu(x, w, axis=1):
    x = f64(x)
    return np.where(x > 0, x, _per_channel(w, x.ndim, axis) * x)


def prelu_vjp(gy, x, w, axis=1):
    """(gx, gw): gw[c] sums gy * x over the positions where x <= 0 in channel c."""
    x, gy = f64(x), f64(gy)
    gx = np.where(x > 0, gy, _per_channel(w, x.ndim, axis) * gy)
    below = np.moveaxis(np.where(x > 0, 0.0, gy * x), axis, -1)
    return gx, below.reshape(-1, below.shape[-1]).sum(axis=0)
