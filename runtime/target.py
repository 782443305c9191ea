"""What a target is: a kernel for every ISA instruction plus what the runtime may assume of them.

A target is a folder under runtime/ (`cpu/`) whose package exports one `Target`; the registry
(`targets.py`) lists them by name. The executor (`program.py`) calls the target's kernels and
the memory planner (`memory.py`) reads its capabilities; neither knows any target by name.

A target's kernel modules fill its `KernelTable` with `@table.kernel("instruction")`, each
kernel declaring there the outputs it may write over an input; the table is the Target's
`kernels` and `capabilities.inplace`.
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
