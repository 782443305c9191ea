"""Elementwise CUDA kernels: the pointwise activations forward and backward, softmax, log_softmax,
prelu, add, mul, the per-channel gate (mul_channels), the learned per-channel scale (channel_scale),
the per-sample scale (mul_samples), and the data movers (concat, split, zeros, to_flat, from_flat).

One thread per element in a grid-stride loop, or one per row or channel where the kernel
reduces over the others (softmax's rows, prelu's and the gate's channels): every sum runs
in a fixed order, in float64, so results do not depend on the launch. Constants take the
arrays' dtype (`_compiled(dtype)` builds the kernels once per dtype), so float32 stays
float32. The formulas are the ISA's; the backward ones read the activation's output, or its
input where the ISA says so (Activation.grad_reads).
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda

from .. import formulas
from ..isa import POINTWISE_ACTIVATIONS
from ..operands import channel_operands, check_add, check_samples
from .launch import device_function, dims, empty, flat, launch, rows, same_shape, scalar, unravel
from .table import kernel

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


@functools.lru_cache(maxsize=None)
def activation_formulas(dtype: np.dtype) -> dict:
    """{activation: (act(v, alpha), g * act'(x) from u)} as device functions whose constants
    have `dtype` (also the fused kernels' steps, runtime/cuda/fused.py); u is y = act(x), or x
    where the ISA's backward reads x (Activation.grad_reads). Those runtime/formulas.py writes
    for both targets come from there."""
    dtype = np.dtype(dtype).type
    zero, one, six = dtype(0), dtype(1), dtype(6)
    s_alpha, s_scale = dtype(SELU_ALPHA * SELU_SCALE), dtype(SELU_SCALE)

    device = device_function

    def relu(v, a):
        return zero if v <= zero else v           # a NaN stays a NaN

    def relu_grad(g, y, a):
        return g if y > zero else zero

    def relu6(v, a):
        return min(max(v, zero), six) if v == v else v

    def relu6_grad(g, y, a):
        return g if (y > zero and y < six) else zero

    def leaky_relu(v, a):
        return v if v > zero else v * a

    def leaky_relu_grad(g, y, a):
        return g if y > zero else g * a

    def elu(v, a):
        return v if v > zero else a * math.expm1(v)

    def elu_grad(g, y, a):
        return g if y > zero else g * (y + a)

    def selu(v, a):
        return s_scale * v if v > zero else s_alpha * math.expm1(v)

    def selu_grad(g, y, a):
        return g * s_scale if y > zero else g * (y + s_alpha)

    def tanh(v, a):
        return math.tanh(v)

    def tanh_grad(g, y, a):
        return g * (one - y * y)

    def sigmoid(v, a):                             # stable for both signs: one exp of -|v|
        e = math.exp(-abs(v))
        s = one / (one + e)
        return s if v >= zero else e * s

    def sigmoid_grad(g, y, a):
        return g * (y * (one - y))

    table = dict(locals())
    for name, (forward, backward) in formulas.activation_scalars(dtype).items():
        table[name], table[name + "_grad"] = forward, backward
    # every pointwise activation of the ISA has both formulas here (a KeyError if not)
    return {name: (device(table[name]), device(table[name + "_grad"])) for name in POINTWISE_ACTIVATIONS}


def activation_kernels(forward, backward):
    """The (forward, backward) kernels of an activation's two device functions, one thread
    per element."""
    @cuda.jit
    def fwd(x, y, alpha):
        for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
            y[i] = forward(x[i], alpha)

    @cuda.jit
    def bwd(gy, u, gx, alpha):
        for i in range(cuda.grid(1), u.size, cuda.gridsize(1)):
            gx[i] = backward(gy[i], u[i], alpha)
    return fwd, bwd


@cuda.jit
def _add(a, b, y):
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        y[i] = a[i] + b[i]


@cuda.jit
def _mul(a, b, y):
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        y[i] = a[i] * b[i]


@cuda.jit
def _scale_channels(x, g, y, per_sample, channels):
    """y[i] = x[i] * g[n, c] for the flat index i of (n, position, c)."""
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        y[i] = x[i] * g[i // per_sample, i % channels]


@cuda.jit
def _channel_dots(gy, x, gg):
    """gg[n, c] = sum over the positions p of gy[n, p, c] * x[n, p, c], in float64."""
    n_, p_, c_ = x.shape
    for j in range(cuda.grid(1), n_ * c_, cuda.gridsize(1)):
        n, c = j // c_, j % c_
        acc = 0.0
        for p in range(p_):
            acc += np.float64(gy[n, p, c]) * np.float64(x[n, p, c])
        gg[n, c] = acc


@cuda.jit
def _prelu(x, w, y):
    r_, c_ = x.shape
    for i in range(cuda.grid(1), r_ * c_, cuda.gridsize(1)):
        r, c = i // c_, i % c_
        v = x[r, c]
        y[r, c] = v if v > 0 else v * w[c]


@cuda.jit
def _prelu_bwd_data(gy, x, w, gx):
    r_, c_ = x.shape
    for i in range(cuda.grid(1), r_ * c_, cuda.gridsize(1)):
        r, c = i // c_, i % c_
        gx[r, c] = gy[r, c] if x[r, c] > 0 else gy[r, c] * w[c]


@cuda.jit
def _prelu_bwd_weight(gy, x, gw):
    """gw[c] = sum over the rows where x <= 0 of gy * x, in float64: one thread a channel."""
    r_, c_ = x.shape
    for c in range(cuda.grid(1), c_, cuda.gridsize(1)):
        acc = 0.0
        for r in range(r_):
            if not x[r, c] > 0:
                acc += np.float64(gy[r, c]) * np.float64(x[r, c])
        gw[c] = acc


_softmax_row = device_function(formulas.softmax_row)
_softmax_bwd_row = device_function(formulas.softmax_bwd_row)


@cuda.jit
def softmax_rows(x, y, lse):
    """y[r] = softmax(x[r]) and lse[r] = log(sum(exp(x[r]))) (formulas.softmax_row): one
    thread a row."""
    for r in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        _softmax_row(x, y, lse, r)


@cuda.jit
def _softmax_bwd_rows(gy, y, gx):
    """gx = y * (gy - sum(gy * y)) per row (formulas.softmax_bwd_row): one thread a row."""
    for r in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):
        _softmax_bwd_row(gy, y, gx, r)


_log_softmax_row = device_function(formulas.log_softmax_row)
_log_softmax_bwd_row = device_function(formulas.log_softmax_bwd_row)


@cuda.jit
def _log_softmax_rows(x, y):
    """y[r] = x[r] - log(sum(exp(x[r]))) (formulas.log_softmax_row): one thread a row."""
    for r in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        _log_softmax_row(x, y, r)


@cuda.jit
def _log_softmax_bwd_rows(gy, y, gx):
    """gx = gy - exp(y) * sum(gy) per row (formulas.log_softmax_bwd_row): one thread a row."""
    for r in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):
        _log_softmax_bwd_row(gy, y, gx, r)


@cuda.jit
def _copy_columns(src, dst, offset, to_dst):
    """to_dst: dst[r, offset + k] = src[r, k]; else src[r, k] = dst[r, offset + k]."""
    r_, k_ = src.shape
    for i in range(cuda.grid(1), r_ * k_, cuda.gridsize(1)):
        r, k = i // k_, i % k_
        if to_dst:
            dst[r, offset + k] = src[r, k]
        else:
            src[r, k] = dst[r, offset + k]


@cuda.jit
def _zeros(y):
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        y[i] = 0


@cuda.jit
def _channels_last_to_first(x, y, to_first):
    """to_first: y (N, C*H*W) channel-major from x (N, H, W, C); else x from y."""
    n_, h_, w_, c_ = x.shape
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        n, h, w, c = unravel(i, h_, w_, c_)
        j = (c * h_ + h) * w_ + w
        if to_first:
            y[n, j] = x[n, h, w, c]
        else:
            x[n, h, w, c] = y[n, j]


@functools.lru_cache(maxsize=None)
def _activations(dtype: np.dtype) -> dict:
    return {name: activation_kernels(*pair) for name, pair in activation_formulas(dtype).items()}


# ---------------------------------------------------------------- the kernels

def _unary(name):
    def fwd(ins, outs, attrs, ctx):
        x, y = ins[0], outs[0]
        same_shape(name, x, y)
        forward, _ = _activations(x.dtype)[name]
        launch(forward, x.size, flat(x), flat(y), scalar(x.dtype, attrs.get("alpha", 0)))

    def bwd(ins, outs, attrs, ctx):
        gy, u = ins      # u: y, or x (the ISA's Activation.grad_reads)
        gx = outs[0]
        same_shape(name + "_bwd", gy, u, gx)
        _, backward = _activations(u.dtype)[name]
        launch(backward, u.size, flat(gy), flat(u), flat(gx), scalar(u.dtype, attrs.get("alpha", 0)))

    # in place: each thread reads element i before it writes element i
    kernel(name, inplace=((0, (0,)),))(fwd)
    kernel(name + "_bwd", inplace=((0, (0,)),))(bwd)


for _name in POINTWISE_ACTIVATIONS:
    _unary(_name)


def sigmoid_into(x, y) -> None:
    """y = sigmoid(x), elementwise (the binary cross-entropy's probabilities)."""
    forward, _ = _activations(x.dtype)["sigmoid"]
    launch(forward, x.size, flat(x), flat(y), scalar(x.dtype, 0))


@kernel("softmax")
def softmax(ins, outs, attrs, ctx):
    x, y = ins[0], outs[0]
    same_shape("softmax", x, y)
    x2 = rows(x)
    launch(softmax_rows, dims(x2)[0], x2, rows(y), empty(dims(x2)[0], np.float64))


@kernel("log_softmax")
def log_softmax(ins, outs, attrs, ctx):
    x, y = ins[0], outs[0]
    same_shape("log_softmax", x, y)
    launch(_log_softmax_rows, dims(rows(x))[0], rows(x), rows(y))


def _row_gradient(name, rows_kernel):
    """Registers `name`, the gradient (gy, y) -> gx of a softmax over rows: rows_kernel on
    each row of the (rows, C) views."""
    def run(ins, outs, attrs, ctx):
        gy, y = ins
        same_shape(name, gy, y, outs[0])
        launch(rows_kernel, dims(rows(y))[0], rows(gy), rows(y), rows(outs[0]))
    kernel(name)(run)


_row_gradient("softmax_bwd", _softmax_bwd_rows)
_row_gradient("log_softmax_bwd", _log_softmax_bwd_rows)


@kernel("prelu")
def prelu(ins, outs, attrs, ctx):
    x, w = ins
    channel_operands("prelu", (x, outs[0]), (w,))
    launch(_prelu, x.size, rows(x), w, rows(outs[0]))


@kernel("prelu_bwd")
def prelu_bwd(ins, outs, attrs, ctx):
    (gy, x, w), (gx, gw) = ins, outs
    channel_operands("prelu_bwd", (gy, x, gx), (w, gw))
    launch(_prelu_bwd_data, x.size, rows(gy), rows(x), w, rows(gx))
    launch(_prelu_bwd_weight, w.size, rows(gy), rows(x), gw)


# in place: y[i] is written after a[i] and b[i] are read. add with three or more inputs first
# writes x0 + x1 into y and then adds x2.. into y, so only x0 and x1 may share y's storage
@kernel("add", inplace=((0, (0, 1)),))
def add(ins, outs, attrs, ctx):
    y = outs[0]
    check_add(ins, outs)
    launch(_add, y.size, flat(ins[0]), flat(ins[1]), flat(y))
    for x in ins[2:]:
        launch(_add, y.size, flat(y), flat(x), flat(y))


@kernel("mul", inplace=((0, (0, 1)),))
def mul(ins, outs, attrs, ctx):
    a, b = ins
    same_shape("mul", a, b, outs[0])
    launch(_mul, a.size, flat(a), flat(b), flat(outs[0]))


def _gate(name, m, g):
    """The gate as (N, C), after checking that it holds one value per sample and channel of m."""
    n, c = dims(m)[0], dims(m)[-1]
    if dims(g) not in ((n, c), (n, 1, 1, c)) or g.dtype != m.dtype:
        raise ValueError(f"{name}: gate {dims(g)} {g.dtype} does not fit {dims(m)} {m.dtype}")
    return flat(g).reshape(n, c)


@kernel("mul_channels", inplace=((0, (0,)),))
def mul_channels(ins, outs, attrs, ctx):
    x, g = ins
    y = outs[0]
    same_shape("mul_channels", x, y)
    g2 = _gate("mul_channels", x, g)
    launch(_scale_channels, x.size, flat(x), g2, flat(y), x.size // dims(x)[0], dims(x)[-1])


@kernel("mul_channels_bwd_gate")
def mul_channels_bwd_gate(ins, outs, attrs, ctx):
    gy, x = ins
    same_shape("mul_channels_bwd_gate", gy, x)
    gg = _gate("mul_channels_bwd_gate", x, outs[0])
    n, c = gg.shape
    shape3 = (n, x.size // (n * c), c)
    launch(_channel_dots, n * c, flat(gy).reshape(*shape3), flat(x).reshape(*shape3), gg)


# a learned scale per channel (layer scale): the gate's kernels with one "sample", w (1, C)

def _channel_weights(name, x, w):
    """w as (1, C), after checking that it holds one value per channel of x, in x's dtype."""
    channel_operands(name, (x,), (w,))
    if w.dtype != x.dtype:
        raise ValueError(f"{name}: weights {w.dtype} for {x.dtype} maps")
    return flat(w).reshape(1, dims(x)[-1])


@kernel("channel_scale", inplace=((0, (0,)),))
def channel_scale(ins, outs, attrs, ctx):
    x, w = ins
    same_shape("channel_scale", x, outs[0])
    w2 = _channel_weights("channel_scale", x, w)
    launch(_scale_channels, x.size, flat(x), w2, flat(outs[0]), x.size, dims(x)[-1])


@kernel("channel_scale_bwd")
def channel_scale_bwd(ins, outs, attrs, ctx):
    (gy, x, w), (gx, gw) = ins, outs
    same_shape("channel_scale_bwd", gy, x, gx)
    w2 = _channel_weights("channel_scale_bwd", x, w)
    gw2 = _channel_weights("channel_scale_bwd", x, gw)
    c = dims(x)[-1]
    shape3 = (1, x.size // c, c)
    launch(_channel_dots, c, flat(gy).reshape(*shape3), flat(x).reshape(*shape3), gw2)
    launch(_scale_channels, x.size, flat(gy), w2, flat(gx), x.size, c)


# one value per sample (drop_path's mask): the gate's kernel with one "channel", m (N, 1)

def scale_samples(name, x, m, y):
    """y = x * m per sample, after checking that m holds one value per sample."""
    check_samples(name, x, m, y)
    n = dims(x)[0]
    launch(_scale_channels, x.size, flat(x), flat(m).reshape(n, 1), flat(y), x.size // n, 1)


# in place: y[i] is written after x[i] is read
@kernel("mul_samples", inplace=((0, (0,)),))
def mul_samples(ins, outs, attrs, ctx):
    scale_samples("mul_samples", ins[0], ins[1], outs[0])


# ---------------------------------------------------------------- moving data

def _parts(name, whole, parts):
    """(rows(part), its first column in rows(whole)) for each part, after checking that the
    parts' last axes add up to the whole's and their other axes are the whole's."""
    if (sum(dims(p)[-1] for p in parts) != dims(whole)[-1]
            or any(dims(p)[:-1] != dims(whole)[:-1] or p.dtype != whole.dtype for p in parts)):
        raise ValueError(f"{name}: {[dims(p) for p in parts]} do not join into {dims(whole)}")
    offset = 0
    for p in parts:
        yield rows(p), offset
        offset += dims(p)[-1]


@kernel("concat")
def concat(ins, outs, attrs, ctx):
    whole = rows(outs[0])
    for part, offset in _parts("concat", outs[0], ins):
        launch(_copy_columns, part.size, part, whole, offset, True)


@kernel("split")
def split(ins, outs, attrs, ctx):
    whole = rows(ins[0])
    for part, offset in _parts("split", ins[0], outs):
        launch(_copy_columns, part.size, part, whole, offset, False)


@kernel("zeros")
def zeros(ins, outs, attrs, ctx):
    launch(_zeros, outs[0].size, flat(outs[0]))


@kernel("to_flat")
def to_flat(ins, outs, attrs, ctx):
    x, y = ins[0], outs[0]
    n, h, w, c = dims(x)
    if dims(y) != (n, c * h * w) or y.dtype != x.dtype:
        raise ValueError(f"to_flat: {dims(x)} does not flatten into {y.shape}")
    launch(_channels_last_to_first, x.size, x, y, True)


@kernel("from_flat")
def from_flat(ins, outs, attrs, ctx):
    x, y = ins[0], outs[0]
    n, h, w, c = y.shape
    if dims(x) != (n, c * h * w) or y.dtype != x.dtype:
        raise ValueError(f"from_flat: {dims(x)} does not unflatten into {y.shape}")
    launch(_channels_last_to_first, y.size, y, x, False)
