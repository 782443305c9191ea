"""Loss CUDA kernels. Each loss is a 0-d array: the mean over the batch (or over every
element), of float64 terms that one thread per row (or element) computes, summed in a fixed
order by one thread, so the loss does not depend on the launch.

The softmax losses compute each row's log-sum-exp with its softmax, so the loss never takes
the log of a probability that underflowed: -log softmax(z)[k] = lse - z[k]. Their operands
are checked by the ISA's rules for losses (operands.check_loss, through `loss`), the labels'
range on a host copy.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from ..isa import DIFFERENCE_GRADIENTS
from ..operands import loss_kernels
from .elementwise import sigmoid_into, softmax_rows
from .launch import device_function, dims, empty, flat, launch, rows, to_host
from .table import kernel

loss = loss_kernels(kernel, to_host)


@cuda.jit
def _picked_terms(z, labels, lse, terms):
    """terms[r] = lse[r] - z[r, labels[r]]: -log softmax(z[r])[label]."""
    for r in range(cuda.grid(1), terms.size, cuda.gridsize(1)):
        terms[r] = lse[r] - np.float64(z[r, labels[r]])


@cuda.jit
def _dense_terms(z, t, lse, terms):
    """terms[r] = sum_k t[r, k] * (lse[r] - z[r, k]): every term >= 0, no cancellation."""
    r_, k_ = z.shape
    for r in range(cuda.grid(1), r_, cuda.gridsize(1)):
        acc = 0.0
        for k in range(k_):
            acc += np.float64(t[r, k]) * (lse[r] - np.float64(z[r, k]))
        terms[r] = acc


@cuda.jit
def _bce_terms(z, t, terms):
    """max(z, 0) - z t + log(1 + exp(-|z|)) in float64: no exp of a large positive number."""
    for i in range(cuda.grid(1), z.size, cuda.gridsize(1)):
        v = np.float64(z[i])
        terms[i] = max(v, 0.0) - v * np.float64(t[i]) + math.log1p(math.exp(-abs(v)))


@cuda.jit
def _squared_terms(y, t, terms):
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        d = np.float64(y[i]) - np.float64(t[i])
        terms[i] = d * d


@cuda.jit
def _mean(terms, out):
    """out[0] = the mean of terms, summed in index order by one thread."""
    if cuda.grid(1) == 0:
        s = 0.0
        for i in range(terms.size):
            s += terms[i]
        out[0] = s / terms.size


@cuda.jit
def _picked_grad(probs, labels, inv_n, g):
    """g = probs / n, less 1 / n at each row's label."""
    r_, k_ = probs.shape
    for i in range(cuda.grid(1), r_ * k_, cuda.gridsize(1)):
        r, k = i // k_, i % k_
        v = probs[r, k] * inv_n
        g[r, k] = v - inv_n if k == labels[r] else v


@device_function
def _row_sum(a, r):
    """The sum of row r of a (R, K) array, in float64, in order."""
    s = 0.0
    for k in range(a.shape[1]):
        s += np.float64(a[r, k])
    return s


@cuda.jit
def _dense_grad(probs, t, g):
    """g = (probs * sum(t[r]) - t) / n, in float64: one thread a row."""
    n = probs.shape[0]
    for r in range(cuda.grid(1), n, cuda.gridsize(1)):
        tsum = _row_sum(t, r)
        for k in range(probs.shape[1]):
            g[r, k] = (np.float64(probs[r, k]) * tsum - np.float64(t[r, k])) / n


@cuda.jit
def _scaled_differences(y, t, scale, g):
    for i in range(cuda.grid(1), g.size, cuda.gridsize(1)):
        g[i] = (y[i] - t[i]) * scale


def _softmax(z, probs):
    """probs = softmax(z) by rows; returns each row's log-sum-exp (float64)."""
    lse = empty(dims(z)[0], np.float64)
    launch(softmax_rows, dims(z)[0], z, probs, lse)
    return lse


def _mean_into(out, terms):
    """The 0-d loss out = the mean of the float64 terms."""
    launch(_mean, 1, terms, out.reshape(1))


# The softmax losses see (rows, K) views: a row is a sample of (N, K) logits or a pixel of
# (N, H, W, K) ones, and its label the matching element of the flattened labels.

def _softmax_loss(terms_kernel, per_row_target):
    """A softmax loss: probs = softmax(z), and the mean of terms_kernel's per-row terms
    (z, the labels or targets, the rows' log-sum-exp -> terms); per_row_target: the target's
    (rows,) or (rows, K) view."""
    def run(z, target, out, probs):
        z = rows(z)
        lse = _softmax(z, rows(probs))
        terms = empty(dims(z)[0], np.float64)
        launch(terms_kernel, terms.size, z, per_row_target(target), lse, terms)
        _mean_into(out, terms)
    return run


loss("softmax_xent")(_softmax_loss(_picked_terms, flat))
loss("softmax_xent_dense")(_softmax_loss(_dense_terms, rows))


@loss("softmax_xent_bwd")
def softmax_xent_bwd(probs, labels, g):
    g = rows(g)
    launch(_picked_grad, g.size, rows(probs), flat(labels), g.dtype.type(1.0 / dims(g)[0]), g)


@loss("softmax_xent_dense_bwd")
def softmax_xent_dense_bwd(probs, t, g):
    probs = rows(probs)
    launch(_dense_grad, dims(probs)[0], probs, rows(t), rows(g))


@loss("sigmoid_bce")
def sigmoid_bce(z, t, out, probs):
    sigmoid_into(z, probs)
    terms = empty(z.size, np.float64)
    launch(_bce_terms, z.size, flat(z), flat(t), terms)
    _mean_into(out, terms)


@loss("mse")
def mse(y, t, out):
    terms = empty(y.size, np.float64)
    launch(_squared_terms, y.size, flat(y), flat(t), terms)
    _mean_into(out, terms)


def _scaled_difference(factor):
    """g = factor * (y - t) / y.size (isa.DIFFERENCE_GRADIENTS)."""
    def run(y, t, g):
        launch(_scaled_differences, g.size, flat(y), flat(t), g.dtype.type(factor / max(g.size, 1)),
               flat(g))
    return run


for _name, _factor in DIFFERENCE_GRADIENTS.items():
    loss(_name)(_scaled_difference(_factor))
