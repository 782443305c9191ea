"""The CUDA target as a user meets it: whole networks compiled for "cuda" give the CPU target's
outputs, loss, gradients and running statistics; parameters written on the host reach the
device and what the device updates is read back; without a GPU, a driver or numba-cuda the
commands say so and exit 1.

Without a GPU (CI) the networks run under numba-cuda's simulator (tests/conftest.py), on small
inputs: LeNet-5 as shipped, and a small ResNet of the shipped bottleneck blocks
(specs/lib/resnet_blocks.net, ResNet-50's).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import netspec
from netspec import cli
from netspec.runtime.cuda import memory as cuda_memory
from netspec.runtime.target import TargetUnavailable
from netspec.runtime import targets

ROOT = Path(__file__).resolve().parent.parent

# float32 on both targets, summed in other orders: the outputs' and the loss's relative error
# stays near float32's epsilon, the gradients' (longer sums, through every layer) within 1e-4
OUTPUT_TOL, GRAD_TOL = 2e-6, 1e-4

SMALL_RESNET = """
import "lib/resnet_blocks.net"

network small_resnet(classes=5) {
    input image: 3@8x8
    image -> conv(8, 3, pad=same, bias=false) -> batchnorm(0.9, 1e-5) -> relu
          -> bottleneck(2) -> bottleneck(4, stride=2) -> bottleneck(4)
          -> global_avgpool -> dense(classes) -> softmax -> out
}
"""


def rel(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-300))


@pytest.fixture(scope="module")
def small_resnet(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small_resnet")
    (folder / "lib").mkdir()
    shutil.copy(ROOT / "specs" / "lib" / "resnet_blocks.net", folder / "lib")
    (folder / "small_resnet.net").write_text(SMALL_RESNET)
    return netspec.load(folder / "small_resnet.net")


def networks(small_resnet):
    """name -> (network, input shape, classes, batch): under the simulator every multiply-add
    of every CUDA thread is interpreted, so LeNet-5 runs one image (it has no batch norm)."""
    return {"lenet5": (netspec.load(ROOT / "specs" / "lenet5.net"), (1, 32, 32), 10, 1),
            "small_resnet": (small_resnet, (3, 8, 8), 5, 3)}


@pytest.mark.slow
@pytest.mark.parametrize("name, passes", [("lenet5", "default"), ("small_resnet", "default"),
                                          ("small_resnet", "none")])
def test_a_network_on_cuda_gives_the_cpu_targets_results(name, passes, small_resnet):
    """Inference, a training step's loss and every gradient, and the running statistics the
    step leaves, from the same parameters and batch: with the graph passes (folded batch norms
    and fused groups) and without them."""
    net, shape, classes, batch = networks(small_resnet)[name]
    rng = np.random.default_rng(7)
    x = rng.standard_normal((batch, *shape)).astype(np.float32)
    y = rng.integers(0, classes, batch)
    chosen = None if passes == "default" else []
    cpu = net.compile(target="cpu", seed=3, passes=chosen)
    gpu = net.compile(target="cuda", seed=3, passes=chosen, warmup=False)
    assert gpu.executor.target.name == "cuda" and not gpu.executor.memory.on_host
    # the same initial parameters, drawn on the host and sent to the device
    assert all(np.array_equal(gpu.params[k], v) for k, v in cpu.params.items())
    assert rel(gpu.predict(x), cpu.predict(x)) < OUTPUT_TOL
    loss_cpu, grads_cpu = cpu.loss_and_grads(x, y)
    loss_gpu, grads_gpu = gpu.loss_and_grads(x, y)
    assert abs(loss_gpu - loss_cpu) < OUTPUT_TOL * abs(loss_cpu)
    assert grads_gpu.keys() == grads_cpu.keys()
    for k in grads_cpu:
        assert rel(grads_gpu[k], grads_cpu[k]) < GRAD_TOL, k
    # batch norm's running statistics were updated on the device, and are read back
    stats = [k for k in cpu.params if k.endswith(("running_mean", "running_var"))]
    assert bool(stats) == (name == "small_resnet")
    for k in stats:
        assert rel(gpu.params[k], cpu.params[k]) < OUTPUT_TOL, k


def test_parameters_written_on_the_host_reach_the_device(small_resnet):
    """A parameter set through `params` (or set_weights) is what the next run on the device
    uses; the derived tensors (folded batch norms) are recomputed from it."""
    net = small_resnet
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    cpu = net.compile(target="cpu", seed=3)
    gpu = net.compile(target="cuda", seed=3, warmup=False)
    before = gpu.predict(x)
    weights = {k: v * 1.5 if k.endswith(".weight") else v for k, v in cpu.state_dict().items()}
    cpu.set_weights(weights)
    gpu.set_weights(weights)
    after = gpu.predict(x)
    assert rel(after, cpu.predict(x)) < OUTPUT_TOL
    assert rel(after, before) > 1e-3        # the new weights, not the old ones, were used
    gpu.params["dense1.bias"][...] = 4.0    # one element path: through the view
    cpu.params["dense1.bias"][...] = 4.0
    assert rel(gpu.predict(x), cpu.predict(x)) < OUTPUT_TOL


def test_a_training_loop_on_the_device_buffers(small_resnet):
    """train_buffers hands the target's arrays: on cuda, device arrays that to_host reads, with
    the loss and the gradients of the CPU target's step."""
    net = small_resnet
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    y = np.array([1, 4])
    cpu = net.compile(target="cpu", seed=5)
    gpu = net.compile(target="cuda", seed=5, warmup=False)
    bufs_cpu, bufs_gpu = cpu.train_buffers(x, y), gpu.train_buffers(x, y)
    assert not isinstance(bufs_gpu[gpu.program.loss], np.ndarray)     # on the device
    assert abs(gpu.loss_value(bufs_gpu) - cpu.loss_value(bufs_cpu)) < OUTPUT_TOL
    for name, g in cpu.program.grads.items():
        assert rel(gpu.to_host(bufs_gpu[g]), bufs_cpu[g]) < GRAD_TOL, name


