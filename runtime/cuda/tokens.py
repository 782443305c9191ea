"""Sequence CUDA kernels (tokens (N, T, F)): multi-head self-attention forward and backward,
the class token put first (prepend_token), a part of the tokens cut out and put back
(slice_tokens, pad_tokens), a per-sample tensor added to every sample (add_broadcast) and its
adjoint, the sum over the batch (sum_batch).

Attention computes formulas.py's rows and elements, as the CPU target does: one thread per
(sample, head, query) row for the weights and the scores' gradient, one per output element
for the values and the gradient of q, k and v (a gather: no atomics); every sum in float64,
in a fixed order.
"""

from __future__ import annotations


import numpy as np
from numba import cuda

from .. import formulas
from ..operands import attention_operands, per_sample, per_token, same_shape, token_operands
from .conv import column_sums
from .launch import device_function, dims, flat, launch
from .table import kernel

_attention_row = device_function(formulas.attention_row)
_attention_value = device_function(formulas.attention_value)
_scores_grad_row = device_function(formulas.attention_scores_grad_row)
_qkv_grad = device_function(formulas.attention_qkv_grad)


@cuda.jit
def _attention_weights(qkv, weights, scale):
    N, H, T = weights.shape[0], weights.shape[1], weights.shape[2]
    for r in range(cuda.grid(1), N * H * T, cuda.gridsize(1)):
        _attention_row(qkv, weights, r // (H * T), (r // T) % H, r % T, scale)


@cuda.jit
def _attention_values(qkv, weights, y):
    N, T, E = y.shape
    for k in range(cuda.grid(1), N * T * E, cuda.gridsize(1)):
        _attention_value(qkv, weights, y, k // (T * E), (k // E) % T, k % E)


@cuda.jit
def _scores_grads(gy, qkv, weights, y, gscores):
    N, H, T = weights.shape[0], weights.shape[1], weights.shape[2]
    for r in range(cuda.grid(1), N * H * T, cuda.gridsize(1)):
        _scores_grad_row(gy, qkv, weights, y, gscores, r // (H * T), (r // T) % H, r % T)


@cuda.jit
def _qkv_grads(gy, qkv, weights, gscores, gqkv, scale):
    N, T, F3 = gqkv.shape
    for k in range(cuda.grid(1), N * T * F3, cuda.gridsize(1)):
        _qkv_grad(gy, qkv, weights, gscores, gqkv, k // (T * F3), (k // F3) % T, k % F3, scale)



@kernel("attention")
def attention(ins, outs, attrs, ctx):
    (qkv,), (y, weights) = ins, outs
    scale = attention_operands("attention", qkv, y, weights, attrs["heads"])
    launch(_attention_weights, weights.size // dims(weights)[-1], qkv, weights,
           scale)
    launch(_attention_values, y.size, qkv, weights, y)


@kernel("attention_bwd")
def attention_bwd(ins, outs, attrs, ctx):
    gy, qkv, weights, y = ins
    gqkv, gscores = outs
    scale = attention_operands("attention_bwd", qkv, y, weights, attrs["heads"], (gy, gqkv, gscores))
    launch(_scores_grads, weights.size // dims(weights)[-1], gy, qkv, weights, y, gscores)
    launch(_qkv_grads, gqkv.size, gy, qkv, weights, gscores, gqkv, scale)


@cuda.jit
def _prepend(x, token, y):
    """y[n, 0] = token, y[n, t] = x[n, t - 1] after it."""
    N, T1, F = y.shape
    for i in range(cuda.grid(1), N * T1 * F, cuda.gridsize(1)):
        n, t, f = i // (T1 * F), (i // F) % T1, i % F
        y[n, t, f] = token[f] if t == 0 else x[n, t - 1, f]


@cuda.jit
def _slice(x, y, start):
    """y[n, t] = x[n, start + t]."""
    N, T, F = y.shape
    for i in range(cuda.grid(1), N * T * F, cuda.gridsize(1)):
        n, t, f = i // (T * F), (i // F) % T, i % F
        y[n, t, f] = x[n, start + t, f]


@cuda.jit
def _pad(gy, gx, start):
    """gx[n, t] = gy[n, t - start] for the tokens gy holds, zero elsewhere."""
    N, T, F = gx.shape
    count = gy.shape[1]
    for i in range(cuda.grid(1), N * T * F, cuda.gridsize(1)):
        n, t, f = i // (T * F), (i // F) % T, i % F
        gx[n, t, f] = gy[n, t - start, f] if start <= t < start + count else gx.dtype.type(0)


def _tokens(name, sequence, part, start):
    """`part` as (N, T', F), and the token it starts at."""
    count, start = token_operands(name, sequence, part, start)
    return flat(part).reshape(dims(part)[0], count, dims(sequence)[-1]), start


@kernel("prepend_token")
def prepend_token(ins, outs, attrs, ctx):
    x, token = ins
    y = outs[0]
    token_operands("prepend_token", y, x, 1)
    per_token("prepend_token", y, token)
    launch(_prepend, y.size, x, flat(token), y)


@kernel("slice_tokens")
def slice_tokens(ins, outs, attrs, ctx):
    x = ins[0]
    y, start = _tokens("slice_tokens", x, outs[0], attrs["start"])
    launch(_slice, y.size, x, y, start)


@kernel("pad_tokens")
def pad_tokens(ins, outs, attrs, ctx):
    gx = outs[0]
    gy, start = _tokens("pad_tokens", gx, ins[0], attrs["start"])
    launch(_pad, gx.size, gy, gx, start)


@cuda.jit
def _add_broadcast(x, b, y):
    """y[i] = x[i] + b[i % b.size] (y may be x)."""
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        y[i] = x[i] + b[i % b.size]


# in place: y over x, elementwise
@kernel("add_broadcast", inplace=((0, (0,)),))
def add_broadcast(ins, outs, attrs, ctx):
    x, b = ins
    y = outs[0]
    same_shape("add_broadcast", x, y)
    per_sample("add_broadcast", x, b)
    launch(_add_broadcast, x.size, flat(x), flat(b), flat(y))


@kernel("sum_batch")
def sum_batch(ins, outs, attrs, ctx):
    g, s = ins[0], outs[0]
    per_sample("sum_batch", g, s)
    launch(column_sums, s.size, flat(g).reshape(dims(g)[0], s.size), flat(s))
