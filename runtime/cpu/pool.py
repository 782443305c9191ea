"""Pooling CPU kernels on channels-last maps (N, H, W, C).

Windows start at (oh * sh - top, ow * sw - left) and are clipped to the image:
padding never wins a max, and for the average it counts in the divisor only when
include_pad is set. Global pooling is the windowed kernel with one window that
covers the whole map (its argmax, h * W + w, is encoded the same way), so four
jitted functions serve all eight kernels.

Each serial kernel works on a range of "jobs" (one output row of one image for
the forward passes); a parallel driver hands chunks of jobs to it, and small
problems call it directly.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..isa import pool_window, pooled_shape
from .elementwise import CHUNK, JIT, PARALLEL_MIN
from .table import kernel


# ---- the serial kernels

@njit(**JIT)
def _maxpool_fwd(x, y, am, kh, kw, sh, sw, pt, pl, j0, j1):
    """Jobs j = n * OH + oh. y = max over each clipped window; am = h * W + w of the
    first maximum in row-major window order (a NaN wins, so NaNs propagate)."""
    _, H, W, C = x.shape
    OH, OW = y.shape[1], y.shape[2]
    for j in range(j0, j1):
        n = j // OH
        oh = j - n * OH
        h0 = oh * sh - pt
        hlo, hhi = max(h0, 0), min(h0 + kh, H)
        for ow in range(OW):
            w0 = ow * sw - pl
            wlo, whi = max(w0, 0), min(w0 + kw, W)
            first = True
            for ih in range(hlo, hhi):
                for iw in range(wlo, whi):
                    pos = ih * W + iw
                    if first:
                        for c in range(C):
                            y[n, oh, ow, c] = x[n, ih, iw, c]
                            am[n, oh, ow, c] = pos
                        first = False
                    else:
                        for c in range(C):
                            v = x[n, ih, iw, c]
                            b = y[n, oh, ow, c]
                            take = v > b or (v != v and b == b)
                            y[n, oh, ow, c] = v if take else b
                            am[n, oh, ow, c] = pos if take else am[n, oh, ow, c]
            if first:  # a window entirely in the padding (the shape rules forbid it)
                for c in range(C):
                    y[n, oh, ow, c] = -np.inf
                    am[n, oh, ow, c] = -1


@njit(**JIT)
def _maxpool_bwd(gy, am, gx, j0, j1):
    """Jobs are images n. gy, am: (N, P, C) outputs; gx: (N, Q, C) with Q = H * W."""
    Q, C = gx.shape[1], gx.shape[2]
    P = gy.shape[1]
    zero = gx.dtype.type(0)
    for n in range(j0, j1):
        for q in range(Q):
            for c in range(C):
                gx[n, q, c] = zero
        for p in range(P):
            for c in range(C):
                a = am[n, p, c]
                if a >= 0 and a < Q:   # -1: a window with no pixel
                    gx[n, a, c] += gy[n, p, c]


# Fewer channels than this make the per-pixel channel loops too short to vectorise
# (LeNet's 6): the average pools then work on whole rows of W * C elements, with
# index tables that say where each element of a row comes from.
SMALL_C = 12


@njit(**JIT)
def _inv_counts(size, k, s, p, out, include_pad):
    """1 / (number of positions counted) for each of the `out` windows along one axis."""
    r = np.empty(out)
    for o in range(out):
        a = o * s - p
        count = k if include_pad else min(a + k, size) - max(a, 0)
        r[o] = 1.0 / count if count > 0 else 0.0
    return r


@njit(**JIT)
def _holders(size, k, s, p, out):
    """lo[i], hi[i]: the first and last window along one axis that holds position i
    (window o covers o * s - p ... o * s - p + k - 1)."""
    lo = np.empty(size, np.int64)
    hi = np.empty(size, np.int64)
    for i in range(size):
        lo[i] = max(0, -((k - 1 - i - p) // s))
        hi[i] = min(out - 1, (i + p) // s)
    return lo, hi


@njit(**JIT)
def _avgpool_fwd(x, y, kh, kw, sh, sw, pt, pl, include_pad, j0, j1):
    """Jobs j = n * OH + oh. y = window sum / (kh * kw if include_pad else the number of
    window pixels inside the image)."""
    _, H, W, C = x.shape
    OH, OW = y.shape[1], y.shape[2]
    zero = x.dtype.type(0)
    hinvs = _inv_counts(H, kh, sh, pt, OH, include_pad).astype(x.dtype)
    winvs = _inv_counts(W, kw, sw, pl, OW, include_pad).astype(x.dtype)
    if C >= SMALL_C:
        for j in range(j0, j1):
            n = j // OH
            oh = j - n * OH
            h0 = oh * sh - pt
            hlo, hhi = max(h0, 0), min(h0 + kh, H)
            for ow in range(OW):
                w0 = ow * sw - pl
                wlo, whi = max(w0, 0), min(w0 + kw, W)
                inv = hinvs[oh] * winvs[ow]
                for c in range(C):
                    y[n, oh, ow, c] = zero
                for ih in range(hlo, hhi):
                    for iw in range(wlo, whi):
                        for c in range(C):
                            y[n, oh, ow, c] += x[n, ih, iw, c]
                for c in range(C):
                    y[n, oh, ow, c] *= inv
        return
    # few channels: t = the window rows summed (one long loop per row), then each
    # output element m = ow * C + c adds the kw elements of t that src[:, m] names
    E, M = W * C, OW * C
    t = np.zeros(E + 1, x.dtype)      # t[E] stays 0: where clipped columns point
    src = np.empty((kw, M), np.int32)
    scale = np.empty(M, x.dtype)
    for ow in range(OW):
        for c in range(C):
            scale[ow * C + c] = winvs[ow]
            for k in range(kw):
                iw = ow * sw - pl + k
                src[k, ow * C + c] = iw * C + c if 0 <= iw < W else E
    for j in range(j0, j1):
        n = j // OH
        oh = j - n * OH
        h0 = oh * sh - pt
        for e in range(E):
            t[e] = zero
        for ih in range(max(h0, 0), min(h0 + kh, H)):
            xr = x[n, ih].reshape(E)
            for e in range(E):
                t[e] += xr[e]
        yr = y[n, oh].reshape(M)
        s0 = src[0]
        for m in range(M):
            yr[m] = t[s0[m]]
        for k in range(1, kw):
            sk = src[k]
            for m in range(M):
                yr[m] += t[sk[m]]
        hinv = hinvs[oh]
        for m in range(M):
            yr[m] *= scale[m] * hinv


@njit(**JIT)
def _avgpool_bwd(gy, gx, kh, kw, sh, sw, pt, pl, include_pad, j0, j1):
    """Jobs j = n * H + ih: each input pixel gathers gy / divisor from the windows
    that hold it (so every element of gx is written once, and rows run in parallel)."""
    _, H, W, C = gx.shape
    OH, OW = gy.shape[1], gy.shape[2]
    zero = gx.dtype.type(0)
    hinvs = _inv_counts(H, kh, sh, pt, OH, include_pad).astype(gx.dtype)
    winvs = _inv_counts(W, kw, sw, pl, OW, include_pad).astype(gx.dtype)
    owlo, owhi = _holders(W, kw, sw, pl, OW)
    if C >= SMALL_C:
        for j in range(j0, j1):
            n = j // H
            ih = j - n * H
            oh_lo = max(0, -((kh - 1 - ih - pt) // sh))
            oh_hi = min(OH - 1, (ih + pt) // sh)
            for iw in range(W):
                for c in range(C):
                    gx[n, ih, iw, c] = zero
                for oh in range(oh_lo, oh_hi + 1):
                    for ow in range(owlo[iw], owhi[iw] + 1):
                        inv = hinvs[oh] * winvs[ow]
                        for c in range(C):
                            gx[n, ih, iw, c] += gy[n, oh, ow, c] * inv
        return
    # few channels: u = one gy row over its divisors; each element e = iw * C + c of a
    # gx row adds the elements of u that src[:, e] names (at most ceil(kw / sw) windows)
    E, M = W * C, OW * C
    nk = (kw + sw - 1) // sw
    u = np.zeros(M + 1, gx.dtype)     # u[M] stays 0: where missing windows point
    src = np.empty((nk, E), np.int32)
    scale = np.empty(M, gx.dtype)
    for ow in range(OW):
        for c in range(C):
            scale[ow * C + c] = winvs[ow]
    for iw in range(W):
        for c in range(C):
            for k in range(nk):
                ow = owlo[iw] + k
                src[k, iw * C + c] = ow * C + c if ow <= owhi[iw] else M
    for j in range(j0, j1):
        n = j // H
        ih = j - n * H
        oh_lo = max(0, -((kh - 1 - ih - pt) // sh))
        oh_hi = min(OH - 1, (ih + pt) // sh)
        g = gx[n, ih].reshape(E)
        if oh_lo > oh_hi:             # a row no window reaches (stride > kernel)
            for e in range(E):
                g[e] = zero
        for oh in range(oh_lo, oh_hi + 1):
            gr = gy[n, oh].reshape(M)
            hinv = hinvs[oh]
            for m in range(M):
                u[m] = gr[m] * (scale[m] * hinv)
            for k in range(nk):
                sk = src[k]
                if oh == oh_lo and k == 0:
                    for e in range(E):
                        g[e] = u[sk[e]]
                else:
                    for e in range(E):
                        g[e] += u[sk[e]]


# ---- parallel drivers: chunks of `per` jobs each

@njit(parallel=True, **JIT)
def _maxpool_fwd_par(x, y, am, kh, kw, sh, sw, pt, pl, jobs, per):
    for t in prange((jobs + per - 1) // per):
        _maxpool_fwd(x, y, am, kh, kw, sh, sw, pt, pl, t * per, min(t * per + per, jobs))


@njit(parallel=True, **JIT)
def _maxpool_bwd_par(gy, am, gx, jobs, per):
    for t in prange((jobs + per - 1) // per):
        _maxpool_bwd(gy, am, gx, t * per, min(t * per + per, jobs))


@njit(parallel=True, **JIT)
def _avgpool_fwd_par(x, y, kh, kw, sh, sw, pt, pl, include_pad, jobs, per):
    for t in prange((jobs + per - 1) // per):
        _avgpool_fwd(x, y, kh, kw, sh, sw, pt, pl, include_pad, t * per, min(t * per + per, jobs))


@njit(parallel=True, **JIT)
def _avgpool_bwd_par(gy, gx, kh, kw, sh, sw, pt, pl, include_pad, jobs, per):
    for t in prange((jobs + per - 1) // per):
        _avgpool_bwd(gy, gx, kh, kw, sh, sw, pt, pl, include_pad, t * per, min(t * per + per, jobs))


def _split(jobs: int, work: int):
    """(parallel?, jobs per chunk) for `jobs` jobs touching `work` elements in all."""
    per = max(1, CHUNK * jobs // max(work, 1))
    return work >= PARALLEL_MIN and jobs > per, per


# ---- attributes and shapes

def _check(name, x, y, win):
    """x (N, H, W, C) -> y (N, OH, OW, C) must agree with the window."""
    pooled_shape(name, x.shape, y.shape, win)
    if x.dtype != y.dtype:
        raise ValueError(f"{name}: dtypes differ: {x.dtype} vs {y.dtype}")


def _contig(*arrays):
    for a in arrays:
        if not a.flags.c_contiguous:
            raise ValueError(f"CPU kernels need C-contiguous arrays, got strides {a.strides}")


# ---- shared launchers

def _maxpool(x, y, am, kh, kw, sh, sw, pt, pl):
    _contig(x, y, am)
    if am.dtype != np.int32:
        raise ValueError(f"maxpool argmax must be int32, got {am.dtype}")
    jobs = y.shape[0] * y.shape[1]
    par, per = _split(jobs, x.size)
    if par:
        _maxpool_fwd_par(x, y, am, kh, kw, sh, sw, pt, pl, jobs, per)
    else:
        _maxpool_fwd(x, y, am, kh, kw, sh, sw, pt, pl, 0, jobs)


def _maxpool_back(gy, am, gx):
    _contig(gy, am, gx)
    n, c = gx.shape[0], gx.shape[-1]
    gy3, am3, gx3 = gy.reshape(n, -1, c), am.reshape(n, -1, c), gx.reshape(n, -1, c)
    par, per = _split(n, gx.size + gy.size)
    if par:
        _maxpool_bwd_par(gy3, am3, gx3, n, per)
    else:
        _maxpool_bwd(gy3, am3, gx3, 0, n)


def _avgpool(x, y, kh, kw, sh, sw, pt, pl, include_pad):
    _contig(x, y)
    jobs = y.shape[0] * y.shape[1]
    par, per = _split(jobs, x.size)
    if par:
        _avgpool_fwd_par(x, y, kh, kw, sh, sw, pt, pl, include_pad, jobs, per)
    else:
        _avgpool_fwd(x, y, kh, kw, sh, sw, pt, pl, include_pad, 0, jobs)


def _avgpool_back(gy, gx, kh, kw, sh, sw, pt, pl, include_pad):
    _contig(gy, gx)
    jobs = gx.shape[0] * gx.shape[1]
    par, per = _split(jobs, gx.size)
    if par:
        _avgpool_bwd_par(gy, gx, kh, kw, sh, sw, pt, pl, include_pad, jobs, per)
    else:
        _avgpool_bwd(gy, gx, kh, kw, sh, sw, pt, pl, include_pad, 0, jobs)


# ---- the kernels

@kernel("maxpool2d")
def maxpool2d(ins, outs, attrs, ctx):
    x, (y, am) = ins[0], outs
    win = pool_window(attrs)
    _check("maxpool2d", x, y, win)
    kh, kw, sh, sw, pt, _, pl, _ = win
    _maxpool(x, y, am, kh, kw, sh, sw, pt, pl)


@kernel("maxpool2d_bwd")
def maxpool2d_bwd(ins, outs, attrs, ctx):
    gy, am = ins
    gx = outs[0]
    _check("maxpool2d_bwd", gx, gy, pool_window(attrs))
    if am.shape != gy.shape:
        raise ValueError(f"maxpool2d_bwd: argmax {am.shape} vs gy {gy.shape}")
    _maxpool_back(gy, am, gx)


@kernel("avgpool2d")
def avgpool2d(ins, outs, attrs, ctx):
    x, y = ins[0], outs[0]
    win = pool_window(attrs)
    _check("avgpool2d", x, y, win)
    kh, kw, sh, sw, pt, _, pl, _ = win
    _avgpool(x, y, kh, kw, sh, sw, pt, pl, bool(attrs.get("include_pad", False)))


@kernel("avgpool2d_bwd")
def avgpool2d_bwd(ins, outs, attrs, ctx):
    gy, gx = ins[0], outs[0]
    win = pool_window(attrs)
    _check("avgpool2d_bwd", gx, gy, win)
    kh, kw, sh, sw, pt, _, pl, _ = win
    _avgpool_back(gy, gx, kh, kw, sh, sw, pt, pl, bool(attrs.get("include_pad", False)))


def _global_check(name, x, y):
    n, _, _, c = x.shape
    if y.shape != (n, c):
        raise ValueError(f"{name}: {x.shape} pools globally to {(n, c)}, not {y.shape}")
    if x.dtype != y.dtype:
        raise ValueError(f"{name}: dtypes differ: {x.dtype} vs {y.dtype}")


@kernel("global_avgpool")
def global_avgpool(ins, outs, attrs, ctx):
    x, y = ins[0], outs[0]
    _global_check("global_avgpool", x, y)
    n, h, w, c = x.shape
    _avgpool(x, y.reshape(n, 1, 1, c), h, w, 1, 1, 0, 0, False)


@kernel("global_avgpool_bwd")
def global_avgpool_bwd(ins, outs, attrs, ctx):
    gy, gx = ins[0], outs[0]
    _global_check("global_avgpool_bwd", gx, gy)
    n, h, w, c = gx.shape
    _avgpool_back(gy.reshape(n, 1, 1, c), gx, h, w, 1, 1, 0, 0, False)


@kernel("global_maxpool")
def global_maxpool(ins, outs, attrs, ctx):
    x, (y, am) = ins[0], outs
    _global_check("global_maxpool", x, y)
    if am.shape != y.shape:
        raise ValueError(f"global_maxpool: argmax {am.shape} vs y {y.shape}")
    n, h, w, c = x.shape
    _maxpool(x, y.reshape(n, 1, 1, c), am.reshape(n, 1, 1, c), h, w, 1, 1, 0, 0)


@kernel("global_maxpool_bwd")
def global_maxpool_bwd(ins, outs, attrs, ctx):
    gy, am = ins
    gx = outs[0]
    _global_check("global_maxpool_bwd", gx, gy)
    if am.shape != gy.shape:
        raise ValueError(f"global_maxpool_bwd: argmax {am.shape} vs gy {gy.shape}")
    _maxpool_back(gy, am, gx)
