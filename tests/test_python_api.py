"""The Keras-like Python API against the command line it stands for: model.fit is `netspec
train` (same Trainer, same history), model.evaluate is `netspec eval`, model.save and
netspec.load_model keep a model whole, net.render is `netspec render`, summaries are their
table, with totals per batch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import netspec
from netspec.cli import main
from netspec.errors import TrainingError
from netspec.runtime.checkpoint import load_arrays
from netspec.training.config import ConfigError
from netspec.training.data import digits_raw

ROOT = Path(__file__).resolve().parent.parent
LENET = str(ROOT / "specs/lenet5.net")

# a small network on the digits' 64 pixels: compiles and trains an epoch in well under a second
TINY = """
network tiny(classes=10, hidden=16) {
    input x: 64
    x -> h: dense(hidden) -> relu -> dense(classes) -> softmax -> out
    train { optimizer = adam(lr=0.01)  batch = 128  epochs = 3 }
}
"""


@pytest.fixture(scope="module")
def lenet_fit(tmp_path_factory):
    """LeNet-5 fitted from Python as `netspec train --seed 0 --epochs 2` trains it, run from a
    fresh folder that must stay empty; and that command's run folder."""
    work = tmp_path_factory.mktemp("fit")
    cwd = Path.cwd()
    import os
    os.chdir(work)
    try:
        model = netspec.load(LENET).compile(seed=0)
        history = model.fit("digits", epochs=2, seed=0, verbose=0)
        left = sorted(p.name for p in work.iterdir())
        run = tmp_path_factory.mktemp("cli") / "run"
        assert main(["train", LENET, "--seed", "0", "--epochs", "2", "-o", str(run),
                     "--no-progress"]) == 0
    finally:
        os.chdir(cwd)
    return model, history, left, run


def test_fit_gives_netspec_trains_history_and_writes_no_file(lenet_fit):
    model, history, left, run = lenet_fit
    assert left == []                       # out_dir=None: nothing written, not even runs/
    rows = json.loads((run / "history.json").read_text())
    assert history.epoch == [0, 1]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        assert history.history[key] == pytest.approx([r[key] for r in rows], rel=1e-9), key
    metrics = json.loads((run / "metrics.json").read_text())
    assert history.result["test_accuracy"] == pytest.approx(metrics["test_accuracy"], rel=1e-9)
    assert history.history["loss"][1] < history.history["loss"][0]


def test_history_draws_the_learning_curves(lenet_fit):
    _, history, _, _ = lenet_fit
    fig = history.plot()
    assert [ax.get_ylabel() for ax in fig.axes] == ["loss", "accuracy"]
    lines = fig.axes[0].get_lines()
    assert [list(line.get_ydata()) for line in lines] == [history.history["loss"],
                                                          history.history["val_loss"]]
    png = history._repr_png_()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def test_evaluate_and_save_are_netspec_evals_and_load_model_predicts_the_same(lenet_fit, tmp_path,
                                                                                capsys):
    model, history, _, _ = lenet_fit
    scores = model.evaluate("digits")
    assert scores["accuracy"] == pytest.approx(history.result["test_accuracy"], rel=1e-12)
    assert scores["samples"] == 360 and np.sum(scores["confusion_matrix"]) == 360
    path = tmp_path / "lenet5.safetensors"
    model.save(path)
    arrays, meta = load_arrays(path)      # safetensors: tensors and JSON strings, no pickle
    assert set(arrays) == set(model.params) and "spec" in meta and "norm" in meta
    capsys.readouterr()
    assert main(["eval", LENET, "--weights", str(path), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == scores
    loaded = netspec.load_model(path)
    raw, labels = digits_raw()            # 8x8 integers 0..16: prepared as training prepared them
    np.testing.assert_array_equal(loaded.predict(raw[:50]), model.predict(raw[:50]))
    assert (model.predict(raw).argmax(1) == labels).mean() > 0.9


def test_save_keeps_the_parameters_and_input_shape_the_network_was_loaded_with(tmp_path):
    net = netspec.loads(TINY, classes=12, hidden=8, input_shape=64)
    model = net.compile(seed=1)
    path = tmp_path / "tiny.safetensors"
    model.save(path)
    loaded = netspec.load_model(path)
    assert loaded.params["h.weight"].shape == (8, 64) and loaded.network.params == {"classes": 12, "hidden": 8}
    x = np.random.default_rng(0).random((4, 64), dtype=np.float32)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))   # no normalisation stored
    assert loaded.predict(x).shape == (4, 12)


