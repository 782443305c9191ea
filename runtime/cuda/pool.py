"""Pooling CUDA kernels on channels-last maps: max and average pools (padding never wins a
max; either divisor for the average) and their global forms, forward and backward.

Forward: one thread per output element, its window read in row-major order. Backward: one
thread per input element, gathering from the windows that hold it in row-major order, so no
two threads write one element (no atomics) and the sums run in the CPU kernels' order.
The average pools' per-axis divisors are computed on the host, in float64, then rounded to
the arrays' dtype, as the CPU target's are.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from ..isa import pool_window, pooled_shape
from .launch import dims, launch, to_device, unravel
from .table import kernel


@cuda.jit
def _maxpool_fwd(x, y, am, kh, kw, sh, sw, pt, pl):
    """y = the first maximum of each clipped window (a NaN wins); am = its h * W + w."""
    _, H, W, C = x.shape
    _, OH, OW, _ = y.shape
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        n, oh, ow, c = unravel(i, OH, OW, C)
        h0, w0 = oh * sh - pt, ow * sw - pl
        best = x[n, 0, 0, c]
        pos = -1
        for ih in range(max(h0, 0), min(h0 + kh, H)):
            for iw in range(max(w0, 0), min(w0 + kw, W)):
                v = x[n, ih, iw, c]
                if pos < 0 or v > best or (v != v and best == best):
                    best = v
                    pos = ih * W + iw
        if pos < 0:       # a window entirely in the padding (the shape rules forbid it)
            y[n, oh, ow, c] = -math.inf
        else:
            y[n, oh, ow, c] = best
        am[n, oh, ow, c] = pos


@cuda.jit
def _maxpool_bwd(gy, am, gx, zero, kh, kw, sh, sw, pt, pl):
    """gx[n, h, w, c] = sum of gy over the windows whose maximum is (h, w), in window order."""
    _, H, W, C = gx.shape
    _, OH, OW, _ = gy.shape
    for i in range(cuda.grid(1), gx.size, cuda.gridsize(1)):
        n, ih, iw, c = unravel(i, H, W, C)
        q = ih * W + iw
        acc = zero
        for oh in range(max(0, -((kh - 1 - ih - pt) // sh)), min(OH - 1, (ih + pt) // sh) + 1):
            for ow in range(max(0, -((kw - 1 - iw - pl) // sw)), min(OW - 1, (iw + pl) // sw) + 1):
                if am[n, oh, ow, c] == q:
                    acc += gy[n, oh, ow, c]
        gx[n, ih, iw, c] = acc


@cuda.jit
def _avgpool_fwd(x, y, hinv, winv, zero, kh, kw, sh, sw, pt, pl):
    _, H, W, C = x.shape
    _, OH, OW, _ = y.shape
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        n, oh, ow, c = unravel(i, OH, OW, C)
        h0, w0 = oh * sh - pt, ow * sw - pl
        acc = zero
        for ih in range(max(h0, 0), min(h0 + kh, H)):
            for iw in range(max(w0, 0), min(w0 + kw, W)):
                acc += x[n, ih, iw, c]
        y[n, oh, ow, c] = acc * (hinv[oh] * winv[ow])


@cuda.jit
def _avgpool_bwd(gy, gx, hinv, winv, zero, kh, kw, sh, sw, pt, pl):
    """gx[n, h, w, c] = sum of gy / divisor over the windows that hold (h, w)."""
    _, H, W, C = gx.shape
    _, OH, OW, _ = gy.shape
    for i in range(cuda.grid(1), gx.size, cuda.gridsize(1)):
        n, ih, iw, c = unravel(i, H, W, C)
        acc = zero
        for oh in range(max(0, -((kh - 1 - ih - pt) // sh)), min(OH - 1, (ih + pt) // sh) + 1):
            for ow in range(max(0, -((kw - 1 - iw - pl) // sw)), min(OW - 1, (iw + pl) // sw) + 1):
                acc += gy[n, oh, ow, c] * (hinv[oh] * winv[ow])
        gx[n, ih, iw, c] = acc


def _inverse_counts(size, k, s, p, out, include_pad, dtype):
    """1 / (the positions each of the `out` windows counts along one axis), on the device."""
    inv = np.empty(out)
    for o in range(out):
        a = o * s - p
        count = k if include_pad else min(a + k, size) - max(a, 0)
        inv[o] = 1.0 / count if count > 0 else 0.0
    return to_device(inv.astype(dtype))


def _check(name, x, y, win):
    pooled_shape(name, dims(x), dims(y), win)
    if x.dtype != y.dtype:
        raise ValueError(f"{name}: dtypes differ: {x.dtype} vs {y.dtype}")


def _argmax(name, am, y):
    if dims(am) != dims(y) or am.dtype != np.int32:
        raise ValueError(f"{name}: argmax {dims(am)} {am.dtype} does not fit {dims(y)}")


def _maxpool(x, y, am, win):
    kh, kw, sh, sw, pt, _, pl, _ = win
    launch(_maxpool_fwd, y.size, x, y, am, kh, kw, sh, sw, pt, pl)


def _maxpool_back(gy, am, gx, win):
    kh, kw, sh, sw, pt, _, pl, _ = win
    launch(_maxpool_bwd, gx.size, gy, am, gx, gx.dtype.type(0), kh, kw, sh, sw, pt, pl)


def _divisors(x, y, win, include_pad):
    kh, kw, sh, sw, pt, _, pl, _ = win
    (_, h, w, _), (_, oh, ow, _) = dims(x), dims(y)
    return (_inverse_counts(h, kh, sh, pt, oh, include_pad, x.dtype),
            _inverse_counts(w, kw, sw, pl, ow, include_pad, x.dtype))


def _avgpool(x, y, win, include_pad):
    kh, kw, sh, sw, pt, _, pl, _ = win
    hinv, winv = _divisors(x, y, win, include_pad)
    launch(_avgpool_fwd, y.size, x, y, hinv, winv, x.dtype.type(0), kh, kw, sh, sw, pt, pl)


def _avgpool_back(gy, gx, win, include_pad):
    kh, kw, sh, sw, pt, _, pl, _ = win
    hinv, winv = _divisors(gx, gy, win, include_pad)
    launch(_avgpool_bwd, gx.size, gy, gx, hinv, winv, gx.dtype.type(0), kh, kw, sh, sw, pt, pl)


def _global(name, x, y):
    """The window of a global pool of x (N, H, W, C) into y (N, C), and y as (N, 1, 1, C)."""
    n, h, w, c = dims(x)
    if dims(y) != (n, c) or x.dtype != y.dtype:
        raise ValueError(f"{name}: {dims(x)} does not pool into {dims(y)}")
    return (h, w, 1, 1, 0, 0, 0, 0), y.reshape(n, 1, 1, c)


# ---------------------------------------------------------------- the kernels

@kernel("maxpool2d")
def maxpool2d(ins, outs, attrs, ctx):
    x, (y, am) = ins[0], outs
    win = pool_window(attrs)
    _check("maxpool2d", x, y, win)
    _argmax("maxpool2d", am, y)
    _maxpool(x, y, am, win)


@kernel("maxpool2d_bwd")
def maxpool2d_bwd(ins, outs, attrs, ctx):
    gy, am = ins
    win = pool_window(attrs)
    _check("maxpool2d_bwd", outs[0], gy, win)
    _argmax("maxpool2d_bwd", am, gy)
    _maxpool_back(gy, am, outs[0], win)


@kernel("avgpool2d")
def avgpool2d(ins, outs, attrs, ctx):
    win = pool_window(attrs)
    _check("avgpool2d", ins[0], outs[0], win)
    _avgpool(ins[0], outs[0], win, bool(attrs.get("include_pad", False)))


@kernel("avgpool2d_bwd")
def avgpool2d_bwd(ins, outs, attrs, ctx):
    win = pool_window(attrs)
    _check("avgpool2d_bwd", outs[0], ins[0], win)
    _avgpool_back(ins[0], outs[0], win, bool(attrs.get("include_pad", False)))


@kernel("global_avgpool")
def global_avgpool(ins, outs, attrs, ctx):
    win, y = _global("global_avgpool", ins[0], outs[0])
    _avgpool(ins[0], y, win, False)


@kernel("global_avgpool_bwd")
def global_avgpool_bwd(ins, outs, attrs, ctx):
    win, gy = _global("global_avgpool_bwd", outs[0], ins[0])
    _avgpool_back(gy, outs[0], win, False)


@kernel("global_maxpool")
def global_maxpool(ins, outs, attrs, ctx):
    x, (y, am) = ins[0], outs
    win, y4 = _global("global_maxpool", x, y)
    _argmax("global_maxpool", am, y)
    n, c = dims(y)
    _maxpool(x, y4, am.reshape(n, 1, 1, c), win)


@kernel("global_maxpool_bwd")
def global_maxpool_bwd(ins, outs, attrs, ctx):
    gy, am = ins
    win, gy4 = _global("global_maxpool_bwd", outs[0], gy)
    _argmax("global_maxpool_bwd", am, gy)
    n, c = dims(gy)
    _maxpool_back(gy4, am.reshape(n, 1, 1, c), outs[0], win)
