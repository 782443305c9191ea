"""How the CUDA kernels are launched, and what they share: grid-stride loops over a flat
index, a grid sized to the work (capped: the loop covers the rest), and the checks of the
arrays a kernel is handed."""

from __future__ import annotations

import numpy as np
from numba import config, cuda

from ..operands import same_shape  # noqa: F401  (the CUDA kernel modules import it from here)

THREADS = 128          # threads per block: four warps
MAX_BLOCKS = 4096      # a grid-stride loop covers the elements past blocks * THREADS


def grid(n: int) -> tuple[int, int]:
    """(blocks, threads) for n independent items. Under the simulator (a Python thread per
    CUDA thread) two blocks of four threads: the grid-stride loops cover any n, and more than
    one block still runs."""
    if config.ENABLE_CUDASIM:
        return 2, 4
    return max(1, min(-(-n // THREADS), MAX_BLOCKS)), THREADS


class Runner:
    """How the kernels run: launched on the device (or the simulator), with host arrays copied
    there. Another runner replaces it where the kernels are compiled rather than run
    (tests/test_cuda_kernels.py: PTX for sm_90 without a GPU)."""

    def launch(self, kernel, n: int, *args) -> None:
        kernel[grid(n)](*args)

    def launch_grid(self, kernel, blocks: tuple[int, ...], threads: int, *args) -> None:
        kernel[blocks, threads](*args)

    def to_device(self, a: np.ndarray):
        return cuda.to_device(a)

    def to_host(self, a) -> np.ndarray:
        return a.copy_to_host()

    def empty(self, shape, dtype):
        return cuda.device_array(shape, dtype)


RUNNER = Runner()


def launch(kernel, n: int, *args) -> None:
    """Run a jitted kernel over n independent items."""
    RUNNER.launch(kernel, n, *args)


def launch_grid(kernel, blocks: tuple[int, ...], threads: int, *args) -> None:
    """Run a jitted kernel on a grid the caller shapes (tiled kernels: a block per tile)."""
    RUNNER.launch_grid(kernel, blocks, threads, *args)


def to_device(a: np.ndarray):
    """A host array the kernels read (a table the host computes), on the device."""
    return RUNNER.to_device(a)


def to_host(a) -> np.ndarray:
    """A device array the host must read (labels it checks), copied back."""
    return RUNNER.to_host(a)


def empty(shape, dtype):
    """Scratch on the device (a reduction's partial terms)."""
    return RUNNER.empty(shape, dtype)


def flat(a):
    """A 1-D view of a C-contiguous array, on the device or, while compiling, on the host (an
    output must be a view, never a copy)."""
    contiguous = a.is_c_contiguous() if hasattr(a, "is_c_contiguous") else a.flags.c_contiguous
    if not contiguous:
        raise ValueError(f"CUDA kernels need C-contiguous arrays, got strides {a.strides}")
    return a.reshape(a.size)


def dims(a) -> tuple[int, ...]:
    """A device array's shape as a tuple (the simulator's refuses negative indices)."""
    return tuple(a.shape)


def rows(a):
    """A (rows, C) view: the last axis is the channel, every axis before it a row."""
    c = dims(a)[-1] if a.ndim else 1
    return flat(a).reshape(a.size // c, c)


def scalar(dtype, value):
    """value as the kernels' dtype (a float64 argument would turn float32 arithmetic into
    float64)."""
    return np.dtype(dtype).type(value)


def device_function(fn):
    """fn as a device function the kernels call, inlined. Under the simulator, fn itself: there
    every call of a device function swaps its module's globals (about 2 ms a call, which made
    one of LeNet's layers take minutes), while fn, arithmetic on its arguments and arrays that
    uses no thread index, runs as it is."""
    if config.ENABLE_CUDASIM:
        return fn
    return cuda.jit(device=True, inline=True)(fn)


@device_function
def unravel(i, b, c, d):
    """(n, p, q, r): the indices of flat index i into a C-ordered (., b, c, d) array."""
    return i // (b * c * d), (i // (c * d)) % b, (i // d) % c, i % d


@device_function
def element(a, i):
    """(n, p, q, r): the indices of flat index i into the C-ordered 4-D array a."""
    return unravel(i, a.shape[1], a.shape[2], a.shape[3])
