"""Normalisation and regularisation CPU kernels: batch norm (training and
inference, forward and backward), layer norm, local response norm, dropout, drop_path.

The channel is the last axis: every tensor is viewed as (rows, C), so one
compiled function per dtype serves vectors (N, C) and maps (N, H, W, C).
Batch norm is built from two jitted pieces: column sums (its statistics and
its gradient sums, accumulated in float64 per chunk of rows, then added up in
a fixed order so results do not depend on the thread count) and one per-channel
affine map (its output and its input gradient).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .. import formulas
from ..isa import lrn_attrs
from ..operands import batch_sums_operand, channel_operands, drop_path_draw, dropout_draw, layernorm_operands, same_shape
from .elementwise import CHUNK, JIT, MUL, PARALLEL_MIN, binary, inlined, rows, same_data, scale_samples
from .table import kernel


# ---- the jitted pieces

@njit(**JIT)
def _col_sums(g, x, shift, s1, s2, r0, r1):
    """Over rows r0..r1: s1[c] += g[r, c], s2[c] += g[r, c] * (x[r, c] - shift[c]),
    in float64 (s1, s2, shift are float64)."""
    C = g.shape[1]
    for r in range(r0, r1):
        for c in range(C):
            gv = np.float64(g[r, c])
            s1[c] += gv
            s2[c] += gv * (np.float64(x[r, c]) - shift[c])


@njit(parallel=True, **JIT)
def _col_sums_par(g, x, shift, p1, p2, per):
    """p1[t], p2[t]: the column sums of chunk t (rows t * per ...)."""
    R = g.shape[0]
    for t in prange(p1.shape[0]):
        _col_sums(g, x, shift, p1[t], p2[t], t * per, min(t * per + per, R))


@njit(fastmath={"contract"}, **JIT)
def _affine(a, b, shift, ca, cb, cc, out, r0, r1):
    """Over rows r0..r1: out = a * ca + (b - shift) * cb + cc, per channel."""
    C = a.shape[1]
    for r in range(r0, r1):
        for c in range(C):
            out[r, c] = a[r, c] * ca[c] + (b[r, c] - shift[c]) * cb[c] + cc[c]


_affine_inl = inlined(_affine, fastmath={"contract"})

# where _affine writes: a separate output, or over one of its inputs (the memory planner's
# in-place writes; the shared array is passed once so the loop vectorises, see
# elementwise.inlined)
INTO_OUT, INTO_A, INTO_B, INTO_AB = range(4)


@njit(fastmath={"contract"}, **JIT)
def _affine_into(a, b, shift, ca, cb, cc, out, r0, r1, into):
    if into == INTO_A:
        _affine_inl(a, b, shift, ca, cb, cc, a, r0, r1)
    elif into == INTO_B:
        _affine_inl(a, b, shift, ca, cb, cc, b, r0, r1)
    elif into == INTO_AB:
        _affine_inl(a, a, shift, ca, cb, cc, a, r0, r1)
    else:
        _affine(a, b, shift, ca, cb, cc, out, r0, r1)


@njit(parallel=True, **JIT)
def _affine_par(a, b, shift, ca, cb, cc, out, per, into):
    R = a.shape[0]
    for t in prange((R + per - 1) // per):
        _affine_into(a, b, shift, ca, cb, cc, out, t * per, min(t * per + per, R), into)


def _rows_per_chunk(x2):
    return max(1, CHUNK // max(x2.shape[1], 1))


def col_sums(g2, x2, shift):
    """(sum of g, sum of g * (x - shift)) over the rows of (R, C) arrays, float64 (C,)."""
    R, C = g2.shape
    per = _rows_per_chunk(g2)
    chunks = (R + per - 1) // per
    p1 = np.zeros((chunks, C))
    p2 = np.zeros((chunks, C))
    if g2.size >= PARALLEL_MIN and chunks > 1:
        _col_sums_par(g2, x2, shift, p1, p2, per)
    else:
        for t in range(chunks):
            _col_sums(g2, x2, shift, p1[t], p2[t], t * per, min(t * per + per, R))
    return p1.sum(axis=0), p2.sum(axis=0)


def affine(a2, b2, shift, ca, cb, cc, out2):
    """out = a * ca + (b - shift) * cb + cc over (R, C) arrays; the vectors are cast to
    the arrays' dtype."""
    dt = out2.dtype
    vecs = [np.ascontiguousarray(v, dtype=dt) for v in (shift, ca, cb, cc)]
    R = out2.shape[0]
    on_a, on_b = same_data(out2, a2), same_data(out2, b2)
    into = INTO_AB if on_a and on_b else INTO_A if on_a else INTO_B if on_b else INTO_OUT
    if out2.size >= PARALLEL_MIN:
        _affine_par(a2, b2, *vecs, out2, _rows_per_chunk(out2), into)
    else:
        _affine_into(a2, b2, *vecs, out2, 0, R, into)


