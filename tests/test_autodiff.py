"""Every op through the whole pipeline (lowering, vjp rules, kernels): gradients against
central differences in float64, and float32 programs against float64 ones.

Each case is a one- or two-op network; the loss is MSE against random targets, so the
gradient checked is J^T v for a random v, for the input and every parameter.
"""

from __future__ import annotations

import zlib
import numpy as np
import pytest

import netspec

CASES = {
    "conv_same_s2": ("2@7x6", "x -> conv(3, 3, stride=2, pad=same) -> out"),
    "conv_explicit_s2": ("2@7x7", "x -> conv(3, (3, 2), stride=2, pad=(1, 2)) -> out"),
    "conv_dilated": ("2@7x7", "x -> conv(2, 3, dilation=2, pad=1, bias=false) -> out"),
    "conv_grouped": ("4@5x5", "x -> conv(6, 3, groups=2) -> out"),
    "conv_stride_gt_kernel": ("2@8x8", "x -> conv(2, 2, stride=3) -> out"),
    "depthwise": ("3@6x6", "x -> depthwise_conv(3, stride=2, pad=same, multiplier=2) -> out"),
    "separable": ("3@5x5", "x -> separable_conv(4, 3, pad=same) -> out"),
    "conv_transpose_valid": ("3@3x3", "x -> conv_transpose(2, 3, stride=2) -> out"),
    "conv_transpose_same": ("3@3x4", "x -> conv_transpose(2, 3, stride=2, pad=same) -> out"),
    "conv_transpose_pad": ("2@3x3", "x -> conv_transpose(2, 3, stride=2, pad=1, output_padding=1) -> out"),
    "maxpool_pad": ("2@7x7", "x -> maxpool(3, stride=2, pad=1) -> out"),
    "maxpool_same": ("2@5x5", "x -> maxpool(2, pad=same) -> out"),
    "avgpool_exclude_pad": ("2@5x5", "x -> avgpool(3, stride=2, pad=same) -> out"),
    "avgpool_include_pad": ("2@5x5", "x -> avgpool(3, stride=2, pad=1, include_pad=true) -> out"),
    "global_avgpool": ("3@4x5", "x -> global_avgpool -> out"),
    "global_maxpool": ("3@4x5", "x -> global_maxpool -> out"),
    "batchnorm_map": ("3@4x4", "x -> batchnorm -> out"),
    "batchnorm_vec": ("5", "x -> batchnorm(center=false) -> out"),
    "lrn": ("6@3x3", "x -> lrn(size=3, alpha=0.5, beta=0.75, k=1.5) -> out"),
    "dense": ("5", "x -> dense(4) -> out"),
    "flatten": ("2@3x4", "x -> flatten -> dense(3) -> out"),
    "reshape_map": ("2@2x3", "x -> reshape((3, 2, 2)) -> conv(2, 1) -> out"),
    "reshape_vec_map": ("12", "x -> reshape((3, 2, 2)) -> out"),
    "add": ("3@4x4", "y = x -> conv(3, 1)\n out x + y"),
    "concat": ("2@3x3", "y = x -> conv(3, 1)\n out concat(x, y, x)"),
    "identity": ("4", "x -> identity -> dense(2) -> out"),
    "prelu": ("3@3x3", "x -> prelu -> out"),
    **{act: ("3@3x3", f"x -> {act} -> out")
       for act in ("relu", "relu6", "elu", "selu", "tanh", "sigmoid", "softmax")},
    "leaky_relu": ("3@3x3", "x -> leaky_relu(0.2) -> out"),
    "softmax_vec": ("6", "x -> softmax -> out"),
    "dropout": ("3@3x3", "x -> dropout(0.3) -> out"),
}


def build(case: str, dtype="float64", loss="mse", **kw):
    shape, body = CASES[case]
    text = f"network t() {{\n input x: {shape}\n {body}\n}}\n"
    net = netspec.loads(text, file=f"<{case}>")
    return net.compile(dtype=dtype, loss=loss, input_grads=True, **kw)


