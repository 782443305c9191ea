"""Planar direct convolutions: one input channel per group (depthwise with any channel
multiplier m = O / C, or a single input channel, e.g. LeNet's first layer) at stride 1 with
few output channels (O < `_DIRECT_WIDE`). Dispatch picks them for the forward and the
backward data of such convs, and for their weight gradient unless implicit.py's restacked
GEMM takes it (a single input channel, undilated: LeNet c1); other one-channel-per-group
convs run row by row (direct.py).

Whole images at once, zero-padded and channel-major, over "virtual" pixels p = oh*Wp + ow that
run along every padded column (the last KW-1 of each row are discarded), so a tap (kh, kw) is
one shift of the plane and every product is a single vector loop over OH*Wp elements. The
forward takes the outputs of one input plane (its channel multiplier m; LeNet c1: m = O = 6)
a register block at a time (`_VCONV_BLOCKS`: 6, 4, 2 or 1 outputs x 2 to 4 vectors of pixels
held over all taps, each shifted vector of x loaded once for all of them); the planes then go
to NHWC 2..8 channels at a time by vector shuffles (element by element for other O). It was
one output at a time with the planes copied out element by element, which took twice as long
as the taps (LeNet c1 forward ~0.80 -> ~0.32 ms).
"""

from __future__ import annotations

from numba import njit

from .buffers import _abuf
from .config import _SHUFFLE_MAX_CHANNELS, _VBYTES, _VCONV_BLOCKS
from .vectors import _planes_to_channels, _vconv, _vcopy, _vdot


@njit(cache=True, nogil=True)
def _planar_dims(geo):
    """(Hp, Wp): the rows and columns a stride-1 conv reads, i.e. the padded plane."""
    return geo.OH + geo.dh * (geo.KH - 1), geo.OW + geo.dw * (geo.KW - 1)


@njit(cache=True, nogil=True)
def _planar_input(x, n, xp, geo):
    """xp[c, r*Wp + q] = x[n, r - pt, q - pl, c], zero outside the image; one spare zero row
    per plane (over-reads of the last virtual pixels)."""
    N, H, W, C = x.shape
    pt, pl = geo.pt, geo.pl
    Hp, Wp = _planar_dims(geo)
    plane = (Hp + 1) * Wp
    x3 = x.reshape(N, H, W * C)
    xp[:] = 0
    q0, q1 = max(0, pl), min(Wp, W + pl)
    for r in range(max(0, pt), min(Hp, H + pt)):
        xr = x3[n, r - pt]
        if C == 1:
            _vcopy(xp, r * Wp + q0, xr[0], xr, q0 - pl, xr, 0, q1 - q0)
            continue
        for q in range(q0, q1):
            for c in range(C):
                xp[c * plane + r * Wp + q] = xr[(q - pl) * C + c]


@njit(cache=True, nogil=True)
def _planar_grad(gy, n, gt, geo, front, rowlen):
    """gt[o*rowlen + front + oh*Wp + ow] = gy[n, oh, ow, o], zero everywhere else (the
    discarded virtual pixels, and `front` leading elements)."""
    OH, OW, O = gy.shape[1], gy.shape[2], gy.shape[3]
    Hp, Wp = _planar_dims(geo)
    gt[:] = 0
    for oh in range(OH):
        for ow in range(OW):
            g = gy[n, oh, ow]
            base = front + oh * Wp + ow
            for o in range(O):
                gt[o * rowlen + base] = g[o]


@njit(cache=True, nogil=True, inline='always')
def _block_outputs(left):
    """The largest block of `_VCONV_BLOCKS` with at most `left` outputs."""
    for outputs, _ in _VCONV_BLOCKS:
        if outputs <= left:
            return outputs
    return 1


