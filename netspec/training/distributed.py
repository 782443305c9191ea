"""Data-parallel training over MPI: `netspec train SPEC --ranks N`, or `mpirun -n N netspec train`.

Every rank holds the whole model and the same weights. Each optimizer step takes one GLOBAL
batch (the run's `batch`, exactly as a one-rank run would draw it from the same shuffled
permutation) and splits it over the ranks: rank r takes the r-th of N nearly equal consecutive
pieces (sizes differ by at most one sample, as np.array_split cuts), so any batch size works. Each rank's
gradient is the mean over its own shard; the ranks sum them weighted by shard size, n_r / B,
which is the gradient of the global batch's mean loss whatever the split (a shard may even be
empty, in the last batch of an epoch smaller than the number of ranks: it contributes zeros).

The reduction overlaps the backward pass, as PyTorch's DistributedDataParallel does: gradients
are grouped into buckets of about `bucket_mb` megabytes in the order the backward pass completes
them (the reverse of the parameters' order), and each bucket's non-blocking all-reduce
(MPI_Iallreduce) starts right after the instruction that writes its last gradient
(Executor.final_writes gives where; Executor.run's `after` hooks call back: the runtime knows
nothing of MPI). They are waited on before the optimizer step, which then runs identically on
every rank, so the weights stay identical without ever being sent. The loss and metrics of each
step are summed over the ranks too, so divergence checks and histories are those of the global
batch.

Batch normalisation: by default each rank normalises with its own shard's batch statistics
(DDP's default); the running statistics (what inference uses) are rank 0's, sent to every rank at
each epoch's end before validation and checkpointing (DDP broadcasts rank 0's buffers, at every
forward). `sync_batchnorm = true` in the train section synchronises them instead (PyTorch's
SyncBatchNorm): the ranks add up each batch norm's sums over the batch in the forward pass and its
gradient sums in the backward (BatchSums), so every rank normalises with the global batch's
statistics, and a 2-rank run trains what a 1-rank run does, within float32 rounding.

Rank 0 alone writes the run folder (checkpoint, weights, history, curves) and evaluates the
validation and test data, and sends the epoch's row to the others. A resumed run may have another
number of ranks: the checkpoint holds one copy of everything and the data order depends only on
the seed. The communicator is an interface (Communicator): MPI on the host; on a device
target whose every process has a GPU of its own, the target's device communicator (NCCL on
CUDA: runtime/cuda/collectives.py) sums the buckets where they are, in device memory
(for_target chooses). Otherwise a device target's buckets are packed on the device and summed
through the host, one copy each way per bucket.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..errors import TrainingError

MPI_HINT = "pip install 'netspec[mpi]'"
# gradient bucket size (megabytes) when the train section sets none. Small buckets start their
# reductions earliest, but each pays the latency, 2(p-1) times in a ring of p ranks. Measured with
# tools/bench_scale.py (BENCHMARKS.md): on 2 ranks of one machine (2.7 us latency) 0.25 to 25 MB
# make no difference beyond the noise; the ring model for ResNet-50 on 512 workers over
# InfiniBand favours 25 MB (DDP's default) when compute is fast (mixed precision: 90% efficiency
# against 74% with 4 MB buckets), so 25 MB it is
DEFAULT_BUCKET_MB = 25.0
# environment variables an MPI launcher sets to the number of processes it started
# (MPICH's and Intel MPI's hydra, Slurm's PMI; Open MPI; MVAPICH)
WORLD_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
STATUS_DIR_VARIABLE = "NETSPEC_RANK_STATUS"   # set by the --ranks launcher (launch.py)


class EveryRankError(TrainingError):
    """An error every rank meets at the same moment (rank 0's, relayed; a divergence judged on
    the global loss): only rank 0 reports it."""


# ---------------------------------------------------------------- communicators

class Request:
    """A reduction in flight: wait() returns when its buffer holds the result."""

    def wait(self) -> None:
        raise NotImplementedError

    def test(self) -> bool:
        """Whether it is done (and a chance for the library to make progress)."""
        raise NotImplementedError


class Communicator:
    """What data-parallel training needs from the ranks' transport. Arrays are host NumPy arrays
    for a host communicator (on_host); a device communicator (NCCL on CUDA) takes device arrays,
    and host ones too (through the host communicator it is built on)."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0     # among the processes on this machine
    local_size: int = 1
    on_host: bool = True

    def iallreduce_sum(self, buffer: np.ndarray) -> Request:
        """Start summing `buffer` over the ranks, in place."""
        raise NotImplementedError

    def allreduce_sum(self, buffer: np.ndarray) -> np.ndarray:
        """Sum `buffer` over the ranks, in place, now; returns it."""
        raise NotImplementedError

    def broadcast(self, buffer: np.ndarray, root: int = 0) -> None:
        """Overwrite `buffer` with root's, in place."""
        raise NotImplementedError

    def broadcast_object(self, obj, root: int = 0):
        raise NotImplementedError

    def allgather_object(self, obj) -> list:
        raise NotImplementedError


