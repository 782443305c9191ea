"""Implicit GEMMs: convs with groups == 1, dw == 1 and few input channels (a kernel row's taps
KW*C < `_IMPLICIT_MAX_RUN`: the stem, LeNet's c1 and c3), run as GEMMs straight on the
zero-padded input, no im2col (it would cost about as much as the GEMM). A kernel row's taps are
a contiguous run, and the micro-kernel's reduction is two-level (kernel rows x their runs), so
every kernel row goes through one micro-tile with the accumulators in registers.

- Forward, stride 1: micro-tiles called directly (not through `_gemm`) over an image's
  "virtual" rows (every padded column of each output row) into a scratch image, the weight
  zero-padded to whole tiles (LeNet c3 ~0.94 -> ~0.54 ms); strided, one `_gemm` per output
  row into y (bias stored first). The backward data of these convs is im2col.py's scatter.
- Backward weight, stride 1: gy.T @ im2col(x), tiles of output channels (gy broadcast, copied
  per block of images with zero rows for the padded columns) x a kernel row's run of taps
  (vectors of x), called directly; the reduction is two-level over a block of images x their
  virtual rows, so each tile keeps its accumulators in registers over a whole block (one
  partial per thread, the order images-then-pixels whatever the block size; LeNet c3 ~0.94 ->
  ~0.45 ms). Strided: one `_gemm` per output row and kernel row into (K, O) partials.
- Backward weight of a stride-1 undilated conv with a single input channel and O <
  `_DIRECT_WIDE` (LeNet c1; its forward and backward data are planar.py's): the same on the
  input restacked per block of images as xs[oh, w, kh] = x[oh + kh, w] (an image transposed,
  then one whole-vector copy per pixel), so that all of a pixel's KH*KW taps are one run, a
  single "kernel row" (~0.9 -> ~0.5 ms).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .buffers import _abuf, _aligned_zeros, _cdiv
from .config import _DIRECT_WIDE, _IMPLICIT_MAX_RUN, _MR, _MR_N, _NV, _TILE_BYTES, _VBYTES
from .microkernel import _gemm, _tile
from .vectors import _vcopy


# ---------------------------------------------------------------- when dispatch picks them

def _implicit(geo, C) -> bool:
    """Few input channels: im2col would cost about as much as the GEMM; run the GEMMs straight
    on the padded input instead (needs dw == 1, groups == 1)."""
    return geo.groups == 1 and geo.dw == 1 and C * geo.KW < _IMPLICIT_MAX_RUN


def _stacked(geo, C, O) -> bool:
    """Weight gradient of a stride-1 conv with a single input channel and few outputs (the
    planar direct kernels' case, LeNet's c1): the implicit GEMM on the input restacked so
    that all of a pixel's taps are one run (see _implicit_bwd_weight)."""
    return (C == 1 and geo.groups == 1 and geo.sh == geo.sw == 1 and geo.dh == geo.dw == 1
            and O < _DIRECT_WIDE and geo.KH * geo.KW * C < _IMPLICIT_MAX_RUN)


# ---------------------------------------------------------------- their layouts

def _implicit_wgrad_dims(O, KC, itemsize):
    """(rows, ldk) of the stride-1 implicit weight gradient's partials (_implicit_bwd_weight):
    O and KC rounded up to the micro-tile's rows and columns (narrow tile when a kernel row's
    run fits one vector)."""
    vl = _VBYTES // itemsize
    mr, nr = (_MR_N, vl) if KC <= vl else (_MR, _NV * vl)
    return _cdiv(O, mr) * mr, _cdiv(KC, nr) * nr


def _padded(x, geo):
    """x zero-padded as the conv reads it, plus spare zero rows at the bottom (see
    _implicit_fwd); returns it and the matching geometry (no padding left)."""
    N, H, W, C = x.shape
    # exactly the rows/columns the conv reads (a negative pad crops)
    rows = (geo.OH - 1) * geo.sh + geo.dh * (geo.KH - 1) + 1
    cols = (geo.OW - 1) * geo.sw + geo.KW
    # + the micro-tile's over-reads past the last output pixel (a_over): up to a tile's rows
    # of pixels, sw*C elements apart, plus one kernel row's run
    spare = 1 + _cdiv(max(_MR, _MR_N) * geo.sw * C + geo.KW * C, cols * C)
    xp = _aligned_zeros((N, rows + spare, cols, C), x.dtype)
    pt, pl = geo.pt, geo.pl
    r0, c0 = max(0, -pt), max(0, -pl)
    r1, c1 = min(H, rows - pt), min(W, cols - pl)
    xp[:, r0 + pt:r1 + pt, c0 + pl:c1 + pl, :] = x[:, r0:r1, c0:c1, :]
    return xp, geo._replace(pt=0, pl=0)


