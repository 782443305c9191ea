"""The host-side checks of a kernel call's operands against the ISA's contract (runtime/isa.py),
shared by every target's kernel wrappers so each rule is written once.

They read only what host and device arrays both have (`.shape`, `.dtype`); where a check
needs values (the labels of a loss), the target passes its function that copies an array
to the host.
"""

from __future__ import annotations

import math

import numpy as np

from .isa import KERNELS


def same_shape(name: str, *arrays, dtype: bool = True) -> None:
    """All arrays have one shape (and, unless dtype=False, one dtype: a mixed call would
    silently compile another specialisation)."""
    first = arrays[0]
    for a in arrays[1:]:
        if tuple(a.shape) != tuple(first.shape):
            raise ValueError(f"{name}: shapes differ: {tuple(first.shape)} vs {tuple(a.shape)}")
        if dtype and a.dtype != first.dtype:
            raise ValueError(f"{name}: dtypes differ: {first.dtype} vs {a.dtype}")


def check_add(ins, outs) -> None:
    """add's inputs: as many as the ISA requires or more, each of its output's shape and dtype."""
    if len(ins) < KERNELS["add"].required_inputs:
        raise ValueError(f"add needs two or more inputs, got {len(ins)}")
    same_shape("add", outs[0], *ins)


def channel_operands(name: str, maps, vectors) -> None:
    """The maps (batch norm's x, y, gy, gx) share one shape and dtype, and each vector holds
    one value per channel (their last axis)."""
    same_shape(name, *maps)
    c = tuple(maps[0].shape)[-1]
    for v in vectors:
        if tuple(v.shape) != (c,):
            raise ValueError(f"{name}: per-channel vector of shape {tuple(v.shape)} for {c} channels")


def batch_sums_operand(name: str, sums, kinds: int, c: int) -> None:
    """A batch norm's sums over the batch (batchnorm_moments', batchnorm_grad_sums'): float64,
    `kinds` rows of one value per channel."""
    if tuple(sums.shape) != (kinds, c) or np.dtype(sums.dtype) != np.float64:
        raise ValueError(f"{name}: sums must be float64 of shape {(kinds, c)}, got "
                         f"{np.dtype(sums.dtype).name} {tuple(sums.shape)}")


def layernorm_operands(name: str, rows, vectors, statistics) -> None:
    """A layer norm's (x, y, gy, gx) share one shape and dtype, each of its vectors holds one
    value per channel (their last axis), and its statistics one per row (the shape without
    the last axis)."""
    channel_operands(name, rows, vectors)
    positions = tuple(rows[0].shape)[:-1]
    for s in statistics:
        if tuple(s.shape) != positions:
            raise ValueError(f"{name}: statistics of shape {tuple(s.shape)} for rows {positions}")


def attention_operands(name: str, qkv, y, weights, heads, grads=()) -> float:
    """qkv (N, T, 3E), y (N, T, E), weights (N, heads, T, T), with heads dividing E, and the
    backward's `grads` (gy, gqkv, gscores) shaped as y, qkv and weights; the scores' scale
    1 / sqrt(E / heads), in float64."""
    if qkv.ndim != 3 or qkv.shape[2] % 3:
        raise ValueError(f"{name}: qkv must be (N, T, 3E), got {tuple(qkv.shape)}")
    n, t, e3 = qkv.shape
    e, heads = e3 // 3, int(heads)
    if heads < 1 or e % heads:
        raise ValueError(f"{name}: {heads} heads do not divide {e} features")
    if tuple(y.shape) != (n, t, e) or tuple(weights.shape) != (n, heads, t, t):
        raise ValueError(f"{name}: y {tuple(y.shape)} and weights {tuple(weights.shape)} for "
                         f"qkv {tuple(qkv.shape)} and {heads} heads")
    if not qkv.dtype == y.dtype == weights.dtype:
        raise ValueError(f"{name}: dtypes differ: {qkv.dtype}, {y.dtype}, {weights.dtype}")
    for grad, value in zip(grads, (y, qkv, weights)):
        same_shape(name, grad, value)
    return 1.0 / math.sqrt(e // heads)


def token_operands(name: str, sequence, part, start) -> tuple[int, int]:
    """A sequence (N, T, F) and a part of its tokens (N, T', F) or one token (N, F), starting
    at token `start`: (T', start)."""
    start = int(start)
    if sequence.ndim != 3:
        raise ValueError(f"{name}: a sequence is (N, T, F), got {tuple(sequence.shape)}")
    n, t, f = sequence.shape
    shape = tuple(part.shape)
    count = 1 if shape == (n, f) else shape[1] if len(shape) == 3 and shape[::2] == (n, f) else 0
    if count < 1 or start < 0 or start + count > t or part.dtype != sequence.dtype:
        raise ValueError(f"{name}: tokens {shape} {part.dtype} from token {start} of "
                         f"{tuple(sequence.shape)} {sequence.dtype}")
    return count, start


def per_sample(name: str, batch, sample) -> None:
    """`sample` holds one sample's worth of `batch`'s values: the shape without the batch,
    leading axes of length 1 allowed (PyTorch's (1, T, F)); one dtype."""
    _fits(name, tuple(batch.shape)[1:], batch.dtype, sample, f"one sample of {tuple(batch.shape)}")


def per_token(name: str, sequence, token) -> None:
    """`token` holds one token of the sequence (N, T, F): F values, leading axes of length 1
    allowed (torchvision's class token (1, 1, F)); one dtype."""
    _fits(name, tuple(sequence.shape)[-1:], sequence.dtype, token,
          f"one token of {tuple(sequence.shape)}")


def _fits(name, shape, dtype, array, what) -> None:
    got = tuple(array.shape)
    while len(got) > len(shape) and got[0] == 1:
        got = got[1:]
    if got != shape or array.dtype != dtype:
        raise ValueError(f"{name}: {tuple(array.shape)} {array.dtype} is not {what} {dtype}")


def _rate(name: str, attrs) -> float:
    rate = float(attrs["rate"])
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"{name} rate must be in [0, 1), got {rate}")
    return rate


