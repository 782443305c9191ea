"""Direct convolutions row by row: one input channel per group (depthwise with multiplier
m = O / C, or C == 1 with any O), for every such conv that planar.py does not take (strided,
or O >= `_DIRECT_WIDE`); dispatch picks them for all three passes of these convs.

Output channel o reads input channel o // m; wt is the weight as (KH, KW, O). Two loop
orders, so that the innermost loop is a long, contiguous multiply-add either way:
- "wide" (O >= _DIRECT_WIDE): along the channels of one pixel. For m > 1 the input row is
  "expanded" first, each channel repeated m times, to line up with the outputs;
- "columns" (few channels): along the output columns of one channel, on rows transposed to
  channel-major order ((O, OW) accumulators, (C, W) input rows).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .config import _DIRECT_WIDE, _REDUCTION_BLOCK
from .vectors import _vmuladd


@njit(cache=True, nogil=True)
def _expand_row(src, dst, W, C, m):
    """dst[(iw*C + c)*m + j] = src[iw*C + c]"""
    for p in range(W * C):
        v = src[p]
        for j in range(m):
            dst[p * m + j] = v


@njit(cache=True, nogil=True)
def _transpose_row(src, dst, W, C):
    """dst[c*W + w] = src[w*C + c]: one NHWC row to channel-major order."""
    for w in range(W):
        for c in range(C):
            dst[c * W + w] = src[w * C + c]


@njit(cache=True, nogil=True)
def _ow_range(off, sw, W, OW):
    """The output columns ow with 0 <= ow*sw + off < W, as [lo, hi)."""
    lo = 0 if off >= 0 else (-off + sw - 1) // sw
    hi = min(OW, (W - 1 - off) // sw + 1) if W - 1 - off >= 0 else 0
    return lo, max(lo, hi)


@njit(cache=True, nogil=True, inline='always')
def _rows(x, y, geo):
    """The layout the row-by-row kernels share, for the input x (or gx) and the output y (or
    gy): x as rows (N, H, W*C), y as rows (N, OH, OW*O), the channel multiplier m, the loop
    order (`wide`: along the channels of a pixel), and a scratch row of one input row
    expanded (wide) or channel-major."""
    N, H, W, C = x.shape
    O = y.shape[3]
    wide = O >= _DIRECT_WIDE
    return (x.reshape(N, H, W * C), y.reshape(N, geo.OH, geo.OW * O), O // C, wide,
            np.empty(W * O if wide else W * C, x.dtype))


@njit(cache=True, nogil=True, inline='always')
def _scaled_add(d, d0, d_step, s, x, x0, x_step, n):
    """d[d0 + j*d_step] += s * x[x0 + j*x_step] for j < n; the unit-stride case as its own loop,
    which LLVM vectorises."""
    if d_step == 1 and x_step == 1:
        for j in range(n):
            d[d0 + j] += s * x[x0 + j]
    else:
        for j in range(n):
            d[d0 + j * d_step] += s * x[x0 + j * x_step]


@njit(cache=True, nogil=True, inline='always')
def _direct_src_row(x3, n, ih, xe, W, C, m, wide):
    """Input row (n, ih) of x3 (N, H, W*C) as the row-by-row direct kernels read it: as is,
    or in the scratch row xe, expanded by the channel multiplier m (wide) or channel-major
    (narrow, C > 1)."""
    if wide:
        if m == 1:
            return x3[n, ih]
        _expand_row(x3[n, ih], xe, W, C, m)
        return xe
    if C == 1:
        return x3[n, ih]
    _transpose_row(x3[n, ih], xe, W, C)
    return xe


@njit(cache=True, nogil=True, inline='always')
def _direct_fwd_rows(x, wt, b, y, geo, r0, r1):
    """Output rows r0..r1-1 (n*OH + oh) of y."""
    OH, OW, sw = geo.OH, geo.OW, geo.sw
    N, H, W, C = x.shape
    O = y.shape[3]
    x3, y3, m, wide, xe = _rows(x, y, geo)
    acc = np.empty(0 if wide else O * OW, x.dtype)
    for r in range(r0, r1):
        n = r // OH
        oh = r - n * OH
        yr = y3[n, oh]
        if wide:
            for ow in range(OW):
                for o in range(O):
                    yr[ow * O + o] = b[o] if b.shape[0] > 0 else 0
        else:
            for o in range(O):
                for ow in range(OW):
                    acc[o * OW + ow] = b[o] if b.shape[0] > 0 else 0
        for kh in range(geo.KH):
            ih = oh * geo.sh - geo.pt + kh * geo.dh
            if ih < 0 or ih >= H:
                continue
            src = _direct_src_row(x3, n, ih, xe, W, C, m, wide)
            for kw in range(geo.KW):
                off = kw * geo.dw - geo.pl                # iw = ow*sw + off
                lo, hi = _ow_range(off, sw, W, OW)
                wk = wt[kh, kw]
                if wide:
                    for ow in range(lo, hi):
                        _vmuladd(yr, ow * O, wk[0], src, (ow * sw + off) * O, wk, 0, O)
                    continue
                for o in range(O):
                    _scaled_add(acc, o * OW + lo, 1, wk[o], src, (o // m) * W + lo * sw + off,
                                sw, hi - lo)
        if not wide:
            for ow in range(OW):
                for o in range(O):
                    yr[ow * O + o] = acc[o * OW + ow]


@njit(cache=True, nogil=True, inline='always')
def _direct_bwd_weight_rows(x, gy, part, geo, r0, r1):
    """part (KH*KW, O) = the weight gradient (transposed) from output rows r0..r1-1. With few
    channels the sums run in lanes along the output columns, added up at the end. Summed in
    blocks of rows (about `_REDUCTION_BLOCK` products per sum, see config.py), each block's
    sums started from zero and then added into part."""
    OH, OW, KH, KW, sw = geo.OH, geo.OW, geo.KH, geo.KW, geo.sw
    N, H, W, C = x.shape
    O = gy.shape[3]
    x3, g3, m, wide, xe = _rows(x, gy, geo)
    gt = np.empty(0 if wide else O * OW, x.dtype)
    lanes = np.zeros(0 if wide else KH * KW * O * OW, x.dtype)
    block = np.zeros((KH * KW if wide else 0, O), x.dtype)
    # a row adds OW products to each of block's sums, one to each lane
    rows_per_block = max(1, _REDUCTION_BLOCK // OW) if wide else _REDUCTION_BLOCK
    part[:] = 0
    for b0 in range(r0, r1, rows_per_block):
        for r in range(b0, min(r1, b0 + rows_per_block)):
            n = r // OH
            oh = r - n * OH
            gr = g3[n, oh]
            if not wide:
                _transpose_row(gr, gt, OW, O)
            for kh in range(KH):
                ih = oh * geo.sh - geo.pt + kh * geo.dh
                if ih < 0 or ih >= H:
                    continue
                src = _direct_src_row(x3, n, ih, xe, W, C, m, wide)
                for kw in range(KW):
                    off = kw * geo.dw - geo.pl
                    lo, hi = _ow_range(off, sw, W, OW)
                    k = kh * KW + kw
                    if wide:
                        a = block[k]
                        for ow in range(lo, hi):
                            _vmuladd(a, 0, a[0], gr, ow * O, src, (ow * sw + off) * O, O)
                        continue
                    for o in range(O):
                        a = lanes[(k * O + o) * OW + lo:(k * O + o) * OW + hi]
                        gs = gt[o * OW + lo:o * OW + hi]
                        xc = src[(o // m) * W:(o // m + 1) * W]
                        if sw == 1:
                            xs = xc[lo + off:hi + off]
                            for j in range(hi - lo):
                                a[j] += gs[j] * xs[j]
                        else:
                            for j in range(hi - lo):
                                a[j] += gs[j] * xc[(lo + j) * sw + off]
        if wide:
            for k in range(KH * KW):
                for o in range(O):
                    part[k, o] += block[k, o]
                    block[k, o] = 0
            continue
        for k in range(KH * KW):
            for o in range(O):
                a = lanes[(k * O + o) * OW:(k * O + o + 1) * OW]
                s = a[0]
                a[0] = 0
                for ow in range(1, OW):
                    s += a[ow]
                    a[ow] = 0
                part[k, o] += s


@njit(cache=True, nogil=True, inline='always')
def _direct_bwd_data_rows(gy, wt, b, gx, geo, r0, r1):
    """Rows r0..r1-1 of gx (flat n*H + ih), gathered from the output pixels that read them:
    rows are independent, so tasks never collide."""
    OH, OW, sh, sw = geo.OH, geo.OW, geo.sh, geo.sw
    N, H, W, C = gx.shape
    O = gy.shape[3]
    gx3, g3, m, wide, acc = _rows(gx, gy, geo)     # acc: the gx row (expanded / transposed)
    gt = np.empty(0 if wide else O * OW, gy.dtype)
    for r in range(r0, r1):
        n = r // H
        ih = r - n * H
        acc[:] = 0
        for kh in range(geo.KH):
            t = ih + geo.pt - kh * geo.dh           # = oh * sh
            if t < 0 or t % sh != 0 or t // sh >= OH:
                continue
            gr = g3[n, t // sh]
            if not wide:
                _transpose_row(gr, gt, OW, O)
            for kw in range(geo.KW):
                wk = wt[kh, kw]
                off = kw * geo.dw - geo.pl          # iw = ow*sw + off
                lo, hi = _ow_range(off, sw, W, OW)
                if wide:
                    for ow in range(lo, hi):
                        _vmuladd(acc, (ow * sw + off) * O, wk[0], gr, ow * O, wk, 0, O)
                    continue
                for o in range(O):
                    _scaled_add(acc, (o // m) * W + lo * sw + off, sw, wk[o], gt, o * OW + lo, 1,
                                hi - lo)
        out = gx3[n, ih]
        for iw in range(W):
            for c in range(C):
                if wide:
                    s = acc[(iw * C + c) * m]
                    for j in range(1, m):
                        s += acc[(iw * C + c) * m + j]
                else:
                    s = acc[c * W + iw]
                out[iw * C + c] = s + (b[c] if b.shape[0] > 0 else 0)
