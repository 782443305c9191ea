"""The CPU target's per-run state (`Context`) and its cache folder.

Imported before any kernel module (runtime/cpu/__init__.py): Numba reads its cache
location when a `cache=True` function is decorated.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np


def tree_stamp(root: Path) -> str:
    """A digest of the paths and contents of the .py files under `root`, at any depth."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def runtime_stamp() -> str:
    """The runtime's sources' stamp. Numba checks a cached kernel against its own file only,
    not the files whose functions it inlined (activations.py, formulas.py...): a cache folder
    per version of the runtime keeps an edited formula from running as its old compiled self."""
    return tree_stamp(Path(__file__).resolve().parent.parent)


def _cache_dir() -> Path:
    """Numba's on-disk cache is pickled: keep it private to the user (mode 0700). One folder
    per runtime_stamp() (folders of other versions are left to their checkouts)."""
    root = os.environ.get("NETSPEC_CACHE_DIR")
    if root:
        path = Path(root)
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        path = base / "netspec" / "numba"
    path = path / runtime_stamp()
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


if os.environ.get("NUMBA_CACHE_DIR"):     # the user's folder, with a subfolder per version
    numba.config.CACHE_DIR = str(Path(os.environ["NUMBA_CACHE_DIR"]) / runtime_stamp())
else:
    numba.config.CACHE_DIR = str(_cache_dir())


def kernel_cache_is_cold() -> bool:
    """True when this runtime's cache folder holds no compiled kernel yet (Numba's index files,
    *.nbi): the first run compiles them all, which takes a while."""
    return not any(Path(numba.config.CACHE_DIR).rglob("*.nbi"))


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
