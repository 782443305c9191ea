"""Formulas every target computes, written once as plain Python over scalars and array
elements: the CPU target compiles them with numba.njit, the CUDA target with
numba.cuda.jit(device=True, inline=True), so the two compute the same thing in the same order.

Each works on one row (or one element) of a (rows, C) view, the channel last; the targets'
kernels choose which rows a call or a thread takes.
"""

from __future__ import annotations

import math

import numpy as np


def softmax_row(x, y, lse, r):
    """y[r] = softmax(x[r]) and lse[r] = log(sum(exp(x[r]))), stably: the sum in float64,
    its inverse rounded to y's dtype before it scales the row."""
    K = x.shape[1]
    m = x[r, 0]
    for k in range(1, K):
        m = max(m, x[r, k])
    s = 0.0
    for k in range(K):
        e = math.exp(x[r, k] - m)
        y[r, k] = e
        s += e
    inv = y.dtype.type(1.0 / s)
    for k in range(K):
        y[r, k] *= inv
    lse[r] = m + math.log(s)


def softmax_bwd_row(gy, y, gx, r):
    """gx[r] = y[r] * (gy[r] - sum(gy[r] * y[r])), the sum in float64 (gx may be gy)."""
    K = y.shape[1]
    d = 0.0
    for k in range(K):
        d += gy[r, k] * y[r, k]
    dd = y.dtype.type(d)
    for k in range(K):
        gx[r, k] = y[r, k] * (gy[r, k] - dd)


def lrn_denominator(x, r, c, size, alpha_n, k):
    """k + alpha / size * the sum of x[r]^2 over channels c - size//2 ... c + (size-1)//2,
    in float64 (alpha_n = alpha / size)."""
    C = x.shape[1]
    s = 0.0
    for j in range(max(c - size // 2, 0), min(c + (size - 1) // 2 + 1, C)):
        v = np.float64(x[r, j])
        s += v * v
    return k + alpha_n * s


def pow_neg(d, beta):
    """d ** -beta; AlexNet's beta = 0.75 by two square roots instead of a pow."""
    return 1.0 / math.sqrt(d * math.sqrt(d)) if beta == 0.75 else d ** -beta


def resampled(x, n, p, q, c, rows, cols):
    """The sum over the taps a of row p and b of column q (runtime/resample.py: rows and cols
    are (at, index, weight) tables) of weight_a * weight_b * x[n, index_a, index_b, c], in
    float64: an upsample's output element, or, over the transposed tables, its gradient's. (The
    CPU target computes the same sums in this order a whole pixel at a time, its channel loops
    innermost: runtime/cpu/resample.py.)"""
    row_at, row_index, row_weight = rows
    col_at, col_index, col_weight = cols
    s = 0.0
    for a in range(row_at[p], row_at[p + 1]):
        i = row_index[a]
        t = 0.0
        for b in range(col_at[q], col_at[q + 1]):
            t += np.float64(col_weight[b]) * np.float64(x[n, i, col_index[b], c])
        s += np.float64(row_weight[a]) * t
    return s