# ---- batch norm

# in place (batch norm): the statistics (col_sums) read every element first, then _affine
# writes out[r,c] from a[r,c], b[r,c] index by index; _affine_into passes a shared array once
@kernel("batchnorm_train", inplace=((0, (0,)),))
def batchnorm_train(ins, outs, attrs, ctx):
    x, w, b, rm, rv = ins
    channel_operands("batchnorm_train", (x, outs[0]), (w, b, rm, rv, *outs[1:]))
    x2 = rows(x)
    count = x2.shape[0]
    # one pass: sums of x and of x * (x - x0), x0 = the first row (shifted data keeps
    # the variance accurate when |mean| >> std)
    x0 = x2[0].astype(np.float64)
    s1, s2 = col_sums(x2, x2, x0)
    d = s1 - count * x0                              # sum of (x - x0)
    var = np.maximum((s2 - x0 * d) / count - (d / count) ** 2, 0.0)
    _normalize(x2, w, b, rm, rv, s1 / count, var, count, attrs, outs)


def _normalize(x2, w, b, rm, rv, mean, var, count, attrs, outs):
    """y = (x - mean) * invstd * w + b with the batch's mean and biased variance (float64,
    per channel) over `count` rows; the statistics out, the running ones updated in place."""
    y, mean_out, invstd_out, rm_out, rv_out = outs
    momentum, eps = float(attrs["momentum"]), float(attrs["epsilon"])
    invstd = 1.0 / np.sqrt(var + eps)
    affine(x2, x2, mean, np.zeros_like(mean), invstd * w, b, rows(y))
    mean_out[...] = mean
    invstd_out[...] = invstd
    unbiased = var * count / (count - 1) if count > 1 else var
    rm_out[...] = momentum * rm.astype(np.float64) + (1 - momentum) * mean   # in place: rm's buffer
    rv_out[...] = momentum * rv.astype(np.float64) + (1 - momentum) * unbiased


@kernel("batchnorm_train_bwd", inplace=((0, (0, 1)),))      # gx over gy or over x
def batchnorm_train_bwd(ins, outs, attrs, ctx):
    gy, x, w, mean, invstd = ins
    gx, gw, gb = outs
    channel_operands("batchnorm_train_bwd", (gy, x, gx), (w, mean, invstd, gw, gb))
    gy2, x2 = rows(gy), rows(x)
    sgy, sgyx = col_sums(gy2, x2, mean.astype(np.float64))        # sum gy, sum gy * (x - mean)
    gw[...] = sgyx * invstd.astype(np.float64)
    gb[...] = sgy
    _input_gradient(gy2, x2, w, mean, invstd, sgy, sgyx, gx)


def _input_gradient(gy2, x2, w, mean, invstd, sgy, sgyx, gx):
    """gx = w invstd (gy - sum(gy) / M - xhat sum(gy xhat) / M), xhat = (x - mean) invstd, M
    the rows of x, from the sums of gy and of gy * (x - mean)."""
    count = x2.shape[0]
    mean64, inv64 = mean.astype(np.float64), invstd.astype(np.float64)
    a = w.astype(np.float64) * inv64
    affine(gy2, x2, mean64, a, -a * inv64 * inv64 * sgyx / count, -a * sgy / count, rows(gx))


# ---- batch norm in two steps each way, the sums between them (sync_batchnorm: isa.py)

