"""Executes a Program on a target: buffers, kernel calls, nothing of the language.

A Program (netspec.lower.program) is read only through its tensor table and its
phases' instruction lists. The target (a `target.Target`, e.g. from the registry in
targets.py) gives the kernels, the per-run context they receive, and the capabilities
the memory planner reads; the Executor knows no target by name. Buffers are allocated once per (phase, batch size)
and reused by every later run of that size; parameters, state and constants
live in `Executor.state`, shared by all phases and updated in place.

Where arrays live: the target's `memory` (runtime/target.py) allocates the state and the
arenas, makes the views, takes the feeds and gives back what the host reads. A host target's
arrays are NumPy arrays; a device target's (CUDA) stay on the device between runs, and
`host_state()` is a NumPy copy of its parameters and state, read back when the device holds
newer values (after a training step or an optimizer's update, `device_written`) and sent back
before the next run when the host may have written it (`invalidate`).

Memory: each (phase, batch) gets one arena laid out by the memory planner
(`memory.py`): every other tensor is a view into it at its planned offset, and
tensors whose lifetimes do not meet share bytes. After a run only the phase's
outputs (and tensors passed to `keep_alive`) still hold their values; any other
buffer may have been overwritten by a later tensor. `plan_memory=False` gives
every tensor a buffer of its own instead (for debugging, and the comparison).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .memory import PERSISTENT_KINDS, plan_memory as _plan_memory
from .target import Target


@dataclass
class _Prepared:
    """A phase made ready for one batch size."""
    bufs: dict                      # every tensor's target array (views into the arena when planned)
    steps: list                     # (kernel, inputs, outputs, attrs, instr, checked, poisoned)
    dead: dict[int, list]           # step -> blocks whose last reader it is (check=True)


class KernelFailure(RuntimeError):
    """A kernel left an output element unwritten or non-finite (debug runs only)."""


class Executor:
    def __init__(self, program, target: Target, seed: int = 0, plan_memory: bool = True,
                 kernel_dir=None):
        """kernel_dir: where the target writes its generated kernels (None: its default)."""
        self.program = program
        self.target = target
        self.plan_memory = plan_memory
        self.kernels = target.kernels
        target.require_device()
        self.ctx = target.new_context(np.random.default_rng(seed), kernel_dir)
        missing = sorted(program.kernels() - set(self.kernels))
        if missing:
            raise NotImplementedError(f"target {target.name} lacks kernels: {', '.join(missing)}")
        target.prepare(program, self.ctx)   # e.g. the program's generated kernels
        self.memory = memory = target.memory
        # parameters, running statistics and constants: target arrays, for every phase
        self.state: dict = self._packed_parameters() if target.capabilities.contiguous_params else {}
        for t in program.tensors.values():
            value = t.value if t.value is not None else 0
            if t.name in self.state:
                memory.upload(self.state[t.name], np.full(t.shape, value, t.dtype))
            elif t.kind in PERSISTENT_KINDS:
                self.state[t.name] = memory.full(t.shape, value, t.dtype)
        # a device target's state as the host sees it: a NumPy copy made on demand (the same
        # arrays for the run's life, so views of them stay valid), `_host_stale` while the
        # device holds newer values, `_host_written` while the host copy may hold newer ones
        self._host = self.state if memory.on_host else None
        self._host_stale = self._host_written = False
        self._keep: set[str] = set()
        self._plans: dict[tuple[str, int], _Prepared] = {}
        # the `prepare` phase derives tensors from parameters (folded batch norms); it reruns
        # before the next inference whenever the parameters may have changed
        self._derived_stale = True
        # called after each instruction when set (a progress bar over the warm-up's compiles)
        self.on_step = None

    def _packed_parameters(self) -> dict:
        """The trainable parameters as views of one allocation, end to end in the program's
        parameter order (Capabilities.contiguous_params: their optimizer's one launch)."""
        tensors = self.program.tensors
        names = [self.program.params[p] for p in self.program.grads]
        sizes = [tensors[n].size(1) * np.dtype(tensors[n].dtype).itemsize for n in names]
        if not names:
            return {}
        whole = self.memory.arena(sum(sizes), self.target.capabilities.align)
        views, at = {}, 0
        for name, nbytes in zip(names, sizes):
            t = tensors[name]
            views[name] = self.memory.view(whole, at, nbytes, t.dtype, t.shape)
            at += nbytes
        return views

    def invalidate(self) -> None:
        """Say that parameters or state were (or may have been) written from outside, through
        `host_state()`'s arrays (a host target's are the state itself)."""
        self._derived_stale = True
        if self._host is not self.state:
            self.host_state()
            self._host_written = True

    def device_written(self) -> None:
        """Say that the target arrays of `state` were written in place (an optimizer's step):
        the host's copy is stale, and tensors derived from parameters too."""
        self._derived_stale = True
        self._host_stale = self._host is not self.state

    def host_state(self) -> dict[str, np.ndarray]:
        """Parameters and state as NumPy arrays, current (a device target's are copied back
        when the device holds newer values). After writing them, call `invalidate()`."""
        if self._host is None:
            self._host = {k: self.memory.download(v) for k, v in self.state.items()}
        elif self._host_stale:
            for k, v in self.state.items():
                self.memory.download(v, self._host[k])
        self._host_stale = False
        return self._host

    def _upload_host_writes(self) -> None:
        if self._host_written:
            for k, v in self._host.items():
                self.memory.upload(self.state[k], v)
            self._host_written = False

    def to_host(self, a) -> np.ndarray:
        """A target array's values as a NumPy array (a host target's: the array itself)."""
        return self.memory.download(a)

    # -- buffers
    def buffers(self, phase: str, batch: int) -> dict[str, np.ndarray]:
        return self._plan(phase, batch).bufs

    def memory_plan(self, phase: str, batch: int):
        """The memory plan of (phase, batch) (computed here, whether or not it is used)."""
        return _plan_memory(self.program, phase, batch, self.target, keep=self._keep)

    def keep_alive(self, names) -> None:
        """Keep these tensors' values until the end of every run (as phase outputs are), e.g.
        to inspect an intermediate result; cached buffers are dropped."""
        self._keep.update(names)
        self.release()

    def _plan(self, phase_name: str, batch: int) -> "_Prepared":
        key = (phase_name, batch)
        prepared = self._plans.get(key)
        if prepared is not None:
            return prepared
        phase = self.program.phases[phase_name]
        tensors = self.program.tensors
        bufs: dict[str, np.ndarray] = {}
        plan = self.memory_plan(phase_name, batch) if self.plan_memory else None
        memory = self.memory
        if plan is not None:
            if memory.on_host:
                from ..resources import check_fits    # batch sizes are the caller's: refuse, not MemoryError
                check_fits(plan.arena_bytes, f"the {phase_name} arena of {self.program.name} at batch {batch}",
                           "use a smaller batch (--batch) or a smaller network")
            arena = memory.arena(plan.arena_bytes, plan.align)

        def buffer(name):
            if name in bufs:
                return bufs[name]
            t = tensors[name]
            if name in self.state:
                arr = self.state[name]
            elif name in phase.aliases:
                arr = buffer(phase.aliases[name]).reshape(t.full_shape(batch))
            elif plan is not None:
                p = plan.tensors[name]
                arr = memory.view(arena, p.offset, p.nbytes, t.dtype, p.shape)
            else:
                arr = memory.empty(t.full_shape(batch), t.dtype)
            bufs[name] = arr
            return arr

        steps = []
        for k, ins in enumerate(phase.instrs):
            fn = self.kernels[ins.kernel]
            shared = {o for o, _ in plan.inplace.get(k, ())} if plan is not None else set()
            # check=True verifies the outputs that are not state (updated in place) and poisons
            # them first, except an output written over its input (that would poison the input)
            written = [(name, buffer(name)) for name in ins.outputs if name not in self.state]
            poison = [o for name, o in written if name not in shared]
            steps.append((fn, [None if x is None else buffer(x) for x in ins.inputs],
                          [buffer(o) for o in ins.outputs], ins.attrs, ins, written, poison))
        for name in (*self.program.inputs.values(), *phase.outputs.values()):
            buffer(name)
        if self.program.target and phase_name != "infer":
            buffer(self.program.target)
        # check=True also poisons each block when its last reader is done, so a reader the
        # plan missed (a lifetime too short) sees NaN
        dead: dict[int, list[np.ndarray]] = {}
        for b in plan.blocks if plan is not None else ():
            if not b.pinned and np.dtype(b.dtype).kind == "f":
                dead.setdefault(b.last, []).append(bufs[b.root])
        prepared = self._plans[key] = _Prepared(bufs, steps, dead)
        return prepared

    def release(self) -> None:
        """Drop every cached buffer (parameters and state stay)."""
        self._plans.clear()

    # -- running
    def final_writes(self, phase: str, names) -> dict[str, int]:
        """For each tensor of `names`: the index in `phase`'s instruction list of the last
        instruction that writes it (or a tensor sharing its buffer), after which its value is
        final for the run; -1 for one no instruction writes. With `run(after=...)` a caller acts
        on a result as soon as it exists (e.g. sends a gradient while the backward pass goes on)."""
        ph = self.program.phases[phase]
        aliases = ph.aliases
        last: dict[str, int] = {}
        for k, ins in enumerate(ph.instrs):
            for o in ins.outputs:
                last[aliases.get(o, o)] = k
        return {n: last.get(aliases.get(n, n), -1) for n in names}

    def run(self, phase: str, feeds: dict[str, np.ndarray], batch: int,
            check: bool = False, timings: dict | None = None,
            after: dict | None = None) -> dict[str, np.ndarray]:
        """Run a phase: copy `feeds` into their buffers, execute, return the buffers.

        check=True poisons every output with NaN (ints with a sentinel) before its
        kernel and verifies afterwards that every element was written and is finite
        (an output written in place over its input is verified, not poisoned); with a
        memory plan it also fills each float block with NaN after its last reader, so a
        tensor read after the plan let it die, or overwritten while live, shows up as
        NaN downstream.
        timings: a dict to which each instruction's seconds are added, keyed by
        (kernel, node) (a profile; costs a clock read per instruction).
        after: instruction index -> a function of no arguments, called once that instruction
        has run (see `final_writes`); the Executor knows nothing of what it does.
        """
        self._upload_host_writes()
        if phase == "train":
            self.device_written()   # it updates running statistics; an optimizer follows
        elif phase != "prepare" and self._derived_stale and "prepare" in self.program.phases:
            self._derived_stale = False
            self.run("prepare", {}, 1, check=check, timings=timings)
        prepared = self._plan(phase, batch)
        bufs = prepared.bufs
        memory = self.memory
        for name, value in feeds.items():
            memory.upload(bufs[name], value)
        on_step = self.on_step
        for k, (fn, ins, outs, attrs, instr, written, poison) in enumerate(prepared.steps):
            if check:
                for o in poison:
                    memory.fill(o, np.nan if o.dtype.kind == "f" else np.iinfo(o.dtype).min)
            if timings is not None:
                t0 = time.perf_counter()
                fn(ins, outs, attrs, self.ctx)
                key = (instr.kernel, instr.node)
                timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0
            else:
                fn(ins, outs, attrs, self.ctx)
            if on_step is not None:
                on_step()
            if after is not None:
                hook = after.get(k)
                if hook is not None:
                    hook()
            if check:
                self._verify(instr, [(name, memory.download(o)) for name, o in written])
                for o in prepared.dead.get(k, ()):
                    memory.fill(o, np.nan)
        return bufs

    @staticmethod
    def _verify(instr, outs) -> None:
        for name, o in outs:
            bad = ~np.isfinite(o) if o.dtype.kind == "f" else o == np.iinfo(o.dtype).min
            if np.any(bad):
                raise KernelFailure(f"{instr.kernel} (for {instr.node}) left "
                                    f"{int(np.count_nonzero(bad))} of {o.size} elements of "
                                    f"{name} unwritten or non-finite")
