"""Data-parallel training over MPI (issue 19): `netspec train SPEC --ranks 2` against the one-process
run it must reproduce, run after run, across a resume with another number of ranks, and when a
rank dies. The runs are the MLP on the embedded digits (1,294 training samples) at batch 431:
three full batches split 216/215 and a last batch of one sample, which leaves rank 1 an empty
shard, so uneven shards and their weighting are always exercised; bucket_mb = 0.3 makes three
gradient buckets of its 1 MB of gradients, so reductions start during the backward pass.

Tolerance: 2 ranks and 1 rank sum the same per-sample gradients in another order (each rank's
mean over its shard, then the weighted sum). Measured here after these 8 steps: at most 3.0e-8
absolute on weights of magnitude up to 0.24 (float32's epsilon is 1.2e-7); after 82 steps at batch
32, 4.5e-8. The tests allow 1e-6.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from netspec.cli import main
from netspec.training.trainer import read_checkpoint

import mpi4py  # noqa: F401,E402  the test extra installs it and mpich (netspec[mpi]): no skip

ROOT = Path(__file__).resolve().parent.parent
SPEC = (ROOT / "specs" / "mlp.net").read_text().replace(
    "metrics = [accuracy]", "metrics = [accuracy]\n        bucket_mb = 0.3")
ATOL = 1e-6


def weights(run: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file
    return load_file(str(run / "checkpoint.safetensors"))


def train(tmp: Path, out: str, *extra: str) -> int:
    spec = tmp / "mlp.net"
    if not spec.exists():
        spec.write_text(SPEC)
    return main(["train", str(spec), "--batch", "431", "--epochs", "2", "--seed", "3",
                 "-o", str(tmp / out), "--no-progress", *extra])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One rank, two ranks, and two ranks again: (folder, exit status) each."""
    tmp = tmp_path_factory.mktemp("dist")
    return tmp, {name: train(tmp, name, *extra) for name, extra in
                 (("one", ()), ("two", ("--ranks", "2")), ("again", ("--ranks", "2")))}


def test_two_ranks_match_one_rank(runs):
    tmp, codes = runs
    assert codes == {"one": 0, "two": 0, "again": 0}
    one, two = weights(tmp / "one"), weights(tmp / "two")
    params = [k for k in one if k.startswith("param/")]
    assert params and set(one) == set(two)
    worst = max(float(np.max(np.abs(one[k] - two[k]))) for k in params)
    assert worst <= ATOL
    moved = max(float(np.max(np.abs(one[k]))) for k in params)
    assert moved > 10 * ATOL        # the comparison is not between zeros
    _, m1 = read_checkpoint(tmp / "one" / "checkpoint.safetensors")
    _, m2 = read_checkpoint(tmp / "two" / "checkpoint.safetensors")
    h1, h2 = m1.state["history"], m2.state["history"]
    assert [r["epoch"] for r in h2] == [1, 2] and m2.state["step"] == m1.state["step"] == 8
    for a, b in zip(h1, h2):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key


def test_two_ranks_repeat_bit_identical(runs):
    tmp, _ = runs
    two, again = weights(tmp / "two"), weights(tmp / "again")
    assert set(two) == set(again)
    for k in two:
        assert two[k].tobytes() == again[k].tobytes(), k


def test_dead_rank_named_checkpoint_intact_and_resumed_on_one_rank(runs, capsys):
    """Rank 1 is killed (SIGKILL) at its 6th step, in epoch 2: the run ends with status 1 and a
    message naming rank 1, no traceback; the checkpoint is epoch 1's, whole. Resumed on one rank
    it finishes as the one-rank run did; on two, as the two-rank run did."""
    tmp, _ = runs
    capsys.readouterr()
    os.environ["NETSPEC_FAULT"] = "train:step:1:6"
    try:
        code = train(tmp, "killed", "--ranks", "2")
    finally:
        del os.environ["NETSPEC_FAULT"]
    out = capsys.readouterr()
    assert code == 1
    assert "error: rank 1 (pid" in out.err and "died before the run finished" in out.err
    assert "holds epoch 1" in out.err and "--resume" in out.err
    assert "Traceback" not in out.err + out.out and "BAD TERMINATION" not in out.err + out.out
    _, meta = read_checkpoint(tmp / "killed" / "checkpoint.safetensors")
    assert meta.state["epoch"] == 1 and meta.state["step"] == 4
    assert not (tmp / "killed" / "weights.safetensors").exists()
    shutil.copytree(tmp / "killed", tmp / "killed_again")
    assert train(tmp, "killed", "--resume") == 0
    one, resumed = weights(tmp / "one"), weights(tmp / "killed")
    worst = max(float(np.max(np.abs(one[k] - resumed[k]))) for k in one if k.startswith("param/"))
    assert worst <= ATOL
    # resumed on 2 ranks instead, it is the uninterrupted 2-rank run, bit for bit
    assert train(tmp, "killed_again", "--resume", "--ranks", "2") == 0
    two, again = weights(tmp / "two"), weights(tmp / "killed_again")
    assert all(two[k].tobytes() == again[k].tobytes() for k in two if k.startswith("param/"))


