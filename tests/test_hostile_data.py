"""Hostile data for `netspec train`, `eval` and `predict` (issue 13, classes 3, 6 and 7).

Each case runs netspec in a subprocess under an address-space limit (netspec.testing.hostile)
and must end in exit 1 with a message naming the file and the problem, within seconds, with a
peak resident memory far below what the file asks for, and with nothing outside netspec's run
folders changed. The bombs are real and valid (a gzip that inflates to 3 GB, a PNG of
20000x20000 pixels, an .npz member of 3 GB of zeros) but built here in a few MB, by repeating
one deflate segment that starts from an empty history (see `deflate_zeros`).
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from netspec.testing.hostile import assert_refused, changes, run_netspec, tree_state

MEMORY_MB = 2048            # the address-space limit of every netspec run here
SMALL_MB = 600              # a refused bomb peaks below this (the smallest one here is 1.6 GB)
SECONDS = 30                # generous: only a safety net (the runs take about 2 s)
GB3 = 3 * 10**9

TINY = """network tiny(classes=10) {
    input image: 1@8x8
    image -> flatten -> dense(classes) -> softmax -> out
}
"""
POOL = """network pool(classes=10) {
    input image: 1@8x8
    image -> global_avgpool -> dense(classes) -> softmax -> out
}
"""
WIDE = """network wide(classes=10) {
    input image: 1@8x8
    image -> conv(1000000000, 3) -> global_avgpool -> dense(classes) -> softmax -> out
}
"""


# ---------------------------------------------------------------- building bombs cheaply


def _affine_power(matrix: list[int], const: int, n: int) -> tuple[list[int], int]:
    """The map c -> M c ^ k over GF(2)^32 (M as 32 columns), composed with itself n times."""
    def times(m, v):
        out, i = 0, 0
        while v:
            if v & 1:
                out ^= m[i]
            v >>= 1
            i += 1
        return out

    result = ([1 << i for i in range(32)], 0)             # the identity
    base = (matrix, const)
    while n:
        if n & 1:                                          # result = base after result
            result = ([times(base[0], c) for c in result[0]], times(base[0], result[1]) ^ base[1])
        base = ([times(base[0], c) for c in base[0]], times(base[0], base[1]) ^ base[1])
        n >>= 1
    return result


def crc32_with_zeros(crc: int, blocks: int, block: int) -> int:
    """zlib.crc32(bytes(blocks * block), crc) without the bytes: appending a block of zeros is an
    affine map of the CRC over GF(2), applied `blocks` times by squaring."""
    zeros = bytes(block)
    const = zlib.crc32(zeros, 0)
    matrix = [zlib.crc32(zeros, 1 << i) ^ const for i in range(32)]
    m, k = _affine_power(matrix, const, blocks)
    out, i, v = 0, 0, crc
    while v:
        if v & 1:
            out ^= m[i]
        v >>= 1
        i += 1
    return out ^ k


def deflate_zeros(prefix: bytes, zeros: int, block: int = 1 << 20) -> bytes:
    """Raw deflate of prefix + `zeros` zero bytes (zeros a multiple of `block`), in about
    zeros / 1000 bytes: one block of zeros is compressed after a full flush (so it refers to
    nothing before it) and its bytes are repeated."""
    assert zeros % block == 0
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = co.compress(prefix) + co.flush(zlib.Z_FULL_FLUSH)
    segment = co.compress(bytes(block)) + co.flush(zlib.Z_FULL_FLUSH)
    return head + segment * (zeros // block) + co.flush()


def gzip_of_zeros(prefix: bytes, zeros: int, block: int = 1 << 20) -> bytes:
    """A valid gzip file of prefix + `zeros` zero bytes (CRC and length included)."""
    crc = crc32_with_zeros(zlib.crc32(prefix), zeros // block, block)
    return (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + deflate_zeros(prefix, zeros, block)
            + struct.pack("<II", crc, (len(prefix) + zeros) & 0xFFFFFFFF))


def zip_of_zeros(name: str, prefix: bytes, zeros: int, others: dict[str, bytes] = {},
                 block: int = 1 << 20) -> bytes:
    """A valid zip (deflated, without zip64: < 4 GB) whose member `name` holds prefix + `zeros`
    zero bytes, and `others` (name -> bytes) beside it."""
    members = [(name, deflate_zeros(prefix, zeros, block),
                crc32_with_zeros(zlib.crc32(prefix), zeros // block, block), len(prefix) + zeros)]
    for other, data in others.items():
        co = zlib.compressobj(9, zlib.DEFLATED, -15)
        members.append((other, co.compress(data) + co.flush(), zlib.crc32(data), len(data)))
    body, central = b"", b""
    for member, data, crc, size in members:
        raw = member.encode()
        fields = (0, 8, 0, 0, crc, len(data), size, len(raw), 0)     # flags, deflate, time, date
        central += (struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, *fields, 0, 0, 0, 0,
                                len(body)) + raw)
        body += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, *fields) + raw + data
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central),
                      len(body), 0)
    return body + central + end


def png_of_zeros(width: int, height: int) -> bytes:
    """A valid 8-bit grayscale PNG, all black: one IDAT of every row's filter byte and pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = width + 1
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = co.compress(bytes(row)) + co.flush(zlib.Z_FULL_FLUSH)
    n = row * height
    adler = ((n % 65521) << 16) | 1                       # adler32 of n zero bytes
    stream = b"\x78\xda" + segment * height + co.flush() + struct.pack(">I", adler)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", stream) + chunk(b"IEND", b""))


