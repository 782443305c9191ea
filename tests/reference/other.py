"""Float64 NumPy references for the CPU kernels other than convolution and dense:
pooling, normalisation, activations, merges, data movers and losses.

Written for clarity (plain loops over NCHW where a loop is the clearest statement),
sharing no code with the kernels. Inputs and outputs are channels-last, as the
kernels' are; everything is computed in float64.
"""

from __future__ import annotations

import math

import numpy as np

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def f64(a):
    return np.asarray(a, dtype=np.float64)


# ---- activations: forward, and the vector-Jacobian product gy * f'(x)

def relu(x):
    x = f64(x)
    return np.where(x > 0, x, 0.0)


def relu_vjp(gy, x):
    return np.where(f64(x) > 0, f64(gy), 0.0)


def relu6(x):
    x = f64(x)
    return np.where(x < 0, 0.0, np.where(x > 6, 6.0, x))


def relu6_vjp(gy, x):
    x = f64(x)
    return np.where((x > 0) & (x < 6), f64(gy), 0.0)


def leaky_relu(x, alpha=0.01):
    x = f64(x)
    return np.where(x > 0, x, alpha * x)


def leaky_relu_vjp(gy, x, alpha=0.01):
    return f64(gy) * np.where(f64(x) > 0, 1.0, alpha)


def elu(x, alpha=1.0):
    x = f64(x)
    return np.where(x > 0, x, alpha * (np.exp(np.minimum(x, 0.0)) - 1.0))


def elu_vjp(gy, x, alpha=1.0):
    x = f64(x)
    return f64(gy) * np.where(x > 0, 1.0, alpha * np.exp(np.minimum(x, 0.0)))


def selu(x):
    return SELU_SCALE * elu(x, SELU_ALPHA)


def selu_vjp(gy, x):
    return SELU_SCALE * elu_vjp(gy, x, SELU_ALPHA)


def tanh(x):
    return np.tanh(f64(x))


def tanh_vjp(gy, x):
    return f64(gy) / np.cosh(f64(x)) ** 2


def sigmoid(x):
    x = f64(x)
    out = np.empty_like(x)
    for i, v in np.ndenumerate(x):
        out[i] = 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))
    return out


def sigmoid_vjp(gy, x):
    s = sigmoid(x)
    return f64(gy) * s * (1.0 - s)


def softmax(x):
    """Over the last axis."""
    x = f64(x)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_vjp(gy, x):
    """gx_i = sum_j gy_j dy_j/dx_i = sum_j gy_j y_j (delta_ij - y_i), row by row."""
    y = softmax(x)
    gy = f64(gy)
    out = np.empty_like(y)
    for idx in np.ndindex(*y.shape[:-1]):
        yr, gr = y[idx], gy[idx]
        jac = np.diag(yr) - np.outer(yr, yr)       # jac[i, j] = dy_i / dx_j
        out[idx] = jac.T @ gr
    return out


def prelu(x, w):
    x = f64(x)
    return np.where(x > 0, x, f64(w) * x)


def prelu_vjp(gy, x, w):
    """(gx, gw): gw[c] sums gy * x over the positions where x <= 0 in channel c."""
    x, gy, w = f64(x), f64(gy), f64(w)
    gx = np.where(x > 0, gy, w * gy)
    gw = np.where(x > 0, 0.0, gy * x).reshape(-1, x.shape[-1]).sum(axis=0)
    return gx, gw


# ---- pooling, in NCHW loops

def _to_nchw(x):
    return f64(x).transpose(0, 3, 1, 2)


def _to_nhwc(x):
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def _out_size(size, k, s, before, after):
    return (size + before + after - k) // s + 1


def maxpool2d(x, kernel, stride, pad):
    """(y, argmax): the first maximum in row-major window order; padding never wins."""
    (kh, kw), (sh, sw), (pt, pb, pl, pr) = kernel, stride, pad
    xc = _to_nchw(x)
    n, c, h, w = xc.shape
    oh, ow = _out_size(h, kh, sh, pt, pb), _out_size(w, kw, sw, pl, pr)
    y = np.empty((n, c, oh, ow))
    am = np.empty((n, c, oh, ow), dtype=np.int64)
    for b in range(n):
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    best, where = -math.inf, -1
                    for di in range(kh):
                        for dj in range(kw):
                            hh, ww = i * sh - pt + di, j * sw - pl + dj
                            inside = 0 <= hh < h and 0 <= ww < w
                            if inside and (where < 0 or xc[b, ch, hh, ww] > best):
                                best, where = xc[b, ch, hh, ww], hh * w + ww
                    y[b, ch, i, j], am[b, ch, i, j] = best, where
    return _to_nhwc(y), _to_nhwc(am)


