"""Weight files and checkpoints a user hands us (issue 13, classes 5, 6 and 7).

Metadata is input: every tampered key (bad JSON, wrong types, missing keys, bad rng states,
an epoch as a string, stored --set values the tensors do not match) makes predict, eval,
train --resume and train --init-from exit 1 with a message naming the file and the key.
Tensors are input too: non-array npz members, a list as __metadata__, integer, NaN or
misshapen weights, damaged safetensors headers, compression bombs. A file without metadata
(Model.save_weights) works, its inputs scaled to [0, 1] and not standardised.

Most cases run in-process (netspec.cli.main); the ones where memory is the point run in a
subprocess under a memory limit (netspec.testing.hostile) and assert the peak.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

import netspec
from netspec.cli import main
from netspec.outdirs import RUN_MARKER
from netspec.runtime.checkpoint import WeightsError, load_arrays, save_arrays
from netspec.testing.hostile import assert_refused, changes, run_netspec, tree_state
from netspec.training.data import load_data, prepare
from netspec.training.metadata import UNSCALED_NORM, MetadataError, read_metadata
from netspec.training.run import renormalise

# small enough to train in a second; adam (optimizer slots) and dropout (a second rng state)
TINY = """
network tiny(classes=10) {
    input image: 1@8x8
    image -> flatten -> hidden: dense(16, act=relu) -> dropout(0.1)
          -> head: dense(classes) -> softmax -> out
    train {
        optimizer = adam(lr=0.01)
        batch = 64   epochs = 1
    }
}
"""
# the same network with a wide hidden layer: --set classes=20000000 asks for 8 GB of weights
WIDE = TINY.replace("network tiny", "network wide").replace("dense(16,", "dense(100,")


def cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def refused(rc: int, err: str, *mentions: str) -> None:
    assert rc == 1, f"exit {rc}\n{err}"
    assert "internal error" not in err and "Traceback" not in err, err
    for m in mentions:
        assert m in err, f"the message does not mention {m!r}:\n{err}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A folder with tiny.net, a run of it (one epoch on the digits), weights saved by the
    Python API in both formats, and inputs for predict."""
    root = tmp_path_factory.mktemp("weights")
    (root / "tiny.net").write_text(TINY)
    (root / "wide.net").write_text(WIDE)
    assert main(["train", str(root / "tiny.net"), "-o", str(root / "run"), "--no-progress"]) == 0
    model = netspec.load(root / "tiny.net").compile(training=False, seed=3, warmup=False)
    for suffix in (".safetensors", ".npz"):
        model.save_weights(root / f"api{suffix}")
    wide = netspec.load(root / "wide.net").compile(training=False, warmup=False)
    wide.save_weights(root / "wide.safetensors")
    rng = np.random.default_rng(0)
    np.save(root / "x.npy", rng.random((5, 1, 8, 8)).astype(np.float32))
    np.save(root / "raw.npy", rng.integers(0, 256, (5, 8, 8)).astype(np.uint8))
    return root


def rewrite(src: Path, dst: Path, meta=None, tensors=None) -> Path:
    """A copy of the weight file `src` at `dst` with metadata keys replaced (None deletes one)
    and tensors replaced (None deletes one)."""
    arrays, metadata = load_arrays(src)
    metadata = dict(metadata)
    for key, value in (meta or {}).items():
        if value is None:
            metadata.pop(key, None)
        else:
            metadata[key] = value if isinstance(value, str) else json.dumps(value)
    for key, value in (tensors or {}).items():
        if value is None:
            arrays.pop(key, None)
        else:
            arrays[key] = value
    dst.parent.mkdir(parents=True, exist_ok=True)
    if (src.parent / RUN_MARKER).is_file():     # the copy is a run folder --resume may continue
        shutil.copy(src.parent / RUN_MARKER, dst.parent / RUN_MARKER)
    save_arrays(dst, arrays, metadata)
    return dst


def stored(trained, name: str, key: str):
    return json.loads(load_arrays(trained / "run" / name)[1][key])


