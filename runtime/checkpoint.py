"""Safe weight files: safetensors or npz, never pickle; written atomically.

`save_arrays` writes to a temporary file in the destination's folder, fsyncs it
and renames it over the destination (netspec/outdirs.py `write_atomic`, as every
file netspec writes), so a crash mid-save leaves the previous file intact. `load_arrays` refuses anything it cannot read without pickle and
says why.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np

from ..outdirs import write_atomic

FORMATS = (".safetensors", ".npz")
_META_KEY = "__metadata__"


class WeightsError(ValueError):
    """A weight file that cannot be read or does not fit."""


def weights_format(path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise WeightsError(f"{path}: unknown weight file type '{suffix or '(none)'}'; "
                           f"use .safetensors or .npz")
    return suffix


def save_arrays(path, arrays: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write `arrays` (C-contiguous copies are made) and string metadata to path, atomically."""
    path = Path(path)
    kind = weights_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # np.ascontiguousarray would turn a 0-d array (a step count) into shape (1,)
    arrays = {k: np.asarray(v, order="C") for k, v in arrays.items()}
    metadata = {k: str(v) for k, v in (metadata or {}).items()}
    if kind == ".safetensors":
        from safetensors.numpy import save
        data = save(arrays, metadata=metadata or None)
    else:
        buf = io.BytesIO()
        np.savez(buf, **arrays, **{_META_KEY: np.array(json.dumps(metadata))})
        data = buf.getvalue()
    write_atomic(path, data)


def load_arrays(path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a .safetensors or .npz file without pickle: (arrays, metadata).

    Every tensor is a NumPy array of numbers (floats, integers or booleans: what a weight may
    hold is Model.set_weights' business); the metadata maps strings to strings. Anything else,
    and an .npz member that inflates far beyond its compressed size, is a WeightsError naming
    the file and the tensor."""
    path = Path(path)
    kind = weights_format(path)
    if not path.is_file():      # a FIFO or a device would block or never end: refused by name
        what = ("a folder, not a file" if path.is_dir() else
                "not a regular file" if path.exists() else "no such file")
        raise WeightsError(f"{path}: {what}")
    try:
        return _read_safetensors(path) if kind == ".safetensors" else _read_npz(path)
    except WeightsError:
        raise
    except Exception as e:   # the libraries' own refusals: a damaged or foreign file
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "pickle" in reason.lower():
            reason = "it holds Python objects, which would need pickle (refused)"
        raise WeightsError(f"{path}: not a readable {kind[1:]} weight file ({reason})") from None


# safetensors dtypes NumPy holds as numbers; BF16, F8_* and complex are refused by name
_SAFETENSORS_DTYPES = {"F16", "F32", "F64", "I8", "I16", "I32", "I64", "U8", "U16", "U32", "U64",
                       "BOOL"}
# an .npz member larger than INFLATION_FLOOR may inflate at most MAX_INFLATION times its
# compressed size: float weights compress less than 2x, a zip bomb a thousandfold
MAX_INFLATION = 50
INFLATION_FLOOR = 64 * 2**20


def _read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    # the library checks the header (JSON, offsets inside the file, str -> str metadata)
    from safetensors import safe_open
    with safe_open(str(path), framework="numpy") as f:
        metadata = dict(f.metadata() or {})
        for key in f.keys():
            dtype = f.get_slice(key).get_dtype()
            if dtype not in _SAFETENSORS_DTYPES:
                raise WeightsError(f"{path}: tensor '{key}' has dtype {dtype}, which netspec cannot "
                                   "read; save the weights as float32 (or float64)")
        return {key: f.get_tensor(key) for key in f.keys()}, metadata


def _read_npz(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    loaded = np.load(path, allow_pickle=False)
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise WeightsError(f"{path}: a single NumPy array, not an .npz archive of named tensors")
    with loaded as z:
        for info in z.zip.infolist():
            _check_npz_member(path, z.zip, info)
        arrays = {k: z[k] for k in z.files if k != _META_KEY}
        metadata = _npz_metadata(path, z[_META_KEY]) if _META_KEY in z.files else {}
    return arrays, metadata


def _check_npz_member(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    """Refuse a member that is not a .npy array of numbers, or whose size does not add up,
    from its header alone: before anything is inflated or allocated."""
    name = info.filename.removesuffix(".npy")
    if not info.filename.endswith(".npy"):
        raise WeightsError(f"{path}: holds '{info.filename}', which is not a NumPy array (.npy); "
                           "an .npz weight file holds only named arrays")
    if info.file_size > INFLATION_FLOOR and info.file_size > MAX_INFLATION * max(info.compress_size, 1):
        raise WeightsError(f"{path}: tensor '{name}' inflates from {info.compress_size:,} to "
                           f"{info.file_size:,} bytes, more than {MAX_INFLATION}x (a compression "
                           "bomb?); weights do not compress that well")
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read_header(member)
    if dtype.hasobject:
        raise WeightsError(f"{path}: tensor '{name}' holds Python objects, which would need "
                           "pickle (refused)")
    if name == _META_KEY:
        if dtype.kind != "U" or shape != ():
            raise WeightsError(f"{path}: its {_META_KEY} must be one JSON string, got an array of "
                               f"dtype {dtype} and shape {shape}")
    elif dtype.kind not in "biuf":
        raise WeightsError(f"{path}: tensor '{name}' has dtype {dtype}; weights are real numbers "
                           "(float32 or float64)")
    needed = math.prod(shape) * dtype.itemsize
    if needed > info.file_size:
        raise WeightsError(f"{path}: tensor '{name}' claims shape {shape} ({needed:,} bytes) but "
                           f"holds {info.file_size:,} bytes")


def _npz_metadata(path: Path, value: np.ndarray) -> dict[str, str]:
    """The JSON object of strings that save_arrays stores as the member __metadata__."""
    try:
        metadata = json.loads(str(value[()]))
    except (ValueError, RecursionError) as e:
        raise WeightsError(f"{path}: its {_META_KEY} is not JSON ({str(e)[:200]})") from None
    if not isinstance(metadata, dict):
        raise WeightsError(f"{path}: its {_META_KEY} must be a JSON object of strings, got "
                           f"{type(metadata).__name__}")
    for key, item in metadata.items():
        if not isinstance(item, str):
            raise WeightsError(f"{path}: its {_META_KEY} entry '{key[:100]}' must be a string, "
                               f"got {type(item).__name__}")
    return metadata
