"""`netspec train` end to end: accuracy on the embedded digits, determinism, exact resume,
divergence, a kill during a save, transfer learning, IDX data, penalties, early stopping."""

from __future__ import annotations

import gzip
import json
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import netspec
from netspec.cli import main
from netspec.lower.build import default_loss
from netspec.runtime.checkpoint import load_arrays
from netspec.training import config as C
from netspec.training.data import digits_raw
from netspec.training.run import train
from netspec.training.trainer import Trainer, TrainingError, read_checkpoint

ROOT = Path(__file__).resolve().parents[1]

# small and fast, but with everything that draws random numbers: shuffling, a shift
# augmentation and dropout
SMALL = """
network small(classes=10) {
    input image: 1@8x8
    image -> base: conv(8, 3, pad=same, act=relu) -> maxpool(2)
          -> flatten -> hidden: dense(32, act=relu) -> dropout(0.2)
          -> head: dense(classes) -> softmax -> out
    train {
        optimizer = adam(lr=0.01)
        batch = 32   epochs = 4
        augment = shift(amount=0.125)
    }
}
"""
# for tests of what is learnt: one-pixel shifts of 8x8 digits make 6 epochs too few
PLAIN = SMALL.replace("augment = shift(amount=0.125)", "")


def run(spec_text, out, *, sets=None, epochs=None, resume=False, init_path=None, freeze=(),
        data=None, echo=None, **flags):
    net = netspec.loads(spec_text, **(sets or {}))
    from netspec.training.run import apply_freeze
    apply_freeze(net.graph, list(freeze))
    cfg = C.resolve(net.graph.train, loss=default_loss(net.graph), epochs=epochs, data=data, **flags)
    context = {"sets": sorted((sets or {}).items()), "freeze": list(freeze)}
    return train(net, spec_text, context, cfg, out, resume=resume, init_path=init_path,
                 echo=echo or (lambda *a: None), epochs_override=epochs)


def weights(out) -> dict:
    return load_arrays(Path(out) / "weights.safetensors")[0]


def history(out) -> list[dict]:
    rows = json.loads((Path(out) / "history.json").read_text())
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


# ---------------------------------------------------------------- the README's run


