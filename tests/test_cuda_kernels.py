"""The CUDA target's kernels (runtime/cuda/) against the CPU target's, on every call the op
cases make: each op case (tests/test_op_cases.py) runs on the CPU target in float32 and
float64, inference and a training step, recording every kernel call with its inputs; each
call of an instruction the CUDA target has is replayed there on device copies of those
inputs, and its outputs must equal the CPU kernel's (float64: to 1e-12; float32: to the
rounding of formulas written independently, 2e-6). Every in-place rule of the CUDA kernels
is replayed too, and must give the bits of separate outputs.

Without a GPU (CI) this runs under numba-cuda's simulator (tests/conftest.py). The CUDA
target joins the op-case suite itself once it has every instruction and the executor keeps
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

from netspec.runtime.cuda import KERNELS as CUDA, TABLE
from netspec.runtime.isa import KERNELS as ISA
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


def outputs_of(call, run, shared=None) -> list[np.ndarray]:
    """The call's outputs, replayed by run(inputs, outputs) on copies the caller's `run` makes
    from host arrays; shared = (output, input): that output is written over that input."""
    name, ins, outs, state, attrs = call
    over = {**state, **dict([shared] if shared else [])}
    return run(ins, [(over.get(k), shape, dtype) for k, (shape, dtype) in enumerate(outs)], attrs)


def on_cpu(model, name):
    def run(ins, outs, attrs):
        copies = [None if x is None else x.copy() for x in ins]
        arrays = [copies[k].reshape(shape) if k is not None else poisoned(shape, dtype)
                  for k, shape, dtype in outs]
        model.executor.ctx.rng = np.random.default_rng(1)      # dropout: the same draws
        model.executor.kernels[name](copies, arrays, attrs, model.executor.ctx)
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


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op, case", [p for p in SAMPLES])
def test_cuda_kernels_give_the_cpu_kernels_outputs(op, case, dtype):
    model, calls = cpu_calls(op, case, dtype)
    tol = TOLERANCE[dtype]
    for call in calls:
        name = call[0]
        if name not in CUDA:
            continue
        want = outputs_of(call, on_cpu(model, name))
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


def test_the_cuda_kernels_are_instructions_of_the_isa():
    assert sorted(set(CUDA) - set(ISA)) == []
    for name, rules in TABLE.inplace.items():
        for out, inputs in rules:
            assert out < len(ISA[name].outputs) and all(i < len(ISA[name].inputs) for i in inputs), name


# Run with NUMBA_ENABLE_CUDASIM=0 and no GPU: every CUDA kernel wrapper is called with host
# arrays on every call the op cases make, and each launch compiles the kernel to PTX for
# sm_90 (Hopper: the H100 and H200) for its arguments' types instead of running it.
COMPILE_EVERY_LAUNCH = """
import json, sys
from types import SimpleNamespace
import numpy as np
from numba import cuda, typeof
from netspec.runtime.cuda import KERNELS, launch
import test_cuda_kernels as T

ptx, launched, current = {}, {}, [None]

class CompileOnly(launch.Runner):
    def launch(self, kernel, n, *args):
        signature = tuple(typeof(a) for a in args)
        key = (kernel.py_func.__qualname__, id(kernel.py_func), signature)
        if key not in ptx:
            ptx[key], _ = cuda.compile_ptx(kernel.py_func, signature, cc=(9, 0))
        launched.setdefault(current[0], set()).add(kernel.py_func.__qualname__)

    def launch_grid(self, kernel, blocks, threads, *args):
        self.launch(kernel, 0, *args)

    def to_device(self, a):
        return a

    def to_host(self, a):
        return a

    def empty(self, shape, dtype):
        return np.empty(shape, dtype)

def on_host(name):
    def run(ins, outs, attrs):
        copies = [None if x is None else x.copy() for x in ins]
        arrays = [copies[k].reshape(shape) if k is not None else np.empty(shape, dtype)
                  for k, shape, dtype in outs]
        current[0] = name
        KERNELS[name](copies, arrays, attrs, SimpleNamespace(rng=np.random.default_rng(1)))
        return arrays
    return run

launch.RUNNER = CompileOnly()
for param in T.SAMPLES:
    op, case = param.values
    for dtype in ("float32", "float64"):
        model, calls = T.cpu_calls(op, case, dtype)
        for call in calls:
            if call[0] in KERNELS:
                T.outputs_of(call, on_host(call[0]))
print(json.dumps({"launched": {k: sorted(v) for k, v in launched.items()},
                  "compiled": len(ptx),
                  "sm_90": sum(".target sm_90" in text for text in ptx.values())}))
"""


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