def dropout_draw(ins, outs, attrs, rng):
    """(x, y, mask, u, rate, scale) of a dropout call, its maps checked: the run's uniforms u
    in [0, 1), one per element of x (x's shape and dtype, on the host: the same draws on every
    target), and the rate and the kept elements' scale 1 / (1 - rate) as x's dtype:
    mask = (u >= rate) * scale."""
    x, (y, mask) = ins[0], outs
    same_shape("dropout", x, y, mask)
    rate = _rate("dropout", attrs)
    u = rng.random(tuple(x.shape), dtype=x.dtype)
    return x, y, mask, u, x.dtype.type(rate), x.dtype.type(1.0 / (1.0 - rate))


def drop_path_draw(ins, outs, attrs, rng):
    """(x, y, mask, u, rate, scale) of a drop_path call, its operands checked: the run's
    uniforms u in [0, 1), one per sample (x's dtype, on the host: the same draws on every
    target), and the rate and the kept samples' scale as x's dtype:
    mask = (u >= rate) * scale, of shape (N,)."""
    x, (y, mask) = ins[0], outs
    check_samples("drop_path", x, mask, y)
    rate = _rate("drop_path", attrs)
    u = rng.random(tuple(x.shape)[0], dtype=x.dtype)
    return x, y, mask, u, x.dtype.type(rate), x.dtype.type(1.0 / (1.0 - rate))


def check_samples(name: str, x, m, y) -> None:
    """x and y of one shape and dtype, and m one value per sample of them (mul_samples)."""
    same_shape(name, x, y)
    if tuple(m.shape) != tuple(x.shape)[:1] or m.dtype != x.dtype:
        raise ValueError(f"{name}: {tuple(m.shape)} {m.dtype} is not one value per sample of "
                         f"{tuple(x.shape)} {x.dtype}")


def check_upsample(name: str, src, out) -> None:
    """An upsample's (or its gradient's) maps: NHWC, of one dtype (the taps check the rest)."""
    if len(src.shape) != 4 or len(out.shape) != 4 or src.dtype != out.dtype:
        raise ValueError(f"{name}: expected NHWC maps of one dtype, got {tuple(src.shape)} "
                         f"{src.dtype} and {tuple(out.shape)} {out.dtype}")


def shuffle_groups(x, y, groups) -> int:
    """A channel shuffle's groups as an int, after checking that x and y agree and that the
    groups divide their channels (the last axis)."""
    same_shape("channel_shuffle", x, y)
    c, g = tuple(x.shape)[-1], int(groups)
    if g < 1 or c % g:
        raise ValueError(f"channel_shuffle: {g} groups do not divide {c} channels")
    return g


def check_labels(name: str, labels, shape: tuple[int, ...], k: int, to_host=np.asarray) -> None:
    """labels: integers of `shape` (the logits' leading axes: (N,), or (N, H, W) for a map)
    in [0, k); to_host gives their values for the range check."""
    if tuple(labels.shape) != tuple(shape) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name}: labels must be {tuple(shape)} integers, got {tuple(labels.shape)} "
                         f"{labels.dtype}")
    values = to_host(labels)
    if labels.size and (values.min() < 0 or values.max() >= k):
        raise ValueError(f"{name}: labels must lie in [0, {k}), got {values.min()}..{values.max()}")


def check_loss(name: str, ins, outs, to_host=np.asarray) -> None:
    """The operands of a loss instruction or its gradient, by its ISA entry: the first input
    (logits, probabilities or predictions; (N, ..., K) for the softmax losses) and either labels
    of its leading axes (N, ...) in [0, K) or targets of its shape (any float dtype); a loss's
    outputs are a 0-d loss and probabilities of the logits' shape and dtype, a gradient's its
    first input's shape."""
    spec = KERNELS[name]
    z, t = ins
    if name.startswith("softmax") and len(z.shape) < 2:
        raise ValueError(f"{name}: logits must be (N, ..., K), got {tuple(z.shape)}")
    if spec.inputs[1] == "labels":
        check_labels(name, t, tuple(z.shape)[:-1], tuple(z.shape)[-1], to_host)
    else:
        same_shape(name, z, t, dtype=False)
    if spec.outputs[0] == "loss":
        if tuple(outs[0].shape) != ():
            raise ValueError(f"{name}: the loss is a 0-d array, got shape {tuple(outs[0].shape)}")
        same_shape(name, z, *outs[1:])
    else:
        same_shape(name, z, outs[0], dtype=False)


def loss_kernels(kernel, to_host=np.asarray):
    """A decorator for a target's loss kernels: `@loss("mse")` on fn(*inputs, *outputs)
    registers it with the target's `kernel` decorator, its operands checked (check_loss)."""
    def loss(name):
        def register(fn):
            def run(ins, outs, attrs, ctx):
                check_loss(name, ins, outs, to_host)
                fn(*ins, *outs)
            kernel(name)(run)
            return fn
        return register
    return loss
