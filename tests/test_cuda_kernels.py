"""The CUDA target's kernels (runtime/cuda/) against the CPU target's, on every call the op
cases make: each op case (tests/test_op_cases.py) runs on the CPU target in float32 and
float64, inference and a training step, recording every kernel call with its inputs; each
call of an instruction the CUDA target has is replayed there on device copies of those
inputs, and its outputs must equal the CPU kernel's (float64: to 1e-12; float32: to the
rounding of formulas written independently, 2e-6). Every in-place rule of the CUDA kernels
is replayed too, and must give the bits of separate outputs.

The fused kernels are also replayed on every family of steps (FUSED_FAMILIES), beyond the
groups the op cases' fuse pass makes.

Without a GPU (CI) this runs under numba-cuda's simulator (tests/conftest.py). The CUDA
target has every instruction; it joins the op-case suite itself once the executor keeps
buffers on the device (issue 15).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from numba import cuda

from netspec.runtime.cpu import KERNELS as CPU, Context
from netspec.runtime.cuda import KERNELS as CUDA, TABLE
from netspec.runtime.fused_steps import pattern, split
from netspec.runtime.isa import KERNELS as ISA
from netspec.testing.cuda_launches import outputs_of
from test_op_cases import (SAMPLES, compiled, draw_inputs, draw_params, draw_targets, infer_checked,
                           recorded_calls, seed_of, set_params, train_step)

TOLERANCE = {"float64": 1e-12, "float32": 2e-6}


def poisoned(shape, dtype) -> np.ndarray:
    """An output buffer whose every element a kernel must overwrite: NaN, or the least int."""
    dtype = np.dtype(dtype)
    return np.full(shape, np.nan if dtype.kind == "f" else np.iinfo(dtype).min, dtype)


def cpu_calls(op, case, dtype):
    """(the case's CPU model, every kernel call its inference and training step make)."""
    model = compiled(op, case, "cpu", dtype)
    rng = np.random.default_rng(seed_of(op, case))
    set_params(model, draw_params(op, case, rng))
    xs = draw_inputs(op, case, rng)
    targets = draw_targets(model, case, rng)
    return model, recorded_calls(model, lambda: (infer_checked(model, xs), train_step(model, xs, targets)))


def every_call(dtypes=("float32", "float64"), ops=None):
    """Every kernel call every op case (of the ops named in `ops`, if given) makes on the CPU
    target, in each dtype: what the CUDA kernels are compiled for (tools/cuda_registers.py too)."""
    for param in SAMPLES:
        op, case = param.values
        if ops is not None and op.name not in ops:
            continue
        for dtype in dtypes:
            yield from cpu_calls(op, case, dtype)[1]
    if ops is None or "fused" in ops:
        for steps, shape in FUSED_FAMILIES:
            for dtype in dtypes:
                yield from fused_calls(steps, shape, dtype)


def on_cpu(executor, name):
    """Runs the call on the CPU kernels of `executor` (kernels, ctx): a model's, or the table's."""
    def run(ins, outs, attrs):
        copies = [None if x is None else x.copy() for x in ins]
        arrays = [copies[k].reshape(shape) if k is not None else poisoned(shape, dtype)
                  for k, shape, dtype in outs]
        executor.ctx.rng = np.random.default_rng(1)      # dropout: the same draws
        executor.kernels[name](copies, arrays, attrs, executor.ctx)
        return arrays
    return run


def on_cuda(name):
    def run(ins, outs, attrs):
        device = [None if x is None else cuda.to_device(x) for x in ins]
        arrays = [device[k].reshape(*shape) if k is not None else cuda.to_device(poisoned(shape, dtype))
                  for k, shape, dtype in outs]
        CUDA[name](device, arrays, attrs, SimpleNamespace(rng=np.random.default_rng(1)))
        return [a.copy_to_host() for a in arrays]
    return run


def assert_cuda_gives_the_cpu_outputs(executor, calls, dtype):
    """Each call on the CUDA kernel of its instruction gives the CPU kernel's outputs, and
    each in-place rule of the CUDA kernel gives the bits of separate outputs."""
    tol = TOLERANCE[dtype]
    for call in calls:
        name = call[0]
        want = outputs_of(call, on_cpu(executor, name))
        got = outputs_of(call, on_cuda(name))
        for k, (g, w) in enumerate(zip(got, want)):
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol, err_msg=f"{name}: output {k}")
        for out, inputs in TABLE.inplace.get(name, ()):
            for inp in inputs:
                x, (shape, dtype_) = call[1][inp], call[2][out]
                if x is None or x.dtype != dtype_ or x.size != math.prod(shape):
                    continue     # the planner shares only a buffer of the output's bytes
                shared = outputs_of(call, on_cuda(name), (out, inp))
                assert all(np.array_equal(s, g, equal_nan=True) for s, g in zip(shared, got)), \
                    f"{name}: output {out} over input {inp} differs"


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op, case", [p for p in SAMPLES])
def test_cuda_kernels_give_the_cpu_kernels_outputs(op, case, dtype):
    model, calls = cpu_calls(op, case, dtype)
    assert_cuda_gives_the_cpu_outputs(model.executor, calls, dtype)