# ---------------------------------------------------------------- the task bodies

@njit(cache=True, nogil=True, inline='always')
def _implicit_fwd(xp, wt, b, y2, geo, u0, u1):
    """Output units u0..u1-1 (images for stride 1, else output rows n*OH + oh) of y2, as
    GEMMs straight on the zero-padded input xp (no im2col; groups 1, dw 1) reducing over all
    kernel rows at once: output pixels along a padded input row are `sw*C` elements apart, so
    a kernel row's taps are one contiguous run of KW*C elements, and kernel rows are
    dh*Wp*C elements apart. With stride 1 whole images go at once over "virtual" rows, every
    padded column of each output row (the last KW-1 are discarded), as micro-tiles called
    directly (wt from dispatch._implicit_weight: columns padded with zeros to whole tiles). xp
    has spare zero rows at the bottom for the reads past the last pixel, of these and of the
    micro-tiles (a_over)."""
    OH, OW, KH, sh, sw = geo.OH, geo.OW, geo.KH, geo.sh, geo.sw
    N, Hp, Wp, C = xp.shape
    O = y2.shape[1]
    KC = geo.KW * C
    xf = xp.reshape(-1)
    wf = wt.reshape(-1)
    ldw = wt.shape[2]
    yf = y2.reshape(-1)
    has_b = b.shape[0] > 0
    # every kernel row in one reduction (nkh = KH): rows dh*Wp*C apart in xp, KC*ldw in wt
    ldah, ldbh = geo.dh * Wp * C, KC * ldw
    if sh == 1 and sw == 1:
        # micro-tiles straight over the virtual rows into a scratch image, its columns padded
        # to whole tiles (wt's padding columns are zeros: see _implicit_weight), no _gemm
        # call: its edge handling is not needed here and its per-tile cost was a third
        vl = _VBYTES // y2.itemsize
        narrow = ldw <= vl
        mr = _MR_N if narrow else _MR
        nr = vl if narrow else _NV * vl
        m = OH * Wp
        tmp = np.empty((m + mr) * ldw, y2.dtype)
        for n in range(u0, u1):
            base = n * Hp * Wp * C
            for j0 in range(0, O, nr):
                for i0 in range(0, m, mr):
                    _tile(narrow, xf, base + i0 * C, C, 1, wf, j0, ldw, tmp, i0 * ldw + j0, ldw,
                          KC, 0, KH, ldah, ldbh)
            for oh in range(OH):
                for ow in range(OW):
                    src = tmp[(oh * Wp + ow) * ldw:(oh * Wp + ow) * ldw + O]
                    dst = y2[(n * OH + oh) * OW + ow]
                    for o in range(O):
                        dst[o] = src[o] + (b[o] if has_b else 0)
        return
    for u in range(u0, u1):
        n = u // OH
        oh = u - n * OH
        if has_b:
            for r in range(u * OW, (u + 1) * OW):
                for o in range(O):
                    y2[r, o] = b[o]
        _gemm(xf, (n * Hp + oh * sh) * Wp * C, sw * C, 1, OW, wf, 0, ldw, O, yf, u * OW * O, O,
              KC, 1 if has_b else 0, True, KH, ldah, ldbh)


