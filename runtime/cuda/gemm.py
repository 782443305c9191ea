"""Tiled GEMMs on the GPU: dense layers as plain matrix products and convolutions as implicit
GEMMs, their operands gathered from the NHWC maps and OHWI weights while the tiles load (no
im2col buffer).

One kernel body serves every product C = A @ B (A: M x K, B: K x N). A block computes a
BM x BN tile of C; each thread keeps a TM x TN block of it in registers; BK-deep slices of A
and B go through shared memory, double-buffered: the next slice is read from global memory
into registers while the current one is multiplied, then stored to the other buffer, so
one barrier per slice suffices. Operands are read through small device functions (the
"loaders" below): a matrix stored either way round (the transposition flags), a conv's
input patches, its output gradient spread back over the input, or its weights. Each
loader says which of its indices is contiguous in memory, and the tile's loads run along it
so that a warp's reads coalesce.

Sums are in the arrays' dtype (float32 for float32, as cuBLAS and the CPU target's GEMM)
over k in increasing order, bias last; a long K split over blocks (split-K, for the weight
gradients, whose outputs are small and K is the batch's pixels) leaves partial tiles that
one kernel sums in a fixed order. So results do not depend on the launch or the run.

Groups of a grouped conv are the grid's z dimension (with the split-K slices); group g
reads its own channels through the loaders and writes its own rows or columns of C.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numba
import numpy as np
from numba import config, cuda

from .launch import empty, launch, launch_grid, unravel


class Tiles(NamedTuple):
    BM: int      # a block's tile of C: BM rows x BN columns
    BN: int
    BK: int      # depth of the A and B slices staged in shared memory
    TM: int      # a thread's register block: TM x TN elements of C
    TN: int


# Chosen for Hopper (sm_90: 64K 32-bit registers, 228 KB shared memory per SM, 255 registers
# per thread at most). Both give 256 threads per block ((BM/TM) * (BN/TN) = 16 x 16).
# float32: 8 x 8 = 64 accumulators + 8 + 8 fragments + 4 + 4 staged loads per thread; with
# 64-bit addressing ptxas (nvJitLink, sm_90) allots 206-220 registers, no spills, no stack:
# 256 x 220 = 56K registers, one block per SM (8 warps). Shared: 2 buffers x (8 x 128 + 8 x
# 128) x 4 B = 16 KB per block (17 KB reported), under the 48 KB a block gets without opting
# in. Each slice: 8 x 8 x 8 = 512 FMAs per thread for 16 shared loads.
# float64: a register holds half an element, so 4 x 4 = 16 accumulators on a 64 x 64 tile;
# 123-141 registers (two blocks per SM); shared 2 x (8 x 64 + 8 x 64) x 8 B = 16 KB.
TILES = {np.dtype(np.float32): Tiles(BM=128, BN=128, BK=8, TM=8, TN=8),
         np.dtype(np.float64): Tiles(BM=64, BN=64, BK=8, TM=4, TN=4)}
# The simulator runs each CUDA thread as a Python thread: there the same kernel body runs with
# small tiles (4 threads a block; the sizes are its parameters), which tests/test_cuda_gemm.py
# takes over several tiles with ragged edges. The GPU's tiles compile to PTX in CI for every
# call the op cases make (tests/test_cuda_kernels.py).
if config.ENABLE_CUDASIM:
    TILES = {dtype: Tiles(BM=8, BN=8, BK=4, TM=4, TN=4) for dtype in TILES}
STRIP = 4                # a thread's rows and columns come in runs of 4: 16-byte shared loads
TARGET_BLOCKS = 264      # split K until the grid has this many blocks: two per SM on an H100/H200 (132)
MIN_SPLIT_DEPTH = 512    # ... but never below this depth per split (each split pays a tile's writes)

# geo: the conv's geometry as the loaders read it (a dense layer passes zeros)
SH, SW, PT, PL, DH, DW, KH, KW, OH, OW, H, W, IG, OG = range(14)


def geometry(sh=0, sw=0, pt=0, pl=0, dh=0, dw=0, kh=0, kw=0, oh=0, ow=0, h=0, w=0, ig=0, og=0):
    """The loaders' geometry tuple, as int64 (one compiled kernel serves every layer)."""
    return tuple(np.int64(v) for v in (sh, sw, pt, pl, dh, dw, kh, kw, oh, ow, h, w, ig, og))


# ---------------------------------------------------------------- the loaders
# load(array, group, s, k, geo, zero): element (s, k) of an operand, s its row of C (A) or column
# (B), k the depth; called only for s and k in range. Zero where a conv reads padding.

