"""The windows of the pool and pad instructions (runtime/isa.py) as tables along each axis,
computed on the host from an instruction's attributes and its operands' shapes and read by
every target's kernels: the window arithmetic (padding, ceil mode, dilation, adaptive windows,
the average's divisors, the windows that hold each input position, where a padded position
reads from) is written here once, not once per target.

Windows and paddings are separable: a pool's window (oh, ow) is window oh of the height's table
times window ow of the width's, and a padded map's element (oh, ow) reads the input row the
height's table names and the column the width's names.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Axis:
    """The windows of a pool along one axis: window o reads the input positions first[o],
    first[o] + step, ... below end[o], every one inside the input; inv[o] is 1 / its divisor
    (average pools). Input position i lies in the spans of windows lo[i] ... hi[i] - 1 (a max
    pool's gradient looks among them for the windows that chose i; with step 1 each of them
    reads i)."""
    first: np.ndarray
    end: np.ndarray
    step: int
    inv: np.ndarray
    lo: np.ndarray
    hi: np.ndarray


def _axis(size: int, start: np.ndarray, stop: np.ndarray, step: int, divisor: np.ndarray) -> Axis:
    """The tables of windows whose spans are [start[o], stop[o]) (start and stop never
    decrease with o), reading every step-th position of the span from start, divided by
    divisor[o]; positions outside [0, size) are padding, never read."""
    first = np.where(start >= 0, start, start + step * ((-start + step - 1) // step))
    end = np.minimum(stop, size)
    positions = np.arange(size)
    inv = np.where(divisor > 0, 1.0 / np.maximum(divisor, 1), 0.0)
    return Axis(first.astype(np.int64), end.astype(np.int64), int(step), inv,
                np.searchsorted(stop, positions, side="right").astype(np.int64),
                np.searchsorted(start, positions, side="right").astype(np.int64))


def pooled_length(size: int, k: int, s: int, before: int, after: int, d: int, ceil: bool) -> int:
    """How many windows of k taps d apart, s apart, fit the axis padded with `before` and
    `after`: floor, or (ceil) rounded up as long as the last window starts inside the input or
    the padding before it (PyTorch's ceil_mode)."""
    room = size + before + after - d * (k - 1) - 1
    if not ceil:
        return room // s + 1
    n = -(-room // s) + 1
    return n - 1 if (n - 1) * s >= size + before else n


def pooled_axis(size: int, out: int, k: int, s: int, before: int, after: int, d: int = 1,
                include_pad: bool = False) -> Axis:
    """A windowed pool's axis: window o starts at o * s - before; its divisor is the window's
    positions inside the padded axis [-before, size + after) if include_pad (so the part of a
    ceil-mode window past the padding is not counted, as in PyTorch), else those it reads."""
    start = np.arange(out, dtype=np.int64) * s - before
    stop = start + d * (k - 1) + 1
    if include_pad:     # (average pools have no dilation: d is 1)
        divisor = np.minimum(stop, size + after) - start
    else:               # the taps t < k with 0 <= start + t * d < size
        t_first = np.maximum(0, -(start // d))
        t_last = np.minimum(k - 1, (size - 1 - start) // d)
        divisor = np.maximum(0, t_last - t_first + 1)
    return _axis(size, start, stop, d, divisor)


def adaptive_axis(size: int, out: int) -> Axis:
    """An adaptive average pool's axis (PyTorch's AdaptiveAvgPool2d): window o covers
    [floor(o * size / out), ceil((o + 1) * size / out)), divided by its length."""
    o = np.arange(out, dtype=np.int64)
    start = o * size // out
    stop = -((-(o + 1) * size) // out)
    return _axis(size, start, stop, 1, stop - start)


def global_axis(size: int) -> Axis:
    """One window over the whole axis."""
    return _axis(size, np.zeros(1, np.int64), np.full(1, size, np.int64), 1, np.full(1, size))


# ---- the instructions' attributes and operands

def _pair(v, name):
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    if len(v) != 2:
        raise ValueError(f"{name} must be an int or a pair, got {v!r}")
    return int(v[0]), int(v[1])


def _four(pad, name="pad") -> tuple[int, int, int, int]:
    """(top, bottom, left, right) from an int, a pair (h, w) or the four."""
    if isinstance(pad, (int, np.integer)):
        pad = (pad,) * 4
    elif len(pad) == 2:
        pad = (pad[0], pad[0], pad[1], pad[1])
    if len(pad) != 4 or min(int(p) for p in pad) < 0:
        raise ValueError(f"{name} must be 4 amounts >= 0 (top, bottom, left, right), got {pad!r}")
    return tuple(int(p) for p in pad)


def _map(name, a_shape, b_shape, what="pooled"):
    a_shape, b_shape = tuple(a_shape), tuple(b_shape)
    if (len(a_shape) != 4 or len(b_shape) != 4 or a_shape[0] != b_shape[0]
            or a_shape[3] != b_shape[3]):
        raise ValueError(f"{name}: {a_shape} is not {what} into {b_shape}: expected NHWC maps "
                         "of one batch and channel count")
    return a_shape[1:3], b_shape[1:3]


def pool_axes(name, attrs, x_shape, y_shape, include_pad=False) -> tuple[Axis, Axis]:
    """The height's and width's windows of a maxpool2d or avgpool2d (or their backward: x is
    then gx's shape, y gy's) with these attributes, after checking that y is x pooled."""
    kh, kw = _pair(attrs["kernel"], "kernel")
    sh, sw = _pair(attrs.get("stride") or (kh, kw), "stride")
    (dh, dw), ceil = _pair(attrs.get("dilation", 1), "dilation"), bool(attrs.get("ceil", False))
    pt, pb, pl, pr = _four(attrs.get("pad", 0))
    if min(kh, kw, sh, sw, dh, dw) < 1:
        raise ValueError(f"{name}: kernel {(kh, kw)}, stride {(sh, sw)} and dilation {(dh, dw)} "
                         "must be positive")
    (h, w), (oh, ow) = _map(name, x_shape, y_shape)
    want = (pooled_length(h, kh, sh, pt, pb, dh, ceil), pooled_length(w, kw, sw, pl, pr, dw, ceil))
    if (oh, ow) != want or min(want) < 1:
        raise ValueError(f"{name}: {tuple(x_shape)} pooled with kernel {(kh, kw)}, stride "
                         f"{(sh, sw)}, pad {(pt, pb, pl, pr)}, dilation {(dh, dw)}, ceil {ceil} "
                         f"gives {want[0]}x{want[1]}, not {oh}x{ow}")
    return (pooled_axis(h, oh, kh, sh, pt, pb, dh, include_pad),
            pooled_axis(w, ow, kw, sw, pl, pr, dw, include_pad))


def adaptive_axes(name, x_shape, y_shape) -> tuple[Axis, Axis]:
    """The windows of an adaptive_avgpool2d of x into y (any sizes of at least 1)."""
    (h, w), (oh, ow) = _map(name, x_shape, y_shape)
    if min(h, w, oh, ow) < 1:
        raise ValueError(f"{name}: empty map {tuple(x_shape)} -> {tuple(y_shape)}")
    return adaptive_axis(h, oh), adaptive_axis(w, ow)


def global_axes(name, x_shape, y_shape) -> tuple[Axis, Axis]:
    """The windows of a global pool of x (N, H, W, C) into y (N, C)."""
    n, h, w, c = tuple(x_shape)
    if tuple(y_shape) != (n, c):
        raise ValueError(f"{name}: {tuple(x_shape)} pools globally to {(n, c)}, "
                         f"not {tuple(y_shape)}")
    return global_axis(h), global_axis(w)


# ---- padding

# the pool instructions, (name, is_max, backward, kind), which each target registers: kind says
# where the windows come from (windowed: the attributes; global; adaptive: the shapes)
POOL_INSTRUCTIONS = tuple(
    (name + suffix, "max" in name, bool(suffix), kind)
    for kind, names in (("windowed", ("maxpool2d", "avgpool2d")),
                        ("global", ("global_maxpool", "global_avgpool")),
                        ("adaptive", ("adaptive_avgpool2d",)))
    for name in names for suffix in ("", "_bwd"))


def pool_kind_axes(kind, name, attrs, x_shape, y_shape) -> tuple[Axis, Axis]:
    """The windows of each axis of a pool instruction of this kind of x (N, H, W, C) into y
    (N, OH, OW, C), or (N, C) for a global pool (a backward's: gx and gy)."""
    if kind == "global":
        return global_axes(name, x_shape, y_shape)
    if kind == "adaptive":
        return adaptive_axes(name, x_shape, y_shape)
    return pool_axes(name, attrs, x_shape, y_shape, bool(attrs.get("include_pad", False)))


PAD_MODES = ("constant", "reflect", "replicate")


@dataclass(frozen=True)
class PadAxis:
    """One axis of a padded map: padded position o reads input position source[o] (-1: the
    constant); input position i is read by padded positions readers[offsets[i]:offsets[i + 1]],
    in increasing order (what the backward pass sums)."""
    source: np.ndarray
    readers: np.ndarray
    offsets: np.ndarray


def pad_axis(size: int, before: int, after: int, mode: str) -> PadAxis:
    i = np.arange(-before, size + after, dtype=np.int64)
    if mode == "constant":
        source = np.where((i >= 0) & (i < size), i, -1)
    elif mode == "reflect":          # the edge is the mirror and is not repeated: 2 1 | 0 1 2 | 1 0
        source = np.abs(i)
        source = np.where(source >= size, 2 * (size - 1) - source, source)
    elif mode == "replicate":
        source = np.clip(i, 0, size - 1)
    else:
        raise ValueError(f"pad mode must be one of {', '.join(PAD_MODES)}, got {mode!r}")
    readers = np.argsort(source, kind="stable")
    readers = readers[source[readers] >= 0]
    counts = np.bincount(source[source >= 0], minlength=size)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return PadAxis(source, readers.astype(np.int64), offsets.astype(np.int64))


def pad_axes(name, attrs, x_shape, y_shape) -> tuple[PadAxis, PadAxis, str]:
    """The height's and width's tables of a pad2d (or pad2d_bwd: x is gx's shape, y gy's),
    after checking that y is x padded, and the mode."""
    pt, pb, pl, pr = _four(attrs["pad"])
    mode = str(attrs.get("mode", "constant"))
    (h, w), (oh, ow) = _map(name, x_shape, y_shape, "padded")
    if (oh, ow) != (h + pt + pb, w + pl + pr):
        raise ValueError(f"{name}: {tuple(x_shape)} padded by {(pt, pb, pl, pr)} is "
                         f"{h + pt + pb}x{w + pl + pr}, not {oh}x{ow}")
    if mode == "reflect" and (max(pt, pb) >= h or max(pl, pr) >= w):
        raise ValueError(f"{name}: reflect padding {(pt, pb, pl, pr)} must be smaller than the "
                         f"map's {h}x{w}")
    if min(h, w) < 1:
        raise ValueError(f"{name}: empty map {tuple(x_shape)}")
    return pad_axis(h, pt, pb, mode), pad_axis(w, pl, pr, mode), mode
