"""CPU kernels for convolution and dense layers (see `runtime/isa.py` for the contract).

Layouts: feature maps NHWC, conv weights OHWI `(O, KH, KW, I/groups)`, dense weights `(U, F)`.
Every jitted function below is generic over the dtype (float32 for speed, float64 for gradient
checks) and takes the geometry as plain int64 arguments, so one compiled version per dtype
serves every layer.

Methods, picked by the Python wrappers from the shapes:

- one input channel per group (`I/groups == 1`: depthwise convs with any channel multiplier,
  and single-channel inputs such as LeNet's first layer): direct NHWC loops ("direct" below),
  with the output channels innermost; when the output row is short in channels and the stride
  is 1, the row is processed flattened as (width x channels) so the inner loop is a long,
  contiguous, vectorisable multiply-add.
- 1x1, stride 1, unpadded convs and dense layers: a plain GEMM over `(N*H*W, C)`, no im2col.
- everything else: NHWC im2col (columns in (kh, kw, c) order, matching OHWI weights) into a
  small per-tile buffer and one `np.dot` per tile, tiles of output rows spread over Numba's
  threads (`prange`). BLAS must be single-threaded meanwhile: the wrappers make sure of it.
  - backward data: `gy_tile @ W`, then col2im scatter-add, each thread owning whole images
    (no two threads ever write the same pixel);
  - backward weight: `gy_tile.T @ col` summed per thread into a private partial, the
    partials added at the end in a fixed order (deterministic for a given thread count).

No `fastmath`: results do not depend on reassociation; loops that must vectorise are written
as element-wise multiply-adds, never as scalar reductions.
"""

from __future__ import annotations

import contextlib
import os
import sys

import numba
import numpy as np
from numba import njit, prange

from . import kernel, single_threaded_blas


# ---------------------------------------------------------------- BLAS set-up
#
# Numba's np.dot calls SciPy's OpenBLAS. Two facts measured on the 2-core AMD EPYC (Zen 5)
# machines this project targets:
# - that OpenBLAS does not know Zen 5 and falls back to its Haswell (AVX2) kernels; its
#   SkylakeX (AVX-512) kernels run SGEMM about 2x faster there;
# - if a prange kernel ever calls np.dot while that OpenBLAS still has several threads, later
#   calls stall (multiples of the 4 ms scheduler tick) even after BLAS is limited to one
#   thread: the library must be loaded, and limited, before any parallel kernel runs.
# So SciPy's BLAS is loaded here, at import, from the main thread, with the AVX-512 kernels
# forced when the CPU has AVX-512 and OpenBLAS would not pick them itself (an explicit
# OPENBLAS_CORETYPE in the environment wins).

_AVX512_FLAGS = ("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl")


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _load_scipy_blas() -> None:
    if "scipy.linalg.cython_blas" in sys.modules or "OPENBLAS_CORETYPE" in os.environ:
        import scipy.linalg.cython_blas  # noqa: F401
        return
    force = all(f in _cpu_flags() for f in _AVX512_FLAGS)
    if force:
        # only where numpy's own OpenBLAS (already loaded) settled for an AVX2 kernel
        try:
            from threadpoolctl import threadpool_info
            archs = {i.get("architecture") for i in threadpool_info()
                     if i.get("internal_api") == "openblas"}
            force = bool(archs) and archs <= {"Haswell", "Zen"}
        except Exception:  # threadpoolctl missing or unreadable: leave OpenBLAS alone
            force = False
    if force:
        os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"
    try:
        import scipy.linalg.cython_blas  # noqa: F401
    finally:
        if force:
            del os.environ["OPENBLAS_CORETYPE"]


_load_scipy_blas()

_blas_controllers = None


def _blas_single_threaded() -> bool:
    global _blas_controllers
    if _blas_controllers is None:
        from threadpoolctl import ThreadpoolController
        _blas_controllers = ThreadpoolController().select(user_api="blas").lib_controllers
    return all(c.get_num_threads() == 1 for c in _blas_controllers)


def _blas_guard():
    """Single-threaded BLAS around a kernel that calls np.dot inside prange (nearly free when the
    executor already holds `single_threaded_blas()`)."""
    return contextlib.nullcontext() if _blas_single_threaded() else single_threaded_blas()


# ---------------------------------------------------------------- tuning constants

