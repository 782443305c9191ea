"""Training data for `netspec train`: read a source, fit it to the spec's input, split, normalise.

Sources (`load_data(source, ...)`):

- `None` or `"digits"`: the embedded handwritten digits (1,797 images 8x8, values 0..16), so the
  first run needs no download. Upscaled with Pillow's bilinear resize to the input's HxW.
- `"shapes"` or `"shapes(count=N, seed=S)"`: generated images of filled shapes with a class per
  pixel (training/shapes.py), for segmentation networks, at the input's size.
- a folder of IDX files as MNIST / Fashion-MNIST ship them (`train-images-idx3-ubyte[.gz]`, ...).
- an `.npz` file (`x_train, y_train, x_test, y_test` as Keras' mnist.npz, or `x, y`).
- a folder with `x_train.npy, y_train.npy[, x_test.npy, y_test.npy]` or `x.npy, y.npy`.
- a folder of images per class, `DIR/<class>/*.png`, or `DIR/train/<class>/...` + `DIR/test/...`.
- NumPy arrays `(x, y)` (`Model.fit(x, y)` in Python): read as an .npz file's `x, y` are, but
  no test set is held out of them (a Python caller evaluates on data of its own).

Every image goes through the same steps, in `load_data` and in `prepare` alike, so a model sees
new images exactly as it saw its training data:

1. to (N, C, H, W): gray (N,H,W), channels last (N,H,W,C) or channels first (N,C,H,W); one
   channel is replicated to three, RGBA drops its alpha;
2. integers divided by their range (uint8: 255, the digits: 16), floats kept;
3. fitted to the input: equal size kept, smaller zero-padded centred (LeCun's 28x28 MNIST digits
   in LeNet-5's 32x32), larger refused; the digits are resized instead; flattened for a vector
   input;
4. standardised per channel with the training split's mean and std (`DataSplits.norm`).

Every problem a user can cause is a `DataError` that names the path and says how to fix it.
Sizes come from the data (a header's shape, the largest label, the number of images) and are
checked before anything of that size is allocated (`readers`, `netspec.resources.check_fits`).
"""

from __future__ import annotations

import gzip
import importlib.resources
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..paths import not_a_file
from ..resources import check_fits, format_bytes
from .readers import (NUMERIC_KINDS, DataError, NpzArrays, image_pixel_limit, load_npy, nonfinite,
                      nonfinite_message, read_idx, read_image)

TEST_FRACTION = 0.2        # held out as the test set when a source has none
STD_FLOOR = 1e-6           # a constant channel is not divided by zero
DIGITS_SCALE = 16.0        # the digits' pixel values are 0..16
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
_CHANNELS = (1, 3, 4)      # gray, RGB, RGBA: how a channel axis is recognised

ACCEPTED = (
    "accepted data: 'digits' (the embedded handwritten digits); "
    "'shapes' (generated images of shapes with a class per pixel, for segmentation); "
    "a folder of MNIST-style IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
    "optionally t10k-*, each optionally .gz); "
    "an .npz file with x_train, y_train[, x_test, y_test] or x, y; "
    "a folder with x_train.npy, y_train.npy[, x_test.npy, y_test.npy] or x.npy, y.npy; "
    "a folder of images per class (DIR/<class>/*.png|jpg|jpeg|bmp|gif, "
    "or DIR/train/<class>/... and DIR/test/<class>/...)"
)


@dataclass
class Dataset:
    """Inputs ready for the network (float32, normalised) and their class indices."""

    x: np.ndarray            # (N, C, H, W) or (N, F), float32
    y: np.ndarray            # (N,) int64, or (N, H, W): a class per pixel (segmentation masks)

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class DataSplits:
    """The three splits, the class names and the normalisation that `prepare` repeats.

    `class_names` has one name per class the data has (at most the spec's `classes`):
    the folder names for image folders, "0", "1", ... for integer labels.
    `norm` = {"scale", "mean", "std", "fit"}: raw integers were divided by `scale`, then each
    channel standardised with `mean`/`std`; `fit` is "pad" or "resize" (the digits).
    """

    train: Dataset
    val: Dataset | None
    test: Dataset | None
    class_names: list[str]
    source: str
    norm: dict


@dataclass
class _Source:
    """A source as read: raw arrays (any dtype, any image layout) and integer labels.

    `classes` is what the labels imply (the largest + 1, a one-hot width, the class folders);
    `class_names` is None for integer labels: "0", "1", ... are made only once `classes` is
    known to fit the spec (a label of 2^62 must not make 2^62 names).
    """

    x: np.ndarray
    y: np.ndarray
    test: tuple[np.ndarray, np.ndarray] | None
    classes: int
    class_names: list[str] | None
    scale: float
    fit: str                 # "pad" or "resize"
    where: str               # the path (for messages)
    kind: str                # "IDX files in data/mnist" (for the description)
    fixed_split: bool = False
    one_hot: bool = False
    origin: str = ""         # how netspec has it ("embedded", "generated from seed 0"), if it does
    hold_out_test: bool = True   # without a test set of its own, keep TEST_FRACTION as one


# what the settings and a run's metadata record as the data of a run on arrays given in Python
ARRAYS = "arrays given to model.fit"


