"""Fuzzing the data paths: whatever the files, netspec uses them or refuses them with a message.

Hypothesis writes data sources into a temporary folder: .npz files, folders of .npy arrays,
folders of IDX files (plain or gzip) and folders of images, valid-ish and corrupted (random
dtypes, shapes and ranks, label values from 0 to 2^64-1, truncated, garbled or padded bytes,
broken gzip wrappers), and images and arrays for `netspec predict`.

- Training data goes through `load_data` (what `train` and `eval` call): it must return data
  the network can use (float32 of the input's shape, every value finite, labels 0..classes-1)
  or raise DataError / a SpecError (ResourceError) with a message; anything else is a bug.
- Inputs for predict go through the CLI in-process (`netspec.cli.main`): exit 0 with one
  finite row per sample, or exit 1 with a message; never exit 3 ("internal error").

One run generates N_NPZ + N_NPY + N_IDX + N_IMAGES + N_PREDICT cases (620, about 40 s);
each test prints how many it generated and how many were accepted.
"""

from __future__ import annotations

import gzip
import io
import struct
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from netspec.cli import main
from netspec.errors import SpecError
from netspec.training.data import DataError, load_data

N_NPZ, N_NPY, N_IDX, N_IMAGES, N_PREDICT = 160, 80, 160, 80, 140

# no shrinking: each case runs netspec, and shrinking a failure re-ran it for over 20 minutes;
# the failing case is reported as drawn, which reproduces it
FUZZ = dict(phases=(Phase.explicit, Phase.reuse, Phase.generate), deadline=None, database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                   HealthCheck.function_scoped_fixture])

TINY = """network tiny(classes=10) {
    input image: 1@8x8
    image -> flatten -> dense(classes) -> softmax -> out
}
"""

DTYPES = ["|u1", "|i1", "<i2", "<u2", "<i4", "<i8", "<u8", "<f2", "<f4", "<f8", "|b1", "<c8",
          "<U3", "|S2", "<M8[s]"]


# ---------------------------------------------------------------- strategies


