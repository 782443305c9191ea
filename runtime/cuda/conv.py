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
from .launch import device_function, dims, element, empty, flat, launch, rows, unravel
from .table import kernel


@device_function
def _tap(a, k, s, p, d, size, backward):
    """The position along one axis that kernel tap k joins to position a of the output, or -1
    where there is none. Forward: the input position a*s - p + k*d, inside the image (`size`
    positions). Backward (a: an input position): the output position whose tap k reads a."""
    if backward:
        t = a + p - k * d
        return t // s if t >= 0 and t % s == 0 and t // s < size else -1
    i = a * s - p + k * d
    return i if 0 <= i < size else -1


@cuda.jit
def _conv_data(src, w, b, has_bias, out, backward, sh, sw, pt, pl, dh, dw, groups):
    """Forward (src x, out y): y[n,oh,ow,o] = b[o] + sum_{kh,kw,i} x[n, oh*sh - pt + kh*dh,
    ow*sw - pl + kw*dw, g*Ig + i] * w[o,kh,kw,i], g = o // (O / groups); x is zero outside
    the image. Backward (src gy, out gx): gx[n,ih,iw,c] = b[c] + sum over the (kh, kw, o) whose
    tap reads (ih, iw, c) of gy[n, oh, ow, o] * w[o, kh, kw, c - g*Ig]: conv2d's adjoint (and
    conv_transpose). One thread per element of out."""
    _, SA, SB, _ = src.shape
    O, KH, KW, Ig = w.shape
    Og = O // groups
    for j in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        n, oa, ob, c = element(out, j)
        g = c // Ig if backward else c // Og
        acc = np.float64(b[c]) if has_bias else 0.0
        for kh in range(KH):
            sa = _tap(oa, kh, sh, pt, dh, SA, backward)
            if sa >= 0:
                for kw in range(KW):
                    sb = _tap(ob, kw, sw, pl, dw, SB, backward)
                    if sb < 0:
                        continue
                    if backward:
                        for o in range(g * Og, (g + 1) * Og):
                            acc += np.float64(src[n, sa, sb, o]) * np.float64(w[o, kh, kw, c - g * Ig])
                    else:
                        for i in range(Ig):
                            acc += np.float64(src[n, sa, sb, g * Ig + i]) * np.float64(w[c, kh, kw, i])
        out[n, oa, ob, c] = acc


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
                ih = _tap(oh, kh, sh, pt, dh, H, False)
                if ih >= 0:
                    for ow in range(OW):
                        iw = _tap(ow, kw, sw, pl, dw, W, False)
                        if iw >= 0:
                            acc += np.float64(gy[n, oh, ow, o]) * np.float64(x[n, ih, iw, c])
        gw[o, kh, kw, i] = acc


@cuda.jit
def column_sums(g, out):
    """out[c] = sum over the rows of g[:, c], in float64: the bias gradient (and tokens.py's
    sums over the batch)."""
    R, C = g.shape
    for c in range(cuda.grid(1), C, cuda.gridsize(1)):
        acc = 0.0
        for r in range(R):
            acc += np.float64(g[r, c])     # float64 under the simulator too
        out[c] = acc


@cuda.jit
def _matmul(a, b, bias, has_bias, y, a_t, b_t):
    """y = op(a) @ op(b) (+ bias), op(v) = v.T where its flag says: y (M, N), the inner
    length K from y and a (the products gemm.serves_matmul leaves here: a row or a column
    too few for a tile)."""
    M, N = y.shape
    K = a.shape[0] if a_t else a.shape[1]
    for j in range(cuda.grid(1), M * N, cuda.gridsize(1)):
        m, n = j // N, j % N
        acc = np.float64(bias[n]) if has_bias else 0.0
        for k in range(K):
            av = a[k, m] if a_t else a[m, k]
            bv = b[n, k] if b_t else b[k, n]
            acc += np.float64(av) * np.float64(bv)
        y[m, n] = acc


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


