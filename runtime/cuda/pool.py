"""Pooling and padding CUDA kernels on channels-last maps: max and average pools (padding
never wins a max; either divisor for the average), their adaptive and global forms, and
padding, forward and backward.

One kernel (_pool) serves every pool instruction, reading the windows of each axis as tables
the host computes (runtime/windows.py, the CPU target's too). Forward: one thread per output
element, its window read in row-major order. Backward: one thread per input element,
gathering from the windows that hold it in row-major order, so no two threads write one
element (no atomics) and the sums run in the CPU kernels' order. The average pools' per-axis
divisors are computed on the host, in float64, then rounded to the arrays' dtype, as the CPU
target's are. Padding likewise: one thread per element, gathering.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from ..windows import POOL_INSTRUCTIONS, pad_axes, pool_kind_axes
from .launch import dims, empty, launch, to_device, unravel
from .table import kernel


@cuda.jit
def _pool(src, am, out, hfirst, hend, hstep, wfirst, wend, wstep, hinv, winv, zero, is_max,
          backward):
    """Every pool, forward and backward: one thread per element of out, gathering from src in
    row-major order over the tables of each axis (runtime/windows.py). Forward (src x, out y;
    the tables name each window's positions): a max pool's first maximum of the window (a NaN
    wins; am = its h * W + w), an average pool's sum times the divisors' inverses. Backward
    (src gy, out gx; the tables name the windows that hold each position, step 1): the sum of
    gy over them (a max pool's: those whose am is the element; an average pool's: each times
    its divisors' inverses)."""
    _, A, B, C = out.shape
    _, SA, SB, _ = src.shape
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        n, a, b, c = unravel(i, A, B, C)
        if is_max and not backward:
            best = src[n, 0, 0, c]
            pos = -1
            for p in range(hfirst[a], hend[a], hstep):
                for q in range(wfirst[b], wend[b], wstep):
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
            for p in range(hfirst[a], hend[a], hstep):
                for q in range(wfirst[b], wend[b], wstep):
                    if is_max:
                        if am[n, p, q, c] == a * B + b:
                            acc += src[n, p, q, c]
                    elif backward:
                        acc += src[n, p, q, c] * (hinv[p] * winv[q])
                    else:
                        acc += src[n, p, q, c]
            out[n, a, b, c] = acc if backward or is_max else acc * (hinv[a] * winv[b])


@cuda.jit
def _pad(x, y, hsource, wsource, value):
    """One thread per element of y: x at the row and column the tables name, value where
    either is -1."""
    _, A, B, C = y.shape
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        n, a, b, c = unravel(i, A, B, C)
        p, q = hsource[a], wsource[b]
        y[n, a, b, c] = value if p < 0 or q < 0 else x[n, p, q, c]


@cuda.jit
def _pad_bwd(gy, gx, hreaders, hoffsets, wreaders, woffsets, zero):
    """One thread per element of gx: the sum of gy over the padded elements that read it, in
    increasing order (the CPU kernel's)."""
    _, A, B, C = gx.shape
    for i in range(cuda.grid(1), gx.size, cuda.gridsize(1)):
        n, a, b, c = unravel(i, A, B, C)
        acc = zero
        for r in range(hoffsets[a], hoffsets[a + 1]):
            for s in range(woffsets[b], woffsets[b + 1]):
                acc += gy[n, hreaders[r], wreaders[s], c]
        gx[n, a, b, c] = acc


def _argmax(name, am, y):
    if dims(am) != dims(y) or am.dtype != np.int32:
        raise ValueError(f"{name}: argmax {dims(am)} {am.dtype} does not fit {dims(y)}")


def _same_dtype(name, x, y):
    if x.dtype != y.dtype:
        raise ValueError(f"{name}: dtypes differ: {x.dtype} vs {y.dtype}")


def _tables(axis, backward, dtype):
    """(first, end, step, inv) of one axis on the device: the positions of each window, or
    (backward) the windows that hold each position."""
    first, end, step = (axis.lo, axis.hi, 1) if backward else (axis.first, axis.end, axis.step)
    return to_device(first), to_device(end), step, to_device(axis.inv.astype(dtype))


# ---------------------------------------------------------------- the kernels

def _pool_instruction(name, is_max, backward, kind):
    """Registers pool instruction `name`: forward (x -> y, and a max pool's argmax) or backward
    (gy and a max pool's argmax -> gx), of a global pool (y (N, C), viewed as (N, 1, 1, C)), an
    adaptive pool or a pool with the window of its attributes; its operands checked, then _pool
    over its output."""
    def run(ins, outs, attrs, ctx):
        x, y = (outs[0], ins[0]) if backward else (ins[0], outs[0])
        _same_dtype(name, x, y)
        axes = pool_kind_axes(kind, name, attrs, dims(x), dims(y))
        y4 = y.reshape(dims(y)[0], 1, 1, dims(y)[-1]) if kind == "global" else y
        if is_max:
            am = ins[1] if backward else outs[1]
            _argmax(name, am, y)
            am = am.reshape(*dims(y4))
        else:
            am = empty((1, 1, 1, 1), np.int32)
        src, out = (y4, x) if backward else (x, y4)
        hf, he, hs, hinv = _tables(axes[0], backward, x.dtype)
        wf, we, ws, winv = _tables(axes[1], backward, x.dtype)
        launch(_pool, out.size, src, am, out, hf, he, hs, wf, we, ws, hinv, winv,
               out.dtype.type(0), is_max, backward)
    kernel(name)(run)


for _instruction in POOL_INSTRUCTIONS:
    _pool_instruction(*_instruction)


def _pad_axes(name, attrs, x, y):
    """The two axes' padding tables of pad2d's x (N, H, W, C) into y, checked (pad2d_bwd's: gx
    and gy)."""
    _same_dtype(name, x, y)
    hp, wp, _ = pad_axes(name, attrs, dims(x), dims(y))
    return hp, wp


@kernel("pad2d")
def pad2d(ins, outs, attrs, ctx):
    x, y = ins[0], outs[0]
    hp, wp = _pad_axes("pad2d", attrs, x, y)
    launch(_pad, y.size, x, y, to_device(hp.source), to_device(wp.source),
           y.dtype.type(attrs.get("value", 0.0)))


@kernel("pad2d_bwd")
def pad2d_bwd(ins, outs, attrs, ctx):
    gy, gx = ins[0], outs[0]
    hp, wp = _pad_axes("pad2d_bwd", attrs, gx, gy)
    launch(_pad_bwd, gx.size, gy, gx, to_device(hp.readers), to_device(hp.offsets),
           to_device(wp.readers), to_device(wp.offsets), gx.dtype.type(0))