# ---------------------------------------------------------------- public API


def load_data(source, input_shape: tuple[int, ...], classes: int,
              validation_split: float = 0.1, seed: int = 0) -> DataSplits:
    """Read `source` (a name, a path, or a pair of arrays (x, y)), check it against the spec's
    input and output, split and normalise it.

    Test set: the source's own, else the last 20% of a fixed (seed 0) permutation, so the test
    set never depends on `seed`. Validation: the last `floor(validation_split * n)` of the
    training part, permuted by `seed` (for the digits by the same fixed permutation, so their
    three splits are always the same).
    """
    input_shape = _check_input_shape(input_shape)
    if not 0 <= validation_split < 1:
        raise DataError(f"validation_split must be in [0, 1), got {validation_split}")
    if isinstance(source, tuple):
        src = _arrays(source)
    elif source == ARRAYS:
        raise DataError(f"the run was trained on {ARRAYS}, which netspec keeps no copy of: give "
                        "the data (--data)")
    elif source is None or str(source) == "digits":
        src = _digits(input_shape)
    elif (generated := generated_options(str(source))) is not None:
        src = _shapes(input_shape, classes, **generated)
    else:
        src = _read_source(Path(source).expanduser(), input_shape)
    if src.classes > classes:
        raise DataError(_too_many_classes(src, classes))
    names = src.class_names if src.class_names is not None else [str(i) for i in range(src.classes)]

    n = len(src.y)
    if n == 0:
        raise DataError(f"{src.where}: the data holds no examples")
    total = n + (len(src.test[1]) if src.test is not None else 0)
    _check_fitted_size(total, input_shape, src.x.shape[1:], src.where)
    test_x = test_y = None
    rest = np.arange(n)
    if src.test is not None:
        test_x, test_y = src.test
    elif src.hold_out_test:
        n_test = math.ceil(TEST_FRACTION * n)
        if n - n_test >= 1:
            perm = np.random.default_rng(0).permutation(n)
            rest, test_idx = perm[:n - n_test], perm[n - n_test:]
            test_x, test_y = src.x[test_idx], src.y[test_idx]
    if not src.fixed_split:
        rest = rest[np.random.default_rng(seed).permutation(len(rest))]
    n_val = int(validation_split * len(rest) + 1e-9)
    if n_val >= len(rest):
        raise DataError(f"{src.where}: {len(rest)} training examples leave none for training after "
                        f"validation_split={validation_split}: lower validation_split or add data")
    train_idx, val_idx = rest[:len(rest) - n_val], rest[len(rest) - n_val:]

    x_train = _fit(src.x[train_idx], input_shape, src.scale, src.fit, src.where)
    mean, std = _stats(x_train)
    norm = {"scale": float(src.scale), "mean": mean, "std": std, "fit": src.fit}
    _standardise(x_train, norm, src.where)

    def split(x, y):
        x = _fit(x, input_shape, src.scale, src.fit, src.where)
        _standardise(x, norm, src.where)
        return Dataset(x, y)

    train = Dataset(x_train, src.y[train_idx])
    val = split(src.x[val_idx], src.y[val_idx]) if n_val else None
    test = split(test_x, test_y) if test_x is not None and len(test_y) else None
    fitted = _fmt(input_shape) if len(input_shape) == 3 else f"{input_shape[0]} features"
    origin = f"{src.origin}, " if src.origin else ""
    description = f"{src.kind} ({origin}{total:,} {_raw_size(src.x, src.where)} -> {fitted})"
    return DataSplits(train, val, test, list(names), description, norm)


def prepare(raw: np.ndarray, input_shape, norm: dict) -> np.ndarray:
    """Fit and normalise new raw images exactly as the training data was (for `netspec predict`).

    `raw` has a batch axis: (N,H,W), (N,H,W,C), (N,C,H,W) or (N,F). uint8 is divided by 255 and
    uint16 by 65535, other integers by `norm["scale"]` (so raw digits 0..16 work), floats are
    taken as already scaled. A `norm` with fit="resize" resizes any image size to the input.
    """
    x = fit_raw(raw, input_shape, norm)
    _standardise(x, norm, "the input")
    return x


def fit_raw(raw: np.ndarray, input_shape, norm: dict) -> np.ndarray:
    """`prepare` before standardising: raw images scaled to [0, 1] and fitted to the input's
    shape (N, C, H, W), as a network sees them; what `netspec predict --draw` draws on."""
    input_shape = _check_input_shape(input_shape)
    x = np.asarray(raw)
    if x.dtype.kind == "u" and x.dtype.itemsize <= 2:
        scale = float(np.iinfo(x.dtype).max)
    elif x.dtype.kind in "iu":
        scale = float(norm["scale"])
    else:
        scale = 1.0             # floats (already scaled) and booleans
    return _fit(x, input_shape, scale, norm.get("fit", "pad"), "the input")


