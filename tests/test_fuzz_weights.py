"""Fuzzing the weights paths: whatever a weights file or checkpoint holds, predict, eval,
train --resume and train --init-from answer with a result (exit 0) or a message (exit 1 or 2),
never an internal error (exit 3) and never an uncaught exception.

Starting from a real weights file and checkpoint (tiny.net trained for one epoch, once per
module), each example changes one thing: (a) the metadata, at the top or deep inside its
JSON (random JSON values, deleted keys, garbled strings); (b) the tensors (dtype, shape,
values, missing or extra ones), in safetensors or npz; (c) the raw bytes of the file. The
commands run in-process (netspec.cli.main). One run generates 60 + 50 + 50 = 160 examples.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from netspec.cli import main
from netspec.runtime.checkpoint import load_arrays, save_arrays

TINY = """
network tiny(classes=10) {
    input image: 1@8x8
    image -> flatten -> hidden: dense(16, act=relu) -> dropout(0.1)
          -> head: dense(classes) -> softmax -> out
    train {
        optimizer = adam(lr=0.01)
        batch = 16   epochs = 1
    }
}
"""

# no shrinking: each case runs netspec, and shrinking a failure re-ran it for over 20 minutes;
# the failing case is reported as drawn, which reproduces it
FUZZ = dict(phases=(Phase.explicit, Phase.reuse, Phase.generate), deadline=None, database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                   HealthCheck.function_scoped_fixture])

COMMANDS = ("predict", "eval", "init", "resume")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """tiny.net, a small data set, one epoch of training on it, and inputs for predict.
    Learning curves are not drawn (matplotlib would take most of each example's time)."""
    root = tmp_path_factory.mktemp("fuzzw")
    (root / "tiny.net").write_text(TINY)
    rng = np.random.default_rng(0)
    np.savez(root / "small.npz", x=rng.integers(0, 256, (60, 8, 8)).astype(np.uint8),
             y=np.arange(60) % 10)
    np.save(root / "x.npy", rng.random((3, 1, 8, 8)).astype(np.float32))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("netspec.training.plots.plot_history", lambda *a, **k: [])
        assert main(["train", str(root / "tiny.net"), "--data", str(root / "small.npz"),
                     "-o", str(root / "run"), "--no-progress"]) == 0
        files = {kind: load_arrays(root / "run" / f"{kind}.safetensors")
                 for kind in ("weights", "checkpoint")}
        yield root, files


def run_commands(capsys, root: Path, path: Path, commands) -> None:
    """Each command on the file at `path`: exit 0, or 1/2 with a message; never 3."""
    spec = root / "tiny.net"
    for command in commands:
        work = Path(tempfile.mkdtemp(dir=path.parent))
        if command == "resume":
            if path.suffix != ".safetensors":
                continue
            shutil.copy(path, work / "checkpoint.safetensors")
            args = ["train", spec, "--resume", "-o", work, "--epochs", "1", "--no-progress"]
        elif command == "init":
            args = ["train", spec, "--init-from", path, "--data", root / "small.npz", "-o", work,
                    "--epochs", "1", "--no-progress"]
        elif command == "predict":
            args = ["predict", spec, root / "x.npy", "--weights", path]
        else:
            args = ["eval", spec, "--weights", path]
        capsys.readouterr()
        rc = main([str(a) for a in args])
        out, err = capsys.readouterr()
        assert rc in (0, 1, 2), f"netspec {' '.join(map(str, args))}: exit {rc}\n{err}"
        assert "internal error" not in err and "Traceback" not in err, err
        if rc:
            assert err.strip(), f"exit {rc} without a message: netspec {' '.join(map(str, args))}"


@pytest.fixture
def scratch(base):
    root, _ = base
    folder = Path(tempfile.mkdtemp(dir=root))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------- strategies

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8)

GARBLE = st.sampled_from(["", "{", "[", "null", "NaN", "-1", "1e999", '"x"', "[[[[[[", "\x00", "é"])


@st.composite
def mutated_json(draw, value):
    """`value` with one place inside it replaced by random JSON, or a key/item deleted."""
    if not isinstance(value, (dict, list)) or not value or draw(st.integers(0, 3)) == 0:
        return draw(JSON)
    keys = list(value) if isinstance(value, dict) else list(range(len(value)))
    key = draw(st.sampled_from(keys))
    copy = dict(value) if isinstance(value, dict) else list(value)
    if draw(st.integers(0, 4)) == 0:
        del copy[key]
    else:
        copy[key] = draw(mutated_json(value[key]))
    return copy


