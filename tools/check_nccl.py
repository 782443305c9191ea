"""NCCL's communicator (runtime/cuda/collectives.py) on real GPUs, where the CUDA simulator
cannot go: a device check for a machine with a GPU, CuPy and NCCL (tools/gpu_check.sh runs it).

    python tools/check_nccl.py                    # one process, one GPU
    mpiexec -n 4 python tools/check_nccl.py       # one process per GPU of a 4-GPU machine

Each process takes its GPU (use_gpu), builds the communicator, and checks against NumPy:
  - sums of device arrays in place (float32, float64, int64; blocking and non-blocking, with
    test() polled) and a broadcast from the last rank, on rank-dependent data;
  - host arrays and objects still going through MPI;
  - a training step's gradients through GradientReducer with NCCL: every rank trains the
    same batch with weight 1/(2N), so the sum is half of one rank's own gradients, which the
    same model computes apart; and the same through the host communicator, for comparison.
With one process the sums are over one rank (NCCL's kernels still run, on device pointers and
streams); what one GPU cannot show is two ranks' arithmetic, which is NCCL's own.
Exit status 0 when every check passed; 1 with the first failure.
"""

from __future__ import annotations

import os
import sys

import numpy as np

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "0")

SPEC = """
network small(classes=10) {
    input image: 1@8x8
    image -> conv(4, 3, pad=same, bias=false) -> batchnorm -> relu -> maxpool(2)
          -> flatten -> dense(16, act=relu) -> dense(classes) -> softmax -> out
}
"""


def main() -> int:
    from mpi4py import MPI
    from numba import cuda

    import netspec
    from netspec.runtime.cuda import collectives
    from netspec.training.distributed import GradientReducer, MPICommunicator

    host = MPICommunicator(MPI.COMM_WORLD)
    rank, size = host.rank, host.size
    say = print if rank == 0 else (lambda *a, **k: None)
    gpu, why = collectives.use_gpu(host.local_rank)
    gpus = host.allgather_object(gpu)
    if why is None and len(set(gpus)) < size:
        why = f"the processes share GPUs ({', '.join(map(str, gpus))}): start one per GPU"
    if why is not None:
        print(f"check_nccl: rank {rank}: NCCL cannot be used: {why}", file=sys.stderr)
        return 1
    comm = collectives.NCCLCommunicator(host)
    say(f"check_nccl: {size} process(es); NCCL {comm.nccl.get_version()}, CuPy {comm.cupy.__version__}")
    checks = 0

    def check(name: str, ok: bool, detail: str = "") -> None:
        nonlocal checks
        if not ok:
            raise AssertionError(f"rank {rank}: {name} {detail}")
        checks += 1
        say(f"  ok  {name}")

    ranks_sum = size * (size + 1) // 2     # sum over r of (r + 1)
    for dtype in (np.float32, np.float64, np.int64):
        base = np.arange(1, 100_001).astype(dtype)
        a = cuda.to_device(base * (rank + 1))
        comm.allreduce_sum(a)
        check(f"allreduce_sum {np.dtype(dtype)}", np.array_equal(a.copy_to_host(), base * ranks_sum))
        b = cuda.to_device(base * (rank + 1))
        request = comm.iallreduce_sum(b)
        while not request.test():
            pass
        request.wait()
        check(f"iallreduce_sum {np.dtype(dtype)}", np.array_equal(b.copy_to_host(), base * ranks_sum))
    c = cuda.to_device(np.full(1000, rank, np.float32))
    comm.broadcast(c, root=size - 1)
    check("broadcast from the last rank", np.all(c.copy_to_host() == size - 1))
    h = np.full(10, rank + 1.0)
    comm.allreduce_sum(h)
    check("a host array through MPI", np.all(h == ranks_sum))
    check("objects through MPI", comm.allgather_object(rank) == list(range(size)))

    model = netspec.loads(SPEC).compile(target="cuda", seed=1, training=True, warmup=False)
    rng = np.random.default_rng(0)              # the same batch on every rank
    x = rng.random((8, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 8)
    bufs = model.train_buffers(x, y)
    own = {p: model.to_host(bufs[g]).copy() for p, g in model.program.grads.items()}
    for name, communicator in (("NCCL", comm), ("the host", host)):
        reducer = GradientReducer(model, communicator, bucket_mb=0.001)
        hooks = reducer.begin(model.executor.buffers("train", 8), 1 / (2 * size))
        model.train_buffers(x, y, after=hooks)
        grads = reducer.finish()
        worst = max(float(np.max(np.abs(model.to_host(grads[p]) - own[p] / 2))) for p in own)
        check(f"a training step's gradients summed by {name} in {reducer.bucket_count} buckets",
              worst <= 1e-6, f"(worst difference {worst:.3g})")
    say(f"check_nccl: {checks} checks passed on each of {size} process(es)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AssertionError as e:
        print(f"check_nccl: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
