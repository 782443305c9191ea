"""Every launch of the CUDA target's kernels that a list of kernel calls makes, recorded and
compiled instead of run: tests/test_cuda_kernels.py's PTX test and tools/cuda_registers.py
enumerate the kernels this way, so both see the same (kernel, argument types) pairs.

A call is what tests/test_op_cases.py's `recorded_calls` records of a CPU run: (instruction,
inputs, outputs' shapes and dtypes, {output: the input it is, for state updated in place},
attributes). The CUDA kernel wrappers are called on host arrays, and each launch compiles the
kernel for its arguments' types (PTX, no GPU) rather than running it. numba must be imported
with NUMBA_ENABLE_CUDASIM=0: the simulator compiles nothing.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np


def outputs_of(call, run, shared=None) -> list:
    """The call's outputs, replayed by run(inputs, outputs, attrs) on copies the caller's `run`
    makes from host arrays; outputs are (input index it is written over, or None; shape;
    dtype); shared = (output, input): that output is written over that input too."""
    name, ins, outs, state, attrs = call
    over = {**state, **dict([shared] if shared else [])}
    return run(ins, [(over.get(k), shape, dtype) for k, (shape, dtype) in enumerate(outs)], attrs)


@dataclass
class Launch:
    """One kernel compiled for one tuple of argument types, and the instructions launching it."""
    kernel: object                      # the numba-cuda dispatcher
    signature: tuple                    # the arguments' numba types
    instructions: set = field(default_factory=set)
    ptx: str | None = None

    @property
    def name(self) -> str:
        """module.function, e.g. conv._conv_fwd (closures: elementwise._activation.fwd)."""
        fn = self.kernel.py_func
        return f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__qualname__.replace('<locals>.', '')}"

    @property
    def types(self) -> str:
        """The argument types, short: f32[1d] for a C-contiguous float32 vector."""
        def short(t):
            if isinstance(getattr(t, "types", None), tuple):     # a tuple of arrays (fused extras)
                return "(" + ", ".join(short(e) for e in t.types) + ")"
            dtype = getattr(t, "dtype", None)
            if dtype is None:
                return str(t)
            return f"{str(dtype).replace('float', 'f').replace('int', 'i')}[{t.ndim}d]"
        names = [short(t) for t in self.signature]
        runs = []                       # a run of one type written once: int64 x7
        for name in names:
            if runs and runs[-1][0] == name:
                runs[-1][1] += 1
            else:
                runs.append([name, 1])
        return ", ".join(name if n == 1 else f"{name} x{n}" for name, n in runs)


def _compile_only_runner(cc):
    """A Runner (runtime/cuda/launch.py) that records each launch, with its PTX for compute
    capability cc (None: no PTX), and keeps host arrays where device arrays would be."""
    from numba import cuda, typeof
    from netspec.runtime.cuda import launch

    class CompileOnly(launch.Runner):
        def __init__(self):
            self.launches: dict[tuple, Launch] = {}
            self.instruction = None

        def launch(self, kernel, n, *args):
            signature = tuple(typeof(a) for a in args)
            key = (id(kernel.py_func), signature)      # closures share a qualname
            found = self.launches.get(key)
            if found is None:
                found = self.launches[key] = Launch(kernel, signature)
                if cc is not None:
                    found.ptx, _ = cuda.compile_ptx(kernel.py_func, signature, cc=cc)
            found.instructions.add(self.instruction)

        def launch_grid(self, kernel, blocks, threads, *args):
            self.launch(kernel, 0, *args)

        def to_device(self, a):
            return a

        def to_host(self, a):
            return a

        def empty(self, shape, dtype):
            return np.empty(shape, dtype)

    return CompileOnly()


@contextlib.contextmanager
def compile_only(cc=(9, 0)):
    """While open, the CUDA kernels' launches are compiled (PTX for compute capability cc, or
    none for cc None) and recorded instead of run: the runner yielded holds `launches`
    ((kernel id, argument types) -> Launch), each tagged with the runner's `instruction`
    at the time."""
    from netspec.runtime.cuda import launch
    runner = _compile_only_runner(cc)
    saved, launch.RUNNER = launch.RUNNER, runner
    try:
        yield runner
    finally:
        launch.RUNNER = saved


def launched_by(launches) -> dict[str, list[str]]:
    """instruction (or tag) -> the kernels' names it launched, sorted."""
    found: dict[str, set] = {}
    for done in launches:
        for name in done.instructions:
            found.setdefault(name, set()).add(done.kernel.py_func.__qualname__)
    return {k: sorted(v) for k, v in found.items()}


def every_launch(calls, cc=(9, 0)) -> list[Launch]:
    """The launches the CUDA kernels make on `calls` (those of instructions the CUDA target
    has), each (kernel, argument types) once, in the order first met, with its PTX for compute
    capability cc (sm_90: the H100 and H200) unless cc is None."""
    from netspec.runtime.cuda import KERNELS

    def on_host(name):
        def run(ins, outs, attrs):
            copies = [None if x is None else x.copy() for x in ins]
            arrays = [copies[k].reshape(shape) if k is not None else np.empty(shape, dtype)
                      for k, shape, dtype in outs]
            KERNELS[name](copies, arrays, attrs, SimpleNamespace(rng=np.random.default_rng(1)))
            return arrays
        return run

    with compile_only(cc) as runner:
        for call in calls:
            if call[0] in KERNELS:
                runner.instruction = call[0]
                outputs_of(call, on_host(call[0]))
    return list(runner.launches.values())
