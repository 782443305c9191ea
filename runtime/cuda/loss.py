"""Loss CUDA kernels. Each loss is a 0-d array: the mean over the batch (or over every
element), of float64 terms that one thread per row (or element) computes, summed in a fixed
order by one thread, so the loss does not depend on the launch.

The softmax losses compute each row's log-sum-exp with its softmax, so the loss never takes
the log of a probability that underflowed: -log softmax(z)[k] = lse - z[k].
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from .elementwise import sigmoid_into, softmax_rows
from .launch import dims, empty, flat, launch, same_shape, to_host
from .table import kernel


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


@cuda.jit
def _dense_grad(probs, t, g):
    """g = (probs * sum(t[r]) - t) / n, in float64."""
    r_, k_ = probs.shape
    for r in range(cuda.grid(1), r_, cuda.gridsize(1)):
        tsum = 0.0
        for k in range(k_):
            tsum += np.float64(t[r, k])
        for k in range(k_):
            g[r, k] = (np.float64(probs[r, k]) * tsum - np.float64(t[r, k])) / r_


@cuda.jit
def _scaled_difference(y, t, scale, g):
    for i in range(cuda.grid(1), g.size, cuda.gridsize(1)):
        g[i] = (y[i] - t[i]) * scale


def _scalar_out(name, out):
    if dims(out) != ():
        raise ValueError(f"{name}: the loss is a 0-d array, got shape {dims(out)}")
    return out.reshape(1)


def _logits(name, z, probs):
    if len(dims(z)) != 2:
        raise ValueError(f"{name}: logits must be (N, K), got {dims(z)}")
    same_shape(name, z, probs)


def _labels(name, labels, n, k):
    if dims(labels) != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name}: labels must be ({n},) integers, got {dims(labels)} {labels.dtype}")
    host = to_host(labels)
    if n and (host.min() < 0 or host.max() >= k):
        raise ValueError(f"{name}: labels must lie in [0, {k}), got {host.min()}..{host.max()}")


def _softmax(z, probs):
    lse = empty(dims(z)[0], np.float64)
    launch(softmax_rows, dims(z)[0], z, probs, lse)
    return lse


def _mean_into(loss, terms):
    launch(_mean, 1, terms, loss)


@kernel("softmax_xent")
def softmax_xent(ins, outs, attrs, ctx):
    z, labels = ins
    loss, probs = _scalar_out("softmax_xent", outs[0]), outs[1]
    _logits("softmax_xent", z, probs)
    n, k = dims(z)
    _labels("softmax_xent", labels, n, k)
    lse = _softmax(z, probs)
    terms = empty(n, np.float64)
    launch(_picked_terms, n, z, labels, lse, terms)
    _mean_into(loss, terms)


@kernel("softmax_xent_bwd")
def softmax_xent_bwd(ins, outs, attrs, ctx):
    probs, labels = ins
    g = outs[0]
    if dims(probs) != dims(g):
        raise ValueError(f"softmax_xent_bwd: {dims(probs)} vs {dims(g)}")
    n, k = dims(probs)
    _labels("softmax_xent_bwd", labels, n, k)
    launch(_picked_grad, n * k, probs, labels, g.dtype.type(1.0 / n), g)


@kernel("softmax_xent_dense")
def softmax_xent_dense(ins, outs, attrs, ctx):
    z, t = ins
    loss, probs = _scalar_out("softmax_xent_dense", outs[0]), outs[1]
    _logits("softmax_xent_dense", z, probs)
    if dims(t) != dims(z):
        raise ValueError(f"softmax_xent_dense: targets {dims(t)} vs logits {dims(z)}")
    lse = _softmax(z, probs)
    terms = empty(dims(z)[0], np.float64)
    launch(_dense_terms, dims(z)[0], z, t, lse, terms)
    _mean_into(loss, terms)


@kernel("softmax_xent_dense_bwd")
def softmax_xent_dense_bwd(ins, outs, attrs, ctx):
    probs, t = ins
    g = outs[0]
    if not dims(probs) == dims(t) == dims(g):
        raise ValueError(f"softmax_xent_dense_bwd: {dims(probs)}, {dims(t)}, {dims(g)}")
    launch(_dense_grad, dims(probs)[0], probs, t, g)


@kernel("sigmoid_bce")
def sigmoid_bce(ins, outs, attrs, ctx):
    z, t = ins
    loss, probs = _scalar_out("sigmoid_bce", outs[0]), outs[1]
    same_shape("sigmoid_bce", z, probs)
    if dims(t) != dims(z):
        raise ValueError(f"sigmoid_bce: targets {dims(t)} vs logits {dims(z)}")
    sigmoid_into(z, probs)
    terms = empty(z.size, np.float64)
    launch(_bce_terms, z.size, flat(z), flat(t), terms)
    _mean_into(loss, terms)


def _difference_grad(name, ins, outs, factor):
    """g = factor * (y - t) / y.size: the gradient of a mean over every element whose terms'
    derivatives are y - t (sigmoid + BCE on logits: factor 1; MSE: 2)."""
    y, t = ins
    g = outs[0]
    if not dims(y) == dims(t) == dims(g):
        raise ValueError(f"{name}: {dims(y)}, {dims(t)}, {dims(g)}")
    launch(_scaled_difference, g.size, flat(y), flat(t), g.dtype.type(factor / max(g.size, 1)), flat(g))


@kernel("sigmoid_bce_bwd")
def sigmoid_bce_bwd(ins, outs, attrs, ctx):
    _difference_grad("sigmoid_bce_bwd", ins, outs, 1.0)     # ins: the probabilities, targets


@kernel("mse")
def mse(ins, outs, attrs, ctx):
    y, t = ins
    loss = _scalar_out("mse", outs[0])
    if dims(t) != dims(y):
        raise ValueError(f"mse: targets {dims(t)} vs {dims(y)}")
    terms = empty(y.size, np.float64)
    launch(_squared_terms, y.size, flat(y), flat(t), terms)
    _mean_into(loss, terms)


@kernel("mse_bwd")
def mse_bwd(ins, outs, attrs, ctx):
    _difference_grad("mse_bwd", ins, outs, 2.0)
