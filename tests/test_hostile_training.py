"""Training that survives (issue 13, class 2 and class 7's --resume): a loss that explodes
against the run's own scale stops the run naming the step, before that update, keeping the
last good checkpoint; a worse epoch never replaces the best weights unless --keep last asks;
--resume refuses the flags it cannot honour instead of ignoring them."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import netspec
from netspec.cli import main
from netspec.lower.build import default_loss
from netspec.runtime.checkpoint import load_arrays, save_arrays
from netspec.testing.hostile import assert_refused, changes, run_netspec, tree_state
from netspec.training import config as C
from netspec.training.data import digits_raw
from netspec.training.run import train
from netspec.training.trainer import (DIVERGENCE_FACTOR, Diverged, RunState, Trainer, TrainingError,
                                      read_checkpoint)

ROOT = Path(__file__).resolve().parents[1]
LENET = ROOT / "specs" / "lenet5.net"

SMALL = """
network small(classes=10) {
    input image: 1@8x8
    image -> base: conv(8, 3, pad=same, act=relu) -> maxpool(2)
          -> flatten -> hidden: dense(32, act=relu) -> head: dense(classes) -> softmax -> out
    train {
        optimizer = adam(lr=0.01)
        batch = 32   epochs = 4
        augment = shift(amount=0.125)
    }
}
"""


def run(spec_text, out, *, resume=False, echo=None, **flags) -> dict:
    """A run as `netspec train` makes it, in-process: flags as the command line gives them."""
    net = netspec.loads(spec_text)
    cfg = C.resolve(net.graph.train, loss=default_loss(net.graph), **flags)
    return train(net, spec_text, {}, cfg, out, resume=resume, echo=echo or (lambda *a: None),
                 flags=flags)


def weights(out) -> dict:
    return load_arrays(Path(out) / "weights.safetensors")[0]


def checkpoint(out) -> tuple[dict, dict]:
    arrays, meta = read_checkpoint(Path(out) / "checkpoint.safetensors")
    return arrays, json.loads(meta["state"])


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------- the divergence rule


def judge(loss_name="sparse_categorical_crossentropy", out_shape=(10,)) -> Trainer:
    """A Trainer with only what the divergence check reads (a run's state and loss)."""
    t = Trainer.__new__(Trainer)
    t.state, t.cfg, t.out_shape = RunState(), {"loss": loss_name, "clip_norm": None}, out_shape
    t.per_pixel = False                  # a label per sample, not per pixel (segmentation)
    return t


def feed(t: Trainer, losses, targets=None) -> None:
    targets = np.zeros((4, 10)) if targets is None else targets
    for loss in losses:
        t._check_loss(loss, 0.1, t.state.step + 1, targets)
        t.state.step += 1


@pytest.mark.parametrize("losses", [
    [2.3, 0.001, 0.3, 2.3],                  # a noisy batch after a near-perfect one
    [2.3, 1041.0, 3.9, 27.3],                # Adam's first steps on fashion_cnn at lr 0.01
    [2.3, 2.3 * DIVERGENCE_FACTOR * 0.99],   # just under the limit
    [0.001, 0.3, 5.0, 2.3 * 9000],           # from trained weights: ln(10) is the floor
])
def test_healthy_sequences_never_count_as_divergence(losses):
    t = judge()
    feed(t, losses)
    assert t.state.loss_scale == pytest.approx(max(losses[0], math.log(10)))


def test_a_loss_over_the_factor_times_the_first_batch_diverges():
    t = judge()
    feed(t, [2.5, 0.01, 2.5e4])   # the limit itself is not over it
    with pytest.raises(Diverged, match=r"exploded to 2\.6e\+04 at epoch 1, batch 4 \(step 4\): over "
                       r"10,000 times this run's scale, 2\.5 .*learning rate 0\.1.*clip_norm") as e:
        feed(t, [2.6e4])
    assert e.value.where == (1, 4, 4) and e.value.loss == 2.6e4 and e.value.lr == 0.1


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_loss_that_is_not_finite_diverges_even_at_the_first_batch(bad):
    with pytest.raises(Diverged, match=rf"the loss became {bad} at epoch 1, batch 1 \(step 1\)"):
        feed(judge(), [bad])


@settings(deadline=None, database=None, max_examples=200)
@given(first=st.floats(1e-6, 1e6), later=st.lists(st.floats(0, 1), max_size=30),
       over=st.floats(1.0001, 1e6))
def test_only_a_loss_over_the_limit_diverges_whatever_came_before(first, later, over):
    """Losses up to the limit (fractions of it, in any order, however low some are) never
    diverge and never move the scale; the first one over it does, naming its step."""
    t = judge()
    feed(t, [first])
    scale = max(first, math.log(10))
    limit = DIVERGENCE_FACTOR * scale
    feed(t, [f * limit for f in later])
    assert t.state.loss_scale == scale
    with pytest.raises(Diverged) as e:
        feed(t, [over * limit])
    assert e.value.where == (1, len(later) + 2, len(later) + 2)


def test_mse_is_judged_against_the_mean_squared_target():
    t = judge("mse", (1, 4, 4))
    feed(t, [0.001], targets=np.full((2, 1, 4, 4), 0.5))   # guessing zeros scores 0.25
    assert t.state.loss_scale == 0.25
    feed(t, [0.25 * DIVERGENCE_FACTOR * 0.9])
    with pytest.raises(Diverged):
        feed(t, [0.25 * DIVERGENCE_FACTOR * 1.1])


# ---------------------------------------------------------------- divergence, end to end


def test_lr_1e6_stops_at_the_second_step_and_writes_nothing(tmp_path):
    before = tree_state(tmp_path)
    outcome = run_netspec("train", LENET, "--lr", "1e6", "-o", "run", "--no-progress",
                          cwd=tmp_path, timeout=180)
    assert_refused(outcome, "training diverged", "exploded to 9.21e+04 at epoch 1, batch 2 (step 2)",
                   "10,000 times this run's scale, 2.316", "learning rate 1e+06",
                   "that update was not applied", "--lr", "clip_norm",
                   "no epoch finished, so this run wrote no weights and no checkpoint", codes=(1,))
    assert changes(before, tree_state(tmp_path, skip=("run",))) == []
    for name in ("weights.safetensors", "checkpoint.safetensors", "metrics.json", "history.json"):
        assert not (tmp_path / "run" / name).exists(), name


def test_a_piecewise_jump_to_lr_1e6_after_epoch_2_keeps_epoch_2(tmp_path):
    """The issue's run: epoch 2 (val accuracy 0.965) was overwritten by a diverged epoch 5."""
    spec = LENET.read_text().replace(
        "epochs = 10", "epochs = 5\n"
        "        schedule = piecewise(epochs=[2], lr=[0.05, 1e6])")
    lines = []
    with pytest.raises(Diverged, match=r"exploded to .* at epoch 3, batch 2 \(step 44\).*learning rate "
                       r"1e\+06.*weights\.safetensors holds epoch 2's weights.*is epoch 2's, the "
                       r"last good one: continue it with --resume and a lower --lr"):
        run(spec, tmp_path / "r", echo=lines.append)
    arrays, state = checkpoint(tmp_path / "r")
    assert state["epoch"] == 2 and state["step"] == 42
    assert same(weights(tmp_path / "r"), {k[6:]: v for k, v in arrays.items() if k.startswith("param/")})
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["weights_epoch"] == metrics["best_epoch"] == 2 and metrics["monitor"] == "val_loss"
    assert metrics["diverged"] == {"epoch": 3, "batch": 2, "step": 44, "loss": pytest.approx(4.7e5, rel=0.1),
                                   "lr": 1e6}
    assert metrics["test_accuracy"] > 0.9
    assert len(json.loads((tmp_path / "r" / "history.json").read_text())) == 2
    assert "weights.safetensors: epoch 2's weights (best val_loss 0.1299, last good epoch)" in lines


def test_an_update_that_makes_the_weights_nan_ends_the_run_before_its_epoch_counts(tmp_path):
    # nine training samples: each epoch is one batch, whose loss is finite; only the weights show
    # that its update blew up (found by the command-line fuzz: the epoch was kept, its NaN
    # weights became the "last good" ones, and restoring them ended in exit 3)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "few.npz", x=rng.integers(0, 256, (12, 8, 8), dtype=np.uint8),
             y=np.arange(12) % 10)
    with pytest.raises(Diverged, match=r"the update at epoch 1, batch 1 \(step 1\) made \S+ and \d+ "
                       r"more tensors NaN or infinite .*learning rate 1e\+300\. This epoch is not kept"
                       r".*No epoch finished"):
        run(SMALL, tmp_path / "r", data=str(tmp_path / "few.npz"), lr=1e300, epochs=2)
    assert not (tmp_path / "r" / "checkpoint.safetensors").exists()
    assert not (tmp_path / "r" / "weights.safetensors").exists()


