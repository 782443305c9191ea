"""Elementwise CPU kernels: activations (forward and backward), softmax, log_softmax, prelu,
add, mul, the per-channel gate (mul_channels), the learned per-channel scale (channel_scale),
the per-sample scale (mul_samples), and the data movers (concat, split, zeros, to_flat, from_flat).

The unary activations share one jitted forward and one jitted backward kernel,
chosen by an int code (the branch sits outside the inner loops, so each loop
still vectorises). Every wrapper flattens its arrays to 1-D, or to (rows, C)
for the ops that work on the last axis, so one compiled function per dtype
serves every rank.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .. import formulas
from ..isa import ACTIVATIONS, POINTWISE_ACTIVATIONS
from ..operands import channel_operands, check_add, check_samples, same_shape  # noqa: F401  (re-exported)
from .activations import (elu, elu_grad, gelu, gelu_grad, gelu_tanh, gelu_tanh_grad, hardsigmoid,
                          hardsigmoid_grad, hardswish, hardswish_grad, leaky_relu, leaky_relu_grad,
                          relu, relu6, relu6_grad, relu_grad, selu, selu_grad, sigmoid,
                          sigmoid_grad, silu, silu_grad, tanh, tanh_grad)
from .table import kernel

# _act_fwd / _act_bwd hold one loop per pointwise activation of the ISA, chosen by its index
# there: their branches follow the ISA's order (an activation added there fails here until
# it has a branch; tests/test_kernels_other.py checks each against its reference)
_CODES = {name: code for code, name in enumerate(POINTWISE_ACTIVATIONS)}
(RELU, RELU6, LEAKY_RELU, ELU, SELU, TANH, SIGMOID, SILU, HARDSWISH, HARDSIGMOID, GELU,
 GELU_TANH) = _CODES.values()

# elements per parallel work item, and the size below which a kernel runs serially
# (a parallel region costs microseconds to start; a vectorised loop does ~10^4
# elements in that time)
CHUNK = 1 << 15
PARALLEL_MIN = 1 << 16

# reductions may be reordered (vectorised sums), but NaN and inf keep their meaning
REASSOC = {"reassoc", "contract", "nsz"}

# NumPy's error model: x / 0 gives inf instead of a Python ZeroDivisionError, and
# without that check in every division the loops vectorise
JIT = dict(cache=True, error_model="numpy")


# ---- helpers shared by the CPU kernel modules

def flat(a: np.ndarray) -> np.ndarray:
    """A 1-D view of a C-contiguous array (outputs must be views, never copies)."""
    if not a.flags.c_contiguous:
        raise ValueError(f"CPU kernels need C-contiguous arrays, got strides {a.strides}")
    return a.reshape(-1)


def rows(a: np.ndarray) -> np.ndarray:
    """A (rows, C) view: the last axis is the channel, everything before it is rows."""
    if not a.flags.c_contiguous:
        raise ValueError(f"CPU kernels need C-contiguous arrays, got strides {a.strides}")
    return a.reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1)


def scalar(x: np.ndarray, value) -> np.generic:
    """An attribute as a scalar of x's dtype (a Python float would promote float32 math)."""
    return x.dtype.type(value)


# ---- writing in place
#
# The memory planner may pass one array as both an input and an output where the kernel
# says so (`kernel(name, inplace=...)`: the target's capabilities). The loops stay correct
# (each reads an element before writing that index), but LLVM cannot see that the two
# pointers are equal: its run-time overlap check fails and the loop runs unvectorised
# (relu_bwd 30x slower: its scalar loop branches on random signs). So each kernel that
# declares an in-place rule has a variant that takes the shared array once: the loop,
# inlined (`inlined`), then sees one pointer and vectorises. Wrappers choose it when
# `same_data` says the output is the input. softmax, log_softmax and prelu would be correct
# in place too but have no such variant (their tensors are small), so they declare no rule.

def same_data(a: np.ndarray, b: np.ndarray) -> bool:
    """a and b are one buffer (the planner shares only whole buffers of one size)."""
    return a.ctypes.data == b.ctypes.data