def batches(n: int, batch: int, rng: np.random.Generator | None) -> Iterator[np.ndarray]:
    """Index arrays covering range(n) once: shuffled when `rng` is given; the last may be smaller."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for start in range(0, n, batch):
        yield order[start:start + batch]


AUGMENTATIONS = ("shift", "crop", "flip", "brightness")   # applied in this order


def augment(x: np.ndarray, spec: dict, rng: np.random.Generator, norm: dict | None = None) -> np.ndarray:
    """Randomly transform a normalised batch, per image; returns a new array, `x` is untouched.

    `spec` as the train section stores it, e.g. {"shift": {"amount": 0.1}, "flip": {}}:
    shift: translate by up to amount*H rows and amount*W columns (integers);
    crop: pad by amount pixels each side, take a random crop of the original size (a shift of up
    to amount pixels); flip: mirror left-right with probability "p" (default 0.5);
    brightness: add uniform(-amount, amount) per image.
    With `norm` (the training data's), uncovered pixels get the value raw 0 maps to (black, as
    the zero padding) and brightness is in raw [0,1] units (amount/std after standardisation);
    without it, they get the batch's per-channel minimum and brightness is in `x`'s units.
    Random draws, in order: shift (dy, dx), crop (dy, dx), flip, brightness, each of size N.
    """
    unknown = set(spec) - set(AUGMENTATIONS)
    if unknown:
        raise DataError(f"unknown augmentation {', '.join(sorted(unknown))}: "
                        f"choose from {', '.join(AUGMENTATIONS)}")
    out = np.array(x, dtype=x.dtype, copy=True)
    n = len(out)
    if out.ndim == 2:
        spatial = [k for k in ("shift", "crop", "flip") if k in spec]
        if spatial:
            raise DataError(f"augmentation {', '.join(spatial)} needs image inputs (C@HxW) but the "
                            f"spec's input is a vector of {out.shape[1]} features: use brightness only")
    elif out.ndim != 4:
        raise DataError(f"augment expects a batch (N, C, H, W) or (N, F), got shape {out.shape}")
    if out.ndim == 4 and ("shift" in spec or "crop" in spec):
        if norm is not None:
            fill = _fill(norm, out.shape[1])
        else:
            fill = out.min(axis=(0, 2, 3)) if n else np.zeros(out.shape[1], out.dtype)
        h, w = out.shape[2:]
        if "shift" in spec:
            amount = _amount(spec["shift"], "shift")
            my, mx = int(amount * h), int(amount * w)
            dy = rng.integers(-my, my + 1, n)
            dx = rng.integers(-mx, mx + 1, n)
            out = _translate(out, dy, dx, fill)
        if "crop" in spec:
            pad = _amount(spec["crop"], "crop")
            if pad != int(pad):
                raise DataError(f"crop amount is a number of pixels, got {pad}")
            pad = int(pad)
            dy = pad - rng.integers(0, 2 * pad + 1, n)     # crop offset o in [0, 2p] = shift p - o
            dx = pad - rng.integers(0, 2 * pad + 1, n)
            out = _translate(out, dy, dx, fill)
    if "flip" in spec:
        p = float((spec["flip"] or {}).get("p", 0.5))
        mirror = rng.random(n) < p
        out[mirror] = out[mirror, ..., ::-1]
    if "brightness" in spec:
        amount = _amount(spec["brightness"], "brightness")
        delta = rng.uniform(-amount, amount, n).astype(out.dtype)[:, None]      # (N, 1)
        if norm is not None:                                   # raw units -> (N, C) standardised
            delta = delta / np.asarray(norm["std"], np.float32)
        out += delta[:, :, None, None] if out.ndim == 4 else delta
    return out


def describe_augment(spec: dict) -> str:
    """One line for the training header, e.g. 'shift up to 10%, horizontal flip (p=0.5)'."""
    parts = []
    for name in AUGMENTATIONS:
        if name not in spec:
            continue
        args = spec[name] or {}
        if name == "shift":
            parts.append(f"shift up to {args.get('amount', 0):.0%} of height/width")
        elif name == "crop":
            parts.append(f"random crop (pad {args.get('amount', 0):g} px)")
        elif name == "flip":
            parts.append(f"horizontal flip (p={float(args.get('p', 0.5)):g})")
        else:
            parts.append(f"brightness ±{args.get('amount', 0):g}")
    return ", ".join(parts) if parts else "none"


def fill_value(norm: dict, channels: int) -> np.ndarray:
    """The standardised value of raw 0 per channel: what zero padding looks like after `norm`."""
    return _fill(norm, channels)


# ---------------------------------------------------------------- fitting and normalising


def _fmt(shape) -> str:
    return str(shape[0]) if len(shape) == 1 else f"{shape[0]}@" + "x".join(map(str, shape[1:]))


def _raw_size(x: np.ndarray, where: str) -> str:
    """'images 28x28' or '784-value vectors', as the source stores them."""
    if x.ndim == 2:
        return f"{x.shape[1]}-value vectors"
    h, w = _to_nchw(x[:1], None, where).shape[2:]
    return f"images {h}x{w}"


def _check_input_shape(shape) -> tuple[int, ...]:
    shape = tuple(int(d) for d in shape)
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise DataError(f"netspec train feeds images (C@HxW) or vectors (F), "
                        f"but the spec's input is {shape}")
    return shape


def _to_nchw(x: np.ndarray, want_c: int | None, where: str) -> np.ndarray:
    """(N,H,W), (N,H,W,C) or (N,C,H,W) -> (N,C,H,W) with `want_c` channels; the dtype is kept.

    A 4-d array is channels-last (Keras, Pillow) when its last axis looks like channels, unless
    only its second axis matches the channels the spec wants.
    """
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        first, last = x.shape[1], x.shape[3]
        if last in _CHANNELS and not (first == want_c and last != want_c):
            x = np.moveaxis(x, 3, 1)
        elif first not in _CHANNELS:
            raise DataError(f"{where}: cannot tell the channel axis of images shaped "
                            f"{x.shape[1:]}: give (N,H,W), (N,H,W,C) or (N,C,H,W) with C 1, 3 or 4")
    else:
        raise DataError(f"{where}: images must be (N,H,W), (N,H,W,C) or (N,C,H,W), got shape {x.shape}")
    c = x.shape[1]
    if want_c is None or c == want_c:
        return x
    if c == 1:
        return np.repeat(x, want_c, axis=1)
    if c == 4 and want_c == 3:
        return x[:, :3]
    size = "x".join(map(str, x.shape[2:]))
    hint = (f"convert them to grayscale (Pillow: .convert('L')) or give the spec a {c}-channel input "
            f"(--input {c}@{size})" if want_c == 1 else f"use --input {c}@{size}")
    raise DataError(f"{where}: images have {c} channels but the spec's input has {want_c}: {hint}")


def _scaled(x: np.ndarray, scale: float) -> np.ndarray:
    """A new float32 C-contiguous copy divided by `scale`."""
    out = np.array(x, dtype=np.float32, order="C", copy=True)
    if scale != 1.0:
        out /= np.float32(scale)
    return out


def _resize(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of each (N, C) plane with Pillow (mode "F", float32)."""
    from PIL import Image
    n, c = x.shape[:2]
    out = np.empty((n, c, h, w), np.float32)
    for i in range(n):
        for j in range(c):
            plane = Image.fromarray(np.ascontiguousarray(x[i, j], np.float32))
            out[i, j] = np.asarray(plane.resize((w, h), Image.Resampling.BILINEAR))
    return out


