"""The taps of an upsample (runtime/isa.py `upsample`), as PyTorch's F.interpolate computes
them, read by every target's kernels so that each computes the same source pixels and weights.

An axis of n_out outputs reads an axis of n_in inputs through taps: output o is the sum of
weight * input[index] over its taps. A table holds them compressed by output: the taps of o
are entries at[o] .. at[o + 1] - 1 of `index` and `weight`. The backward pass is the same
sum over the transposed table (by input: the outputs each input feeds, and their weights),
so a gradient is gathered, one input element at a time, never scattered.

PyTorch's rules (aten/src/ATen/native/UpSample.h, the CPU kernels):
- nearest: source = min(floor(o * step), n_in - 1) in float32, step = 1 / scale when a scale
  was given, else n_in / n_out; an axis with n_out == n_in copies, one with n_out == 2 n_in
  takes o // 2 (whatever the step's rounding would give);
- bilinear: in the data's precision, source = step * o with align_corners (step =
  (n_in - 1) / (n_out - 1), 0 for one output), else max(step * (o + 0.5) - 0.5, 0) with the
  step above; i0 = min(floor(source), n_in - 1), lambda = clamp(source - i0, 0, 1), taps
  (i0, 1 - lambda) and (i0 + 1 or, on the last input, i0 again, lambda); an axis with
  n_out == n_in copies.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

MODES = ("nearest", "bilinear")


class Taps(NamedTuple):
    """One axis's taps by output (or, transposed, by input): at (int32, outputs + 1), index
    (int32) and weight (the data's dtype), one entry a tap."""
    at: np.ndarray
    index: np.ndarray
    weight: np.ndarray


def _sources(mode: str, n_in: int, n_out: int, scale: float, align_corners: bool, dtype):
    """(i0, i1, w0, w1): each output's two taps (nearest: its one tap, and a second of weight 0
    that _table drops)."""
    t = np.dtype(dtype).type
    out = np.arange(n_out)
    if n_out == n_in or (mode == "nearest" and n_out == 2 * n_in):
        i0 = out if n_out == n_in else out // 2
        return i0, i0, np.ones(n_out, dtype), np.zeros(n_out, dtype)
    if mode == "nearest":
        step = np.float32(1.0 / scale) if scale > 0 else np.float32(n_in) / np.float32(n_out)
        i0 = np.minimum(np.floor(out.astype(np.float32) * step).astype(np.int64), n_in - 1)
        return i0, i0, np.ones(n_out, dtype), np.zeros(n_out, dtype)
    o = out.astype(dtype)
    if align_corners:
        step = t(n_in - 1) / t(n_out - 1) if n_out > 1 else t(0)
        source = step * o
    else:
        step = t(1.0 / scale) if scale > 0 else t(n_in) / t(n_out)
        source = np.maximum(step * (o + t(0.5)) - t(0.5), t(0))
    i0 = np.minimum(np.floor(source).astype(np.int64), n_in - 1)
    w1 = np.minimum(np.maximum(source - i0.astype(dtype), t(0)), t(1))
    return i0, i0 + (i0 < n_in - 1), t(1) - w1, w1


def _table(rows: int, keys: np.ndarray, index: np.ndarray, weight: np.ndarray) -> Taps:
    """The taps (keys[k]: index[k], weight[k]) grouped by key, in order of key then index."""
    order = np.lexsort((index, keys))
    at = np.zeros(rows + 1, np.int32)
    np.cumsum(np.bincount(keys, minlength=rows), out=at[1:])
    taps = Taps(at, index[order].astype(np.int32), np.ascontiguousarray(weight[order]))
    for a in taps:
        a.setflags(write=False)     # cached: shared by every call
    return taps


@functools.lru_cache(maxsize=256)
def axis_taps(mode: str, n_in: int, n_out: int, scale: float, align_corners: bool,
              dtype: str) -> tuple[Taps, Taps]:
    """(forward taps by output, backward taps by input) of one axis. scale: the factor the spec
    gave for this axis, or 0 where it gave the output size."""
    if mode not in MODES:
        raise ValueError(f"upsample mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "nearest" and align_corners:
        raise ValueError("upsample: align_corners applies to bilinear only")
    if min(n_in, n_out) < 1:
        raise ValueError(f"upsample: sizes must be positive, got {n_in} -> {n_out}")
    i0, i1, w0, w1 = _sources(mode, n_in, n_out, float(scale), bool(align_corners), np.dtype(dtype))
    # PyTorch adds both of bilinear's terms even where a weight is 0; nearest has one tap
    two = mode == "bilinear"
    outs = np.concatenate([np.arange(n_out)] * (1 + two))
    ins = np.concatenate([i0, i1] if two else [i0]).astype(np.int64)
    weights = np.concatenate([w0, w1] if two else [w0]).astype(dtype)
    return _table(n_out, outs, ins, weights), _table(n_in, ins, outs, weights)


def upsample_taps(attrs, x_shape, y_shape, dtype) -> tuple[tuple[Taps, Taps], tuple[Taps, Taps]]:
    """((rows, columns) forward, (rows, columns) backward) of an upsample from x (N, H, W, C)
    to y (N, OH, OW, C), after checking that their batch and channels agree."""
    (n, h, w, c), (n2, oh, ow, c2) = tuple(x_shape), tuple(y_shape)
    if (n, c) != (n2, c2):
        raise ValueError(f"upsample: {tuple(x_shape)} and {tuple(y_shape)} differ in batch or "
                         "channels")
    mode, align = attrs["mode"], bool(attrs["align_corners"])
    sh, sw = (float(s) for s in attrs["scale"])
    name = np.dtype(dtype).name
    (rows, rows_t), (cols, cols_t) = (axis_taps(mode, h, oh, sh, align, name),
                                      axis_taps(mode, w, ow, sw, align, name))
    return (rows, cols), (rows_t, cols_t)
