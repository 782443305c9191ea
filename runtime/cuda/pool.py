"""Pooling CUDA kernels on channels-last maps: max and average pools (padding never wins a
max; either divisor for the average) and their global forms, forward and backward.

One kernel (_pool) serves every pool instruction. Forward: one thread per output element, its
window read in row-major order. Backward: one thread per input element, gathering from the windows that hold it in row-major order, so no
two threads write one element (no atomics) and the sums run in the CPU kernels' order.
The average pools' per-axis divisors are computed on the host, in float64, then rounded to
the arrays' dtype, as the CPU target's are.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from ..isa import pool_window, pooled_shape
from .launch import device_function, dims, empty, launch, to_device, unravel
from .table import kernel


@device_function
def _reach(a, k, s, p, size, backward):
    """The positions [first, last + 1) along one axis that element a gathers from: forward,
    the input positions of output a's window, clipped to the image (`size` positions);
    backward, the output windows (`size` of them) that hold input position a."""
    if backward:
        return max(0, -((k - 1 - a - p) // s)), min(size - 1, (a + p) // s) + 1
    return max(a * s - p, 0), min(a * s - p + k, size)


@cuda.jit
def _pool(src, am, out, hinv, winv, zero, is_max, backward, kh, kw, sh, sw, pt, pl):
    """Every pool, forward and backward: one thread per element of out, gathering from src in
    row-major order. Forward (src x, out y): a max pool's first maximum of the clipped window
    (a NaN wins; am = its h * W + w), an average pool's sum times the divisors' inverses.
    Backward (src gy, out gx): the sum of gy over the windows that hold the element (a max
    pool's: those whose am is it; an average pool's: each times its divisors' inverses)."""
    _, A, B, C = out.shape
    _, SA, SB, _ = src.shape
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        n, a, b, c = unravel(i, A, B, C)
        a0, a1 = _reach(a, kh, sh, pt, SA, backward)
        b0, b1 = _reach(b, kw, sw, pl, SB, backward)
        if is_max and not backward:
            best = src[n, 0, 0, c]
            pos = -1
            for p in range(a0, a1):
                for q in range(b0, b1):
                    v = src[n, p, q, c]
                    if pos < 0 or v > best or (v != v and best == best):
                        best = v
                        pos = p * SB + q
            if pos < 0:       # a window entirely in the padding (the shape rules forbid it)
                out[n, a, b, c] = -math.inf
            else:
                out[n, a, b, c] = best
            am[n, a, b, c] = pos
        else:
            acc = zero
            for p in range(a0, a1):
                for q in range(b0, b1):
                    if not is_max:
                        acc += src[n, p, q, c] * (hinv[p] * winv[q]) if backward else src[n, p, q, c]
                    elif am[n, p, q, c] == a * B + b:
                        acc += src[n, p, q, c]
            out[n, a, b, c] = acc if backward or is_max else acc * (hinv[a] * winv[b])


def _inverse_counts(size, k, s, p, out, include_pad, dtype):
    """1 / (the positions each of the `out` windows counts along one axis), on the device."""
    inv = np.empty(out)
    for o in range(out):
        a = o * s - p
        count = k if include_pad else min(a + k, size) - max(a, 0)
        inv[o] = 1.0 / count if count > 0 else 0.0
    return to_device(inv.astype(dtype))


def _argmax(name, am, y):
    if dims(am) != dims(y) or am.dtype != np.int32:
        raise ValueError(f"{name}: argmax {dims(am)} {am.dtype} does not fit {dims(y)}")


def _divisors(x, y, win, include_pad):
    kh, kw, sh, sw, pt, _, pl, _ = win
    (_, h, w, _), (_, oh, ow, _) = dims(x), dims(y)
    return (_inverse_counts(h, kh, sh, pt, oh, include_pad, x.dtype),
            _inverse_counts(w, kw, sw, pl, ow, include_pad, x.dtype))


def _global(name, x, y):
    """The window of a global pool of x (N, H, W, C) into y (N, C)."""
    n, h, w, c = dims(x)
    if dims(y) != (n, c) or x.dtype != y.dtype:
        raise ValueError(f"{name}: {dims(x)} does not pool into {dims(y)}")
    return h, w, 1, 1, 0, 0, 0, 0


def _windowed(name, x, y, attrs):
    """The window of a pool of x (N, H, W, C) into y (N, OH, OW, C), by its attributes."""
    win = pool_window(attrs)
    pooled_shape(name, dims(x), dims(y), win)
    if x.dtype != y.dtype:
        raise ValueError(f"{name}: dtypes differ: {x.dtype} vs {y.dtype}")
    return win


# ---------------------------------------------------------------- the kernels

def _pool_instruction(name, is_max, backward, is_global):
    """Registers pool instruction `name`: forward (x -> y, and a max pool's argmax) or backward
    (gy and a max pool's argmax -> gx), global (y (N, C), viewed as (N, 1, 1, C)) or with the
    window of its attributes; its operands checked, then _pool over its output."""
    def run(ins, outs, attrs, ctx):
        x, y = (outs[0], ins[0]) if backward else (ins[0], outs[0])
        win = _global(name, x, y) if is_global else _windowed(name, x, y, attrs)
        y4 = y.reshape(dims(y)[0], 1, 1, dims(y)[-1]) if is_global else y
        if is_max:
            am = ins[1] if backward else outs[1]
            _argmax(name, am, y)
            am, hinv, winv = am.reshape(*dims(y4)), empty(1, x.dtype), empty(1, x.dtype)
        else:
            am = empty((1, 1, 1, 1), np.int32)
            hinv, winv = _divisors(x, y4, win, bool(attrs.get("include_pad", False)))
        src, out = (y4, x) if backward else (x, y4)
        kh, kw, sh, sw, pt, _, pl, _ = win
        launch(_pool, out.size, src, am, out, hinv, winv, out.dtype.type(0), is_max, backward,
               kh, kw, sh, sw, pt, pl)
    kernel(name)(run)


for _kind in ("max", "avg"):
    for _global_pool in (False, True):
        _name = f"global_{_kind}pool" if _global_pool else f"{_kind}pool2d"
        _pool_instruction(_name, _kind == "max", False, _global_pool)
        _pool_instruction(_name + "_bwd", _kind == "max", True, _global_pool)