def _check_fitted_size(n: int, input_shape, raw_shape, where: str) -> None:
    """Refuse, before allocating, `n` examples fitted to the input as float32 that would not fit
    in memory, with the float32 copy of the raw ones made on the way."""
    each = math.prod(input_shape) * 4
    need = n * (each + math.prod(raw_shape) * 4)
    check_fits(need, f"{where}: {n:,} examples fitted to the input {_fmt(input_shape)} "
                     f"({format_bytes(each)} each as float32)",
               "use a smaller input (--input) or less data" if len(input_shape) == 3 else
               "use a smaller input or less data")


def _fit(x: np.ndarray, input_shape: tuple[int, ...], scale: float, fit: str, where: str) -> np.ndarray:
    """Raw data -> a new float32 array of the input's shape, scaled to [0,1] for integers."""
    with np.errstate(over="ignore"):                       # float64 -> float32: checked after
        out = _fit_raw(x, input_shape, scale, fit, where)
    _refuse_overflow(out, where)
    return out


def _fit_raw(x: np.ndarray, input_shape: tuple[int, ...], scale: float, fit: str, where: str) -> np.ndarray:
    if x.ndim < 2:
        raise DataError(f"{where}: expected a batch of images or vectors, got shape {x.shape}")
    if x.dtype.kind not in "biuf":
        raise DataError(f"{where}: the data has dtype {x.dtype}: give numbers (integers or floats)")
    n = len(x)
    _check_fitted_size(n, input_shape, x.shape[1:], where)
    if len(input_shape) == 1:
        f = input_shape[0]
        if x.ndim == 2:
            if x.shape[1] != f:
                raise DataError(f"{where}: the data are vectors of {x.shape[1]} features but the spec's "
                                f"input is {f}: use --input {x.shape[1]}")
            return _scaled(x, scale)
        img = _to_nchw(x, None, where)
        c, h, w = img.shape[1:]
        if c * h * w == f:
            return _scaled(img, scale).reshape(n, f)
        side = math.isqrt(f)
        if fit == "resize" and c == 1 and side * side == f:
            return _resize(_scaled(img, scale), side, side).reshape(n, f)
        raise DataError(f"{where}: images are {_fmt((c, h, w))} ({c * h * w} values) but the spec's "
                        f"input is a vector of {f} features: use --input {c * h * w}")
    c, h, w = input_shape
    if x.ndim == 2:
        if x.shape[1] != c * h * w:
            raise DataError(f"{where}: the data are vectors of {x.shape[1]} values but the spec's input "
                            f"is {_fmt(input_shape)} ({c * h * w} values)")
        x = x.reshape(n, c, h, w)
    img = _to_nchw(x, c, where)
    ih, iw = img.shape[2:]
    if (ih, iw) == (h, w):
        return _scaled(img, scale)
    if fit == "resize":
        return _resize(_scaled(img, scale), h, w)
    if ih > h or iw > w:
        raise DataError(f"{where}: images are {_fmt((c, ih, iw))} but the spec's input is "
                        f"{_fmt(input_shape)}: use --input {c}@{ih}x{iw} (or resize the images)")
    out = np.zeros((n, c, h, w), np.float32)
    top, left = (h - ih) // 2, (w - iw) // 2
    out[:, :, top:top + ih, left:left + iw] = img
    if scale != 1.0:
        out /= np.float32(scale)
    return out


