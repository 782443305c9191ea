"""Safe weight files: safetensors or npz, never pickle; written atomically.

`save_arrays` writes to a temporary file in the destination's folder, fsyncs it
and renames it over the destination, so a crash mid-save leaves the previous
file intact. `load_arrays` refuses anything it cannot read without pickle and
says why.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np

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


def write_atomic(path, data: bytes | str) -> None:
    """Write data to path through a temporary file in the same folder, fsynced and renamed
    over it: readers see the old file or the new one, never a part. The file gets the mode
    open() would give it (the old file's, else 0o666 less the umask); the temporary file is
    locked while written, so a later write removes it only if this process died
    (netspec.outdirs, which also documents the NETSPEC_FAULT points used here in tests)."""
    from ..outdirs import create_temp_file, fault_point, remove_leftovers
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path.parent, {path.name})    # of this file, from killed earlier writes
    if isinstance(data, str):
        data = data.encode("utf-8")
    fd, tmp = create_temp_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            half = len(data) // 2
            f.write(memoryview(data)[:half])
            f.flush()
            fault_point("write_atomic:partial", path.name)
            f.write(memoryview(data)[half:])
            f.flush()
            os.fsync(f.fileno())
            fault_point("write_atomic:before_replace", path.name)
            os.replace(tmp, path)    # before the close that drops the lock
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    """Read a .safetensors or .npz file without pickle: (arrays, metadata)."""
    path = Path(path)
    kind = weights_format(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    try:
        if kind == ".safetensors":
            from safetensors import safe_open
            arrays = {}
            with safe_open(str(path), framework="numpy") as f:
                metadata = dict(f.metadata() or {})
                for key in f.keys():
                    arrays[key] = f.get_tensor(key)
            return arrays, metadata
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k != _META_KEY}
            metadata = json.loads(str(z[_META_KEY])) if _META_KEY in z.files else {}
        return arrays, metadata
    except WeightsError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, json.JSONDecodeError, Exception) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "pickle" in reason.lower():
            reason = "it holds Python objects, which would need pickle (refused)"
        raise WeightsError(f"{path}: not a readable {kind[1:]} weight file ({reason})") from None
