"""The data layer of `netspec train`: sources, fitting, splits, normalisation, batches, augmentation.

Every source is written by hand in tmp_path (IDX headers with struct.pack, PNGs with Pillow), so
the expected values are known exactly: after undoing the recorded standardisation (`norm`) each
image must equal the raw one divided by its range, zero-padded or resized as documented.
"""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest
from PIL import Image

from netspec.training.data import (DataError, DataSplits, augment, batches, describe_augment,
                                   digits_raw, fill_value, load_data, prepare, read_idx)


def unstandardise(x, norm):
    """Undo the per-channel standardisation: back to the [0,1]-scaled, fitted image."""
    mean = np.asarray(norm["mean"], np.float64)
    std = np.asarray(norm["std"], np.float64)
    if x.ndim == 4:
        mean, std = mean.reshape(1, -1, 1, 1), std.reshape(1, -1, 1, 1)
    return x.astype(np.float64) * std + mean


def write_idx(path, arr, code=0x08, gz=False):
    data = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data += arr.tobytes()
    if gz:
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def mnist_like(folder, n_train=12, n_test=5, size=28, gz=False, dotted=False, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n_train, size, size), dtype=np.uint8)
    y = (np.arange(n_train) % classes).astype(np.uint8)
    xt = rng.integers(0, 256, (n_test, size, size), dtype=np.uint8)
    yt = (np.arange(n_test) % classes).astype(np.uint8)
    sep = "." if dotted else "-"
    suffix = ".gz" if gz else ""
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / f"train-images{sep}idx3-ubyte{suffix}", x, gz=gz)
    write_idx(folder / f"train-labels{sep}idx1-ubyte{suffix}", y, gz=gz)
    write_idx(folder / f"t10k-images{sep}idx3-ubyte{suffix}", xt, gz=gz)
    write_idx(folder / f"t10k-labels{sep}idx1-ubyte{suffix}", yt, gz=gz)
    return x, y, xt, yt


# ---------------------------------------------------------------- the embedded digits


@pytest.fixture(scope="module")
def digits():
    return load_data(None, (1, 32, 32), 10)


def test_digits_split_sizes_shapes_and_classes(digits):
    assert isinstance(digits, DataSplits)
    assert (len(digits.train), len(digits.val), len(digits.test)) == (1294, 143, 360)
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797
    for d in (digits.train, digits.val, digits.test):
        assert d.x.dtype == np.float32 and d.x.shape == (len(d), 1, 32, 32)
        assert d.y.dtype == np.int64 and d.y.shape == (len(d),)
    counts = sum(np.bincount(d.y, minlength=10) for d in (digits.train, digits.val, digits.test))
    _, raw_y = digits_raw()
    assert counts.sum() == 1797
    assert np.array_equal(counts, np.bincount(raw_y, minlength=10))
    assert digits.class_names == [str(i) for i in range(10)]
    assert digits.source == "digits (embedded, 1,797 images 8x8 -> 1@32x32)"
    assert set(digits.norm) == {"scale", "mean", "std", "fit"} and digits.norm["scale"] == 16.0
    json.dumps(digits.norm)                         # stored beside the checkpoint


