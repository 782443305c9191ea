"""The CUDA target (numba-cuda), under construction: kernels for the ISA's instructions on
device arrays, in the ISA's layouts (channels last), each registered in this target's own
kernel table with the outputs it may write over an input.

It joins the registry of targets (runtime/targets.py) once it has a kernel for every
instruction and the executor keeps a program's buffers on the device. Until then,
tests/test_cuda_kernels.py replays, on every kernel it has, each call the op cases make of
the CPU target's kernel of that instruction, and compares the outputs (under the CUDA
simulator, NUMBA_ENABLE_CUDASIM=1, where there is no GPU).
"""

from __future__ import annotations

from . import conv, elementwise, fused, loss, norm, pool  # noqa: F401  (their kernels fill TABLE)
from .table import TABLE

KERNELS = TABLE.kernels