def test_fit_on_arrays_prepares_predict_and_evaluate_alike():
    x, y = digits_raw()
    x = (x.reshape(len(x), 64) * 15).astype(np.uint8)   # 8-bit pixels, as images come
    model = netspec.loads(TINY).compile(seed=0)
    history = model.fit(x[:1500], y[:1500], epochs=3, validation_split=0.2, verbose=0)
    assert list(history.history) == ["loss", "accuracy", "val_loss", "val_accuracy", "lr"]
    assert len(history.history["loss"]) == 3 and "test_accuracy" not in history.result
    assert model.input_norm is not None and model.input_norm["scale"] == 255.0
    probs = model.predict(x[1500:])       # raw, as fit took them
    scores = model.evaluate(x[1500:], y[1500:])
    assert scores["accuracy"] == pytest.approx((probs.argmax(1) == y[1500:]).mean(), rel=1e-12)
    assert scores["accuracy"] > 0.8


def test_callbacks_see_each_epochs_logs_and_can_stop_the_run():
    x, y = digits_raw()
    x = x.reshape(len(x), 64)

    class Recorder:
        def __init__(self, stop_after=None):
            self.logs, self.stop_after, self.began = [], stop_after, 0

        def on_train_begin(self, logs):
            self.began += 1

        def on_epoch_end(self, epoch, logs):
            self.logs.append((epoch, logs))
            return epoch + 1 == self.stop_after

    class Raiser:
        def on_epoch_end(self, epoch, logs):
            raise netspec.StopTraining

    model = netspec.loads(TINY).compile(seed=0)
    seen = Recorder()
    history = model.fit(x, y, epochs=3, verbose=0, callbacks=[seen])
    assert seen.began == 1 and [e for e, _ in seen.logs] == [0, 1, 2]
    assert [logs["loss"] for _, logs in seen.logs] == history.history["loss"]
    stopped = model.fit(x, y, epochs=3, verbose=0, callbacks=[Recorder(stop_after=2)])
    assert stopped.epoch == [0, 1]
    assert model.fit(x, y, epochs=3, verbose=0, callbacks=[Raiser()]).epoch == [0]


def test_fit_takes_the_train_sections_settings_as_keywords_and_refuses_bad_ones():
    x, y = digits_raw()
    x = x.reshape(len(x), 64)
    model = netspec.loads(TINY).compile(seed=0)
    history = model.fit(x, y, epochs=2, verbose=0, optimizer="sgd(momentum=0.9)", lr=0.1,
                        schedule="exponential(rate=0.5)", metrics=["accuracy", "top_k"], top_k=3)
    assert history.history["lr"][0] == 0.1 and history.history["lr"][1] < 0.1
    assert "top_3" in history.history and "val_top_3" in history.history
    with pytest.raises(TrainingError, match="compiled with loss sparse_categorical_crossentropy"):
        model.fit(x, y, loss="mse", verbose=0)
    with pytest.raises(ConfigError, match="no setting 'epoch'.*epochs"):
        model.fit(x, y, epoch=2, verbose=0)
    with pytest.raises(ConfigError, match="unknown optimizer"):
        model.fit(x, y, optimizer="adamw", verbose=0)
    with pytest.raises(TrainingError, match="give y only with arrays"):
        model.fit("digits", y, verbose=0)
    with pytest.raises(TrainingError, match="training=False"):
        netspec.loads(TINY).compile(training=False).fit(x, y, verbose=0)


def test_fit_with_out_dir_writes_netspec_trains_run_folder(tmp_path):
    x, y = digits_raw()
    model = netspec.loads(TINY).compile(seed=0)
    model.fit(x.reshape(len(x), 64), y, epochs=1, verbose=0, out_dir=tmp_path / "run")
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"weights.safetensors", "checkpoint.safetensors", "history.json",
            "learning_curves.png", "metrics.json"} <= names


def test_render_draws_what_netspec_render_draws(tmp_path):
    net = netspec.load(LENET)
    assert main(["render", LENET, "-o", str(tmp_path / "cli.dot"), "--depth", "0"]) == 0
    written = net.render(tmp_path / "api", format="dot", depth=0)
    assert written == tmp_path / "api.dot"
    assert written.read_text() == (tmp_path / "cli.dot").read_text()
    assert net.render(depth=0).source == written.read_text()
    with pytest.raises(ValueError, match="disagrees"):
        net.render(tmp_path / "x.svg", format="png")


def test_summary_prints_its_table_with_totals_for_its_batch():
    net = netspec.load(LENET)
    one, sixteen = net.summary(), net.summary(batch=16)
    assert str(sixteen) == repr(sixteen) == sixteen.table()
    assert sixteen.macs == 16 * one.macs == 16 * sixteen.macs_per_sample
    assert sum(r.macs for r in sixteen.rows if not r.is_block) == sixteen.macs
    assert f"({sixteen.macs:,} at batch 16)" in str(sixteen)
    assert sixteen.inference_bytes == sixteen.inference_bytes_at(16) > one.inference_bytes
    assert sixteen.training_bytes - one.training_bytes == 15 * one.activation_bytes
    assert sixteen.params == one.params == 61_706