def _stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (one scalar for vectors), in float64 over chunks of rows."""
    chunks = range(0, len(x), 4096)
    if x.ndim == 2:
        planes = [x]
    else:
        planes = [x[:, c] for c in range(x.shape[1])]
    means, stds = [], []
    for p in planes:
        count = p.size
        mean = sum(float(p[i:i + 4096].sum(dtype=np.float64)) for i in chunks) / count
        var = sum(float(np.square(p[i:i + 4096] - mean, dtype=np.float64).sum()) for i in chunks) / count
        means.append(mean)
        stds.append(max(math.sqrt(var), STD_FLOOR))
    return means, stds


def _standardise(x: np.ndarray, norm: dict, where: str) -> None:
    """In place: (x - mean) / std per channel, in float32 (the same ops everywhere). Refuses
    values that end up beyond float32's range (finite float64 data of 1e300, say)."""
    mean = np.asarray(norm["mean"], np.float32)
    std = np.asarray(norm["std"], np.float32)
    if x.ndim == 4:
        mean, std = mean.reshape(1, -1, 1, 1), std.reshape(1, -1, 1, 1)
    with np.errstate(over="ignore", invalid="ignore"):     # overflow is counted just below
        x -= mean
        x /= std
    _refuse_overflow(x, where)


def _refuse_overflow(x: np.ndarray, where: str) -> None:
    """Finite data can still leave float32's range (float64 values of 1e300, or new data far from
    the training data's mean): refuse it rather than feed the network infinities."""
    nan, inf = nonfinite(x)
    if nan or inf:
        raise DataError(f"{where}: {nan + inf:,} of {x.size:,} values are beyond float32's range "
                        f"once scaled and standardised: give values of moderate size (e.g. scaled "
                        f"to [0, 1])")


def _fill(norm: dict, channels: int) -> np.ndarray:
    mean = np.asarray(norm["mean"], np.float32)
    std = np.asarray(norm["std"], np.float32)
    fill = (np.float32(0) - mean) / std
    return np.broadcast_to(fill, (channels,)) if fill.size == 1 else fill


def _amount(args, name: str) -> float:
    if not isinstance(args, dict) or "amount" not in args:
        raise DataError(f"augmentation {name} needs an amount, e.g. {name}(amount=...)")
    amount = args["amount"]
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
        raise DataError(f"augmentation {name}: amount must be a number >= 0, got {amount!r}")
    return float(amount)