class _MPIRequest(Request):
    def __init__(self, request):
        self.request = request

    def wait(self) -> None:
        self.request.Wait()

    def test(self) -> bool:
        return self.request.Test()


class MPICommunicator(Communicator):
    """MPI_COMM_WORLD through mpi4py."""

    def __init__(self, comm):
        from mpi4py import MPI
        self.MPI = MPI
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        here = comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_rank, self.local_size = here.Get_rank(), here.Get_size()
        here.Free()

    def iallreduce_sum(self, buffer):
        return _MPIRequest(self.comm.Iallreduce(self.MPI.IN_PLACE, buffer, op=self.MPI.SUM))

    def allreduce_sum(self, buffer):
        self.comm.Allreduce(self.MPI.IN_PLACE, buffer, op=self.MPI.SUM)
        return buffer

    def broadcast(self, buffer, root=0):
        self.comm.Bcast(buffer, root=root)

    def broadcast_object(self, obj, root=0):
        return self.comm.bcast(obj, root=root)

    def allgather_object(self, obj):
        return self.comm.allgather(obj)


def launched_size(environ=os.environ) -> int:
    """How many processes the MPI launcher that started this one started (1: none)."""
    for name in WORLD_SIZE_VARIABLES:
        value = environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return 1


def world() -> Communicator | None:
    """The world communicator when this process is one of several an MPI launcher started,
    else None (a plain one-process run, which never imports MPI)."""
    if launched_size() <= 1:
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        raise TrainingError(f"this process was started by an MPI launcher, but mpi4py is not "
                            f"installed: {MPI_HINT}") from None
    comm = MPICommunicator(MPI.COMM_WORLD)
    if comm.size <= 1:
        return None
    _record_status("pid", os.getpid(), comm.rank)
    _share_cores(comm.local_size)
    return comm


def for_target(comm: Communicator | None, target_name: str) -> tuple[Communicator | None, str | None]:
    """The communicator that sums a target's gradients, and why it is the host's when the target
    has a device one (NCCL on CUDA) that this run cannot use: every process must have a device
    of its own (two sharing one: their devices' identities agree) and the library. Collective:
    every rank calls it, before compiling (it chooses this process's device). A target
    unavailable here is reported once, as agree() does."""
    if comm is None:
        return None, None
    from ..runtime.targets import get_target

    def prepare():
        target = get_target(target_name)
        target.require_device()
        if target.collectives is None:
            return None, (None, None)
        return target.collectives, target.collectives.use_gpu(comm.local_rank)
    collectives, mine = agree(comm, prepare)
    if collectives is None:
        return comm, None
    answers = comm.allgather_object(mine)           # (device identity, why not) of each rank
    holders: dict = {}
    for rank, (device, _) in enumerate(answers):
        if device is not None:
            holders.setdefault(device, []).append(rank)
    shared = next((ranks for ranks in holders.values() if len(ranks) > 1), None)
    if shared is not None:
        return comm, (f"{_ranks(shared)} share one GPU, and NCCL needs a GPU per process: start "
                      f"as many processes per machine as it has GPUs")
    refused = [(rank, why) for rank, (_, why) in enumerate(answers) if why is not None]
    if refused:
        rank, why = refused[0]
        return comm, why if len(refused) == comm.size and all(w == why for _, w in refused) \
            else f"rank {rank}: {why}"
    return agree(comm, lambda: collectives.communicator(comm)), None


def _ranks(ranks: list[int]) -> str:
    """'ranks 0 and 1', 'ranks 0, 2 and 5', 'ranks 0 to 7'."""
    if len(ranks) > 3 and ranks == list(range(ranks[0], ranks[-1] + 1)):
        return f"ranks {ranks[0]} to {ranks[-1]}"
    return f"ranks {', '.join(map(str, ranks[:-1]))} and {ranks[-1]}"


