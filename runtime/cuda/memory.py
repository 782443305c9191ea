"""Where the CUDA target's arrays live: device memory (numba.cuda device arrays).

The executor allocates a program's parameters, state and arenas here and copies only the
batches in and what the host must read (the loss, the outputs for metrics) out; the
interface is runtime/target.py's `HostMemory`'s.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from ..target import TargetUnavailable
from .launch import flat, launch, scalar


@cuda.jit
def _scaled_copy(dst, src, factor):
    for i in range(cuda.grid(1), dst.size, cuda.gridsize(1)):
        dst[i] = src[i] * factor


class DeviceMemory:
    on_host = False

    @staticmethod
    def full(shape, value, dtype):
        return cuda.to_device(np.full(shape, value, dtype=dtype))

    @staticmethod
    def arena(nbytes: int, align: int):
        """One device allocation of nbytes (CUDA's allocations start at a multiple of 256
        bytes, the target's alignment, so every planned offset keeps it)."""
        try:
            return cuda.device_array(max(nbytes, 1), np.uint8)
        except cuda.cudadrv.driver.CudaAPIError as e:
            raise MemoryError(f"the GPU has no room for a run's {nbytes:,} bytes ({e}): use a "
                              "smaller batch (--batch) or a smaller network") from None

    @staticmethod
    def view(arena, offset: int, nbytes: int, dtype, shape):
        return arena[offset:offset + nbytes].view(np.dtype(dtype)).reshape(tuple(shape))

    @staticmethod
    def empty(shape, dtype):
        return cuda.device_array(shape, dtype)

    @staticmethod
    def upload(dst, value) -> None:
        """Copy host data into a device array of its shape (same-kind casting, as NumPy's)."""
        value = np.asarray(value)
        if value.shape != tuple(dst.shape):
            raise ValueError(f"cannot copy {value.shape} into a device array of {dst.shape}")
        host = np.ascontiguousarray(value.astype(dst.dtype, casting="same_kind", copy=False))
        dst.copy_to_device(host)

    @staticmethod
    def download(a, out: np.ndarray | None = None) -> np.ndarray:
        if out is None:
            return a.copy_to_host()
        a.copy_to_host(out)
        return out

    @staticmethod
    def fill(a, value) -> None:
        a.copy_to_device(np.full(a.shape, value, dtype=a.dtype))

    @staticmethod
    def scaled_copy(dst, src, factor: float) -> None:
        """dst = src * factor on the device, element by element in C order (sizes equal)."""
        if dst.size != src.size:
            raise ValueError(f"cannot copy {src.size} elements into {dst.size}")
        if dst.size:
            launch(_scaled_copy, dst.size, flat(dst), flat(src), scalar(dst.dtype, factor))

    @staticmethod
    def copy(dst, src) -> None:
        """dst = src, device to device, element by element in C order."""
        if dst.size:
            flat(dst).copy_to_device(flat(src))


def require_device() -> None:
    """TargetUnavailable unless a CUDA GPU and driver are usable (or the simulator is on)."""
    if cuda.is_available():
        return
    try:
        cuda.detect()
        reason = "no CUDA GPU was found"
    except Exception as e:      # numba-cuda's CudaSupportError names the driver problem
        reason = " ".join(str(e).split()).rstrip(" :.")
    raise TargetUnavailable(f"the cuda target cannot run on this machine: {reason}. It needs an "
                            "NVIDIA GPU with its driver; use --target cpu here")
