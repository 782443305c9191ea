"""Resampling and moving channels on CUDA: upsample (nearest, bilinear) forward and backward,
channel shuffle.

One thread per output element. An upsample's element is formulas.resampled over the taps
runtime/resample.py computes on the host (as PyTorch does, and as the CPU target reads them),
its gradient the same sum over the transposed taps: each input element gathers the outputs it
feeds, so no two threads write one element (no atomics) and the sums run in the CPU's order.
"""

from __future__ import annotations

from numba import cuda

from .. import formulas
from ..operands import check_upsample, shuffle_groups
from ..resample import upsample_taps
from .launch import device_function, dims, launch, rows, to_device, unravel
from .table import kernel

_resampled = device_function(formulas.resampled)


@cuda.jit
def _resample(src, out, rows_taps, cols_taps):
    """out[n, p, q, c] = formulas.resampled(src, ...), one thread an element."""
    _, P, Q, C = out.shape
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        n, p, q, c = unravel(i, P, Q, C)
        out[n, p, q, c] = _resampled(src, n, p, q, c, rows_taps, cols_taps)


def _on_device(taps):
    return tuple(to_device(a) for a in taps)


@kernel("upsample")
def upsample(ins, outs, attrs, ctx):
    x, y = ins[0], outs[0]
    check_upsample("upsample", x, y)
    (row_taps, col_taps), _ = upsample_taps(attrs, dims(x), dims(y), x.dtype)
    launch(_resample, y.size, x, y, _on_device(row_taps), _on_device(col_taps))


@kernel("upsample_bwd")
def upsample_bwd(ins, outs, attrs, ctx):
    gy, gx = ins[0], outs[0]
    check_upsample("upsample_bwd", gy, gx)
    _, (row_taps, col_taps) = upsample_taps(attrs, dims(gx), dims(gy), gy.dtype)
    launch(_resample, gx.size, gy, gx, _on_device(row_taps), _on_device(col_taps))


@cuda.jit
def _shuffle(x, y, groups):
    """y[r, k * groups + g] = x[r, g * (C / groups) + k]."""
    _, C = y.shape
    per_group = C // groups
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        r, j = i // C, i % C
        y[r, j] = x[r, (j % groups) * per_group + j // groups]


@kernel("channel_shuffle")
def channel_shuffle(ins, outs, attrs, ctx):
    x, y = ins[0], outs[0]
    groups = shuffle_groups(x, y, attrs["groups"])
    launch(_shuffle, x.size, rows(x), rows(y), groups)
