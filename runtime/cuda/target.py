"""The CUDA target: its kernel modules imported, so that their kernels fill the table, with
its device memory and its parameter update (what the registry, runtime/targets.py, lists)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..target import Capabilities, Target
from . import collectives
from . import conv, elementwise, fused, loss, norm, optim, pool, resample, tokens  # noqa: F401  (fill TABLE)
from .memory import DeviceMemory, require_device
from .table import TABLE

# bytes: every planned tensor starts on a 256-byte boundary, as cudaMalloc's allocations do, so
# vectorised loads and coalesced rows start aligned in the arena too
ALIGN = 256


@dataclass
class Context:
    """Per-run state a kernel may need: the generator dropout's uniforms are drawn from (on the
    host: the CPU target's masks for a seed)."""
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    generated: dict = field(default_factory=dict)


def new_context(rng: np.random.Generator, kernel_dir=None) -> Context:
    """A run's context (Target.new_context); the CUDA kernels are compiled in memory, so no
    kernel folder."""
    return Context(rng)


def prepare(program, ctx) -> None:
    """Nothing to generate ahead of a run: numba.cuda compiles each kernel at its first launch."""


TARGET = Target("cuda", TABLE.kernels, Capabilities(TABLE.inplace, ALIGN, contiguous_params=True),
                new_context, prepare,
                memory=DeviceMemory, optim=optim, require_device=require_device,
                collectives=collectives)
