"""Fully connected layers and the reshapes: dense, flatten, reshape."""

from __future__ import annotations

import numpy as np

from .common import f64


def dense(x, w, b=None):
    """y[n, u] = b[u] + sum_f x[n, f] * w[u, f]; on a sequence (N, T, F) the same for each
    token, on a map (N, C, H, W) for each position over its channels:
    y[n, u, h, w] = b[u] + sum_c x[n, c, h, w] * w[u, c]"""
    x, w = f64(x), f64(w)
    if x.ndim == 4:
        y = np.einsum("nchw,uc->nuhw", x, w)
        return y if b is None else y + f64(b)[:, None, None]
    y = x @ w.T
    return y if b is None else y + f64(b)


def reshape(x, shape):
    """Each sample's elements in channel-major (C, H, W) order, read as `shape` (-1: inferred)."""
    x = f64(x)
    return x.reshape(x.shape[0], *shape)