@kernel("batchnorm_moments")
def batchnorm_moments(ins, outs, attrs, ctx):
    x, = ins
    moments, = outs
    x2 = rows(x)
    batch_sums_operand("batchnorm_moments", moments, 3, x2.shape[1])
    s1, s2 = col_sums(x2, x2, np.zeros(x2.shape[1]))
    moments[0], moments[1], moments[2] = s1, s2, x2.shape[0]


@kernel("batchnorm_normalize", inplace=((0, (0,)),))
def batchnorm_normalize(ins, outs, attrs, ctx):
    x, w, b, rm, rv, moments = ins
    channel_operands("batchnorm_normalize", (x, outs[0]), (w, b, rm, rv, *outs[1:]))
    batch_sums_operand("batchnorm_normalize", moments, 3, w.shape[0])
    count = moments[2]
    mean = moments[0] / count
    var = np.maximum(moments[1] / count - mean * mean, 0.0)
    _normalize(rows(x), w, b, rm, rv, mean, var, float(count[0]), attrs, outs)


@kernel("batchnorm_grad_sums")
def batchnorm_grad_sums(ins, outs, attrs, ctx):
    gy, x, mean, invstd = ins
    sums, gw, gb = outs
    channel_operands("batchnorm_grad_sums", (gy, x), (mean, invstd, gw, gb))
    batch_sums_operand("batchnorm_grad_sums", sums, 2, mean.shape[0])
    sums[0], sums[1] = col_sums(rows(gy), rows(x), mean.astype(np.float64))
    gw[...] = sums[1] * invstd.astype(np.float64)
    gb[...] = sums[0]


@kernel("batchnorm_grad_apply", inplace=((0, (0, 1)),))      # gx over gy or over x
def batchnorm_grad_apply(ins, outs, attrs, ctx):
    gy, x, w, mean, invstd, sums = ins
    gx, = outs
    channel_operands("batchnorm_grad_apply", (gy, x, gx), (w, mean, invstd))
    batch_sums_operand("batchnorm_grad_apply", sums, 2, w.shape[0])
    _input_gradient(rows(gy), rows(x), w, mean, invstd, sums[0], sums[1], gx)


def _inv_std(rv, attrs):
    """1 / sqrt(running_var + eps) in float64: inference batch norm, its gradient and bn_fold."""
    return 1.0 / np.sqrt(rv.astype(np.float64) + float(attrs["epsilon"]))


@kernel("batchnorm_infer", inplace=((0, (0,)),))
def batchnorm_infer(ins, outs, attrs, ctx):
    x, w, b, rm, rv = ins
    y = outs[0]
    channel_operands("batchnorm_infer", (x, y), ins[1:])
    scale = w.astype(np.float64) * _inv_std(rv, attrs)
    x2 = rows(x)
    affine(x2, x2, rm, np.zeros_like(scale), scale, b, rows(y))


# gx over gy (x is read only by the statistics)
@kernel("batchnorm_infer_bwd", inplace=((0, (0,)),))
def batchnorm_infer_bwd(ins, outs, attrs, ctx):
    gy, x, w, rm, rv = ins
    gx, gw, gb = outs
    channel_operands("batchnorm_infer_bwd", (gy, x, gx), (w, rm, rv, gw, gb))
    inv = _inv_std(rv, attrs)
    gy2 = rows(gy)
    sgy, sgyx = col_sums(gy2, rows(x), rm.astype(np.float64))
    gw[...] = sgyx * inv
    gb[...] = sgy
    zeros = np.zeros_like(inv)
    affine(gy2, gy2, zeros, w.astype(np.float64) * inv, zeros, zeros, rows(gx))


@kernel("bn_fold")
def bn_fold(ins, outs, attrs, ctx):
    w, b, gamma, beta, rm, rv = ins
    w_out, b_out = outs
    same_shape("bn_fold", w, w_out)
    scale = gamma.astype(np.float64) * _inv_std(rv, attrs)
    if scale.shape != (w.shape[0],) or b_out.shape != scale.shape:
        raise ValueError(f"bn_fold: {scale.shape[0]} channels for a weight of shape {w.shape}")
    w_out[...] = (w.reshape(len(w), -1).astype(np.float64) * scale[:, None]).reshape(w.shape)
    bias = b.astype(np.float64) if b is not None else 0.0
    b_out[...] = (bias - rm.astype(np.float64)) * scale + beta.astype(np.float64)


