"""The CUDA target (numba-cuda): kernels for the ISA's instructions on device arrays, in the
ISA's layouts (channels last), each registered in this target's own kernel table with the
outputs it may write over an input; the program's parameters, activations, gradients and
optimizer state stay in device memory (memory.py) between steps.

Kernels by method: conv.py (convolutions and dense layers), pool.py, norm.py (batch norm,
LRN, dropout, drop_path), elementwise.py (activations, merges, data movers), resample.py
(upsample, channel shuffle), loss.py; launch.py holds what they share (grid-stride launches,
the array checks). target.py builds `TARGET`, which the registry (runtime/targets.py) imports
when a program first asks for "cuda".

Without a GPU (CI) the kernels run under numba-cuda's simulator (NUMBA_ENABLE_CUDASIM=1) and
compile to PTX for sm_90 (tests/test_cuda_kernels.py).
"""

from __future__ import annotations

from .table import TABLE
from .target import TARGET

KERNELS = TABLE.kernels

__all__ = ["KERNELS", "TABLE", "TARGET"]