# ---------------------------------------------------------------- files without metadata


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_weights_saved_by_model_save_weights_predict_and_eval(trained, capsys, suffix):
    weights = trained / f"api{suffix}"
    # what the API stores
    assert set(load_arrays(weights)[1]) == {"format", "network", "graph_hash", "layout"}
    model = netspec.load(trained / "tiny.net").compile(training=False, warmup=False)
    model.load_weights(weights)

    rc, out, err = cli(capsys, "predict", trained / "tiny.net", trained / "x.npy", "--weights", weights)
    assert rc == 0, err
    assert "holds no normalisation" in err and "not standardised" in err
    rows = [line.split(",") for line in out.strip().splitlines()]
    assert rows[0] == ["input", "predicted"] + [f"p_{i}" for i in range(10)]
    probs = np.array([[float(v) for v in row[2:]] for row in rows[1:]])
    x = np.load(trained / "x.npy")                      # floats: taken as scaled to [0, 1]
    np.testing.assert_allclose(probs, model.predict(x), atol=2e-6)

    rc, out, err = cli(capsys, "eval", trained / "tiny.net", "--weights", weights, "--format", "json")
    assert rc == 0, err
    assert "holds no normalisation" in err
    splits = load_data(None, (1, 8, 8), 10)
    x = renormalise(splits.test.x, splits.norm, UNSCALED_NORM)     # digits in [0, 1], as they are
    expected = float(np.mean(model.predict(x).argmax(axis=1) == splits.test.y))
    assert json.loads(out)["accuracy"] == pytest.approx(expected)


def test_weights_written_by_netspec_train_predict_and_eval(trained, capsys):
    weights = trained / "run" / "weights.safetensors"
    norm = stored(trained, "weights.safetensors", "norm")
    model = netspec.load(trained / "tiny.net").compile(training=False, warmup=False)
    model.load_weights(weights)
    rc, out, err = cli(capsys, "predict", trained / "tiny.net", trained / "raw.npy", "--weights", weights)
    assert rc == 0, err
    assert "normalisation" not in err
    probs = np.array([[float(v) for v in line.split(",")[2:]] for line in out.strip().splitlines()[1:]])
    assert model.input_norm == norm                      # load_weights keeps the normalisation
    np.testing.assert_allclose(probs, model.predict(np.load(trained / "raw.npy")), atol=2e-6)
    x = prepare(np.load(trained / "raw.npy"), (1, 8, 8), norm)
    model.input_norm = None                              # prepared inputs, used as given
    np.testing.assert_allclose(probs, model.predict(x), atol=2e-6)
    rc, out, err = cli(capsys, "eval", trained / "tiny.net", "--weights", weights, "--format", "json")
    assert rc == 0, err
    metrics = json.loads((trained / "run" / "metrics.json").read_text())
    assert json.loads(out)["accuracy"] == pytest.approx(metrics["test_accuracy"])


def test_a_foreign_safetensors_file_loads_by_its_tensors(trained, capsys):
    # a file another tool wrote: its own metadata keys are ignored, its tensors are what counts
    weights = rewrite(trained / "api.safetensors", trained / "foreign" / "w.safetensors",
                      meta={"format": "pt", "network": None, "producer": "torch 2.13"})
    rc, out, err = cli(capsys, "predict", trained / "tiny.net", trained / "x.npy", "--weights", weights)
    assert rc == 0, err
    assert len(out.strip().splitlines()) == 6


# ---------------------------------------------------------------- tampered metadata

CKPT, WTS = "checkpoint.safetensors", "weights.safetensors"
ALL = ("predict", "eval", "init", "resume")
BUILDS = ("predict", "eval")     # the commands that build the network from the file's metadata


def _state(trained, **changes):
    return {**stored(trained, CKPT, "state"), **changes}


def _config(trained, **changes):
    return {**stored(trained, CKPT, "config"), **changes}


def _rng(trained, **changes):
    return _state(trained, rng={**stored(trained, CKPT, "state")["rng"], **changes})


def _context(**changes):
    return {"sets": [], "input": None, "network": None, "freeze": [], **changes}