# Every family of fused steps, beyond the groups the op cases' fuse pass makes: adds alone
# (one and two extra inputs), an activation with and without adds, each pool with and without
# an activation before it and after it, windows that are not square, and a 1x1 window (the
# in-place rules then apply to the pooled kernels too); on (N, F) vectors and NHWC maps
FUSED_FAMILIES = (
    ((("add",),), (3, 10)),
    ((("add",), ("add",), ("elu", 0.5)), (2, 4, 6, 3)),
    ((("leaky_relu", 0.1),), (3, 10)),
    ((("maxpool", 2, 3),), (2, 4, 6, 3)),
    ((("add",), ("relu", 0.0), ("maxpool", 2, 2)), (2, 4, 6, 3)),
    ((("avgpool", 2, 2),), (2, 4, 6, 3)),
    ((("add",), ("selu", 0.0), ("avgpool", 1, 3)), (2, 4, 6, 3)),
    ((("sigmoid", 0.0), ("avgpool", 2, 3), ("relu6", 0.0)), (2, 4, 6, 3)),
    ((("maxpool", 2, 1), ("elu", 1.0)), (2, 4, 6, 3)),
    ((("add",), ("tanh", 0.0), ("maxpool", 1, 1), ("leaky_relu", 0.3)), (2, 4, 6, 3)),
)


def fused_calls(steps, shape, dtype, seed=0) -> list:
    """fused_map's calls (with and without the saved pool input) and fused_map_bwd's (with
    and without the bias gradient) for these steps on x of this shape, in the form of
    recorded_calls. Values on a coarse grid: windows hold ties (the first maximum wins) and
    activations see exact zeros."""
    rng = np.random.default_rng(seed)
    adds, act, pool, after = split(pattern(steps))
    pooled = shape if pool is None else (shape[0], shape[1] // pool[1], shape[2] // pool[2], shape[3])

    def grid(s):
        return (rng.integers(-6, 7, s) / 4).astype(dtype)

    attrs = {"steps": steps}
    x, extras = grid(shape), [grid(shape) for _ in range(adds)]
    y = [rng.uniform(0.05, 0.95, pooled).astype(dtype)] if after else []
    a = None if act is None and (pool is None or pool[0] == "avgpool") else grid(shape)
    gy = rng.standard_normal(pooled).astype(dtype)
    saved = [[], [(shape, dtype)]] if pool else [[]]
    return ([("fused_map", [x, *extras], [(pooled, dtype), *s], {}, attrs) for s in saved]
            + [("fused_map_bwd", [gy, a, *y], [(shape, dtype), *gb], {}, attrs)
               for gb in ([], [((shape[-1],), dtype)])])


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("steps, shape", FUSED_FAMILIES,
                         ids=["+".join(s[0] for s in steps) for steps, _ in FUSED_FAMILIES])
def test_fused_kernels_give_the_cpu_kernels_outputs_for_every_family_of_steps(steps, shape, dtype):
    # the CPU's generated kernels in its cache's folder, as for a program not prepared
    cpu = SimpleNamespace(kernels=CPU, ctx=Context())
    assert_cuda_gives_the_cpu_outputs(cpu, fused_calls(steps, shape, dtype), dtype)


@pytest.mark.parametrize("steps", [(("relu", 0.0),), (("maxpool", 2, 2),)])
def test_fused_map_bwd_refuses_to_run_without_the_a_it_reads(steps):
    gy, gx = cuda.to_device(np.ones((1, 2, 2, 1))), cuda.to_device(np.ones((1, 2, 2, 1)))
    with pytest.raises(ValueError, match="needs a"):
        CUDA["fused_map_bwd"]([gy, None], [gx], {"steps": steps}, None)


def test_the_cuda_kernels_are_the_instructions_of_the_isa():
    assert sorted(set(CUDA) ^ set(ISA)) == []
    for name, rules in TABLE.inplace.items():
        for out, inputs in rules:
            assert out < len(ISA[name].outputs) and all(i < len(ISA[name].inputs) for i in inputs), name


# Run with NUMBA_ENABLE_CUDASIM=0 and no GPU: every CUDA kernel wrapper is called with host
# arrays on every call the op cases make, and each launch compiles the kernel to PTX for
# sm_90 (Hopper: the H100 and H200) for its arguments' types instead of running it.
COMPILE_EVERY_LAUNCH = """
import json
from netspec.testing.cuda_launches import every_launch, launched_by
import test_cuda_kernels as T

launches = every_launch(T.every_call())
print(json.dumps({"launched": launched_by(launches),
                  "compiled": len(launches),
                  "sm_90": sum(".target sm_90" in done.ptx for done in launches)}))
"""


@pytest.mark.slow
def test_every_cuda_kernel_compiles_to_ptx_for_sm90():
    """Each instruction's CUDA kernels compile, for every argument type the op cases give
    them (float32 and float64, every rank), with numba-cuda's NVVM and no GPU."""
    done = subprocess.run([sys.executable, "-c", COMPILE_EVERY_LAUNCH], cwd=Path(__file__).parent,
                          env={**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert sorted(report["launched"]) == sorted(CUDA), "instructions whose kernels no case compiled"
    assert report["compiled"] == report["sm_90"] > len(CUDA)
