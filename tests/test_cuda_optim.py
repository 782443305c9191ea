"""netspec.runtime.cuda.optim against netspec.runtime.optim (the NumPy optimizers, which
tests/test_optim.py checks against torch.optim): parameters, slots and step counts after
several steps with frozen parameters, penalties and clipping, checkpoints moved between the
targets, the launches a step makes, and every kernel compiled to PTX for sm_90.

Under numba-cuda's simulator (no GPU) every kernel operation is a NumPy scalar operation of
the same dtype and order as the CPU's array operations, so the results are bit-identical.
On a GPU, NVVM may contract a multiply and an add into one fused multiply-add (one rounding
instead of two): float32 then agrees to a few ulps, float64 to 1e-12.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numba import config, cuda

from netspec.runtime import optim
from netspec.runtime.cuda import launch
from netspec.runtime.cuda import optim as device
from test_optim import CASE_IDS, SHAPES, TORCH_CASES, _grads, _params

CASES = [(name, kw) for name, kw, _ in TORCH_CASES]       # every optimizer, its variants, both lerp formulas
TOLERANCE = {np.float64: 1e-12, np.float32: 1e-6}


def assert_same(got, want, dtype, what):
    """Equal bits under the simulator; on a GPU within the tolerance its fused multiply-adds need."""
    assert got.dtype == want.dtype and got.shape == want.shape, what
    if config.ENABLE_CUDASIM:
        assert np.array_equal(got, want, equal_nan=True), what
    else:
        np.testing.assert_allclose(got, want, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype], err_msg=what)


def on_device(arrays: dict) -> dict:
    return {k: cuda.to_device(v) for k, v in arrays.items()}


def on_host(arrays: dict) -> dict:
    return {k: v.copy_to_host() for k, v in arrays.items()}


def grad_sequence(dtype, steps, seed=1):
    """Gradients per step: d.weight frozen for the first two steps, c1.bias for steps 2 and 3."""
    rng = np.random.default_rng(seed)
    return [_grads(rng, dtype, [k for k in SHAPES if not (k == "d.weight" and i < 2)
                                and not (k == "c1.bias" and 2 <= i < 4)]) for i in range(steps)]


def assert_same_state(dev, cpu, dev_params, cpu_params, dtype):
    assert dev.t == cpu.t
    for k in cpu_params:
        assert_same(dev_params[k].copy_to_host(), cpu_params[k], dtype, k)
    got, want = dev.state_arrays(), cpu.state_arrays()
    assert list(got) == list(want)
    for k in want:
        assert isinstance(got[k], np.ndarray), k
        assert_same(got[k], want[k], dtype, k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name, kw", CASES, ids=CASE_IDS)
def test_steps_give_the_cpu_optimizers_parameters_and_state(name, kw, dtype):
    cpu_params = _params(dtype)
    dev_params = on_device(cpu_params)
    cpu = optim.make_optimizer(name, cpu_params, **kw)
    dev = device.make_optimizer(name, dev_params, **kw)
    lrs = np.random.default_rng(2).uniform(0.001, 0.1, size=5)
    for grads, lr in zip(grad_sequence(dtype, 5), lrs):
        cpu.step(grads, lr)
        dev.step(on_device(grads), lr)
    assert_same_state(dev, cpu, dev_params, cpu_params, dtype)
    assert not np.allclose(cpu_params["d.weight"], _params(dtype)["d.weight"]), "the parameters moved"


def host_copy(arrays: dict) -> dict:
    """Host arrays of either target's arrays."""
    return {k: v.copy() if isinstance(v, np.ndarray) else v.copy_to_host() for k, v in arrays.items()}


@pytest.mark.parametrize("first, then", [("cpu", "cuda"), ("cuda", "cpu")])
@pytest.mark.parametrize("name", ["momentum", "rmsprop", "nadam"])
def test_state_saved_on_one_target_continues_on_the_other(name, first, then):
    """Three steps on one target, its weights and state_arrays loaded into the other, three more
    there: the weights and state of six steps on the CPU."""
    makers = {"cpu": lambda p: optim.make_optimizer(name, p),
              "cuda": lambda p: device.make_optimizer(name, on_device(p))}
    grads, lrs = grad_sequence(np.float64, 6, seed=3), [0.05, 0.02, 0.04, 0.03, 0.01, 0.06]

    def run(opt, steps):
        for i in steps:
            opt.step(on_device(grads[i]) if isinstance(opt, device.DeviceOptimizer) else grads[i], lrs[i])

    straight = optim.make_optimizer(name, _params(np.float64))
    run(straight, range(6))
    a = makers[first](_params(np.float64))
    run(a, range(3))
    b = makers[then](host_copy(a.params))
    b.load_state(a.state_arrays(), a.t)
    run(b, range(3, 6))
    assert b.t == straight.t == 6
    got = host_copy(b.params)
    for k in straight.params:
        assert_same(got[k], straight.params[k], np.float64, k)
    got_state, want_state = b.state_arrays(), straight.state_arrays()
    assert list(got_state) == list(want_state)
    for k in want_state:
        assert_same(got_state[k], want_state[k], np.float64, k)