# id -> (files it is tried on, the key and its new value (a function of the run folder's
# files: JSON, a raw string, or None to delete it), the commands that must refuse it, what
# the message must say)
TAMPERED = {
    "norm bad JSON": ((WTS, CKPT), "norm", lambda t: "{not json", ALL, "metadata 'norm': not valid JSON"),
    "norm a list": ((WTS, CKPT), "norm", lambda t: [1, 2], ALL, "metadata 'norm' must be a JSON object"),
    "norm without std": ((WTS,), "norm", lambda t: {"scale": 16.0, "mean": [0.3], "fit": "pad"}, ALL,
                         "'std' is missing"),
    "norm std zero": ((WTS,), "norm", lambda t: {"scale": 16.0, "mean": [0.3], "std": [0.0], "fit": "pad"},
                      ALL, "metadata 'norm.std[0]' must be a finite number >= 1e-12 and <= 1e+30, got 0.0"),
    "norm mean NaN": ((WTS,), "norm", lambda t: '{"scale": 1, "mean": [NaN], "std": [1], "fit": "pad"}',
                      ALL, "metadata 'norm.mean[0]' must be a finite number >= -1e+30 and <= 1e+30, got NaN"),
    "norm fit unknown": ((WTS,), "norm", lambda t: {"scale": 1, "mean": [0], "std": [1], "fit": "zoom"},
                         ALL, "metadata 'norm.fit' must be one of pad, resize"),
    "norm for 3 channels": ((WTS, CKPT), "norm", lambda t: {"scale": 1, "mean": [0] * 3, "std": [1] * 3,
                                                            "fit": "pad"}, BUILDS,
                            "metadata 'norm' holds 3 channel(s) but tiny's input 1@8x8 has 1"),
    "class_names an object": ((WTS,), "class_names", lambda t: {"a": 1}, ALL,
                              "metadata 'class_names' must be a JSON list"),
    "class_names numbers": ((WTS,), "class_names", lambda t: [0, 1], ALL,
                            "metadata 'class_names[0]' must be a string, got 0 (an integer)"),
    "class_names with an escape sequence": ((WTS,), "class_names", lambda t: ["\x1b[2J"] + list("123456789"),
                                            ALL, "metadata 'class_names[0]' must be printable"),
    "class_names too many": ((WTS,), "class_names", lambda t: [str(i) for i in range(11)], BUILDS,
                             "metadata 'class_names' names 11 classes but tiny has 10 outputs"),
    "context a string": ((WTS, CKPT), "context", lambda t: '"x"', ALL, "metadata 'context' must be a JSON object"),
    "context set without =": ((WTS,), "context", lambda t: _context(sets=["classes"]), BUILDS,
                              "metadata 'context.sets[0]' must be NAME=VALUE"),
    "context set of a parameter the spec lacks": ((WTS,), "context", lambda t: _context(sets=["depth=3"]),
                                                  BUILDS, "its metadata 'context' (--set depth=3) do not build"),
    "context input not a shape": ((WTS, CKPT), "context", lambda t: _context(input="abc"), ALL,
                                  "metadata 'context.input': 'abc' is not an input shape"),
    "context input too large": ((WTS,), "context", lambda t: _context(input="1@100000x100000"), ALL,
                                "metadata 'context.input': '1@100000x100000' is larger than"),
    "loss unknown": ((WTS, CKPT), "loss", lambda t: "hinge", ALL, "metadata 'loss' must be one of"),
    "data a number": ((WTS,), "data", lambda t: 5, ALL, "metadata 'data' must be a string, got 5"),
    "format from the future": ((WTS, CKPT), "format", lambda t: "netspec-weights-9", ALL,
                               "metadata 'format' is 'netspec-weights-9'"),
    "deeply nested JSON": ((WTS,), "class_names", lambda t: "[" * 100_000 + "]" * 100_000, ALL,
                           "metadata 'class_names': not valid JSON"),
    "epoch as a string": ((CKPT,), "state", lambda t: _state(t, epoch="1"), ALL,
                          "metadata 'state.epoch' must be an integer >= 0, got \"1\" (a string)"),
    "state bad JSON": ((CKPT,), "state", lambda t: '{"epoch": 1,', ALL, "metadata 'state': not valid JSON"),
    "state missing": ((CKPT,), "state", lambda t: None, ALL, "metadata 'state' is missing"),
    "state a list": ((CKPT,), "state", lambda t: [1], ALL, "metadata 'state' must be a JSON object"),
    "state without step": ((CKPT,), "state", lambda t: {k: v for k, v in _state(t).items() if k != "step"},
                           ALL, "metadata 'state': 'step' is missing"),
    "negative step": ((CKPT,), "state", lambda t: _state(t, step=-3), ALL, "metadata 'state.step'"),
    "optimizer_t a fraction": ((CKPT,), "state", lambda t: _state(t, optimizer_t=1.5), ALL,
                               "metadata 'state.optimizer_t' must be an integer >= 0, got 1.5"),
    "best_epoch after epoch": ((CKPT,), "state", lambda t: _state(t, best_epoch=7), ALL,
                               "metadata 'state.best_epoch' must be an integer from 0 to 1"),
    "rng of another generator": ((CKPT,), "state", lambda t: _rng(t, bit_generator="MT19937"), ALL,
                                 "metadata 'state.rng.bit_generator' must be \"PCG64\""),
    "rng state too large": ((CKPT,), "state", lambda t: _rng(t, state={"state": 2**200, "inc": 3}), ALL,
                            "metadata 'state.rng.state.state' must be an integer from 0 to"),
    "rng uinteger negative": ((CKPT,), "state", lambda t: _rng(t, uinteger=-1), ALL,
                              "metadata 'state.rng.uinteger'"),
    "dropout rng a string": ((CKPT,), "state", lambda t: _state(t, dropout_rng="x"), ALL,
                             "metadata 'state.dropout_rng' must be a JSON object"),
    "history shorter than the epochs": ((CKPT,), "state", lambda t: _state(t, history=[]), ALL,
                                        "metadata 'state.history': 0 rows for 1 epoch done"),
    "history value a string": ((CKPT,), "state",
                               lambda t: _state(t, history=[{**_state(t)["history"][0], "loss": "x"}]),
                               ALL, "metadata 'state.history[0].loss' must be a number"),
    "config bad JSON": ((CKPT,), "config", lambda t: "{", ALL, "metadata 'config': not valid JSON"),
    "config missing": ((CKPT,), "config", lambda t: None, ALL, "metadata 'config' is missing"),
    "batch as a string": ((CKPT,), "config", lambda t: _config(t, batch="64"), ALL,
                          "metadata 'config.batch' must be an integer >= 1, got \"64\""),
    "optimizer argument out of range": ((CKPT,), "config", lambda t: _config(
        t, optimizer={"name": "adam", "lr": 0.01, "beta1": 2, "beta2": 0.999, "epsilon": 1e-7}), ALL,
        "metadata 'config.optimizer': beta1 must be a number >= 0 and < 1, got 2"),
    "schedule unknown": ((CKPT,), "config", lambda t: _config(t, schedule={"name": "cosine"}), ALL,
                         "metadata 'config.schedule.name' must be one of"),
    "schedule argument a string": ((CKPT,), "config", lambda t: _config(
        t, schedule={"name": "exponential", "decay_steps": "x", "rate": 0.1}), ALL,
        "metadata 'config.schedule': decay_steps must be a number"),
    "augment flip p a string": ((CKPT,), "config", lambda t: _config(t, augment={"flip": {"p": "x"}}), ALL,
                                "metadata 'config.augment.flip.p'"),
    "early stopping without monitor": ((CKPT,), "config", lambda t: _config(
        t, early_stopping={"patience": 5, "restore_best": True, "min_delta": 0.0}), ALL,
        "metadata 'config.early_stopping': 'monitor' is missing"),
    "spec missing": ((CKPT,), "spec", lambda t: None, ALL, "metadata 'spec' is missing"),
}
CASES = [pytest.param(name, file, cmd, id=f"{name}-{file.split('.')[0]}-{cmd}")
         for name, (files, _, _, cmds, _) in TAMPERED.items() for file in files
         for cmd in cmds if not (cmd == "resume" and file == WTS)]