@njit(cache=True, nogil=True, inline='always')
def _planar_fwd(x, wt, b, y, geo, n0, n1):
    """Images n0..n1-1 of y = conv(x) + b; wt (KH, KW, O)."""
    OH, OW, KH, KW = geo.OH, geo.OW, geo.KH, geo.KW
    C, O = x.shape[3], y.shape[3]
    m = O // C
    Hp, Wp = _planar_dims(geo)
    plane = (Hp + 1) * Wp
    P = OH * Wp
    xp = _abuf(C * plane, x)
    acc = _abuf(O * P, x)
    wf = wt.reshape(-1)
    for n in range(n0, n1):
        _planar_input(x, n, xp, geo)
        for c in range(C):            # the m outputs of plane c, a register block at a time
            o, o1 = c * m, (c + 1) * m
            while o < o1:
                k = _block_outputs(o1 - o)
                for j in range(o, o + k):     # the bias, just before (still in cache)
                    acc[j * P:(j + 1) * P] = b[j] if b.shape[0] > 0 else 0
                _vconv(k, acc, o * P, P, wf, o, O, xp, c * plane, geo.dh * Wp, geo.dw, KH, KW,
                       P)
                o += k
        if 2 <= O <= _SHUFFLE_MAX_CHANNELS:
            yn = y[n].reshape(-1)
            for oh in range(OH):
                _planes_to_channels(yn, oh * OW * O, acc, oh * Wp, P, OW, O)
        else:
            for oh in range(OH):
                for ow in range(OW):
                    yo = y[n, oh, ow]
                    for o in range(O):
                        yo[o] = acc[o * P + oh * Wp + ow]


@njit(cache=True, nogil=True, inline='always')
def _planar_bwd_weight(x, gy, part, geo, n0, n1):
    """part (KH*KW, O) = the weight gradient (transposed) from images n0..n1-1, summed in
    lanes of one SIMD vector along the virtual pixels, the lanes added at the end."""
    KH, KW, dh, dw = geo.KH, geo.KW, geo.dh, geo.dw
    C, O = x.shape[3], gy.shape[3]
    m = O // C
    Hp, Wp = _planar_dims(geo)
    plane = (Hp + 1) * Wp
    P = geo.OH * Wp
    vl = _VBYTES // x.itemsize
    lanes = _abuf(KH * KW * O * vl, x)
    lanes[:] = 0
    xp = _abuf(C * plane, x)
    gt = _abuf(O * P, x)
    for n in range(n0, n1):
        _planar_input(x, n, xp, geo)
        _planar_grad(gy, n, gt, geo, 0, P)
        for kh in range(KH):
            for kw in range(KW):
                for o in range(O):
                    _vdot(lanes, ((kh * KW + kw) * O + o) * vl, lanes[0], gt, o * P, xp,
                          (o // m) * plane + kh * dh * Wp + kw * dw, P)
    for k in range(KH * KW):
        for o in range(O):
            lane = lanes[(k * O + o) * vl:(k * O + o + 1) * vl]
            acc = lane[0]
            for j in range(1, vl):
                acc += lane[j]
            part[k, o] = acc


@njit(cache=True, nogil=True, inline='always')
def _planar_bwd_data(gy, wt, b, gx, geo, n0, n1):
    """The adjoint of _planar_fwd, gathered: each padded-plane pixel sums the flipped taps
    over gy's planes, which start `front` zeros early so that every read is in range."""
    KH, KW, dh, dw = geo.KH, geo.KW, geo.dh, geo.dw
    N, H, W, C = gx.shape
    O = gy.shape[3]
    m = O // C
    Hp, Wp = _planar_dims(geo)
    front = (KH - 1) * dh * Wp + (KW - 1) * dw
    rowlen = front + Hp * Wp
    gp = _abuf(Hp * Wp, gy)
    gt = _abuf(O * rowlen, gy)
    wf = wt.reshape(-1)
    for n in range(n0, n1):
        _planar_grad(gy, n, gt, geo, front, rowlen)
        for c in range(C):
            gp[:] = 0
            for o in range(c * m, (c + 1) * m):
                _vconv(1, gp, 0, 0, wf, (KH * KW - 1) * O + o, -O, gt, o * rowlen, dh * Wp, dw,
                       KH, KW, Hp * Wp)
            for ih in range(H):
                r = ih + geo.pt
                for iw in range(W):
                    q = iw + geo.pl
                    v = gp[r * Wp + q] if 0 <= r < Hp and 0 <= q < Wp else 0
                    gx[n, ih, iw, c] = v + (b[c] if b.shape[0] > 0 else 0)
