"""The CUDA target's tiled GEMMs (runtime/cuda/gemm.py) against float64 NumPy, on problems
that span several tiles with ragged edges in every dimension, and at shapes smaller than one
tile: matrix products with each transposition, split-K, and convolutions forward and in both
backward passes. Under numba-cuda's simulator without a GPU (tests/conftest.py), at the tile
sizes the GPU runs."""

from __future__ import annotations

import numpy as np
import pytest
from numba import cuda

from netspec.runtime.cuda import gemm

# float32 sums over k terms: error within a few units of rounding of sum |a_k b_k|
BOUND = {"float32": 1e-6, "float64": 1e-14}


def poisoned(shape, dtype):
    return cuda.to_device(np.full(shape, np.nan, dtype))


def assert_close(got, want, scale, dtype):
    """|got - want| within BOUND x scale (sum of |terms|) elementwise; NaN (an element never
    written) fails."""
    assert not np.isnan(got).any(), "an output element was not written"
    err = np.abs(got - want)
    assert (err <= BOUND[dtype] * (scale + 1)).all(), f"max error {err.max()}"


def tile(dtype):
    return gemm.TILES[np.dtype(dtype)]


def shapes(dtype):
    """(M, N, K): below one tile, and over two tiles with ragged ends (K: slices + a part)."""
    t = tile(dtype)
    return [(3, 5, 2), (2 * t.BM + 3, t.BN + 7, 2 * t.BK + 3)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("a_t, b_t", [(False, False), (False, True), (True, False)])
def test_matmul_each_transposition_over_ragged_tiles(dtype, a_t, b_t):
    rng = np.random.default_rng(7)
    for M, N, K in shapes(dtype):
        a = rng.standard_normal((K, M) if a_t else (M, K)).astype(dtype)
        b = rng.standard_normal((N, K) if b_t else (K, N)).astype(dtype)
        bias = rng.standard_normal(N).astype(dtype)
        c = poisoned((M, N), dtype)
        gemm.matmul(cuda.to_device(a), cuda.to_device(b), c, cuda.to_device(bias), a_t, b_t)
        a64, b64 = (a.T if a_t else a).astype(np.float64), (b.T if b_t else b).astype(np.float64)
        assert_close(c.copy_to_host(), a64 @ b64 + bias, np.abs(a64) @ np.abs(b64) + np.abs(bias), dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_split_k_sums_its_slices_in_a_fixed_order(dtype):
    """K split over three grid slices (the weight gradients' long K): the partial tiles
    summed in order, bias once; the same bits on every run."""
    rng = np.random.default_rng(8)
    t = tile(dtype)
    M, N, K = t.BM + 5, 9, 7 * t.BK + 5
    a, b = rng.standard_normal((M, K)).astype(dtype), rng.standard_normal((K, N)).astype(dtype)
    bias = rng.standard_normal(N).astype(dtype)
    runs = []
    for _ in range(2):
        c = poisoned((M, N), dtype)
        gemm.product(gemm._depth_major, cuda.to_device(a), gemm._side_major, cuda.to_device(b), c,
                     cuda.to_device(bias), M, N, K, splits=3)
        runs.append(c.copy_to_host())
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    assert_close(runs[0], a64 @ b64 + bias, np.abs(a64) @ np.abs(b64) + np.abs(bias), dtype)
    assert np.array_equal(runs[0], runs[1])


def test_split_count_fills_the_gpu_and_keeps_slices_deep():
    assert gemm.split_count(gemm.TARGET_BLOCKS, 10**6) == 1
    assert gemm.split_count(1, 10**6) == gemm.TARGET_BLOCKS
    assert gemm.split_count(1, 3 * gemm.MIN_SPLIT_DEPTH + 1) == 3
    assert gemm.split_count(1, gemm.MIN_SPLIT_DEPTH - 1) == 1


# ---------------------------------------------------------------- convolutions

def conv_taps(x_shape, w_shape, stride, pad, dilation):
    """For each tap (kh, kw): the output's (oh, ow) grid and the input rows and columns it
    reads, with a mask of those inside the image: the float64 reference's one loop."""
    _, H, W, _ = x_shape
    _, KH, KW, _ = w_shape
    (sh, sw), (pt, pb, pl, pr), (dh, dw) = stride, pad, dilation
    OH = (H + pt + pb - dh * (KH - 1) - 1) // sh + 1
    OW = (W + pl + pr - dw * (KW - 1) - 1) // sw + 1
    for kh in range(KH):
        for kw in range(KW):
            ih = np.arange(OH) * sh - pt + kh * dh
            iw = np.arange(OW) * sw - pl + kw * dw
            inside = (0 <= ih)[:, None] & (ih < H)[:, None] & (0 <= iw)[None] & (iw < W)[None]
            yield kh, kw, np.clip(ih, 0, H - 1), np.clip(iw, 0, W - 1), inside, (OH, OW)


def conv_reference(x, w, gy, stride, pad, dilation, groups):
    """(y, gx, gw) in float64: y = conv(x, w), gx and gw its gradients for output gradient gy."""
    x, w, gy = (v.astype(np.float64) for v in (x, w, gy))
    O, _, _, Ig = w.shape
    Og = O // groups
    y, gx, gw = np.zeros(gy.shape), np.zeros(x.shape), np.zeros(w.shape)
    for kh, kw, ih, iw, inside, _ in conv_taps(x.shape, w.shape, stride, pad, dilation):
        patch = x[:, ih][:, :, iw] * inside[None, :, :, None]        # (N, OH, OW, C)
        for g in range(groups):
            cs, os_ = slice(g * Ig, (g + 1) * Ig), slice(g * Og, (g + 1) * Og)
            y[..., os_] += patch[..., cs] @ w[os_, kh, kw, :].T
            gw[os_, kh, kw, :] += np.einsum("nhwo,nhwi->oi", gy[..., os_], patch[..., cs])
            spread = (gy[..., os_] @ w[os_, kh, kw, :]) * inside[None, :, :, None]
            np.add.at(gx, (slice(None), ih[:, None], iw[None, :], cs), spread)
    return y, gx, gw


GEOMETRIES = [  # (x shape, w shape, stride, pad (t, b, l, r), dilation, groups)
    ((2, 9, 10, 5), (6, 3, 3, 5), (1, 1), (1, 1, 1, 1), (1, 1), 1),     # 180 pixels: two tiles
    ((2, 8, 7, 4), (6, 3, 2, 2), (2, 2), (1, 0, 2, 1), (2, 1), 2),      # strided, dilated, grouped
    ((1, 5, 6, 3), (70, 1, 1, 3), (1, 1), (0, 0, 0, 0), (1, 1), 1),     # 1x1, O over a float64 tile
    ((2, 7, 7, 3), (4, 2, 2, 3), (3, 3), (0, 0, 0, 0), (1, 1), 1),      # stride past the kernel
]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_implicit_gemm_convs_forward_and_backward(dtype, geometry):
    x_shape, w_shape, stride, pad, dilation, groups = geometry
    rng = np.random.default_rng(9)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    bias = rng.standard_normal(w_shape[0]).astype(dtype)
    *_, (OH, OW) = list(conv_taps(x_shape, w_shape, stride, pad, dilation))[-1]
    gy = rng.standard_normal((x_shape[0], OH, OW, w_shape[0])).astype(dtype)
    y, gx, gw = conv_reference(x, w, gy, stride, pad, dilation, groups)
    window = (*stride, pad[0], pad[2], *dilation, groups)
    assert gemm.serves_conv(w_shape, groups)

    got = poisoned(gy.shape, dtype)
    gemm.conv_forward(cuda.to_device(x), cuda.to_device(w), cuda.to_device(bias), True, got, window)
    # the references' error scale: the same sums on magnitudes
    ya, gxa, gwa = conv_reference(np.abs(x), np.abs(w), np.abs(gy), stride, pad, dilation, groups)
    assert_close(got.copy_to_host(), y + bias, ya + np.abs(bias), dtype)

    got = poisoned(x.shape, dtype)
    in_bias = rng.standard_normal(x_shape[3]).astype(dtype)   # conv_transpose's bias
    gemm.conv_backward_data(cuda.to_device(gy), cuda.to_device(w), cuda.to_device(in_bias), True, got, window)
    assert_close(got.copy_to_host(), gx + in_bias, gxa + np.abs(in_bias), dtype)

    got = poisoned(w.shape, dtype)
    gemm.conv_backward_weight(cuda.to_device(x), cuda.to_device(gy), got, window)
    assert_close(got.copy_to_host(), gw, gwa, dtype)


def test_depthwise_convs_stay_on_the_direct_kernels():
    assert not gemm.serves_conv((8, 3, 3, 1), 8)          # one input channel per group
    assert not gemm.serves_conv((8, 3, 3, 2), 8)          # one output channel per group
    assert gemm.serves_conv((8, 3, 3, 2), 4) and gemm.serves_conv((8, 3, 3, 1), 1)
