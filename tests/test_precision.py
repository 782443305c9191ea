"""float32 accuracy of the CPU conv and dense kernels on long reductions, held to PyTorch's.

A float32 sum of K products run as one chain errs by about sqrt(K) roundings relative to its
size; summed in blocks (runtime/cpu/conv/config.py, `_REDUCTION_BLOCK`) it errs like PyTorch's
(oneDNN's and the BLAS's blocked loops). Each case runs netspec's kernel and PyTorch in float32
on the same float32 data and requires netspec's relative error ||out - ref|| / ||ref|| against a
float64 NumPy reference (from the same float32 values) to be at most twice PyTorch's. With one
chain per output the 3x3 conv over 512 channels (4,608 products per output) was 5x PyTorch's
error and the 25,088-long dense layer 6.8x (tools/float32_error.py measures the full-size
cases).

The shapes take the GEMM paths dispatch chooses between for long reductions: fewer output
pixels than channels (y.T = W @ im2col(x).T), more (im2col(x) @ W.T), the stride-1 backward
data gathered through the forward path, and a dense layer (its input read as the im2col).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from netspec.runtime.cpu import KERNELS

F = torch.nn.functional
torch.set_num_threads(1)

SEED = 16


def rel(got, want):
    return np.linalg.norm(np.asarray(got, np.float64) - want) / np.linalg.norm(want)


def conv64(x, w, pad):
    """conv2d (stride 1, `pad` on every side) of NHWC x and OHWI w in float64: im2col, then
    one float64 matrix product."""
    N, H, W, C = x.shape
    O, KH, KW, _ = w.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    OH, OW = H + 2 * pad - KH + 1, W + 2 * pad - KW + 1
    col = np.concatenate([xp[:, kh:kh + OH, kw:kw + OW, :]
                          for kh in range(KH) for kw in range(KW)], axis=3)
    return (col.reshape(-1, KH * KW * C) @ w.reshape(O, -1).astype(np.float64).T
            ).reshape(N, OH, OW, O)


def draw(*shapes):
    rng = np.random.default_rng(SEED)
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


def nchw(a):
    return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))


def netspec_run(name, ins, shape, attrs=None):
    out = np.full(shape, np.nan, np.float32)
    KERNELS[name](ins, [out], attrs or {}, None)
    return out


# (name, N, H, C, O): 3x3 same convs, K = 9*C products per output
CONVS = [
    ("512->512 8x8 (fewer pixels than channels)", 1, 8, 512, 512),
    ("512->128 12x12 b2 (more pixels than channels)", 2, 12, 512, 128),
]


@pytest.mark.parametrize("case", CONVS, ids=[c[0] for c in CONVS])
def test_conv_forward_error_within_twice_torch(case):
    _, N, H, C, O = case
    x, w = draw((N, H, H, C), (O, 3, 3, C))
    attrs = dict(stride=(1, 1), pad=(1, 1, 1, 1), dilation=(1, 1), groups=1)
    want = conv64(x, w, 1)
    ours = rel(netspec_run("conv2d", [x, w, None], want.shape, attrs), want)
    with torch.no_grad():
        theirs = rel(F.conv2d(nchw(x), nchw(w), padding=1).permute(0, 2, 3, 1).numpy(), want)
    assert ours <= 2 * theirs, f"netspec {ours:.2e}, PyTorch {theirs:.2e} (seed {SEED})"


def test_conv_backward_data_error_within_twice_torch():
    """gx of a 3x3 conv over 512 output channels (4,608 products per element)."""
    N, H, C, O = 1, 8, 256, 512
    gy, w = draw((N, H, H, O), (O, 3, 3, C))
    attrs = dict(stride=(1, 1), pad=(1, 1, 1, 1), dilation=(1, 1), groups=1)
    # the adjoint of a same conv: the conv of gy with the kernel flipped, channels swapped
    want = conv64(gy, np.ascontiguousarray(w[:, ::-1, ::-1, :].transpose(3, 1, 2, 0)), 1)
    ours = rel(netspec_run("conv2d_bwd_data", [gy, w, None], want.shape, attrs), want)
    with torch.no_grad():
        theirs = torch.nn.grad.conv2d_input((N, C, H, H), nchw(w), nchw(gy), padding=1)
    theirs = rel(theirs.permute(0, 2, 3, 1).numpy(), want)
    assert ours <= 2 * theirs, f"netspec {ours:.2e}, PyTorch {theirs:.2e} (seed {SEED})"


def test_dense_error_within_twice_torch():
    """A dense layer reducing over 25,088 inputs (VGG-16's fc1)."""
    x, w = draw((4, 25088), (64, 25088))
    want = x.astype(np.float64) @ w.astype(np.float64).T
    ours = rel(netspec_run("dense", [x, w, None], want.shape), want)
    with torch.no_grad():
        theirs = rel(F.linear(torch.from_numpy(x), torch.from_numpy(w)).numpy(), want)
    assert ours <= 2 * theirs, f"netspec {ours:.2e}, PyTorch {theirs:.2e} (seed {SEED})"
