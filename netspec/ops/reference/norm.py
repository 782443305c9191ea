"""Normalisation: batch norm (training: the batch's statistics; inference: the running ones),
layer norm and local response norm, with the gradients the kernels are checked against.
`axis` is the channel axis: 1 in the spec's layout (2 for a sequence), -1 in the kernels';
a batch norm's statistics are over every other axis, a layer norm's over the channels."""

from __future__ import annotations

import numpy as np

from .common import f64


def _channels_last(*arrays, axis):
    return [np.moveaxis(f64(a), axis, -1) for a in arrays]


def batchnorm_train(x, w, b, running_mean, running_var, momentum, eps, axis=1):
    """(y, mean, invstd, new running mean, new running var): the batch's mean and biased
    variance normalise; the running variance moves toward the unbiased one (count/(count-1);
    the biased one for a count of 1), momentum being the running statistics' decay."""
    (x,) = _channels_last(x, axis=axis)
    axes = tuple(range(x.ndim - 1))
    count = x.size // x.shape[-1]
    mean = x.mean(axis=axes)
    var = ((x - mean) ** 2).mean(axis=axes)
    invstd = 1.0 / np.sqrt(var + eps)
    y = (x - mean) * invstd * f64(w) + f64(b)
    unbiased = var * count / (count - 1) if count > 1 else var
    new_mean = momentum * f64(running_mean) + (1 - momentum) * mean
    new_var = momentum * f64(running_var) + (1 - momentum) * unbiased
    return np.moveaxis(y, -1, axis), mean, invstd, new_mean, new_var


def batchnorm_train_vjp(gy, x, w, eps, axis=1):
    """(gx, gw, gb) through the batch statistics, from the textbook derivation."""
    x, gy = _channels_last(x, gy, axis=axis)
    w = f64(w)
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
    return np.moveaxis(gx, -1, axis), gw, gb


def batchnorm_infer(x, w, b, running_mean, running_var, eps, axis=1):
    (x,) = _channels_last(x, axis=axis)
    y = (x - f64(running_mean)) / np.sqrt(f64(running_var) + eps) * f64(w) + f64(b)
    return np.moveaxis(y, -1, axis)


def batchnorm_infer_vjp(gy, x, w, running_mean, running_var, eps, axis=1):
    x, gy = _channels_last(x, gy, axis=axis)
    axes = tuple(range(x.ndim - 1))
    inv = 1.0 / np.sqrt(f64(running_var) + eps)
    gx = gy * inv * f64(w)
    gw = (gy * (x - f64(running_mean)) * inv).sum(axis=axes)
    return np.moveaxis(gx, -1, axis), gw, gy.sum(axis=axes)


def layer_norm(x, w, b, eps, axis=1):
    """Each position (each token, each vector) normalised over its channels: their mean and
    biased variance, then scaled by w and shifted by b per channel."""
    (x,) = _channels_last(x, axis=axis)
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    y = (x - mean) / np.sqrt(var + eps) * f64(w) + f64(b)
    return np.moveaxis(y, -1, axis)


def layer_norm_vjp(gy, x, w, eps, axis=1):
    """(gx, gw, gb), the textbook derivation per position; gw, gb summed over the positions."""
    x, gy = _channels_last(x, gy, axis=axis)
    c = x.shape[-1]
    mean = x.mean(axis=-1, keepdims=True)
    invstd = 1.0 / np.sqrt(((x - mean) ** 2).mean(axis=-1, keepdims=True) + eps)
    xhat = (x - mean) * invstd
    g = gy * f64(w)
    gx = invstd * (g - g.sum(axis=-1, keepdims=True) / c
                   - xhat * (g * xhat).sum(axis=-1, keepdims=True) / c)
    positions = tuple(range(x.ndim - 1))
    return np.moveaxis(gx, -1, axis), (gy * xhat).sum(axis=positions), gy.sum(axis=positions)


def _lrn_window(ch, c, size):
    """The channels channel `ch` sums over: ch - size//2 ... ch + (size-1)//2 (PyTorch's rule)."""
    return range(max(0, ch - size // 2), min(c - 1, ch + (size - 1) // 2) + 1)


def lrn(x, size, alpha, beta, k):
    """y[:, c] = x[:, c] / (k + alpha / size * sum of x^2 over c's window) ^ beta; NCHW."""
    x = f64(x)
    c = x.shape[1]
    y = np.empty_like(x)
    for ch in range(c):
        window = _lrn_window(ch, c, size)
        d = k + alpha / size * (x[:, window.start:window.stop] ** 2).sum(axis=1)
        y[:, ch] = x[:, ch] / d ** beta
    return y


def lrn_vjp(gy, x, size, alpha, beta, k):
    """gx_i = sum_j gy_j dy_j/dx_i with y_j = x_j d_j^-beta,
    dd_j/dx_i = 2 alpha / size x_i when i is in j's window."""
    x, gy = f64(x), f64(gy)
    c = x.shape[1]
    d = np.empty_like(x)
    for ch in range(c):
        window = _lrn_window(ch, c, size)
        d[:, ch] = k + alpha / size * (x[:, window.start:window.stop] ** 2).sum(axis=1)
    gx = np.zeros_like(x)
    for j in range(c):
        gx[:, j] += gy[:, j] * d[:, j] ** -beta
        common = gy[:, j] * x[:, j] * -beta * d[:, j] ** (-beta - 1) * 2 * alpha / size
        for i in _lrn_window(j, c, size):
            gx[:, i] += common * x[:, i]
    return gx