@st.composite
def arrays(draw, n=None, shape=None):
    """A small array: any dtype, a shape near `shape` (or any rank 0..5), values of one style."""
    dtype = np.dtype(draw(st.sampled_from(["|u1"] * 6 + ["<f4"] * 3 + DTYPES)))
    if shape is None or draw(st.integers(0, 4)) == 0:
        shape = tuple(draw(st.lists(st.integers(0, 9), max_size=5)))
    shape = tuple(shape)
    if n is not None and shape:
        shape = (n, *shape[1:])
    style = draw(st.sampled_from(["zeros", "small", "small", "bytes", "special"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    size = int(np.prod(shape))
    if dtype.kind == "U":
        values = np.array(["a", "bc", "é"])[rng.integers(0, 3, size)].astype(dtype)
    elif dtype.kind == "S":
        values = np.array([b"a", b"bc", b""])[rng.integers(0, 3, size)].astype(dtype)
    elif style == "zeros":
        values = np.zeros(size, dtype)
    elif style == "small" and dtype.kind != "M":
        values = rng.integers(0, 12, size).astype(dtype)
    elif style == "special" and dtype.kind in "fc":
        values = np.array([np.nan, np.inf, -np.inf, 1e300, -0.0, 0.5, 3e38])[rng.integers(0, 7, size)]
        with np.errstate(over="ignore"):
            values = values.astype(dtype)
    else:
        values = np.frombuffer(rng.bytes(size * dtype.itemsize), dtype)
    return values.reshape(shape)


def clean_members(draw, n: int, keys) -> dict:
    """Valid arrays for `keys` (x..., y...): uint8 images 8x8 and class indices 0..2."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return {key: (rng.integers(0, 256, (n, 8, 8), dtype=np.uint8) if key.startswith("x")
                  else rng.integers(0, 3, n)) for key in keys}


@st.composite
def labels(draw, n):
    """Labels for n examples: class indices, one-hot rows, huge or negative values, floats..."""
    kind = draw(st.sampled_from(["indices", "indices", "indices", "huge", "one_hot", "array"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "indices":
        k = draw(st.sampled_from([1, 2, 3, 10, 10, 14]))
        return rng.integers(0, k, n).astype(draw(st.sampled_from(["u1", "i8", "i4"])))
    if kind == "huge":
        y = rng.integers(0, 10, n).astype(np.uint64)
        if n:
            y[draw(st.integers(0, n - 1))] = draw(st.sampled_from([2**62, 10**9, 2**64 - 1, 2**63]))
        return y
    if kind == "one_hot":
        k = draw(st.integers(1, 14))
        return np.eye(k, dtype=draw(st.sampled_from(["f4", "u1", "i8"])))[rng.integers(0, k, n)]
    return draw(arrays(n=n, shape=(n,)))


def corrupt(draw, data: bytes) -> bytes:
    """Sometimes truncate, garble or pad the bytes of a file."""
    how = draw(st.sampled_from(["keep"] * 5 + ["truncate", "garble", "pad"]))
    if how == "truncate":
        return data[:draw(st.integers(0, max(0, len(data) - 1)))]
    if how == "garble":
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            if out:
                out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
        return bytes(out)
    if how == "pad":
        return data + draw(st.binary(min_size=1, max_size=64))
    return data


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def npz_bytes(members: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **members)
    return buf.getvalue()


INPUTS = [(1, 8, 8), (3, 8, 8), (64,), (1, 6, 6), (1, 10, 10)]


# ---------------------------------------------------------------- running


def accepted_or_refused(source: Path, input_shape, classes: int, counts: Counter) -> None:
    """load_data either gives usable data or refuses with a message; nothing else."""
    try:
        s = load_data(str(source), input_shape, classes, validation_split=0.2)
    except DataError as e:
        assert str(e).strip()
        counts["refused"] += 1
        return
    except SpecError as e:              # ResourceError: the memory check
        assert e.message.strip()
        counts["refused"] += 1
        return
    counts["accepted"] += 1
    assert len(s.class_names) <= classes
    for d in (s.train, s.val, s.test):
        if d is None:
            continue
        assert d.x.dtype == np.float32 and d.x.shape == (len(d), *input_shape)
        assert np.isfinite(d.x).all()
        assert d.y.dtype == np.int64 and ((d.y >= 0) & (d.y < classes)).all()


def report(name: str, counts: Counter, expected: int) -> None:
    total = counts["accepted"] + counts["refused"]
    print(f"{name}: {total} cases, {counts['accepted']} accepted, {counts['refused']} refused")
    assert total >= expected // 2, "hypothesis generated far fewer cases than asked for"
    assert counts["accepted"] and counts["refused"], "the fuzzer explores only one outcome"


# ---------------------------------------------------------------- .npz, .npy folders, IDX


@pytest.mark.slow
def test_fuzz_npz_files():
    counts = Counter()

    @settings(max_examples=N_NPZ, **FUZZ)
    @given(st.data())
    def one(data):
        n = data.draw(st.integers(0, 12))
        input_shape = data.draw(st.sampled_from(INPUTS))
        layout = data.draw(st.sampled_from(["x_y", "train_test", "train", "junk"]))
        shape = data.draw(st.sampled_from([(n, 8, 8), (n, 8, 8, 3), (n, 3, 8, 8), (n, 64), (n, 6, 6)]))
        members = {}
        keys = {"x_y": ["x"], "train_test": ["x_train", "x_test"], "train": ["x_train"],
                "junk": ["images"]}[layout]
        clean = data.draw(st.booleans())          # half the cases: valid arrays, maybe corrupted
        for key in keys if not clean else ():
            m = data.draw(st.integers(0, 12)) if key == "x_test" else n
            members[key] = data.draw(arrays(n=m, shape=shape))
            ykey = key.replace("x", "y", 1) if key != "images" else "labels"
            members[ykey] = data.draw(labels(len(members[key]) if members[key].ndim else 1))
        if clean:
            members = clean_members(data.draw, max(n, 5),
                                    [k for key in keys for k in (key, key.replace("x", "y", 1))])
        raw = corrupt(data.draw, npz_bytes(members))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "d.npz"
            path.write_bytes(raw)
            accepted_or_refused(path, input_shape, data.draw(st.sampled_from([10, 3, 14])), counts)

    one()
    report("npz", counts, N_NPZ)


@pytest.mark.slow
def test_fuzz_npy_folders():
    counts = Counter()

    @settings(max_examples=N_NPY, **FUZZ)
    @given(st.data())
    def one(data):
        n = data.draw(st.integers(0, 12))
        stem = data.draw(st.sampled_from(["", "_train"]))
        if data.draw(st.booleans()):              # valid arrays
            x, y = clean_members(data.draw, n, ["x", "y"]).values()
        else:
            x = data.draw(arrays(n=n, shape=(n, 8, 8)))
            y = data.draw(labels(data.draw(st.sampled_from([n, n, n, max(n - 1, 0), n + 1]))))
        files = {f"x{stem}.npy": npy_bytes(x), f"y{stem}.npy": npy_bytes(y)}
        if stem and data.draw(st.booleans()):
            m = data.draw(st.integers(0, 6))
            files["x_test.npy"] = npy_bytes(data.draw(arrays(n=m, shape=(m, 8, 8))))
            if data.draw(st.integers(0, 5)):
                files["y_test.npy"] = npy_bytes(data.draw(labels(m)))
        if data.draw(st.booleans()):
            victim = data.draw(st.sampled_from(sorted(files)))
            files[victim] = corrupt(data.draw, files[victim])
        with tempfile.TemporaryDirectory() as tmp:
            for name, raw in files.items():
                (Path(tmp) / name).write_bytes(raw)
            accepted_or_refused(Path(tmp), (1, 8, 8), 10, counts)

    one()
    report("npy folders", counts, N_NPY)


@st.composite
def idx_file(draw, n, dims):
    """IDX bytes: half the time a valid file of uint8 `dims` holding 0..9, else any type code,
    rank or dims, a wrong data length, random values, a gzip wrapper, corrupted bytes."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):
        data = struct.pack(">BBBB", 0, 0, 8, len(dims)) + struct.pack(f">{len(dims)}I", *dims)
        data += rng.integers(0, 10, int(np.prod(dims)), dtype=np.uint8).tobytes()
        return gzip.compress(data, compresslevel=1) if draw(st.booleans()) else data
    code = draw(st.sampled_from([0x08] * 6 + [0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x07, 0xFF]))
    if draw(st.integers(0, 4)) == 0:
        dims = draw(st.lists(st.one_of(st.integers(0, 9), st.sampled_from([2**31, 2**32 - 1])),
                             max_size=6))
        if draw(st.integers(0, 9)) == 0:
            dims = [1] * 255
    dims = [n, *dims[1:]] if dims else dims
    itemsize = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}.get(code, 1)
    count = int(np.prod(dims)) if dims else 1
    length = count * itemsize if count * itemsize < 10_000 else 64
    length = max(0, length + draw(st.sampled_from([0, 0, 0, -1, 1])))
    body = (rng.integers(0, 10, length, dtype=np.uint8).tobytes() if draw(st.booleans())
            else rng.bytes(length))
    data = struct.pack(">BBBB", 0, 0, code, len(dims) % 256) + struct.pack(f">{len(dims)}I", *dims) + body
    if draw(st.booleans()):
        data = gzip.compress(data, compresslevel=1)
    return corrupt(draw, data)


@pytest.mark.slow
def test_fuzz_idx_folders():
    counts = Counter()

    @settings(max_examples=N_IDX, **FUZZ)
    @given(st.data())
    def one(data):
        n = data.draw(st.integers(0, 12))
        gz = data.draw(st.sampled_from(["", ".gz"]))
        files = {f"train-images-idx3-ubyte{gz}": data.draw(idx_file(n, [n, 8, 8])),
                 f"train-labels-idx1-ubyte{gz}": data.draw(idx_file(n, [n]))}
        if data.draw(st.booleans()):
            m = data.draw(st.integers(0, 6))
            files["t10k-images-idx3-ubyte"] = data.draw(idx_file(m, [m, 8, 8]))
            files["t10k-labels-idx1-ubyte"] = data.draw(idx_file(m, [m]))
        with tempfile.TemporaryDirectory() as tmp:
            for name, raw in files.items():
                (Path(tmp) / name).write_bytes(raw)
            accepted_or_refused(Path(tmp), (1, 8, 8), 10, counts)

    one()
    report("IDX folders", counts, N_IDX)


# ---------------------------------------------------------------- images


@st.composite
def image_file(draw):
    """(suffix, bytes): an image in some mode and size, or garbled, truncated or not an image."""
    from PIL import Image
    fmt, suffix = draw(st.sampled_from([("PNG", ".png")] * 3 + [("GIF", ".gif"), ("BMP", ".bmp"),
                                                                ("JPEG", ".jpg")]))
    mode = draw(st.sampled_from(["L", "RGB", "RGBA", "P", "1", "I;16", "I", "F", "LA"]))
    w, h = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    im = Image.frombytes("L", (w, h), rng.bytes(w * h)).convert(mode if mode != "I;16" else "I")
    if mode == "I;16":
        im = Image.frombytes("I;16", (w, h), rng.bytes(2 * w * h))
    buf = io.BytesIO()
    try:
        im.save(buf, fmt)
    except (OSError, ValueError, KeyError):         # a mode this format cannot store
        im.convert("L").save(buf, fmt)
    return suffix, corrupt(draw, buf.getvalue())


@pytest.mark.slow
def test_fuzz_image_folders():
    counts = Counter()

    @settings(max_examples=N_IMAGES, **FUZZ)
    @given(st.data())
    def one(data):
        classes = data.draw(st.lists(st.sampled_from(["cat", "dog", ".hidden", "7"]), min_size=1,
                                     max_size=3, unique=True))
        input_shape = data.draw(st.sampled_from([(1, 8, 8), (3, 8, 8), (64,), (4, 8, 8)]))
        with tempfile.TemporaryDirectory() as tmp:
            for c in classes:
                (Path(tmp) / c).mkdir()
                for i in range(data.draw(st.integers(1, 3))):
                    suffix, raw = data.draw(image_file())
                    (Path(tmp) / c / f"{i}{suffix}").write_bytes(raw)
            accepted_or_refused(Path(tmp), input_shape, 3, counts)

    one()
    report("image folders", counts, N_IMAGES)


# ---------------------------------------------------------------- predict, through the CLI


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz_trained")
    (folder / "tiny.net").write_text(TINY)
    assert main(["train", str(folder / "tiny.net"), "--epochs", "1", "-o", str(folder / "run"),
                 "--no-progress"]) == 0
    return folder


@pytest.mark.slow
def test_fuzz_predict_inputs(trained, capsys):
    counts = Counter()
    spec, weights = str(trained / "tiny.net"), str(trained / "run" / "weights.safetensors")
    capsys.readouterr()

    @settings(max_examples=N_PREDICT, **FUZZ)
    @given(st.data())
    def one(data):
        with tempfile.TemporaryDirectory() as tmp:
            paths = []
            for i in range(data.draw(st.integers(1, 3))):
                kind = data.draw(st.sampled_from(["npy", "npy", "npz", "image"]))
                if kind == "image":
                    suffix, raw = data.draw(image_file())
                else:
                    n = data.draw(st.integers(0, 4))
                    a = data.draw(arrays(n=n, shape=data.draw(st.sampled_from([(n, 8, 8), (8, 8), (n, 64)]))))
                    suffix = f".{kind}"
                    raw = corrupt(data.draw, npy_bytes(a) if kind == "npy" else npz_bytes({"x": a}))
                paths.append(Path(tmp) / f"in{i}{suffix}")
                paths[-1].write_bytes(raw)
            rc = main(["predict", spec, *map(str, paths), "--weights", weights])
        out, err = capsys.readouterr()
        assert rc in (0, 1), f"exit {rc}\n{out}\n{err}"
        assert "internal error" not in err and "Traceback" not in err, err
        if rc == 1:
            assert err.strip()
            counts["refused"] += 1
            return
        counts["accepted"] += 1
        rows = out.strip().splitlines()[1:]
        assert rows and all("nan" not in r and "inf" not in r for r in rows), out

    one()
    with capsys.disabled():
        report("predict inputs", counts, N_PREDICT)
