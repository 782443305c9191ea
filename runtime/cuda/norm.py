"""Normalisation and regularisation CUDA kernels: batch norm (training and inference, forward
and backward, and its fold into the layer before it), layer norm, local response norm, dropout
and drop_path.

The channel is the last axis: every tensor is viewed as (rows, C). Batch norm's statistics
and gradient sums take one thread per channel, summing its rows in order in float64 (so
results do not depend on the launch); a second kernel then maps every element with the
per-channel coefficients. Layer norm takes one thread per row (formulas.py's rows, as the
CPU target), its parameters' gradients one thread per channel. Dropout and drop_path draw
their uniforms from the run's random generator on the host, as the CPU target does, so a seed
gives the same masks on both targets.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from .. import formulas
from ..isa import lrn_attrs
from ..operands import batch_sums_operand, channel_operands, drop_path_draw, dropout_draw, layernorm_operands
from .launch import device_function, dims, empty, flat, launch, rows, same_shape, to_device
from .table import kernel


def _normalize_channel(c, mean, var, count, w, b, rm, rv, momentum, eps, mean_out, invstd_out,
                      ca, cb, center, cc):
    """Channel c's batch statistics out (mean, biased var over `count` rows), its running
    statistics updated in place, and the coefficients of y = (x - mean) * invstd * w + b for
    _affine."""
    invstd = 1.0 / math.sqrt(var + eps)
    mean_out[c] = mean
    invstd_out[c] = invstd
    ca[c] = 0.0
    cb[c] = invstd * np.float64(w[c])
    center[c] = mean
    cc[c] = np.float64(b[c])
    unbiased = var * count / (count - 1) if count > 1 else var
    rm[c] = momentum * np.float64(rm[c]) + (1 - momentum) * mean
    rv[c] = momentum * np.float64(rv[c]) + (1 - momentum) * unbiased


_normalize_channel_d = device_function(_normalize_channel)


@cuda.jit
def _train_statistics(x, w, b, rm, rv, momentum, eps, mean_out, invstd_out, ca, cb, center, cc):
    """Per channel: the batch's mean and variance (shifted by the first row, so the variance
    stays accurate when |mean| >> std), then _normalize_channel."""
    R, C = x.shape
    for c in range(cuda.grid(1), C, cuda.gridsize(1)):
        x0 = np.float64(x[0, c])
        s1 = 0.0
        s2 = 0.0
        for r in range(R):
            v = np.float64(x[r, c])
            s1 += v
            s2 += v * (v - x0)
        d = s1 - R * x0
        var = max((s2 - x0 * d) / R - (d / R) * (d / R), 0.0)
        _normalize_channel_d(c, s1 / R, var, R, w, b, rm, rv, momentum, eps, mean_out, invstd_out,
                             ca, cb, center, cc)


@cuda.jit
def _moments(x, moments):
    """Per channel, over the rows in order, in float64: [sum of x, sum of x^2, rows]."""
    R, C = x.shape
    for c in range(cuda.grid(1), C, cuda.gridsize(1)):
        s1 = 0.0
        s2 = 0.0
        for r in range(R):
            v = np.float64(x[r, c])
            s1 += v
            s2 += v * v
        moments[0, c] = s1
        moments[1, c] = s2
        moments[2, c] = R


@cuda.jit
def _moments_statistics(moments, w, b, rm, rv, momentum, eps, mean_out, invstd_out, ca, cb, center,
                        cc):
    """_normalize_channel with the mean and biased variance of `moments`."""
    for c in range(cuda.grid(1), w.size, cuda.gridsize(1)):
        count = moments[2, c]
        mean = moments[0, c] / count
        var = max(moments[1, c] / count - mean * mean, 0.0)
        _normalize_channel_d(c, mean, var, count, w, b, rm, rv, momentum, eps, mean_out, invstd_out,
                             ca, cb, center, cc)


@cuda.jit
def _gradient_sums(gy, x, center, sums):
    """Per channel, in float64: sums[0] = sum of gy, sums[1] = sum of gy * (x - center)."""
    R, C = gy.shape
    for c in range(cuda.grid(1), C, cuda.gridsize(1)):
        s1 = 0.0
        s2 = 0.0
        m = np.float64(center[c])
        for r in range(R):
            g = np.float64(gy[r, c])
            s1 += g
            s2 += g * (np.float64(x[r, c]) - m)
        sums[0, c] = s1
        sums[1, c] = s2


@cuda.jit
def _param_grads(sums, invstd, gw, gb):
    """gw = sum of gy * xhat, gb = sum of gy, from _gradient_sums' (centred on the mean)."""
    for c in range(cuda.grid(1), gw.size, cuda.gridsize(1)):
        gw[c] = sums[1, c] * np.float64(invstd[c])
        gb[c] = sums[0, c]