class CountingRunner(launch.Runner):
    """Runs the kernels and counts the launches of each."""

    def __init__(self):
        self.launches = {}

    def launch(self, kernel, n, *args):
        name = kernel.py_func.__name__
        self.launches[name] = self.launches.get(name, 0) + 1
        super().launch(kernel, n, *args)


@pytest.fixture
def counting(monkeypatch):
    runner = CountingRunner()
    monkeypatch.setattr(launch, "RUNNER", runner)
    return runner


def views_of_one_buffer(arrays: dict) -> dict:
    """The arrays as consecutive views of one device allocation, in order (as an arena gives them)."""
    buffer = cuda.to_device(np.concatenate([a.reshape(-1) for a in arrays.values()]))
    views, start = {}, 0
    for k, a in arrays.items():
        views[k] = buffer[start:start + a.size].reshape(*a.shape)
        start += a.size
    return views


@pytest.mark.parametrize("name", ["nesterov", "adam"])
def test_consecutive_views_of_one_buffer_are_one_launch(name, counting):
    cpu_params = _params(np.float32)
    dev_params = views_of_one_buffer(cpu_params)
    cpu = optim.make_optimizer(name, cpu_params)
    dev = device.make_optimizer(name, dev_params)
    rng = np.random.default_rng(4)
    kernel = {"nesterov": "_momentum", "adam": "_adam"}[name]
    for i in range(4):
        # step 1: c1.bias (second of four) frozen: two runs; after it, its step count lags
        # adam's others (another bias correction: three launches), not momentum's (one)
        keys = [k for k in SHAPES if not (k == "c1.bias" and i == 1)]
        grads = _grads(rng, np.float32, keys)
        cpu.step(grads, 0.05)
        dev.step(views_of_one_buffer(grads), 0.05)
        launches = 2 if i == 1 else (3 if name == "adam" and i > 1 else 1)
        assert counting.launches.pop(kernel) == launches, f"step {i}"
    assert_same_state(dev, cpu, dev_params, cpu_params, np.float32)


def test_separate_allocations_are_a_launch_each(counting):
    dev = device.make_optimizer("adagrad", on_device(_params(np.float64)))
    dev.step(on_device(_grads(np.random.default_rng(5), np.float64)), 0.1)
    assert counting.launches == {"_accumulated_root": len(SHAPES)}


# ---------------------------------------------------------------------------------------------
# penalties and clipping
# ---------------------------------------------------------------------------------------------

def with_zeros(dtype, seed):
    """Parameters with some exact zeros (sign(0) = 0) and a large value."""
    params = _params(dtype, seed)
    params["c1.weight"].reshape(-1)[::5] = 0
    params["d.bias"][0] = 1e3
    return params


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("l1, l2", [(0.01, 0.0), (0.0, 0.02), (0.03, 0.05), (0.0, 0.0)])
def test_penalty_and_its_gradients(l1, l2, dtype):
    params = with_zeros(dtype, 6)
    want = optim.penalty(params, l1, l2)
    got = device.penalty(on_device(params), l1, l2)
    # float64 sums in another order (pairwise in NumPy, per thread and tree here)
    assert got == pytest.approx(want, rel=1e-13, abs=0)
    assert device.penalty(on_device(params), l1, l2) == got, "deterministic"
    grads = _grads(np.random.default_rng(7), dtype, ["c1.weight", "d.weight", "d.bias"])    # c1.bias frozen
    dev_grads = on_device(grads)
    optim.add_penalty_grads(grads, params, l1, l2)
    device.add_penalty_grads(dev_grads, on_device(params), l1, l2)
    assert dev_grads.keys() == grads.keys()
    for k in grads:
        assert_same(dev_grads[k].copy_to_host(), grads[k], dtype, k)


