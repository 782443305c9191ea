"""Summing device arrays over the processes of a data-parallel run with NCCL, through CuPy's
bindings (cupy.cuda.nccl), on the device arrays numba.cuda allocates: NCCL takes their device
pointers (the CUDA array interface's), so nothing is copied to the host.

One GPU per process: NCCL refuses two ranks of one communicator on the same device, so each
process takes the GPU numbered by its rank among the processes of its machine (`use_gpu`), and
where two processes share one (more processes than GPUs) the run sums through the host instead
(the caller's host communicator; the trainer compares the GPUs' UUIDs and says why).

Ordering: the kernels run on numba's default stream; each reduction runs on a stream of its own
(non-blocking: the backward pass's next kernels do not wait for it) after an event recorded on
the default stream, so it reads the gradients the kernels before it wrote; `Request.wait`
waits for the event recorded after it. The data-parallel trainer
(netspec/training/distributed.py) drives this through its Communicator interface; the runtime
knows nothing of MPI: the host communicator it is given sends NCCL's id and every host array.
"""

from __future__ import annotations

import numpy as np
from numba import config, cuda

NCCL_HINT = "pip install 'netspec[nccl]'"


def _cupy():
    """cupy, whose NCCL library loads; else ImportError saying what is missing."""
    import cupy
    from cupy.cuda import nccl
    if not nccl.available:
        raise ImportError("CuPy finds no NCCL library")
    return cupy


def use_gpu(local_rank: int, gpus: int | None = None) -> tuple[str | None, str | None]:
    """Make GPU local_rank % gpus (of those this process sees) its device, before anything is
    allocated on one. Returns (that GPU's UUID, which tells whether two processes share one,
    and why NCCL cannot serve this process otherwise: None when it can). With a GPU per
    process bound by the launcher (CUDA_VISIBLE_DEVICES, Slurm's --gpus-per-task) each
    process sees one, its own."""
    gpus = len(cuda.gpus) if gpus is None else gpus
    if gpus == 0:
        return None, "no GPU is visible to this process"
    device = local_rank % gpus
    cuda.select_device(device)
    uuid = cuda.get_current_device().uuid
    if config.ENABLE_CUDASIM:
        return uuid, "the CUDA simulator has no NCCL"
    try:
        cupy = _cupy()
    except (ImportError, RuntimeError) as e:   # CuPy raises either for a missing library
        return uuid, f"CuPy with NCCL is not installed ({e}; {NCCL_HINT})"
    cupy.cuda.Device(device).use()
    return uuid, None


def nccl_type(dtype) -> int:
    """NCCL's number for a NumPy dtype (the ones a program's tensors can have)."""
    from cupy.cuda import nccl
    types = {np.dtype(np.float16): nccl.NCCL_FLOAT16, np.dtype(np.float32): nccl.NCCL_FLOAT32,
             np.dtype(np.float64): nccl.NCCL_FLOAT64, np.dtype(np.int32): nccl.NCCL_INT32,
             np.dtype(np.int64): nccl.NCCL_INT64, np.dtype(np.uint8): nccl.NCCL_UINT8}
    try:
        return types[np.dtype(dtype)]
    except KeyError:
        raise TypeError(f"NCCL cannot sum {np.dtype(dtype)} arrays") from None


def device_buffer(a) -> tuple[int, int]:
    """(device pointer, element count) of a C-contiguous device array."""
    interface = a.__cuda_array_interface__
    strides = interface.get("strides")
    if strides is not None and strides != _c_strides(interface["shape"], np.dtype(interface["typestr"]).itemsize):
        raise ValueError("NCCL needs a C-contiguous device array")
    return interface["data"][0], int(np.prod(interface["shape"], dtype=np.int64))


def _c_strides(shape, itemsize) -> tuple:
    strides, step = [], itemsize
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


class _EventRequest:
    """A reduction on the communication stream: done when the event after it has happened."""

    def __init__(self, event):
        self.event = event

    def wait(self) -> None:
        self.event.synchronize()

    def test(self) -> bool:
        return self.event.done


class _DoneRequest:
    def wait(self) -> None:
        pass

    def test(self) -> bool:
        return True


class NCCLCommunicator:
    """The data-parallel Communicator (netspec/training/distributed.py) on device arrays: NCCL
    sums and broadcasts numba.cuda device arrays in place; host arrays and Python objects go
    through `host`, the run's host communicator, which also hands NCCL's id from rank 0 to
    the others. Call use_gpu first."""
    on_host = False

    def __init__(self, host):
        cupy = _cupy()
        from cupy.cuda import nccl
        self.cupy, self.nccl, self.host = cupy, nccl, host
        self.rank, self.size = host.rank, host.size
        unique_id = host.broadcast_object(nccl.get_unique_id() if host.rank == 0 else None)
        self.comm = nccl.NcclCommunicator(host.size, unique_id, host.rank)
        self.stream = cupy.cuda.Stream(non_blocking=True)
        # numba's kernels go to the legacy default stream unless it was told to use the
        # per-thread one
        self.compute = (cupy.cuda.Stream.ptds if config.CUDA_PER_THREAD_DEFAULT_STREAM
                        else cupy.cuda.Stream.null)

    @staticmethod
    def _on_host(buffer) -> bool:
        return isinstance(buffer, np.ndarray)

    def _after_compute(self):
        ready = self.cupy.cuda.Event(disable_timing=True)
        ready.record(self.compute)
        self.stream.wait_event(ready)

    def _finished(self) -> _EventRequest:
        done = self.cupy.cuda.Event(disable_timing=True)
        done.record(self.stream)
        return _EventRequest(done)

    def iallreduce_sum(self, buffer):
        if self._on_host(buffer):
            return self.host.iallreduce_sum(buffer)
        pointer, count = device_buffer(buffer)
        if not count:
            return _DoneRequest()
        self._after_compute()
        self.comm.allReduce(pointer, pointer, count, nccl_type(buffer.dtype), self.nccl.NCCL_SUM,
                            self.stream.ptr)
        return self._finished()

    def allreduce_sum(self, buffer):
        self.iallreduce_sum(buffer).wait()
        return buffer

    def broadcast(self, buffer, root: int = 0) -> None:
        if self._on_host(buffer):
            self.host.broadcast(buffer, root)
            return
        pointer, count = device_buffer(buffer)
        if count:
            self._after_compute()
            self.comm.bcast(pointer, count, nccl_type(buffer.dtype), root, self.stream.ptr)
            self._finished().wait()

    def broadcast_object(self, obj, root: int = 0):
        return self.host.broadcast_object(obj, root)

    def allgather_object(self, obj) -> list:
        return self.host.allgather_object(obj)


def communicator(host) -> NCCLCommunicator:
    """The device communicator of a run whose processes each have a GPU of their own and could
    use NCCL (use_gpu said None everywhere). Collective: every process calls it."""
    return NCCLCommunicator(host)
