"""Resampling and moving channels on the CPU: upsample (nearest, bilinear) forward and backward,
channel shuffle.

An upsample's output element is formulas.resampled over the taps runtime/resample.py computes
(as PyTorch does; the CUDA kernels call the formula itself), its gradient the same sum over the
transposed taps: one jitted loop serves both directions and both modes, each element written
once, so the backward pass gathers without races and in a fixed order.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..operands import check_upsample, shuffle_groups
from ..resample import upsample_taps
from .elementwise import JIT, rows
from .table import kernel

@njit(parallel=True, **JIT)
def _resample(src, out, rows_taps, cols_taps):
    """out[n, p, q, c] = formulas.resampled(src, n, p, q, c, rows_taps, cols_taps): the same
    float64 sums in the same order, each over a whole pixel's channels at once so that the
    channel loops vectorise; one (image, row) per parallel item."""
    row_at, row_index, row_weight = rows_taps
    col_at, col_index, col_weight = cols_taps
    N, P, Q, C = out.shape
    for j in prange(N * P):
        n, p = j // P, j % P
        s = np.empty(C)
        t = np.empty(C)
        for q in range(Q):
            s[:] = 0.0
            for a in range(row_at[p], row_at[p + 1]):
                i = row_index[a]
                t[:] = 0.0
                for b in range(col_at[q], col_at[q + 1]):
                    k, wb = col_index[b], np.float64(col_weight[b])
                    for c in range(C):
                        t[c] += wb * np.float64(src[n, i, k, c])
                wa = np.float64(row_weight[a])
                for c in range(C):
                    s[c] += wa * t[c]
            for c in range(C):
                out[n, p, q, c] = s[c]


@kernel("upsample")
def upsample(ins, outs, attrs, ctx):
    x, y = ins[0], outs[0]
    check_upsample("upsample", x, y)
    (row_taps, col_taps), _ = upsample_taps(attrs, x.shape, y.shape, x.dtype)
    _resample(x, y, tuple(row_taps), tuple(col_taps))


@kernel("upsample_bwd")
def upsample_bwd(ins, outs, attrs, ctx):
    gy, gx = ins[0], outs[0]
    check_upsample("upsample_bwd", gy, gx)
    _, (row_taps, col_taps) = upsample_taps(attrs, gx.shape, gy.shape, gy.dtype)
    _resample(gy, gx, tuple(row_taps), tuple(col_taps))


# ---- channel shuffle (a NumPy copy: memory-bound, nothing to gain from a jitted loop)

@kernel("channel_shuffle")
def channel_shuffle(ins, outs, attrs, ctx):
    x, y = ins[0], outs[0]
    g = shuffle_groups(x, y, attrs["groups"])
    c = x.shape[-1]
    # channel g * K + k of x is channel k * groups + g of y
    rows(y).reshape(-1, c // g, g)[...] = rows(x).reshape(-1, g, c // g).transpose(0, 2, 1)
