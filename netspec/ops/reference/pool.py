"""Pooling and padding: maxpool2d (with the first maximum's place), avgpool2d (either
divisor), the adaptive and global pools, pad2d, and the gradients the kernels are checked
against. Windows start at i*stride - top; a window element outside the image is padding: it
never wins a max and adds nothing to a sum."""

from __future__ import annotations

import math

import numpy as np

from .common import f64


def _out_size(size, k, s, before, after, d=1, ceil=False):
    """Windows that fit the padded axis; in ceil mode (PyTorch's ceil_mode) rounded up,
    unless the last one would then start after the input and the padding before it."""
    room = size + before + after - (d * (k - 1) + 1)
    if not ceil:
        return math.floor(room / s) + 1
    n = math.ceil(room / s) + 1
    return n if (n - 1) * s < size + before else n - 1


def maxpool2d(x, kernel, stride, pads, dilation=(1, 1), ceil=False):
    """(y, argmax): the first maximum in row-major window order, argmax = h * W + w."""
    (kh, kw), (sh, sw), (pt, pb, pl, pr), (dh, dw) = kernel, stride, pads, dilation
    x = f64(x)
    n, c, h, w = x.shape
    oh, ow = _out_size(h, kh, sh, pt, pb, dh, ceil), _out_size(w, kw, sw, pl, pr, dw, ceil)
    y = np.empty((n, c, oh, ow))
    am = np.empty((n, c, oh, ow), dtype=np.int64)
    for b in range(n):
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    best, where = -math.inf, -1
                    for di in range(kh):
                        for dj in range(kw):
                            hh, ww = i * sh - pt + di * dh, j * sw - pl + dj * dw
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
    """The window's pixels inside the padded image (include_pad: kh * kw, less the part of a
    ceil-mode window past the padding, as PyTorch's count_include_pad), or inside the image."""
    (kh, kw), (sh, sw), (pt, pb, pl, pr) = kernel, stride, pads
    top, bottom, left, right = (pt, pb, pl, pr) if include_pad else (0, 0, 0, 0)
    rows = sum(1 for di in range(kh) if -top <= i * sh - pt + di < h + bottom)
    cols = sum(1 for dj in range(kw) if -left <= j * sw - pl + dj < w + right)
    return rows * cols


def avgpool2d(x, kernel, stride, pads, include_pad, ceil=False):
    (kh, kw), (sh, sw), (pt, pb, pl, pr) = kernel, stride, pads
    x = f64(x)
    n, c, h, w = x.shape
    oh, ow = _out_size(h, kh, sh, pt, pb, ceil=ceil), _out_size(w, kw, sw, pl, pr, ceil=ceil)
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


def adaptive_avgpool2d(x, size):
    """PyTorch's AdaptiveAvgPool2d: output row i averages input rows floor(i*H/OH) up to
    ceil((i+1)*H/OH) - 1, columns likewise."""
    x = f64(x)
    n, c, h, w = x.shape
    oh, ow = size
    y = np.empty((n, c, oh, ow))
    for i in range(oh):
        r0, r1 = math.floor(i * h / oh), math.ceil((i + 1) * h / oh)
        for j in range(ow):
            c0, c1 = math.floor(j * w / ow), math.ceil((j + 1) * w / ow)
            y[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
    return y


def pad2d(x, sides, mode, value=0.0):
    """x padded by sides = (top, bottom, left, right): the constant value, reflected about the
    edge (the edge not repeated), or the edge replicated."""
    top, bottom, left, right = sides
    widths = ((0, 0), (0, 0), (top, bottom), (left, right))
    if mode == "constant":
        return np.pad(f64(x), widths, mode="constant", constant_values=value)
    return np.pad(f64(x), widths, mode={"reflect": "reflect", "replicate": "edge"}[mode])


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