def idx_header(code: int, dims) -> bytes:
    return struct.pack(">BBBB", 0, 0, code, len(dims)) + struct.pack(f">{len(dims)}I", *dims)


def npy_header(shape, dtype="|u1") -> bytes:
    """A version 1.0 .npy header for `shape` (what np.save writes before the data)."""
    text = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {tuple(shape)!r}, }}"
    text += " " * (-(10 + len(text) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


def test_the_bomb_builders_make_valid_files(tmp_path):
    """The cheap constructions equal what zlib, gzip, zipfile, numpy and Pillow produce/read."""
    import gzip
    import io
    import zipfile

    from PIL import Image
    block = 4096
    assert crc32_with_zeros(zlib.crc32(b"ab"), 37, block) == zlib.crc32(bytes(37 * block), zlib.crc32(b"ab"))
    assert gzip.decompress(gzip_of_zeros(b"head", 5 * block, block)) == b"head" + bytes(5 * block)
    y = io.BytesIO()
    np.save(y, np.arange(3))
    bomb = zip_of_zeros("x.npy", npy_header((3, block)), 3 * block, {"y.npy": y.getvalue()}, block)
    with zipfile.ZipFile(io.BytesIO(bomb)) as z:
        assert z.testzip() is None
    with np.load(io.BytesIO(bomb)) as f:
        assert np.array_equal(f["x"], np.zeros((3, block), np.uint8))
        assert np.array_equal(f["y"], np.arange(3))
    (tmp_path / "p.png").write_bytes(png_of_zeros(300, 200))
    with Image.open(tmp_path / "p.png") as im:
        assert im.size == (300, 200) and not np.asarray(im).any()


# ---------------------------------------------------------------- running netspec


@pytest.fixture()
def work(tmp_path):
    """A folder holding the specs (`refused` checks that nothing in it changes but runs/)."""
    for name, text in (("tiny.net", TINY), ("pool.net", POOL), ("wide.net", WIDE)):
        (tmp_path / name).write_text(text)
    return tmp_path


def refused(work: Path, *args, mentions=(), memory_mb=MEMORY_MB, peak_mb=SMALL_MB):
    """Run netspec ARGS in `work`; assert exit 1 with `mentions`, bounded time and memory, and
    no file changed outside runs/."""
    before = tree_state(work, skip=("runs", "build"))
    out = run_netspec(*args, cwd=work, memory_mb=memory_mb, timeout=120)
    assert_refused(out, *mentions, codes=(1,), seconds=SECONDS)
    assert out.peak_mb < peak_mb, f"peak {out.peak_mb:.0f} MB\n{out}"
    assert changes(before, tree_state(work, skip=("runs", "build"))) == []
    return out


def train(work, data, *extra, spec="tiny.net", **kw):
    return refused(work, "train", spec, "--data", str(data), "--epochs", "1", "-o", "runs/t",
                   *extra, **kw)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """tiny.net trained for one epoch on the digits (for eval and predict)."""
    folder = tmp_path_factory.mktemp("trained")
    (folder / "tiny.net").write_text(TINY)
    out = run_netspec("train", "tiny.net", "--epochs", "1", "-o", "run", cwd=folder, timeout=300)
    assert out.rc == 0, str(out)
    return folder / "run" / "weights.safetensors"


def predict(work, trained, *inputs, **kw):
    return refused(work, "predict", "tiny.net", *map(str, inputs), "--weights", str(trained), **kw)


# ---------------------------------------------------------------- labels (class 3)


@pytest.mark.parametrize("label", [2**62, 10**9, 2**64 - 1])
def test_one_huge_label_is_refused_at_once(work, label):
    y = np.array([0, 1, label, 3, 4], dtype=np.uint64)
    np.savez(work / "labels.npz", x=np.zeros((5, 8, 8), np.uint8), y=y)
    out = train(work, "labels.npz", peak_mb=400)
    assert f"label {label}" in out.stderr and "out of range" in out.stderr, str(out)
    if label < 2**63:
        assert "the spec's output has 10 units" in out.stderr and "5 distinct values" in out.stderr


def test_dense_labels_beyond_the_output_suggest_classes(work):
    np.savez(work / "twelve.npz", x=np.zeros((24, 8, 8), np.uint8), y=np.arange(24) % 12)
    train(work, "twelve.npz", mentions=("the data has 12 classes", "10 units", "--set classes=12"))


# ---------------------------------------------------------------- IDX files (classes 3 and 6)


def idx_folder(work: Path, images: bytes, labels: bytes | None = None, gz=True) -> Path:
    folder = work / "mnist"
    folder.mkdir()
    suffix = ".gz" if gz else ""
    (folder / f"train-images-idx3-ubyte{suffix}").write_bytes(images)
    (folder / f"train-labels-idx1-ubyte").write_bytes(labels or idx_header(8, [60000]) + bytes(60000))
    return folder


def test_gzip_idx_that_inflates_to_3gb_as_promised_does_not_fit(work):
    zeros = 2861 * (1 << 20)                                   # 3.0 GB: 2,861 images of 1024x1024
    data = gzip_of_zeros(idx_header(8, [2861, 1024, 1024]), zeros)
    assert len(data) < 4_000_000
    train(work, idx_folder(work, data), mentions=("train-images-idx3-ubyte.gz", "2861 x 1024 x 1024",
                                                  "needs 3.0 GB of memory", "available"))


def test_gzip_idx_that_inflates_past_its_header_stops_at_the_header(work):
    promised = [60000, 28, 28]                                 # 47 MB, as MNIST's
    zeros = (1 << 20) * 2861                                   # but it inflates to 3.0 GB
    folder = idx_folder(work, gzip_of_zeros(idx_header(8, promised), zeros))
    train(work, folder, mentions=("train-images-idx3-ubyte.gz", "a corrupt IDX file",
                                  "60000 x 28 x 28", "holds more"), peak_mb=400)


def test_gzip_idx_promising_more_than_deflate_can_hold(work):
    import gzip
    data = gzip.compress(idx_header(8, [4_000_000_000, 28, 28]) + bytes(1000))
    folder = idx_folder(work, data)
    train(work, folder, mentions=("train-images-idx3-ubyte.gz", "a corrupt IDX file",
                                  "inflates to at most"), peak_mb=400)


@pytest.mark.parametrize("dims, words", [
    ([1] * 255, ("255 dimensions", "1 to 4")),
    ([0] * 0, ("0 dimensions",)),
    ([2**20, 2**20, 16], ("a truncated IDX file", "1048576 x 1048576 x 16 values (17,592,186,044,416")),
    ([2**32 - 1] * 3, ("a corrupt IDX file", "4294967295 x 4294967295 x 4294967295",
                       "describe no possible array")),
])
def test_idx_headers_with_absurd_dims(work, dims, words):
    folder = idx_folder(work, idx_header(8, dims) + bytes(64), gz=False)
    train(work, folder, mentions=("train-images-idx3-ubyte", *words), peak_mb=400)


# ---------------------------------------------------------------- .npz and .npy (classes 3, 6)


def test_npz_member_of_3gb_zeros_does_not_fit(work):
    zeros = (1 << 20) * 2861
    y = npy_header((zeros // 64,), "<i8")                       # labels: a header (x is refused first)
    (work / "bomb.npz").write_bytes(zip_of_zeros("x.npy", npy_header((zeros // 64, 8, 8)), zeros,
                                                 {"y.npy": y}))
    train(work, "bomb.npz", mentions=("bomb.npz: x", "needs 3.0 GB of memory"))


def test_npz_header_promising_more_than_its_member_holds(work):
    import zipfile
    with zipfile.ZipFile(work / "lie.npz", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", npy_header((10**12, 8, 8)) + bytes(100))
        z.writestr("y.npy", npy_header((3,), "<i8") + bytes(24))
    train(work, "lie.npz", mentions=("lie.npz: x", "a corrupt array", "inflate to at most"),
          peak_mb=400)


def test_npy_header_promising_more_than_the_file_holds(work):
    folder = work / "arrays"
    folder.mkdir()
    (folder / "x.npy").write_bytes(npy_header((2**40, 8, 8)) + bytes(100))
    np.save(folder / "y.npy", np.zeros(3, np.int64))
    train(work, folder, mentions=("x.npy", "a truncated array", "(1099511627776, 8, 8)"), peak_mb=400)


@pytest.mark.parametrize("x, words", [
    (np.array([["a", "b"], ["c", "d"]]), ("dtype <U1", "give numbers")),
    (np.array([b"ab", b"cd"]).reshape(2, 1), ("dtype |S2", "give numbers")),
    (np.zeros((2, 3), complex), ("dtype complex128",)),
    (np.float32(3), ("shape ()",)),
    (np.zeros((2, 0, 8), np.uint8), ("empty",)),
])
def test_npz_of_strings_and_odd_arrays(work, x, words):
    np.savez(work / "odd.npz", x=x, y=np.zeros(2 if np.ndim(x) else 1, np.int64))
    train(work, "odd.npz", mentions=("odd.npz", *words), peak_mb=400)


def test_pickled_objects_are_refused_unread(work):
    np.save(work / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    folder = work / "o"
    folder.mkdir()
    (work / "objects.npy").rename(folder / "x.npy")
    np.save(folder / "y.npy", np.zeros(2, np.int64))
    train(work, folder, mentions=("x.npy", "Python objects"), peak_mb=400)


@pytest.mark.parametrize("value, words", [(np.nan, "2 NaN values"), (np.inf, "2 infinite values")])
def test_training_data_with_nan_or_inf(work, value, words):
    x = np.zeros((6, 8, 8), np.float32)
    x[1, 2, 3] = x[4, 5, 6] = value
    np.savez(work / "bad.npz", x=x, y=np.arange(6) % 3)
    train(work, "bad.npz", mentions=("bad.npz", words, "among 384"), peak_mb=400)


# ---------------------------------------------------------------- images (class 3)


def test_png_bomb_in_an_image_folder_is_refused_before_decoding(work):
    (work / "pics" / "cat").mkdir(parents=True)
    (work / "pics" / "cat" / "bomb.png").write_bytes(png_of_zeros(20000, 20000))
    assert (work / "pics" / "cat" / "bomb.png").stat().st_size < 1_000_000
    train(work, "pics", mentions=("bomb.png", "400,000,000 pixels", "more than the 16,777,216",
                                  "not decoded"),
          peak_mb=400)


# ---------------------------------------------------------------- memory (class 6)


def test_an_input_larger_than_memory_is_refused_with_sizes(work):
    out = refused(work, "train", "pool.net", "--input", "1@100000x100000", "--epochs", "1",
                  "-o", "runs/p", mentions=("digits", "1,797 examples", "1@100000x100000",
                                            "40.0 GB each", "of memory", "--input"), peak_mb=400)
    assert "MemoryError" not in out.output


def test_a_billion_filters_are_refused_before_allocating(work):
    out = refused(work, "train", "wide.net", "--epochs", "1", "-o", "runs/w",
                  mentions=("wide at batch 32", "parameters and state 80.0 GB", "optimizer slots",
                            "of memory", "--batch"))
    assert "MemoryError" not in out.output


# ---------------------------------------------------------------- predict and eval (classes 6, 7)


@pytest.mark.parametrize("make, words", [
    (lambda p: np.save(p / "in.npy", np.zeros((0, 8, 8), np.uint8)), ("in.npy", "no inputs")),
    (lambda p: np.save(p / "in.npy", np.float32(7)), ("in.npy", "0-d array")),
    (lambda p: np.save(p / "in.npy", np.full((3, 8, 8), np.nan, np.float32)),
     ("in.npy", "192 NaN values among 192")),
    (lambda p: np.save(p / "in.npy", np.array([[np.inf] * 64], np.float64).reshape(1, 8, 8)),
     ("in.npy", "64 infinite values")),
    (lambda p: np.savez(p / "in.npz", x=np.array(["a", "b"])), ("in.npz", "dtype <U1")),
    (lambda p: np.savez(p / "in.npz"), ("in.npz", "no arrays")),
    (lambda p: (p / "in.npy").write_bytes(npy_header((2**40, 8, 8)) + bytes(10)),
     ("in.npy", "a truncated array")),
])
def test_predict_refuses_inputs_it_cannot_use(work, trained, make, words):
    make(work)
    name = words[0]
    predict(work, trained, name, mentions=words, peak_mb=400)


def test_predict_refuses_mixed_value_types(work, trained):
    np.save(work / "a.npy", np.zeros((1, 8, 8), np.uint8))
    np.save(work / "b.npy", np.zeros((1, 8, 8), np.float32))
    predict(work, trained, "a.npy", "b.npy", mentions=("different types", "float32", "uint8"),
            peak_mb=400)


@pytest.mark.parametrize("size, words", [
    (20000, ("400,000,000 pixels",)),               # Pillow's error: over twice the limit
    (5000, ("25,000,000 pixels",)),                 # Pillow's warning, made a refusal
])
def test_predict_refuses_a_png_bomb(work, trained, size, words):
    (work / "bomb.png").write_bytes(png_of_zeros(size, size))
    predict(work, trained, "bomb.png", mentions=("bomb.png", *words, "not decoded", "resize"),
            peak_mb=400)


def test_eval_reads_its_data_with_the_same_checks(work, trained):
    np.savez(work / "labels.npz", x=np.zeros((5, 8, 8), np.uint8), y=np.array([0, 1, 2**62, 3, 4]))
    refused(work, "eval", "tiny.net", "--weights", str(trained), "--data", "labels.npz",
            mentions=("label 4611686018427387904", "out of range"), peak_mb=400)


# ---------------------------------------------------------------- netspec.resources and compile


ROOT = Path(__file__).resolve().parent.parent


def test_available_memory_follows_the_address_space_limit(tmp_path):
    import sys

    from netspec.resources import available_bytes
    from netspec.testing.hostile import run_limited
    probe = "from netspec.resources import available_bytes as a; print(a())"
    out = run_limited([sys.executable, "-c", probe], cwd=tmp_path, memory_mb=1024)
    assert out.rc == 0, str(out)
    assert 500 * 2**20 < int(out.stdout) < 1024 * 2**20     # the limit, less what Python uses
    meminfo = Path("/proc/meminfo").read_text().split("MemAvailable:")[1].split()[0]
    assert available_bytes() <= int(meminfo) * 1024 * 1.1   # no limit here: the machine's


def test_memory_needed_counts_parameters_arenas_and_slots():
    import netspec
    from netspec.model import memory_needed
    from netspec.runtime.memory import plan_memory
    from netspec.runtime.targets import get_target
    net = netspec.load(ROOT / "specs" / "lenet5.net")
    program = net.program(training=True)
    parts = memory_needed(net, program, 64, "cpu")
    cpu = get_target("cpu")
    assert parts == {"parameters and state": 61_706 * 4,          # LeNet-5's parameters, float32
                     "infer arena": plan_memory(program, "infer", 64, cpu).arena_bytes,
                     "train arena": plan_memory(program, "train", 64, cpu).arena_bytes,
                     "optimizer slots": 61_706 * 4}               # sgd with momentum: one slot
    assert parts["train arena"] > parts["infer arena"] > 0


def test_compile_and_the_runtime_refuse_what_does_not_fit(monkeypatch):
    import netspec
    import netspec.resources as resources
    net = netspec.load(ROOT / "specs" / "lenet5.net")
    model = net.compile(training=False, warmup=False)                # before the limit below
    monkeypatch.setattr(resources, "available_bytes", lambda: 10**6)
    with pytest.raises(resources.ResourceError) as e:
        net.compile(batch=64, warmup=False)
    assert e.value.message == ("lenet5 at batch 64 needs 5.5 MB of memory but only 1.0 MB is "
                               "available (parameters and state 246.8 kB, infer arena 1.5 MB, "
                               "train arena 3.5 MB, optimizer slots 246.8 kB)")
    assert "--batch" in e.value.hint and e.value.pos is None
    with pytest.raises(resources.ResourceError, match="the infer arena of lenet5 at batch 1000 needs "
                                                      "23.5 MB of memory but only 1.0 MB"):
        model.predict(np.zeros((1000, 1, 32, 32), np.float32))


# ---------------------------------------------------------------- named pipes (class 8)

def test_a_named_pipe_is_refused_by_name_wherever_a_file_is_read(work, trained):
    # reading a FIFO blocks until a writer comes: every reader refuses it at once, by name
    fifo = work / "pipe.npz"
    os.mkfifo(fifo)
    said = "pipe.npz: not a regular file"
    train(work, fifo, mentions=(said, "named pipe"))
    predict(work, trained, fifo, mentions=(said, "named pipe"))
    refused(work, "predict", "tiny.net", str(work / "pipe.npz"), "--weights", str(fifo),
            mentions=("--weights", said))
    refused(work, "eval", "tiny.net", "--weights", str(trained), "--data", str(fifo), mentions=(said,))
    os.rename(fifo, work / "pipe.safetensors")
    refused(work, "train", "tiny.net", "--epochs", "1", "-o", "runs/t", "--init-from",
            str(work / "pipe.safetensors"), mentions=("pipe.safetensors: not a regular file",))