def inlined(fn, **options):
    """Another dispatcher for a jitted function's Python source that Numba inlines into its
    callers, so arguments that are one array there are one pointer in the loop. Give it
    the options the original was compiled with (fastmath)."""
    return njit(inline="always", error_model="numpy", **options)(fn.py_func)


# ---- unary activations
#
# A loop over range(lo, hi) does not vectorise (Numba cannot tell that lo >= 0, so
# every index keeps its negative-index wrap-around), so each parallel driver hands
# its chunks to the serial kernel as slices, whose loops start at 0; small arrays
# skip the driver and its start-up cost.

@njit(fastmath={"contract"}, **JIT)
def _act_fwd(x, y, code, alpha):
    """y = act(x) over 1-D arrays; alpha has x's dtype (leaky_relu, elu). The formulas are
    activations.py's; one loop per code, so each loop vectorises."""
    if code == RELU:
        for i in range(x.size):
            y[i] = relu(x[i], alpha)
    elif code == RELU6:
        for i in range(x.size):
            y[i] = relu6(x[i], alpha)
    elif code == LEAKY_RELU:
        for i in range(x.size):
            y[i] = leaky_relu(x[i], alpha)
    elif code == ELU:
        for i in range(x.size):
            y[i] = elu(x[i], alpha)
    elif code == SELU:
        for i in range(x.size):
            y[i] = selu(x[i], alpha)
    elif code == TANH:
        for i in range(x.size):
            y[i] = tanh(x[i], alpha)
    elif code == SIGMOID:
        for i in range(x.size):
            y[i] = sigmoid(x[i], alpha)
    elif code == SILU:
        for i in range(x.size):
            y[i] = silu(x[i], alpha)
    elif code == HARDSWISH:
        for i in range(x.size):
            y[i] = hardswish(x[i], alpha)
    elif code == HARDSIGMOID:
        for i in range(x.size):
            y[i] = hardsigmoid(x[i], alpha)
    elif code == GELU:
        for i in range(x.size):
            y[i] = gelu(x[i], alpha)
    else:
        for i in range(x.size):
            y[i] = gelu_tanh(x[i], alpha)


