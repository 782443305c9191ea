"""Executes a Program on a target: buffers, kernel calls, nothing of the language.

A Program (netspec.lower.program) is read only through its tensor table and its
phases' instruction lists. Buffers are allocated once per (phase, batch size)
and reused by every later run of that size; parameters, state and constants
live in `Executor.state`, shared by all phases and updated in place.
"""

from __future__ import annotations

import importlib
import time

import numpy as np


class KernelFailure(RuntimeError):
    """A kernel left an output element unwritten or non-finite (debug runs only)."""


class Executor:
    def __init__(self, program, target: str = "cpu", seed: int = 0):
        self.program = program
        module = importlib.import_module(f"{__package__}.{target}")
        self.kernels = module.KERNELS
        self.ctx = module.Context(rng=np.random.default_rng(seed))
        missing = sorted(program.kernels() - set(self.kernels))
        if missing:
            raise NotImplementedError(f"target {target} lacks kernels: {', '.join(missing)}")
        self.state: dict[str, np.ndarray] = {}
        for t in program.tensors.values():
            if t.kind in ("param", "state", "const"):
                self.state[t.name] = np.full(t.shape, t.value if t.value is not None else 0,
                                             dtype=t.dtype)
        self._plans: dict[tuple[str, int], tuple[dict, list]] = {}

    # -- buffers
    def buffers(self, phase: str, batch: int) -> dict[str, np.ndarray]:
        return self._plan(phase, batch)[0]

    def _plan(self, phase_name: str, batch: int):
        key = (phase_name, batch)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        phase = self.program.phases[phase_name]
        tensors = self.program.tensors
        bufs: dict[str, np.ndarray] = {}

        def buffer(name):
            if name in bufs:
                return bufs[name]
            t = tensors[name]
            if name in self.state:
                arr = self.state[name]
            elif name in phase.aliases:
                arr = buffer(phase.aliases[name]).reshape(t.full_shape(batch))
            else:
                arr = np.empty(t.full_shape(batch), dtype=t.dtype)
            bufs[name] = arr
            return arr

        steps = []
        for ins in phase.instrs:
            fn = self.kernels[ins.kernel]
            steps.append((fn, [None if i is None else buffer(i) for i in ins.inputs],
                          [buffer(o) for o in ins.outputs], ins.attrs, ins))
        for name in (*self.program.inputs.values(), *phase.outputs.values()):
            buffer(name)
        if self.program.target and phase_name != "infer":
            buffer(self.program.target)
        plan = self._plans[key] = (bufs, steps)
        return plan

    def release(self) -> None:
        """Drop every cached buffer (parameters and state stay)."""
        self._plans.clear()

    # -- running
    def run(self, phase: str, feeds: dict[str, np.ndarray], batch: int,
            check: bool = False, timings: dict | None = None) -> dict[str, np.ndarray]:
        """Run a phase: copy `feeds` into their buffers, execute, return the buffers.

        check=True poisons every output with NaN (ints with a sentinel) before its
        kernel and verifies afterwards that every element was written and is finite.
        timings: a dict to which each instruction's seconds are added, keyed by
        (kernel, node) (a profile; costs a clock read per instruction).
        """
        bufs, steps = self._plan(phase, batch)
        for name, value in feeds.items():
            np.copyto(bufs[name], value, casting="same_kind")
        for fn, ins, outs, attrs, instr in steps:
            if check:
                poisoned = [o for o, name in zip(outs, instr.outputs)
                            if name not in self.state]
                for o in poisoned:
                    o.fill(np.nan if o.dtype.kind == "f" else np.iinfo(o.dtype).min)
            if timings is not None:
                t0 = time.perf_counter()
                fn(ins, outs, attrs, self.ctx)
                key = (instr.kernel, instr.node)
                timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0
            else:
                fn(ins, outs, attrs, self.ctx)
            if check:
                self._verify(instr, poisoned)
        return bufs

    @staticmethod
    def _verify(instr, outs) -> None:
        for o, name in zip(outs, instr.outputs):
            bad = ~np.isfinite(o) if o.dtype.kind == "f" else o == np.iinfo(o.dtype).min
            if np.any(bad):
                raise KernelFailure(f"{instr.kernel} (for {instr.node}) left "
                                    f"{int(np.count_nonzero(bad))} of {o.size} elements of "
                                    f"{name} unwritten or non-finite")
