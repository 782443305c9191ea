"""CPU conv / dense kernels (runtime/cpu/conv/) against the float64 references, PyTorch, and
their own adjoints.

- float32 forward vs the float64 reference (tests/reference/conv.py): ||out - ref|| / ||ref||
  under 1e-4;
- float64 backward kernels as adjoints (dot-product test):
  <conv(x, w), gy> == <x, bwd_data(gy, w)> == <w, bwd_weight(x, gy)>;
- float64 forward and both gradients vs torch.nn.functional.conv2d + autograd, and
  conv2d_bwd_data with a bias vs conv_transpose2d;
- every output buffer is poisoned with NaN first and must come back finite.

The shapes are chosen so that every method the wrappers can pick runs in both dtypes;
`test_every_method_is_covered` checks that. Inputs are drawn from a generator seeded per case;
the seed is in every failure message.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from netspec.runtime.cpu import KERNELS
from netspec.runtime.cpu.conv import dispatch as cv
from reference import conv as ref

F = torch.nn.functional
torch.set_num_threads(1)


@pytest.fixture(autouse=True, params=["parallel", "serial-small"])
def task_split(request, monkeypatch):
    """Run every test twice: with every GEMM split into parallel tasks however small (the
    shapes here are small), and with the default threshold below which it runs as one task."""
    if request.param == "parallel":
        monkeypatch.setattr(cv, "_SERIAL_WORK", 0)


# ---------------------------------------------------------------- cases
#
# (name, N, H, W, C, O, (KH, KW), stride, pad (top, bottom, left, right), dilation, groups)

def same_pad(size, k, s, d=1):
    """TensorFlow 'same' padding along one axis: the odd pixel goes bottom/right."""
    out = -(-size // s)
    total = max((out - 1) * s + d * (k - 1) + 1 - size, 0)
    return total // 2, total - total // 2


CASES = [
    # groups == 1, implicit GEMM (few input channels)
    ("lenet-c1", 2, 12, 12, 1, 6, (5, 5), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ("small-c 3x3 s1", 2, 9, 11, 3, 8, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    ("stem 7x7/2", 2, 15, 13, 3, 40, (7, 7), (2, 2), (3, 3, 3, 3), (1, 1), 1),
    ("tf-same s2 asym", 2, 8, 8, 4, 6, (3, 3), (2, 2), (*same_pad(8, 3, 2), *same_pad(8, 3, 2)),
     (1, 1), 1),
    ("stride 3 > kernel 2", 1, 11, 10, 5, 7, (2, 2), (3, 3), (0, 1, 1, 0), (1, 1), 1),
    ("dilation 2", 2, 10, 9, 6, 9, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 1),
    # stride 1: micro-tiles over virtual rows, all kernel rows in one reduction; output
    # channels one vector (LeNet c3, batch 1, 140 virtual rows: not whole tiles) or wider,
    # not a whole number of tiles (padded weight columns, float32 and float64 tiles)
    ("lenet-c3 batch 1", 1, 14, 14, 6, 16, (5, 5), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ("implicit s1 20 out", 3, 7, 9, 4, 20, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    ("implicit s1 33 out", 2, 6, 5, 5, 33, (3, 2), (1, 1), (0, 1, 1, 0), (1, 1), 1),
    # stride-1 weight gradient as gy.T @ im2col(x), tiles over whole blocks of images: a
    # kernel row's run wider than one tile (KC = 49: two float32 / four float64 column
    # tiles), and enough images for several blocks per task
    ("implicit wgrad wide run", 2, 8, 10, 7, 10, (3, 7), (1, 1), (1, 0, 3, 2), (1, 1), 1),
    ("implicit wgrad blocks", 200, 12, 12, 2, 3, (3, 3), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    # single input channel, stride 1 (LeNet c1 above): weight gradient on the input
    # restacked so that a pixel's taps are one run; narrow (12 taps) and wide tiles, a kernel
    # taller than a float64 vector, batch 1, several blocks, dilation (planar instead)
    ("stacked batch 1 odd", 1, 9, 11, 1, 5, (3, 4), (1, 1), (1, 0, 2, 1), (1, 1), 1),
    ("stacked tall kernel", 3, 13, 6, 1, 7, (9, 2), (1, 1), (0, 0, 1, 0), (1, 1), 1),
    ("stacked blocks", 500, 8, 8, 1, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    ("single channel dilated", 2, 9, 10, 1, 3, (3, 3), (1, 1), (1, 1, 1, 1), (2, 1), 1),
    # backward data by scatter (gy @ W, then col2im) at stride 1 (few input channels): W's
    # rows zero-padded to whole micro-tiles (K = 150, 45; 12: one vector), kernel rows added to gx as
    # contiguous vector runs inside the image, element by element at padded edges; odd widths
    ("lenet-c3 scatter odd width", 2, 10, 11, 6, 16, (5, 5), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ("scatter s1 padded", 3, 7, 9, 5, 12, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    ("scatter narrow K", 2, 6, 7, 3, 5, (2, 2), (1, 1), (0, 1, 1, 0), (1, 1), 1),   # K = 12
    ("dilation 2 stride 2", 2, 11, 12, 24, 20, (3, 3), (2, 2), (1, 2, 0, 2), (2, 2), 1),
    ("dilation (2, 1)", 2, 9, 8, 4, 10, (3, 2), (1, 1), (2, 1, 0, 1), (2, 1), 1),
    ("dilation (1, 3) s2", 1, 8, 13, 4, 12, (2, 3), (2, 2), (0, 0, 3, 3), (1, 3), 1),
    # groups == 1, im2col GEMM (wide kernel rows)
    ("im2col 3x3", 2, 7, 6, 40, 36, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    ("im2col 5x5 s2 asym", 3, 9, 8, 20, 33, (5, 5), (2, 2), (2, 1, 1, 2), (1, 1), 1),
    ("im2col 3x1 s(1,2)", 2, 6, 9, 30, 17, (3, 1), (1, 2), (0, 2, 0, 0), (1, 1), 1),
    ("im2col few rows", 2, 3, 3, 24, 72, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    ("im2col 1 pixel out", 3, 5, 5, 16, 24, (5, 5), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ("bigger than kernel pad", 2, 4, 5, 20, 12, (3, 3), (1, 1), (3, 2, 4, 3), (1, 1), 1),
    ("batch 1 im2col", 1, 9, 9, 32, 40, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    # 1x1
    ("1x1 plain", 2, 5, 7, 24, 40, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ("1x1 plain many out", 1, 2, 3, 16, 96, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ("1x1 stride 2", 2, 7, 8, 20, 24, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1),
    ("1x1 padded", 2, 4, 4, 20, 8, (1, 1), (1, 1), (1, 0, 0, 1), (1, 1), 1),
    # grouped
    ("groups 2", 2, 7, 8, 8, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2),
    ("groups 2 wide", 2, 6, 6, 40, 40, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 2),
    ("groups 4 1x1", 2, 5, 5, 16, 8, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 4),
    # one input channel per group: depthwise, multiplier 1 and 2, few and many channels
    ("depthwise m1", 2, 9, 8, 5, 5, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 5),
    ("depthwise m2 s2", 2, 9, 10, 4, 8, (3, 3), (2, 2), (*same_pad(9, 3, 2), *same_pad(10, 3, 2)),
     (1, 1), 4),
    ("depthwise wide m1", 2, 7, 7, 24, 24, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 24),
    ("depthwise wide m2 s2 dil", 1, 9, 9, 12, 24, (3, 3), (2, 2), (2, 2, 2, 2), (2, 2), 12),
    ("depthwise 5x5 s3", 2, 10, 11, 6, 6, (5, 5), (3, 3), (2, 2, 2, 2), (1, 1), 6),
    ("depthwise dilated planar", 2, 9, 9, 3, 6, (3, 3), (1, 1), (2, 1, 2, 1), (2, 2), 3),
    ("single channel wide", 2, 8, 8, 1, 20, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),
    # row-by-row weight gradients over several blocks of rows per task (config's
    # _REDUCTION_BLOCK): 32 rows of 4 columns a block along the channels, 128 along the
    # columns (280 and 1040 output rows: 35 and 130 per task on two threads)
    ("depthwise wide many rows", 70, 7, 7, 16, 16, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 16),
    ("depthwise columns many rows", 260, 8, 8, 4, 4, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 4),
    # planar forward, the m outputs of a plane 6, 4, 2 or 1 at a time (register-blocked
    # across outputs): 6 (LeNet c1's shape, batch 1, odd sizes), 13 = 6 + 6 + 1, depthwise
    # multipliers 6 and 3 = 2 + 1
    ("planar 6 outputs batch 1 odd", 1, 11, 9, 1, 6, (5, 5), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ("planar 13 outputs", 2, 7, 10, 1, 13, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    ("depthwise m6 planar", 2, 8, 7, 2, 12, (3, 3), (1, 1), (1, 1, 0, 0), (1, 1), 2),
    ("depthwise m3 planar", 1, 9, 6, 3, 9, (2, 3), (1, 1), (0, 1, 1, 1), (1, 1), 3),
]
IDS = [c[0] for c in CASES]


def seed_of(name: str) -> int:
    return zlib.crc32(name.encode())


def draw(name, dtype=np.float64):
    """Seeded inputs of one case: x, w, b (length O), gy."""
    _, N, H, W, C, O, (KH, KW), (sh, sw), (pt, pb, pl, pr), (dh, dw), g = \
        next(c for c in CASES if c[0] == name)
    rng = np.random.default_rng(seed_of(name))
    OH = (H + pt + pb - dh * (KH - 1) - 1) // sh + 1
    OW = (W + pl + pr - dw * (KW - 1) - 1) // sw + 1
    x = rng.standard_normal((N, H, W, C)).astype(dtype)
    w = rng.standard_normal((O, KH, KW, C // g)).astype(dtype)
    b = rng.standard_normal(O).astype(dtype)
    gy = rng.standard_normal((N, OH, OW, O)).astype(dtype)
    attrs = dict(stride=(sh, sw), pad=(pt, pb, pl, pr), dilation=(dh, dw), groups=g)
    return x, w, b, gy, attrs


def run(name, ins, shape, dtype, attrs=None):
    """Run a kernel into a NaN-poisoned output; every element must have been written."""
    out = np.full(shape, np.nan, dtype)
    KERNELS[name](ins, [out], attrs or {}, None)
    assert np.isfinite(out).all(), f"{name} left elements unwritten (NaN) or non-finite"
    return out


def rel(a, b):
    return np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(b), 1e-300)


# ---------------------------------------------------------------- forward vs the reference

@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("case", IDS)
def test_conv2d_float32_matches_reference(case, bias):
    x, w, b, gy, attrs = draw(case)
    b = b if bias else None
    want = ref.conv2d(x, w, b, attrs["stride"], attrs["pad"], attrs["dilation"], attrs["groups"])
    f32 = np.float32
    got = run("conv2d", [x.astype(f32), w.astype(f32), None if b is None else b.astype(f32)],
              want.shape, f32, attrs)
    assert rel(got, want) < 1e-4, f"seed {seed_of(case)}"


# ---------------------------------------------------------------- backward: adjoints in float64

@pytest.mark.parametrize("case", IDS)
def test_backward_kernels_are_adjoints(case):
    x, w, b, gy, attrs = draw(case)
    y = run("conv2d", [x, w, None], gy.shape, np.float64, attrs)
    gx = run("conv2d_bwd_data", [gy, w, None], x.shape, np.float64, attrs)
    gw = run("conv2d_bwd_weight", [x, gy], w.shape, np.float64, attrs)
    lhs = np.vdot(y, gy)
    assert np.vdot(x, gx) == pytest.approx(lhs, rel=1e-10, abs=1e-9), f"seed {seed_of(case)}"
    assert np.vdot(w, gw) == pytest.approx(lhs, rel=1e-10, abs=1e-9), f"seed {seed_of(case)}"


@pytest.mark.parametrize("case", ["lenet-c3 scatter odd width", "scatter s1 padded",
                                  "scatter narrow K",                                  "stride 3 > kernel 2", "dilation (1, 3) s2",
                                  "im2col 5x5 s2 asym"])
def test_bwd_data_float32_matches_float64(case):
    """The scatter backward-data (padded W rows, vector runs in col2im) in float32 against
    the same kernel in float64, with a bias."""
    x, w, b, gy, attrs = draw(case)
    bias = b[:x.shape[3]] if b.shape[0] >= x.shape[3] else np.resize(b, x.shape[3])
    want = run("conv2d_bwd_data", [gy, w, bias], x.shape, np.float64, attrs)
    got = run("conv2d_bwd_data", [gy.astype(np.float32), w.astype(np.float32),
                                  bias.astype(np.float32)], x.shape, np.float32, attrs)
    assert rel(got, want) < 1e-5, f"seed {seed_of(case)}"


# ---------------------------------------------------------------- vs PyTorch

def torch_conv(x, w, b, attrs):
    """conv2d in NCHW through torch, asymmetric padding applied explicitly first."""
    pt, pb, pl, pr = attrs["pad"]
    xt = F.pad(x.permute(0, 3, 1, 2), (max(pl, 0), max(pr, 0), max(pt, 0), max(pb, 0)))
    xt = xt[:, :, max(-pt, 0):xt.shape[2] - max(-pb, 0), max(-pl, 0):xt.shape[3] - max(-pr, 0)]
    y = F.conv2d(xt, w.permute(0, 3, 1, 2), b, stride=attrs["stride"],
                 dilation=attrs["dilation"], groups=attrs["groups"])
    return y.permute(0, 2, 3, 1)


@pytest.mark.parametrize("case", IDS)
def test_matches_torch_forward_and_gradients(case):
    x, w, b, gy, attrs = draw(case)
    tx = torch.from_numpy(x).requires_grad_(True)
    tw = torch.from_numpy(w).requires_grad_(True)
    tb = torch.from_numpy(b).requires_grad_(True)
    ty = torch_conv(tx, tw, tb, attrs)
    ty.backward(torch.from_numpy(gy))
    y = run("conv2d", [x, w, b], gy.shape, np.float64, attrs)
    gx = run("conv2d_bwd_data", [gy, w, None], x.shape, np.float64, attrs)
    gw = run("conv2d_bwd_weight", [x, gy], w.shape, np.float64, attrs)
    gb = run("bias_grad", [gy], b.shape, np.float64)
    seed = f"seed {seed_of(case)}"
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-10, err_msg=seed)
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-10, atol=1e-10, err_msg=seed)
    np.testing.assert_allclose(gw, tw.grad.numpy(), rtol=1e-10, atol=1e-10, err_msg=seed)
    np.testing.assert_allclose(gb, tb.grad.numpy(), rtol=1e-10, atol=1e-10, err_msg=seed)


@pytest.mark.parametrize("case", ["small-c 3x3 s1", "im2col 5x5 s2 asym", "groups 2 wide",
                                  "depthwise m2 s2", "1x1 stride 2", "im2col 1 pixel out"])
def test_bwd_data_with_bias_is_conv_transpose(case):
    """conv2d_bwd_data(gy, w, b) is conv_transpose2d's forward, output size from the buffer
    (output_padding rows included)."""
    x, w, b, gy, attrs = draw(case)
    (sh, sw), (dh, dw), g = attrs["stride"], attrs["dilation"], attrs["groups"]
    O, KH, KW, _ = w.shape
    pt = pl = 1 if min(KH, KW) > 1 else 0
    attrs = dict(attrs, pad=(pt, pt, pl, pl))
    N, OH, OW, _ = gy.shape
    H = (OH - 1) * sh - 2 * pt + dh * (KH - 1) + 1 + (sh - 1)     # output_padding = stride - 1
    W = (OW - 1) * sw - 2 * pl + dw * (KW - 1) + 1 + (sw - 1)
    C = w.shape[3] * g
    bias = np.random.default_rng(seed_of(case) + 1).standard_normal(C)
    want = F.conv_transpose2d(torch.from_numpy(gy).permute(0, 3, 1, 2),
                              torch.from_numpy(w).permute(0, 3, 1, 2), torch.from_numpy(bias),
                              stride=(sh, sw), padding=(pt, pl),
                              output_padding=(sh - 1, sw - 1), groups=g, dilation=(dh, dw))
    got = run("conv2d_bwd_data", [gy, w, bias], (N, H, W, C), np.float64, attrs)
    np.testing.assert_allclose(got, want.permute(0, 2, 3, 1).numpy(), rtol=1e-10, atol=1e-10,
                               err_msg=f"seed {seed_of(case)}")


# ---------------------------------------------------------------- dense and bias_grad

@pytest.mark.parametrize("n, f, u", [(1, 7, 5), (37, 120, 84), (16, 512, 10), (5, 3, 130)])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_dense(n, f, u, bias):
    seed = n * 1000 + f * 10 + u
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, f))
    w = rng.standard_normal((u, f))
    b = rng.standard_normal(u) if bias else None
    gy = rng.standard_normal((n, u))
    want = ref.dense(x, w, b)
    f32 = np.float32
    got = run("dense", [x.astype(f32), w.astype(f32), None if b is None else b.astype(f32)],
              (n, u), f32)
    assert rel(got, want) < 1e-4, f"seed {seed}"
    tx = torch.from_numpy(x).requires_grad_(True)
    tw = torch.from_numpy(w).requires_grad_(True)
    F.linear(tx, tw, None if b is None else torch.from_numpy(b)).backward(torch.from_numpy(gy))
    y = run("dense", [x, w, b], (n, u), np.float64)
    gx = run("dense_bwd_data", [gy, w], x.shape, np.float64)
    gw = run("dense_bwd_weight", [x, gy], w.shape, np.float64)
    np.testing.assert_allclose(y, want, rtol=1e-10, atol=1e-10, err_msg=f"seed {seed}")
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-10, atol=1e-10, err_msg=f"seed {seed}")
    np.testing.assert_allclose(gw, tw.grad.numpy(), rtol=1e-10, atol=1e-10, err_msg=f"seed {seed}")


@pytest.mark.parametrize("shape", [(300, 7), (3, 5, 4, 6), (1, 1, 1, 1), (2, 9, 9, 130),
                                   (256, 28, 28, 6), (1000, 31), (999, 32), (37, 1), (5, 3, 16)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bias_grad(shape, dtype):
    gy = np.random.default_rng(len(shape)).standard_normal(shape).astype(dtype)
    got = run("bias_grad", [gy], shape[-1:], dtype)
    want = gy.astype(np.float64).reshape(-1, shape[-1]).sum(0)
    assert rel(got, want) < (1e-6 if dtype == np.float32 else 1e-13)


# ---------------------------------------------------------------- contract details

def test_dtypes_and_layout_errors_are_reported():
    x, w, b, gy, attrs = draw("im2col 3x3")
    with pytest.raises(ValueError, match="conv2d"):        # wrong output shape
        KERNELS["conv2d"]([x, w, b], [np.empty((1, 2, 3, 4))], attrs, None)
    with pytest.raises(ValueError, match="groups"):         # channels vs groups
        KERNELS["conv2d"]([x, w, b], [np.empty(gy.shape)], dict(attrs, groups=3), None)
    with pytest.raises(ValueError, match="bias"):
        KERNELS["conv2d"]([x, w, b[:-1]], [np.empty(gy.shape)], attrs, None)
    with pytest.raises(ValueError, match="dense"):
        KERNELS["dense"]([x[0, 0], w[:, 0, 0, :5], None], [np.empty((6, 3))], {}, None)


def test_empty_batch():
    x, w, b, gy, attrs = draw("im2col 3x3")
    for name in ("small-c 3x3 s1", "im2col 3x3", "depthwise m1"):
        x, w, b, gy, attrs = draw(name)
        x, gy = x[:0], gy[:0]
        assert run("conv2d", [x, w, b], gy.shape, np.float64, attrs).shape == gy.shape
        assert run("conv2d_bwd_data", [gy, w, None], x.shape, np.float64, attrs).shape == x.shape
        gw = run("conv2d_bwd_weight", [x, gy], w.shape, np.float64, attrs)
        assert not gw.any()


def test_non_contiguous_inputs_are_accepted():
    x, w, b, gy, attrs = draw("im2col 3x3")
    want = run("conv2d", [x, w, b], gy.shape, np.float64, attrs)
    xf = np.asfortranarray(x)
    wt = np.ascontiguousarray(w.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)
    np.testing.assert_array_equal(run("conv2d", [xf, wt, b], gy.shape, np.float64, attrs), want)


def test_every_method_is_covered(monkeypatch):
    """Every method the wrappers choose from runs in the cases above, in both dtypes."""
    names = {getattr(cv, n): n[3:].lower() for n in dir(cv) if n.startswith("_T_")}
    seen = set()
    run_tasks = cv._run

    def spy(kind, ntasks, dtype, geo=cv._NO_GEO, i0=0, i1=0, i2=0, **arrays):
        name = names[kind]
        if name.startswith("direct"):       # planar, or loops along channels / columns
            wide = arrays["Y4"].shape[3] >= cv._DIRECT_WIDE     # y or gy: O channels
            name += "/" + ("planar" if i2 else "wide" if wide else "columns")
        elif name == "fwd":
            name += "/shared-col" if arrays["U1"].size else "/own-col"
        elif name in ("implicit_fwd", "bwd_w_implicit"):
            name += "/stacked" if i2 else "/stride1" if geo[4] == geo[5] == 1 else "/strided"
        seen.add((name, np.dtype(dtype).name))
        return run_tasks(kind, ntasks, dtype, geo, i0, i1, i2, **arrays)

    monkeypatch.setattr(cv, "_run", spy)
    for case in IDS:
        x, w, b, gy, attrs = draw(case)
        for dtype in (np.float32, np.float64):
            xd, wd, gyd = x.astype(dtype), w.astype(dtype), gy.astype(dtype)
            run("conv2d", [xd, wd, None], gy.shape, dtype, attrs)
            run("conv2d_bwd_data", [gyd, wd, None], x.shape, dtype, attrs)
            run("conv2d_bwd_weight", [xd, gyd], w.shape, dtype, attrs)
    methods = {"pack", "fwd/own-col", "fwd/shared-col", "im2col", "colt", "fwd_t_gemm",
               "fwd_t_out", "implicit_fwd/stride1", "implicit_fwd/strided", "bwd_data",
               "bwd_w_chunk", "bwd_w_implicit/stride1", "bwd_w_implicit/strided",
               "bwd_w_implicit/stacked",
               "bwd_w_panel", "sum", "bwd_data_panel", "col2im"}
    methods |= {f"{k}/{order}" for k in ("direct_fwd", "direct_bwd_data", "direct_bwd_w")
                for order in ("planar", "wide", "columns")}
    missing = {(m, d) for m in methods for d in ("float32", "float64")} - seen
    assert not missing, f"methods never run: {sorted(missing)}"
    assert {m for m, _ in seen} <= methods, "a method this test does not know about"