@pytest.mark.parametrize("name, file, command", CASES)
def test_tampered_metadata_is_refused_naming_the_key(trained, capsys, tmp_path, name, file, command):
    _, key, value, _, mention = TAMPERED[name]
    folder = tmp_path / "run"
    path = rewrite(trained / "run" / file, folder / file, meta={key: value(trained)})
    spec = trained / "tiny.net"
    args = {"predict": ("predict", spec, trained / "x.npy", "--weights", path),
            "eval": ("eval", spec, "--weights", path),
            "init": ("train", spec, "--init-from", path, "-o", tmp_path / "new", "--no-progress"),
            "resume": ("train", spec, "--resume", "-o", folder, "--epochs", "2", "--no-progress")}[command]
    before = tree_state(tmp_path)
    rc, _, err = cli(capsys, *args)
    refused(rc, err, str(path), mention)
    assert changes(before, tree_state(tmp_path)) == []       # nothing written, nothing lost


def test_metadata_errors_name_the_file_and_keep_the_strings_readable(trained):
    raw = load_arrays(trained / "run" / CKPT)[1]
    meta = read_metadata(raw, "ck.safetensors", checkpoint=True)
    assert json.loads(meta["state"])["epoch"] == meta.state["epoch"] == 1    # still the dict it was
    assert meta.norm["fit"] == "resize" and meta.class_names == [str(i) for i in range(10)]
    with pytest.raises(MetadataError, match=r"^w.safetensors: not a netspec training checkpoint"):
        read_metadata({"format": "netspec-weights-1"}, "w.safetensors", checkpoint=True)
    assert isinstance(MetadataError("x"), WeightsError)      # the CLI reports it with exit 1


