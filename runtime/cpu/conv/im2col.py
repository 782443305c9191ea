"""im2col + GEMM: the method of every conv the others do not take (groups > 1 with several input
channels per group, or groups == 1 with wide kernel rows, KW*C >= `_IMPLICIT_MAX_RUN`), of
1x1 convs and of dense layers (a dense layer is a plain 1x1 conv over (N, 1, 1, F)).

NHWC im2col, its columns in (kh, kw, c) order to match OHWI weights. The serial task bodies
here run as tasks of tasks.py; dispatch.py picks among them:

- forward: tasks over tiles of output rows (and parts of the output channels when there are
  few tiles, sharing one im2col of every row built first), im2col tile then `col @ W.T` (W.T
  packed per call, `_pack_block`); with M <= O (ResNet's last stages) `y.T = W @ col.T`
  instead, which needs no packing (`_colt_rows`, `_fwd_t_gemm`, `_fwd_t_out`). 1x1 stride-1
  unpadded convs ("plain") and dense layers read their input as the im2col;
- backward data, scatter (strided, or few input channels as LeNet's c3): `gy @ W` then col2im,
  each task owning whole images (`_bwd_data_images`), or with M <= O all of `gy @ W` first in
  column panels (`_bwd_data_panel`, `_col2im_images`). W's rows are zero-padded to whole
  micro-tiles (every tile of `gy @ W` stored straight, none through `_gemm`'s edge path), and
  col2im adds a kernel row's taps that fall inside the image as one contiguous vector run
  (dw == 1) (LeNet c3 ~1.7 -> ~0.7 ms). The gathered stride-1 backward data is the forward
  path itself, on gy with the flipped kernel;
- backward weight: `gy.T @ col` into one partial per thread, added in a fixed order
  (`_bwd_weight_chunk`); with few rows against the weight, im2col of every row once, then
  one task per column panel reducing over all rows, no partials (`_bwd_weight_panel`).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .buffers import _abuf
from .config import _NV, _PACK_BLOCK, _VBYTES
from .geometry import _group_dims
from .microkernel import _gemm
from .vectors import _vaxpy


@njit(cache=True, nogil=True, inline='always')
def _column_panel(a, lda, ldk, b, c, k, t):
    """Column panel t (one micro-tile wide) of c (m, n) = A @ B, reduced over all k: A (m, k)
    read from a at [i*lda + q*ldk] (a itself or its transpose), B (k, n) the rows of b."""
    m, n = c.shape
    nr = _NV * _VBYTES // c.itemsize
    j0 = t * nr
    _gemm(a.reshape(-1), 0, lda, ldk, m, b.reshape(-1), j0, n, min(nr, n - j0), c.reshape(-1), j0,
          n, k, 0)


# ---------------------------------------------------------------- im2col / col2im

@njit(cache=True, nogil=True, inline='always')
def _pixel(r, OH, OW):
    """(n, oh, ow) of output row r = (n*OH + oh)*OW + ow."""
    n = r // (OH * OW)
    oh = (r - n * OH * OW) // OW
    return n, oh, r - (n * OH + oh) * OW


@njit(cache=True, nogil=True, inline='always')
def _next_pixel(n, oh, ow, OH, OW):
    """The output pixel after (n, oh, ow), stepped without divisions."""
    ow += 1
    if ow == OW:
        ow = 0
        oh += 1
        if oh == OH:
            oh = 0
            n += 1
    return n, oh, ow


@njit(cache=True, nogil=True)
def _im2col(x, col, r0, r1, geo, c0, Ig):
    """col[(r - r0)*K + (kh*KW + kw)*Ig + i] = x[n, oh*sh - pt + kh*dh, ow*sw - pl + kw*dw, c0 + i]
    for r in [r0, r1), zero outside the image; K = KH*KW*Ig."""
    KH, KW = geo.KH, geo.KW
    N, H, W, C = x.shape
    x3 = x.reshape(N, H, W * C)
    run = KW * Ig
    K = KH * run
    contiguous = geo.dw == 1 and Ig == C
    n, oh, ow = _pixel(r0, geo.OH, geo.OW)
    for r in range(r0, r1):
        crow = col[(r - r0) * K:(r - r0 + 1) * K]
        iw0 = ow * geo.sw - geo.pl
        for kh in range(KH):
            ih = oh * geo.sh - geo.pt + kh * geo.dh
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
                iw = iw0 + kw * geo.dw
                dst = seg[kw * Ig:(kw + 1) * Ig]
                if iw < 0 or iw >= W:
                    dst[:] = 0
                else:
                    src = xrow[iw * C + c0:iw * C + c0 + Ig]
                    for i in range(Ig):
                        dst[i] = src[i]
        n, oh, ow = _next_pixel(n, oh, ow, geo.OH, geo.OW)


@njit(cache=True, nogil=True)
def _col2im_add(dcol, gx, r0, r1, geo, c0, Ig, ldk):
    """The adjoint of _im2col: gx[...] += dcol[...] (pixels outside the image are dropped);
    dcol's rows are ldk >= K elements apart."""
    KH, KW = geo.KH, geo.KW
    N, H, W, C = gx.shape
    g3 = gx.reshape(N, H, W * C)
    run = KW * Ig
    contiguous = geo.dw == 1 and Ig == C
    gf = gx.reshape(-1)
    one = np.ones(1, gx.dtype)[0]
    n, oh, ow = _pixel(r0, geo.OH, geo.OW)
    for r in range(r0, r1):
        iw0 = ow * geo.sw - geo.pl
        for kh in range(KH):
            ih = oh * geo.sh - geo.pt + kh * geo.dh
            if ih < 0 or ih >= H:
                continue
            taps = (r - r0) * ldk + kh * run        # the kernel row's taps in dcol
            if contiguous and iw0 >= 0 and iw0 + KW <= W:
                # they are one contiguous run of gx: one vector loop (an FMA by 1 is the
                # exact sum, rounded once, as the scalar add)
                _vaxpy(gf, ((n * H + ih) * W + iw0) * C, one, dcol, taps, dcol, 0, run)
                continue
            seg = dcol[taps:taps + run]
            grow = g3[n, ih]
            for kw in range(KW):
                iw = iw0 + kw * geo.dw
                if iw < 0 or iw >= W:
                    continue
                src = seg[kw * Ig:(kw + 1) * Ig]
                dst = grow[iw * C + c0:iw * C + c0 + Ig]
                for i in range(Ig):
                    dst[i] += src[i]
        n, oh, ow = _next_pixel(n, oh, ow, geo.OH, geo.OW)