@st.composite
def metadata_change(draw, metadata: dict):
    """One key of the metadata: deleted, garbled, replaced, or changed deep inside its JSON."""
    key = draw(st.sampled_from(sorted(metadata) + ["extra"]))
    how = draw(st.sampled_from(["delete", "garble", "json", "deep", "deep", "deep"]))
    new = dict(metadata)
    if how == "delete":
        new.pop(key, None)
    elif how == "garble":
        text = metadata.get(key, "")
        cut = draw(st.integers(0, len(text)))
        new[key] = draw(st.sampled_from([text[:cut], text[:cut] + draw(GARBLE) + text[cut:],
                                         draw(st.text(max_size=30))]))
    elif how == "json":
        new[key] = json.dumps(draw(JSON))
    else:
        try:
            parsed = json.loads(metadata.get(key, "null"))
        except ValueError:
            parsed = metadata.get(key)
        new[key] = json.dumps(draw(mutated_json(parsed)))
    return new


DTYPES = [np.int8, np.int32, np.int64, np.uint8, np.bool_, np.float16, np.float64, np.float32]


@st.composite
def tensor_change(draw, arrays: dict):
    """One tensor: another dtype, another shape, odd values, deleted, or one added."""
    new = dict(arrays)
    name = draw(st.sampled_from(sorted(arrays)))
    a = arrays[name]
    how = draw(st.sampled_from(["dtype", "shape", "values", "delete", "add"]))
    if how == "dtype":
        new[name] = a.astype(draw(st.sampled_from(DTYPES)))
    elif how == "shape":
        shapes = [a.reshape(-1), a[None], a[..., :max(a.shape[-1] - 1, 0)] if a.ndim else a.reshape(1),
                  a.T.copy(), np.zeros((0,), a.dtype), np.asarray(a.reshape(-1)[0])]
        new[name] = np.ascontiguousarray(draw(st.sampled_from(shapes)))
    elif how == "values":
        value = draw(st.sampled_from([np.nan, np.inf, -np.inf, 3e38, 0.0, -1e-45]))
        changed = a.copy()
        if changed.size and changed.dtype.kind == "f":
            changed.reshape(-1)[draw(st.integers(0, changed.size - 1))] = value
        new[name] = changed
    elif how == "delete":
        del new[name]
    else:
        new[draw(st.text(min_size=1, max_size=12))] = np.zeros(draw(st.integers(0, 5)), np.float32)
    return new


# ---------------------------------------------------------------- the fuzzers


@settings(max_examples=60, **FUZZ)
@given(data=st.data(), kind=st.sampled_from(["weights", "checkpoint"]))
def test_mutated_metadata_never_crashes(base, scratch, capsys, data, kind):
    root, files = base
    arrays, metadata = files[kind]
    path = scratch / f"{kind}.safetensors"
    save_arrays(path, arrays, data.draw(metadata_change(metadata)))
    run_commands(capsys, root, path, COMMANDS if kind == "checkpoint" else COMMANDS[:3])


@settings(max_examples=50, **FUZZ)
@given(data=st.data(), kind=st.sampled_from(["weights", "checkpoint"]),
       suffix=st.sampled_from([".safetensors", ".npz"]))
def test_mutated_tensors_never_crash(base, scratch, capsys, data, kind, suffix):
    root, files = base
    arrays, metadata = files[kind]
    path = scratch / f"{kind}{suffix}"
    try:
        save_arrays(path, data.draw(tensor_change(arrays)), metadata)
    except ValueError:     # safetensors cannot hold some names (""), so no file to read
        return
    run_commands(capsys, root, path, COMMANDS if kind == "checkpoint" else COMMANDS[:3])


@st.composite
def byte_change(draw, raw: bytes):
    how = draw(st.sampled_from(["flip", "truncate", "insert", "length"]))
    data = bytearray(raw)
    if how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    elif how == "truncate":
        del data[draw(st.integers(0, len(data) - 1)):]
    elif how == "insert":
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=16))
    else:   # safetensors' first 8 bytes: the header's length; in a zip, the local header
        data[:8] = draw(st.integers(0, 2**64 - 1)).to_bytes(8, "little")
    return bytes(data)


@settings(max_examples=50, **FUZZ)
@given(data=st.data(), kind=st.sampled_from(["weights", "checkpoint"]),
       suffix=st.sampled_from([".safetensors", ".npz"]))
def test_mutated_bytes_never_crash(base, scratch, capsys, data, kind, suffix):
    root, files = base
    arrays, metadata = files[kind]
    path = scratch / f"{kind}{suffix}"
    save_arrays(path, arrays, metadata)
    raw = path.read_bytes()
    # a flip in the header or the metadata is what a reader must survive; in the tensors'
    # bytes it only changes values: aim at the first KB (headers) half of the time
    if data.draw(st.booleans()):
        head = data.draw(byte_change(raw[:1024]))
        path.write_bytes(head + raw[1024:])
    else:
        path.write_bytes(data.draw(byte_change(raw)))
    run_commands(capsys, root, path, COMMANDS if kind == "checkpoint" else COMMANDS[:3])
