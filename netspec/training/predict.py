"""Reading raw inputs for `netspec predict` and writing its class probabilities."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ..paths import not_a_file
from .readers import (NUMERIC_KINDS, DataError, NpzArrays, image_pixel_limit, load_npy,
                      nonfinite_message, read_image)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")


def read_inputs(paths, input_shape) -> tuple[list[str], np.ndarray]:
    """(a name per sample, raw samples stacked): image files become one sample each
    (grayscale or RGB by the input's channels); .npy/.npz files hold many (an .npz's
    `x_test`, `x` or only array). Every file is checked before it is used: sizes before
    they are allocated, then numbers only, at least one sample, every value finite."""
    names, parts = [], []
    channels = input_shape[0] if len(input_shape) == 3 else 1
    max_pixels = image_pixel_limit(input_shape)
    for p in map(Path, paths):
        problem = not_a_file(p)
        if problem:
            raise DataError(f"{p}: {problem}")
        suffix = p.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            parts.append(read_image(p, "L" if channels == 1 else "RGB", max_pixels)[None])
            names.append(str(p))
        elif suffix in (".npy", ".npz"):
            arr = load_npy(p) if suffix == ".npy" else _npz_inputs(p)
            _check_samples(arr, p)
            single = arr.ndim == len(input_shape) and (len(input_shape) == 1 or arr.ndim == 2)
            if single:
                arr = arr[None]
            parts.append(arr)
            names.extend(f"{p}[{i}]" for i in range(len(arr)))
        else:
            raise DataError(f"{p}: give image files ({', '.join(IMAGE_SUFFIXES)}) or .npy/.npz arrays")
    shapes = {a.shape[1:] for a in parts}
    if len(shapes) > 1:
        raise DataError("the inputs have different sizes: " + ", ".join(str(s) for s in sorted(shapes)))
    dtypes = {a.dtype for a in parts}
    if len(dtypes) > 1:     # each type is scaled its own way (uint8 by 255, floats kept): no mixing
        raise DataError(f"the inputs hold values of different types ({', '.join(sorted(map(str, dtypes)))}): "
                        f"raw integers are divided by their range and floats taken as scaled, so give "
                        f"every input in one type")
    return names, np.concatenate(parts)


def _npz_inputs(path: Path) -> np.ndarray:
    with NpzArrays(path) as z:
        key = next((k for k in ("x_test", "x") if k in z.keys), None)
        if key is None:
            if len(z.keys) != 1:
                raise DataError(f"{path}: holds {', '.join(z.keys) or 'no arrays'}; name the inputs x")
            key = z.keys[0]
        return z[key]


def _check_samples(arr: np.ndarray, path: Path) -> None:
    if arr.ndim == 0:
        raise DataError(f"{path}: holds a single number (a 0-d array), not inputs: give an array of "
                        f"samples (N, ...) or one sample")
    if arr.dtype.kind not in NUMERIC_KINDS:
        raise DataError(f"{path}: holds values of dtype {arr.dtype}: give numbers (raw integer "
                        f"images or floats)")
    if arr.size == 0:
        raise DataError(f"{path}: holds no inputs (shape {arr.shape})")
    bad = nonfinite_message(str(path), arr)
    if bad:
        raise DataError(bad)


def write_predictions(names, probs: np.ndarray, classes: list[str], out_file) -> str:
    """Write (or return, to print) a CSV of the predicted class and every probability."""
    if out_file and str(out_file).lower().endswith(".npy"):
        from ..outdirs import write_atomic
        buf = io.BytesIO()
        np.save(buf, probs)
        write_atomic(out_file, buf.getvalue())
        return f"wrote {len(probs)} rows of {probs.shape[1]} probabilities to {out_file}"
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["input", "predicted", *[f"p_{c}" for c in classes]])
    for name, row in zip(names, probs):
        w.writerow([name, classes[int(np.argmax(row))] if len(row) > 1 else int(row[0] > 0.5),
                    *[f"{v:.6f}" for v in row]])
    if out_file:
        from ..outdirs import write_atomic
        write_atomic(out_file, buf.getvalue())
        return f"wrote {len(probs)} predictions to {out_file}"
    return buf.getvalue().rstrip("\n")


def write_detections(names, found, classes: list[str], out_file) -> str:
    """Write (or return, to print) a CSV of a detector's boxes: a row per detection, best first
    within each input, in input pixels (x1, y1 the top-left corner)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["input", "class", "score", "x1", "y1", "x2", "y2"])
    for name, d in zip(names, found):
        for box, score, cls in zip(d.boxes, d.scores, d.classes):
            w.writerow([name, classes[int(cls)], f"{score:.6f}", *[f"{v:.2f}" for v in box]])
    total = sum(len(d) for d in found)
    if out_file:
        from ..outdirs import write_atomic
        write_atomic(out_file, buf.getvalue())
        return f"wrote {total} detections in {len(found)} inputs to {out_file}"
    return buf.getvalue().rstrip("\n")


DRAWN_SUFFIX = ".boxes.png"   # the only files --draw writes, and so the only ones it replaces
BOX_COLOURS = ("#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#a65628", "#f781bf", "#999999")


def draw_detections(names, images: np.ndarray, found, classes: list[str], folder) -> str:
    """Each input (N, C, H, W in [0, 1], as the network saw it) with its boxes and their class and
    score, as FOLDER/<input>.boxes.png. The folder is created if missing; a file there is
    replaced only if it is one of these drawings (its name ends in .boxes.png)."""
    from PIL import Image, ImageDraw

    from ..outdirs import write_atomic
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"--draw {folder}: not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"--draw {folder}: cannot create it: {e.strerror or e}") from None
    used: set[str] = set()
    for name, image, d in zip(names, images, found):
        pixels = np.clip(np.moveaxis(image, 0, -1) * 255 + 0.5, 0, 255).astype(np.uint8)
        picture = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels[..., :3]).convert("RGB")
        pen = ImageDraw.Draw(picture)
        for box, score, cls in zip(d.boxes, d.scores, d.classes):
            colour = BOX_COLOURS[int(cls) % len(BOX_COLOURS)]
            pen.rectangle([float(v) for v in box], outline=colour, width=2)
            pen.text((float(box[0]) + 2, float(box[1]) + 1), f"{classes[int(cls)]} {score:.2f}", fill=colour)
        out = folder / _drawing_name(name, used)
        buf = io.BytesIO()
        picture.save(buf, format="PNG")
        try:
            write_atomic(out, buf.getvalue())
        except OSError as e:
            raise DataError(f"--draw: cannot write {out}: {e.strerror or e}") from None
    return f"drew {len(found)} inputs with their boxes in {folder}/ (*{DRAWN_SUFFIX})"


def _drawing_name(name: str, used: set[str]) -> str:
    """`cat/0.png` -> `0.boxes.png`, `x.npy[3]` -> `x_3.boxes.png`; a repeated name gets -2, -3..."""
    stem = Path(name.split("[")[0]).stem or "input"
    if name.endswith("]"):
        stem += "_" + name[name.rindex("[") + 1:-1]
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)
    candidate, k = stem, 1
    while candidate in used:
        k += 1
        candidate = f"{stem}-{k}"
    used.add(candidate)
    return candidate + DRAWN_SUFFIX
