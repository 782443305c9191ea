"""Pooling: maxpool2d (with the first maximum's place), avgpool2d (either divisor), the global
pools, and the gradients the kernels are checked against. Windows start at i*stride - top;
a window element outside the image is padding: it never wins a max and adds nothing to a sum."""

from __future__ import annotations

import math

import numpy as np

from .common import f64


def _out_size(size, k, s, before, after):
    return (size + before + after - k) // s + 1


def maxpool2d(x, kernel, stride, pads):
    """(y, argmax): the first maximum in row-major window order, argmax = h * W + w."""
    (kh, kw), (sh, sw), (pt, pb, pl, pr) = kernel, stride, pads
    x = f64(x)
    n, c, h, w = x.shape
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
                            if inside and (where < 0 or x[b, ch, hh, ww] > best):
                                best, where = x[b, ch, hh, ww], hh * w + ww
                    y[b, ch, i, j], am[b, ch, i, j] = best, where
    return y, am


def maxpool2d_vjp(gy, argmax, x_shape):
    """Each output's gradient goes to its argmax."""
    n, c, h, w = x_shape
    gx = np.zeros((n, c, h * w))
    gy = f64(gy)
    for b in range(n):
        for ch in range(c):
            for val, pos in zip(gy[b, ch].ravel(), argmax[b, ch].ravel()):
                gx[b, ch, pos] += val
    return gx.reshape(x_shape)


def _divisor(i, j, kernel, stride, pads, h, w, include_pad):
    """kh * kw, or (include_pad false) the window's pixels inside the image."""
    (kh, kw), (sh, sw), (pt, _, pl, _) = kernel, stride, pads
    if include_pad:
        return kh * kw
    rows = sum(1 for di in range(kh) if 0 <= i * sh - pt + di < h)
    cols = sum(1 for dj in range(kw) if 0 <= j * sw - pl + dj < w)
    return rows * cols


def avgpool2d(x, kernel, stride, pads, include_pad):
    (kh, kw), (sh, sw), (pt, pb, pl, pr) = kernel, stride, pads
    x = f64(x)
    n, c, h, w = x.shape
    oh, ow = _out_size(h, kh, sh, pt, pb), _out_size(w, kw, sw, pl, pr)
    y = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            total = np.zeros((n, c))
            for di in range(kh):
                for dj in range(kw):
                    hh, ww = i * sh - pt + di, j * sw - pl + dj
                    if 0 <= hh < h and 0 <= ww < w:
                        total += x[:, :, hh, ww]
            y[:, :, i, j] = total / _divisor(i, j, kernel, stride, pads, h, w, include_pad)
    return y


def avgpool2d_vjp(gy, x_shape, kernel, stride, pads, include_pad):
    (kh, kw), (sh, sw), (pt, _, pl, _) = kernel, stride, pads
    n, c, h, w = x_shape
    gy = f64(gy)
    gx = np.zeros((n, c, h, w))
    for i in range(gy.shape[2]):
        for j in range(gy.shape[3]):
            share = gy[:, :, i, j] / _divisor(i, j, kernel, stride, pads, h, w, include_pad)
            for di in range(kh):
                for dj in range(kw):
                    hh, ww = i * sh - pt + di, j * sw - pl + dj
                    if 0 <= hh < h and 0 <= ww < w:
                        gx[:, :, hh, ww] += share
    return gx


def global_avgpool(x):
    return f64(x).mean(axis=(2, 3))


def global_avgpool_vjp(gy, x_shape):
    n, c, h, w = x_shape
    return np.broadcast_to(f64(gy)[:, :, None, None] / (h * w), x_shape).copy()


def global_maxpool(x):
    """(y, argmax = h * W + w of the first maximum)."""
    x = f64(x)
    n, c, h, w = x.shape
    flat = x.reshape(n, c, h * w)
    return flat.max(axis=2), flat.argmax(axis=2)      # np.argmax returns the first maximum


def global_maxpool_vjp(gy, argmax, x_shape):
    n, c, h, w = x_shape
    gx = np.zeros((n, c, h * w))
    for b in range(n):
        for ch in range(c):
            gx[b, ch, argmax[b, ch]] = gy[b, ch]
    return gx.reshape(x_shape)