@cuda.jit(device=True, inline=True)
def _depth_major(a, g, s, k, geo, zero):
    """a[g*Og + s, k]: a matrix whose depth is contiguous (x for y = x @ w.T, w.T itself; a
    conv's weights as (O, KH*KW*Ig))."""
    return a[g * geo[OG] + s, k]


@cuda.jit(device=True, inline=True)
def _side_major(a, g, s, k, geo, zero):
    """a[k, g*Og + s]: a matrix stored depth by depth (gy.T for gw = gy.T @ x; a conv's output
    gradient as (pixels, O) for its weight gradient)."""
    return a[k, g * geo[OG] + s]


@cuda.jit(device=True, inline=True)
def _patch(x, g, p, j, geo, zero):
    """The conv's input patch: x[n, oh*sh - pt + kh*dh, ow*sw - pl + kw*dw, g*Ig + i] for
    output pixel p = (n, oh, ow) and tap j = (kh, kw, i); zero outside the image."""
    n, oh, ow, _ = unravel(p, geo[OH], geo[OW], 1)
    _, kh, kw, i = unravel(j, geo[KH], geo[KW], geo[IG])
    ih = oh * geo[SH] - geo[PT] + kh * geo[DH]
    iw = ow * geo[SW] - geo[PL] + kw * geo[DW]
    if 0 <= ih < geo[H] and 0 <= iw < geo[W]:
        return x[n, ih, iw, g * geo[IG] + i]
    return zero


@cuda.jit(device=True, inline=True)
def _patch_by_tap(x, g, j, p, geo, zero):
    """_patch with the tap as the side and the pixel as the depth: the weight gradient's B."""
    return _patch(x, g, p, j, geo, zero)


@cuda.jit(device=True, inline=True)
def _spread(gy, g, q, k, geo, zero):
    """The output gradient each input pixel q = (n, ih, iw) received through tap k = (kh, kw,
    o): gy[n, oh, ow, g*Og + o] where oh*sh = ih + pt - kh*dh (and likewise ow), zero where
    no output pixel read it through that tap."""
    n, ih, iw, _ = unravel(q, geo[H], geo[W], 1)
    _, kh, kw, o = unravel(k, geo[KH], geo[KW], geo[OG])
    th = ih + geo[PT] - kh * geo[DH]
    tw = iw + geo[PL] - kw * geo[DW]
    if th >= 0 and tw >= 0 and th % geo[SH] == 0 and tw % geo[SW] == 0:
        oh = th // geo[SH]
        ow = tw // geo[SW]
        if oh < geo[OH] and ow < geo[OW]:
            return gy[n, oh, ow, g * geo[OG] + o]
    return zero


@cuda.jit(device=True, inline=True)
def _weight_by_tap(w, g, c, k, geo, zero):
    """w[g*Og + o, kh, kw, c] for tap k = (kh, kw, o): the backward data pass's B."""
    _, kh, kw, o = unravel(k, geo[KH], geo[KW], geo[OG])
    return w[g * geo[OG] + o, kh, kw, c]


# whether a loader's contiguous index is the depth k (else the side s)
_DEPTH_CONTIGUOUS = {_depth_major: True, _side_major: False, _patch: True, _patch_by_tap: False,
                     _spread: True, _weight_by_tap: False}


# ---------------------------------------------------------------- the kernel

@cuda.jit(device=True, inline=True)
def _slice_coords(idx, depth_contiguous, side, depth):
    """(s, k) of a slice's element idx, numbered along the operand's contiguous index."""
    if depth_contiguous:
        return idx // depth, idx % depth
    return idx % side, idx // side