@cuda.jit
def _affine(a, b, ca, cb, center, cc, out):
    """out = a * ca + (b - center) * cb + cc per channel, in float64 (out may be a or b)."""
    R, C = out.shape
    for i in range(cuda.grid(1), R * C, cuda.gridsize(1)):
        r, c = i // C, i % C
        out[r, c] = (np.float64(a[r, c]) * ca[c] + (np.float64(b[r, c]) - center[c]) * cb[c]
                     + cc[c])


def _input_gradient_channel(c, w, invstd, sgy, sgyx, count, ca, cb, cc, center, mean):
    """gx = w invstd (gy - sum(gy) / M - xhat sum(gy xhat) / M), as gy * ca + (x - mean) * cb + cc."""
    inv = np.float64(invstd[c])
    a = np.float64(w[c]) * inv
    ca[c] = a
    cb[c] = -a * inv * inv * sgyx / count
    cc[c] = -a * sgy / count
    center[c] = np.float64(mean[c])


_input_gradient_channel_d = device_function(_input_gradient_channel)


@cuda.jit
def _train_bwd_coefficients(w, invstd, sums, count, gw, gb, ca, cb, cc, center, mean):
    """_param_grads' gw and gb, and _input_gradient_channel's coefficients, in one launch."""
    for c in range(cuda.grid(1), w.size, cuda.gridsize(1)):
        gw[c] = sums[1, c] * np.float64(invstd[c])
        gb[c] = sums[0, c]
        _input_gradient_channel_d(c, w, invstd, sums[0, c], sums[1, c], count, ca, cb, cc, center,
                                  mean)


@cuda.jit
def _input_gradient_coefficients(w, invstd, sums, count, ca, cb, cc, center, mean):
    """_input_gradient_channel's coefficients from _gradient_sums' sums."""
    for c in range(cuda.grid(1), w.size, cuda.gridsize(1)):
        _input_gradient_channel_d(c, w, invstd, sums[0, c], sums[1, c], count, ca, cb, cc, center,
                                  mean)


@cuda.jit
def _infer_coefficients(w, b, rm, rv, eps, ca, cb, center, cc):
    """y = (x - running_mean) * w / sqrt(running_var + eps) + b."""
    for c in range(cuda.grid(1), w.size, cuda.gridsize(1)):
        ca[c] = 0.0
        cb[c] = np.float64(w[c]) / math.sqrt(np.float64(rv[c]) + eps)
        center[c] = np.float64(rm[c])
        cc[c] = np.float64(b[c])


@cuda.jit
def _infer_bwd_coefficients(w, rv, eps, sums, gw, gb, ca, cb, center, cc):
    for c in range(cuda.grid(1), w.size, cuda.gridsize(1)):
        inv = 1.0 / math.sqrt(np.float64(rv[c]) + eps)
        gw[c] = sums[1, c] * inv
        gb[c] = sums[0, c]
        ca[c] = np.float64(w[c]) * inv
        cb[c] = 0.0
        center[c] = 0.0
        cc[c] = 0.0


@cuda.jit
def _fold(w, b, has_bias, gamma, beta, rm, rv, eps, w_out, b_out):
    """w_out = w * s along w's first axis, b_out = (b - running_mean) * s + beta,
    s = gamma / sqrt(running_var + eps)."""
    O, K = w.shape
    for i in range(cuda.grid(1), O * K, cuda.gridsize(1)):
        o, k = i // K, i % K
        s = np.float64(gamma[o]) / math.sqrt(np.float64(rv[o]) + eps)
        w_out[o, k] = np.float64(w[o, k]) * s
        if k == 0:
            bias = np.float64(b[o]) if has_bias else 0.0
            b_out[o] = (bias - np.float64(rm[o])) * s + np.float64(beta[o])


