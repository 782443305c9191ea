"""The fuse pass and its generated kernels (runtime/cpu/fused.py).

Kernels: every kind of step (adds, each activation, avg and max pools) forward and
backward against float64 NumPy and against the unfused CPU kernels (maxpool ties), both
dtypes, written in place where the memory planner may ask for it. The pass: which groups
it makes on the specs, and that it keeps names. That no spec's outputs or gradients change
is test_passes.py's every-spec comparison (fuse is a default pass).
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import netspec
from netspec.runtime.cpu import KERNELS, Context
from reference import other as activation_ref    # the float64 references, by instruction

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    return Context(kernel_dir=tmp_path_factory.mktemp("kernels"))


def _act64(name, v, alpha):
    """The activation's float64 reference (netspec/ops/reference/activation.py, by the ISA's
    name: tests/reference/other.py), with the step's alpha where the activation takes one."""
    f = getattr(activation_ref, name)
    return f(v, alpha) if "alpha" in inspect.signature(f).parameters else f(v)


def _dact64(name, v, alpha):
    """d act / dx at x = v, by float64 central differences (independent of the kernels'
    formulas in terms of the output)."""
    h = 1e-6
    return (_act64(name, v + h, alpha) - _act64(name, v - h, alpha)) / (2 * h)


def _reference(steps, x, extras):
    """Forward in float64: (the pool's input, after the activation; the output), and a
    function gx(gy) for the backward."""
    v = x.astype(np.float64)
    for e in extras:
        v = v + e
    pre = v
    at = next((i for i, s in enumerate(steps) if s[0] in ("avgpool", "maxpool")), len(steps))
    pool = steps[at] if at < len(steps) else None
    act = next((s for s in steps[:at] if s[0] != "add"), None)
    after = steps[at + 1] if at + 1 < len(steps) else None
    if act:
        v = _act64(act[0], pre, act[1])
    a = v
    if pool:
        kind, kh, kw = pool
        n, h, w, c = a.shape
        win = a.reshape(n, h // kh, kh, w // kw, kw, c)
        pooled = win.mean(axis=(2, 4)) if kind == "avgpool" else win.max(axis=(2, 4))
    else:
        pooled = a
    y = _act64(after[0], pooled, after[1]) if after else pooled

    def grad(gy):
        g = gy.astype(np.float64)
        if after:
            g = g * _dact64(after[0], pooled, after[1])
        if pool:
            kind, kh, kw = pool
            if kind == "avgpool":
                g = np.repeat(np.repeat(g, kh, 1), kw, 2) / (kh * kw)
            else:   # the first maximum of each window (row-major) gets it
                n, h, w, c = a.shape
                win = a.reshape(n, h // kh, kh, w // kw, kw, c).transpose(0, 1, 3, 5, 2, 4)
                flat = win.reshape(*win.shape[:4], kh * kw)
                first = flat.argmax(axis=-1)
                onehot = np.eye(kh * kw)[first] * g[..., None]
                g = onehot.reshape(*win.shape).transpose(0, 1, 4, 2, 5, 3).reshape(a.shape)
        if act:
            g = g * _dact64(act[0], pre, act[1])
        return g
    return a, y, grad


CASES = [
    (("add",), ("relu", 0.0)),
    (("add",), ("add",), ("leaky_relu", 0.1)),
    (("elu", 1.0),),
    (("selu", 0.0),),
    (("sigmoid", 0.0),),
    (("relu6", 0.0),),
    (("tanh", 0.0), ("avgpool", 2, 2)),
    (("add",), ("relu", 0.0), ("maxpool", 2, 2)),
    (("avgpool", 3, 3),),
    (("add",), ("elu", 0.5), ("avgpool", 1, 2)),
    (("sigmoid", 0.0), ("maxpool", 2, 1)),
    (("tanh", 0.0), ("avgpool", 2, 2), ("tanh", 0.0)),          # LeNet-5's c1 + s2 + tanh
    (("add",), ("relu", 0.0), ("maxpool", 2, 2), ("elu", 0.3)),
    (("maxpool", 2, 2), ("leaky_relu", 0.2)),
]


# each case compiles its own generated kernels (6-7 s): the first three in float32 are quick,
# the rest of the sweep slow
@pytest.mark.parametrize("dtype, steps", [
    pytest.param(dtype, steps, id="_".join(str(p[0]) for p in steps) + f"-{dtype}",
                 marks=() if dtype == "float32" and i < 3 else pytest.mark.slow)
    for dtype in ("float32", "float64") for i, steps in enumerate(CASES)])
def test_fused_map_forward_and_backward_against_float64(steps, dtype, ctx):
    rng = np.random.default_rng(len(steps))
    shape = (3, 6, 12, 5)   # W * C = 60: blocks and remainders in the vector loops
    x = rng.standard_normal(shape).astype(dtype)
    extras = [rng.standard_normal(shape).astype(dtype) for s in steps if s[0] == "add"]
    a64, y64, grad = _reference(steps, x, extras)
    pooled = any(s[0] in ("avgpool", "maxpool") for s in steps)
    y = np.empty(y64.shape, dtype)
    saved = np.empty(shape, dtype) if pooled else None
    KERNELS["fused_map"]([x, *extras], [y] + ([saved] if pooled else []), {"steps": steps}, ctx)
    tol = dict(rtol=2e-6, atol=2e-6) if dtype == "float32" else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y, y64, **tol)
    if pooled:
        np.testing.assert_allclose(saved, a64, **tol)
    gy = rng.standard_normal(y64.shape).astype(dtype)
    gx, gb = np.empty(shape, dtype), np.empty(shape[-1], dtype)
    at = next((i for i, s in enumerate(steps) if s[0] in ("avgpool", "maxpool")), len(steps))
    has_act = any(s[0] != "add" for s in steps[:at])    # an activation before the pool
    a = saved if pooled else y
    if pooled and not has_act and any(s[0] == "avgpool" for s in steps):
        a = None
    after = at < len(steps) - 1
    KERNELS["fused_map_bwd"]([gy, a] + ([y] if after else []), [gx, gb], {"steps": steps}, ctx)
    gx64 = grad(gy)
    dtol = dict(rtol=1e-5, atol=1e-5) if dtype == "float32" else dict(rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(gx, gx64, **dtol)
    np.testing.assert_allclose(gb, gx64.sum(axis=(0, 1, 2)), **dtol)


@pytest.mark.parametrize("steps", [CASES[0], CASES[1], CASES[2]], ids=["add_relu", "add2", "elu"])
def test_fused_map_in_place(steps, ctx):
    """The planner may give y the buffer of x (forward) and gx that of gy (backward)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 40, 40, 24)).astype(np.float32)   # above the parallel size
    extras = [rng.standard_normal(x.shape).astype(np.float32) for s in steps if s[0] == "add"]
    y = np.empty_like(x)
    KERNELS["fused_map"]([x, *extras], [y], {"steps": steps}, ctx)
    inplace = x.copy()
    KERNELS["fused_map"]([inplace, *extras], [inplace], {"steps": steps}, ctx)
    np.testing.assert_array_equal(inplace, y)
    gy = rng.standard_normal(x.shape).astype(np.float32)
    gx, gb = np.empty_like(x), np.empty(x.shape[-1], np.float32)
    KERNELS["fused_map_bwd"]([gy, y], [gx, gb], {"steps": steps}, ctx)
    shared, gb2 = gy.copy(), np.empty_like(gb)
    KERNELS["fused_map_bwd"]([shared, y], [shared, gb2], {"steps": steps}, ctx)
    np.testing.assert_array_equal(shared, gx)
    np.testing.assert_allclose(gb2, gb, rtol=1e-6)


def test_maxpool_ties_match_the_unfused_kernels(ctx):
    """relu then maxpool: relu's zeros tie in every window; the unfused kernels (maxpool2d's
    argmax, relu_bwd) are the reference."""
    rng = np.random.default_rng(3)
    x = np.round(rng.standard_normal((2, 8, 8, 3)), 0).astype(np.float32)   # many ties
    steps = (("relu", 0.0), ("maxpool", 2, 2))
    y, a = np.empty((2, 4, 4, 3), np.float32), np.empty_like(x)
    KERNELS["fused_map"]([x], [y, a], {"steps": steps}, ctx)
    r, ry, am = np.empty_like(x), np.empty_like(y), np.empty(y.shape, np.int32)
    pool = {"kernel": (2, 2), "stride": (2, 2), "pad": (0, 0, 0, 0)}
    KERNELS["relu"]([x], [r], {}, ctx)
    KERNELS["maxpool2d"]([r], [ry, am], pool, ctx)
    np.testing.assert_array_equal(y, ry)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    gx = np.empty_like(x)
    KERNELS["fused_map_bwd"]([gy, a], [gx], {"steps": steps}, ctx)
    gr, ref = np.empty_like(x), np.empty_like(x)
    KERNELS["maxpool2d_bwd"]([gy, am], [gr], pool, ctx)
    KERNELS["relu_bwd"]([gr, r], [ref], {}, ctx)
    np.testing.assert_array_equal(gx, ref)


# activations whose derivative reads their input (the ISA's grad_reads "x"): fused_map applies
# them (inference groups), fused_map_bwd refuses them
FORWARD_ONLY = [
    (("silu", 0.0),),
    (("add",), ("gelu", 0.0), ("maxpool", 2, 2), ("hardsigmoid", 0.0)),
    (("hardswish", 0.0), ("avgpool", 2, 2), ("gelu_tanh", 0.0)),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("steps", FORWARD_ONLY, ids=lambda s: "_".join(str(p[0]) for p in s))
def test_activations_read_from_x_fuse_forward_and_their_backward_is_refused(steps, dtype, ctx):
    rng = np.random.default_rng(len(steps))
    shape = (2, 4, 6, 3)
    x = (3 * rng.standard_normal(shape)).astype(dtype)       # past hardswish's kinks at +-3
    extras = [rng.standard_normal(shape).astype(dtype) for s in steps if s[0] == "add"]
    _, y64, _ = _reference(steps, x, extras)
    y = np.empty(y64.shape, dtype)
    KERNELS["fused_map"]([x, *extras], [y], {"steps": steps}, ctx)
    tol = dict(rtol=2e-6, atol=2e-6) if dtype == "float32" else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y, y64, **tol)
    gy = np.ones_like(y)
    with pytest.raises(ValueError, match="reads its input, which a fused group does not keep"):
        KERNELS["fused_map_bwd"]([gy, x, y], [np.empty_like(x)], {"steps": steps}, ctx)


def test_a_pool_that_does_not_tile_is_refused(ctx):
    x = np.zeros((1, 5, 4, 2), np.float32)
    with pytest.raises(ValueError, match="does not pool by 2x2"):
        KERNELS["fused_map"]([x], [np.empty((1, 2, 2, 2), np.float32)],
                             {"steps": (("avgpool", 2, 2),)}, ctx)


# ---------------------------------------------------------------- the pass

def _fusions(program, phase):
    return next(r for r in program.pass_records[phase] if r.name == "fuse").changes


def test_lenet5_fuses_conv_tanh_and_pool():
    prog = netspec.load(ROOT / "specs/lenet5.net", classes=10).program()
    expected = ["fused c1 + c1_tanh + s2 + tanh1 (conv+tanh+avgpool+tanh)",
                "fused c3 + c3_tanh + s4 + tanh2 (conv+tanh+avgpool+tanh)",
                "fused c5 + c5_tanh (conv+tanh)", "fused f6 + f6_tanh (dense+tanh)"]
    assert _fusions(prog, "infer") == expected and _fusions(prog, "train") == expected
    kernels = [i.kernel for i in prog.phases["train"].instrs]
    # the backward sums the conv biases' gradients in the fused kernel
    assert kernels.count("fused_map_bwd") == 4 and kernels.count("bias_grad") == 1   # output's
    assert "tanh" not in kernels and "avgpool2d" not in kernels
    # parameters keep the layers' names
    assert {"c1.weight", "c1.bias", "f6.weight"} <= set(prog.params)
    assert set(prog.grads) == {f"{n}.{p}" for n in ("c1", "c3", "c5", "f6", "output") for p in ("weight", "bias")}


@pytest.mark.parametrize("pool, size, fused", [
    ("maxpool(2, ceil=true)", 4, True),          # tiles: ceil mode adds no window
    ("avgpool(2, ceil=true)", 5, False),         # a last window of one row: not a tile
    ("maxpool(2, dilation=2)", 4, False),        # taps 2 apart: the windows interleave
    ("maxpool(2, stride=2, dilation=1)", 4, True),
])
def test_only_pools_that_tile_their_input_join_a_group(pool, size, fused):
    net = netspec.loads(f"network n() {{\n input x: 2@{size}x{size}\n"
                        f" x -> conv(2, 1, act=relu) -> {pool} -> out\n}}")
    changes = _fusions(net.program(), "infer")
    kind = pool.split("(")[0]
    assert changes == [f"fused conv1 + conv1_relu + {kind}1 (conv+relu+{kind})" if fused
                       else "fused conv1 + conv1_relu (conv+relu)"]


def test_resnet34_fuses_its_convs_relus_and_residual_adds():
    prog = netspec.load(ROOT / "specs/resnet34.net", classes=10).program()
    infer = [c.rsplit("(", 1)[1] for c in _fusions(prog, "infer")]
    train = [c.rsplit("(", 1)[1] for c in _fusions(prog, "train")]
    # inference (batch norms folded): the stem and the first conv of each of the 16 blocks
    # with their relu; each block's second conv with the residual add and the relu
    assert infer.count("conv+relu)") == 17 and infer.count("conv+add+relu)") == 16 and len(infer) == 33
    # training keeps the batch norms (batch statistics), so only add + relu fuse
    assert train == ["add+relu)"] * 16
    assert [i.kernel for i in prog.phases["infer"].instrs].count("add") == 0


def test_activations_read_from_x_fuse_for_inference_only():
    """silu, gelu, hardswish, hardsigmoid: their backward reads their input, which a fused
    group does not keep, so training leaves them unfused (the fused backward kernel reads the
    activation's output); inference fuses them. Both programs compute what the unfused do."""
    spec = """network n() {
    input x: 3@6x6
    x -> conv(4, 3, pad=same, act=silu) -> maxpool(2) -> gelu(tanh)
      -> conv(4, 1, act=hardswish) -> hardsigmoid -> flatten -> dense(3, act=gelu) -> out
}"""
    net = netspec.loads(spec)
    prog = net.program()
    assert _fusions(prog, "infer") == [
        "fused conv1 + conv1_silu + maxpool1 + gelu1 (conv+silu+maxpool+gelu)",
        "fused conv2 + conv2_hardswish (conv+hardswish)", "fused dense1 + dense1_gelu (dense+gelu)"]
    assert _fusions(prog, "train") == []
    steps = [i.attrs["steps"] for i in prog.phases["infer"].instrs if i.kernel == "fused_map"]
    assert steps[0] == (("silu", 0.0), ("maxpool", 2, 2), ("gelu_tanh", 0.0))
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    t = rng.standard_normal((2, 3)).astype(np.float32)
    fused, plain = net.compile(seed=1), net.compile(seed=1, passes=[])
    np.testing.assert_allclose(fused.predict(x), plain.predict(x), rtol=1e-5, atol=1e-6)
    (loss, grads), (want_loss, want) = fused.loss_and_grads(x, t), plain.loss_and_grads(x, t)
    assert loss == pytest.approx(want_loss, rel=1e-6)
    for name, g in want.items():
        np.testing.assert_allclose(grads[name], g, rtol=1e-5, atol=1e-6, err_msg=name)


def test_generated_kernels_are_files_named_by_pattern_listing_their_layers(tmp_path):
    net = netspec.load(ROOT / "specs/lenet5.net", classes=10)
    model = net.compile(kernel_dir=tmp_path)
    x = np.random.default_rng(0).standard_normal((2, 1, 32, 32)).astype(np.float32)
    model.predict(x)
    files = sorted(p.name for p in (tmp_path / "lenet5").iterdir() if p.suffix == ".py")
    assert files == ["fused_tanh.py", "fused_tanh_avgpool2x2_tanh.py"]
    text = (tmp_path / "lenet5" / "fused_tanh_avgpool2x2_tanh.py").read_text()
    assert "tanh1, tanh2" in text and "v = act(v, alpha)" in text and "def backward(" in text
    compile(text, "fused_tanh_avgpool2x2_tanh.py", "exec")   # plain Python


@pytest.mark.slow
def test_numba_caches_a_generated_kernel_across_processes(tmp_path):
    """Compiled from a file, a generated kernel is in Numba's on-disk cache: a second
    process loads it instead of compiling."""
    code = f"""
import numpy as np, netspec
from netspec.runtime.cpu import KERNELS
net = netspec.load({str(ROOT / 'specs/lenet5.net')!r}, classes=10)
model = net.compile(training=False, kernel_dir={str(tmp_path / 'k')!r}, warmup=False)
model.predict(np.zeros((2, 1, 32, 32), np.float32))
mod = model.executor.ctx.generated[(("tanh",), ("avgpool", 2, 2), ("tanh",))]
print(sum(mod.forward.stats.cache_hits.values()), sum(mod.forward.stats.cache_misses.values()))
"""
    env = {**__import__("os").environ, "NETSPEC_CACHE_DIR": str(tmp_path / "cache")}
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                           check=True).stdout.split() for _ in range(2)]
    assert runs[0] == ["0", "1"] and runs[1] == ["1", "0"]


def test_compile_writes_the_generated_kernels_into_the_build_folder(tmp_path):
    from netspec.cli import main
    assert main(["compile", str(ROOT / "specs/resnet34.net"), "-o", str(tmp_path / "b")]) == 0
    kernels = sorted(p.name for p in (tmp_path / "b" / "kernels").iterdir())
    assert kernels == ["fused_add_relu.py", "fused_relu.py"]
    assert "residual16/relu1" in (tmp_path / "b" / "kernels" / "fused_add_relu.py").read_text()