def test_ranks_without_mpi4py_says_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)     # import mpi4py raises ImportError
    assert train(tmp_path, "run", "--ranks", "2") == 1
    err = capsys.readouterr().err
    assert "pip install 'netspec[mpi]'" in err and "Traceback" not in err


def test_ranks_under_an_mpi_launcher_is_a_usage_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    assert train(tmp_path, "run", "--ranks", "2") == 2
    assert "leave it out" in capsys.readouterr().err


def test_shards_cover_the_batch_nearly_evenly():
    from netspec.training.distributed import shard
    for n in (0, 1, 7, 431):
        for size in (1, 2, 3, 8):
            parts = [shard(np.arange(n), r, size) for r in range(size)]
            assert np.array_equal(np.concatenate(parts), np.arange(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_buckets_start_during_the_backward_pass():
    """Each bucket is sent right after the instruction that writes the last of its gradients,
    buckets follow the backward pass (the last layer's gradients first), and together they hold
    every gradient once."""
    import netspec
    from netspec.training.distributed import Communicator, GradientReducer
    model = netspec.load(str(ROOT / "specs" / "lenet5.net")).compile(warmup=False)
    reducer = GradientReducer(model, Communicator(), bucket_mb=0.05)
    phase = model.program.phases["train"]
    done = model.executor.final_writes("train", model.program.grads.values())
    names = [p for b in reducer.buckets for p in b.names]
    assert sorted(names) == sorted(model.program.grads)
    assert reducer.bucket_count >= 3
    for b in reducer.buckets:
        assert b.ready_after == max(done[model.program.grads[p]] for p in b.names)
        assert b.flat.size == sum(model.program.tensors[model.program.grads[p]].size(1) for p in b.names)
    ready = [b.ready_after for b in reducer.buckets]
    assert ready == sorted(ready) and ready[0] < len(phase.instrs) - 1
    # LeNet-5's last layer (named output) is the first whose gradients are final; its first
    # layer's weight gradient is the train phase's last instruction
    assert names[0].split(".")[0] == "output" and names[-1] == "c1.weight"
    assert ready[-1] == len(phase.instrs) - 1


def test_sync_batchnorm_trains_on_two_ranks_what_one_rank_does(tmp_path, capsys):
    """mlp_batchnorm's three batch norms, at batch 431 (the last batch of each epoch a single
    sample: rank 1's shard is empty and it adds zeros), with three gradient buckets whose
    reductions start between the backward pass's blocking sums. With sync_batchnorm every rank
    normalises with the global batch's statistics and differentiates through them, so 2 ranks
    train the 1-rank run's weights, running statistics included, within float32 rounding
    (measured: 1.5e-8 after 8 steps). Without it each rank normalises its own half of the
    batch, another computation: every tensor differs by 1.2e-5 or more."""
    spec = (ROOT / "specs" / "mlp_batchnorm.net").read_text()
    runs = {}
    for name, sync, extra in (("one", False, ()), ("sync", True, ("--ranks", "2")),
                              ("per_rank", False, ("--ranks", "2"))):
        path = tmp_path / f"{name}.net"
        path.write_text(spec.replace("metrics = [accuracy]", "metrics = [accuracy]\n        bucket_mb = 0.3"
                                     f"   sync_batchnorm = {'true' if sync else 'false'}"))
        capsys.readouterr()
        assert main(["train", str(path), "--batch", "431", "--epochs", "2", "--seed", "3",
                     "-o", str(tmp_path / name), "--no-progress", *extra]) == 0
        runs[name] = weights(tmp_path / name)
        out = capsys.readouterr().out
        assert ("3 batch norms synchronised (the global batch's statistics)" in out) == sync
        assert "in 3 bucket(s)" in out or not extra
    one = runs["one"]
    assert all(set(run) == set(one) for run in runs.values())
    assert any(k.endswith("running_var") for k in one)
    assert max(float(np.max(np.abs(one[k]))) for k in one if k.startswith("param/")) > 0.1

    def differences(run):
        return [float(np.max(np.abs(one[k].astype(np.float64) - run[k]))) for k in one]
    assert max(differences(runs["sync"])) <= ATOL
    assert min(differences(runs["per_rank"])) > 1e-6


def test_the_ranks_add_up_the_batch_sums_that_are_read_weighted_as_gradients():
    """Compiled with sync_batchnorm, mlp_batchnorm's three batch norms each send their forward
    sums (3 x channels: sums of x and x^2, rows) as they are, and the two whose input needs a
    gradient send their backward sums (2 x channels) weighted by the rank's share; the first
    normalises the image, whose gradient nothing needs, and sends none. An empty shard sends
    zeros in the same order. Compiled without, nothing is sent."""
    import netspec
    from netspec.training.distributed import BatchSums, Communicator

    class Recording(Communicator):
        def __init__(self):
            self.sent = []

        def allreduce_sum(self, buffer):
            self.sent.append(buffer.copy())
            return buffer

    net = netspec.load(ROOT / "specs" / "mlp_batchnorm.net")
    model = net.compile(training=True, warmup=False, sync_batchnorm=True)
    comm = Recording()
    sums = BatchSums(model, comm)
    assert [kind for _, _, kind, _ in sums.points] == ["data"] * 3 + ["gradient"] * 2
    assert sums.layers == 3
    rng = np.random.default_rng(0)
    x, y = rng.random((4, 1, 28, 28)).astype(np.float32), np.array([1, 7, 3, 0])
    model.train_buffers(x, y, after=sums.hooks(model.executor.buffers("train", 4), 0.25))
    assert [a.shape for a in comm.sent] == [(3, 784), (3, 300), (3, 100), (2, 100), (2, 300)]
    flat = x.reshape(4, -1).astype(np.float64)
    np.testing.assert_allclose(comm.sent[0], [flat.sum(0), (flat ** 2).sum(0), [4] * 784], rtol=1e-12)
    # the backward sums as sent: a quarter of this rank's own (batchnorm_grad_sums' gbias, gweight)
    bufs = model.train_buffers(x, y)
    grad = {p: bufs[g] for p, g in model.program.grads.items()}
    last = [n for n in model.params if n.endswith(".bias") and n.startswith("batchnorm")][-1]
    np.testing.assert_allclose(comm.sent[3][0], 0.25 * grad[last], rtol=1e-6)
    comm.sent.clear()
    for k, hook in sorted(sums.hooks(None, 0.0).items()):
        hook()
    assert [a.shape for a in comm.sent] == [(3, 784), (3, 300), (3, 100), (2, 100), (2, 300)]
    assert not any(a.any() for a in comm.sent)
    assert not BatchSums(net.compile(training=True, warmup=False), comm).points


def test_divergence_on_two_ranks_is_reported_once(tmp_path, capsys):
    """Judged on the global batch's loss, a divergence stops every rank at the same step; rank 0
    alone reports it (the others end quietly so that mpiexec does not stop rank 0 first)."""
    assert train(tmp_path, "run", "--ranks", "2", "--lr", "1e6") == 1
    err = capsys.readouterr().err
    assert err.count("training diverged") == 1 and "rank 1" not in err and "Traceback" not in err


@pytest.mark.parametrize("setting, message", [
    ("bucket_mb = 0", "bucket_mb must be a number > 0"),
    ("bucket_mb = 2000", "and <= 1024"),
    ("sync_batchnorm = 3", "sync_batchnorm is true or false"),
])
def test_data_parallel_settings_are_checked(tmp_path, capsys, setting, message):
    spec = tmp_path / "bad.net"
    spec.write_text(SPEC.replace("bucket_mb = 0.3", setting))
    assert main(["check", str(spec)]) == 1
    assert message in capsys.readouterr().err


def test_an_error_every_rank_meets_before_training_is_reported_once(tmp_path, capsys):
    assert train(tmp_path, "run", "--ranks", "2", "--data", str(tmp_path / "none.npz")) == 1
    err = capsys.readouterr().err
    assert err.count("none.npz: no such file") == 1 and "Traceback" not in err


# ---------------------------------------------------------------- the CUDA target

# batch norm (per-rank batch statistics, or the global batch's with sync_batchnorm) and momentum,
# on 48 of the embedded digits at batch 31: shards of 16 and 15, then 9 and 8; bucket_mb (1 KB)
# makes three buckets of its 5 KB of gradients
CUDA_SPEC = """
network small(classes=10) {
    input image: 1@8x8
    image -> conv(4, 3, pad=same, bias=false) -> batchnorm -> relu -> maxpool(2)
          -> flatten -> dense(16, act=relu) -> dense(classes) -> softmax -> out
    train {
        optimizer = momentum(lr=0.05, momentum=0.9)
        batch = 31   epochs = 1   validation_split = 0.25
        bucket_mb = 0.001   sync_batchnorm = SYNC
    }
}
"""
# measured: the CUDA target (the simulator) against the CPU, both on 2 ranks, differ by at most
# 1.2e-7 in any parameter, running statistic or momentum slot (float32's epsilon: the kernels
# sum in other orders)
CUDA_ATOL = 1e-6


@pytest.mark.parametrize("sync", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_two_ranks_on_cuda_follow_two_ranks_on_the_cpu(tmp_path, capsys, sync):
    """A --target cuda run on 2 ranks packs each bucket on the device and sums it through the
    host (one GPU, or the simulator, for 2 processes: NCCL needs one each, and the line that
    describes the run says so); its weights are the CPU's 2-rank run's."""
    from netspec.training.data import digits_raw
    from numba import config
    x, y = digits_raw()
    data = tmp_path / "few.npz"
    np.savez(data, x_train=x[:64], y_train=y[:64], x_test=x[64:96], y_test=y[64:96])
    spec = tmp_path / "small.net"
    spec.write_text(CUDA_SPEC.replace("SYNC", "true" if sync else "false"))
    runs = {}
    for target in ("cpu", "cuda"):
        capsys.readouterr()
        assert main(["train", str(spec), "--data", str(data), "--seed", "3", "--ranks", "2",
                     "--target", target, "-o", str(tmp_path / target), "--no-progress"]) == 0
        out = capsys.readouterr().out
        assert "gradients summed in 3 bucket(s)" in out
        runs[target] = weights(tmp_path / target)
    if config.ENABLE_CUDASIM:
        assert "through the host (ranks 0 and 1 share one GPU, and NCCL needs a GPU per process" in out
    cpu, gpu = runs["cpu"], runs["cuda"]
    assert set(cpu) == set(gpu) and any(k.startswith("optim/") for k in cpu)
    for k in cpu:
        assert np.max(np.abs(cpu[k].astype(np.float64) - gpu[k])) <= CUDA_ATOL, k


def test_a_device_communicator_sums_buckets_where_they_are(monkeypatch):
    """With a communicator that sums device arrays (NCCL's), the buckets stay in device memory:
    packed there (scaled by this rank's share of the batch), summed in place, copied back into
    the gradient buffers the optimizer reads. One process, so the sum is its own bucket: the
    gradients come back as the share times this rank's own, computed apart."""
    import netspec
    from netspec.training.distributed import Communicator, GradientReducer, Request

    seen = []

    class Done(Request):
        def wait(self):
            pass

        def test(self):
            return True

    class OnDevice(Communicator):
        on_host = False

        def iallreduce_sum(self, buffer):
            assert not isinstance(buffer, np.ndarray)     # a device array, not a host copy
            seen.append(buffer.size)
            return Done()

    net = netspec.loads(CUDA_SPEC.replace("SYNC", "false"))
    model = net.compile(target="cuda", seed=1, training=True, warmup=False)
    rng = np.random.default_rng(0)
    x = rng.random((3, 1, 8, 8)).astype(np.float32)
    y = np.array([1, 7, 3])
    bufs = model.train_buffers(x, y)
    own = {p: model.to_host(bufs[g]).copy() for p, g in model.program.grads.items()}
    reducer = GradientReducer(model, OnDevice(), bucket_mb=0.001)
    assert all(b.staging is None for b in reducer.buckets)
    hooks = reducer.begin(model.executor.buffers("train", 3), 0.25)
    model.train_buffers(x, y, after=hooks)
    grads = reducer.finish()
    assert sorted(seen) == sorted(b.flat.size for b in reducer.buckets) and len(seen) == 3
    for p, g in model.program.grads.items():
        assert grads[p] is model.executor.buffers("train", 3)[g]
        np.testing.assert_allclose(model.to_host(grads[p]), 0.25 * own[p], rtol=1e-6, atol=1e-9)


def test_each_process_takes_the_gpu_of_its_rank_on_the_machine(monkeypatch):
    from netspec.runtime.cuda import collectives
    chosen = []
    monkeypatch.setattr(collectives.cuda, "select_device", chosen.append)
    assert collectives.use_gpu(0, gpus=0) == (None, "no GPU is visible to this process")
    assert chosen == []
    gpu, why = collectives.use_gpu(5, gpus=4)
    assert chosen == [1] and gpu == collectives.cuda.get_current_device().uuid
    if collectives.config.ENABLE_CUDASIM:
        assert why == "the CUDA simulator has no NCCL"


def test_without_cupy_nccl_says_how_to_install_it(monkeypatch):
    from netspec.runtime.cuda import collectives
    monkeypatch.setattr(collectives.cuda, "select_device", lambda device: None)
    monkeypatch.setattr(collectives.config, "ENABLE_CUDASIM", False)
    monkeypatch.setitem(sys.modules, "cupy", None)
    _, why = collectives.use_gpu(1, gpus=2)
    assert why.startswith("CuPy with NCCL is not installed") and "pip install 'netspec[nccl]'" in why


class _Peers:
    """A host communicator as rank 0 sees it, the other ranks' answers given, one list a call."""
    rank, local_rank, on_host = 0, 0, True

    def __init__(self, size, *answers):
        self.size, self.answers = size, list(answers)

    def allgather_object(self, obj):
        return [obj, *self.answers.pop(0)]


@pytest.mark.parametrize("mine, theirs, expected", [
    (("A", None), [("B", None)], "device"),
    (("A", "no NCCL here"), [("B", None)], "rank 0: no NCCL here"),
    (("A", None), [("B", "CuPy with NCCL is not installed")], "rank 1: CuPy with NCCL is not installed"),
    (("A", "the simulator"), [("B", "the simulator")], "the simulator"),
    # two processes on one GPU (more processes than GPUs; or CUDA_VISIBLE_DEVICES naming the same
    # one): whatever else they say
    (("A", None), [("A", None)], "ranks 0 and 1 share one GPU, and NCCL needs a GPU per process"),
    (("A", "the simulator"), [("A", "the simulator")], "ranks 0 and 1 share one GPU"),
    (("A", None), [("B", None), ("A", None), ("C", None)], "ranks 0 and 2 share one GPU"),
    (("A", None), [("A", None)] * 7, "ranks 0 to 7 share one GPU"),
    # one GPU each, bound by the launcher: each process sees one, numbered 0, their own
    (("A", None), [("B", None), ("C", None), ("D", None)], "device"),
])
def test_every_rank_must_have_a_gpu_of_its_own_and_nccl(mine, theirs, expected, monkeypatch):
    """NCCL only when every process can use it (otherwise a rank would wait in a collective the
    others never start) and no two processes share a GPU (NCCL refuses that); the reason given
    names the ranks, unless every rank has the same one."""
    from types import SimpleNamespace
    from netspec.runtime import targets
    from netspec.runtime.target import Target
    from netspec.training.distributed import for_target
    device = object()
    collectives = SimpleNamespace(use_gpu=lambda local_rank: mine, communicator=lambda host: device)
    cpu = targets.get_target("cpu")
    fake = Target("fake", cpu.kernels, cpu.capabilities, cpu.new_context, cpu.prepare,
                  collectives=collectives)
    monkeypatch.setitem(targets.TARGETS, "fake", fake)
    size = 1 + len(theirs)
    # agree() gathers once (prepare went well everywhere), the choice once, the communicator once
    host = _Peers(size, [None] * len(theirs), theirs, [None] * len(theirs))
    comm, why = for_target(host, "fake")
    if expected == "device":
        assert comm is device and why is None
    else:
        assert comm is host and why.startswith(expected)
    assert for_target(None, "fake") == (None, None)
    on_cpu = _Peers(2, [None])     # a target without a device communicator: the host's
    assert for_target(on_cpu, "cpu") == (on_cpu, None)
