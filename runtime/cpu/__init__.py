"""The CPU target: Numba kernels for every entry of `netspec.runtime.isa.KERNELS`.

Each kernel is registered as `KERNELS[name] = fn(ins, outs, attrs, ctx)`: `ins`
and `outs` are lists of NumPy arrays laid out as the ISA says (an optional input
that is absent is None), `attrs` a dict of plain values, `ctx` the run's
`Context` (its random generator, for dropout). The Python wrapper reshapes and
dispatches; the work happens in `@njit(cache=True)` functions specialised by
dtype only (never by layer), so the number of compiled functions does not grow
with the network.

Threads: parallel kernels use Numba's pool, and nothing here calls BLAS: the
GEMMs are our own micro-kernels (conv.py), so no second thread pool competes
for the cores (BLAS's and Numba's fight when both are active, DESIGN.md §10).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def _cache_dir() -> Path:
    """Numba's on-disk cache is pickled: keep it private to the user (mode 0700)."""
    root = os.environ.get("NETSPEC_CACHE_DIR")
    if root:
        path = Path(root)
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        path = base / "netspec" / "numba"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


import numba  # noqa: E402  (after the cache location is known)

if not os.environ.get("NUMBA_CACHE_DIR"):
    numba.config.CACHE_DIR = str(_cache_dir())


@dataclass
class Context:
    """Per-run state a kernel may need."""
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    # where generated kernels (fused.py) are written and imported from, and those imported
    kernel_dir: Path = field(default_factory=lambda: _cache_dir() / "generated")
    generated: dict = field(default_factory=dict)


def prepare(program, ctx: Context) -> None:
    """Ready what a program needs beyond the fixed kernels: its generated ones."""
    from .fused import prepare as prepare_fused
    prepare_fused(program, ctx)


KERNELS: dict = {}


def kernel(name: str):
    """Register a kernel wrapper under its ISA name."""
    def deco(fn):
        if name in KERNELS:
            raise RuntimeError(f"CPU kernel {name} registered twice")
        KERNELS[name] = fn
        return fn
    return deco


def _load_kernels() -> None:
    import importlib
    for module in ("conv", "pool", "norm", "elementwise", "loss", "fused"):
        try:
            importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError as e:  # a module not written yet
            if e.name != f"{__name__}.{module}":
                raise


_load_kernels()
