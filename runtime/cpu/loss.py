"""Loss CPU kernels. Each loss is a 0-d array (shape ()): the mean over the batch
(or over all elements), accumulated in float64. Their operands are checked by the ISA's
rules for losses (operands.check_loss, through `loss`).

The softmax losses share the jitted row softmax, which also returns each row's
log-sum-exp, so the loss never takes the log of a probability that underflowed:
-log softmax(z)[k] = lse - z[k], finite for logits of any size.
"""

from __future__ import annotations

import numpy as np

from ..isa import DIFFERENCE_GRADIENTS
from ..operands import loss_kernels
from .elementwise import SIGMOID, _act_fwd, flat, rows, softmax_rows
from .table import kernel

loss = loss_kernels(kernel)


def _softmax(logits, probs):
    """probs = softmax(logits) by rows; returns each row's log-sum-exp (float64)."""
    z = rows(logits)
    lse = np.empty(z.shape[0])
    softmax_rows(z, rows(probs), lse)
    return lse


# The softmax losses see (rows, K) views: a row is a sample of (N, K) logits or a pixel of
# (N, H, W, K) ones, and its label the matching element of the flattened labels.

@loss("softmax_xent")
def softmax_xent(logits, labels, out, probs):
    lse = _softmax(logits, probs)
    picked = rows(logits)[np.arange(labels.size), flat(labels)].astype(np.float64)
    out[...] = np.mean(lse - picked)


@loss("softmax_xent_bwd")
def softmax_xent_bwd(probs, labels, g):
    n = labels.size
    inv_n = g.dtype.type(1.0 / n)
    g_rows = rows(g)
    np.multiply(rows(probs), inv_n, out=g_rows)
    g_rows[np.arange(n), flat(labels)] -= inv_n


@loss("softmax_xent_dense")
def softmax_xent_dense(logits, targets, out, probs):
    lse = _softmax(logits, probs)
    # -sum_k t log softmax(z)_k = sum_k t (lse - z_k): every term >= 0, no cancellation
    t = rows(targets).astype(np.float64)
    out[...] = np.mean(np.sum(t * (lse[:, None] - rows(logits)), axis=1))


@loss("softmax_xent_dense_bwd")
def softmax_xent_dense_bwd(probs, targets, g):
    t = rows(targets)
    tsum = t.astype(np.float64).sum(axis=1, keepdims=True)
    p = rows(probs)
    rows(g)[...] = (p * tsum - t) / p.shape[0]


@loss("sigmoid_bce")
def sigmoid_bce(z, t, out, probs):
    _act_fwd(flat(z), flat(probs), SIGMOID, z.dtype.type(0))
    z64 = z.astype(np.float64)
    # max(z, 0) - z t + log(1 + exp(-|z|)): no exp of a large positive number
    out[...] = np.mean(np.maximum(z64, 0.0) - z64 * t + np.log1p(np.exp(-np.abs(z64))))


@loss("mse")
def mse(y, t, out):
    d = y.astype(np.float64) - t
    out[...] = np.mean(d * d)


def _scaled_difference(factor):
    """g = factor * (y - t) / y.size (isa.DIFFERENCE_GRADIENTS)."""
    def run(y, t, g):
        np.subtract(y, t, out=g, casting="same_kind")
        g *= g.dtype.type(factor / max(g.size, 1))
    return run


for _name, _factor in DIFFERENCE_GRADIENTS.items():
    loss(_name)(_scaled_difference(_factor))
