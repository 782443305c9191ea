"""Reading raw inputs for `netspec predict` and writing its class probabilities."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from .data import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")


def read_inputs(paths, input_shape) -> tuple[list[str], np.ndarray]:
    """(a name per sample, raw samples stacked): image files become one sample each
    (grayscale or RGB by the input's channels); .npy/.npz files hold many (an .npz's
    `x_test`, `x` or only array)."""
    names, parts = [], []
    channels = input_shape[0] if len(input_shape) == 3 else 1
    for p in map(Path, paths):
        if not p.is_file():
            raise DataError(f"{p}: no such file")
        suffix = p.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            from PIL import Image, UnidentifiedImageError
            try:
                with Image.open(p) as im:
                    arr = np.asarray(im.convert("L" if channels == 1 else "RGB"))
            except (UnidentifiedImageError, OSError) as e:
                raise DataError(f"{p}: not a readable image ({e})") from None
            parts.append(arr[None])
            names.append(str(p))
        elif suffix in (".npy", ".npz"):
            try:
                if suffix == ".npy":
                    arr = np.load(p, allow_pickle=False)
                else:
                    with np.load(p, allow_pickle=False) as z:
                        keys = [k for k in ("x_test", "x") if k in z.files] or z.files
                        if len(keys) != 1 and keys[0] not in ("x_test", "x"):
                            raise DataError(f"{p}: holds {', '.join(z.files)}; name the inputs x")
                        arr = z[keys[0]]
            except (ValueError, OSError) as e:
                raise DataError(f"{p}: not a readable NumPy file ({e})") from None
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
    return names, np.concatenate(parts)


def write_predictions(names, probs: np.ndarray, classes: list[str], out_file) -> str:
    """Write (or return, to print) a CSV of the predicted class and every probability."""
    if out_file and str(out_file).lower().endswith(".npy"):
        from ..runtime.checkpoint import write_atomic
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
        from ..runtime.checkpoint import write_atomic
        write_atomic(out_file, buf.getvalue())
        return f"wrote {len(probs)} predictions to {out_file}"
    return buf.getvalue().rstrip("\n")
