"""CUDA kernels for fused groups: `fused_map` and `fused_map_bwd` (see the ISA), every
pattern of steps runtime/fused_steps.py accepts: adds of extra inputs, at most one
activation, at most one non-overlapping pool, and an activation after the pool.

One set of kernels per pattern (the activation, the pool's kind, the activation after it),
built from the activations' device functions (elementwise.py's `activation_formulas`, their one
definition) and cached in memory per pattern and dtype; the window's size, the slopes and
the extra inputs are arguments. The extras travel as one tuple of flat arrays with their
count (the tuple's length is its type: numba compiles once per number of extras).

Forward: one thread per output element in a grid-stride loop; with a pool, each thread takes
its window through the steps (writing the pool's input to `saved` when the backward needs
it: the windows tile the input, so every element is written by one thread) and folds it in
the CPU kernels' order (down each window column, then across the columns). Backward: one
thread per element of gx, gathering from the one window that holds it (for maxpool, it finds
that window's first maximum in row-major order), so no two threads write one element and
nothing is atomic. The bias gradient is the bias_grad kernel's column sums of gx.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import cuda

from ..fused_steps import alphas, check_backward, check_pool, pattern, split
from .conv import bias_grad
from .elementwise import activation_formulas, activation_kernels
from .launch import device_function, dims, flat, launch, same_shape, scalar, unravel
from .table import kernel


@device_function
def _identity(v, alpha):
    return v


@device_function
def _identity_grad(g, y, alpha):
    return g


def _formula(name, dtype):
    """(act, act_grad) of an activation step, or the identity where the pattern has none."""
    return activation_formulas(dtype)[name] if name else (_identity, _identity_grad)


@functools.lru_cache(maxsize=None)
def _kernels(act, pool, after, dtype: np.dtype):
    """The kernels of one pattern: forward without a pool, with one, and the backward passes
    (without a pool: the activation's own backward kernel)."""
    f, f_grad = _formula(act, dtype)
    g, g_grad = _formula(after, dtype)
    is_max = pool == "maxpool"
    zero = dtype.type(0)

    @device_function
    def steps(x, extras, n_extras, i, alpha):
        """The steps before the pool on element i: the adds in order, then the activation."""
        v = x[i]
        for k in range(n_extras):
            v = v + extras[k][i]
        return f(v, alpha)

    @device_function
    def fold(acc, v):
        return max(acc, v) if is_max else acc + v

    @cuda.jit
    def forward(x, extras, n_extras, y, alpha):
        for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
            y[i] = steps(x, extras, n_extras, i, alpha)

    @cuda.jit
    def pooled_forward(x, extras, n_extras, saved, save, y, alpha, alpha2, inv, kh, kw):
        """y[n, oh, ow, c] = after(the window's max or mean of the steps' values); x, the
        extras and saved are flat views of (N, OH * kh, OW * kw, C) maps."""
        _, OH, OW, C = y.shape
        W = OW * kw
        for j in range(cuda.grid(1), y.size, cuda.gridsize(1)):
            n, oh, ow, c = unravel(j, OH, OW, C)
            acc = zero
            for k in range(kw):
                column = zero
                for r in range(kh):
                    i = ((n * OH + oh) * kh + r) * W * C + (ow * kw + k) * C + c
                    v = steps(x, extras, n_extras, i, alpha)
                    if save:
                        saved[i] = v
                    column = v if r == 0 else fold(column, v)
                acc = column if k == 0 else fold(acc, column)
            if not is_max:
                acc = acc * inv
            y[n, oh, ow, c] = g(acc, alpha2)

    @cuda.jit
    def pooled_backward(gy, a, y, gx, alpha, alpha2, inv, kh, kw):
        """gx[n, h, w, c] through the steps from the gradient of the window holding (h, w):
        its share of an average, or all of it at a maximum's first position."""
        _, H, W, C = gx.shape
        for i in range(cuda.grid(1), gx.size, cuda.gridsize(1)):
            n, h, w, c = unravel(i, H, W, C)
            oh, ow = h // kh, w // kw
            gp = g_grad(gy[n, oh, ow, c], y[n, oh, ow, c], alpha2)
            if not is_max:
                gx[n, h, w, c] = f_grad(gp * inv, a[n, h, w, c], alpha)
                continue
            h0, w0 = oh * kh, ow * kw
            best = a[n, h0, w0, c]
            at = 0
            for r in range(kh):
                for k in range(kw):
                    if a[n, h0 + r, w0 + k, c] > best:
                        best = a[n, h0 + r, w0 + k, c]
                        at = r * kw + k
            if at == (h - h0) * kw + (w - w0):
                gx[n, h, w, c] = f_grad(gp, a[n, h, w, c], alpha)
            else:
                gx[n, h, w, c] = zero

    _, backward = activation_kernels(f, f_grad)
    return forward, pooled_forward, pooled_backward, backward


def _parts(steps, dtype):
    """(pool step or None, activation after it or None, the pattern's kernels, alpha, alpha2
    as the dtype)."""
    _, act, pool, after = split(pattern(steps))
    alpha, alpha2 = (scalar(dtype, v) for v in alphas(steps))
    kernels = _kernels(act, pool[0] if pool else None, after, np.dtype(dtype))
    return pool, after, kernels, alpha, alpha2


def _inverse_window(pool, dtype):
    """1 / the window's size as the dtype (an average pool's factor), as the CPU's."""
    return scalar(dtype, 1.0 / (pool[1] * pool[2]))


# in place, as on the CPU (y over x; gx over gy): each thread reads element i of the input
# before it writes element i of the output, and reads no other element of it. With a pool
# the sizes differ (the planner shares only buffers of one size) unless the window is 1x1,
# where each thread again reads only its own element
@kernel("fused_map", inplace=((0, (0,)),))
def fused_map(ins, outs, attrs, ctx):
    x, extras = ins[0], tuple(ins[1:])
    y, saved = outs[0], (outs[1] if len(outs) > 1 else None)
    pool, _, (forward, pooled_forward, _, _), alpha, alpha2 = _parts(attrs["steps"], x.dtype)
    same_shape("fused_map", x, *extras)
    flat_extras = tuple(flat(e) for e in extras) or (flat(x),)   # a stand-in of the tuple's type
    if pool is None:
        same_shape("fused_map", x, y)
        launch(forward, x.size, flat(x), flat_extras, len(extras), flat(y), alpha)
        return
    check_pool("fused_map", dims(x), dims(y), pool)
    if saved is not None:
        same_shape("fused_map", x, saved)
    launch(pooled_forward, y.size, flat(x), flat_extras, len(extras),
           flat(saved if saved is not None else x), saved is not None, y, alpha, alpha2,
           _inverse_window(pool, x.dtype), pool[1], pool[2])


@kernel("fused_map_bwd", inplace=((0, (0,)),))
def fused_map_bwd(ins, outs, attrs, ctx):
    gy, a, y = ins[0], ins[1], (ins[2] if len(ins) > 2 else None)
    gx, gb = outs[0], (outs[1] if len(outs) > 1 else None)
    check_backward(pattern(attrs["steps"]))
    pool, after, (_, _, pooled_backward, backward), alpha, alpha2 = _parts(attrs["steps"], gy.dtype)
    if a is None:     # no activation and an average pool: the derivatives read nothing
        if split(pattern(attrs["steps"]))[1] is not None or (pool and pool[0] == "maxpool"):
            raise ValueError("fused_map_bwd: an activation or a maxpool needs a")
        a = gx
    if pool is None:
        same_shape("fused_map_bwd", gy, a, gx)
        launch(backward, gx.size, flat(gy), flat(a), flat(gx), alpha)
    else:
        same_shape("fused_map_bwd", a, gx)
        check_pool("fused_map_bwd", dims(gx), dims(gy), pool)
        if after is not None:
            if y is None:
                raise ValueError("fused_map_bwd: an activation after the pool needs y")
            same_shape("fused_map_bwd", gy, y)
        launch(pooled_backward, gx.size, gy, a, gy if y is None else y, gx, alpha, alpha2,
               _inverse_window(pool, gx.dtype), pool[1], pool[2])
    if gb is not None:
        bias_grad([gx], [gb], {}, ctx)