def test_penalty_checks_its_weights():
    with pytest.raises(ValueError, match="l1"):
        device.penalty(on_device(_params(np.float64)), -1.0, 0.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_clip_by_value(dtype):
    grads = _grads(np.random.default_rng(8), dtype)
    grads["d.bias"][0] = np.nan
    dev_grads = on_device(grads)
    optim.clip_by_value(grads, 0.7)
    device.clip_by_value(dev_grads, 0.7)
    for k in grads:
        assert_same(dev_grads[k].copy_to_host(), grads[k], dtype, k)
    with pytest.raises(ValueError, match="clip value must be > 0"):
        device.clip_by_value(dev_grads, 0.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_by_global_norm(max_norm, dtype):
    grads = _grads(np.random.default_rng(9), dtype)
    dev_grads = on_device(grads)
    want = optim.clip_by_global_norm(grads, max_norm)
    got = device.clip_by_global_norm(dev_grads, max_norm)
    assert got == pytest.approx(want, rel=1e-14, abs=0)
    for k in grads:        # the coefficient from a norm a few float64 ulps apart: the same in float32
        np.testing.assert_allclose(dev_grads[k].copy_to_host(), grads[k], rtol=1e-13 if dtype == np.float64 else 1e-6)


def test_clip_by_global_norm_leaves_a_non_finite_norm_alone():
    grads = _grads(np.random.default_rng(10), np.float64)
    grads["d.weight"][0, 0] = np.inf
    dev_grads = on_device(grads)
    assert device.clip_by_global_norm(dev_grads, 1.0) == np.inf
    for k in grads:
        assert np.array_equal(dev_grads[k].copy_to_host(), grads[k])


# ---------------------------------------------------------------------------------------------
# errors: the CPU's checks, and the device's own
# ---------------------------------------------------------------------------------------------

def test_errors():
    with pytest.raises(ValueError, match="beta1 must be a number >= 0 and < 1"):
        device.make_optimizer("adam", on_device(_params(np.float64)), beta1=1.0)
    with pytest.raises(ValueError, match="unknown optimizer"):
        device.make_optimizer("adamw", {})
    with pytest.raises(ValueError, match="float32 or float64"):
        device.make_optimizer("sgd", {"w": cuda.to_device(np.zeros(3, np.int32))})
    dev = device.make_optimizer("adam", on_device(_params(np.float64)))
    with pytest.raises(ValueError, match="'d.bias' is float32, parameter is float64"):
        dev.step({"d.bias": cuda.to_device(np.zeros(1, np.float32))}, 0.1)
    with pytest.raises(ValueError, match="unknown parameter"):
        dev.step({"x": cuda.to_device(np.zeros(1))}, 0.1)
    good = dev.state_arrays()
    bad = {**{k: np.ones_like(v) for k, v in good.items()}, "d.bias.exp_avg": np.zeros(5)}
    with pytest.raises(ValueError, match=r"'d.bias.exp_avg' has shape \(5,\), expected \(1,\)"):
        dev.load_state(bad, 4)
    assert dev.t == 0 and all(np.array_equal(v, good[k]) for k, v in dev.state_arrays().items())


# ---------------------------------------------------------------------------------------------
# PTX for sm_90, without a GPU
# ---------------------------------------------------------------------------------------------

COMPILE_EVERY_OPTIMIZER = """
import json
import numpy as np
from netspec.runtime.cuda import optim as device
from netspec.testing.cuda_launches import compile_only, launched_by
import test_cuda_optim as T

with compile_only() as runner:
    for name, kw in T.CASES:
        for dtype in (np.float32, np.float64):
            runner.instruction = name
            params = T._params(dtype)
            opt = device.make_optimizer(name, params, **kw)
            opt.step(T._grads(np.random.default_rng(0), dtype), 0.1)
            runner.instruction = "penalties and clipping"
            device.add_penalty_grads(T._grads(np.random.default_rng(0), dtype), params, 0.1, 0.2)
            device.penalty(params, 0.1, 0.2)
            device.clip_by_value(params, 1.0)
            device.clip_by_global_norm(params, 0.01)
launches = list(runner.launches.values())
kernels = sorted(k for k, v in vars(device).items() if hasattr(v, "py_func") and not getattr(
    v, "targetoptions", {}).get("device"))
print(json.dumps({"launched": launched_by(launches), "kernels": kernels, "compiled": len(launches),
                  "sm_90": sum(".target sm_90" in done.ptx for done in launches)}))
"""


@pytest.mark.slow
def test_every_optimizer_kernel_compiles_to_ptx_for_sm90():
    done = subprocess.run([sys.executable, "-c", COMPILE_EVERY_OPTIMIZER], cwd=Path(__file__).parent,
                          env={**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.splitlines()[-1])
    launched = report["launched"]
    assert launched["sgd"] == ["_momentum", "_sgd"]
    assert launched["momentum"] == launched["nesterov"] == ["_momentum"]
    assert launched["adagrad"] == launched["rmsprop"] == ["_accumulated_root"]
    assert launched["adam"] == ["_adam"] and launched["nadam"] == ["_nadam"]
    assert launched["penalties and clipping"] == ["_add_penalty_grad", "_block_sums", "_clamp", "_scale"]
    assert sorted(set().union(*map(set, launched.values()))) == report["kernels"]
    assert report["compiled"] == report["sm_90"] >= 2 * len(report["kernels"])     # float32 and float64