def test_digits_training_split_is_standardised(digits):
    x = digits.train.x.astype(np.float64)
    assert abs(x.mean()) < 1e-5 and abs(x.std() - 1) < 1e-5
    rgb = load_data("digits", (3, 16, 16), 10)
    assert rgb.train.x.shape == (1294, 3, 16, 16)
    assert np.allclose(rgb.train.x.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    assert np.allclose(rgb.train.x.std(axis=(0, 2, 3)), 1, atol=1e-5)
    assert len(rgb.norm["mean"]) == 3


def test_digits_split_is_fixed(digits):
    again = load_data("digits", (1, 32, 32), 10, seed=7)       # the digits' split ignores the seed
    for a, b in ((digits.train, again.train), (digits.val, again.val), (digits.test, again.test)):
        assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    none = load_data("digits", (1, 32, 32), 10, validation_split=0)
    assert none.val is None and len(none.train) == 1437 and np.array_equal(none.test.y, digits.test.y)


def test_digits_test_set_is_the_documented_permutation_and_prepare_reproduces_it(digits):
    raw_x, raw_y = digits_raw()
    test_idx = np.random.default_rng(0).permutation(1797)[1437:]
    assert np.array_equal(digits.test.y, raw_y[test_idx])
    again = prepare(raw_x[test_idx[:7]], (1, 32, 32), digits.norm)
    assert np.array_equal(again, digits.test.x[:7])
    # a user's uint8 image (0..255) of the same digits comes out the same, up to rounding to 1/255
    as_uint8 = np.round(raw_x[test_idx[:3]] * 255 / 16).astype(np.uint8)
    close = prepare(as_uint8, (1, 32, 32), digits.norm)
    assert np.allclose(unstandardise(close, digits.norm), unstandardise(again[:3], digits.norm),
                       atol=0.5 / 255 + 1e-6)


def test_digits_upscale_is_pillows_bilinear(digits):
    raw_x, _ = digits_raw()
    i = np.random.default_rng(0).permutation(1797)[1437]        # the first test image
    plane = Image.fromarray((raw_x[i] / 16).astype(np.float32))
    ref = np.asarray(plane.resize((32, 32), Image.Resampling.BILINEAR), np.float64)
    assert plane.mode == "F"
    assert np.allclose(unstandardise(digits.test.x[:1], digits.norm)[0, 0], ref, atol=1e-6)
    assert ref.min() == 0 and 0.9 < ref.max() <= 1      # really scaled by 16, not by 255


def test_digits_as_vectors():
    s = load_data("digits", (64,), 10)
    raw_x, raw_y = digits_raw()
    test_idx = np.random.default_rng(0).permutation(1797)[1437:]
    assert s.train.x.shape == (1294, 64)
    assert len(s.norm["mean"]) == 1
    assert np.allclose(unstandardise(s.test.x, s.norm), raw_x[test_idx].reshape(-1, 64) / 16, atol=1e-6)
    assert load_data("digits", (784,), 10).test.x.shape == (360, 784)   # resized to 28x28
    with pytest.raises(DataError, match="50 features"):
        load_data("digits", (50,), 10)


# ---------------------------------------------------------------- IDX files


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dotted", [False, True])
def test_idx_values_after_normalisation(tmp_path, gz, dotted):
    x, y, xt, yt = mnist_like(tmp_path / "mnist", gz=gz, dotted=dotted)
    s = load_data(str(tmp_path / "mnist"), (1, 28, 28), 10, validation_split=0.25)
    assert (len(s.train), len(s.val), len(s.test)) == (9, 3, 5)
    assert s.norm["scale"] == 255.0 and s.norm["fit"] == "pad"
    assert np.array_equal(s.test.y, yt)                        # the source's test set, in order
    assert np.allclose(unstandardise(s.test.x, s.norm)[:, 0], xt / 255, atol=1e-6)
    # train + val are the training file, permuted
    got = np.concatenate([unstandardise(s.train.x, s.norm), unstandardise(s.val.x, s.norm)])[:, 0]
    order = np.argsort(np.concatenate([s.train.y, s.val.y]), kind="stable")
    labels = np.concatenate([s.train.y, s.val.y])
    assert sorted(labels.tolist()) == sorted(y.tolist())
    for img, lab in zip(got[order], labels[order]):
        assert any(np.allclose(img, x[j] / 255, atol=1e-6) for j in np.flatnonzero(y == lab))
    assert abs(s.train.x.mean()) < 1e-5
    assert s.source == f"IDX files in {tmp_path / 'mnist'} (17 images 28x28 -> 1@28x28)"


def test_idx_padding_28_to_32_is_centred_zeros(tmp_path):
    _, _, xt, _ = mnist_like(tmp_path / "m")
    s = load_data(str(tmp_path / "m"), (1, 32, 32), 10)
    img = unstandardise(s.test.x, s.norm)[:, 0]
    assert img.shape == (5, 32, 32)
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert np.allclose(img[:, border], 0, atol=1e-6)           # raw 0, before standardisation
    assert np.allclose(img[:, 2:30, 2:30], xt / 255, atol=1e-6)
    # the fill value of augment is exactly what the padding became
    assert np.all(s.test.x[:, 0, 0, 0] == fill_value(s.norm, 1)[0])


def test_idx_split_depends_on_seed_and_is_deterministic(tmp_path):
    mnist_like(tmp_path / "m", n_train=40)
    a = load_data(str(tmp_path / "m"), (1, 28, 28), 10, seed=1)
    b = load_data(str(tmp_path / "m"), (1, 28, 28), 10, seed=1)
    c = load_data(str(tmp_path / "m"), (1, 28, 28), 10, seed=2)
    assert np.array_equal(a.train.x, b.train.x) and np.array_equal(a.val.y, b.val.y)
    assert not np.array_equal(a.train.x, c.train.x)
    assert np.array_equal(a.test.y, c.test.y)                  # the same images, each split's norm
    assert np.allclose(unstandardise(a.test.x, a.norm), unstandardise(c.test.x, c.norm), atol=1e-6)


def test_idx_truncated_files_name_the_file(tmp_path):
    mnist_like(tmp_path / "m")
    f = tmp_path / "m" / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(DataError, match="train-images-idx3-ubyte: a truncated IDX file"):
        load_data(str(tmp_path / "m"), (1, 28, 28), 10)

    mnist_like(tmp_path / "g", gz=True)
    g = tmp_path / "g" / "t10k-labels-idx1-ubyte.gz"
    g.write_bytes(g.read_bytes()[:-12])
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz: a truncated or corrupt gzip"):
        load_data(str(tmp_path / "g"), (1, 28, 28), 10)

    bad = tmp_path / "b"
    mnist_like(bad)
    (bad / "train-labels-idx1-ubyte").write_bytes(b"\x12\x34\x08\x01hello")
    with pytest.raises(DataError, match="train-labels-idx1-ubyte: not an IDX file"):
        load_data(str(bad), (1, 28, 28), 10)


def test_idx_missing_partner_and_count_mismatch(tmp_path):
    mnist_like(tmp_path / "m")
    (tmp_path / "m" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.* missing"):
        load_data(str(tmp_path / "m"), (1, 28, 28), 10)
    mnist_like(tmp_path / "n")
    write_idx(tmp_path / "n" / "train-labels-idx1-ubyte", np.zeros(7, np.uint8))
    with pytest.raises(DataError, match="7 labels for 12 images"):
        load_data(str(tmp_path / "n"), (1, 28, 28), 10)


def test_read_idx_other_dtypes(tmp_path):
    a = (np.arange(24).reshape(2, 3, 4) - 5).astype(">i2")    # IDX data is big-endian
    assert np.array_equal(read_idx(write_idx(tmp_path / "a", a, code=0x0B)), a)
    f = np.linspace(0, 1, 6, dtype=">f4").reshape(2, 3)
    got = read_idx(write_idx(tmp_path / "f", f, code=0x0D, gz=True))
    assert got.dtype == np.float32 and np.array_equal(got, f)


# ---------------------------------------------------------------- .npz, .npy, image folders


def test_npz_keras_layout(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    xt = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    y, yt = np.arange(20) % 10, np.arange(6) % 10
    np.savez(tmp_path / "mnist.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    s = load_data(str(tmp_path / "mnist.npz"), (784,), 10, validation_split=0)
    assert s.val is None and len(s.train) == 20 and s.train.x.shape == (20, 784)
    assert np.allclose(unstandardise(s.test.x, s.norm), xt.reshape(6, -1) / 255, atol=1e-6)
    assert np.array_equal(s.test.y, yt)


def test_npz_x_y_layout_holds_out_a_test_set(tmp_path):
    x = np.random.default_rng(4).random((20, 3, 8, 8), dtype=np.float32)     # floats kept, NCHW
    y = np.eye(4, dtype=np.float32)[np.arange(20) % 4]                         # one-hot rows
    np.savez(tmp_path / "d.npz", x=x, y=y)
    s = load_data(str(tmp_path / "d.npz"), (3, 8, 8), 4)
    assert (len(s.train), len(s.val), len(s.test)) == (15, 1, 4)
    test_idx = np.random.default_rng(0).permutation(20)[16:]
    assert np.array_equal(s.test.y, np.arange(20)[test_idx] % 4)
    assert np.allclose(unstandardise(s.test.x, s.norm), x[test_idx], atol=1e-6)
    assert s.norm["scale"] == 1.0 and len(s.norm["std"]) == 3
    assert s.class_names == ["0", "1", "2", "3"]


def test_npy_folder_channels_last(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (10, 6, 6, 3), dtype=np.uint8)                  # (N, H, W, C)
    xt = rng.integers(0, 256, (4, 6, 6, 3), dtype=np.uint8)
    np.save(tmp_path / "x_train.npy", x)
    np.save(tmp_path / "y_train.npy", np.arange(10, dtype=np.int32) % 3)
    np.save(tmp_path / "x_test.npy", xt)
    np.save(tmp_path / "y_test.npy", np.arange(4, dtype=np.int32) % 3)
    s = load_data(str(tmp_path), (3, 8, 8), 5)
    got = unstandardise(s.test.x, s.norm)
    assert got.shape == (4, 3, 8, 8)
    assert np.allclose(got[:, :, 1:7, 1:7], xt.transpose(0, 3, 1, 2) / 255, atol=1e-6)
    assert s.class_names == ["0", "1", "2"]


def test_npy_folder_x_y_gray_to_rgb(tmp_path):
    x = np.random.default_rng(6).integers(0, 256, (10, 4, 4), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.arange(10) % 2)
    s = load_data(str(tmp_path), (3, 4, 4), 2, validation_split=0)
    got = unstandardise(s.test.x, s.norm)
    assert got.shape == (2, 3, 4, 4) and np.allclose(got[:, 0], got[:, 2])   # replicated


def make_pngs(root, classes, per_class=3, size=(8, 8), mode="L", seed=0):
    rng = np.random.default_rng(seed)
    pixels = {}
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
            a = rng.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(a).save(root / name / f"{i}.png")
            pixels[(name, i)] = a
    (root / classes[0] / "notes.txt").write_text("not an image")
    return pixels


def test_image_folder_class_names_and_values(tmp_path):
    pixels = make_pngs(tmp_path / "pets", ["dog", "cat", "zebra"], per_class=5)
    s = load_data(str(tmp_path / "pets"), (1, 8, 8), 3, validation_split=0)
    assert s.class_names == ["cat", "dog", "zebra"]
    assert len(s.train) + len(s.test) == 15 and len(s.test) == 3
    test_idx = np.random.default_rng(0).permutation(15)[12:]
    files = [(c, i) for c in ["cat", "dog", "zebra"] for i in range(5)]
    for k, j in enumerate(test_idx):
        name, i = files[j]
        assert s.test.y[k] == s.class_names.index(name)
        assert np.allclose(unstandardise(s.test.x[k:k + 1], s.norm)[0, 0], pixels[(name, i)] / 255, atol=1e-6)


def test_image_folder_train_test_rgb(tmp_path):
    make_pngs(tmp_path / "d" / "train", ["a", "b"], mode="RGB")
    pixels = make_pngs(tmp_path / "d" / "test", ["a", "b"], per_class=2, mode="RGB", seed=1)
    s = load_data(str(tmp_path / "d"), (3, 8, 8), 2, validation_split=0)
    assert len(s.train) == 6 and len(s.test) == 4 and s.class_names == ["a", "b"]
    assert np.array_equal(s.test.y, [0, 0, 1, 1])
    assert np.allclose(unstandardise(s.test.x, s.norm)[3], pixels[("b", 1)].transpose(2, 0, 1) / 255,
                       atol=1e-6)


def test_image_folder_mixed_sizes_are_padded_and_too_large_named(tmp_path):
    make_pngs(tmp_path / "i", ["a"], size=(6, 6))
    make_pngs(tmp_path / "i", ["b"], size=(8, 4))
    s = load_data(str(tmp_path / "i"), (1, 8, 8), 2, validation_split=0)
    assert s.train.x.shape[1:] == (1, 8, 8)
    make_pngs(tmp_path / "j", ["a"], size=(6, 6))
    make_pngs(tmp_path / "j", ["b"], size=(12, 12))
    with pytest.raises(DataError, match=r"b/0\.png: the image is 12x12"):
        load_data(str(tmp_path / "j"), (1, 8, 8), 2)


# ---------------------------------------------------------------- user errors


def test_too_many_classes(tmp_path):
    mnist_like(tmp_path / "m", n_train=24, classes=12)
    with pytest.raises(DataError, match="12 classes but the spec's output has 10 units") as e:
        load_data(str(tmp_path / "m"), (1, 28, 28), 10)
    assert "classes=12" in str(e.value) and str(tmp_path / "m") in str(e.value)
    with pytest.raises(DataError, match="10 classes .* 5 units"):
        load_data(None, (1, 32, 32), 5)


def test_images_larger_than_the_input(tmp_path):
    np.savez(tmp_path / "big.npz", x=np.zeros((5, 64, 64, 3), np.uint8), y=np.zeros(5, np.int64))
    with pytest.raises(DataError, match=r"images are 3@64x64 but the spec's input is 3@32x32: "
                                        r"use --input 3@64x64") as e:
        load_data(str(tmp_path / "big.npz"), (3, 32, 32), 10)
    assert "big.npz" in str(e.value)


def test_color_data_for_a_gray_input(tmp_path):
    np.savez(tmp_path / "c.npz", x=np.zeros((5, 8, 8, 3), np.uint8), y=np.zeros(5, np.int64))
    with pytest.raises(DataError, match="3 channels but the spec's input has 1.*grayscale.*--input 3@8x8"):
        load_data(str(tmp_path / "c.npz"), (1, 8, 8), 10)


@pytest.mark.parametrize("labels, words", [
    (np.array([0.0, 1.0, 2.0, 1.0, 0.0]), "labels are floats"),
    (np.array([0, 1, -1, 1, 0]), "labels include -1"),
    (np.array([[0, 1], [1, 1], [1, 0], [0, 1], [1, 0]]), "not one-hot"),
    (np.array(["a", "b", "a", "b", "a"]), "dtype <U1"),
])
def test_bad_labels(tmp_path, labels, words):
    np.savez(tmp_path / "l.npz", x=np.zeros((5, 8, 8), np.uint8), y=labels)
    with pytest.raises(DataError, match=words):
        load_data(str(tmp_path / "l.npz"), (1, 8, 8), 10)


def test_unknown_sources(tmp_path):
    with pytest.raises(DataError, match="no such file or folder.*accepted data"):
        load_data(str(tmp_path / "nowhere"), (1, 28, 28), 10)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no training data found.*IDX.*npz.*class"):
        load_data(str(tmp_path / "empty"), (1, 28, 28), 10)
    (tmp_path / "d.csv").write_text("1,2,3\n")
    with pytest.raises(DataError, match="d.csv: unknown data file"):
        load_data(str(tmp_path / "d.csv"), (1, 28, 28), 10)
    np.save(tmp_path / "x.npy", np.zeros((3, 4)))
    with pytest.raises(DataError, match="holds no labels"):
        load_data(str(tmp_path / "x.npy"), (4,), 10)
    np.savez(tmp_path / "k.npz", images=np.zeros((3, 4)))
    with pytest.raises(DataError, match="holds images; expected x_train, y_train"):
        load_data(str(tmp_path / "k.npz"), (4,), 10)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="bad.npz: cannot read"):
        load_data(str(tmp_path / "bad.npz"), (4,), 10)


def test_shape_mismatches(tmp_path):
    np.savez(tmp_path / "v.npz", x=np.zeros((5, 30), np.float32), y=np.zeros(5, np.int64))
    with pytest.raises(DataError, match="vectors of 30 features but the spec's input is 784"):
        load_data(str(tmp_path / "v.npz"), (784,), 10)
    np.savez(tmp_path / "i.npz", x=np.zeros((5, 10, 10), np.uint8), y=np.zeros(5, np.int64))
    with pytest.raises(DataError, match=r"1@10x10 \(100 values\).*vector of 784 features"):
        load_data(str(tmp_path / "i.npz"), (784,), 10)
    np.savez(tmp_path / "n.npz", x=np.zeros((5, 8, 8), np.uint8), y=np.zeros(4, np.int64))
    with pytest.raises(DataError, match="5 images but 4 labels"):
        load_data(str(tmp_path / "n.npz"), (1, 8, 8), 10)


# ---------------------------------------------------------------- sizes from the data, checked first


def test_a_huge_label_is_refused_without_building_class_names(tmp_path):
    np.savez(tmp_path / "l.npz", x=np.zeros((4, 8, 8), np.uint8), y=np.array([0, 1, 2**62, 1]))
    with pytest.raises(DataError) as e:
        load_data(str(tmp_path / "l.npz"), (1, 8, 8), 10)
    assert str(e.value) == (f"{tmp_path / 'l.npz'}: label 4611686018427387904 is out of range: the "
                            f"spec's output has 10 units, so class indices run 0..9; the labels hold "
                            f"3 distinct values: map them to 0..2 (np.unique(y, return_inverse=True))")
    np.savez(tmp_path / "u.npz", x=np.zeros((2, 8, 8), np.uint8), y=np.array([0, 2**64 - 1], np.uint64))
    with pytest.raises(DataError, match="label 18446744073709551615 is out of range"):
        load_data(str(tmp_path / "u.npz"), (1, 8, 8), 10)


def test_sparse_labels_name_the_distinct_values_and_the_classes_to_set(tmp_path):
    y = np.array([0, 5, 17, 40] * 3)                               # 4 distinct values up to 40
    np.savez(tmp_path / "s.npz", x=np.zeros((12, 8, 8), np.uint8), y=y)
    with pytest.raises(DataError, match=r"label 40 is out of range: .* 3 units, so class indices "
                                        r"run 0..2; the labels hold 4 distinct values: map them to "
                                        r"0..3 \(np.unique\(y, return_inverse=True\)\) and set classes=4"):
        load_data(str(tmp_path / "s.npz"), (1, 8, 8), 3)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_refuses_ranks_netspec_does_not_read(tmp_path, gz):
    for ndim in (0, 5, 255):
        f = tmp_path / f"r{ndim}"
        data = struct.pack(">BBBB", 0, 0, 8, ndim) + b"\x00\x00\x00\x01" * ndim + b"\x07"
        f.write_bytes(gzip.compress(data) if gz else data)
        with pytest.raises(DataError, match=f"declares {ndim} dimensions; netspec reads IDX files of 1 to 4"):
            read_idx(f)


def test_read_idx_gzip_holding_more_or_less_than_its_header(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    f = write_idx(tmp_path / "a.gz", a, gz=True)
    assert np.array_equal(read_idx(f), a)
    header = struct.pack(">BBBBIII", 0, 0, 8, 3, 2, 3, 4)
    f.write_bytes(gzip.compress(header + a.tobytes() + b"extra"))
    with pytest.raises(DataError, match=r"a corrupt IDX file: its header promises 2 x 3 x 4 values "
                                        r"\(24 bytes\) but it holds more"):
        read_idx(f)
    f.write_bytes(gzip.compress(header + a.tobytes()[:20]))
    with pytest.raises(DataError, match="a truncated IDX file: .* but it holds 20"):
        read_idx(f)
    f.write_bytes(gzip.compress(struct.pack(">BBBBI", 0, 0, 8, 1, 10**9)))
    with pytest.raises(DataError, match=r"promises 1000000000 values .* a gzip file of \d+ bytes "
                                        r"inflates to at most"):
        read_idx(f)


def test_read_idx_dims_no_array_can_have(tmp_path):
    f = tmp_path / "z"
    f.write_bytes(struct.pack(">BBBBIII", 0, 0, 8, 3, 0, 2**32 - 1, 2**32 - 1))   # 0 values...
    with pytest.raises(DataError, match=r"dimensions 0 x 4294967295 x 4294967295 describe no possible"):
        read_idx(f)                                                          # ...but no shape


def test_npz_members_are_checked_before_they_are_read(tmp_path):
    import zipfile
    with zipfile.ZipFile(tmp_path / "h.npz", "w") as z:             # stored: exact sizes
        text = "{'descr': '|u1', 'fortran_order': False, 'shape': (100000, 8, 8), }"
        text += " " * (-(11 + len(text)) % 64) + "\n"                 # as np.save pads it
        z.writestr("x.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode()
                   + bytes(10))
        z.writestr("y.npy", b"not an array at all")
    with pytest.raises(DataError, match=r"h.npz: x: a truncated array: its header promises shape "
                                        r"\(100000, 8, 8\) of uint8 \(6,400,000 bytes\) but the file "
                                        r"holds 10 bytes"):
        load_data(str(tmp_path / "h.npz"), (1, 8, 8), 10)
    np.savez(tmp_path / "o.npz", x=np.zeros((2, 8, 8)), y=np.array([None, 1], dtype=object))
    with pytest.raises(DataError, match="o.npz: y: holds Python objects"):
        load_data(str(tmp_path / "o.npz"), (1, 8, 8), 10)


def test_non_finite_training_values_are_counted(tmp_path):
    x = np.zeros((5, 8, 8), np.float64)
    x[0, 0, :3] = np.nan
    x[2, 1, 1] = -np.inf
    xt = np.full((2, 8, 8), 1e300)                                  # finite, beyond float32
    np.savez(tmp_path / "n.npz", x_train=x, y_train=np.arange(5) % 2, x_test=xt, y_test=[0, 1])
    with pytest.raises(DataError, match=r"n.npz: the images: 3 NaN and 1 infinite values among 320"):
        load_data(str(tmp_path / "n.npz"), (1, 8, 8), 10)
    np.savez(tmp_path / "b.npz", x_train=np.zeros((5, 8, 8)), y_train=np.arange(5) % 2,
             x_test=xt, y_test=[0, 1])
    with pytest.raises(DataError, match=r"b.npz: 128 of 128 values are beyond float32's range"):
        load_data(str(tmp_path / "b.npz"), (1, 8, 8), 10)


def test_prepare_refuses_values_the_training_normalisation_sends_past_float32(digits):
    with pytest.raises(DataError, match=r"the input: 1,024 of 1,024 values are beyond float32's range"):
        prepare(np.full((1, 8, 8), 3e38, np.float32), (1, 32, 32), {**digits.norm, "std": [1e-6]})


def test_memory_needed_is_checked_before_the_data_is_fitted(monkeypatch, tmp_path):
    import netspec.resources as resources
    monkeypatch.setattr(resources, "available_bytes", lambda: 10**6)          # 1 MB
    with pytest.raises(resources.ResourceError) as e:
        load_data(None, (1, 32, 32), 10)
    assert e.value.message == ("digits: 1,797 examples fitted to the input 1@32x32 (4.1 kB each as "
                               "float32) needs 7.8 MB of memory but only 1.0 MB is available")
    assert e.value.hint == "use a smaller input (--input) or less data"
    with pytest.raises(resources.ResourceError, match="the input: 400 examples fitted"):
        prepare(np.zeros((400, 8, 8), np.uint8), (1, 32, 32), {"mean": [0], "std": [1], "scale": 16})
    write_idx(tmp_path / "i", np.zeros((2000, 28, 28), np.uint8))          # 1.6 MB of data
    with pytest.raises(resources.ResourceError, match=r"i: 2000 x 28 x 28 values of uint8 needs "
                                                      r"1.6 MB of memory but only 1.0 MB"):
        read_idx(tmp_path / "i")


def test_images_over_the_pixel_limit_are_not_decoded(tmp_path, monkeypatch):
    from netspec.training import readers
    monkeypatch.setattr(readers, "IMAGE_PIXELS_FLOOR", 100)         # so a small image is too large
    make_pngs(tmp_path / "p", ["a"], size=(8, 8))
    make_pngs(tmp_path / "p", ["b"], size=(20, 20))                 # 400 > max(100, 4 x 64) pixels
    with pytest.raises(DataError, match=r"b/0.png: the image has 400 pixels, more than the 256 "
                                        r"netspec reads for this spec's input"):
        load_data(str(tmp_path / "p"), (1, 8, 8), 2)
    monkeypatch.setattr(readers, "IMAGE_PIXELS_FLOOR", 300)         # 400: Pillow's warning zone
    with pytest.raises(DataError, match=r"has 400 pixels, more than the 300"):
        load_data(str(tmp_path / "p"), (1, 8, 8), 2)
    (tmp_path / "p" / "b" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match=r"b/0.png: cannot read this image \(OSError: Truncated File Read\)"):
        load_data(str(tmp_path / "p"), (1, 8, 8), 2)


# ---------------------------------------------------------------- batches


def test_batches_cover_every_index_once():
    sizes = [len(b) for b in batches(10, 3, None)]
    assert sizes == [3, 3, 3, 1]
    assert np.array_equal(np.concatenate(list(batches(10, 3, None))), np.arange(10))
    shuffled = np.concatenate(list(batches(100, 32, np.random.default_rng(1))))
    assert sorted(shuffled.tolist()) == list(range(100)) and not np.array_equal(shuffled, np.arange(100))
    again = np.concatenate(list(batches(100, 32, np.random.default_rng(1))))
    assert np.array_equal(shuffled, again)
    assert [len(b) for b in batches(64, 32, np.random.default_rng(0))] == [32, 32]
    assert list(batches(0, 8, None)) == []


# ---------------------------------------------------------------- augmentation


def shift_reference(img, dy, dx, fill):
    """One image (C,H,W) moved down dy and right dx with np.roll, uncovered pixels set to fill."""
    out = np.roll(img, (dy, dx), axis=(1, 2))
    h, w = img.shape[1:]
    rows, cols = np.arange(h), np.arange(w)
    inside = (((rows - dy >= 0) & (rows - dy < h))[:, None] & ((cols - dx >= 0) & (cols - dx < w))[None, :])
    return np.where(inside[None], out, np.asarray(fill, img.dtype).reshape(-1, 1, 1))


@pytest.fixture
def batch():
    return np.random.default_rng(9).standard_normal((16, 3, 10, 12)).astype(np.float32)


def test_flip(batch):
    keep = batch.copy()
    once = augment(batch, {"flip": {"p": 1.0}}, np.random.default_rng(0))
    assert np.array_equal(once, batch[..., ::-1])
    assert np.array_equal(augment(once, {"flip": {"p": 1.0}}, np.random.default_rng(1)), batch)
    half = augment(batch, {"flip": {}}, np.random.default_rng(0))
    flipped = np.random.default_rng(0).random(16) < 0.5
    assert np.array_equal(half[flipped], batch[flipped, ..., ::-1])
    assert np.array_equal(half[~flipped], batch[~flipped])
    assert np.array_equal(batch, keep)


@pytest.mark.parametrize("use_norm", [False, True])
def test_shift_matches_roll_and_mask(batch, use_norm):
    keep = batch.copy()
    norm = {"mean": [0.1, 0.2, 0.3], "std": [0.5, 0.25, 2.0]} if use_norm else None
    out = augment(batch, {"shift": {"amount": 0.3}}, np.random.default_rng(5), norm=norm)
    rng = np.random.default_rng(5)
    dy, dx = rng.integers(-3, 4, 16), rng.integers(-3, 4, 16)     # 0.3*10 rows, 0.3*12 columns
    assert len(set(dy.tolist())) > 1 and len(set(dx.tolist())) > 1
    fill = (-np.float32([0.1, 0.2, 0.3]) / np.float32([0.5, 0.25, 2.0]) if use_norm
            else batch.min(axis=(0, 2, 3)))
    for i in range(16):
        assert np.array_equal(out[i], shift_reference(batch[i], dy[i], dx[i], fill))
    assert np.array_equal(batch, keep)
    same = augment(batch, {"shift": {"amount": 0.3}}, np.random.default_rng(5), norm=norm)
    assert np.array_equal(out, same)


def test_crop_keeps_the_shape_and_is_a_shift_of_at_most_amount(batch):
    out = augment(batch, {"crop": {"amount": 2}}, np.random.default_rng(3))
    assert out.shape == batch.shape and out.dtype == batch.dtype
    rng = np.random.default_rng(3)
    dy, dx = 2 - rng.integers(0, 5, 16), 2 - rng.integers(0, 5, 16)
    fill = batch.min(axis=(0, 2, 3))
    for i in range(16):
        assert np.array_equal(out[i], shift_reference(batch[i], dy[i], dx[i], fill))


def test_brightness(batch):
    keep = batch.copy()
    out = augment(batch, {"brightness": {"amount": 0.2}}, np.random.default_rng(4))
    drawn = np.random.default_rng(4).uniform(-0.2, 0.2, 16)
    diff = (out - batch).astype(np.float64)
    assert np.allclose(diff, drawn[:, None, None, None], atol=1e-6)
    assert np.allclose(out.mean(axis=(1, 2, 3)) - batch.mean(axis=(1, 2, 3)), drawn, atol=1e-5)
    norm = {"mean": [0.0, 0.0, 0.0], "std": [0.5, 0.25, 2.0]}
    scaled = augment(batch, {"brightness": {"amount": 0.2}}, np.random.default_rng(4), norm=norm)
    per_channel = drawn[:, None] / np.array([0.5, 0.25, 2.0])[None, :]      # raw units / std
    assert np.allclose(scaled - batch, per_channel[:, :, None, None], atol=1e-5)
    assert np.array_equal(batch, keep)


def test_augment_vectors_and_everything_at_once(batch):
    v = np.random.default_rng(0).standard_normal((8, 20)).astype(np.float32)
    out = augment(v, {"brightness": {"amount": 0.1}}, np.random.default_rng(0))
    assert out.shape == v.shape and not np.array_equal(out, v)
    with pytest.raises(DataError, match="shift needs image inputs"):
        augment(v, {"shift": {"amount": 0.1}}, np.random.default_rng(0))
    spec = {"shift": {"amount": 0.1}, "crop": {"amount": 4}, "flip": {}, "brightness": {"amount": 0.1}}
    keep = batch.copy()
    a = augment(batch, spec, np.random.default_rng(8))
    b = augment(batch, spec, np.random.default_rng(8))
    assert np.array_equal(a, b) and a.shape == batch.shape and np.array_equal(batch, keep)
    assert not np.array_equal(a, batch)
    assert np.array_equal(augment(batch, {}, np.random.default_rng(0)), batch)
    with pytest.raises(DataError, match="unknown augmentation rotate"):
        augment(batch, {"rotate": {}}, np.random.default_rng(0))


def test_describe_augment():
    spec = {"flip": {}, "shift": {"amount": 0.1}, "brightness": {"amount": 0.2}, "crop": {"amount": 4}}
    assert describe_augment(spec) == ("shift up to 10% of height/width, random crop (pad 4 px), "
                                      "horizontal flip (p=0.5), brightness ±0.2")
    assert describe_augment({}) == "none"

