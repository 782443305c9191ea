"""What a target is: a kernel for every ISA instruction plus what the runtime may assume of them.

A target is a folder under runtime/ (`cpu/`) whose package exports one `Target`; the registry
(`targets.py`) lists them by name. The executor (`program.py`) calls the target's kernels and
the memory planner (`memory.py`) reads its capabilities; neither knows any target by name.

A target's kernel modules fill its `KernelTable` with `@table.kernel("instruction")`, each
kernel declaring there the outputs it may write over an input; the table is the Target's
`kernels` and `capabilities.inplace`.

Where a target's arrays live is its `Memory`: NumPy arrays in host memory (`HostMemory`, the
CPU's), or arrays on a device (runtime/cuda/memory.py). The executor allocates, views, feeds
and reads a program's tensors only through it, and the target's `optim` module (the update
rules, penalties and clipping of runtime/optim.py's interface) works on the same arrays, so a
device target's parameters, activations, gradients and optimizer state stay on the device.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# kernel(ins, outs, attrs, ctx): arrays in and out as the ISA lays them out (an absent
# optional input is None), plain attributes, the run's context
Kernel = Callable[[list, list, dict, Any], None]
# (output index, input indices that output may be written over)
InPlace = tuple[int, tuple[int, ...]]


@dataclass(frozen=True)
class Capabilities:
    """What the memory planner may assume of a target's kernels."""
    # instruction -> in-place rules: the kernel reads each element of those inputs before it
    # writes the output element of the same index, and no input element after that index is
    # written, so the planner may hand it one buffer as both
    inplace: Mapping[str, tuple[InPlace, ...]]
    # every planned tensor starts at a multiple of this many bytes of an arena so aligned
    align: int
    # the trainable parameters packed in one allocation and their gradients placed as one run
    # of an arena, both in the program's parameter order and without gaps, so that an
    # optimizer updates them all in one launch (a device target: launches cost microseconds)
    contiguous_params: bool = False


class HostMemory:
    """NumPy arrays in host memory: a host target's kernels read and write them directly."""
    on_host = True

    @staticmethod
    def full(shape, value, dtype) -> np.ndarray:
        return np.full(shape, value, dtype=dtype)

    @staticmethod
    def arena(nbytes: int, align: int) -> np.ndarray:
        """nbytes of memory starting at a multiple of `align` bytes."""
        raw = np.empty(nbytes + align, np.uint8)
        start = -raw.ctypes.data % align
        return raw[start:start + nbytes]

    @staticmethod
    def view(arena, offset: int, nbytes: int, dtype, shape):
        return arena[offset:offset + nbytes].view(dtype).reshape(shape)

    @staticmethod
    def empty(shape, dtype) -> np.ndarray:
        return np.empty(shape, dtype=dtype)

    @staticmethod
    def upload(dst: np.ndarray, value) -> None:
        """Copy host data into a target array (the same shape; a float64 value into a
        float32 array is rounded, as NumPy's same-kind casting does)."""
        np.copyto(dst, value, casting="same_kind")

    @staticmethod
    def download(a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """A target array's values on the host: the array itself, or copied into `out`."""
        if out is None:
            return a
        np.copyto(out, a)
        return out

    @staticmethod
    def fill(a: np.ndarray, value) -> None:
        a.fill(value)

    @staticmethod
    def scaled_copy(dst: np.ndarray, src: np.ndarray, factor: float) -> None:
        """dst = src * factor, element by element in C order (shapes may differ, sizes not),
        rounded to dst's dtype."""
        # into dst itself, whatever its strides (a reshaped copy would swallow the result)
        np.multiply(src.reshape(dst.shape), factor, out=dst, casting="unsafe")

    @staticmethod
    def copy(dst: np.ndarray, src: np.ndarray) -> None:
        """dst = src, element by element in C order, both target arrays of one dtype."""
        dst[...] = src.reshape(dst.shape)


def _usable() -> None:
    """A host target runs wherever Python does."""


@dataclass(frozen=True)
class Target:
    name: str
    kernels: Mapping[str, Kernel] = field(repr=False)     # ISA instruction name -> kernel
    capabilities: Capabilities
    # the per-run state its kernels receive as ctx: from a random generator (dropout) and the
    # folder for generated kernels (None: the target's default)
    new_context: Callable[[np.random.Generator, Path | None], Any] = field(repr=False)
    # readies what a program needs beyond the fixed kernels (generated ones), once per Executor
    prepare: Callable[[Any, Any], None] = field(repr=False)
    # where its arrays live (HostMemory's interface)
    memory: Any = field(default=HostMemory, repr=False)
    # the parameter update on its arrays: a module with runtime/optim.py's functions and
    # classes (make_optimizer, penalty, add_penalty_grads, clip_by_value, clip_by_global_norm)
    optim: Any = field(default=None, repr=False)
    # raises TargetUnavailable when this machine cannot run it (no GPU, no driver)
    require_device: Callable[[], None] = field(default=_usable, repr=False)
    # how the processes of a data-parallel run sum its arrays without the host: a module with
    # use_gpu(local_rank) -> (the device's identity, why not: None when it can) and
    # communicator(host), built on the run's host communicator (runtime/cuda/collectives.py);
    # None: through the host
    collectives: Any = field(default=None, repr=False)


class TargetUnavailable(RuntimeError):
    """A registered target that this machine cannot run (no GPU, no driver, a missing
    package): the message says what is missing and how to get it."""


class KernelTable:
    """A target's kernels by ISA instruction name, filled by its modules' decorators."""

    def __init__(self, target: str):
        self.target = target
        self.kernels: dict[str, Kernel] = {}
        self.inplace: dict[str, tuple[InPlace, ...]] = {}

    def kernel(self, name: str, inplace: tuple[InPlace, ...] = ()):
        """Register a kernel under its ISA name; `inplace`: its in-place rules (Capabilities)."""
        def register(fn: Kernel) -> Kernel:
            if name in self.kernels:
                raise RuntimeError(f"{self.target} kernel {name} registered twice")
            self.kernels[name] = fn
            if inplace:
                self.inplace[name] = tuple(inplace)
            return fn
        return register