@njit(cache=True, nogil=True, inline='always')
def _implicit_bwd_weight(xp, gy2, part, geo, u0, u1, stack):
    """The weight gradient from output units u0..u1-1 (images for stride 1, else output rows
    n*OH + oh), with the im2col read straight from the zero-padded input (see _implicit_fwd).

    Stride 1: part (rows, KH*ldk), part[o, kh*ldk + j] = gw[o, kh, j // C, j % C] (rows and
    ldk: O and KW*C rounded up to whole micro-tiles, see _implicit_wgrad_dims), as gy.T @
    im2col(x): a tile's rows are output channels (gy broadcast), its columns one kernel row's
    contiguous run of taps (two vectors of x per pixel), and the reduction is two-level over
    images x their virtual pixels (every padded column of each output row), so one tile
    reduces over a whole block of images with the accumulators in registers. gy is copied
    per block with zero rows for the padded columns. With `stack` (a single input channel:
    runs of KW taps would fill few columns) every block's input is first restacked as
    xs[b, oh, w, kh] = xp[n, oh + kh, w] (C == 1, dh == 1), so that all of a pixel's taps
    are one run of KW*KH (in (kw, kh) order) and the conv one of a single kernel row:
    part (rows, ldk), part[o, kw*KH + kh] = gw[o, kh, kw, 0]. Else (strided):
    part (K, O), the transpose, one `_gemm` per output row and kernel row."""
    OH, OW, KH, sh, sw = geo.OH, geo.OW, geo.KH, geo.sh, geo.sw
    N, Hp, Wp, C = xp.shape
    O = gy2.shape[1]
    KC = geo.KW * C
    part[:] = 0
    xf = xp.reshape(-1)
    gyf = gy2.reshape(-1)
    pf = part.reshape(-1)
    if sh == 1 and sw == 1:
        vl = _VBYTES // xp.itemsize
        C2 = KH * C if stack else C         # channels of the stacked input
        KH2 = 1 if stack else KH            # its kernel rows
        KC = geo.KW * C2
        narrow = KC <= vl
        mr = _MR_N if narrow else _MR
        nr = vl if narrow else _NV * vl
        ldc = part.shape[1]
        ldk = ldc // KH2
        m = OH * Wp
        img = m * O
        ximg = m * C2 if stack else Hp * Wp * C
        # images per block: gy's copy and x's images inside L2 (the sum's order is the same
        # for any block size: images, then pixels, in order)
        nbk = max(1, min(u1 - u0, _TILE_BYTES // ((img + ximg) * xp.itemsize)))
        # + mr: the last tile rows past O read (discarded rows of part)
        gyv = _abuf(nbk * img + mr, gy2)
        gyv[:] = 0
        # + nr: the last pixel's run read past KC (discarded columns of part)
        # (stack: C == 1, dh == 1) + ncopy: the whole-vector copies' overshoot
        ncopy = (KH + vl - 1) // vl * vl
        rows = OH + KH - 1
        ldt = rows + ncopy
        xs = _abuf(nbk * ximg + nr + ncopy if stack else 0, xp)
        xs[:] = 0
        xt = _abuf(Wp * ldt if stack else 0, xp)
        xt[:] = 0
        for n0 in range(u0, u1, nbk):
            nb = min(nbk, u1 - n0)
            for b in range(nb):
                for oh in range(OH):
                    _vcopy(gyv, b * img + oh * Wp * O, gyf[0], gyf, ((n0 + b) * OH + oh) * OW * O,
                           gyf, 0, OW * O)
            if stack:
                for b in range(nb):
                    # the image transposed (xt[w, r] = x[r, w]), then each pixel's KH taps
                    # one whole-vector copy from a column of it (the lanes past KH are
                    # overwritten by the next pixel's, or land in the spare tail)
                    img_t = xf[(n0 + b) * Hp * Wp:(n0 + b) * Hp * Wp + rows * Wp]
                    for r in range(rows):
                        for w in range(Wp):
                            xt[w * ldt + r] = img_t[r * Wp + w]
                    d0 = b * ximg
                    for oh in range(OH):
                        for w in range(Wp):
                            _vcopy(xs, d0, xt[0], xt, w * ldt + oh, xt, 0, ncopy)
                            d0 += KH
                for j0 in range(0, KC, nr):
                    for i0 in range(0, O, mr):
                        _tile(narrow, gyv, i0, 1, O, xs, j0, C2, pf, i0 * ldc + j0, ldc, m, 1,
                              nb, img, ximg)
                continue
            for kh in range(KH):
                for j0 in range(0, KC, nr):
                    for i0 in range(0, O, mr):
                        _tile(narrow, gyv, i0, 1, O, xf, (n0 * Hp + kh * geo.dh) * Wp * C + j0,
                              C, pf, i0 * ldc + kh * ldk + j0, ldc, m, 1, nb, img, ximg)
        return
    for u in range(u0, u1):
        n = u // OH
        oh = u - n * OH
        for kh in range(KH):
            _gemm(xf, (n * Hp + oh * sh + kh * geo.dh) * Wp * C, 1, sw * C, KC, gyf, u * OW * O,
                  O, O, pf, kh * KC * O, O, OW, 1, True)