def _translate(x: np.ndarray, dy: np.ndarray, dx: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Shift image i down by dy[i] rows and right by dx[i] columns; uncovered pixels get `fill`."""
    n, c, h, w = x.shape
    rows = np.arange(h)[None, :] - dy[:, None]            # (N, H): the source row of each row
    cols = np.arange(w)[None, :] - dx[:, None]            # (N, W)
    inside = (((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :])
    moved = x[np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None],
              np.clip(rows, 0, h - 1)[:, None, :, None], np.clip(cols, 0, w - 1)[:, None, None, :]]
    fill = np.asarray(fill, x.dtype).reshape(1, c, 1, 1)
    return np.where(inside[:, None], moved, fill).astype(x.dtype, copy=False)


# ---------------------------------------------------------------- labels


def _labels(y, where: str) -> tuple[np.ndarray, int, bool]:
    """Class indices (int64), the number of classes they imply, and whether they were one-hot:
    integers 0..K-1 (K = the largest + 1, nothing allocated by it) or one-hot rows (N, K)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 2:
        if y.dtype.kind not in "biuf" or not np.all((y == 0) | (y == 1)) or not np.all(y.sum(axis=1) == 1):
            raise DataError(f"{where}: labels shaped {y.shape} are not one-hot rows: give class indices "
                            f"0..K-1 (N,) or one-hot rows (N, K)")
        return y.argmax(axis=1).astype(np.int64), y.shape[1], True
    if y.ndim != 1:
        raise DataError(f"{where}: labels must be (N,) class indices or (N, K) one-hot rows, got {y.shape}")
    if y.dtype.kind == "f":
        raise DataError(f"{where}: labels are floats ({y.dtype}): give integer class indices 0..K-1 "
                        f"(if they are whole numbers, y.astype(int))")
    if y.dtype.kind not in "biu":
        raise DataError(f"{where}: labels have dtype {y.dtype}: give integer class indices 0..K-1")
    if not len(y):
        return y.astype(np.int64), 0, False
    lo, hi = int(y.min()), int(y.max())     # before the cast: uint64 above 2^63 would wrap
    if lo < 0:
        raise DataError(f"{where}: labels include {lo}: class indices run 0..K-1")
    if hi > np.iinfo(np.int64).max - 1:
        raise DataError(f"{where}: label {hi} is out of range: class indices run 0..K-1")
    return y.astype(np.int64), hi + 1, False


def _too_many_classes(src: _Source, classes: int) -> str:
    """Why the data's labels do not fit the spec's `classes` output units, and the fix."""
    k = src.classes
    dense = src.class_names is not None or src.one_hot
    if not dense:                      # integer labels: are 0..k-1 all present?
        labels = [src.y] + ([src.test[1]] if src.test is not None else [])
        distinct = len(np.unique(np.concatenate(labels)))
        dense = distinct == k
    if dense:
        return (f"{src.where}: the data has {k} classes but the spec's output has {classes} units: "
                f"set classes={k} (e.g. --set classes={k}) or drop classes from the data")
    fix = (f"map them to 0..{distinct - 1} (np.unique(y, return_inverse=True))"
           + (f" and set classes={distinct}" if distinct > classes else ""))
    return (f"{src.where}: label {k - 1} is out of range: the spec's output has {classes} units, "
            f"so class indices run 0..{classes - 1}; the labels hold {distinct:,} distinct values: "
            f"{fix}")


def _int_scale(x: np.ndarray, where: str) -> float:
    """What integer images are divided by to land in [0, 1]: their dtype's range."""
    if x.dtype.kind == "f":
        return 1.0
    if x.dtype.kind == "b":
        return 1.0
    if x.dtype.kind == "u" and x.dtype.itemsize <= 2:
        return float(np.iinfo(x.dtype).max)
    lo, hi = (int(x.min()), int(x.max())) if x.size else (0, 0)
    if lo < 0:
        raise DataError(f"{where}: integer images hold negative values ({lo}): give 0..255 "
                        f"(uint8) or floats")
    for top in (255, 65535):
        if hi <= top:
            return float(top)
    raise DataError(f"{where}: integer images hold values up to {hi}: give 0..255, 0..65535 or floats")


def _examples(x, where: str, what: str) -> np.ndarray:
    """`x` checked as a batch of numeric images or vectors, all values finite."""
    x = np.asarray(x)
    if x.ndim < 2:
        raise DataError(f"{where}: {what} must be a batch of images (N, H, W[, C]) or vectors "
                        f"(N, F), got shape {x.shape}")
    if x.dtype.kind not in NUMERIC_KINDS:
        raise DataError(f"{where}: {what} have dtype {x.dtype}: give numbers (integers or floats)")
    if 0 in x.shape[1:]:
        raise DataError(f"{where}: {what} are empty (shape {x.shape}): each needs at least one value")
    bad = nonfinite_message(f"{where}: {what}", x)
    if bad:
        raise DataError(bad)
    return x


def _source(where: str, kind: str, x, y, test, fit: str = "pad", names=None) -> _Source:
    """Check arrays read from a file and label them."""
    x = _examples(x, where, "the images")
    if np.ndim(y) == 0:
        raise DataError(f"{where}: labels must be (N,) class indices or (N, K) one-hot rows, "
                        f"got shape {np.shape(y)}")
    if len(x) != len(y):
        raise DataError(f"{where}: {len(x):,} images but {len(y):,} labels")
    y, k, one_hot = _labels(y, where)
    if test is not None:
        tx, ty = test
        tx = _examples(tx, where, "the test images")
        if np.ndim(ty) == 0 or len(tx) != len(ty):
            raise DataError(f"{where}: {len(tx):,} test images but labels shaped {np.shape(ty)}")
        ty, tk, test_one_hot = _labels(ty, where)
        k, one_hot = max(k, tk), one_hot or test_one_hot
        if tx.shape[1:] != x.shape[1:]:
            raise DataError(f"{where}: training images are shaped {x.shape[1:]} but test images "
                            f"{tx.shape[1:]}")
        test = (tx, ty)
    scale = _int_scale(x, where)
    if test is not None and test[0].dtype.kind != "f" and x.dtype.kind != "f":
        scale = max(scale, _int_scale(test[0], where))
    if names is not None:
        k = len(names)
    return _Source(x, y, test, k, names, scale, fit, where, kind, one_hot=one_hot)


# ---------------------------------------------------------------- sources


_DIGITS_CACHE: dict = {}


def digits_raw() -> tuple[np.ndarray, np.ndarray]:
    """The embedded digits as stored: images (1797, 8, 8) int64 0..16 and labels (1797,) 0..9."""
    if "raw" not in _DIGITS_CACHE:
        data = importlib.resources.files("netspec").joinpath("datasets/digits.csv.gz").read_bytes()
        table = np.loadtxt(io.BytesIO(gzip.decompress(data)), delimiter=",", dtype=np.int64)
        _DIGITS_CACHE["raw"] = (table[:, :64].reshape(-1, 8, 8), table[:, 64])
    x, y = _DIGITS_CACHE["raw"]
    return x.copy(), y.copy()


def _digits(input_shape) -> _Source:
    x, y = digits_raw()
    if len(input_shape) == 1:
        f = input_shape[0]
        if f != 64 and math.isqrt(f) ** 2 != f:
            raise DataError(f"digits: the spec's input is a vector of {f} features; the digits are "
                            f"8x8 images, flattened (64) or resized to a square (e.g. 784 = 28x28)")
    return _Source(x, y, None, 10, [str(i) for i in range(10)], DIGITS_SCALE, "resize", "digits",
                   "digits", fixed_split=True, origin="embedded")


def generated_options(source: str) -> dict | None:
    """The options of a generated data set named by `source` (`shapes`, `shapes(count=200)`,
    as the train section's `data` stores it and `--data` takes it), defaults filled in; None
    when `source` names none (a path)."""
    import re
    from ..lang.train_section import DATASET_LIMITS, DATASETS
    match = re.fullmatch(r"\s*(\w+)\s*(?:\((.*)\))?\s*", source, re.DOTALL)
    if match is None or match.group(1) not in DATASETS:
        return None
    name, args = match.groups()
    options = dict(DATASETS[name])
    usage = f"{name}({', '.join(f'{k}={v}' for k, v in options.items())})"
    for arg in filter(None, (a.strip() for a in (args or "").split(","))):
        key, eq, value = (part.strip() for part in arg.partition("="))
        if key not in options or not eq:
            raise DataError(f"data {source!r}: {name} takes {', '.join(options)} (e.g. {usage}), "
                            f"got {arg!r}")
        lo, hi = DATASET_LIMITS[key]
        if not re.fullmatch(r"[0-9]+", value) or not lo <= int(value) <= hi:
            raise DataError(f"data {source!r}: {name} {key} must be an integer from {lo:,} to "
                            f"{hi:,}, got {value!r}")
        options[key] = int(value)
    return options


def _shapes(input_shape, classes: int, count: int, seed: int) -> _Source:
    """The generated shapes at the input's size: foreground masks for 2 classes, a class per
    shape kind for 4 or more."""
    from . import shapes
    if len(input_shape) != 3:
        raise DataError(f"shapes: the data set holds images and a class per pixel, but the spec's "
                        f"input is a vector of {input_shape[0]} features: give it an image input "
                        f"(C@HxW)")
    if classes == 2:
        names = shapes.FOREGROUND_NAMES
    elif classes >= len(shapes.KIND_NAMES):
        names = shapes.KIND_NAMES
    else:
        raise DataError(f"shapes: its masks have 2 classes ({', '.join(shapes.FOREGROUND_NAMES)}) "
                        f"or {len(shapes.KIND_NAMES)} ({', '.join(shapes.KIND_NAMES)}), but the "
                        f"spec's output has {classes}: set classes=2 or classes=4")
    h, w = input_shape[1:]
    # before drawing: the raw images (float32) and their masks (int64), 3 floats a pixel
    _check_fitted_size(count, input_shape, (h, w, 3), "shapes")
    x, y = shapes.generate(count, h, w, kinds=len(names) > 2, seed=seed)
    kind = "shapes" if len(names) == 2 else "shapes by kind"
    return _Source(x, y, None, len(names), names, 1.0, "pad", "shapes", kind, fixed_split=True,
                   origin=f"generated from seed {seed}")


def _arrays(pair) -> _Source:
    """NumPy arrays (x, y) given in Python, checked as an .npz file's x and y are."""
    if len(pair) != 2:
        raise DataError(f"data arrays are a pair (x, y), got {len(pair)} items")
    x, y = pair
    for name, a in (("x", x), ("y", y)):
        if not isinstance(a, np.ndarray):
            raise DataError(f"{name} must be a NumPy array, got {type(a).__name__}")
    src = _source("arrays", "NumPy arrays", x, y, None)
    src.hold_out_test = False
    return src


def _read_source(path: Path, input_shape) -> _Source:
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; {ACCEPTED}")
    problem = not_a_file(path)
    if problem and not path.is_dir():      # a FIFO or a device: reading it could block forever
        raise DataError(f"{path}: {problem}; {ACCEPTED}")
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return _read_npz(path)
        if path.suffix.lower() == ".npy":
            raise DataError(f"{path}: a single .npy file holds no labels: give a folder with x.npy and "
                            f"y.npy (or x_train.npy, y_train.npy) or an .npz file")
        if "idx" in path.name:
            raise DataError(f"{path}: give the folder that holds the IDX files, not one file")
        raise DataError(f"{path}: unknown data file; {ACCEPTED}")
    if _idx_file(path, "train", "images", "idx3") is not None:
        return _read_idx_folder(path)
    if (path / "x_train.npy").is_file() or (path / "x.npy").is_file():
        return _read_npy_folder(path)
    if _class_dirs(path) or _class_dirs(path / "train"):
        return _read_image_folder(path, input_shape)
    raise DataError(f"{path}: no training data found in this folder; {ACCEPTED}")


def _idx_file(folder: Path, prefix: str, kind: str, rank: str) -> Path | None:
    for name in (f"{prefix}-{kind}-{rank}-ubyte", f"{prefix}-{kind}.{rank}-ubyte"):
        for suffix in ("", ".gz"):
            if (folder / (name + suffix)).is_file():
                return folder / (name + suffix)
    return None


def _read_idx_folder(folder: Path) -> _Source:
    def pair(prefix):
        images = _idx_file(folder, prefix, "images", "idx3")
        labels = _idx_file(folder, prefix, "labels", "idx1")
        if images is None and labels is None:
            return None
        missing = f"{prefix}-images-idx3-ubyte" if images is None else f"{prefix}-labels-idx1-ubyte"
        if images is None or labels is None:
            raise DataError(f"{folder}: {missing}[.gz] is missing: IDX images and labels come in pairs")
        x, y = read_idx(images), read_idx(labels)
        if x.ndim not in (3, 4):
            raise DataError(f"{images}: expected images (N, H, W), got shape {x.shape}")
        if len(x) != len(y):
            raise DataError(f"{labels}: {len(y):,} labels for {len(x):,} images in {images.name}")
        return x, y

    x, y = pair("train")
    return _source(str(folder), f"IDX files in {folder}", x, y, pair("t10k"))


def _read_npz(path: Path) -> _Source:
    with NpzArrays(path) as f:
        keys = set(f.keys)
        if {"x_train", "y_train"} <= keys:
            test = (f["x_test"], f["y_test"]) if {"x_test", "y_test"} <= keys else None
            x, y = f["x_train"], f["y_train"]
        elif {"x", "y"} <= keys:
            x, y, test = f["x"], f["y"], None
        else:
            raise DataError(f"{path}: the .npz holds {', '.join(sorted(keys)) or 'nothing'}; expected "
                            f"x_train, y_train[, x_test, y_test] (as Keras' mnist.npz) or x, y")
    return _source(str(path), f"arrays in {path}", x, y, test)


def _read_npy_folder(folder: Path) -> _Source:
    stem = "_train" if (folder / "x_train.npy").is_file() else ""
    if not (folder / f"y{stem}.npy").is_file():
        raise DataError(f"{folder}: x{stem}.npy has no y{stem}.npy beside it with the labels")
    x, y = load_npy(folder / f"x{stem}.npy"), load_npy(folder / f"y{stem}.npy")
    test = None
    if stem and (folder / "x_test.npy").is_file():
        if not (folder / "y_test.npy").is_file():
            raise DataError(f"{folder}: x_test.npy has no y_test.npy beside it with the labels")
        test = (load_npy(folder / "x_test.npy"), load_npy(folder / "y_test.npy"))
    return _source(str(folder), f"arrays in {folder}", x, y, test)


def _class_dirs(folder: Path) -> list[Path]:
    """Sub-folders of `folder` that hold at least one image, by name (hidden ones skipped)."""
    if not folder.is_dir():
        return []
    return sorted((d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")
                   and any(_images_in(d))), key=lambda d: d.name)


def _images_in(folder: Path):
    return (p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _read_image_folder(root: Path, input_shape) -> _Source:
    if len(input_shape) == 3:
        mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(input_shape[0])
        if mode is None:
            raise DataError(f"{root}: image files have 1, 3 or 4 channels but the spec's input has "
                            f"{input_shape[0]}")
    else:
        mode = "L"
    split = bool(_class_dirs(root / "train"))
    train_root = root / "train" if split else root
    names = [d.name for d in _class_dirs(train_root)]
    x, y = _read_images(train_root, names, mode, input_shape)
    test = None
    if split and (root / "test").is_dir():
        extra = sorted({d.name for d in _class_dirs(root / "test")} - set(names))
        if extra:
            raise DataError(f"{root / 'test'}: classes {', '.join(extra)} have no training images "
                            f"in {train_root}")
        test = _read_images(root / "test", names, mode, input_shape)
    return _source(str(root), f"images in {root}", x, y, test, names=names)


def _read_images(folder: Path, names: list[str], mode: str, input_shape) -> tuple[np.ndarray, np.ndarray]:
    """Every image under folder/<name>/ as uint8 arrays; differently sized ones padded to the input."""
    max_pixels = image_pixel_limit(input_shape)
    images, labels, files = [], [], []
    for k, name in enumerate(names):
        if not (folder / name).is_dir():
            continue
        for p in _images_in(folder / name):
            images.append(read_image(p, mode, max_pixels))
            labels.append(k)
            files.append(p)
    if not images:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    shapes = {a.shape for a in images}
    if len(shapes) > 1 and len(input_shape) == 3:       # each is padded to the input: that much
        channels = images[0].shape[2] if images[0].ndim == 3 else 1
        check_fits(len(images) * math.prod(input_shape[1:]) * channels, f"{folder}: {len(images):,} images padded to {_fmt(input_shape)}",
                   "use a smaller --input or fewer images")
    if len(shapes) > 1:
        if len(input_shape) == 1:
            raise DataError(f"{folder}: images have different sizes ({files[0]} is "
                            f"{images[0].shape[1]}x{images[0].shape[0]}); a vector input needs one size")
        h, w = input_shape[1:]
        for i, (a, p) in enumerate(zip(images, files)):
            ih, iw = a.shape[:2]
            if ih > h or iw > w:
                raise DataError(f"{p}: the image is {iw}x{ih} (WxH) but the spec's input is "
                                f"{_fmt(input_shape)}: resize the images or use --input")
            padded = np.zeros((h, w) + a.shape[2:], np.uint8)
            top, left = (h - ih) // 2, (w - iw) // 2
            padded[top:top + ih, left:left + iw] = a
            images[i] = padded
    return np.stack(images), np.asarray(labels, np.int64)