_layernorm_row = device_function(formulas.layernorm_row)
_layernorm_bwd_row = device_function(formulas.layernorm_bwd_row)


@cuda.jit
def _layernorm_rows(x, w, b, y, mean, invstd, eps):
    """Each row normalised over its channels (formulas.layernorm_row): one thread a row."""
    for r in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        _layernorm_row(x, w, b, y, mean, invstd, r, eps)


@cuda.jit
def _layernorm_bwd_rows(gy, x, w, mean, invstd, gx):
    for r in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        _layernorm_bwd_row(gy, x, w, mean, invstd, gx, r)


@cuda.jit
def _layernorm_param_grads(gy, x, mean, invstd, gw, gb):
    """Per channel, over the rows in order, in float64: gw = sum of gy * xhat, gb of gy."""
    R, C = gy.shape
    for c in range(cuda.grid(1), C, cuda.gridsize(1)):
        sw = 0.0
        sb = 0.0
        for r in range(R):
            g = np.float64(gy[r, c])
            sw += g * (np.float64(x[r, c]) - np.float64(mean[r])) * np.float64(invstd[r])
            sb += g
        gw[c] = sw
        gb[c] = sb


_pow_neg = device_function(formulas.pow_neg)
_denominator = device_function(formulas.lrn_denominator)


@cuda.jit
def _lrn_fwd(x, y, size, alpha_n, beta, k):
    R, C = x.shape
    for i in range(cuda.grid(1), R * C, cuda.gridsize(1)):
        r, c = i // C, i % C
        y[r, c] = np.float64(x[r, c]) * _pow_neg(_denominator(x, r, c, size, alpha_n, k), beta)


