"""A convolution's geometry as every kernel takes it (`Geometry`), and the checks of the shapes
against the attributes, and of the operands, that the wrappers make before anything runs."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from ...isa import check_conv as _check_conv, conv_window as _conv_attrs  # noqa: F401  (dispatch.py checks with it)


class Geometry(NamedTuple):
    """The geometry of one conv, int64 fields read by name in Python and in jitted code alike
    (to Numba a NamedTuple of ints is a plain tuple: one compiled version serves every layer).
    Output rows are flat indices r = (n*OH + oh)*OW + ow."""
    OH: int          # output height, width
    OW: int
    KH: int          # kernel height, width
    KW: int
    sh: int          # stride
    sw: int
    pt: int          # padding at the top and left (bottom and right follow from OH, OW)
    pl: int
    dh: int          # dilation
    dw: int
    groups: int


# a dense layer is a plain 1x1 conv over (N, 1, 1, F)
_NO_GEO = Geometry(OH=1, OW=1, KH=1, KW=1, sh=1, sw=1, pt=0, pl=0, dh=1, dw=1, groups=1)


@njit(cache=True, nogil=True, inline='always')
def _group_dims(geo, C, O):
    """(Ig, Og, K): input and output channels per group, and the im2col row length."""
    Ig = C // geo.groups
    return Ig, O // geo.groups, geo.KH * geo.KW * Ig


def _check(name, cond, msg):
    """Raise ValueError(name: msg()) unless cond; msg is a function, formatted only then."""
    if not cond:
        raise ValueError(f"{name}: {msg()}")


def _plan(attrs, x_shape, w_shape, y_shape):
    """The geometry the kernels take, and whether the conv is a plain GEMM."""
    sh, sw, pt, pb, pl, pr, dh, dw, groups = _conv_attrs(attrs)
    N, H, W, C = x_shape
    O, KH, KW, Ig = w_shape
    _, OH, OW, _ = y_shape
    geo = Geometry(OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, groups)
    return geo, _is_plain(geo, H, W)


def _is_plain(geo, H, W):
    """A 1x1, stride-1, unpadded, ungrouped conv (or a dense layer): its im2col is its input."""
    return (geo.groups == 1 and geo.KH == geo.KW == 1 and geo.sh == geo.sw == 1
            and geo.pt == geo.pl == 0 and geo.OH == H and geo.OW == W)


def _carr(a, dtype=None):
    return np.ascontiguousarray(a, dtype=dtype)


def _bias_arr(b, n, dtype, name):
    if b is None:
        return np.zeros(0, dtype)
    b = _carr(b, dtype)
    _check(name, b.shape == (n,), lambda: f"bias of shape {b.shape}, expected ({n},)")
    return b


def _check_out(name, out, dtype):
    _check(name, out.flags.c_contiguous, lambda: "output buffer must be C-contiguous")
    _check(name, out.dtype == dtype, lambda: f"output dtype {out.dtype} != input dtype {dtype}")
