"""Convolution and dense CUDA kernels, direct: one thread per output element, each a dot
product accumulated in float64 in a fixed order (for conv2d: kernel row, kernel column, input
channel), so results do not depend on the launch. The backward passes gather (one thread
per element of gx or gw), never scatter: no atomics.

These are the reference the tests hold the tiled GEMMs (gemm.py) to, and the fallback where
those serve badly: the wrappers send dense layers and convs to the tiled GEMMs, and keep
here the convs whose groups have a single input or output channel (depthwise).

Layouts as the ISA's: maps NHWC, conv weights OHWI (O, KH, KW, I/groups), dense weights (U, F).
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from ..isa import check_conv, conv_window
from . import gemm
from .launch import dims, empty, flat, launch, unravel
from .table import kernel


@cuda.jit
def _conv_fwd(x, w, b, has_bias, y, sh, sw, pt, pl, dh, dw, groups):
    """y[n,oh,ow,o] = b[o] + sum_{kh,kw,i} x[n, oh*sh - pt + kh*dh, ow*sw - pl + kw*dw, g*Ig + i]
    * w[o,kh,kw,i], g = o // (O / groups); x is zero outside the image."""
    _, H, W, _ = x.shape
    O, KH, KW, Ig = w.shape
    _, OH, OW, _ = y.shape
    Og = O // groups
    for j in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        n, oh, ow, o = unravel(j, OH, OW, O)
        c0 = (o // Og) * Ig
        acc = np.float64(b[o]) if has_bias else 0.0
        for kh in range(KH):
            ih = oh * sh - pt + kh * dh
            if 0 <= ih < H:
                for kw in range(KW):
                    iw = ow * sw - pl + kw * dw
                    if 0 <= iw < W:
                        for i in range(Ig):
                            acc += np.float64(x[n, ih, iw, c0 + i]) * np.float64(w[o, kh, kw, i])
        y[n, oh, ow, o] = acc


@cuda.jit
def _conv_bwd_data(gy, w, b, has_bias, gx, sh, sw, pt, pl, dh, dw, groups):
    """gx[n,ih,iw,c] = b[c] + sum over the (o, kh, kw) whose window reads (ih, iw, c) of
    gy[n, oh, ow, o] * w[o, kh, kw, c - g*Ig]: conv2d's adjoint (and conv_transpose)."""
    _, H, W, C = gx.shape
    O, KH, KW, Ig = w.shape
    _, OH, OW, _ = gy.shape
    Og = O // groups
    for j in range(cuda.grid(1), gx.size, cuda.gridsize(1)):
        n, ih, iw, c = unravel(j, H, W, C)
        g = c // Ig
        acc = np.float64(b[c]) if has_bias else 0.0
        for kh in range(KH):
            th = ih + pt - kh * dh
            if th >= 0 and th % sh == 0 and th // sh < OH:
                oh = th // sh
                for kw in range(KW):
                    tw = iw + pl - kw * dw
                    if tw >= 0 and tw % sw == 0 and tw // sw < OW:
                        ow = tw // sw
                        for o in range(g * Og, (g + 1) * Og):
                            acc += np.float64(gy[n, oh, ow, o]) * np.float64(w[o, kh, kw, c - g * Ig])
        gx[n, ih, iw, c] = acc


@cuda.jit
def _conv_bwd_weight(x, gy, gw, sh, sw, pt, pl, dh, dw, groups):
    """gw[o,kh,kw,i] = sum_{n,oh,ow} gy[n,oh,ow,o] * x[n, oh*sh - pt + kh*dh, ow*sw - pl + kw*dw, g*Ig + i]."""
    N, H, W, _ = x.shape
    O, KH, KW, Ig = gw.shape
    _, OH, OW, _ = gy.shape
    Og = O // groups
    for j in range(cuda.grid(1), gw.size, cuda.gridsize(1)):
        o, kh, kw, i = unravel(j, KH, KW, Ig)
        c = (o // Og) * Ig + i
        acc = 0.0
        for n in range(N):
            for oh in range(OH):
                ih = oh * sh - pt + kh * dh
                if 0 <= ih < H:
                    for ow in range(OW):
                        iw = ow * sw - pl + kw * dw
                        if 0 <= iw < W:
                            acc += np.float64(gy[n, oh, ow, o]) * np.float64(x[n, ih, iw, c])
        gw[o, kh, kw, i] = acc


@cuda.jit
def _column_sums(g, out):
    """out[c] = sum over the rows of g[:, c], in float64: the bias gradient."""
    R, C = g.shape
    for c in range(cuda.grid(1), C, cuda.gridsize(1)):
        acc = 0.0
        for r in range(R):
            acc += g[r, c]
        out[c] = acc


def _bias(b, n, dtype, name):
    """(the bias, or a one-element stand-in, and whether there is one)."""
    if b is None:
        return empty(1, dtype), False
    if dims(b) != (n,) or b.dtype != dtype:
        raise ValueError(f"{name}: bias {dims(b)} {b.dtype}, expected ({n},) {dtype}")
    return b, True


def _same_dtype(name, *arrays):
    if any(a.dtype != arrays[0].dtype for a in arrays):
        raise ValueError(f"{name}: dtypes differ: {[str(a.dtype) for a in arrays]}")


def _window(attrs):
    sh, sw, pt, _, pl, _, dh, dw, groups = conv_window(attrs)
    return sh, sw, pt, pl, dh, dw, groups


def _conv(tiled, direct, out, w_shape, attrs, *args):
    """A conv on the tiled GEMMs (gemm.py) where they serve it, else on its direct kernel."""
    window = _window(attrs)
    if gemm.serves_conv(w_shape, window[-1]):
        tiled(*args, window)
    else:
        launch(direct, out.size, *args, *window)


@kernel("conv2d")
def conv2d(ins, outs, attrs, ctx):
    x, w, b = ins
    y = outs[0]
    check_conv("conv2d", dims(x), dims(w), dims(y), attrs)
    _same_dtype("conv2d", x, w, y)
    b, has_bias = _bias(b, dims(w)[0], x.dtype, "conv2d")
    _conv(gemm.conv_forward, _conv_fwd, y, dims(w), attrs, x, w, b, has_bias, y)


@kernel("conv2d_bwd_data")
def conv2d_bwd_data(ins, outs, attrs, ctx):
    gy, w, b = ins
    gx = outs[0]
    check_conv("conv2d_bwd_data", dims(gx), dims(w), dims(gy), attrs)
    _same_dtype("conv2d_bwd_data", gy, w, gx)
    b, has_bias = _bias(b, dims(gx)[3], gx.dtype, "conv2d_bwd_data")
    _conv(gemm.conv_backward_data, _conv_bwd_data, gx, dims(w), attrs, gy, w, b, has_bias, gx)


@kernel("conv2d_bwd_weight")
def conv2d_bwd_weight(ins, outs, attrs, ctx):
    x, gy = ins
    gw = outs[0]
    check_conv("conv2d_bwd_weight", dims(x), dims(gw), dims(gy), attrs)
    _same_dtype("conv2d_bwd_weight", x, gy, gw)
    _conv(gemm.conv_backward_weight, _conv_bwd_weight, gw, dims(gw), attrs, x, gy, gw)


@kernel("bias_grad")
def bias_grad(ins, outs, attrs, ctx):
    gy, gb = ins[0], outs[0]
    c = dims(gy)[-1]
    if dims(gb) != (c,) or gb.dtype != gy.dtype:
        raise ValueError(f"bias_grad: {dims(gb)} {gb.dtype} for gradients {dims(gy)} {gy.dtype}")
    launch(_column_sums, c, flat(gy).reshape(gy.size // c, c), gb)


def _dense_shapes(name, x, w, y):
    (n, f), (u, f2), got = dims(x), dims(w), dims(y)
    if f != f2 or got != (n, u):
        raise ValueError(f"{name}: x {dims(x)}, w {dims(w)} and y {got} do not agree (y = x @ w.T)")


@kernel("dense")
def dense(ins, outs, attrs, ctx):
    x, w, b = ins
    y = outs[0]
    _dense_shapes("dense", x, w, y)
    _same_dtype("dense", x, w, y)
    b, has_bias = _bias(b, dims(w)[0], x.dtype, "dense")
    gemm.matmul(x, w, y, b if has_bias else None, b_t=True)           # x @ w.T + b


@kernel("dense_bwd_data")
def dense_bwd_data(ins, outs, attrs, ctx):
    gy, w = ins
    gx = outs[0]
    _dense_shapes("dense_bwd_data", gx, w, gy)
    _same_dtype("dense_bwd_data", gy, w, gx)
    gemm.matmul(gy, w, gx)                                            # gy @ w


@kernel("dense_bwd_weight")
def dense_bwd_weight(ins, outs, attrs, ctx):
    x, gy = ins
    gw = outs[0]
    _dense_shapes("dense_bwd_weight", x, gw, gy)
    _same_dtype("dense_bwd_weight", x, gy, gw)
    gemm.matmul(gy, x, gw, a_t=True)                                  # gy.T @ x