# ---------------------------------------------------------------- metadata that builds too much


def test_a_stored_context_cannot_build_a_network_the_file_does_not_hold(trained):
    # a 40 KB file whose metadata says classes=20000000: 8 GB of weights if it were built
    path = rewrite(trained / "wide.safetensors", trained / "big" / "w.safetensors",
                   meta={"context": _context(sets=["classes=20000000"])})
    before = tree_state(trained, skip=("big",))
    outcome = run_netspec("predict", "wide.net", "x.npy", "--weights", path, cwd=trained,
                          memory_mb=3072, timeout=120)
    assert_refused(outcome, str(path), "as its metadata 'context' builds it (--set classes=20000000)",
                   "head.weight has shape (10, 100), the network expects (20000000, 100)",
                   codes=(1,), seconds=60)
    assert outcome.peak_mb < 400, outcome             # refused before any weight was allocated (8 GB)
    assert changes(before, tree_state(trained, skip=("big",))) == []


def test_flags_that_build_more_than_the_file_holds_are_refused_before_compiling(trained):
    outcome = run_netspec("eval", "wide.net", "--set", "classes=20000000", "--weights",
                          "wide.safetensors", cwd=trained, memory_mb=3072, timeout=120)
    assert_refused(outcome, "wide.safetensors was saved from a different network than wide",
                   "dense head: bias 10 in the file, 20000000 here", "--force", codes=(1,), seconds=60)
    assert outcome.peak_mb < 400, outcome


# ---------------------------------------------------------------- what the tensors hold