@pytest.mark.slow
def test_lenet5_on_the_embedded_digits_reaches_97_percent(tmp_path, capsys):
    out = tmp_path / "lenet5"
    assert main(["train", str(ROOT / "specs/lenet5.net"), "--seed", "0", "-o", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] >= 0.97
    assert metrics["epochs_run"] == 10
    for name in ("weights.safetensors", "checkpoint.safetensors", "history.json", "history.csv",
                 "learning_curves.png", "learning_curves.svg"):
        assert (out / name).stat().st_size > 0
    rows = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in rows] == list(range(1, 11))
    assert set(rows[0]) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"}
    assert rows[-1]["loss"] < rows[0]["loss"] / 5
    csv_lines = (out / "history.csv").read_text().splitlines()
    assert csv_lines[0].split(",")[:3] == ["epoch", "loss", "accuracy"] and len(csv_lines) == 11
    printed = capsys.readouterr().out
    assert "test: loss" in printed
    assert (f"wrote {out}/ (weights.safetensors, checkpoint.safetensors, history.json, history.csv, "
            f"learning_curves.png, learning_curves.svg, metrics.json)") in printed

    # eval scores the same weights on the same test split: the same accuracy
    capsys.readouterr()
    assert main(["eval", str(ROOT / "specs/lenet5.net"), "--weights", str(out / "weights.safetensors"),
                 "--format", "json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert ev["loss"] == pytest.approx(metrics["test_loss"], rel=1e-5)
    counts = np.array(ev["confusion_matrix"])
    assert counts.sum() == 360 and np.trace(counts) == round(ev["accuracy"] * 360)

    # predict on raw 8x8 digits (0..16, as the embedded file holds them)
    x, y = digits_raw()
    np.save(tmp_path / "few.npy", x[:20])
    assert main(["predict", str(ROOT / "specs/lenet5.net"), str(tmp_path / "few.npy"),
                 "--weights", str(out / "weights.safetensors"), "-o", str(tmp_path / "p.csv")]) == 0
    lines = (tmp_path / "p.csv").read_text().splitlines()[1:]
    predicted = np.array([int(line.split(",")[1]) for line in lines])
    probs = np.array([[float(v) for v in line.split(",")[2:]] for line in lines])
    assert np.allclose(probs.sum(1), 1, atol=1e-4)
    assert (predicted == y[:20]).mean() >= 0.9


# ---------------------------------------------------------------- determinism and resume


def test_the_same_seed_gives_the_same_history_and_weights(tmp_path):
    run(SMALL, tmp_path / "a", epochs=3)
    run(SMALL, tmp_path / "b", epochs=3)
    assert history(tmp_path / "a") == history(tmp_path / "b")
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    run(SMALL, tmp_path / "c", epochs=3, seed=1)
    assert history(tmp_path / "c") != history(tmp_path / "a")


def test_resume_continues_exactly(tmp_path):
    run(SMALL, tmp_path / "straight", epochs=4)
    run(SMALL, tmp_path / "split", epochs=2)
    ckpt, meta = read_checkpoint(tmp_path / "split" / "checkpoint.safetensors")
    assert json.loads(meta["state"])["epoch"] == 2
    run(SMALL, tmp_path / "split", epochs=4, resume=True)
    assert history(tmp_path / "split") == history(tmp_path / "straight")
    wa, wb = weights(tmp_path / "straight"), weights(tmp_path / "split")
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


def test_resume_refuses_another_spec(tmp_path):
    run(SMALL, tmp_path / "r", epochs=1)
    with pytest.raises(TrainingError, match="different network than small: dense hidden: bias 32 in the file, 16 here"):
        run(SMALL.replace("dense(32", "dense(16"), tmp_path / "r", epochs=2, resume=True)


def test_a_diverging_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    run(SMALL, tmp_path / "ok", epochs=1)
    good = weights(tmp_path / "ok")
    real_lr = Trainer._lr
    # from the first step of epoch 2 on, an absurd learning rate blows the weights up
    monkeypatch.setattr(Trainer, "_lr", lambda self: 1e30 if self.state.epoch >= 1 else real_lr(self))
    with pytest.raises(TrainingError, match=r"loss became (nan|inf) at epoch 2, batch \d+ \(step \d+\)"):
        run(SMALL, tmp_path / "bad", epochs=3)
    arrays, meta = read_checkpoint(tmp_path / "bad" / "checkpoint.safetensors")
    assert json.loads(meta["state"])["epoch"] == 1
    assert all(np.array_equal(arrays[f"param/{k}"], v) for k, v in good.items())
    # and the weights written are the last good (and best) epoch's, as metrics.json says
    assert all(np.array_equal(weights(tmp_path / "bad")[k], v) for k, v in good.items())
    metrics = json.loads((tmp_path / "bad" / "metrics.json").read_text())
    assert metrics["weights_epoch"] == 1 and metrics["diverged"]["epoch"] == 2


KILLER = """
import os, sys
import safetensors.numpy as st
import netspec.cli
calls = {"n": 0}
real_save, real_fsync = st.save, os.fsync
def save(*a, **k):
    calls["n"] += 1
    return real_save(*a, **k)
def fsync(fd):
    # the second checkpoint's bytes are in its temporary file: die before the rename
    if calls["n"] == 2:
        os._exit(9)
    real_fsync(fd)
st.save, os.fsync = save, fsync
sys.exit(netspec.cli.main(sys.argv[1:]))
"""


def test_a_kill_during_a_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    spec = tmp_path / "small.net"
    spec.write_text(SMALL)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", KILLER, "train", str(spec), "--epochs", "3", "-o", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 9, proc.stderr
    arrays, meta = read_checkpoint(out / "checkpoint.safetensors")
    assert json.loads(meta["state"])["epoch"] == 1
    # and the run goes on from it
    assert main(["train", str(spec), "--epochs", "2", "-o", str(out), "--resume"]) == 0
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 2


# ---------------------------------------------------------------- transfer learning


def digits_npz(path, keep):
    x, y = digits_raw()
    mask = np.isin(y, keep)
    np.savez(path, x=(x[mask] * 15).astype(np.uint8), y=(y[mask] - min(keep)).astype(np.int64))
    return path


def test_transfer_learning_keeps_the_frozen_base_bit_identical(tmp_path):
    low = digits_npz(tmp_path / "low.npz", [0, 1, 2, 3, 4])
    high = digits_npz(tmp_path / "high.npz", [5, 6, 7, 8, 9])
    pre = run(PLAIN, tmp_path / "pre", sets={"classes": 5}, data=str(low), epochs=6)
    assert pre["test_accuracy"] > 0.9
    base = weights(tmp_path / "pre")
    # a new head (other seed, so it is not the old head by chance), the base frozen
    result = run(PLAIN, tmp_path / "fine", sets={"classes": 5}, data=str(high), epochs=6, seed=7,
                 init_path=tmp_path / "pre" / "weights.safetensors", freeze=["base"])
    after = weights(tmp_path / "fine")
    for name in ("base.weight", "base.bias"):
        assert np.array_equal(after[name], base[name]), name
    for name in ("hidden.weight", "head.weight"):
        assert not np.array_equal(after[name], base[name]), name
    assert result["test_accuracy"] > 0.85


def test_the_frozen_line_names_what_the_user_froze_not_batch_norm_statistics(tmp_path):
    """Running statistics never get gradients; only layers frozen by trainable=false or
    --freeze are reported, counted with the right plural."""
    lines = []
    bn = SMALL.replace("hidden: dense(32, act=relu)", "hidden: dense(32) -> batchnorm -> relu", 1)
    assert bn != SMALL
    run(bn, tmp_path / "bn", epochs=1, echo=lines.append)
    assert not [line for line in lines if line.startswith("frozen")]
    assert any("batch 32, 1 epoch, loss" in line for line in lines)
    lines.clear()
    run(bn, tmp_path / "frozen", epochs=1, freeze=["base"], echo=lines.append)
    assert [line for line in lines if line.startswith("frozen")] == \
        ["frozen: 2 tensors (base.weight, base.bias)"]


def test_init_from_skips_tensors_whose_shape_changed(tmp_path):
    run(SMALL, tmp_path / "ten", epochs=1)
    net = netspec.loads(SMALL, classes=3)
    model = net.compile(warmup=False)
    from netspec.training.run import init_from
    loaded, skipped = init_from(model, tmp_path / "ten" / "weights.safetensors")
    assert "base.weight" in loaded and "head.weight" not in loaded
    assert any(s.startswith("head.weight (shape (10, 32), here (3, 32))") for s in skipped)


def test_freeze_names_an_unknown_layer_with_a_hint(tmp_path):
    from netspec.training.run import apply_freeze
    with pytest.raises(TrainingError, match="no layer or block 'hiden'.*hidden"):
        apply_freeze(netspec.loads(SMALL).graph, ["hiden"])


# ---------------------------------------------------------------- IDX data, the lecture's nets


def write_idx(path, arr):
    data = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.write_bytes(gzip.compress(data + arr.tobytes()))


def bars(n, rng):
    """28x28 images whose class is the row band that is lit: learnable in a few steps."""
    y = rng.integers(0, 10, n).astype(np.uint8)
    x = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for i, k in enumerate(y):
        x[i, 2 * k + 3: 2 * k + 6, 4:24] = 250
    return x, y


@pytest.fixture
def idx_folder(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "fashion"
    folder.mkdir()
    x, y = bars(320, rng)
    xt, yt = bars(100, rng)
    write_idx(folder / "train-images-idx3-ubyte.gz", x)
    write_idx(folder / "train-labels-idx1-ubyte.gz", y)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", xt)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", yt)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("spec, flags", [("mlp_batchnorm.net", ["--epochs", "3"]),
                                         ("fashion_cnn.net", ["--epochs", "2", "--lr", "0.001"])])
def test_the_lecture_nets_train_on_idx_files(tmp_path, idx_folder, spec, flags):
    out = tmp_path / "run"
    assert main(["train", str(ROOT / "specs" / spec), "--data", str(idx_folder), "-o", str(out),
                 "--no-progress", *flags]) == 0
    rows = json.loads((out / "history.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert metrics["test_accuracy"] > 0.5  # chance is 0.1


# ---------------------------------------------------------------- penalties, early stopping


PENALISED = """
network pen() {
    input image: 1@8x8
    image -> c: conv(4, 3, l2=0.05) -> relu -> flatten -> d: dense(10) -> softmax -> out
    train { optimizer = sgd(lr=0.1)   batch = 2000   epochs = 1   l1 = 0.01   validation_split = 0 }
}
"""


def test_penalties_enter_the_update_per_layer_and_globally(tmp_path):
    """One full-batch SGD step: w1 = w0 - lr * (g + l1 sign(w0) + 2 l2 w0), with the conv's own
    l2 and the global l1 (the layer sets only l2), the dense layer with the global l1 only."""
    from netspec.training.data import load_data
    net = netspec.loads(PENALISED)
    model = net.compile(warmup=False)
    model.init_params(0)
    w0 = {k: v.copy() for k, v in model.params.items()}
    data = load_data(None, (1, 8, 8), 10, 0.0, 0)
    _, grads = model.loss_and_grads(data.train.x, data.train.y)
    g = {k: v.copy() for k, v in grads.items()}
    model.init_params(0)
    result = run(PENALISED, tmp_path / "p", epochs=1)
    w1 = weights(tmp_path / "p")
    lr = 0.1
    expect = {"c.weight": w0["c.weight"] - lr * (g["c.weight"] + 0.01 * np.sign(w0["c.weight"])
                                                 + 2 * 0.05 * w0["c.weight"]),
              "d.weight": w0["d.weight"] - lr * (g["d.weight"] + 0.01 * np.sign(w0["d.weight"])),
              "c.bias": w0["c.bias"] - lr * g["c.bias"]}
    for k, v in expect.items():
        np.testing.assert_allclose(w1[k], v, rtol=1e-4, atol=1e-6, err_msg=k)
    assert result["epochs_run"] == 1


def test_early_stopping_restores_the_best_weights(tmp_path, monkeypatch):
    spec = SMALL.replace("augment = shift(amount=0.125)", "early_stopping = early_stopping(patience=2)")
    # validation losses scripted: best at epoch 2, then no improvement for 2 epochs
    script = iter([1.0, 0.5, 0.6, 0.7, 0.4, 0.3])
    real = Trainer.evaluate
    saved = {}

    def evaluate(self, dataset):
        row = real(self, dataset)
        if dataset is self.data.val:
            row["loss"] = next(script)
            # copies: state_dict's arrays may share the live buffers the next step changes
            saved[self.state.epoch + 1] = {k: v.copy() for k, v in self.model.state_dict().items()}
        return row
    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    result = run(spec, tmp_path / "es", epochs=6)
    assert result["stopped_early"] and result["epochs_run"] == 4 and result["best_epoch"] == 2
    assert result["weights_epoch"] == 2
    final = weights(tmp_path / "es")
    assert all(np.array_equal(final[k], saved[2][k]) for k in final)
    assert not all(np.array_equal(final[k], saved[4][k]) for k in final)


# ---------------------------------------------------------------- the command line's errors


@pytest.mark.parametrize("args, code, words", [
    (["--data", "/no/such/place"], 1, "/no/such/place"),
    (["--target", "tpu"], 2, "'tpu' is not one of"),
    (["--resume"], 1, "no checkpoint"),
    (["--freeze", "c9"], 1, "no layer or block 'c9'"),
    (["--optimizer", "adamw"], 1, "unknown optimizer 'adamw'"),
    (["--epochs", "0"], 2, "epochs"),
])
def test_train_reports_bad_input_without_a_traceback(tmp_path, capsys, args, code, words):
    rc = main(["train", str(ROOT / "specs/lenet5.net"), "-o", str(tmp_path / "x"), *args])
    err = capsys.readouterr().err
    assert rc == code and words in err and "Traceback" not in err


def test_eval_without_a_run_says_to_train_first(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["eval", str(ROOT / "specs/lenet5.net")]) == 1
    assert "train first" in capsys.readouterr().err


def test_categorical_targets_and_autoencoder_targets():
    from netspec.training.trainer import make_targets
    y = np.array([2, 0])
    x = np.zeros((2, 1, 2, 2), np.float32)
    assert make_targets("categorical_crossentropy", y, x, (3,), np.float32).tolist() == [[0, 0, 1], [1, 0, 0]]
    assert make_targets("binary_crossentropy", np.array([1, 0]), x, (1,), np.float32).tolist() == [[1], [0]]
    norm = {"mean": [0.25], "std": [2.0]}
    assert np.allclose(make_targets("mse", y, x + 1, (1, 2, 2), np.float32, norm), 2.25)


def test_a_spec_with_a_categorical_loss_trains(tmp_path):
    spec = PLAIN.replace("optimizer = adam(lr=0.01)", "loss = categorical_crossentropy  optimizer = adam(lr=0.01)")
    result = run(textwrap.dedent(spec), tmp_path / "cc", epochs=3)
    assert result["test_accuracy"] > 0.8


def test_validation_data_replaces_the_split(tmp_path):
    train_npz = digits_npz(tmp_path / "train.npz", list(range(10)))
    x, y = digits_raw()
    np.savez(tmp_path / "val.npz", x=(x[:100] * 15).astype(np.uint8), y=y[:100])
    lines = []
    run(PLAIN, tmp_path / "v", data=str(train_npz), validation_data=str(tmp_path / "val.npz"),
        epochs=2, echo=lines.append)
    # all 1,797 digits train (but the 20% test hold-out): no validation split taken from them
    assert any("1,437 training, 100 validation, 360 test samples" in line for line in lines), lines
    assert "val_accuracy" in history(tmp_path / "v")[0]


def test_augment_flag_overrides_the_section(tmp_path, capsys):
    spec = tmp_path / "small.net"
    spec.write_text(SMALL)
    assert main(["train", str(spec), "--epochs", "1", "-o", str(tmp_path / "a"), "--augment", "flip, crop(amount=1)"]) == 0
    _, meta = read_checkpoint(tmp_path / "a" / "checkpoint.safetensors")
    assert json.loads(meta["config"])["augment"] == {"flip": {}, "crop": {"amount": 1}}
    assert main(["train", str(spec), "--epochs", "1", "-o", str(tmp_path / "b"), "--augment", "flop"]) == 2
    assert "did you mean 'flip'" in capsys.readouterr().err


def test_top_k_is_recorded_for_training_and_validation(tmp_path):
    spec = PLAIN.replace("batch = 32", "batch = 32   metrics = [accuracy, top_k]   top_k = 3")
    result = run(spec, tmp_path / "k", epochs=2)
    row = history(tmp_path / "k")[-1]
    assert {"top_3", "val_top_3"} <= set(row)
    assert row["top_3"] >= row["accuracy"] and row["val_top_3"] >= row["val_accuracy"]
    assert result["test_top_3"] >= result["test_accuracy"]


def test_progress_bars_and_the_eval_table(tmp_path, capsys):
    spec = tmp_path / "small.net"
    spec.write_text(PLAIN)
    assert main(["train", str(spec), "--epochs", "1", "-o", str(tmp_path / "p"), "--progress"]) == 0
    capsys.readouterr()
    assert main(["eval", str(spec), "--weights", str(tmp_path / "p" / "weights.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "confusion matrix" in out and "precision" in out and "360 samples" in out


def test_lr_flag_scales_a_piecewise_schedule():
    section = {"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
               "schedule": {"name": "piecewise", "epochs": [30, 60], "lr": [0.1, 0.01, 0.001]}}
    cfg = C.resolve(section, loss="mse", lr=0.01)
    assert cfg["optimizer"]["lr"] == 0.01
    assert cfg["schedule"]["lr"] == pytest.approx([0.01, 0.001, 0.0001])
    assert C.resolve(section, loss="mse")["schedule"]["lr"] == [0.1, 0.01, 0.001]


def test_a_short_run_with_slow_batch_norm_statistics_gets_a_note():
    from netspec.training.run import running_statistics_note
    graph = netspec.load(ROOT / "specs/resnet34.net", input_shape=(3, 32, 32)).graph
    note = running_statistics_note(graph, 84)
    assert "momentum 0.99" in note and "keep 43%" in note and "at least 299 steps" in note
    assert running_statistics_note(graph, 400) is None
    assert running_statistics_note(netspec.load(ROOT / "specs/lenet5.net").graph, 10) is None


def test_an_unknown_early_stopping_monitor_fails_before_training(tmp_path):
    spec = PLAIN.replace("batch = 32", "batch = 32   early_stopping = early_stopping(monitor=val_acuracy)")
    with pytest.raises(TrainingError, match="monitors 'val_acuracy'.*val_accuracy"):
        run(spec, tmp_path / "m", epochs=1)
    assert not (tmp_path / "m" / "history.json").exists()


@pytest.mark.parametrize("cold", [True, False])
def test_the_first_time_note_only_when_the_kernel_cache_is_cold(tmp_path, capsys, monkeypatch, cold):
    import netspec.runtime.cpu.context as context
    monkeypatch.setattr(context, "kernel_cache_is_cold", lambda: cold)
    assert main(["train", str(ROOT / "specs/lenet5.net"), "--epochs", "1", "--no-progress",
                 "-o", str(tmp_path / "run")]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("compiling lenet5 for cpu")
    assert ("the first time takes a while" in first) == cold