def maxpool2d_vjp(gy, argmax, x_shape):
    """Each output's gradient goes to its argmax."""
    n, h, w, c = x_shape
    gx = np.zeros((n, c, h * w))
    g, a = _to_nchw(gy), argmax.transpose(0, 3, 1, 2)
    for b in range(n):
        for ch in range(c):
            for val, pos in zip(g[b, ch].ravel(), a[b, ch].ravel()):
                gx[b, ch, pos] += val
    return _to_nhwc(gx.reshape(n, c, h, w))


def _avg_divisor(i, j, kh, kw, sh, sw, pt, pl, h, w, include_pad):
    if include_pad:
        return kh * kw
    rows = sum(1 for di in range(kh) if 0 <= i * sh - pt + di < h)
    cols = sum(1 for dj in range(kw) if 0 <= j * sw - pl + dj < w)
    return rows * cols


def avgpool2d(x, kernel, stride, pad, include_pad):
    (kh, kw), (sh, sw), (pt, pb, pl, pr) = kernel, stride, pad
    xc = _to_nchw(x)
    n, c, h, w = xc.shape
    oh, ow = _out_size(h, kh, sh, pt, pb), _out_size(w, kw, sw, pl, pr)
    y = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            total = np.zeros((n, c))
            for di in range(kh):
                for dj in range(kw):
                    hh, ww = i * sh - pt + di, j * sw - pl + dj
                    if 0 <= hh < h and 0 <= ww < w:
                        total += xc[:, :, hh, ww]
            y[:, :, i, j] = total / _avg_divisor(i, j, kh, kw, sh, sw, pt, pl, h, w, include_pad)
    return _to_nhwc(y)


def avgpool2d_vjp(gy, x_shape, kernel, stride, pad, include_pad):
    (kh, kw), (sh, sw), (pt, _, pl, _) = kernel, stride, pad
    n, h, w, c = x_shape
    g = _to_nchw(gy)
    oh, ow = g.shape[2:]
    gx = np.zeros((n, c, h, w))
    for i in range(oh):
        for j in range(ow):
            share = g[:, :, i, j] / _avg_divisor(i, j, kh, kw, sh, sw, pt, pl, h, w, include_pad)
            for di in range(kh):
                for dj in range(kw):
                    hh, ww = i * sh - pt + di, j * sw - pl + dj
                    if 0 <= hh < h and 0 <= ww < w:
                        gx[:, :, hh, ww] += share
    return _to_nhwc(gx)


def global_avgpool(x):
    return f64(x).mean(axis=(1, 2))


def global_avgpool_vjp(gy, x_shape):
    n, h, w, c = x_shape
    return np.broadcast_to(f64(gy)[:, None, None, :] / (h * w), x_shape).copy()


def global_maxpool(x):
    """(y, argmax = h * W + w of the first maximum)."""
    x = f64(x)
    n, h, w, c = x.shape
    flat = x.reshape(n, h * w, c)
    return flat.max(axis=1), flat.argmax(axis=1)     # np.argmax returns the first maximum


def global_maxpool_vjp(gy, argmax, x_shape):
    n, h, w, c = x_shape
    gx = np.zeros((n, h * w, c))
    for b in range(n):
        for ch in range(c):
            gx[b, argmax[b, ch], ch] = gy[b, ch]
    return gx.reshape(x_shape)


# ---- normalisation

def batchnorm_train(x, w, b, running_mean, running_var, momentum, eps):
    """(y, mean, invstd, new running mean, new running var); statistics over every axis
    but the last; the running variance is updated with the unbiased variance."""
    x = f64(x)
    axes = tuple(range(x.ndim - 1))
    count = x.size // x.shape[-1]
    mean = x.mean(axis=axes)
    var = ((x - mean) ** 2).mean(axis=axes)
    invstd = 1.0 / np.sqrt(var + eps)
    y = (x - mean) * invstd * f64(w) + f64(b)
    unbiased = var * count / (count - 1) if count > 1 else var
    new_mean = momentum * f64(running_mean) + (1 - momentum) * mean
    new_var = momentum * f64(running_var) + (1 - momentum) * unbiased
    return y, mean, invstd, new_mean, new_var


def batchnorm_train_vjp(gy, x, w, eps):
    """(gx, gw, gb) through the batch statistics, from the textbook derivation."""
    x, gy, w = f64(x), f64(gy), f64(w)
    axes = tuple(range(x.ndim - 1))
    m = x.size // x.shape[-1]
    mean = x.mean(axis=axes)
    var = ((x - mean) ** 2).mean(axis=axes)
    invstd = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean) * invstd
    gb = gy.sum(axis=axes)
    gw = (gy * xhat).sum(axis=axes)
    gxhat = gy * w
    gvar = (gxhat * (x - mean)).sum(axis=axes) * -0.5 * invstd ** 3
    gmean = -(gxhat * invstd).sum(axis=axes) + gvar * (-2.0 * (x - mean)).sum(axis=axes) / m
    gx = gxhat * invstd + gvar * 2.0 * (x - mean) / m + gmean / m
    return gx, gw, gb


