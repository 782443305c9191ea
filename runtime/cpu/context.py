"""The CPU target's per-run state (`Context`) and its cache folder.

Imported before any kernel module (runtime/cpu/__init__.py): Numba reads its cache
location when a `cache=True` function is decorated.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numba
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


if not os.environ.get("NUMBA_CACHE_DIR"):
    numba.config.CACHE_DIR = str(_cache_dir())


@dataclass
class Context:
    """Per-run state a kernel may need."""
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    # where generated kernels (fused.py) are written and imported from, and those imported
    kernel_dir: Path = field(default_factory=lambda: _cache_dir() / "generated")
    generated: dict = field(default_factory=dict)


def new_context(rng: np.random.Generator, kernel_dir: Path | None = None) -> Context:
    """A run's context (Target.new_context); kernel_dir None: the cache's folder."""
    return Context(rng) if kernel_dir is None else Context(rng, kernel_dir)