def _share_cores(ranks_here: int) -> None:
    """The ranks on one machine divide its cores between their kernels' threads, unless the user
    said how many threads (NETSPEC_NUM_THREADS, NUMBA_NUM_THREADS): without this, 4 ranks of a
    4-core machine would each start 4 threads. (--ranks sets NETSPEC_NUM_THREADS itself.)"""
    if ranks_here <= 1 or os.environ.get("NETSPEC_NUM_THREADS") or os.environ.get("NUMBA_NUM_THREADS"):
        return
    import numba
    from ..runtime.cpu.threads import usable_cores
    numba.set_num_threads(max(1, min(usable_cores() // ranks_here, numba.config.NUMBA_NUM_THREADS)))


def share(comm: Communicator | None, read):
    """read() on rank 0, its result given to every rank: a file only rank 0's machine needs to
    see. When it fails, rank 0 raises its error and the others an EveryRankError."""
    if comm is None:
        return read()
    result = failure = None
    if comm.rank == 0:
        try:
            result = read()
        except Exception as e:
            failure = e
    message, result = comm.broadcast_object((None if failure is None else _said(failure), result))
    if failure is not None:
        raise failure
    if message is not None:
        raise EveryRankError(message)
    return result


def agree(comm: Communicator | None, setup):
    """setup() on every rank (reading data, compiling), then the ranks compare how it went, so
    that a failure is reported once and no rank goes on to wait for one that has stopped: rank
    0's own error, else the first failed rank's, named, from rank 0; the other ranks raise an
    EveryRankError (they end quietly)."""
    if comm is None:
        return setup()
    try:
        result, failure = setup(), None
    except Exception as e:
        result, failure = None, e
    failed = comm.allgather_object(None if failure is None else _said(failure))
    if not any(m is not None for m in failed):
        return result
    if comm.rank > 0:
        raise EveryRankError(failed[0] or "another rank failed")
    if failure is not None:
        raise failure
    rank = next(r for r, m in enumerate(failed) if m is not None)
    raise TrainingError(f"rank {rank}: {failed[rank]}")


def _said(e: Exception) -> str:
    return str(e) or type(e).__name__


def _record_status(what: str, value, rank: int) -> None:
    """For the --ranks launcher (launch.py): this rank's pid when it starts, its exit status when
    it ends on purpose; a rank with a pid and no exit status died."""
    folder = os.environ.get(STATUS_DIR_VARIABLE)
    if folder:
        try:
            with open(os.path.join(folder, f"rank-{rank}.{what}"), "w") as f:
                f.write(str(value))
        except OSError:
            pass


def record_exit(comm: Communicator | None, code: int) -> None:
    if comm is not None:
        _record_status("exit", code, comm.rank)


# ---------------------------------------------------------------- the data

def shard(indices: np.ndarray, rank: int, size: int) -> np.ndarray:
    """Rank `rank`'s part of a global batch: the rank-th of `size` consecutive pieces whose
    sizes differ by at most one (the first len % size pieces are one longer)."""
    n = len(indices)
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return indices[start:start + base + (rank < extra)]


# ---------------------------------------------------------------- gradient buckets

@dataclass
class Bucket:
    names: list[str]               # parameters, in the order the backward pass finishes them
    offsets: list[tuple[int, int]]  # each one's [start, end) in `flat`
    flat: object                   # the bucket's gradients, end to end, in the model's memory
    staging: np.ndarray | None     # its host copy, when a host communicator sums device arrays
    ready_after: int               # the train phase instruction that completes the last of them
    request: Request | None = None

    @property
    def reduced(self):
        """What the communicator sums in place."""
        return self.flat if self.staging is None else self.staging


class GradientReducer:
    """Sums a training step's gradients over the ranks, bucket by bucket, while the backward
    pass still runs (see the module docstring). For each step:
        hooks = reducer.begin(bufs, weight)     # weight: this rank's share of the batch, n_r / B
        model.train_buffers(x, y, after=hooks)
        grads = reducer.finish()                # the global batch's gradient, every rank alike
    overlap=False starts every reduction after the backward pass (tools/bench_scale.py compares).
    """

    def __init__(self, model, comm: Communicator, bucket_mb: float, overlap: bool = True):
        self.model, self.comm, self.overlap = model, comm, overlap
        program = model.program
        self.grad_of = dict(program.grads)                  # parameter -> its gradient tensor
        done = model.executor.final_writes("train", self.grad_of.values())
        tensors = program.tensors
        order = sorted(self.grad_of, key=lambda p: done[self.grad_of[p]])
        limit = max(1, int(bucket_mb * 2**20))
        self.buckets: list[Bucket] = []
        names, size, dtype = [], 0, None
        for p in order + [None]:
            t = None if p is None else tensors[self.grad_of[p]]
            nbytes = 0 if t is None else t.size(1) * np.dtype(t.dtype).itemsize
            if names and (p is None or size + nbytes > limit or np.dtype(t.dtype) != dtype):
                self.buckets.append(self._bucket(names, done))
                names, size = [], 0
            if p is not None:
                names.append(p)
                size += nbytes
                dtype = np.dtype(t.dtype)
        # after each instruction from the first bucket's on: start the buckets it completes, and
        # test those in flight. MPI advances a non-blocking reduction only inside MPI calls (a
        # progress thread would take a core), so without these tests a bucket started early
        # would mostly wait for the end of the backward pass anyway
        self.hooks: dict[int, object] = {}
        if self.buckets:
            last = len(program.phases["train"].instrs) - 1
            for k in range(min(b.ready_after for b in self.buckets), last + 1):
                self.hooks[k] = self._at(k)
        self.wait_seconds = 0.0     # time spent in finish(), waiting for reductions
        self._bufs = None
        self._weight = 1.0

    def _bucket(self, names, done) -> Bucket:
        tensors = self.model.program.tensors
        offsets, at = [], 0
        for p in names:
            n = tensors[self.grad_of[p]].size(1)
            offsets.append((at, at + n))
            at += n
        dtype = tensors[self.grad_of[names[0]]].dtype
        memory = self.model.executor.memory
        # a device model's buckets are packed on the device (one copy out of the gradients, one
        # back, each a launch); a host communicator then sums a host copy of each bucket: one
        # transfer each way per bucket, not per gradient
        staging = None if memory.on_host or not self.comm.on_host else np.zeros(at, dtype)
        return Bucket(list(names), offsets, memory.full((at,), 0, dtype), staging,
                      max(done[self.grad_of[p]] for p in names))

    @property
    def bucket_count(self) -> int:
        return len(self.buckets)

    def _at(self, k: int):
        ready = [b for b in self.buckets if b.ready_after == k]

        def after_instruction():
            for b in self.buckets:
                if b.request is not None:
                    b.request.test()
            for b in ready:
                self._start(b)
        return after_instruction

    def _start(self, b: Bucket) -> None:
        bufs, memory = self._bufs, self.model.executor.memory
        if bufs is None:              # an empty shard contributes nothing
            memory.fill(b.flat, 0)
        else:
            for p, (lo, hi) in zip(b.names, b.offsets):
                memory.scaled_copy(b.flat[lo:hi], bufs[self.grad_of[p]], self._weight)
        if b.staging is not None:
            memory.download(b.flat, b.staging)
        b.request = self.comm.iallreduce_sum(b.reduced)

    def begin(self, bufs, weight: float) -> dict | None:
        """The `after` hooks of this step's training run; bufs: the train phase's buffers at
        this rank's batch size (None for an empty shard: call finish() directly)."""
        self._bufs, self._weight = bufs, weight
        return self.hooks if self.overlap else None

    def finish(self) -> dict:
        """Wait for every bucket (starting those not started) and return the summed gradients:
        views of the buckets on a host target; on a device target, copied back into the
        gradient buffers (in parameter order, one allocation: the optimizer's one launch)."""
        import time
        for b in self.buckets:
            if b.request is None:
                self._start(b)
        start = time.perf_counter()
        for b in self.buckets:
            b.request.wait()
            b.request = None
        self.wait_seconds += time.perf_counter() - start
        tensors = self.model.program.tensors
        memory = self.model.executor.memory
        # an empty shard has no gradient buffers of its own: batch 1's, which the warm-up planned
        device_bufs = None if memory.on_host else (
            self._bufs if self._bufs is not None else self.model.executor.buffers("train", 1))
        grads = {}
        for b in self.buckets:
            if b.staging is not None:
                memory.upload(b.flat, b.staging)
            for p, (lo, hi) in zip(b.names, b.offsets):
                if memory.on_host:
                    grads[p] = b.flat[lo:hi].reshape(tensors[self.grad_of[p]].shape)
                else:
                    grads[p] = device_bufs[self.grad_of[p]]
                    memory.copy(grads[p], b.flat[lo:hi])
        return grads


def running_state_names(model) -> list[str]:
    """The float state tensors a training step updates (batch norms' running statistics)."""
    return [n for n, t in model.program.tensors.items()
            if t.kind == "state" and np.dtype(t.dtype).kind == "f"]


class BatchSums:
    """Synchronised batch norm (sync_batchnorm): a model compiled with it computes each batch
    norm's sums over the batch in an instruction of their own (runtime/isa.py's rank_sum:
    batchnorm_moments in the forward pass, batchnorm_grad_sums in the backward). Right after
    each, before anything reads them, the ranks add them up, blocking: every rank then normalises
    with the global batch's mean and variance, and differentiates through them, as one process
    on the whole batch would. The forward's sums are added as they are; the backward's weighted
    by the rank's share of the batch, as the gradients are, since each rank's backward pass
    starts from its own shard's mean loss (isa.py's batchnorm_grad_apply then divides by the
    rank's own rows). Sums nothing reads are not sent (a batch norm whose input needs no
    gradient, such as one on the network's input). For each step:
        hooks = batch_sums.hooks(bufs, weight)      # Executor.run's `after`
    """

    def __init__(self, model, comm: Communicator):
        from ..runtime.isa import KERNELS
        self.model, self.comm = model, comm
        instrs = model.program.phases["train"].instrs
        read = {}                       # tensor -> the last instruction that reads it
        for k, instr in enumerate(instrs):
            for name in instr.inputs:
                read[name] = k
        tensors = model.program.tensors
        self.points = [(k, instr.outputs[0], KERNELS[instr.kernel].rank_sum,
                        np.zeros(tensors[instr.outputs[0]].shape, np.float64))
                       for k, instr in enumerate(instrs)
                       if KERNELS[instr.kernel].rank_sum and read.get(instr.outputs[0], -1) > k]

    @property
    def layers(self) -> int:
        """How many layers the ranks synchronise (one forward sum each)."""
        return sum(kind == "data" for _, _, kind, _ in self.points)

    def hooks(self, bufs, weight: float) -> dict:
        """The `after` hooks of this step (bufs: the train phase's buffers; None for an empty
        shard, which adds zeros)."""
        memory = self.model.executor.memory

        def add_up(name, kind, host):
            def after_instruction():
                if bufs is None:
                    host[...] = 0.0
                else:
                    memory.download(bufs[name], host)
                    if kind == "gradient":
                        host[...] *= weight
                self.comm.allreduce_sum(host)
                if bufs is not None:
                    memory.upload(bufs[name], host)
            return after_instruction
        return {k: add_up(name, kind, host) for k, name, kind, host in self.points}


def join_hooks(*hook_tables) -> dict:
    """One `after` table from several (None: none), each instruction's hooks called in the
    order of the tables: every rank starts its collective operations in one order, as MPI
    requires."""
    calls: dict[int, list] = {}
    for table in hook_tables:
        for k, hook in (table or {}).items():
            calls.setdefault(k, []).append(hook)

    def chain(hooks):
        def after_instruction():
            for hook in hooks:
                hook()
        return after_instruction
    return {k: hooks[0] if len(hooks) == 1 else chain(hooks) for k, hooks in calls.items()}


def broadcast_state(model, comm: Communicator, names) -> None:
    """Give every rank rank 0's running statistics (DDP's buffers)."""
    host = model.executor.host_state()
    for n in names:
        comm.broadcast(host[n])
    if names:
        model.executor.invalidate()


def weights_digest(model) -> str:
    """A digest of every parameter and running statistic, to check that the ranks agree."""
    import hashlib
    h = hashlib.sha256()
    for name, value in sorted(model.executor.host_state().items()):
        h.update(name.encode())
        h.update(np.ascontiguousarray(value).tobytes())
    return h.hexdigest()


def fault_point_step(comm: Communicator | None) -> None:
    """NETSPEC_FAULT=train:step:RANK:COUNT kills rank RANK by SIGKILL at its COUNT-th step (a
    dying rank, for the tests: outdirs.fault_point)."""
    from ..outdirs import fault_point
    fault_point("train:step", str(comm.rank if comm is not None else 0))


def silent(*args, **kwargs) -> None:
    """The echo of ranks other than 0: one rank speaks for the run."""
