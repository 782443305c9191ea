"""Sequences of tokens (N, T, F): a feature map's positions as tokens, the learned class token
and position embedding, multi-head self-attention, one token's features."""

from __future__ import annotations

import numpy as np

from .common import f64


def to_tokens(x):
    """(N, C, H, W) -> (N, H*W, C): token h*W + w holds the channels of position (h, w)."""
    x = f64(x)
    n, c, h, w = x.shape
    return x.reshape(n, c, h * w).transpose(0, 2, 1)


def class_token(x, token):
    """The token (1, 1, F) put before every sample's tokens."""
    x = f64(x)
    first = np.broadcast_to(f64(token).reshape(1, 1, -1), (x.shape[0], 1, x.shape[2]))
    return np.concatenate([first, x], axis=1)


def position_embedding(x, positions):
    """x + the embedding (1, T, F) of each position, the same for every sample."""
    return f64(x) + f64(positions).reshape(1, *x.shape[1:])


def attention(x, in_w, in_b, out_w, out_b, heads):
    """Multi-head self-attention, written out: q, k, v = x @ in_w.T + in_b cut in thirds; each
    head takes its slice of the features; softmax over the keys of q k^T / sqrt(d); the heads'
    weighted values side by side, then the output projection."""
    x = f64(x)
    n, t, e = x.shape
    d = e // heads
    qkv = x @ f64(in_w).T + (0.0 if in_b is None else f64(in_b))
    q, k, v = (qkv[:, :, j * e:(j + 1) * e].reshape(n, t, heads, d).transpose(0, 2, 1, 3)
               for j in range(3))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)
    scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights = scores / scores.sum(axis=-1, keepdims=True)
    heads_out = (weights @ v).transpose(0, 2, 1, 3).reshape(n, t, e)
    return heads_out @ f64(out_w).T + (0.0 if out_b is None else f64(out_b))


def token(x, index):
    """The features (N, F) of token `index` of each sample."""
    return f64(x)[:, index, :]