@cuda.jit
def _lrn_bwd(gy, x, gx, size, alpha_n, beta, k):
    """gx[c] = gy[c] d[c]^-beta - 2 beta alpha_n x[c] sum_{j: c in window(j)} gy[j] x[j] d[j]^(-beta-1)."""
    R, C = x.shape
    for i in range(cuda.grid(1), R * C, cuda.gridsize(1)):
        r, c = i // C, i % C
        s = 0.0
        for j in range(max(c - (size - 1) // 2, 0), min(c + size // 2 + 1, C)):
            d = _denominator(x, r, j, size, alpha_n, k)
            s += np.float64(gy[r, j]) * np.float64(x[r, j]) * _pow_neg(d, beta) / d
        d = _denominator(x, r, c, size, alpha_n, k)
        gx[r, c] = (np.float64(gy[r, c]) * _pow_neg(d, beta)
                    - 2.0 * beta * alpha_n * np.float64(x[r, c]) * s)


@cuda.jit
def _dropout(x, u, rate, keep, y, mask):
    """mask = (u >= rate) / (1 - rate); y = x * mask (y may be x)."""
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        m = keep if u[i] >= rate else keep * 0
        mask[i] = m
        y[i] = x[i] * m


@cuda.jit
def _drop_samples(x, u, rate, keep, y, mask, per_sample):
    """mask[n] = (u[n] >= rate) / (1 - rate); y = x * mask[n] over sample n's elements (y may
    be x)."""
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        n = i // per_sample
        m = keep if u[n] >= rate else keep * 0
        if i % per_sample == 0:
            mask[n] = m
        y[i] = x[i] * m


def _scratch(c, n):
    return [empty(c, np.float64) for _ in range(n)]


# in place: the statistics read every element first, then _affine writes each element from
# the same element of its inputs
@kernel("batchnorm_train", inplace=((0, (0,)),))
def batchnorm_train(ins, outs, attrs, ctx):
    x, w, b, rm, rv = ins
    y, mean_out, invstd_out, rm_out, rv_out = outs
    channel_operands("batchnorm_train", (x, y), (w, b, rm, rv, *outs[1:]))
    x2 = rows(x)
    c = dims(x)[-1]
    ca, cb, center, cc = _scratch(c, 4)
    launch(_train_statistics, c, x2, w, b, rm_out, rv_out, float(attrs["momentum"]),
           float(attrs["epsilon"]), mean_out, invstd_out, ca, cb, center, cc)
    launch(_affine, x.size, x2, x2, ca, cb, center, cc, rows(y))


@kernel("batchnorm_train_bwd", inplace=((0, (0, 1)),))      # gx over gy or over x
def batchnorm_train_bwd(ins, outs, attrs, ctx):
    gy, x, w, mean, invstd = ins
    gx, gw, gb = outs
    channel_operands("batchnorm_train_bwd", (gy, x, gx), (w, mean, invstd, gw, gb))
    c = dims(x)[-1]
    sums = empty((2, c), np.float64)
    gy2, x2 = rows(gy), rows(x)
    launch(_gradient_sums, c, gy2, x2, mean, sums)
    ca, cb, cc, center = _scratch(c, 4)
    launch(_train_bwd_coefficients, c, w, invstd, sums, float(dims(x2)[0]), gw, gb, ca, cb, cc,
           center, mean)
    launch(_affine, gx.size, gy2, x2, ca, cb, center, cc, rows(gx))


# ---- batch norm in two steps each way, the sums between them (sync_batchnorm: isa.py)

@kernel("batchnorm_moments")
def batchnorm_moments(ins, outs, attrs, ctx):
    x2 = rows(ins[0])
    batch_sums_operand("batchnorm_moments", outs[0], 3, dims(x2)[1])
    launch(_moments, dims(x2)[1], x2, outs[0])


@kernel("batchnorm_normalize", inplace=((0, (0,)),))
def batchnorm_normalize(ins, outs, attrs, ctx):
    x, w, b, rm, rv, moments = ins
    y, mean_out, invstd_out, rm_out, rv_out = outs
    channel_operands("batchnorm_normalize", (x, y), (w, b, rm, rv, *outs[1:]))
    c = dims(x)[-1]
    batch_sums_operand("batchnorm_normalize", moments, 3, c)
    ca, cb, center, cc = _scratch(c, 4)
    launch(_moments_statistics, c, moments, w, b, rm_out, rv_out, float(attrs["momentum"]),
           float(attrs["epsilon"]), mean_out, invstd_out, ca, cb, center, cc)
    x2 = rows(x)
    launch(_affine, x.size, x2, x2, ca, cb, center, cc, rows(y))


@kernel("batchnorm_grad_sums")
def batchnorm_grad_sums(ins, outs, attrs, ctx):
    gy, x, mean, invstd = ins
    sums, gw, gb = outs
    channel_operands("batchnorm_grad_sums", (gy, x), (mean, invstd, gw, gb))
    c = dims(x)[-1]
    batch_sums_operand("batchnorm_grad_sums", sums, 2, c)
    launch(_gradient_sums, c, rows(gy), rows(x), mean, sums)
    launch(_param_grads, c, sums, invstd, gw, gb)


@kernel("batchnorm_grad_apply", inplace=((0, (0, 1)),))      # gx over gy or over x
def batchnorm_grad_apply(ins, outs, attrs, ctx):
    gy, x, w, mean, invstd, sums = ins
    gx, = outs
    channel_operands("batchnorm_grad_apply", (gy, x, gx), (w, mean, invstd))
    c = dims(x)[-1]
    batch_sums_operand("batchnorm_grad_apply", sums, 2, c)
    ca, cb, cc, center = _scratch(c, 4)
    gy2, x2 = rows(gy), rows(x)
    launch(_input_gradient_coefficients, c, w, invstd, sums, float(dims(x2)[0]), ca, cb, cc, center,
           mean)
    launch(_affine, gx.size, gy2, x2, ca, cb, center, cc, rows(gx))


@kernel("batchnorm_infer", inplace=((0, (0,)),))
def batchnorm_infer(ins, outs, attrs, ctx):
    x, w, b, rm, rv = ins
    y = outs[0]
    channel_operands("batchnorm_infer", (x, y), ins[1:])
    ca, cb, center, cc = _scratch(dims(x)[-1], 4)
    launch(_infer_coefficients, w.size, w, b, rm, rv, float(attrs["epsilon"]), ca, cb, center, cc)
    x2 = rows(x)
    launch(_affine, x.size, x2, x2, ca, cb, center, cc, rows(y))


# gx over gy (x is read only by the sums, which run first)
@kernel("batchnorm_infer_bwd", inplace=((0, (0,)),))
def batchnorm_infer_bwd(ins, outs, attrs, ctx):
    gy, x, w, rm, rv = ins
    gx, gw, gb = outs
    channel_operands("batchnorm_infer_bwd", (gy, x, gx), (w, rm, rv, gw, gb))
    ca, cb, center, cc = _scratch(dims(x)[-1], 4)
    sums = empty((2, w.size), np.float64)
    gy2 = rows(gy)
    launch(_gradient_sums, w.size, gy2, rows(x), rm, sums)
    launch(_infer_bwd_coefficients, w.size, w, rv, float(attrs["epsilon"]), sums, gw, gb,
           ca, cb, center, cc)
    launch(_affine, gx.size, gy2, gy2, ca, cb, center, cc, rows(gx))


@kernel("bn_fold")
def bn_fold(ins, outs, attrs, ctx):
    w, b, gamma, beta, rm, rv = ins
    w_out, b_out = outs
    same_shape("bn_fold", w, w_out)
    o = dims(w)[0]
    if dims(gamma) != (o,) or dims(b_out) != (o,):
        raise ValueError(f"bn_fold: {dims(gamma)[0]} channels for a weight of shape {dims(w)}")
    has_bias = b is not None
    w2 = flat(w).reshape(o, w.size // o)
    launch(_fold, w.size, w2, b if has_bias else b_out, has_bias, gamma, beta, rm, rv,
           float(attrs["epsilon"]), flat(w_out).reshape(o, w.size // o), b_out)


@kernel("layernorm")
def layernorm(ins, outs, attrs, ctx):
    x, w, b = ins
    y, mean, invstd = outs
    layernorm_operands("layernorm", (x, y), (w, b), (mean, invstd))
    x2 = rows(x)
    launch(_layernorm_rows, dims(x2)[0], x2, w, b, rows(y), flat(mean), flat(invstd),
           float(attrs["epsilon"]))


@kernel("layernorm_bwd")
def layernorm_bwd(ins, outs, attrs, ctx):
    gy, x, w, mean, invstd = ins
    gx, gw, gb = outs
    layernorm_operands("layernorm_bwd", (gy, x, gx), (w, gw, gb), (mean, invstd))
    gy2, x2 = rows(gy), rows(x)
    mean, invstd = flat(mean), flat(invstd)
    launch(_layernorm_param_grads, w.size, gy2, x2, mean, invstd, gw, gb)
    launch(_layernorm_bwd_rows, dims(x2)[0], gy2, x2, w, mean, invstd, rows(gx))


@kernel("lrn")
def lrn(ins, outs, attrs, ctx):
    x, y = ins[0], outs[0]
    same_shape("lrn", x, y)
    launch(_lrn_fwd, x.size, rows(x), rows(y), *lrn_attrs(attrs))


@kernel("lrn_bwd")
def lrn_bwd(ins, outs, attrs, ctx):
    gy, x = ins
    gx = outs[0]
    same_shape("lrn_bwd", gy, x, gx)
    launch(_lrn_bwd, x.size, rows(gy), rows(x), rows(gx), *lrn_attrs(attrs))


# in place: each element's mask is written, then y from the same element of x
@kernel("dropout", inplace=((0, (0,)),))
def dropout(ins, outs, attrs, ctx):
    x, y, mask, u, rate, scale = dropout_draw(ins, outs, attrs, ctx.rng)
    launch(_dropout, x.size, flat(x), flat(to_device(u)), rate, scale, flat(y), flat(mask))


# in place: each element of y is written from the same element of x
@kernel("drop_path", inplace=((0, (0,)),))
def drop_path(ins, outs, attrs, ctx):
    x, y, mask, u, rate, scale = drop_path_draw(ins, outs, attrs, ctx.rng)
    launch(_drop_samples, x.size, flat(x), to_device(u), rate, scale, flat(y), mask,
           x.size // dims(x)[0])
