"""Loss CPU kernels. Each loss is a 0-d array (shape ()): the mean over the batch
(or over all elements), accumulated in float64.

The softmax losses share the jitted row softmax, which also returns each row's
log-sum-exp, so the loss never takes the log of a probability that underflowed:
-log softmax(z)[k] = lse - z[k], finite for logits of any size.
"""

from __future__ import annotations

import numpy as np

from .elementwise import SIGMOID, _act_fwd, flat, rows, same_shape, softmax_rows
from .table import kernel


def _softmax(name, logits, probs):
    if logits.ndim != 2:
        raise ValueError(f"{name}: logits must be (N, K), got {logits.shape}")
    same_shape(name, logits, probs)
    lse = np.empty(logits.shape[0])
    softmax_rows(rows(logits), rows(probs), lse)
    return lse


def _labels(name, labels, n, k):
    if labels.shape != (n,):
        raise ValueError(f"{name}: labels must be ({n},), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name}: labels must be integers, got {labels.dtype}")
    if n and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"{name}: labels must lie in [0, {k}), got {labels.min()}..{labels.max()}")


def _scalar_out(name, out):
    if out.shape != ():
        raise ValueError(f"{name}: the loss is a 0-d array, got shape {out.shape}")


@kernel("softmax_xent")
def softmax_xent(ins, outs, attrs, ctx):
    logits, labels = ins
    loss, probs = outs
    _scalar_out("softmax_xent", loss)
    lse = _softmax("softmax_xent", logits, probs)
    n, k = logits.shape
    _labels("softmax_xent", labels, n, k)
    picked = logits[np.arange(n), labels].astype(np.float64)
    loss[...] = np.mean(lse - picked)


@kernel("softmax_xent_bwd")
def softmax_xent_bwd(ins, outs, attrs, ctx):
    probs, labels = ins
    g = outs[0]
    same_shape("softmax_xent_bwd", probs, g, dtype=False)
    n, k = probs.shape
    _labels("softmax_xent_bwd", labels, n, k)
    inv_n = g.dtype.type(1.0 / n)
    np.multiply(probs, inv_n, out=g)
    g[np.arange(n), labels] -= inv_n


@kernel("softmax_xent_dense")
def softmax_xent_dense(ins, outs, attrs, ctx):
    logits, targets = ins
    loss, probs = outs
    _scalar_out("softmax_xent_dense", loss)
    same_shape("softmax_xent_dense", logits, targets, dtype=False)
    lse = _softmax("softmax_xent_dense", logits, probs)
    # -sum_k t log softmax(z)_k = sum_k t (lse - z_k): every term >= 0, no cancellation
    t = targets.astype(np.float64)
    loss[...] = np.mean(np.sum(t * (lse[:, None] - logits), axis=1))


@kernel("softmax_xent_dense_bwd")
def softmax_xent_dense_bwd(ins, outs, attrs, ctx):
    probs, targets = ins
    g = outs[0]
    same_shape("softmax_xent_dense_bwd", probs, targets, g, dtype=False)
    n = probs.shape[0]
    tsum = targets.astype(np.float64).sum(axis=1, keepdims=True)
    g[...] = (probs * tsum - targets) / n


@kernel("sigmoid_bce")
def sigmoid_bce(ins, outs, attrs, ctx):
    z, t = ins
    loss, probs = outs
    _scalar_out("sigmoid_bce", loss)
    same_shape("sigmoid_bce", z, t, dtype=False)
    same_shape("sigmoid_bce", z, probs)
    _act_fwd(flat(z), flat(probs), SIGMOID, z.dtype.type(0))
    z64 = z.astype(np.float64)
    # max(z, 0) - z t + log(1 + exp(-|z|)): no exp of a large positive number
    loss[...] = np.mean(np.maximum(z64, 0.0) - z64 * t + np.log1p(np.exp(-np.abs(z64))))


def _scaled_difference(name, ins, outs, factor):
    """g = factor * (y - t) / y.size: the gradient of a mean over every element of the batch
    whose terms' derivatives are y - t (sigmoid + BCE on logits: factor 1; MSE: 2)."""
    y, t = ins
    g = outs[0]
    same_shape(name, y, t, g, dtype=False)
    np.subtract(y, t, out=g, casting="same_kind")
    g *= g.dtype.type(factor / max(g.size, 1))


@kernel("sigmoid_bce_bwd")
def sigmoid_bce_bwd(ins, outs, attrs, ctx):
    _scaled_difference("sigmoid_bce_bwd", ins, outs, 1.0)     # ins: the probabilities, targets


@kernel("mse")
def mse(ins, outs, attrs, ctx):
    y, t = ins
    loss = outs[0]
    _scalar_out("mse", loss)
    same_shape("mse", y, t, dtype=False)
    d = y.astype(np.float64) - t
    loss[...] = np.mean(d * d)


@kernel("mse_bwd")
def mse_bwd(ins, outs, attrs, ctx):
    _scaled_difference("mse_bwd", ins, outs, 2.0)
