"""Detection heads: the distribution focal loss's integral (DFL), written out."""

from __future__ import annotations

import numpy as np

from .common import f64


def dfl(x, weight):
    """x (N, 4 * bins, H, W): each side's `bins` logits, side-major. Per side and pixel, the
    softmax over its bins, weighted by weight (1, bins, 1, 1): (N, 4, H, W)."""
    x = f64(x)
    n, c, h, w = x.shape
    bins = c // 4
    logits = x.reshape(n, 4, bins, h, w)
    e = np.exp(logits - logits.max(axis=2, keepdims=True))
    probs = e / e.sum(axis=2, keepdims=True)
    return np.einsum("nsbhw,b->nshw", probs, f64(weight).reshape(bins))