# ---------------------------------------------------------------- forward

@njit(cache=True, nogil=True, inline='always')
def _pack_block(w3, wt, t):
    """Block t (_PACK_BLOCK square) of wt[g, k, o] = w3[g, o, k]: W.T, the forward GEMM's
    right operand."""
    G, Og, K = w3.shape
    nk = (K + _PACK_BLOCK - 1) // _PACK_BLOCK
    no = (Og + _PACK_BLOCK - 1) // _PACK_BLOCK
    g = t // (nk * no)
    rem = t - g * nk * no
    k0 = (rem // no) * _PACK_BLOCK
    o0 = (rem - (rem // no) * no) * _PACK_BLOCK
    for k in range(k0, min(K, k0 + _PACK_BLOCK)):
        dst = wt[g, k]
        for o in range(o0, min(Og, o0 + _PACK_BLOCK)):
            dst[o] = w3[g, o, k]


@njit(cache=True, nogil=True, inline='always')
def _im2col_tile(x, col, t, tile, geo):
    """Rows [t*tile, (t+1)*tile) of the full im2col(x) in col (groups == 1)."""
    M = x.shape[0] * geo.OH * geo.OW
    K = geo.KH * geo.KW * x.shape[3]
    r0 = t * tile
    r1 = min(M, r0 + tile)
    _im2col(x, col[r0 * K:r1 * K], r0, r1, geo, 0, x.shape[3])


@njit(cache=True, nogil=True, inline='always')
def _fwd_task(x, wt, b, y2, geo, plain, r0, r1, part, nparts, col):
    """Rows r0..r1-1 of y2 (= im2col(x) @ wt + b); the output columns are split into `nparts`
    (groups == 1) and this task does `part` of them. A non-empty `col` holds im2col(x) of every
    row already."""
    C = x.shape[3]
    O = y2.shape[1]
    Ig, Og, K = _group_dims(geo, C, O)
    groups = geo.groups
    T = r1 - r0
    nr = _NV * _VBYTES // y2.itemsize
    yf = y2.reshape(-1)
    wf = wt.reshape(-1)
    ldw = wt.shape[2]                   # >= Og: rows may be padded (see _good_ld)
    acc = 1 if b.shape[0] > 0 else 0
    if groups == 1:
        panels = (O + nr - 1) // nr
        j0 = min(O, part * panels // nparts * nr)
        j1 = min(O, (part + 1) * panels // nparts * nr)
    else:
        j0 = 0
        j1 = O
    if j1 <= j0:
        return
    if acc:
        for r in range(r0, r1):
            for j in range(j0, j1):
                y2[r, j] = b[j]
    if plain:
        _gemm(x.reshape(-1), r0 * C, C, 1, T, wf, j0, ldw, j1 - j0, yf, r0 * O + j0, O, K, acc)
    elif col.shape[0] > 0:
        _gemm(col, r0 * K, K, 1, T, wf, j0, ldw, j1 - j0, yf, r0 * O + j0, O, K, acc)
    else:
        own = np.empty(T * K, x.dtype)
        for g in range(groups):
            _im2col(x, own, r0, r1, geo, g * Ig, Ig)
            _gemm(own, 0, K, 1, T, wf, g * K * ldw + j0, ldw, j1 - j0 if groups == 1 else Og,
                  yf, r0 * O + g * Og + j0, O, K, acc)


@njit(cache=True, nogil=True, inline='always')
def _colt_rows(x, colt, r0, r1, geo):
    """colt[k*M + r] = im2col(x)[r, k] for rows r0..r1-1 (rows of M = colt.size // K, at
    least the number of output pixels)."""
    C = x.shape[3]
    K = geo.KH * geo.KW * C
    M = colt.shape[0] // K
    tmp = np.empty((r1 - r0) * K, x.dtype)
    _im2col(x, tmp, r0, r1, geo, 0, C)
    for k in range(K):
        dst = colt[k * M + r0:k * M + r1]
        for r in range(r1 - r0):
            dst[r] = tmp[r * K + k]


@njit(cache=True, nogil=True, inline='always')
def _fwd_t_gemm(w, colt, yt, t, ob):
    """Output channels [t*ob, (t+1)*ob) of yt (O, M) = W @ colt, W = w[0] (O, K), colt rows
    of length colt.size // K >= M."""
    O, K = w.shape[1], w.shape[2]
    M = yt.shape[1]
    ldc = colt.shape[0] // K
    o0 = t * ob
    _gemm(w.reshape(-1), o0 * K, K, 1, min(ob, O - o0), colt, 0, ldc, M, yt.reshape(-1),
          o0 * M, M, K, 0)


@njit(cache=True, nogil=True, inline='always')
def _fwd_t_out(yt, y2, b, t, tile):
    """Rows [t*tile, (t+1)*tile) of y2 = yt.T + b."""
    M, O = y2.shape
    for r in range(t * tile, min(M, (t + 1) * tile)):
        for o in range(O):
            y2[r, o] = yt[o, r] + (b[o] if b.shape[0] > 0 else 0)


# ---------------------------------------------------------------- backward data (scatter)

@njit(cache=True, nogil=True, inline='always')
def _fill_bias(gx, b, n0, n1):
    """Images n0..n1-1 of gx set to b (or 0), broadcast over their pixels."""
    N, H, W, C = gx.shape
    img = gx[n0:n1].reshape((n1 - n0) * H * W, C)
    for p in range(img.shape[0]):
        for c in range(C):
            img[p, c] = b[c] if b.shape[0] > 0 else 0


@njit(cache=True, nogil=True, inline='always')
def _bwd_data_images(gy2, w2, b, gx, n0, n1, geo, tile):
    """Images n0..n1-1 of gx: b (or 0) plus col2im(gy_tile @ w2) over their output rows."""
    C = gx.shape[3]
    O = gy2.shape[1]
    Ig, Og, K = _group_dims(geo, C, O)
    _fill_bias(gx, b, n0, n1)
    per_image = geo.OH * geo.OW
    r_end = n1 * per_image
    ldw = w2.shape[1]                   # >= K: W's rows zero-padded to whole micro-tiles
    dcol = _abuf(min(tile, r_end - n0 * per_image) * ldw, gx)
    gyf = gy2.reshape(-1)
    wf = w2.reshape(-1)
    for r0 in range(n0 * per_image, r_end, tile):
        r1 = min(r_end, r0 + tile)
        for g in range(geo.groups):
            _gemm(gyf, r0 * O + g * Og, O, 1, r1 - r0, wf, g * Og * ldw, ldw, ldw, dcol, 0, ldw,
                  Og, 0)
            _col2im_add(dcol, gx, r0, r1, geo, g * Ig, Ig, ldw)


@njit(cache=True, nogil=True, inline='always')
def _bwd_data_panel(gy2, w, dcol, t):
    """Column panel t of dcol (M, K) = gy2 @ W, W = w[0] (O, K) as stored (groups == 1)."""
    O = gy2.shape[1]
    _column_panel(gy2, O, 1, w, dcol, O, t)


@njit(cache=True, nogil=True, inline='always')
def _col2im_images(dcol, gx, b, n0, n1, geo):
    """Images n0..n1-1 of gx: b (or 0) plus col2im of their rows of dcol (groups == 1)."""
    _fill_bias(gx, b, n0, n1)
    per_image = geo.OH * geo.OW
    K = dcol.shape[1]
    r0 = n0 * per_image
    r1 = n1 * per_image
    _col2im_add(dcol.reshape(-1)[r0 * K:r1 * K], gx, r0, r1, geo, 0, gx.shape[3], K)


# ---------------------------------------------------------------- backward weight

@njit(cache=True, nogil=True, inline='always')
def _bwd_weight_chunk(x, gy2, part, r0, r1, tile, geo, plain):
    """part (O, K) = sum over rows r0..r1-1 of gy_row.T @ im2col(x)_row, tile by tile."""
    C = x.shape[3]
    O = gy2.shape[1]
    Ig, Og, K = _group_dims(geo, C, O)
    part[:] = 0
    pf = part.reshape(-1)
    gyf = gy2.reshape(-1)
    col = _abuf(0 if plain else min(tile, r1 - r0) * K, x)
    for t0 in range(r0, r1, tile):
        t1 = min(r1, t0 + tile)
        if plain:
            _gemm(gyf, t0 * O, 1, O, O, x.reshape(-1), t0 * C, C, C, pf, 0, C, t1 - t0, 1)
            continue
        for g in range(geo.groups):
            _im2col(x, col, t0, t1, geo, g * Ig, Ig)
            _gemm(gyf, t0 * O + g * Og, 1, O, Og, col, 0, K, K, pf, g * Og * K, K, t1 - t0, 1)


@njit(cache=True, nogil=True, inline='always')
def _bwd_weight_panel(gy2, col, gw2, t):
    """Column panel t of gw2 (O, K) = gy2.T @ col (M, K), reduced over all M rows."""
    M, O = gy2.shape
    _column_panel(gy2, 1, O, col, gw2, M, t)