def _inputs(model, rng, batch):
    shape = model.network.graph.node("x").shape
    x = rng.uniform(-1.5, 1.5, (batch, *shape))
    out = next(iter(model.program.outputs))
    y = rng.normal(size=(batch, *model.network.graph.node(out).shape))
    return x, y


def _loss(model, x, y):
    model.executor.ctx.rng = np.random.default_rng(123)   # the same dropout mask every time
    return model.loss_and_grads(x, y)


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradients_match_central_differences(case):
    seed = zlib.crc32(case.encode()) % 2**16   # stable across processes (hash() of a str is not)
    rng = np.random.default_rng(seed)
    model = build(case)
    for name, p in model.params.items():
        if name.endswith(("running_mean", "running_var")):
            continue
        p[...] = rng.uniform(0.5, 1.5, p.shape) * rng.choice([-1, 1], p.shape)
    batch = 3
    x, y = _inputs(model, rng, batch)
    if case.startswith(("maxpool", "global_maxpool")):   # keep finite differences off ties
        x = rng.permutation(np.linspace(-1.5, 1.5, x.size)).reshape(x.shape)
    if case in ("relu", "relu6", "prelu", "leaky_relu"):    # and off the kinks
        x = np.where(np.abs(x) < 0.05, 0.3, x)
        x = np.where(np.abs(x - 6) < 0.05, 5.5, x)
    _, grads = _loss(model, x, y)
    grads = {k: np.array(v) for k, v in grads.items()}
    eps = 1e-6
    wrt = {"x": x, **{k: model.params[k] for k in grads if k != "x"}}
    assert set(grads) == set(wrt), f"seed {seed}"
    for name, arr in wrt.items():
        numeric = np.zeros(arr.shape)
        for i in range(arr.size):
            if name == "x":
                xp, xm = x.copy(), x.copy()
                xp.reshape(-1)[i] += eps
                xm.reshape(-1)[i] -= eps
                lp, lm = _loss(model, xp, y)[0], _loss(model, xm, y)[0]
            else:
                p = model.params[name]
                idx = np.unravel_index(i, p.shape)
                old = p[idx]
                p[idx] = old + eps
                lp = _loss(model, x, y)[0]
                p[idx] = old - eps
                lm = _loss(model, x, y)[0]
                p[idx] = old
            numeric.reshape(-1)[i] = (lp - lm) / (2 * eps)
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-3, atol=1e-5,
                                   err_msg=f"{case}: gradient of {name} (seed {seed})")


@pytest.mark.parametrize("case", sorted(CASES))
def test_float32_program_matches_float64(case):
    rng = np.random.default_rng(7)
    m64 = build(case, "float64")
    m32 = build(case, "float32")
    for name, p in m64.params.items():
        if not name.endswith(("running_mean", "running_var")):
            p[...] = rng.uniform(-1, 1, p.shape)
        m32.params[name][...] = p
    x, y = _inputs(m64, rng, 2)
    out64, out32 = m64(x), m32(x.astype(np.float32))
    assert out32.dtype == np.float32
    rel = np.linalg.norm(out32 - out64) / np.linalg.norm(out64)
    assert rel < 1e-5, f"{case}: forward relative error {rel:.2e}"
    m64.executor.ctx.rng = np.random.default_rng(1)
    m32.executor.ctx.rng = np.random.default_rng(1)
    l64, g64 = m64.loss_and_grads(x, y)
    l32, g32 = m32.loss_and_grads(x.astype(np.float32), y.astype(np.float32), check=True)
    if case == "dropout":   # each dtype draws its mask in its own precision: different masks
        return
    assert abs(l32 - l64) <= 1e-5 * max(1.0, abs(l64))
    for name in g64:
        denom = max(np.linalg.norm(g64[name]), 1e-12)
        rel = np.linalg.norm(g32[name] - g64[name]) / denom
        assert rel < 1e-4, f"{case}: gradient of {name} relative error {rel:.2e}"