# ---------------------------------------------------------------- where cuda cannot run

def _no_gpu(monkeypatch):
    def detect():
        raise RuntimeError("Error at driver init: CUDA driver library cannot be found.")
    monkeypatch.setattr(cuda_memory.cuda, "is_available", lambda: False)
    monkeypatch.setattr(cuda_memory.cuda, "detect", detect)


def test_without_a_gpu_compiling_for_cuda_is_refused_with_the_reason(monkeypatch):
    _no_gpu(monkeypatch)
    net = netspec.load(ROOT / "specs" / "lenet5.net")
    with pytest.raises(TargetUnavailable, match="cuda target cannot run on this machine: Error "
                       "at driver init: CUDA driver library cannot be found.*--target cpu"):
        net.compile(target="cuda")


@pytest.mark.parametrize("command", [["train", "--epochs", "1"], ["eval"], ["predict", "x.npy"]])
def test_without_a_gpu_the_commands_exit_1_with_the_reason_and_write_nothing(
        command, monkeypatch, tmp_path, capsys):
    _no_gpu(monkeypatch)
    monkeypatch.chdir(tmp_path)
    spec = str(ROOT / "specs" / "lenet5.net")
    argv = [command[0], spec, *command[1:], "--target", "cuda"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the cuda target cannot run on this machine") and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_compiling_for_cuda_needs_no_gpu(monkeypatch, tmp_path, capsys):
    """`netspec compile --target cuda` plans memory for the CUDA target (its 256-byte
    alignment, its gradient group) without running anything."""
    _no_gpu(monkeypatch)
    out = tmp_path / "build"
    assert cli.main(["compile", str(ROOT / "specs" / "lenet5.net"), "--target", "cuda",
                     "-o", str(out)]) == 0
    plans = json.loads((out / "memory_plan.json").read_text())
    assert {p["align"] for p in plans.values()} == {256}
    # every block starts on 256 bytes; inside the gradients' block they lie end to end
    starts = {}
    for p in plans.values():
        for t in p["tensors"]:
            key = (p["phase"], t["slot"])
            starts[key] = min(starts.get(key, t["offset"]), t["offset"])
    assert starts and all(o % 256 == 0 for o in starts.values())


def test_without_numba_cuda_the_target_says_how_to_install_it(monkeypatch):
    monkeypatch.delitem(targets.TARGETS, "cuda", raising=False)
    monkeypatch.setitem(targets.PACKAGES, "cuda", ("cuda_missing", "cuda"))
    with pytest.raises(TargetUnavailable, match=r"pip install 'netspec\[cuda\]'"):
        targets.get_target("cuda")


# ---------------------------------------------------------------- training, across targets

# a small network with every kind of training state: batch norm's running statistics,
# dropout's masks, momentum's slots; trained on 64 of the embedded digits (two steps an epoch)
TRAINED = """
network small(classes=10) {
    input image: 1@8x8
    image -> conv(4, 3, pad=same, bias=false) -> batchnorm -> relu -> maxpool(2)
          -> flatten -> dense(16, act=relu) -> dropout(0.25) -> dense(classes) -> softmax -> out
    train {
        optimizer = momentum(lr=0.05, momentum=0.9)
        batch = 32   epochs = 2   validation_split = 0.25   l2 = 1e-3   clip_norm = 5.0
    }
}
"""


def _train(out, target, epochs, data, resume=False):
    from netspec.lower.build import default_loss
    from netspec.training import config as C
    from netspec.training.run import train
    net = netspec.loads(TRAINED)
    cfg = C.resolve(net.graph.train, loss=default_loss(net.graph), epochs=epochs, data=str(data))
    train(net, TRAINED, {"sets": [], "freeze": []}, cfg, out, target=target, resume=resume,
          echo=lambda *a: None, epochs_override=epochs)
    from netspec.runtime.checkpoint import load_arrays
    return load_arrays(Path(out) / "checkpoint.safetensors")[0]


@pytest.mark.slow
def test_training_on_cuda_follows_the_cpu_and_checkpoints_move_between_them(tmp_path):
    """Two epochs on the CPU; the same on cuda; and one epoch on the CPU resumed on cuda: the
    weights, running statistics and optimizer slots of the three agree to float32's rounding
    of other summation orders (the checkpoints hold host arrays under the same names)."""
    from netspec.training.data import digits_raw
    x, y = digits_raw()
    data = tmp_path / "few.npz"
    np.savez(data, x_train=x[:64], y_train=y[:64], x_test=x[64:96], y_test=y[64:96])
    on_cpu = _train(tmp_path / "cpu", "cpu", 2, data)
    on_cuda = _train(tmp_path / "cuda", "cuda", 2, data)
    after_one = _train(tmp_path / "moved", "cpu", 1, data)
    moved = _train(tmp_path / "moved", "cuda", 2, data, resume=True)
    assert on_cpu.keys() == on_cuda.keys() == moved.keys()
    assert any(k.startswith("optim/") for k in on_cpu) and any("running_var" in k for k in on_cpu)
    for k, want in on_cpu.items():
        assert rel(on_cuda[k], want) < 1e-4, k
        assert rel(moved[k], want) < 1e-4, k
    # and the second epoch, on cuda, did train
    assert rel(moved["param/dense1.weight"], after_one["param/dense1.weight"]) > 1e-3


def test_one_optimizer_launch_updates_every_parameter(small_resnet, monkeypatch):
    """The CUDA target packs the trainable parameters in one allocation and the memory planner
    lays their gradients end to end in the train arena, both in the program's parameter order
    (Capabilities.contiguous_params): the optimizer's update is one kernel launch over all of
    them, and gives the CPU target's step."""
    from netspec.runtime.cuda import launch
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    y = np.array([0, 3])
    models = {t: small_resnet.compile(target=t, seed=2, warmup=False) for t in ("cpu", "cuda")}
    gpu = models["cuda"]
    plan = gpu.executor.memory_plan("train", 2)
    grads = [plan.tensors[g] for g in gpu.program.grads.values()]
    assert len(grads) > 20
    assert all(b.offset == a.offset + a.nbytes for a, b in zip(grads, grads[1:]))
    launches = []

    class Counting(launch.Runner):
        def launch(self, kernel, n, *args):
            launches.append(kernel.py_func.__name__)
            super().launch(kernel, n, *args)

    stepped = {}
    for target, model in models.items():
        params = model.physical_params()
        optimizer = model.optim.make_optimizer("momentum", params, momentum=0.9)
        for _ in range(2):
            bufs = model.train_buffers(x, y)
            monkeypatch.setattr(launch, "RUNNER", Counting())
            launches.clear()
            optimizer.step({n: bufs[g] for n, g in model.program.grads.items()}, 0.1)
            monkeypatch.undo()
        stepped[target] = model.state_dict()
    assert launches == ["_momentum"]
    for k, want in stepped["cpu"].items():
        assert rel(stepped["cuda"][k], want) < GRAD_TOL, k


COMPILE_MEMORY_KERNELS = """
import re
from numba import cuda, float32, float64
from netspec.runtime.cuda import memory
for t in (float32, float64):
    ptx, _ = cuda.compile_ptx(memory._scaled_copy.py_func, (t[::1], t[::1], t), cc=(9, 0))
    print(re.search(r"^\\.target (\\S+)", ptx, re.M).group(1))
"""


def test_the_device_memory_copies_match_numpy_and_compile_for_sm90():
    """DeviceMemory.scaled_copy and copy (data-parallel training's bucket packing) give NumPy's
    values, across shapes of equal size; the kernel compiles to PTX for sm_90 with no GPU."""
    import os
    import subprocess
    import sys
    from netspec.runtime.target import HostMemory
    rng = np.random.default_rng(5)
    src = rng.standard_normal((3, 4, 5)).astype(np.float32)
    for memory in (cuda_memory.DeviceMemory, HostMemory):
        dst = memory.full((60,), 0, np.float32)
        memory.scaled_copy(dst, _put(memory, src), 0.25)
        np.testing.assert_array_equal(memory.download(dst), (src * np.float32(0.25)).reshape(-1))
        back = _put(memory, np.zeros((3, 4, 5), np.float32))
        memory.copy(back, dst)
        np.testing.assert_array_equal(memory.download(back), src * np.float32(0.25))
    # a host destination that no flat view covers (every other column) is written itself, not
    # a copy of it
    strided = np.zeros((3, 4, 8), np.float32)[..., :5]
    HostMemory.scaled_copy(strided, src, 0.25)
    np.testing.assert_array_equal(strided, src * np.float32(0.25))
    HostMemory.copy(strided, src)
    np.testing.assert_array_equal(strided, src)
    done = subprocess.run([sys.executable, "-c", COMPILE_MEMORY_KERNELS], capture_output=True,
                          text=True, env={**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["sm_90", "sm_90"]


def _put(memory, host: np.ndarray):
    a = memory.empty(host.shape, host.dtype)
    memory.upload(a, host)
    return a
