"""The CPU target: its kernel modules imported, so that their kernels fill the table.

Each kernel module registers its wrappers with `table.kernel`; this module is the one
that imports them all, and what it builds, `TARGET`, is what the registry
(runtime/targets.py) lists.
"""

from __future__ import annotations

from .. import optim
from ..target import Capabilities, Target
from . import context  # noqa: F401  (first: Numba's cache folder, before any kernel is decorated)
from . import threads
from . import conv, elementwise, loss, norm, pool, resample, tokens  # noqa: F401  (their kernels fill TABLE)
from .context import new_context
from .fused import prepare
from .table import TABLE

# 64 bytes: a cache line, and the widest vector (AVX-512) a kernel loads
ALIGN = 64

TARGET = Target("cpu", TABLE.kernels, Capabilities(TABLE.inplace, ALIGN), new_context, prepare,
                optim=optim, require_device=threads.require_valid_settings)