def test_a_diverged_resume_keeps_the_checkpoint_and_a_lower_lr_continues(tmp_path):
    """From the command line: 2 good epochs, a resume at lr 1e6 that explodes, a resume at a
    lower rate that finishes; the checkpoint is not touched by the failure."""
    common = ("train", LENET, "-o", "run", "--no-progress")
    first = run_netspec(*common, "--epochs", "2", cwd=tmp_path, timeout=180)
    assert first.rc == 0, first
    ckpt = tmp_path / "run" / "checkpoint.safetensors"
    kept, good = digest(ckpt), weights(tmp_path / "run")

    boom = run_netspec(*common, "--epochs", "4", "--resume", "--lr", "1e6", cwd=tmp_path, timeout=180)
    assert_refused(boom, "--lr 1e+06: changed from 0.05", "training diverged", "at epoch 3, batch 2",
                   "learning rate 1e+06", "holds epoch 2's weights", "continue it with --resume",
                   codes=(1,))
    assert digest(ckpt) == kept   # not rewritten; weights.safetensors rewritten with the same weights
    assert same(weights(tmp_path / "run"), good)

    calm = run_netspec(*common, "--epochs", "4", "--resume", "--lr", "0.01", cwd=tmp_path, timeout=180)
    assert calm.rc == 0, calm
    assert "--lr 0.01: changed from 0.05 for the rest of the run" in calm.stdout
    rows = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [(r["epoch"], r["lr"]) for r in rows] == [(1, 0.05), (2, 0.05), (3, 0.01), (4, 0.01)]


