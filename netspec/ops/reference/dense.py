"""Fully connected layers and the reshapes: dense, flatten, reshape."""

from __future__ import annotations

from .common import f64


def dense(x, w, b=None):
    """y[n, u] = b[u] + sum_f x[n, f] * w[u, f]"""
    y = f64(x) @ f64(w).T
    return y if b is None else y + f64(b)


def reshape(x, shape):
    """Each sample's elements in channel-major (C, H, W) order, read as `shape` (-1: inferred)."""
    x = f64(x)
    return x.reshape(x.shape[0], *shape)