@cuda.jit(device=True, inline=True)
def _strip(t, base, count):
    """The row (or column) of C a thread's register index t maps to inside a tile, base its
    lane * STRIP: runs of STRIP next to those of the other lanes, so that a warp's shared
    loads are contiguous."""
    return base + ((t // STRIP) * (count * STRIP) + t % STRIP)


@functools.cache
def _tiled_kernel(dtype: np.dtype, load_a, load_b):
    """The tiled kernel for one dtype and one pair of operand loaders:
    kernel(a, b, c, bias, has_bias, M, N, K, depth, splits, c_row, c_col, geo) adds, for
    blockIdx.z = group * splits + split, the product over k in [split*depth, (split+1)*depth)
    into c[split, group*c_row + m, group*c_col + n] (+ bias[group*c_col + n])."""
    BM, BN, BK, TM, TN = TILES[dtype]
    ROWS, COLS = BM // TM, BN // TN            # thread grid of the tile
    THREADS = ROWS * COLS
    A_LOADS, B_LOADS = BM * BK // THREADS, BN * BK // THREADS
    A_DEPTH_FIRST, B_DEPTH_FIRST = _DEPTH_CONTIGUOUS[load_a], _DEPTH_CONTIGUOUS[load_b]
    nbtype = numba.from_dtype(dtype)
    zero = dtype.type(0)

    @cuda.jit
    def kernel(a, b, c, bias, has_bias, M, N, K, depth, splits, c_row, c_col, geo):
        a_tile = cuda.shared.array((2, BK, BM), nbtype)
        b_tile = cuda.shared.array((2, BK, BN), nbtype)
        a_next = cuda.local.array(A_LOADS, nbtype)
        b_next = cuda.local.array(B_LOADS, nbtype)
        a_frag = cuda.local.array(TM, nbtype)
        b_frag = cuda.local.array(TN, nbtype)
        acc = cuda.local.array((TM, TN), nbtype)
        tid = cuda.threadIdx.x
        row_base, col_base = (tid // COLS) * STRIP, (tid % COLS) * STRIP
        m0, n0 = cuda.blockIdx.y * BM, cuda.blockIdx.x * BN
        g, split = cuda.blockIdx.z // splits, cuda.blockIdx.z % splits
        k_begin = split * depth
        k_end = min(K, k_begin + depth)
        slices = (k_end - k_begin + BK - 1) // BK
        for i in range(TM):
            for j in range(TN):
                acc[i, j] = zero

        for t in range(slices + 1):
            # stage slice t in registers (t < slices), then, past the first, multiply slice
            # t - 1 from shared memory while those loads are in flight
            k0 = k_begin + t * BK
            if t < slices:
                for e in range(A_LOADS):
                    s, k = _slice_coords(tid + e * THREADS, A_DEPTH_FIRST, BM, BK)
                    a_next[e] = load_a(a, g, m0 + s, k0 + k, geo, zero) if m0 + s < M and k0 + k < k_end else zero
                for e in range(B_LOADS):
                    s, k = _slice_coords(tid + e * THREADS, B_DEPTH_FIRST, BN, BK)
                    b_next[e] = load_b(b, g, n0 + s, k0 + k, geo, zero) if n0 + s < N and k0 + k < k_end else zero
            if t > 0:
                cur = (t - 1) % 2
                for kk in range(BK):
                    for i in range(TM):
                        a_frag[i] = a_tile[cur, kk, _strip(i, row_base, ROWS)]
                    for j in range(TN):
                        b_frag[j] = b_tile[cur, kk, _strip(j, col_base, COLS)]
                    for i in range(TM):
                        for j in range(TN):
                            acc[i, j] += a_frag[i] * b_frag[j]
            if t < slices:
                # the other buffer: its last readers (slice t - 2) passed the previous barrier
                nxt = t % 2
                for e in range(A_LOADS):
                    s, k = _slice_coords(tid + e * THREADS, A_DEPTH_FIRST, BM, BK)
                    a_tile[nxt, k, s] = a_next[e]
                for e in range(B_LOADS):
                    s, k = _slice_coords(tid + e * THREADS, B_DEPTH_FIRST, BN, BK)
                    b_tile[nxt, k, s] = b_next[e]
            cuda.syncthreads()

        for i in range(TM):
            m = m0 + _strip(i, row_base, ROWS)
            if m < M:
                for j in range(TN):
                    n = n0 + _strip(j, col_base, COLS)
                    if n < N:
                        col = g * c_col + n
                        c[split, g * c_row + m, col] = acc[i, j] + bias[col] if has_bias else acc[i, j]

    return kernel


@cuda.jit
def _sum_splits(parts, bias, has_bias, c):
    """c[r, col] = parts[0, r, col] + parts[1, r, col] + ... (+ bias[col]), in that order."""
    S, R, C = parts.shape
    for j in range(cuda.grid(1), R * C, cuda.gridsize(1)):
        r, col = j // C, j % C
        acc = parts[0, r, col]
        for s in range(1, S):
            acc += parts[s, r, col]
        c[r, col] = acc + bias[col] if has_bias else acc


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def split_count(blocks: int, K: int) -> int:
    """How many slices of K a product of `blocks` tiles runs as: enough to fill the GPU
    (TARGET_BLOCKS), each at least MIN_SPLIT_DEPTH deep. A function of the shapes only, so
    a layer sums in the same order on every run and every GPU."""
    if blocks >= TARGET_BLOCKS:
        return 1
    return max(1, min(_cdiv(TARGET_BLOCKS, blocks), K // MIN_SPLIT_DEPTH))


def product(load_a, a, load_b, b, c, bias, M, N, K, groups=1, c_row=0, c_col=0, geo=None,
            splits=None):
    """c (2-D) = A @ B (+ bias) per group, A and B read through their loaders (see
    _tiled_kernel); splits: K's slices (default: split_count)."""
    dtype = np.dtype(c.dtype)
    BM, BN, BK, TM, TN = TILES[dtype]
    geo = geometry() if geo is None else geo
    bias_or_stub = empty(1, dtype) if bias is None else bias
    grid_xy = (_cdiv(N, BN), _cdiv(M, BM))
    if splits is None:
        splits = split_count(grid_xy[0] * grid_xy[1] * groups, K)
    depth = _cdiv(_cdiv(K, splits), BK) * BK          # whole slices per split
    splits = max(1, _cdiv(K, depth))                   # none empty
    threads = (BM // TM) * (BN // TN)
    kernel = _tiled_kernel(dtype, load_a, load_b)
    out = c.reshape(1, *c.shape) if splits == 1 else empty((splits, *c.shape), dtype)
    launch_grid(kernel, (*grid_xy, groups * splits), threads, a, b, out, bias_or_stub,
                bias is not None and splits == 1, M, N, K, depth, splits, c_row, c_col, geo)
    if splits > 1:
        launch(_sum_splits, c.size, out, bias_or_stub, bias is not None, c)


def matmul(a, b, c, bias=None, a_t=False, b_t=False):
    """c = op(a) @ op(b) (+ bias), op(v) = v.T where its flag says."""
    M, N = c.shape
    K = a.shape[0] if a_t else a.shape[1]
    product(_side_major if a_t else _depth_major, a, _depth_major if b_t else _side_major, b,
            c, bias, M, N, K)


# a product with fewer rows or columns than this leaves most of a tile idle (a dense layer at
# batch 1): conv.py's direct kernel serves it (a guess until a GPU measures the crossover)
MIN_TILED_SIDE = 16


def serves_matmul(M: int, N: int) -> bool:
    """Whether the tiled kernel serves an (M, N) product."""
    return min(M, N) >= MIN_TILED_SIDE


def in_use() -> bool:
    """Whether the kernel wrappers (conv.py) send work here at all: on a GPU. Under the
    simulator the direct kernels serve every conv and product: there an implicit GEMM costs
    minutes for one of LeNet's layers (every multiply-add of every thread is interpreted);
    tests/test_cuda_gemm.py checks these kernels themselves there, with small tiles."""
    return not config.ENABLE_CUDASIM


def serves_conv(w_shape, groups: int) -> bool:
    """Whether the implicit GEMMs serve a conv: not where a group has a single input or output
    channel (depthwise convs), whose products are one column wide: a tile would compute one
    real column of BN. The direct kernels (conv.py) serve those."""
    O, _, _, Ig = w_shape
    return groups == 1 or min(Ig, O // groups) > 1


def _conv_geometry(x_shape, w_shape, y_shape, window):
    (_, H, W, _), (O, KH, KW, Ig), (_, OH, OW, _) = x_shape, w_shape, y_shape
    sh, sw, pt, pl, dh, dw, groups = window
    return geometry(sh, sw, pt, pl, dh, dw, KH, KW, OH, OW, H, W, Ig, O // groups)


def conv_forward(x, w, bias, has_bias, y, window):
    """y = conv2d(x, w) (+ bias): output pixels x output channels, depth the taps (kh, kw, i)."""
    Nb, OH, OW, O = y.shape
    _, KH, KW, Ig = w.shape
    groups = window[-1]
    product(_patch, x, _depth_major, w.reshape(O, KH * KW * Ig), y.reshape(Nb * OH * OW, O),
            bias if has_bias else None,
            Nb * OH * OW, O // groups, KH * KW * Ig, groups, 0, O // groups,
            _conv_geometry(x.shape, w.shape, y.shape, window))


def conv_backward_data(gy, w, bias, has_bias, gx, window):
    """gx = conv2d's adjoint in x (+ bias): input pixels x input channels, depth the taps
    (kh, kw, o); a strided conv's taps that skip a pixel read zeros."""
    Nb, H, W, C = gx.shape
    O, KH, KW, Ig = w.shape
    groups = window[-1]
    product(_spread, gy, _weight_by_tap, w, gx.reshape(Nb * H * W, C), bias if has_bias else None,
            Nb * H * W, Ig, KH * KW * (O // groups), groups, 0, Ig,
            _conv_geometry(gx.shape, w.shape, gy.shape, window))


def conv_backward_weight(x, gy, gw, window):
    """gw = conv2d's gradient in w: output channels x taps (kh, kw, i), depth the output
    pixels (split over blocks when few tiles cover gw)."""
    Nb, OH, OW, O = gy.shape
    _, KH, KW, Ig = gw.shape
    groups = window[-1]
    product(_side_major, gy.reshape(Nb * OH * OW, O), _patch_by_tap, x, gw.reshape(O, KH * KW * Ig),
            None, O // groups, KH * KW * Ig, Nb * OH * OW, groups, O // groups, 0,
            _conv_geometry(x.shape, gw.shape, gy.shape, window))