# ---------------------------------------------------------------- healthy runs never stop


HEALTHY = [
    ("lenet5.net", {"epochs": 2}, None),
    ("lenet5.net", {"epochs": 2}, ("batch = 64", "batch = 64   schedule = piecewise(epochs=[1], "
                                                 "lr=[0.005, 0.05])")),   # a warm-up
    ("mlp.net", {"epochs": 2}, None),
    ("mlp_batchnorm.net", {"epochs": 2}, None),
    pytest.param("autoencoder.net", {"epochs": 2}, None, marks=pytest.mark.slow),     # 10 s
    # Adam at lr 0.01 spikes to ~1,000 at the second batch; 400 digits keep its 28x28 convs quick
    pytest.param("fashion_cnn.net", {"epochs": 1, "data": "few"}, None, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("spec, flags, edit", HEALTHY, ids=["lenet5", "lenet5-warmup", "mlp",
                                                          "mlp_batchnorm", "autoencoder", "fashion_cnn"])
def test_the_specs_own_settings_stay_far_below_the_limit(tmp_path, monkeypatch, spec, flags, edit):
    text = (ROOT / "specs" / spec).read_text()
    if edit:
        text = text.replace(*edit)
    if flags.get("data") == "few":
        x, y = digits_raw()
        np.savez(tmp_path / "few.npz", x=(x[:400] * 15).astype(np.uint8), y=y[:400])
        flags = {**flags, "data": str(tmp_path / "few.npz")}
    seen = []
    real = Trainer._check_loss

    def check(self, loss, lr, batch, targets):
        real(self, loss, lr, batch, targets)
        seen.append(loss / self.state.loss_scale)
    monkeypatch.setattr(Trainer, "_check_loss", check)
    result = run(text, tmp_path / "r", **flags)
    assert result["epochs_run"] == flags["epochs"] and "diverged" not in result
    assert max(seen) < DIVERGENCE_FACTOR / 10


# ---------------------------------------------------------------- the best weights


def scripted_validation(monkeypatch, losses):
    """Validation losses as scripted; returns {epoch: a copy of the weights scored}."""
    script = iter(losses)
    real = Trainer.evaluate
    scored = {}

    def evaluate(self, dataset):
        row = real(self, dataset)
        if dataset is self.data.val:
            row["loss"] = next(script)
            scored[self.state.epoch + 1] = {k: v.copy() for k, v in self.model.state_dict().items()}
        return row
    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    return scored


def test_a_worse_epoch_never_replaces_the_best_weights(tmp_path, monkeypatch):
    scored = scripted_validation(monkeypatch, [1.0, 0.5, 0.7, 0.9, 0.6])
    lines = []
    result = run(SMALL, tmp_path / "r", epochs=4, echo=lines.append)
    assert not same(scored[2], scored[4])
    assert same(weights(tmp_path / "r"), scored[2])
    assert result["best_epoch"] == result["weights_epoch"] == 2 and result["keep"] == "best"
    assert "weights.safetensors: epoch 2's weights (best val_loss 0.5000)" in lines
    # the checkpoint keeps them too, so a resumed run that gets no better still writes them
    arrays, state = checkpoint(tmp_path / "r")
    assert state["best_epoch"] == 2
    assert same({k[5:]: v for k, v in arrays.items() if k.startswith("best/")}, scored[2])
    result = run(SMALL, tmp_path / "r", epochs=5, resume=True)
    assert result["weights_epoch"] == 2 and same(weights(tmp_path / "r"), scored[2])
    # unless asked: --keep last, even on a finished run, writes the last epoch's
    lines.clear()
    result = run(SMALL, tmp_path / "r", epochs=5, resume=True, keep="last", echo=lines.append)
    assert result["weights_epoch"] == 5 and result["keep"] == "last"
    assert same(weights(tmp_path / "r"), scored[5])
    assert "  --keep last: changed from best for the rest of the run" in lines
    assert "weights.safetensors: epoch 5's weights (last epoch)" in lines


def test_keep_last_from_the_command_line_and_the_training_loss_as_monitor(tmp_path, capsys):
    spec = tmp_path / "small.net"
    spec.write_text(SMALL)
    assert main(["train", str(spec), "--epochs", "2", "--validation-split", "0", "--keep", "last",
                 "-o", str(tmp_path / "r"), "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["monitor"] == "loss" and metrics["keep"] == "last" and metrics["weights_epoch"] == 2
    assert "keeping the last epoch's weights" in capsys.readouterr().out
    assert main(["train", str(spec), "--keep", "worst", "-o", str(tmp_path / "x")]) == 2


def test_early_stopping_without_restore_best_keeps_the_last_unless_told():
    section = {"early_stopping": {"restore_best": False}}
    assert C.resolve(section, loss="mse")["keep"] == "last"
    assert C.resolve(section, loss="mse", keep="best")["keep"] == "best"
    assert C.resolve({"early_stopping": True}, loss="mse")["keep"] == "best"
    assert C.resolve(None, loss="mse")["keep"] == "best"


def test_a_checkpoint_from_before_the_best_weights_were_kept_resumes(tmp_path):
    run(SMALL, tmp_path / "r", epochs=1)
    path = tmp_path / "r" / "checkpoint.safetensors"
    arrays, meta = read_checkpoint(path)
    state = json.loads(meta["state"])
    del state["loss_scale"]
    state.update(best=None, best_epoch=None)
    save_arrays(path, {k: v for k, v in arrays.items() if not k.startswith("best/")},
                {**meta, "state": json.dumps(state)})
    result = run(SMALL, tmp_path / "r", epochs=2, resume=True)
    assert result["epochs_run"] == 2 and result["best_epoch"] in (1, 2)
    _, state = checkpoint(tmp_path / "r")
    assert state["loss_scale"] > 0   # fixed again by the resumed run's first batch


# ---------------------------------------------------------------- --resume and other flags


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    """A finished 1-epoch run of SMALL (its checkpoint is never changed by a refused resume)."""
    folder = tmp_path_factory.mktemp("resume")
    (folder / "small.net").write_text(SMALL)
    assert main(["train", str(folder / "small.net"), "--epochs", "1", "-o", str(folder / "r"),
                 "--no-progress"]) == 0
    return folder


@pytest.mark.parametrize("flag, value, stored", [
    ("--batch", "16", "32"),
    ("--seed", "3", "0"),
    ("--optimizer", "sgd", "adam"),
    ("--augment", "flip", "'shift(amount=0.125)'"),
    ("--validation-split", "0.2", "0.1"),
    ("--validation-data", "val.npz", "none"),
    ("--data", "other.npz", "digits"),
])
def test_resume_refuses_a_flag_it_would_ignore(one_epoch, capsys, flag, value, stored):
    ckpt = one_epoch / "r" / "checkpoint.safetensors"
    before = digest(ckpt)
    rc = main(["train", str(one_epoch / "small.net"), "-o", str(one_epoch / "r"), "--resume",
               "--epochs", "2", flag, value])
    err = capsys.readouterr().err
    shown = f"'{value}'" if flag == "--augment" else value
    assert rc == 2, err
    assert f"--resume continues a run with the settings it started with, so it cannot take {flag} " \
           f"{shown} (the run's is {stored})" in err
    assert f"only --epochs, --lr and --keep may change), or start a new run from the checkpoint's " \
           f"weights: --init-from {ckpt} {flag} {shown} -o NEW_FOLDER" in err
    assert digest(ckpt) == before


def test_resume_names_every_refused_flag_and_accepts_the_stored_values(one_epoch, capsys):
    args = ["train", str(one_epoch / "small.net"), "-o", str(one_epoch / "r"), "--resume", "--epochs", "1"]
    assert main([*args, "--batch", "8", "--seed", "5"]) == 2
    err = capsys.readouterr().err
    assert "--batch 8 (the run's is 32); --seed 5 (the run's is 0). Resume without them" in err
    # repeating the run's own settings is no change: nothing left to train, exit 0
    assert main([*args, "--batch", "32", "--seed", "0", "--optimizer", "adam", "--data", "digits",
                 "--augment", "shift(amount=0.125)", "--validation-split", "0.1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "nothing left to train" in out and "changed" not in out


def test_a_schedule_with_bad_arguments_is_an_error_not_a_crash(tmp_path, capsys):
    spec = tmp_path / "bad.net"
    spec.write_text(SMALL.replace("batch = 32", "batch = 32   schedule = piecewise(epochs=[2], lr=[0.1])"))
    assert main(["train", str(spec), "--epochs", "1", "-o", str(tmp_path / "r"), "--no-progress"]) == 1
    assert "train section: schedule 'piecewise' needs one more lr than epoch boundaries" in \
        capsys.readouterr().err