# ---- layer norm: each row normalised over its channels (formulas.py, as the CUDA target)

_layernorm_row = njit(**JIT)(formulas.layernorm_row)
_layernorm_bwd_row = njit(**JIT)(formulas.layernorm_bwd_row)


@njit(**JIT)
def _layernorm(x, w, b, y, mean, invstd, eps, r0, r1):
    for r in range(r0, r1):
        _layernorm_row(x, w, b, y, mean, invstd, r, eps)


@njit(parallel=True, **JIT)
def _layernorm_par(x, w, b, y, mean, invstd, eps, per):
    R = x.shape[0]
    for t in prange((R + per - 1) // per):
        _layernorm(x, w, b, y, mean, invstd, eps, t * per, min(t * per + per, R))


@njit(**JIT)
def _layernorm_bwd(gy, x, w, mean, invstd, gx, sw, sb, r0, r1):
    """Rows r0..r1: gx, and into sw[c], sb[c] the sums of gy * xhat and gy, in float64."""
    C = x.shape[1]
    for r in range(r0, r1):
        m = np.float64(mean[r])
        inv = np.float64(invstd[r])
        for c in range(C):
            g = np.float64(gy[r, c])
            sw[c] += g * (np.float64(x[r, c]) - m) * inv
            sb[c] += g
        _layernorm_bwd_row(gy, x, w, mean, invstd, gx, r)


@njit(parallel=True, **JIT)
def _layernorm_bwd_par(gy, x, w, mean, invstd, gx, pw, pb, per):
    """pw[t], pb[t]: the parameters' gradient sums of chunk t (rows t * per ...)."""
    R = x.shape[0]
    for t in prange(pw.shape[0]):
        _layernorm_bwd(gy, x, w, mean, invstd, gx, pw[t], pb[t], t * per, min(t * per + per, R))


@kernel("layernorm")
def layernorm(ins, outs, attrs, ctx):
    x, w, b = ins
    y, mean, invstd = outs
    layernorm_operands("layernorm", (x, y), (w, b), (mean, invstd))
    x2, y2 = rows(x), rows(y)
    stats = (mean.reshape(-1), invstd.reshape(-1))
    eps = float(attrs["epsilon"])
    if x.size >= PARALLEL_MIN:
        _layernorm_par(x2, w, b, y2, *stats, eps, _rows_per_chunk(x2))
    else:
        _layernorm(x2, w, b, y2, *stats, eps, 0, x2.shape[0])


@kernel("layernorm_bwd")
def layernorm_bwd(ins, outs, attrs, ctx):
    gy, x, w, mean, invstd = ins
    gx, gw, gb = outs
    layernorm_operands("layernorm_bwd", (gy, x, gx), (w, gw, gb), (mean, invstd))
    gy2, x2, gx2 = rows(gy), rows(x), rows(gx)
    stats = (mean.reshape(-1), invstd.reshape(-1))
    R, C = x2.shape
    per = _rows_per_chunk(x2)
    chunks = (R + per - 1) // per
    pw, pb = np.zeros((chunks, C)), np.zeros((chunks, C))
    if x.size >= PARALLEL_MIN and chunks > 1:
        _layernorm_bwd_par(gy2, x2, w, *stats, gx2, pw, pb, per)
    else:
        for t in range(chunks):
            _layernorm_bwd(gy2, x2, w, *stats, gx2, pw[t], pb[t], t * per, min(t * per + per, R))
    gw[...] = pw.sum(axis=0)      # the chunks' sums in a fixed order, whatever the threads
    gb[...] = pb.sum(axis=0)


# ---- local response norm across channels (PyTorch LocalResponseNorm)

_lrn_denominator = njit(**JIT)(formulas.lrn_denominator)
_pow_neg = njit(**JIT)(formulas.pow_neg)


@njit(**JIT)
def _lrn_denominators(x, r, size, alpha_n, k, d):
    """d[c] = the denominator of channel c of row r, before its power (formulas.py)."""
    for c in range(x.shape[1]):
        d[c] = _lrn_denominator(x, r, c, size, alpha_n, k)


@njit(**JIT)
def _lrn_fwd(x, y, size, alpha_n, beta, k, r0, r1):
    C = x.shape[1]
    d = np.empty(C)
    for r in range(r0, r1):
        _lrn_denominators(x, r, size, alpha_n, k, d)
        for c in range(C):
            y[r, c] = x[r, c] * _pow_neg(d[c], beta)


@njit(**JIT)
def _lrn_bwd(gy, x, gx, size, alpha_n, beta, k, r0, r1):
    """gx[c] = gy[c] d[c]^-beta
               - 2 beta alpha_n x[c] sum_{j: c in window(j)} gy[j] x[j] d[j]^(-beta-1)."""
    C = x.shape[1]
    d = np.empty(C)
    t = np.empty(C)
    before, after = size // 2, (size - 1) // 2
    for r in range(r0, r1):
        _lrn_denominators(x, r, size, alpha_n, k, d)
        for c in range(C):
            p = _pow_neg(d[c], beta)
            t[c] = np.float64(gy[r, c]) * x[r, c] * p / d[c]
            d[c] = p                        # d now holds d^-beta
        for c in range(C):
            s = 0.0
            # window(j) holds c when c - after <= j <= c + before
            for j in range(max(c - after, 0), min(c + before + 1, C)):
                s += t[j]
            gx[r, c] = gy[r, c] * d[c] - 2.0 * beta * alpha_n * x[r, c] * s


@njit(parallel=True, **JIT)
def _lrn_fwd_par(x, y, size, alpha_n, beta, k, per):
    R = x.shape[0]
    for t in prange((R + per - 1) // per):
        _lrn_fwd(x, y, size, alpha_n, beta, k, t * per, min(t * per + per, R))


@njit(parallel=True, **JIT)
def _lrn_bwd_par(gy, x, gx, size, alpha_n, beta, k, per):
    R = x.shape[0]
    for t in prange((R + per - 1) // per):
        _lrn_bwd(gy, x, gx, size, alpha_n, beta, k, t * per, min(t * per + per, R))


@kernel("lrn")
def lrn(ins, outs, attrs, ctx):
    x, y = ins[0], outs[0]
    same_shape("lrn", x, y)
    x2, y2 = rows(x), rows(y)
    if x.size >= PARALLEL_MIN:
        _lrn_fwd_par(x2, y2, *lrn_attrs(attrs), _rows_per_chunk(x2))
    else:
        _lrn_fwd(x2, y2, *lrn_attrs(attrs), 0, x2.shape[0])


@kernel("lrn_bwd")
def lrn_bwd(ins, outs, attrs, ctx):
    gy, x = ins
    gx = outs[0]
    same_shape("lrn_bwd", gy, x, gx)
    gy2, x2, gx2 = rows(gy), rows(x), rows(gx)
    if x.size >= PARALLEL_MIN:
        _lrn_bwd_par(gy2, x2, gx2, *lrn_attrs(attrs), _rows_per_chunk(x2))
    else:
        _lrn_bwd(gy2, x2, gx2, *lrn_attrs(attrs), 0, x2.shape[0])


# ---- dropout

# in place: the mask (output 1) is written first from the random draw, then y = x * mask
# by binary(), which has an in-place path
@kernel("dropout", inplace=((0, (0,)),))
def dropout(ins, outs, attrs, ctx):
    x, y, mask, u, rate, scale = dropout_draw(ins, outs, attrs, ctx.rng)
    np.multiply(u >= rate, scale, out=mask)
    binary(x, mask, y, MUL)


# ---- drop_path (stochastic depth): dropout of whole samples

# in place: the mask is drawn first, then y = x * mask[n], element by element
@kernel("drop_path", inplace=((0, (0,)),))
def drop_path(ins, outs, attrs, ctx):
    x, y, mask, u, rate, scale = drop_path_draw(ins, outs, attrs, ctx.rng)
    np.multiply(u >= rate, scale, out=mask)
    scale_samples("drop_path", x, mask, y)
