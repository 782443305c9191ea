"""The Python API: inputs checked with clear errors, parameters in PyTorch's layouts,
weights saved and loaded safely (safetensors / npz, no pickle, atomic)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import netspec
from netspec.model import InputError
from netspec.runtime.checkpoint import WeightsError, load_arrays, save_arrays

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def lenet():
    return netspec.load("specs/lenet5.net", classes=10).compile(seed=3)


def test_params_use_pytorch_layouts_and_names(lenet):
    shapes = {k: v.shape for k, v in lenet.params.items()}
    assert shapes["c1.weight"] == (6, 1, 5, 5)
    assert shapes["c3.weight"] == (16, 6, 5, 5)
    assert shapes["f6.weight"] == (84, 120)
    assert sum(v.size for v in lenet.params.values()) == 61_706
    assert sorted(lenet.trainable) == sorted(lenet.params)


def test_output_is_a_distribution_in_nchw_batches(lenet):
    x = np.random.default_rng(0).standard_normal((5, 1, 32, 32)).astype(np.float32)
    p = lenet(x)
    assert p.shape == (5, 10) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(lenet.predict(x, batch_size=2), p, rtol=1e-6)
    p[...] = 0   # a fresh array, not the model's buffer
    assert lenet(x).sum() > 4


@pytest.mark.parametrize("x, message", [
    (np.zeros((4, 32, 32, 1), np.float32), r"shape \(4, 32, 32, 1\), expected \(N, 1, 32, 32\)"),
    (np.zeros((1, 32, 32), np.float32), r"expected \(N, 1, 32, 32\)"),
    (np.zeros((0, 1, 32, 32), np.float32), r"expected \(N, 1, 32, 32\)"),
    (np.zeros((2, 1, 32, 32), np.uint8), r"must be floating point"),
    ([[1.0]], r"must be a NumPy array of shape \(N, 1, 32, 32\)"),
])
def test_wrong_inputs_name_the_expected_shape(lenet, x, message):
    with pytest.raises(InputError, match=message):
        lenet(x)


def test_wrong_labels_are_refused(lenet):
    x = np.zeros((2, 1, 32, 32), np.float32)
    with pytest.raises(InputError, match=r"labels must lie in 0..9"):
        lenet.loss_and_grads(x, np.array([0, 10]))
    with pytest.raises(InputError, match=r"integers of shape \(2,\)"):
        lenet.loss_and_grads(x, np.array([0.0, 1.0]))


def test_gradients_are_read_only_views_in_parameter_layout(lenet):
    x = np.random.default_rng(1).standard_normal((3, 1, 32, 32)).astype(np.float32)
    loss, grads = lenet.loss_and_grads(x, np.array([1, 2, 3]))
    assert np.isfinite(loss) and loss > 0
    assert grads["c1.weight"].shape == (6, 1, 5, 5)
    with pytest.raises(ValueError):
        grads["c1.weight"][...] = 0


def test_state_dict_is_a_copy_that_later_weights_do_not_change():
    model = netspec.load("specs/mlp.net").compile(seed=1, warmup=False)
    before = model.state_dict()
    model.set_weights({k: v + 1 for k, v in before.items()})
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:   # dense weights are stored in PyTorch's layout already: no view leaks out
        np.testing.assert_array_equal(after[k], before[k] + 1)
        assert not np.shares_memory(after[k], model.params[k])


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_weights_round_trip(lenet, tmp_path, suffix):
    path = tmp_path / f"w{suffix}"
    lenet.save_weights(path)
    other = netspec.load("specs/lenet5.net", classes=10).compile(seed=99, warmup=False)
    assert not np.array_equal(other.params["c1.weight"], lenet.params["c1.weight"])
    assert other.load_weights(path) == sorted(lenet.params)
    for k, v in lenet.params.items():
        np.testing.assert_array_equal(other.params[k], v)
    x = np.random.default_rng(2).standard_normal((2, 1, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(other(x), lenet(x))


def test_load_refuses_mismatches_clearly(lenet, tmp_path):
    arrays = lenet.state_dict()
    arrays["c1.weight"] = np.zeros((6, 5, 5, 1), np.float32)   # OHWI instead of OIHW
    save_arrays(tmp_path / "bad.safetensors", arrays)
    with pytest.raises(WeightsError, match=r"c1.weight has shape \(6, 5, 5, 1\), the network expects \(6, 1, 5, 5\)"):
        lenet.load_weights(tmp_path / "bad.safetensors")
    arrays = lenet.state_dict()
    arrays["c1.wieght"] = arrays.pop("c1.weight")
    save_arrays(tmp_path / "renamed.npz", arrays)
    with pytest.raises(WeightsError, match=r"missing 1: c1.weight; unexpected 1: c1.wieght"):
        lenet.load_weights(tmp_path / "renamed.npz")
    assert "c3.weight" in lenet.load_weights(tmp_path / "renamed.npz", strict=False)


def test_files_needing_pickle_or_corrupt_are_refused(lenet, tmp_path):
    np.savez(tmp_path / "objects.npz", **{"c1.weight": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(WeightsError, match="pickle"):
        lenet.load_weights(tmp_path / "objects.npz")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        lenet.load_weights(tmp_path / "junk.safetensors")
    with pytest.raises(WeightsError, match="unknown weight file type '.pt'"):
        lenet.save_weights(tmp_path / "w.pt")
    with pytest.raises(WeightsError, match="no such file"):
        lenet.load_weights(tmp_path / "absent.npz")


def test_a_failed_save_keeps_the_previous_file(lenet, tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    lenet.save_weights(path)
    before = path.read_bytes()

    def crash(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        lenet.save_weights(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]   # no temporary left
    arrays, meta = load_arrays(path)
    assert meta["network"] == "lenet5"


def test_a_pytorch_state_dict_converts_by_renaming(lenet):
    # LeNet-5 as a plain nn.Sequential: only the names differ (docs/RUNTIME.md)
    torch.manual_seed(0)
    seq = torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 5), torch.nn.Tanh(), torch.nn.AvgPool2d(2), torch.nn.Tanh(),
        torch.nn.Conv2d(6, 16, 5), torch.nn.Tanh(), torch.nn.AvgPool2d(2), torch.nn.Tanh(),
        torch.nn.Conv2d(16, 120, 5), torch.nn.Tanh(), torch.nn.Flatten(),
        torch.nn.Linear(120, 84), torch.nn.Tanh(), torch.nn.Linear(84, 10), torch.nn.Softmax(1))
    rename = {"0": "c1", "4": "c3", "8": "c5", "11": "f6", "13": "output"}
    state = {f"{rename[k.split('.')[0]]}.{k.split('.')[1]}": v.numpy()
             for k, v in seq.state_dict().items()}
    lenet.set_weights(state)
    x = np.random.default_rng(3).standard_normal((4, 1, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = seq(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(lenet(x), expected, rtol=1e-5, atol=1e-6)


def test_python_predict_and_netspec_predict_agree_on_trained_weights(tmp_path, monkeypatch, capsys):
    """Weights from `netspec train` carry their inputs' normalisation: load_weights keeps it, so
    model.predict on raw digits gives what `netspec predict` gives (it gave 68% accuracy where
    `netspec predict` gave 98%, ignoring the normalisation)."""
    from netspec.cli import main
    from netspec.training.data import digits_raw
    monkeypatch.chdir(tmp_path)
    spec = str(ROOT / "specs" / "lenet5.net")
    assert main(["train", spec, "--epochs", "2", "-o", "run", "--no-progress"]) == 0
    x, y = digits_raw()
    np.save("raw.npy", x[:300])                     # integers 0..16, as the digits are stored
    assert main(["predict", spec, "raw.npy", "--weights", "run/weights.safetensors", "-o", "cli.npy"]) == 0
    capsys.readouterr()
    model = netspec.load(spec).compile(training=False, warmup=False)
    model.load_weights("run/weights.safetensors")
    assert model.input_norm is not None and model.input_norm["fit"] == "resize"
    probs = model.predict(x[:300])
    # `netspec predict` runs 256 inputs at a time: the conv kernel chosen for the last 44 may
    # sum its products in other blocks than the one for 300 (float32 rounding, not the inputs)
    np.testing.assert_allclose(probs, np.load("cli.npy"), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(model.predict(x[:300], batch_size=256), np.load("cli.npy"))
    assert (probs.argmax(1) == y[:300]).mean() > 0.9
    # the checkpoint holds the same normalisation (and its weights under param/)
    other = netspec.load(spec).compile(training=False, warmup=False)
    other.load_weights("run/checkpoint.safetensors")
    assert other.input_norm == model.input_norm
    # weights saved from Python carry none: inputs are used as given
    model.save_weights("api.safetensors")
    fresh = netspec.load(spec).compile(training=False, warmup=False)
    fresh.load_weights("api.safetensors")
    assert fresh.input_norm is None
    prepared = model.prepare(x[:5])
    np.testing.assert_array_equal(fresh.predict(prepared), model.predict(x[:5]))


def test_the_warmup_bar_counts_every_instruction_and_the_functions_numba_compiled(monkeypatch):
    """progress=True: a bar over the warm-up's instructions (each compiles or loads its kernel),
    with Numba's compiles (cache misses) counted through its event API."""
    import numba

    import netspec.model as model_module
    bars = []

    class Recorded(model_module._WarmupBar):
        def __init__(self, *args):
            super().__init__(*args)
            bars.append(self)
    monkeypatch.setattr(model_module, "_WarmupBar", Recorded)
    net = netspec.load("specs/lenet5.net")
    model = net.compile(progress=True)
    program = model.program
    (bar,) = bars
    (task,) = bar.progress.tasks
    assert task.total == sum(len(program.phases[p].instrs) for p in ("prepare", "infer", "train")
                             if p in program.phases)
    assert task.completed == task.total and model.executor.on_step is None

    @numba.njit(cache=False)
    def new_function(x):         # nothing cached: one compile the bar must count
        return x + 1

    with Recorded(True, 1) as step:
        new_function(1)
        step()
    assert bars[-1].progress.tasks[0].fields["compiled"] >= 1
    net.compile(progress=False)
    assert bars[-1].progress is None                 # no bar asked, none drawn


def test_a_kernel_cache_is_cold_until_it_holds_a_compiled_entry(tmp_path, monkeypatch):
    import numba

    from netspec.runtime.cpu.context import kernel_cache_is_cold
    monkeypatch.setattr(numba.config, "CACHE_DIR", str(tmp_path))
    assert kernel_cache_is_cold()
    (tmp_path / "runtime_x").mkdir()
    (tmp_path / "runtime_x" / "kernels.relu-10.py311.nbi").write_bytes(b"index")
    assert not kernel_cache_is_cold()