def batchnorm_infer(x, w, b, running_mean, running_var, eps):
    return (f64(x) - f64(running_mean)) / np.sqrt(f64(running_var) + eps) * f64(w) + f64(b)


def batchnorm_infer_vjp(gy, x, w, running_mean, running_var, eps):
    x, gy = f64(x), f64(gy)
    axes = tuple(range(x.ndim - 1))
    inv = 1.0 / np.sqrt(f64(running_var) + eps)
    gx = gy * inv * f64(w)
    gw = (gy * (x - f64(running_mean)) * inv).sum(axis=axes)
    return gx, gw, gy.sum(axis=axes)


def lrn(x, size, alpha, beta, k):
    """Channel c sums x^2 over channels c - size//2 ... c + (size-1)//2 (PyTorch's rule)."""
    xc = _to_nchw(x)
    c = xc.shape[1]
    y = np.empty_like(xc)
    for ch in range(c):
        lo, hi = max(0, ch - size // 2), min(c - 1, ch + (size - 1) // 2)
        d = k + alpha / size * (xc[:, lo:hi + 1] ** 2).sum(axis=1)
        y[:, ch] = xc[:, ch] / d ** beta
    return _to_nhwc(y)


def lrn_vjp(gy, x, size, alpha, beta, k):
    """gx_i = sum_j gy_j dy_j/dx_i with y_j = x_j d_j^-beta,
    dd_j/dx_i = 2 alpha / size x_i when i is in j's window."""
    xc, g = _to_nchw(x), _to_nchw(gy)
    c = xc.shape[1]
    d = np.empty_like(xc)
    window = []
    for ch in range(c):
        lo, hi = max(0, ch - size // 2), min(c - 1, ch + (size - 1) // 2)
        window.append(range(lo, hi + 1))
        d[:, ch] = k + alpha / size * (xc[:, lo:hi + 1] ** 2).sum(axis=1)
    gx = np.zeros_like(xc)
    for j in range(c):
        gx[:, j] += g[:, j] * d[:, j] ** -beta
        common = g[:, j] * xc[:, j] * -beta * d[:, j] ** (-beta - 1) * 2 * alpha / size
        for i in window[j]:
            gx[:, i] += common * xc[:, i]
    return _to_nhwc(gx)


# ---- merges and movers

def to_flat(x):
    """(N, H, W, C) -> (N, C*H*W) in channel-major order."""
    x = f64(x)
    n, h, w, c = x.shape
    out = np.empty((n, c * h * w))
    for ch in range(c):
        for i in range(h):
            for j in range(w):
                out[:, (ch * h + i) * w + j] = x[:, i, j, ch]
    return out


def from_flat(x, shape):
    n, h, w, c = shape
    x = f64(x)
    out = np.empty(shape)
    for ch in range(c):
        for i in range(h):
            for j in range(w):
                out[:, i, j, ch] = x[:, (ch * h + i) * w + j]
    return out


def concat(xs):
    return np.concatenate([f64(x) for x in xs], axis=-1)


def split(gy, widths):
    out, start = [], 0
    for width in widths:
        out.append(f64(gy)[..., start:start + width])
        start += width
    return out


# ---- losses (the mean over the batch, or over all elements)

def _log_softmax(z):
    z = f64(z)
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def softmax_xent(logits, labels):
    """(loss, probs)."""
    logp = _log_softmax(logits)
    n = logp.shape[0]
    return -np.mean([logp[i, labels[i]] for i in range(n)]), np.exp(logp)


def softmax_xent_grad(logits, labels):
    probs = np.exp(_log_softmax(logits))
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(labels)), labels] = 1.0
    return (probs - onehot) / probs.shape[0]


def softmax_xent_dense(logits, targets):
    logp = _log_softmax(logits)
    return -np.mean((f64(targets) * logp).sum(axis=1)), np.exp(logp)


def softmax_xent_dense_grad(logits, targets):
    probs, t = np.exp(_log_softmax(logits)), f64(targets)
    return (probs * t.sum(axis=1, keepdims=True) - t) / probs.shape[0]


def sigmoid_bce(z, t):
    """(loss, probs): -mean(t log p + (1 - t) log(1 - p)), with log p and log(1 - p)
    written through log1p so large |z| stays finite."""
    z, t = f64(z), f64(t)
    log_p = -np.log1p(np.exp(-np.abs(z))) + np.minimum(z, 0.0)        # log sigmoid(z)
    log_1mp = -np.log1p(np.exp(-np.abs(z))) - np.maximum(z, 0.0)      # log sigmoid(-z)
    return -np.mean(t * log_p + (1 - t) * log_1mp), sigmoid(z)


def sigmoid_bce_grad(z, t):
    return (sigmoid(z) - f64(t)) / np.size(z)


def mse(y, t):
    return np.mean((f64(y) - f64(t)) ** 2)


def mse_grad(y, t):
    return 2.0 * (f64(y) - f64(t)) / np.size(y)