_TILE_BYTES = 256 * 1024        # im2col buffer per tile (per thread): well inside L2
_MIN_TILE_ROWS = 32             # GEMM tiles thinner than this lose too much to BLAS overheads
_TILES_PER_THREAD = 4           # enough tiles for load balance
_WGRAD_TILE_BYTES = 4 << 20     # backward-weight tiles are larger: each one costs an (O, K) add
_CHUNKS_PER_THREAD = 4          # work chunks per thread in the direct kernels


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _tile_rows(rows: int, k: int, itemsize: int, budget: int = _TILE_BYTES) -> int:
    """Rows per GEMM tile: the column buffer within `budget`, at least _MIN_TILE_ROWS rows,
    and enough tiles to keep every thread busy."""
    threads = numba.get_num_threads()
    t = max(_MIN_TILE_ROWS, budget // max(1, k * itemsize))
    t = min(t, max(_MIN_TILE_ROWS, _cdiv(rows, threads * _TILES_PER_THREAD)))
    return max(1, min(t, rows))


def _chunks(units: int) -> int:
    return max(1, min(units, numba.get_num_threads() * _CHUNKS_PER_THREAD))


# ---------------------------------------------------------------- im2col / col2im (serial helpers)

@njit(cache=True, nogil=True)
def _im2col_rows(x, col, r0, r1, geo, c0, Ig):
    """col[r - r0, (kh*KW + kw)*Ig + i] = x[n, oh*sh - pt + kh*dh, ow*sw - pl + kw*dw, c0 + i]
    for the flat output rows r = (n*OH + oh)*OW + ow in [r0, r1); zero outside the image."""
    OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, groups = geo
    H = x.shape[1]
    W = x.shape[2]
    C = x.shape[3]
    x3 = x.reshape(x.shape[0], H, W * C)
    run = KW * Ig
    contiguous = dw == 1 and Ig == C
    for r in range(r0, r1):
        n = r // (OH * OW)
        rem = r - n * (OH * OW)
        oh = rem // OW
        ow = rem - oh * OW
        crow = col[r - r0]
        iw0 = ow * sw - pl
        for kh in range(KH):
            ih = oh * sh - pt + kh * dh
            seg = crow[kh * run:(kh + 1) * run]
            if ih < 0 or ih >= H:
                seg[:] = 0
                continue
            xrow = x3[n, ih]
            if contiguous and iw0 >= 0 and iw0 + KW <= W:
                src = xrow[iw0 * C:iw0 * C + run]
                for j in range(run):
                    seg[j] = src[j]
                continue
            for kw in range(KW):
                iw = iw0 + kw * dw
                dst = seg[kw * Ig:(kw + 1) * Ig]
                if iw < 0 or iw >= W:
                    dst[:] = 0
                else:
                    src = xrow[iw * C + c0:iw * C + c0 + Ig]
                    for i in range(Ig):
                        dst[i] = src[i]


@njit(cache=True, nogil=True)
def _col2im_add_rows(dcol, gx, r0, r1, geo, c0, Ig):
    """The adjoint of _im2col_rows: gx[...] += dcol[r - r0, ...] (pixels outside are dropped)."""
    OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, groups = geo
    H = gx.shape[1]
    W = gx.shape[2]
    C = gx.shape[3]
    g3 = gx.reshape(gx.shape[0], H, W * C)
    run = KW * Ig
    for r in range(r0, r1):
        n = r // (OH * OW)
        rem = r - n * (OH * OW)
        oh = rem // OW
        ow = rem - oh * OW
        crow = dcol[r - r0]
        iw0 = ow * sw - pl
        for kh in range(KH):
            ih = oh * sh - pt + kh * dh
            if ih < 0 or ih >= H:
                continue
            seg = crow[kh * run:(kh + 1) * run]
            grow = g3[n, ih]
            for kw in range(KW):
                iw = iw0 + kw * dw
                if iw < 0 or iw >= W:
                    continue
                src = seg[kw * Ig:(kw + 1) * Ig]
                dst = grow[iw * C + c0:iw * C + c0 + Ig]
                for i in range(Ig):
                    dst[i] += src[i]


# ---------------------------------------------------------------- GEMM-based kernels
#
# Every parallel kernel is a thin prange loop over independent units (tiles, images, chunks)
# that calls a serial body: Numba's parallel passes then have nothing to analyse but the loop,
# which keeps cold compile times low. `geo` is the int64 tuple
# (OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, groups); `plain` marks a 1x1, stride-1, unpadded,
# ungrouped conv (or a dense layer), whose im2col is the input itself.

@njit(cache=True, nogil=True)
def _fwd_tile(x, w2, b, y2, r0, r1, geo, plain):
    OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, groups = geo
    N, H, W, C = x.shape
    O = y2.shape[1]
    Ig = C // groups
    Og = O // groups
    yt = y2[r0:r1]
    if plain:
        np.dot(x.reshape(N * H * W, C)[r0:r1], w2.T, yt)
    elif groups == 1:
        col = np.empty((r1 - r0, KH * KW * C), x.dtype)
        _im2col_rows(x, col, r0, r1, geo, 0, C)
        np.dot(col, w2.T, yt)
    else:
        col = np.empty((r1 - r0, KH * KW * Ig), x.dtype)
        tmp = np.empty((r1 - r0, Og), x.dtype)
        for g in range(groups):
            _im2col_rows(x, col, r0, r1, geo, g * Ig, Ig)
            np.dot(col, w2[g * Og:(g + 1) * Og].T, tmp)
            for r in range(r1 - r0):
                dst = yt[r, g * Og:(g + 1) * Og]
                src = tmp[r]
                for o in range(Og):
                    dst[o] = src[o]
    if b.shape[0] > 0:
        for r in range(r1 - r0):
            yr = yt[r]
            for o in range(O):
                yr[o] += b[o]


@njit(cache=True, parallel=True)
def _conv_fwd_gemm(x, w2, b, y2, geo, plain, tile):
    """y2 (N*OH*OW, O) = im2col(x) @ w2.T + b; w2 (O, KH*KW*Ig); b empty for no bias."""
    M = y2.shape[0]
    for t in prange((M + tile - 1) // tile):
        _fwd_tile(x, w2, b, y2, t * tile, min(M, (t + 1) * tile), geo, plain)


@njit(cache=True, nogil=True)
def _bwd_data_plain_tile(gy2, w2, b, gx2, r0, r1):
    gt = gx2[r0:r1]
    np.dot(gy2[r0:r1], w2, gt)
    if b.shape[0] > 0:
        for r in range(r1 - r0):
            gr = gt[r]
            for c in range(gt.shape[1]):
                gr[c] += b[c]


@njit(cache=True, nogil=True)
def _bwd_data_image(gy2, w2, b, gx, n, geo, tile):
    """Image n of gx: b (or 0), plus col2im of gy_tile @ w2 for its tiles of output rows."""
    OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, groups = geo
    N, H, W, C = gx.shape
    O = gy2.shape[1]
    Ig = C // groups
    Og = O // groups
    img = gx[n].reshape(H * W, C)
    for p in range(H * W):
        for c in range(C):
            img[p, c] = b[c] if b.shape[0] > 0 else 0
    per_image = OH * OW
    rows = min(tile, per_image)
    dcol = np.empty((rows, KH * KW * Ig), gx.dtype)
    gyt = np.empty((rows, Og), gx.dtype)
    for r0 in range(n * per_image, (n + 1) * per_image, tile):
        r1 = min((n + 1) * per_image, r0 + tile)
        d = dcol[:r1 - r0]
        if groups == 1:
            np.dot(gy2[r0:r1], w2, d)
            _col2im_add_rows(d, gx, r0, r1, geo, 0, C)
        else:
            gg = gyt[:r1 - r0]
            for g in range(groups):
                for r in range(r1 - r0):
                    src = gy2[r0 + r, g * Og:(g + 1) * Og]
                    dst = gg[r]
                    for o in range(Og):
                        dst[o] = src[o]
                np.dot(gg, w2[g * Og:(g + 1) * Og], d)
                _col2im_add_rows(d, gx, r0, r1, geo, g * Ig, Ig)


@njit(cache=True, parallel=True)
def _conv_bwd_data_gemm(gy2, w2, b, gx, geo, plain, tile):
    """gx = col2im(gy2 @ w2) (+ b on every pixel); gy2 (N*OH*OW, O), w2 (O, KH*KW*Ig).
    Plain convs: tiles of rows; others: one image per task, so scatters never collide."""
    N, H, W, C = gx.shape
    if plain:
        M = gy2.shape[0]
        gx2 = gx.reshape(N * H * W, C)
        for t in prange((M + tile - 1) // tile):
            _bwd_data_plain_tile(gy2, w2, b, gx2, t * tile, min(M, (t + 1) * tile))
    else:
        for n in prange(N):
            _bwd_data_image(gy2, w2, b, gx, n, geo, tile)


@njit(cache=True, nogil=True)
def _bwd_weight_chunk(x, gy2, acc, t0, t1, tile, geo, plain):
    """acc (O, K) = sum over tiles t0..t1-1 of gy_tile.T @ im2col(x)_tile (0 if no tile)."""
    OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, groups = geo
    N, H, W, C = x.shape
    M, O = gy2.shape
    K = acc.shape[1]
    Ig = C // groups
    Og = O // groups
    if t1 <= t0:
        acc[:] = 0
        return
    rows = min(tile, M)
    col = np.empty((rows, K), x.dtype)
    tmp = np.empty((O, K), x.dtype)
    gyt = np.empty((rows, Og), x.dtype)
    x2 = x.reshape(N * H * W, C)
    for t in range(t0, t1):
        r0 = t * tile
        r1 = min(M, r0 + tile)
        dst = acc if t == t0 else tmp    # the first tile writes acc, later ones are added
        if plain:
            np.dot(gy2[r0:r1].T, x2[r0:r1], dst)
        elif groups == 1:
            ct = col[:r1 - r0]
            _im2col_rows(x, ct, r0, r1, geo, 0, C)
            np.dot(gy2[r0:r1].T, ct, dst)
        else:
            ct = col[:r1 - r0]
            gg = gyt[:r1 - r0]
            for g in range(groups):
                _im2col_rows(x, ct, r0, r1, geo, g * Ig, Ig)
                for r in range(r1 - r0):
                    src = gy2[r0 + r, g * Og:(g + 1) * Og]
                    d = gg[r]
                    for o in range(Og):
                        d[o] = src[o]
                np.dot(gg.T, ct, dst[g * Og:(g + 1) * Og])
        if t != t0:
            for o in range(O):
                ar = acc[o]
                tr = tmp[o]
                for k in range(K):
                    ar[k] += tr[k]


@njit(cache=True, nogil=True)
def _sum_partials(partial, out, r):
    """out[r] = partial[0, r] + partial[1, r] + ... (in that order)"""
    dst = out[r]
    src = partial[0, r]
    for k in range(dst.shape[0]):
        dst[k] = src[k]
    for c in range(1, partial.shape[0]):
        src = partial[c, r]
        for k in range(dst.shape[0]):
            dst[k] += src[k]


@njit(cache=True, parallel=True)
def _conv_bwd_weight_gemm(x, gy2, gw2, geo, plain, tile, nchunks):
    """gw2 (O, KH*KW*Ig) = gy2.T @ im2col(x): one partial per chunk of tiles, then their sum."""
    M, O = gy2.shape
    ntiles = (M + tile - 1) // tile
    partial = np.empty((nchunks, O, gw2.shape[1]), gw2.dtype)
    for c in prange(nchunks):
        _bwd_weight_chunk(x, gy2, partial[c], c * ntiles // nchunks, (c + 1) * ntiles // nchunks,
                          tile, geo, plain)
    for o in prange(O):
        _sum_partials(partial, gw2, o)


# ---------------------------------------------------------------- direct kernels, one input
# channel per group (depthwise with multiplier m = O / C; C == 1 with any O)
#
# Output channel o reads input channel o // m. "Expanded" rows repeat each input channel m
# times so that expanded channel o lines up with output channel o; for m == 1 the input row
# itself is used. wt is the weight as (KH, KW, O). With `flat` (stride 1, few channels) a row
# is processed as one flat (ow, o) run against wrep, wt tiled over OW: (KH*KW, OW*O).

@njit(cache=True, nogil=True)
def _expand_row(src, dst, W, C, m):
    """dst[(iw*C + c)*m + j] = src[iw*C + c]"""
    for p in range(W * C):
        v = src[p]
        for j in range(m):
            dst[p * m + j] = v


@njit(cache=True, nogil=True)
def _ow_range(off, sw, W, OW):
    """The output columns ow with 0 <= ow*sw + off < W, as [lo, hi)."""
    lo = 0 if off >= 0 else (-off + sw - 1) // sw
    hi = min(OW, (W - 1 - off) // sw + 1) if W - 1 - off >= 0 else 0
    return lo, max(lo, hi)


@njit(cache=True, nogil=True)
def _direct_fwd_rows(x, wt, wrep, b, y, r0, r1, geo, flat):
    OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, groups = geo
    N, H, W, C = x.shape
    O = y.shape[3]
    m = O // C
    x3 = x.reshape(N, H, W * C)
    y3 = y.reshape(N, OH, OW * O)
    xe = np.empty(W * O, x.dtype)
    for r in range(r0, r1):
        n = r // OH
        oh = r - n * OH
        yr = y3[n, oh]
        for ow in range(OW):
            for o in range(O):
                yr[ow * O + o] = b[o] if b.shape[0] > 0 else 0
        for kh in range(KH):
            ih = oh * sh - pt + kh * dh
            if ih < 0 or ih >= H:
                continue
            if m == 1:
                src = x3[n, ih]
            else:
                _expand_row(x3[n, ih], xe, W, C, m)
                src = xe
            for kw in range(KW):
                off = kw * dw - pl                     # iw = ow*sw + off
                lo, hi = _ow_range(off, sw, W, OW)
                if flat:
                    cnt = (hi - lo) * O
                    ys = yr[lo * O:lo * O + cnt]
                    xs = src[(lo + off) * O:(lo + off) * O + cnt]
                    ws = wrep[kh * KW + kw, lo * O:lo * O + cnt]
                    for j in range(cnt):
                        ys[j] += xs[j] * ws[j]
                else:
                    wk = wt[kh, kw]
                    for ow in range(lo, hi):
                        iw = ow * sw + off
                        ys = yr[ow * O:(ow + 1) * O]
                        xs = src[iw * O:(iw + 1) * O]
                        for o in range(O):
                            ys[o] += xs[o] * wk[o]


@njit(cache=True, parallel=True)
def _direct_fwd(x, wt, wrep, b, y, geo, flat, nchunks):
    rows = y.shape[0] * y.shape[1]
    for c in prange(nchunks):
        _direct_fwd_rows(x, wt, wrep, b, y, c * rows // nchunks, (c + 1) * rows // nchunks,
                         geo, flat)


@njit(cache=True, nogil=True)
def _direct_bwd_weight_rows(x, gy, lanes, r0, r1, geo):
    """lanes (KH*KW, OW*O) = sum over output rows r0..r1-1 of gy * expanded x, element-wise
    (the sum over ow happens later): vectorisable multiply-adds, no scalar reduction."""
    OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, groups = geo
    N, H, W, C = x.shape
    O = gy.shape[3]
    m = O // C
    x3 = x.reshape(N, H, W * C)
    g3 = gy.reshape(N, OH, OW * O)
    lanes[:] = 0
    xe = np.empty(W * O, x.dtype)
    for r in range(r0, r1):
        n = r // OH
        oh = r - n * OH
        gr = g3[n, oh]
        for kh in range(KH):
            ih = oh * sh - pt + kh * dh
            if ih < 0 or ih >= H:
                continue
            if m == 1:
                src = x3[n, ih]
            else:
                _expand_row(x3[n, ih], xe, W, C, m)
                src = xe
            for kw in range(KW):
                off = kw * dw - pl
                lo, hi = _ow_range(off, sw, W, OW)
                a = lanes[kh * KW + kw]
                if sw == 1:
                    cnt = (hi - lo) * O
                    As = a[lo * O:lo * O + cnt]
                    gs = gr[lo * O:lo * O + cnt]
                    xs = src[(lo + off) * O:(lo + off) * O + cnt]
                    for j in range(cnt):
                        As[j] += gs[j] * xs[j]
                else:
                    for ow in range(lo, hi):
                        iw = ow * sw + off
                        As = a[ow * O:(ow + 1) * O]
                        gs = gr[ow * O:(ow + 1) * O]
                        xs = src[iw * O:(iw + 1) * O]
                        for o in range(O):
                            As[o] += gs[o] * xs[o]


@njit(cache=True, nogil=True)
def _sum_lanes(lanes, gwt2, k, OW):
    """gwt2[k, o] = sum over chunks c, then columns ow, of lanes[c, k, ow*O + o]"""
    O = gwt2.shape[1]
    out = gwt2[k]
    out[:] = 0
    for c in range(lanes.shape[0]):
        a = lanes[c, k]
        for ow in range(OW):
            seg = a[ow * O:(ow + 1) * O]
            for o in range(O):
                out[o] += seg[o]


@njit(cache=True, parallel=True)
def _direct_bwd_weight(x, gy, gwt2, geo, nchunks):
    """gwt2 (KH*KW, O): the weight gradient, transposed."""
    OH, OW, KH, KW = geo[0], geo[1], geo[2], geo[3]
    rows = gy.shape[0] * OH
    lanes = np.empty((nchunks, KH * KW, OW * gy.shape[3]), gy.dtype)
    for c in prange(nchunks):
        _direct_bwd_weight_rows(x, gy, lanes[c], c * rows // nchunks, (c + 1) * rows // nchunks,
                                geo)
    for k in prange(KH * KW):
        _sum_lanes(lanes, gwt2, k, OW)


@njit(cache=True, nogil=True)
def _direct_bwd_data_rows(gy, wt, b, gx, r0, r1, geo):
    """Rows r0..r1-1 of gx (flat n*H + ih), gathered from the output pixels that read them:
    rows are independent, so tasks never collide."""
    OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, groups = geo
    N, H, W, C = gx.shape
    O = gy.shape[3]
    m = O // C
    g3 = gy.reshape(N, OH, OW * O)
    gx3 = gx.reshape(N, H, W * C)
    acc = np.empty(W * O, gy.dtype)     # the row of gx, expanded to O channels
    for r in range(r0, r1):
        n = r // H
        ih = r - n * H
        acc[:] = 0
        for kh in range(KH):
            t = ih + pt - kh * dh           # = oh * sh
            if t < 0 or t % sh != 0 or t // sh >= OH:
                continue
            gr = g3[n, t // sh]
            for kw in range(KW):
                wk = wt[kh, kw]
                off = pl - kw * dw          # ow * sw = iw + off
                for iw in range(W):
                    u = iw + off
                    if u < 0 or u % sw != 0 or u // sw >= OW:
                        continue
                    ow = u // sw
                    As = acc[iw * O:(iw + 1) * O]
                    gs = gr[ow * O:(ow + 1) * O]
                    for o in range(O):
                        As[o] += gs[o] * wk[o]
        out = gx3[n, ih]
        for p in range(W * C):
            s = acc[p * m]
            for j in range(1, m):
                s += acc[p * m + j]
            if b.shape[0] > 0:
                s += b[p % C]
            out[p] = s


@njit(cache=True, parallel=True)
def _direct_bwd_data(gy, wt, b, gx, geo, nchunks):
    rows = gx.shape[0] * gx.shape[1]
    for c in prange(nchunks):
        _direct_bwd_data_rows(gy, wt, b, gx, c * rows // nchunks, (c + 1) * rows // nchunks, geo)


# ---------------------------------------------------------------- bias gradient

@njit(cache=True, nogil=True)
def _colsum_rows(g2, part, r0, r1):
    part[:] = 0
    for r in range(r0, r1):
        row = g2[r]
        for c in range(part.shape[0]):
            part[c] += row[c]


@njit(cache=True, parallel=True)
def _bias_grad(g2, gb, nchunks):
    """gb[c] = sum over rows of g2[:, c], in float64, per chunk then across chunks."""
    M, C = g2.shape
    part = np.empty((nchunks, C), np.float64)
    for ch in prange(nchunks):
        _colsum_rows(g2, part[ch], ch * M // nchunks, (ch + 1) * M // nchunks)
    for c in range(C):
        s = 0.0
        for ch in range(nchunks):
            s += part[ch, c]
        gb[c] = s


# ---------------------------------------------------------------- Python wrappers

def _geometry(attrs):
    sh, sw = (int(v) for v in attrs["stride"])
    pt, pb, pl, pr = (int(v) for v in attrs["pad"])
    dh, dw = (int(v) for v in attrs["dilation"])
    groups = int(attrs["groups"])
    if min(sh, sw, dh, dw, groups) < 1:
        raise ValueError(f"conv2d: stride {attrs['stride']}, dilation {attrs['dilation']} and "
                         f"groups {groups} must be positive")
    return sh, sw, pt, pb, pl, pr, dh, dw, groups


def _out_size(size, k, s, p0, p1, d):
    return (size + p0 + p1 - d * (k - 1) - 1) // s + 1


def _check(name, cond, msg):
    if not cond:
        raise ValueError(f"{name}: {msg}")


def _check_conv(name, x_shape, w_shape, y_shape, attrs):
    """Validate the shapes (x, w, y as in the forward conv) against the attributes."""
    sh, sw, pt, pb, pl, pr, dh, dw, groups = _geometry(attrs)
    _check(name, len(x_shape) == 4 and len(w_shape) == 4 and len(y_shape) == 4,
           f"expected 4-D NHWC maps and OHWI weights, got {x_shape}, {w_shape}, {y_shape}")
    N, H, W, C = x_shape
    O, KH, KW, Ig = w_shape
    _check(name, C % groups == 0 and O % groups == 0 and Ig * groups == C,
           f"input channels {C}, output channels {O}, weight {w_shape} and groups {groups} "
           "do not agree")
    OH = _out_size(H, KH, sh, pt, pb, dh)
    OW = _out_size(W, KW, sw, pl, pr, dw)
    _check(name, OH >= 1 and OW >= 1, f"empty output for input {x_shape}, weight {w_shape}")
    _check(name, tuple(y_shape) == (N, OH, OW, O),
           f"output {y_shape} != expected {(N, OH, OW, O)} for input {x_shape}, weight "
           f"{w_shape}, {attrs}")


def _carr(a):
    return np.ascontiguousarray(a)


def _bias_arr(b, n, dtype, name):
    if b is None:
        return np.zeros(0, dtype)
    b = _carr(b).astype(dtype, copy=False)
    _check(name, b.shape == (n,), f"bias of shape {b.shape}, expected ({n},)")
    return b


def _check_out(name, out, dtype):
    _check(name, out.flags.c_contiguous, "output buffer must be C-contiguous")
    _check(name, out.dtype == dtype, f"output dtype {out.dtype} != input dtype {dtype}")


def _direct(C, groups) -> bool:
    """One input channel per group (depthwise, or a single input channel): direct kernels."""
    return C == groups


def _flat_rows(O, sw) -> bool:
    """Direct kernels: process rows flattened over (ow, o) when channels alone are too few to
    fill the vector unit and the stride is 1."""
    return sw == 1 and O < 16


def _plan(attrs, x_shape, w_shape, y_shape):
    """The int64 geometry tuple the kernels take, and whether the conv is a plain GEMM."""
    sh, sw, pt, pb, pl, pr, dh, dw, groups = _geometry(attrs)
    N, H, W, C = x_shape
    O, KH, KW, Ig = w_shape
    _, OH, OW, _ = y_shape
    geo = (OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, groups)
    plain = (groups == 1 and KH == KW == 1 and sh == sw == 1 and pt == pl == 0
             and OH == H and OW == W)
    return geo, plain


def _wt(w):
    """(O, KH, KW, 1) -> (KH, KW, O), the direct kernels' weight layout."""
    O, KH, KW, _ = w.shape
    return _carr(w.reshape(O, KH, KW).transpose(1, 2, 0))


@kernel("conv2d")
def conv2d(ins, outs, attrs, ctx):
    x, w, b = ins
    (y,) = outs
    _check_conv("conv2d", x.shape, w.shape, y.shape, attrs)
    x = _carr(x)
    w = _carr(w).astype(x.dtype, copy=False)
    _check_out("conv2d", y, x.dtype)
    N, H, W, C = x.shape
    O, KH, KW, Ig = w.shape
    b = _bias_arr(b, O, x.dtype, "conv2d")
    geo, plain = _plan(attrs, x.shape, w.shape, y.shape)
    OH, OW, sw, groups = geo[0], geo[1], geo[5], geo[10]
    if _direct(C, groups):
        wt = _wt(w)
        flat = _flat_rows(O, sw)
        if flat:    # wt tiled over the output columns: (KH*KW, OW*O)
            wrep = _carr(np.broadcast_to(wt.reshape(KH * KW, 1, O), (KH * KW, OW, O))
                         ).reshape(KH * KW, OW * O)
        else:
            wrep = np.zeros((0, 0), x.dtype)
        _direct_fwd(x, wt, wrep, b, y, geo, flat, _chunks(N * OH))
        return
    K = KH * KW * Ig
    with _blas_guard():
        _conv_fwd_gemm(x, w.reshape(O, K), b, y.reshape(N * OH * OW, O), geo, plain,
                       _tile_rows(N * OH * OW, K, x.itemsize))


@kernel("conv2d_bwd_data")
def conv2d_bwd_data(ins, outs, attrs, ctx):
    gy, w, b = ins
    (gx,) = outs
    _check_conv("conv2d_bwd_data", gx.shape, w.shape, gy.shape, attrs)
    gy = _carr(gy)
    w = _carr(w).astype(gy.dtype, copy=False)
    _check_out("conv2d_bwd_data", gx, gy.dtype)
    N, H, W, C = gx.shape
    O, KH, KW, Ig = w.shape
    b = _bias_arr(b, C, gy.dtype, "conv2d_bwd_data")
    geo, plain = _plan(attrs, gx.shape, w.shape, gy.shape)
    OH, OW, groups = geo[0], geo[1], geo[10]
    if _direct(C, groups):
        _direct_bwd_data(gy, _wt(w), b, gx, geo, _chunks(N * H))
        return
    K = KH * KW * Ig
    with _blas_guard():
        _conv_bwd_data_gemm(gy.reshape(N * OH * OW, O), w.reshape(O, K), b, gx, geo, plain,
                            _tile_rows(N * OH * OW, K, gy.itemsize))


@kernel("conv2d_bwd_weight")
def conv2d_bwd_weight(ins, outs, attrs, ctx):
    x, gy = ins
    (gw,) = outs
    _check_conv("conv2d_bwd_weight", x.shape, gw.shape, gy.shape, attrs)
    x = _carr(x)
    gy = _carr(gy).astype(x.dtype, copy=False)
    _check_out("conv2d_bwd_weight", gw, x.dtype)
    N, H, W, C = x.shape
    O, KH, KW, Ig = gw.shape
    geo, plain = _plan(attrs, x.shape, gw.shape, gy.shape)
    OH, OW, groups = geo[0], geo[1], geo[10]
    if _direct(C, groups):
        gwt = np.empty((KH * KW, O), x.dtype)
        _direct_bwd_weight(x, gy, gwt, geo, _chunks(N * OH))
        gw.reshape(O, KH * KW)[...] = gwt.T
        return
    _gemm_bwd_weight(x, gy.reshape(N * OH * OW, O), gw.reshape(O, KH * KW * Ig), geo, plain)


def _gemm_bwd_weight(x, gy2, gw2, geo, plain):
    M, K = gy2.shape[0], gw2.shape[1]
    tile = _tile_rows(M, K, x.itemsize, _WGRAD_TILE_BYTES)
    nchunks = max(1, min(numba.get_num_threads(), _cdiv(M, tile)))
    with _blas_guard():
        _conv_bwd_weight_gemm(x, gy2, gw2, geo, plain, tile, nchunks)


@kernel("bias_grad")
def bias_grad(ins, outs, attrs, ctx):
    (gy,) = ins
    (gb,) = outs
    gy = _carr(gy)
    _check("bias_grad", gy.ndim >= 1 and gb.shape == gy.shape[-1:],
           f"gradient {gy.shape} and bias {gb.shape} do not agree")
    _check_out("bias_grad", gb, gy.dtype)
    C = gy.shape[-1]
    g2 = gy.reshape(-1, C)
    _bias_grad(g2, gb, _chunks(max(1, g2.shape[0] // 64)))


def _dense_shapes(name, x, w, y):
    _check(name, x.ndim == 2 and w.ndim == 2 and y.ndim == 2 and x.shape[1] == w.shape[1]
           and y.shape == (x.shape[0], w.shape[0]),
           f"x {x.shape}, w {w.shape} and y {y.shape} do not agree (y = x @ w.T)")


# a dense layer is a plain 1x1 conv over (N, 1, 1, F)
_DENSE_GEO = (1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1)   # OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, groups


@kernel("dense")
def dense(ins, outs, attrs, ctx):
    x, w, b = ins
    (y,) = outs
    _dense_shapes("dense", x, w, y)
    x = _carr(x)
    w = _carr(w).astype(x.dtype, copy=False)
    _check_out("dense", y, x.dtype)
    N, F = x.shape
    b = _bias_arr(b, w.shape[0], x.dtype, "dense")
    with _blas_guard():
        _conv_fwd_gemm(x.reshape(N, 1, 1, F), w, b, y, _DENSE_GEO, True,
                       _tile_rows(N, F, x.itemsize))


@kernel("dense_bwd_data")
def dense_bwd_data(ins, outs, attrs, ctx):
    gy, w = ins
    (gx,) = outs
    _dense_shapes("dense_bwd_data", gx, w, gy)
    gy = _carr(gy)
    w = _carr(w).astype(gy.dtype, copy=False)
    _check_out("dense_bwd_data", gx, gy.dtype)
    N, F = gx.shape
    with _blas_guard():
        _conv_bwd_data_gemm(gy, w, np.zeros(0, gy.dtype), gx.reshape(N, 1, 1, F), _DENSE_GEO,
                            True, _tile_rows(N, F, gy.itemsize))


@kernel("dense_bwd_weight")
def dense_bwd_weight(ins, outs, attrs, ctx):
    x, gy = ins
    (gw,) = outs
    _dense_shapes("dense_bwd_weight", x, gw, gy)
    x = _carr(x)
    gy = _carr(gy).astype(x.dtype, copy=False)
    _check_out("dense_bwd_weight", gw, x.dtype)
    N, F = x.shape
    _gemm_bwd_weight(x.reshape(N, 1, 1, F), gy, gw, _DENSE_GEO, True)

