"""Pooling and padding CPU kernels on channels-last maps (N, H, W, C).

The windows come from runtime/windows.py as tables along each axis, clipped to the image:
padding never wins a max, and for the average it counts in the divisor only when
include_pad is set. The windowed, adaptive and global pools differ only in those tables
(a global pool has one window that covers the whole map; its argmax, h * W + w, is encoded
the same way), so four jitted functions serve all of them, forward and backward.

Each serial kernel works on a range of "jobs" (one output row of one image for
the forward passes); a parallel driver hands chunks of jobs to it, and small
problems call it directly.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..windows import POOL_INSTRUCTIONS, Axis, pad_axes, pool_kind_axes
from .elementwise import CHUNK, JIT, PARALLEL_MIN
from .table import kernel


# ---- the serial kernels. The windows come as tables along each axis (runtime/windows.py):
# window o of an axis reads positions first[o], first[o] + step, ... below end[o]; inv[o] is
# 1 / its divisor; input position i lies in windows lo[i] ... hi[i] - 1.

@njit(**JIT)
def _maxpool_fwd(x, y, am, hfirst, hend, hstep, wfirst, wend, wstep, j0, j1):
    """Jobs j = n * OH + oh. y = max over each window; am = h * W + w of the first maximum
    in row-major window order (a NaN wins, so NaNs propagate)."""
    _, H, W, C = x.shape
    OH, OW = y.shape[1], y.shape[2]
    for j in range(j0, j1):
        n = j // OH
        oh = j - n * OH
        for ow in range(OW):
            first = True
            for ih in range(hfirst[oh], hend[oh], hstep):
                for iw in range(wfirst[ow], wend[ow], wstep):
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
def _avgpool_fwd(x, y, hfirst, hend, hinv, wfirst, wend, winv, j0, j1):
    """Jobs j = n * OH + oh. y = window sum * the inverse divisors (hinv, winv: x's dtype)."""
    _, H, W, C = x.shape
    OH, OW = y.shape[1], y.shape[2]
    zero = x.dtype.type(0)
    if C >= SMALL_C:
        for j in range(j0, j1):
            n = j // OH
            oh = j - n * OH
            for ow in range(OW):
                inv = hinv[oh] * winv[ow]
                for c in range(C):
                    y[n, oh, ow, c] = zero
                for ih in range(hfirst[oh], hend[oh]):
                    for iw in range(wfirst[ow], wend[ow]):
                        for c in range(C):
                            y[n, oh, ow, c] += x[n, ih, iw, c]
                for c in range(C):
                    y[n, oh, ow, c] *= inv
        return
    # few channels: t = the window rows summed (one long loop per row), then each
    # output element m = ow * C + c adds the elements of t that src[:, m] names
    E, M = W * C, OW * C
    kw = 1
    for ow in range(OW):
        kw = max(kw, wend[ow] - wfirst[ow])
    t = np.zeros(E + 1, x.dtype)      # t[E] stays 0: where the shorter windows point
    src = np.empty((kw, M), np.int32)
    scale = np.empty(M, x.dtype)
    for ow in range(OW):
        for c in range(C):
            scale[ow * C + c] = winv[ow]
            for k in range(kw):
                iw = wfirst[ow] + k
                src[k, ow * C + c] = iw * C + c if iw < wend[ow] else E
    for j in range(j0, j1):
        n = j // OH
        oh = j - n * OH
        for e in range(E):
            t[e] = zero
        for ih in range(hfirst[oh], hend[oh]):
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
        h = hinv[oh]
        for m in range(M):
            yr[m] *= scale[m] * h


@njit(**JIT)
def _avgpool_bwd(gy, gx, hlo, hhi, hinv, wlo, whi, winv, j0, j1):
    """Jobs j = n * H + ih: each input pixel gathers gy / divisor from the windows
    that hold it (so every element of gx is written once, and rows run in parallel)."""
    _, H, W, C = gx.shape
    OH, OW = gy.shape[1], gy.shape[2]
    zero = gx.dtype.type(0)
    if C >= SMALL_C:
        for j in range(j0, j1):
            n = j // H
            ih = j - n * H
            for iw in range(W):
                for c in range(C):
                    gx[n, ih, iw, c] = zero
                for oh in range(hlo[ih], hhi[ih]):
                    for ow in range(wlo[iw], whi[iw]):
                        inv = hinv[oh] * winv[ow]
                        for c in range(C):
                            gx[n, ih, iw, c] += gy[n, oh, ow, c] * inv
        return
    # few channels: u = one gy row over its divisors; each element e = iw * C + c of a
    # gx row adds the elements of u that src[:, e] names (the windows that hold column iw)
    E, M = W * C, OW * C
    nk = 1
    for iw in range(W):
        nk = max(nk, whi[iw] - wlo[iw])
    u = np.zeros(M + 1, gx.dtype)     # u[M] stays 0: where missing windows point
    src = np.empty((nk, E), np.int32)
    scale = np.empty(M, gx.dtype)
    for ow in range(OW):
        for c in range(C):
            scale[ow * C + c] = winv[ow]
    for iw in range(W):
        for c in range(C):
            for k in range(nk):
                ow = wlo[iw] + k
                src[k, iw * C + c] = ow * C + c if ow < whi[iw] else M
    for j in range(j0, j1):
        n = j // H
        ih = j - n * H
        g = gx[n, ih].reshape(E)
        if hlo[ih] >= hhi[ih]:        # a row no window reaches (stride > kernel)
            for e in range(E):
                g[e] = zero
        for oh in range(hlo[ih], hhi[ih]):
            gr = gy[n, oh].reshape(M)
            h = hinv[oh]
            for m in range(M):
                u[m] = gr[m] * (scale[m] * h)
            for k in range(nk):
                sk = src[k]
                if oh == hlo[ih] and k == 0:
                    for e in range(E):
                        g[e] = u[sk[e]]
                else:
                    for e in range(E):
                        g[e] += u[sk[e]]


@njit(**JIT)
def _pad_fwd(x, y, hsource, wsource, value, j0, j1):
    """Jobs j = n * OH + oh: y[n, oh, ow] = x[n, hsource[oh], wsource[ow]], or value where
    either is -1."""
    C = x.shape[3]
    OH, OW = y.shape[1], y.shape[2]
    for j in range(j0, j1):
        n = j // OH
        oh = j - n * OH
        ih = hsource[oh]
        for ow in range(OW):
            iw = wsource[ow]
            if ih < 0 or iw < 0:
                for c in range(C):
                    y[n, oh, ow, c] = value
            else:
                for c in range(C):
                    y[n, oh, ow, c] = x[n, ih, iw, c]


@njit(**JIT)
def _pad_bwd(gy, gx, hreaders, hoffsets, wreaders, woffsets, j0, j1):
    """Jobs j = n * H + ih: gx[n, ih, iw] = the sum of gy over the padded elements that read
    it (rows hreaders[hoffsets[ih]:hoffsets[ih + 1]], columns likewise), in increasing order."""
    _, H, W, C = gx.shape
    zero = gx.dtype.type(0)
    for j in range(j0, j1):
        n = j // H
        ih = j - n * H
        for iw in range(W):
            for c in range(C):
                gx[n, ih, iw, c] = zero
            for a in range(hoffsets[ih], hoffsets[ih + 1]):
                oh = hreaders[a]
                for b in range(woffsets[iw], woffsets[iw + 1]):
                    ow = wreaders[b]
                    for c in range(C):
                        gx[n, ih, iw, c] += gy[n, oh, ow, c]


# ---- parallel drivers: chunks of `per` jobs each

@njit(parallel=True, **JIT)
def _maxpool_fwd_par(x, y, am, hfirst, hend, hstep, wfirst, wend, wstep, jobs, per):
    for t in prange((jobs + per - 1) // per):
        _maxpool_fwd(x, y, am, hfirst, hend, hstep, wfirst, wend, wstep, t * per,
                     min(t * per + per, jobs))


@njit(parallel=True, **JIT)
def _maxpool_bwd_par(gy, am, gx, jobs, per):
    for t in prange((jobs + per - 1) // per):
        _maxpool_bwd(gy, am, gx, t * per, min(t * per + per, jobs))


@njit(parallel=True, **JIT)
def _avgpool_fwd_par(x, y, hfirst, hend, hinv, wfirst, wend, winv, jobs, per):
    for t in prange((jobs + per - 1) // per):
        _avgpool_fwd(x, y, hfirst, hend, hinv, wfirst, wend, winv, t * per,
                     min(t * per + per, jobs))


@njit(parallel=True, **JIT)
def _avgpool_bwd_par(gy, gx, hlo, hhi, hinv, wlo, whi, winv, jobs, per):
    for t in prange((jobs + per - 1) // per):
        _avgpool_bwd(gy, gx, hlo, hhi, hinv, wlo, whi, winv, t * per, min(t * per + per, jobs))


@njit(parallel=True, **JIT)
def _pad_fwd_par(x, y, hsource, wsource, value, jobs, per):
    for t in prange((jobs + per - 1) // per):
        _pad_fwd(x, y, hsource, wsource, value, t * per, min(t * per + per, jobs))


@njit(parallel=True, **JIT)
def _pad_bwd_par(gy, gx, hreaders, hoffsets, wreaders, woffsets, jobs, per):
    for t in prange((jobs + per - 1) // per):
        _pad_bwd(gy, gx, hreaders, hoffsets, wreaders, woffsets, t * per, min(t * per + per, jobs))


def _split(jobs: int, work: int):
    """(parallel?, jobs per chunk) for `jobs` jobs touching `work` elements in all."""
    per = max(1, CHUNK * jobs // max(work, 1))
    return work >= PARALLEL_MIN and jobs > per, per


def _run(serial, parallel, jobs: int, work: int, *args) -> None:
    """serial(*args, 0, jobs), or parallel(*args, jobs, per) on a problem large enough."""
    par, per = _split(jobs, work)
    if par:
        parallel(*args, jobs, per)
    else:
        serial(*args, 0, jobs)


# ---- operands

def _check(name, *arrays):
    """One dtype, C-contiguous arrays."""
    for a in arrays:
        if a.dtype != arrays[0].dtype:
            raise ValueError(f"{name}: dtypes differ: {arrays[0].dtype} vs {a.dtype}")
        if not a.flags.c_contiguous:
            raise ValueError(f"CPU kernels need C-contiguous arrays, got strides {a.strides}")


def _argmax(name, am, y):
    if am.shape != y.shape or am.dtype != np.int32 or not am.flags.c_contiguous:
        raise ValueError(f"{name}: argmax {am.shape} {am.dtype} does not fit y {y.shape}")


# ---- shared launchers: x (N, H, W, C) and y (N, OH, OW, C), with the windows of each axis

def _maxpool(x, y, am, hw: Axis, ww: Axis):
    _run(_maxpool_fwd, _maxpool_fwd_par, y.shape[0] * y.shape[1], x.size, x, y, am,
         hw.first, hw.end, hw.step, ww.first, ww.end, ww.step)


def _maxpool_back(gy, am, gx):
    n, c = gx.shape[0], gx.shape[-1]
    gy3, am3, gx3 = gy.reshape(n, -1, c), am.reshape(n, -1, c), gx.reshape(n, -1, c)
    _run(_maxpool_bwd, _maxpool_bwd_par, n, gx.size + gy.size, gy3, am3, gx3)


def _avgpool(x, y, hw: Axis, ww: Axis):
    _run(_avgpool_fwd, _avgpool_fwd_par, y.shape[0] * y.shape[1], x.size, x, y,
         hw.first, hw.end, hw.inv.astype(x.dtype), ww.first, ww.end, ww.inv.astype(x.dtype))


def _avgpool_back(gy, gx, hw: Axis, ww: Axis):
    _run(_avgpool_bwd, _avgpool_bwd_par, gx.shape[0] * gx.shape[1], gx.size, gy, gx,
         hw.lo, hw.hi, hw.inv.astype(gx.dtype), ww.lo, ww.hi, ww.inv.astype(gx.dtype))


# ---- the kernels

def _as_map(y, x):
    """y (N, C) as the (N, 1, 1, C) map a global pool of x writes."""
    return y.reshape(x.shape[0], 1, 1, x.shape[3])


def _pool_instruction(name, is_max, backward, kind):
    """Registers pool instruction `name` (windows.POOL_INSTRUCTIONS, as cuda/pool.py): forward
    (x -> y, and a max pool's argmax) or backward (gy and a max pool's argmax -> gx), of a
    global pool (y (N, C), viewed as (N, 1, 1, C)), an adaptive pool or a pool with the window
    of its attributes; its operands checked, then the launcher of its kind."""
    def run(ins, outs, attrs, ctx):
        x, y = (outs[0], ins[0]) if backward else (ins[0], outs[0])
        _check(name, x, y)
        am = (ins[1] if backward else outs[1]) if is_max else None
        if is_max:
            _argmax(name, am, y)
        axes = pool_kind_axes(kind, name, attrs, x.shape, y.shape)
        as_map = (lambda a: _as_map(a, x)) if kind == "global" else (lambda a: a)
        if backward and is_max:
            _maxpool_back(y, am, x)
        elif backward:
            _avgpool_back(as_map(y), x, *axes)
        elif is_max:
            _maxpool(x, as_map(y), as_map(am), *axes)
        else:
            _avgpool(x, as_map(y), *axes)
    kernel(name)(run)


for _instruction in POOL_INSTRUCTIONS:
    _pool_instruction(*_instruction)


@kernel("pad2d")
def pad2d(ins, outs, attrs, ctx):
    x, y = ins[0], outs[0]
    _check("pad2d", x, y)
    hp, wp, _ = pad_axes("pad2d", attrs, x.shape, y.shape)
    value = x.dtype.type(attrs.get("value", 0.0))
    _run(_pad_fwd, _pad_fwd_par, y.shape[0] * y.shape[1], y.size, x, y, hp.source, wp.source, value)


@kernel("pad2d_bwd")
def pad2d_bwd(ins, outs, attrs, ctx):
    gy, gx = ins[0], outs[0]
    _check("pad2d_bwd", gx, gy)
    hp, wp, _ = pad_axes("pad2d_bwd", attrs, gx.shape, gy.shape)
    _run(_pad_bwd, _pad_bwd_par, gx.shape[0] * gx.shape[1], gy.size, gy, gx,
         hp.readers, hp.offsets, wp.readers, wp.offsets)
