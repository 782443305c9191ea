"""Sequence CPU kernels (tokens (N, T, F)): multi-head self-attention forward and backward,
the class token put first (prepend_token), a part of the tokens cut out and put back
(slice_tokens, pad_tokens), a per-sample tensor added to every sample (add_broadcast) and its
adjoint, the sum over the batch (sum_batch).

Attention computes formulas.py's rows and elements, as the CUDA target does: one parallel
loop over the (sample, head, query) rows for the weights and the scores' gradient, one over
the output elements for the values and the gradient of q, k and v; every sum in float64.
"""

from __future__ import annotations


import numpy as np
from numba import njit, prange

from .. import formulas
from ..operands import attention_operands, per_sample, per_token, same_shape, token_operands
from .elementwise import JIT
from .table import kernel

_attention_row = njit(**JIT)(formulas.attention_row)
_attention_value = njit(**JIT)(formulas.attention_value)
_scores_grad_row = njit(**JIT)(formulas.attention_scores_grad_row)
_qkv_grad = njit(**JIT)(formulas.attention_qkv_grad)


@njit(parallel=True, **JIT)
def _attention(qkv, y, weights, scale):
    N, T, E = y.shape
    H = weights.shape[1]
    for r in prange(N * H * T):
        _attention_row(qkv, weights, r // (H * T), (r // T) % H, r % T, scale)
    for k in prange(N * T * E):
        _attention_value(qkv, weights, y, k // (T * E), (k // E) % T, k % E)


@njit(parallel=True, **JIT)
def _attention_bwd(gy, qkv, weights, y, gqkv, gscores, scale):
    N, T, E = y.shape
    H = weights.shape[1]
    for r in prange(N * H * T):
        _scores_grad_row(gy, qkv, weights, y, gscores, r // (H * T), (r // T) % H, r % T)
    F3 = 3 * E
    for k in prange(N * T * F3):
        _qkv_grad(gy, qkv, weights, gscores, gqkv, k // (T * F3), (k // F3) % T, k % F3, scale)



@kernel("attention")
def attention(ins, outs, attrs, ctx):
    (qkv,), (y, weights) = ins, outs
    scale = attention_operands("attention", qkv, y, weights, attrs["heads"])
    _attention(qkv, y, weights, scale)


@kernel("attention_bwd")
def attention_bwd(ins, outs, attrs, ctx):
    gy, qkv, weights, y = ins
    gqkv, gscores = outs
    scale = attention_operands("attention_bwd", qkv, y, weights, attrs["heads"], (gy, gqkv, gscores))
    _attention_bwd(gy, qkv, weights, y, gqkv, gscores, scale)


@kernel("prepend_token")
def prepend_token(ins, outs, attrs, ctx):
    x, token = ins
    y = outs[0]
    token_operands("prepend_token", y, x, 1)
    per_token("prepend_token", y, token)
    y[:, 0] = token.reshape(-1)
    y[:, 1:] = x


def _tokens(name, sequence, part, start):
    """The tokens of `sequence` that `part` holds, and `part` as (N, T', F)."""
    count, start = token_operands(name, sequence, part, start)
    return sequence[:, start:start + count], part.reshape(len(part), count, -1)


@kernel("slice_tokens")
def slice_tokens(ins, outs, attrs, ctx):
    src, dst = _tokens("slice_tokens", ins[0], outs[0], attrs["start"])
    dst[...] = src


@kernel("pad_tokens")
def pad_tokens(ins, outs, attrs, ctx):
    gx = outs[0]
    dst, src = _tokens("pad_tokens", gx, ins[0], attrs["start"])
    gx[...] = 0
    dst[...] = src


# in place: y over x, elementwise
@kernel("add_broadcast", inplace=((0, (0,)),))
def add_broadcast(ins, outs, attrs, ctx):
    x, b = ins
    y = outs[0]
    same_shape("add_broadcast", x, y)
    per_sample("add_broadcast", x, b)
    np.add(x, b.reshape(x.shape[1:]), out=y)


@kernel("sum_batch")
def sum_batch(ins, outs, attrs, ctx):
    g, s = ins[0], outs[0]
    per_sample("sum_batch", g, s)
    s.reshape(-1)[...] = g.reshape(len(g), -1).sum(axis=0, dtype=np.float64)