@njit(parallel=True, **JIT)
def _act_fwd_par(x, y, code, alpha):
    n = x.size
    for t in prange((n + CHUNK - 1) // CHUNK):
        lo = t * CHUNK
        hi = min(lo + CHUNK, n)
        _act_fwd(x[lo:hi], y[lo:hi], code, alpha)


@njit(fastmath={"contract"}, **JIT)
def _act_bwd(gy, u, gx, code, alpha):
    """gx = gy * act'(x), from u alone (activations.py's *_grad): u is y = act(x), or x for
    the activations whose backward reads x (the ISA's Activation.grad_reads)."""
    if code == RELU:
        for i in range(u.size):
            gx[i] = relu_grad(gy[i], u[i], alpha)
    elif code == RELU6:
        for i in range(u.size):
            gx[i] = relu6_grad(gy[i], u[i], alpha)
    elif code == LEAKY_RELU:
        for i in range(u.size):
            gx[i] = leaky_relu_grad(gy[i], u[i], alpha)
    elif code == ELU:
        for i in range(u.size):
            gx[i] = elu_grad(gy[i], u[i], alpha)
    elif code == SELU:
        for i in range(u.size):
            gx[i] = selu_grad(gy[i], u[i], alpha)
    elif code == TANH:
        for i in range(u.size):
            gx[i] = tanh_grad(gy[i], u[i], alpha)
    elif code == SIGMOID:
        for i in range(u.size):
            gx[i] = sigmoid_grad(gy[i], u[i], alpha)
    elif code == SILU:
        for i in range(u.size):
            gx[i] = silu_grad(gy[i], u[i], alpha)
    elif code == HARDSWISH:
        for i in range(u.size):
            gx[i] = hardswish_grad(gy[i], u[i], alpha)
    elif code == HARDSIGMOID:
        for i in range(u.size):
            gx[i] = hardsigmoid_grad(gy[i], u[i], alpha)
    elif code == GELU:
        for i in range(u.size):
            gx[i] = gelu_grad(gy[i], u[i], alpha)
    else:
        for i in range(u.size):
            gx[i] = gelu_tanh_grad(gy[i], u[i], alpha)


@njit(parallel=True, **JIT)
def _act_bwd_par(gy, u, gx, code, alpha):
    n = u.size
    for t in prange((n + CHUNK - 1) // CHUNK):
        lo = t * CHUNK
        hi = min(lo + CHUNK, n)
        _act_bwd(gy[lo:hi], u[lo:hi], gx[lo:hi], code, alpha)


_act_fwd_inl = inlined(_act_fwd, fastmath={"contract"})
_act_bwd_inl = inlined(_act_bwd, fastmath={"contract"})


@njit(fastmath={"contract"}, **JIT)
def _act_fwd_self(x, code, alpha):
    """x = act(x), in place."""
    _act_fwd_inl(x, x, code, alpha)


@njit(parallel=True, **JIT)
def _act_fwd_self_par(x, code, alpha):
    n = x.size
    for t in prange((n + CHUNK - 1) // CHUNK):
        lo = t * CHUNK
        hi = min(lo + CHUNK, n)
        _act_fwd_self(x[lo:hi], code, alpha)


@njit(fastmath={"contract"}, **JIT)
def _act_bwd_self(g, u, code, alpha):
    """g = g * act'(x): the gradient written over gy."""
    _act_bwd_inl(g, u, g, code, alpha)


@njit(parallel=True, **JIT)
def _act_bwd_self_par(g, u, code, alpha):
    n = u.size
    for t in prange((n + CHUNK - 1) // CHUNK):
        lo = t * CHUNK
        hi = min(lo + CHUNK, n)
        _act_bwd_self(g[lo:hi], u[lo:hi], code, alpha)


def _unary(name):
    code = _CODES[name]
    default_alpha = ACTIVATIONS[name].alpha or 0.0

    def fwd(ins, outs, attrs, ctx):
        x, y = ins[0], outs[0]
        same_shape(name, x, y)
        alpha = scalar(x, attrs.get("alpha", default_alpha))
        if same_data(x, y):
            run = _act_fwd_self_par if x.size >= PARALLEL_MIN else _act_fwd_self
            run(flat(x), code, alpha)
            return
        run = _act_fwd_par if x.size >= PARALLEL_MIN else _act_fwd
        run(flat(x), flat(y), code, alpha)

    def bwd(ins, outs, attrs, ctx):
        gy, u = ins      # u: y, or x (the ISA's Activation.grad_reads)
        gx = outs[0]
        same_shape(name + "_bwd", gy, u, gx)
        alpha = scalar(u, attrs.get("alpha", default_alpha))
        if same_data(gy, gx):
            run = _act_bwd_self_par if u.size >= PARALLEL_MIN else _act_bwd_self
            run(flat(gx), flat(u), code, alpha)
            return
        run = _act_bwd_par if u.size >= PARALLEL_MIN else _act_bwd
        run(flat(gy), flat(u), flat(gx), code, alpha)

    # in place: _act_fwd reads x[i] before it writes y[i] (_act_fwd_self); _act_bwd reads
    # gy[i] and u[i] before it writes gx[i], and _act_bwd_self writes over gy (over u would be
    # correct too, but runs scalar)
    kernel(name, inplace=((0, (0,)),))(fwd)
    kernel(name + "_bwd", inplace=((0, (0,)),))(bwd)


for _name in _CODES:
    _unary(_name)


# ---- softmax over the last axis

# the row formulas (formulas.py, shared with the other targets), with sums that may be reordered
_softmax_row = njit(fastmath=REASSOC, **JIT)(formulas.softmax_row)
_softmax_bwd_row = njit(fastmath=REASSOC, **JIT)(formulas.softmax_bwd_row)


@njit(**JIT)
def softmax_rows(x, y, lse):
    """y[r] = softmax(x[r]) and lse[r] = log(sum(exp(x[r]))) (float64), stably."""
    for r in range(x.shape[0]):
        _softmax_row(x, y, lse, r)


@njit(**JIT)
def _softmax_bwd_rows(gy, y, gx):
    """gx = y * (gy - sum(gy * y)) per row."""
    for r in range(y.shape[0]):
        _softmax_bwd_row(gy, y, gx, r)


@kernel("softmax")
def softmax(ins, outs, attrs, ctx):
    x, y = ins[0], outs[0]
    same_shape("softmax", x, y)
    x2 = rows(x)
    softmax_rows(x2, rows(y), np.empty(x2.shape[0]))


@kernel("softmax_bwd")
def softmax_bwd(ins, outs, attrs, ctx):
    gy, y = ins
    same_shape("softmax_bwd", gy, y, outs[0])
    _softmax_bwd_rows(rows(gy), rows(y), rows(outs[0]))


# ---- log_softmax over the last axis (formulas.py's rows, as softmax's)

_log_softmax_row = njit(fastmath=REASSOC, **JIT)(formulas.log_softmax_row)
_log_softmax_bwd_row = njit(fastmath=REASSOC, **JIT)(formulas.log_softmax_bwd_row)


@njit(**JIT)
def _log_softmax_rows(x, y):
    for r in range(x.shape[0]):
        _log_softmax_row(x, y, r)


@njit(**JIT)
def _log_softmax_bwd_rows(gy, y, gx):
    for r in range(y.shape[0]):
        _log_softmax_bwd_row(gy, y, gx, r)


@kernel("log_softmax")
def log_softmax(ins, outs, attrs, ctx):
    x, y = ins[0], outs[0]
    same_shape("log_softmax", x, y)
    _log_softmax_rows(rows(x), rows(y))


@kernel("log_softmax_bwd")
def log_softmax_bwd(ins, outs, attrs, ctx):
    gy, y = ins
    same_shape("log_softmax_bwd", gy, y, outs[0])
    _log_softmax_bwd_rows(rows(gy), rows(y), rows(outs[0]))


# ---- prelu: a learned slope per channel (the last axis)

@njit(**JIT)
def _prelu(x, w, y):
    R, C = x.shape
    zero = x.dtype.type(0)
    for r in range(R):
        for c in range(C):
            v = x[r, c]
            y[r, c] = v if v > zero else v * w[c]


@njit(**JIT)
def _prelu_bwd(gy, x, w, gx, gw):
    R, C = x.shape
    zero = x.dtype.type(0)
    acc = np.zeros(C)
    for r in range(R):
        for c in range(C):
            v = x[r, c]
            g = gy[r, c]
            if v > zero:
                gx[r, c] = g
            else:
                gx[r, c] = g * w[c]
                acc[c] += g * v
    for c in range(C):
        gw[c] = acc[c]


@kernel("prelu")
def prelu(ins, outs, attrs, ctx):
    x, w = ins
    channel_operands("prelu", (x, outs[0]), (w,))
    _prelu(rows(x), np.ascontiguousarray(w, dtype=x.dtype), rows(outs[0]))


@kernel("prelu_bwd")
def prelu_bwd(ins, outs, attrs, ctx):
    (gy, x, w), (gx, gw) = ins, outs
    channel_operands("prelu_bwd", (gy, x, gx), (w, gw))
    _prelu_bwd(rows(gy), rows(x), np.ascontiguousarray(w, dtype=x.dtype), rows(gx), flat(gw))


# ---- add and mul

ADD, MUL = 0, 1


@njit(**JIT)
def _binary(a, b, y, op):
    """y = a + b (op ADD) or a * b (op MUL) over 1-D arrays; y may be a."""
    if op == ADD:
        for i in range(y.size):
            y[i] = a[i] + b[i]
    else:
        for i in range(y.size):
            y[i] = a[i] * b[i]


@njit(parallel=True, **JIT)
def _binary_par(a, b, y, op):
    n = y.size
    for t in prange((n + CHUNK - 1) // CHUNK):
        lo = t * CHUNK
        hi = min(lo + CHUNK, n)
        _binary(a[lo:hi], b[lo:hi], y[lo:hi], op)


_binary_inl = inlined(_binary)


@njit(**JIT)
def _binary_self(a, b, op):
    """a = a op b, in place."""
    _binary_inl(a, b, a, op)


@njit(parallel=True, **JIT)
def _binary_self_par(a, b, op):
    n = a.size
    for t in prange((n + CHUNK - 1) // CHUNK):
        lo = t * CHUNK
        hi = min(lo + CHUNK, n)
        _binary_self(a[lo:hi], b[lo:hi], op)


def binary(a, b, y, op):
    """y = a op b; y may be a or b (ADD and MUL commute, bit for bit)."""
    if same_data(y, b) and not same_data(y, a):
        a, b = b, a
    if same_data(y, a):
        (_binary_self_par if y.size >= PARALLEL_MIN else _binary_self)(flat(a), flat(b), op)
        return
    (_binary_par if y.size >= PARALLEL_MIN else _binary)(flat(a), flat(b), flat(y), op)


# in place: binary() writes y over a or b. add with three or more inputs first writes
# x0 + x1 into y and then adds x2.. into y, so only x0 and x1 may share y's storage
@kernel("add", inplace=((0, (0, 1)),))
def add(ins, outs, attrs, ctx):
    y = outs[0]
    check_add(ins, outs)
    binary(ins[0], ins[1], y, ADD)
    for x in ins[2:]:
        binary(y, x, y, ADD)


@kernel("mul", inplace=((0, (0, 1)),))
def mul(ins, outs, attrs, ctx):
    a, b = ins
    same_shape("mul", a, b, outs[0])
    binary(a, b, outs[0], MUL)


# ---- a gate of one value per (sample, channel) over a map: squeeze-and-excitation

@njit(parallel=True, **JIT)
def _scale_channels(x, g, y):
    """y[n, p, c] = x[n, p, c] * g[n, c]; y may be x."""
    n_, p_, c_ = x.shape
    for r in prange(n_ * p_):
        n, p = r // p_, r % p_
        for c in range(c_):
            y[n, p, c] = x[n, p, c] * g[n, c]


@njit(parallel=True, fastmath=REASSOC, **JIT)
def _channel_dots(gy, x, gg):
    """gg[n, c] = sum_p gy[n, p, c] * x[n, p, c], each product and the sum in float64."""
    n_, p_, c_ = x.shape
    for n in prange(n_):
        acc = np.zeros(c_, np.float64)
        for p in range(p_):
            for c in range(c_):
                acc[c] += np.float64(gy[n, p, c]) * np.float64(x[n, p, c])
        for c in range(c_):
            gg[n, c] = acc[c]


def _gated(name, m, g):
    """(the map as (N, positions, C), the gate as (N, C)), after checking that g holds one
    value per sample and channel of m."""
    n, c = m.shape[0], m.shape[-1]
    if g.shape not in ((n, c), (n, 1, 1, c)) or g.dtype != m.dtype:
        raise ValueError(f"{name}: gate {g.shape} {g.dtype} does not fit {m.shape} {m.dtype}")
    return rows(m).reshape(n, -1, c), rows(g)


@kernel("mul_channels", inplace=((0, (0,)),))
def mul_channels(ins, outs, attrs, ctx):
    x, g = ins
    y = outs[0]
    same_shape("mul_channels", x, y)
    x3, g2 = _gated("mul_channels", x, g)
    _scale_channels(x3, g2, rows(y).reshape(x3.shape))


@kernel("mul_channels_bwd_gate")
def mul_channels_bwd_gate(ins, outs, attrs, ctx):
    gy, x = ins
    gg = outs[0]
    same_shape("mul_channels_bwd_gate", gy, x)
    x3, gg2 = _gated("mul_channels_bwd_gate", x, gg)
    _channel_dots(rows(gy).reshape(x3.shape), x3, gg2)


# ---- a learned scale per channel (layer scale): the gate's loops with one "sample", w (1, C)

def _channel_weights(name, x, w):
    """(x as (1, positions, C), w as (1, C)) after checking w holds one value per channel."""
    channel_operands(name, (x,), (w,))
    if w.dtype != x.dtype:
        raise ValueError(f"{name}: weights {w.dtype} for {x.dtype} maps")
    c = x.shape[-1]
    return rows(x).reshape(1, -1, c), w.reshape(1, c)


@kernel("channel_scale", inplace=((0, (0,)),))
def channel_scale(ins, outs, attrs, ctx):
    x, w = ins
    same_shape("channel_scale", x, outs[0])
    x3, w2 = _channel_weights("channel_scale", x, w)
    _scale_channels(x3, w2, rows(outs[0]).reshape(x3.shape))


@kernel("channel_scale_bwd")
def channel_scale_bwd(ins, outs, attrs, ctx):
    (gy, x, w), (gx, gw) = ins, outs
    same_shape("channel_scale_bwd", gy, x, gx)
    x3, w2 = _channel_weights("channel_scale_bwd", x, w)
    gy3 = rows(gy).reshape(x3.shape)
    _, gw2 = _channel_weights("channel_scale_bwd", x, gw)
    _channel_dots(gy3, x3, gw2)
    _scale_channels(gy3, w2, rows(gx).reshape(x3.shape))


# ---- one value per sample (drop_path's mask)

@njit(parallel=True, **JIT)
def _scale_samples(x, m, y):
    """y[n, i] = x[n, i] * m[n]; y may be x."""
    for n in prange(x.shape[0]):
        s = m[n]
        for i in range(x.shape[1]):
            y[n, i] = x[n, i] * s


def scale_samples(name, x, m, y):
    """y = x * m per sample, after checking that m holds one value per sample."""
    check_samples(name, x, m, y)
    n = x.shape[0]
    _scale_samples(flat(x).reshape(n, -1), m, flat(y).reshape(n, -1))


@kernel("mul_samples", inplace=((0, (0,)),))
def mul_samples(ins, outs, attrs, ctx):
    scale_samples("mul_samples", ins[0], ins[1], outs[0])


# ---- moving data (NumPy copies: memory-bound, nothing to gain from a jitted loop)

def _check_parts(name, whole, parts):
    """The parts' last axes add up to the whole's, and their other axes are the whole's."""
    if (sum(p.shape[-1] for p in parts) != whole.shape[-1]
            or any(p.shape[:-1] != whole.shape[:-1] for p in parts)):
        raise ValueError(f"{name}: {[p.shape for p in parts]} do not join into {whole.shape}")


def _part_columns(name, whole, parts):
    """After _check_parts: (rows(part), the whole's rows' columns that part stands for), for
    every part in order."""
    _check_parts(name, whole, parts)
    wr = rows(whole)
    off = 0
    for p in parts:
        c = p.shape[-1]
        yield rows(p), wr[:, off:off + c]
        off += c


@kernel("concat")
def concat(ins, outs, attrs, ctx):
    for xr, yc in _part_columns("concat", outs[0], ins):
        yc[...] = xr


@kernel("split")
def split(ins, outs, attrs, ctx):
    for yr, xc in _part_columns("split", ins[0], outs):
        yr[...] = xc


@kernel("zeros")
def zeros(ins, outs, attrs, ctx):
    outs[0][...] = 0


@kernel("to_flat")
def to_flat(ins, outs, attrs, ctx):
    x, y = ins[0], outs[0]
    n, h, w, c = x.shape
    if y.shape != (n, c * h * w):
        raise ValueError(f"to_flat: {x.shape} does not flatten into {y.shape}")
    y.reshape(n, c, h, w)[...] = x.transpose(0, 3, 1, 2)


@kernel("from_flat")
def from_flat(ins, outs, attrs, ctx):
    x, y = ins[0], outs[0]
    n, h, w, c = y.shape
    if x.shape != (n, c * h * w):
        raise ValueError(f"from_flat: {x.shape} does not unflatten into {y.shape}")
    y[...] = x.reshape(n, c, h, w).transpose(0, 2, 3, 1)
