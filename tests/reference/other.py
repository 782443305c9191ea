"""The ops' float64 references (netspec/ops/reference/) in the kernels' layout, for the
kernel tests: maps channels-last (N, H, W, C), explicit padding (top, bottom, left, right),
as runtime/isa.py lays them out; and the losses, which are no op's but the training step's.

The references are written for clarity and share no code with the kernels.
"""

from __future__ import annotations

import functools

import numpy as np

from netspec.ops.reference import activation, dense, merge, norm, pool
from netspec.ops.reference.common import f64

CHANNELS_LAST = -1


def nchw(x):
    return f64(x).transpose(0, 3, 1, 2)


def nhwc(x):
    return np.ascontiguousarray(np.asarray(x).transpose(0, 2, 3, 1))


def _nchw_shape(shape):
    n, h, w, c = shape
    return n, c, h, w


# ---- activations, by instruction: elementwise ones need no layout; softmax, log_softmax and
# prelu take the channel axis

relu, relu_vjp = activation.relu, activation.relu_vjp
relu6, relu6_vjp = activation.relu6, activation.relu6_vjp
leaky_relu, leaky_relu_vjp = activation.leaky_relu, activation.leaky_relu_vjp
elu, elu_vjp = activation.elu, activation.elu_vjp
selu, selu_vjp = activation.selu, activation.selu_vjp
tanh, tanh_vjp = activation.tanh, activation.tanh_vjp
sigmoid, sigmoid_vjp = activation.sigmoid, activation.sigmoid_vjp
silu, silu_vjp = activation.silu, activation.silu_vjp
hardswish, hardswish_vjp = activation.hardswish, activation.hardswish_vjp
hardsigmoid, hardsigmoid_vjp = activation.hardsigmoid, activation.hardsigmoid_vjp
gelu, gelu_vjp = activation.gelu, activation.gelu_vjp
gelu_tanh = functools.partial(activation.gelu, approximate="tanh")
gelu_tanh_vjp = functools.partial(activation.gelu_vjp, approximate="tanh")
softmax = functools.partial(activation.softmax, axis=CHANNELS_LAST)
softmax_vjp = functools.partial(activation.softmax_vjp, axis=CHANNELS_LAST)
log_softmax = functools.partial(activation.log_softmax, axis=CHANNELS_LAST)
log_softmax_vjp = functools.partial(activation.log_softmax_vjp, axis=CHANNELS_LAST)
prelu = functools.partial(activation.prelu, axis=CHANNELS_LAST)
prelu_vjp = functools.partial(activation.prelu_vjp, axis=CHANNELS_LAST)


# ---- pooling

def maxpool2d(x, kernel, stride, pad):
    """(y, argmax): the first maximum in row-major window order; padding never wins."""
    y, argmax = pool.maxpool2d(nchw(x), kernel, stride, pad)
    return nhwc(y), nhwc(argmax)


def maxpool2d_vjp(gy, argmax, x_shape):
    return nhwc(pool.maxpool2d_vjp(nchw(gy), np.asarray(argmax).transpose(0, 3, 1, 2),
                                   _nchw_shape(x_shape)))


def avgpool2d(x, kernel, stride, pad, include_pad):
    return nhwc(pool.avgpool2d(nchw(x), kernel, stride, pad, include_pad))


def avgpool2d_vjp(gy, x_shape, kernel, stride, pad, include_pad):
    return nhwc(pool.avgpool2d_vjp(nchw(gy), _nchw_shape(x_shape), kernel, stride, pad,
                                   include_pad))


def global_avgpool(x):
    return pool.global_avgpool(nchw(x))


def global_avgpool_vjp(gy, x_shape):
    return nhwc(pool.global_avgpool_vjp(gy, _nchw_shape(x_shape)))


def global_maxpool(x):
    """(y, argmax = h * W + w of the first maximum)."""
    return pool.global_maxpool(nchw(x))


def global_maxpool_vjp(gy, argmax, x_shape):
    return nhwc(pool.global_maxpool_vjp(gy, argmax, _nchw_shape(x_shape)))


# ---- normalisation (the channel is the last axis; x may be (N, C) or (N, H, W, C))

batchnorm_train = functools.partial(norm.batchnorm_train, axis=CHANNELS_LAST)
batchnorm_train_vjp = functools.partial(norm.batchnorm_train_vjp, axis=CHANNELS_LAST)
batchnorm_infer = functools.partial(norm.batchnorm_infer, axis=CHANNELS_LAST)
batchnorm_infer_vjp = functools.partial(norm.batchnorm_infer_vjp, axis=CHANNELS_LAST)


def lrn(x, size, alpha, beta, k):
    return nhwc(norm.lrn(nchw(x), size, alpha, beta, k))


def lrn_vjp(gy, x, size, alpha, beta, k):
    return nhwc(norm.lrn_vjp(nchw(gy), nchw(x), size, alpha, beta, k))


# ---- merges and movers

def to_flat(x):
    """(N, H, W, C) -> (N, C*H*W) in channel-major order: the spec's flatten."""
    return dense.reshape(nchw(x), (-1,))


def from_flat(x, shape):
    n, h, w, c = shape
    return nhwc(dense.reshape(x, (c, h, w)))


concat = functools.partial(merge.concat, axis=CHANNELS_LAST)
split = functools.partial(merge.split, axis=CHANNELS_LAST)


# ---- losses (the mean over the batch, or over all elements)

def _log_softmax(z):
    z = f64(z)
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def softmax_xent(logits, labels):
    """(loss, probs)."""
    logp = _log_softmax(logits)
    n = logp.shape[0]
    return -np.mean([logp[i, labels[i]] for i in range(n)]), np.exp(logp)


def softmax_xent_grad(logits, labels):
    probs = np.exp(_log_softmax(logits))
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(labels)), labels] = 1.0
    return (probs - onehot) / probs.shape[0]


def softmax_xent_dense(logits, targets):
    logp = _log_softmax(logits)
    return -np.mean((f64(targets) * logp).sum(axis=1)), np.exp(logp)


def softmax_xent_dense_grad(logits, targets):
    probs, t = np.exp(_log_softmax(logits)), f64(targets)
    return (probs * t.sum(axis=1, keepdims=True) - t) / probs.shape[0]


def sigmoid_bce(z, t):
    """(loss, probs): -mean(t log p + (1 - t) log(1 - p)), with log p and log(1 - p)
    written through log1p so large |z| stays finite."""
    z, t = f64(z), f64(t)
    log_p = -np.log1p(np.exp(-np.abs(z))) + np.minimum(z, 0.0)        # log sigmoid(z)
    log_1mp = -np.log1p(np.exp(-np.abs(z))) - np.maximum(z, 0.0)      # log sigmoid(-z)
    return -np.mean(t * log_p + (1 - t) * log_1mp), sigmoid(z)


def sigmoid_bce_grad(z, t):
    return (sigmoid(z) - f64(t)) / np.size(z)


def mse(y, t):
    return np.mean((f64(y) - f64(t)) ** 2)


def mse_grad(y, t):
    return 2.0 * (f64(y) - f64(t)) / np.size(y)