def _npz(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _npy_header(shape, dtype="<f4") -> bytes:
    """Only the header of a .npy file: what a member claims before its data."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _safetensors(path: Path, header, data: bytes = b"", length: int | None = None) -> Path:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)
    return path


def _api_arrays(trained) -> dict:
    return load_arrays(trained / "api.npz")[0]


def _bad_files(trained, folder: Path) -> dict:
    """id -> (a weight file, what the refusal must say)."""
    arrays = _api_arrays(trained)
    members = {f"{k}.npy": _npy(v) for k, v in arrays.items()}
    f32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    as_int = {k: (v * 100).astype(np.int32) for k, v in arrays.items()}
    with_nan = {**arrays, "hidden.weight": np.where(np.eye(16, 64, dtype=bool), np.nan, arrays["hidden.weight"])}
    return {
        "npz member not an array": (_npz(folder / "text.npz", {**members, "README.txt": b"hello"}),
                                    "holds 'README.txt', which is not a NumPy array"),
        "npz __metadata__ a list": (_npz(folder / "list.npz", {**members, "__metadata__.npy":
                                                              _npy(np.array(json.dumps([1, 2])))}),
                                    "its __metadata__ must be a JSON object of strings, got list"),
        "npz __metadata__ an array": (_npz(folder / "arr.npz", {**members, "__metadata__.npy":
                                                               _npy(np.array(["a", "b"]))}),
                                      "its __metadata__ must be one JSON string"),
        "npz __metadata__ not JSON": (_npz(folder / "nojson.npz", {**members, "__metadata__.npy":
                                                                  _npy(np.array("{format"))}),
                                      "its __metadata__ is not JSON"),
        "npz metadata value a number": (_npz(folder / "num.npz", {**members, "__metadata__.npy":
                                                                 _npy(np.array('{"norm": 1}'))}),
                                        "its __metadata__ entry 'norm' must be a string, got int"),
        "npz of Python objects": (_npz(folder / "obj.npz", {**members, "hidden.weight.npy":
                                                           _npy(np.array([{"a": 1}], dtype=object))}),
                                  "holds Python objects, which would need pickle (refused)"),
        "npz of strings": (_npz(folder / "str.npz", {**members, "head.bias.npy": _npy(np.array(["x"] * 10))}),
                           "tensor 'head.bias' has dtype <U1; weights are real numbers"),
        "npz claims more than it holds": (_npz(folder / "short.npz", {**members, "head.bias.npy":
                                                                  _npy_header((10**10,)) + bytes(40)}),
                                          "tensor 'head.bias' claims shape (10000000000,)"),
        "a single array named .npz": (_write(folder / "one.npz", _npy(np.zeros(3))),
                                      "a single NumPy array, not an .npz archive"),
        "safetensors header not JSON": (_safetensors(folder / "nojson.safetensors", b"{not json"),
                                        "not a readable safetensors weight file (Error while deserializing header"),
        "safetensors header length past the end": (_safetensors(folder / "long.safetensors", {"w": f32},
                                                                b"\0" * 8, length=2**40),
                                                   "not a readable safetensors weight file"),
        "safetensors offsets outside the file": (_safetensors(folder / "off.safetensors",
                                                              {"w": {**f32, "data_offsets": [0, 800]}}, b"\0" * 8),
                                                 "invalid shape, data type, or offset"),
        "safetensors metadata a number": (_safetensors(folder / "meta.safetensors",
                                                       {"__metadata__": {"norm": 1}, "w": f32}, b"\0" * 8),
                                          "not a readable safetensors weight file"),
        "bfloat16": (_safetensors(folder / "bf16.safetensors", {"w": {**f32, "dtype": "BF16",
                                                                     "data_offsets": [0, 4]}}, b"\0" * 4),
                     "tensor 'w' has dtype BF16, which netspec cannot read"),
        "integer weights": (rewrite(trained / "api.safetensors", folder / "int.safetensors", tensors=as_int),
                            "has dtype int32, expected floating point (float32 or float64)"),
        "boolean weights": (rewrite(trained / "api.safetensors", folder / "bool.safetensors",
                                    tensors={"head.bias": np.ones(10, bool)}),
                            "head.bias has dtype bool, expected floating point"),
        "NaN weights": (rewrite(trained / "api.safetensors", folder / "nan.safetensors", tensors=with_nan),
                        "hidden.weight holds 16 NaN or infinite values; weights must be finite"),
        "infinite weights": (rewrite(trained / "api.npz", folder / "inf.npz",
                                     tensors={"head.bias": np.full(10, np.inf, np.float32)}),
                             "head.bias holds 10 NaN or infinite values"),
        "a transposed weight": (rewrite(trained / "api.safetensors", folder / "t.safetensors",
                                        tensors={"hidden.weight": arrays["hidden.weight"].T.copy()}),
                                "hidden.weight has shape (64, 16), the network expects (16, 64)"),
        "a missing tensor": (rewrite(trained / "api.safetensors", folder / "miss.safetensors",
                                     tensors={"head.bias": None}), "missing 1: head.bias"),
    }


BAD_FILES = ["npz member not an array", "npz __metadata__ a list", "npz __metadata__ an array",
             "npz __metadata__ not JSON", "npz metadata value a number", "npz of Python objects",
             "npz of strings", "npz claims more than it holds", "a single array named .npz",
             "safetensors header not JSON", "safetensors header length past the end",
             "safetensors offsets outside the file", "safetensors metadata a number", "bfloat16",
             "integer weights", "boolean weights", "NaN weights", "infinite weights",
             "a transposed weight", "a missing tensor"]


INIT_KEEPS_FRESH = {"a transposed weight": "kept fresh: hidden.weight (shape (64, 16), here (16, 64))",
                    "a missing tensor": "initialised 3 tensors from"}


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_bad_weight_file_is_refused_naming_it(trained, capsys, tmp_path, case):
    path, mention = _bad_files(trained, tmp_path)[case]
    spec = trained / "tiny.net"
    for args in (("predict", spec, trained / "x.npy", "--weights", path),
                 ("train", spec, "--init-from", path, "-o", tmp_path / "new", "--no-progress")):
        rc, out, err = cli(capsys, *args)
        if case in INIT_KEEPS_FRESH and args[0] == "train":
            # --init-from loads what matches by name and shape and says what it skipped
            assert rc == 0, err
            assert INIT_KEEPS_FRESH[case] in out
            continue
        refused(rc, err, str(path), mention)


def test_the_python_api_refuses_integer_and_nan_weights_as_it_says(trained):
    model = netspec.load(trained / "tiny.net").compile(training=False, warmup=False)
    before = model.state_dict()
    state = {k: v.astype(np.int64) for k, v in before.items()}
    with pytest.raises(ValueError, match=r"head.bias has dtype int64, expected floating point"):
        model.set_weights(state)
    poisoned = before["head.weight"].copy()
    poisoned[3, 5] = np.nan
    with pytest.raises(ValueError, match=r"head.weight holds 1 NaN or infinite value;"):
        model.set_weights({**before, "head.weight": poisoned})
    for k, v in model.state_dict().items():          # a refusal changes nothing
        np.testing.assert_array_equal(v, before[k])
    half = {k: v.astype(np.float16) for k, v in before.items()}   # floats of any width are fine
    assert model.set_weights(half) == sorted(before)
    with pytest.raises(WeightsError, match="expected floating point"):
        model.load_weights(rewrite(trained / "api.npz", trained / "api-int.npz",
                                   tensors={"head.bias": np.zeros(10, np.int8)}))


def test_an_npz_compression_bomb_is_refused_before_it_inflates(trained, tmp_path):
    # 100 MB of zeros in a 100 KB member: refused from the zip directory, nothing inflated
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("hidden.weight.npy", "w", force_zip64=True) as member:
            member.write(_npy_header((25 * 2**20,)))
            for _ in range(100):
                member.write(bytes(2**20))
    assert path.stat().st_size < 200_000
    outcome = run_netspec("predict", "tiny.net", "x.npy", "--weights", path, cwd=trained,
                          memory_mb=3072, timeout=120)
    assert_refused(outcome, str(path), "tensor 'hidden.weight' inflates from", "more than 50x",
                   codes=(1,), seconds=60)
    assert outcome.peak_mb < 400, outcome


# ---------------------------------------------------------------- checkpoint tensors


def _resume(capsys, trained, tmp_path, tensors=None, meta=None):
    folder = tmp_path / "run"
    rewrite(trained / "run" / CKPT, folder / CKPT, meta=meta, tensors=tensors)
    before = tree_state(tmp_path)
    rc, _, err = cli(capsys, "train", trained / "tiny.net", "--resume", "-o", folder, "--epochs", "2",
                     "--no-progress")
    assert changes(before, tree_state(tmp_path)) == []
    return rc, err


def test_resume_refuses_best_weights_that_do_not_fit(trained, capsys, tmp_path):
    rc, err = _resume(capsys, trained, tmp_path, tensors={"best/head.bias": np.zeros(3, np.float32)})
    refused(rc, err, "(best weights) does not fit tiny", "missing")
    rc, err = _resume(capsys, trained, tmp_path, tensors={
        **{f"best/{k}": v for k, v in _api_arrays(trained).items()},
        "best/head.bias": np.zeros(7, np.float32)})
    refused(rc, err, "(best weights) does not fit tiny: head.bias has shape (7), the network expects (10)")


def test_resume_refuses_optimizer_slots_that_are_not_finite_or_do_not_fit(trained, capsys, tmp_path):
    arrays = load_arrays(trained / "run" / CKPT)[0]
    slot = next(k for k in arrays if k.startswith("optim/") and k.endswith(".exp_avg"))
    rc, err = _resume(capsys, trained, tmp_path, tensors={slot: np.full_like(arrays[slot], np.nan)})
    refused(rc, err, f"optimizer slot {slot[6:]} holds NaN or infinite values")
    rc, err = _resume(capsys, trained, tmp_path, tensors={slot: None})
    refused(rc, err, "the optimizer state does not fit", "lacks 1 slot(s)")
    rc, err = _resume(capsys, trained, tmp_path, tensors={"param/head.bias": np.zeros(10, np.int32)})
    refused(rc, err, "head.bias has dtype int32, expected floating point")


def test_resume_refuses_a_history_of_columns_this_run_does_not_record(trained, capsys, tmp_path):
    state = _state(trained)
    state["history"] = [{**state["history"][0], "top_5": 0.5}]
    rc, err = _resume(capsys, trained, tmp_path, meta={"state": state})
    refused(rc, err, "its history records top_5, which this run does not")
