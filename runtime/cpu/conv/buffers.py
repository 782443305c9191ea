"""Aligned buffers and row lengths for the micro-kernel's operands.

Vector loads that straddle two cache lines cost about twice as much: buffers read as the
micro-kernel's right operand (and the direct kernels' planes) start on a 64-byte boundary
(`_ALIGN`), and matrices read in column panels get a row length that spreads them over the
cache sets (`_good_ld`).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .config import _ALIGN


def _cdiv(a: int, b: int) -> int:
    """a / b rounded up."""
    return -(-a // b)


@njit(cache=True, nogil=True)
def _abuf(n, like):
    """An uninitialised 1-D array of n elements of like's dtype, 64-byte aligned."""
    isz = like.itemsize
    raw = np.empty(n + _ALIGN // isz, like.dtype)
    off = ((_ALIGN - raw.ctypes.data % _ALIGN) % _ALIGN) // isz
    return raw[off:off + n]


def _aligned_empty(shape, dtype):
    """np.empty, 64-byte aligned."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + _ALIGN, np.uint8)
    off = -raw.ctypes.data % _ALIGN
    return raw[off:off + nbytes].view(dtype).reshape(shape)


def _aligned_zeros(shape, dtype):
    a = _aligned_empty(shape, dtype)
    a[...] = 0
    return a


def _aligned(a, dtype=None):
    """a as a C-contiguous, 64-byte aligned array of `dtype` (a itself when it already is)."""
    a = np.ascontiguousarray(a, dtype=dtype)
    if a.ctypes.data % _ALIGN == 0:
        return a
    out = _aligned_empty(a.shape, a.dtype)
    out[...] = a
    return out


def _good_ld(n, itemsize):
    """A row length >= n for a matrix read as the micro-kernel's right operand: an odd number
    of cache lines, so that a column panel's rows spread over all the cache sets (rows a power
    of two apart crowd into a few sets and evict each other)."""
    lines = _cdiv(n * itemsize, _ALIGN)
    lines += 1 - lines % 2
    return lines * _ALIGN // itemsize