def _dense_shapes(name, x_shape, w_shape, y_shape, attrs):
    """Checks the shapes of a dense layer (x, w, y as in the forward layer: y = x @ w.T)."""
    (n, f), (u, f2), got = x_shape, w_shape, y_shape
    if f != f2 or got != (n, u):
        raise ValueError(f"{name}: x {x_shape}, w {w_shape} and y {got} do not agree (y = x @ w.T)")


def _operands(name, check, roles, ins, outs, attrs):
    """(in0, in1, bias, has_bias, out) of a conv or dense call, after check(name, x, w, y
    shapes, attrs) on its (in0, in1, out) as the forward layer's (x, w, y), in the order
    `roles` gives them, and a check that they share a dtype. The bias is the optional third
    input (one value per output channel), or a stand-in."""
    operands = (ins[0], ins[1], outs[0])
    x, w, y = (operands[k] for k in roles)
    check(name, dims(x), dims(w), dims(y), attrs)
    _same_dtype(name, *operands)
    out = outs[0]
    return (ins[0], ins[1], *_bias(ins[2] if len(ins) > 2 else None, dims(out)[-1], out.dtype, name),
            out)


def _conv(name, tiled, device_kernel, roles, *flags):
    """Registers conv instruction `name`: tiled(in0, in1[, bias, has_bias], out, window), the
    implicit GEMM (gemm.py), where it serves the conv's weights, else device_kernel(in0, in1[,
    bias, has_bias], out, *flags, *window) over the output's elements, the direct kernel."""
    def run(ins, outs, attrs, ctx):
        a, b, bias, has_bias, out = _operands(name, check_conv, roles, ins, outs, attrs)
        args = (a, b, *((bias, has_bias) if len(ins) > 2 else ()), out)
        window = _window(attrs)
        weights = (ins[0], ins[1], outs[0])[roles[1]]
        if gemm.in_use() and gemm.serves_conv(dims(weights), window[-1]):
            tiled(*args, window)
        else:
            launch(device_kernel, out.size, *args, *flags, *window)
    kernel(name)(run)


_conv("conv2d", gemm.conv_forward, _conv_data, (0, 1, 2), False)               # (x, w, b?) -> y
_conv("conv2d_bwd_data", gemm.conv_backward_data, _conv_data, (2, 1, 0), True)  # (gy, w, b?) -> gx
_conv("conv2d_bwd_weight", gemm.conv_backward_weight, _conv_bwd_weight, (0, 2, 1))   # (x, gy) -> gw


def _token_rows(a):
    """A dense operand as rows: a sequence (N, T, F), each token a row, as a (N*T, F) view; a
    vector batch (N, F), a weight or a bias as it is."""
    return rows(a) if a is not None and a.ndim == 3 else a


def _dense(name, roles, swap, a_t, b_t):
    """Registers dense instruction `name`: out = op(a) @ op(b) (+ bias), (a, b) the inputs,
    swapped where `swap` says; op transposes where a_t, b_t say. A sequence's tokens are rows."""
    def run(ins, outs, attrs, ctx):
        ins, outs = [_token_rows(a) for a in ins], [_token_rows(a) for a in outs]
        a, b, bias, has_bias, out = _operands(name, _dense_shapes, roles, ins, outs, attrs)
        a, b = (b, a) if swap else (a, b)
        if gemm.in_use() and gemm.serves_matmul(*dims(out)):
            gemm.matmul(a, b, out, bias if has_bias else None, a_t, b_t)
        else:
            launch(_matmul, out.size, a, b, bias, has_bias, out, a_t, b_t)
    kernel(name)(run)


_dense("dense", (0, 1, 2), False, False, True)               # y = x @ w.T + b
_dense("dense_bwd_data", (2, 1, 0), False, False, False)     # gx = gy @ w
_dense("dense_bwd_weight", (0, 2, 1), True, True, False)     # gw = gy.T @ x


@kernel("bias_grad")
def bias_grad(ins, outs, attrs, ctx):
    gy, gb = ins[0], outs[0]
    c = dims(gy)[-1]
    if dims(gb) != (c,) or gb.dtype != gy.dtype:
        raise ValueError(f"bias_grad: {dims(gb)} {gb.dtype} for gradients {dims(gy)} {gy.dtype}")
    launch(column_sums, c, flat(gy).reshape(gy.size // c, c), gb)
