"""Reading data files without trusting them: what a file declares is checked before it is allocated.

Each reader learns the size of what it is about to build from the file's own header (an IDX
header, a .npy header, an image's width and height) and checks it before allocating anything:
against what the file can hold at all, against the memory available (`netspec.resources`), and
for images against a pixel limit relative to the spec's input. So a 3 MB gzip that inflates to
3 GB, a header that promises 2^40 values, or a 20000x20000 PNG is refused at once, naming the
file and the sizes, with a bounded amount of memory.

- `read_idx`: IDX files (MNIST), plain or gzip, decompressed as a stream into an array of the
  size the header promises, never further.
- `load_npy`, `NpzArrays`: .npy files and .npz members, header first.
- `read_image`: one image file through Pillow, with Pillow's decompression-bomb limit set from
  the spec's input and its warning turned into a refusal.
- `nonfinite`: how many NaN and infinite values an array holds, without a full-size temporary.
"""

from __future__ import annotations

import gzip
import math
import re
import struct
import tokenize
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..errors import SpecError
from ..resources import check_fits

# Deflate (gzip, zip) inflates at most 1032-fold: a 258-byte match costs at least 2 bits.
DEFLATE_MAX_RATIO = 1032
IDX_MAX_DIMS = 4               # labels (N,), images (N, H, W), colour images (N, H, W, C)
IMAGE_PIXELS_FLOOR = 4096 * 4096    # any image up to 16.8 megapixels is read...
IMAGE_PIXELS_FACTOR = 4             # ...and up to 4x the input's pixels above that
_CHUNK = 1 << 20               # bytes decompressed per step: the only temporary of read_idx
NUMERIC_KINDS = "biuf"         # booleans, integers, floats: what netspec reads as data


class DataError(ValueError):
    """Training data that cannot be used: what is wrong, where, and how to fix it."""


def _shape_text(shape) -> str:
    return " x ".join(map(str, shape)) if shape else "a single value"


# ---------------------------------------------------------------- IDX


_IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path) -> np.ndarray:
    """Parse an IDX file (gzip or not): magic 0x0000, a dtype code, ndim, big-endian dims, data.

    The header is read first; the data it promises must fit what the file can hold (its size,
    or 1032x its size for a gzip) and the memory available before one byte of it is inflated.
    """
    path = Path(path)
    gz = False
    try:
        size = path.stat().st_size
        with open(path, "rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            if gz:
                with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                    return _read_idx_stream(stream, path, size, gz)
            return _read_idx_stream(raw, path, size, gz)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: a truncated or corrupt gzip file ({e}): download it again") from None
    except OSError as e:
        if gz:
            raise DataError(f"{path}: a truncated or corrupt gzip file ({e}): download it again") from None
        raise DataError(f"{path}: cannot read this file ({e.strerror or e})") from None


def _read_exact(stream, n: int) -> bytes:
    out = b""
    while len(out) < n:
        block = stream.read(n - len(out))
        if not block:
            break
        out += block
    return out


def _read_idx_stream(stream, path: Path, size: int, gz: bool) -> np.ndarray:
    head = _read_exact(stream, 4)
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {head.hex() or 'none'}): "
                        f"download it again")
    ndim = head[3]
    if not 1 <= ndim <= IDX_MAX_DIMS:
        raise DataError(f"{path}: the IDX header declares {ndim} dimensions; netspec reads IDX files "
                        f"of 1 to {IDX_MAX_DIMS} (labels: 1, images: 3): not an MNIST-style file")
    header = 4 + 4 * ndim
    raw_dims = _read_exact(stream, 4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise DataError(f"{path}: a truncated IDX file (shorter than its {header}-byte header): "
                        f"download it again")
    dims = struct.unpack(f">{ndim}I", raw_dims)
    dtype = _IDX_DTYPES[head[2]]
    need = math.prod(dims) * dtype.itemsize
    promise = f"its header promises {_shape_text(dims)} values ({need:,} bytes)"
    if math.prod(max(d, 1) for d in dims) * dtype.itemsize >= 2**63:   # even when a dim is 0
        raise DataError(f"{path}: a corrupt IDX file: its header's dimensions {_shape_text(dims)} "
                        f"describe no possible array: download it again")
    if not gz and size - header != need:
        have = size - header
        state = "truncated" if have < need else "corrupt"
        raise DataError(f"{path}: a {state} IDX file: {promise} but it holds {have:,} bytes: "
                        f"download it again")
    if gz and header + need > DEFLATE_MAX_RATIO * size:
        raise DataError(f"{path}: a corrupt IDX file: {promise} but a gzip file of {size:,} bytes "
                        f"inflates to at most {DEFLATE_MAX_RATIO * size:,}: download it again")
    check_fits(need, f"{path}: {_shape_text(dims)} values of {dtype.name}",
               "use a smaller data set (or a machine with more memory)")
    buf = np.empty(need, np.uint8)
    view = memoryview(buf)
    got = 0
    while got < need:                      # chunk by chunk: no second copy of the data
        n = stream.readinto(view[got:got + _CHUNK])
        if not n:
            break
        got += n
    if got < need:
        raise DataError(f"{path}: a truncated IDX file: {promise} but it holds {got:,}: "
                        f"download it again")
    if gz and stream.read(1):             # (also checks the gzip's CRC and length at its end)
        raise DataError(f"{path}: a corrupt IDX file: {promise} but it holds more: download it again")
    return buf.view(dtype).reshape(dims).astype(dtype.newbyteorder("="), copy=False)


# ---------------------------------------------------------------- .npy, .npz


def _npy_header(fp, where: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from the header of the .npy stream `fp`, positioned after it."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(fp)
        else:
            shape, _, dtype = fmt.read_array_header_2_0(fp)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError, struct.error,
            tokenize.TokenError) as e:            # numpy tokenizes old-style headers
        raise DataError(f"{where}: not a NumPy array file ({e}): save it with np.save / np.savez "
                        f"(numeric arrays, no pickled objects)") from None
    if dtype.hasobject:
        raise DataError(f"{where}: holds Python objects (dtype {dtype}), which netspec does not "
                        f"unpickle: save numeric arrays")
    return tuple(int(d) for d in shape), dtype


def _check_declared(shape, dtype, where: str, most: int | None, stored: bool) -> int:
    """Bytes the header declares, after checking them against what the container can hold
    (`most`: exactly, when `stored` uncompressed, else a deflate bound) and available memory."""
    need = math.prod(shape) * dtype.itemsize
    promise = f"its header promises shape {tuple(shape)} of {dtype} ({need:,} bytes)"
    if most is not None and need > most:
        state = "truncated" if stored else "corrupt"
        held = f"holds {most:,} bytes" if stored else f"can inflate to at most {most:,} bytes"
        raise DataError(f"{where}: a {state} array: {promise} but the file {held}: save it again")
    check_fits(need, f"{where}: an array of shape {tuple(shape)} ({dtype})",
               "use a smaller data set (or a machine with more memory)")
    return need


def load_npy(path) -> np.ndarray:
    """A .npy file, its header checked against the file's size and the memory available."""
    path = Path(path)
    try:
        with open(path, "rb") as fp:
            shape, dtype = _npy_header(fp, str(path))
            _check_declared(shape, dtype, str(path), path.stat().st_size - fp.tell(), stored=True)
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: cannot read this .npy ({e}): save it with np.save "
                        f"(numeric arrays, no pickled objects)") from None


class NpzArrays:
    """The arrays of an .npz file, each member's header checked before it is read.

        with NpzArrays(path) as f:
            f.keys        # ['x', 'y']
            x = f["x"]
    """

    def __init__(self, path):
        self.path = Path(path)
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (OSError, zipfile.BadZipFile, ValueError, EOFError) as e:
            raise DataError(f"{self.path}: cannot read this .npz ({e}): save it with np.savez "
                            f"(numeric arrays, no pickled objects)") from None
        self._members = {}
        for info in self._zip.infolist():
            key = info.filename.removesuffix(".npy")
            self._members.setdefault(key, info)
        self.keys = sorted(self._members)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._zip.close()

    def __getitem__(self, key: str) -> np.ndarray:
        info = self._members[key]
        where = f"{self.path}: {key}"
        try:
            with self._zip.open(info) as member:
                shape, dtype = _npy_header(member, where)
                header = member.tell()
                stored = info.compress_type == zipfile.ZIP_STORED
                if stored:
                    most = info.file_size - header
                elif info.compress_type == zipfile.ZIP_DEFLATED:
                    most = DEFLATE_MAX_RATIO * info.compress_size
                else:                           # bzip2, lzma: no useful bound
                    most = None
                _check_declared(shape, dtype, where, most, stored)
                member.seek(0)
                return np.lib.format.read_array(member, allow_pickle=False)
        except DataError:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError,
                RuntimeError) as e:             # RuntimeError: an encrypted member
            raise DataError(f"{where}: cannot read this array ({e}): save it with np.savez "
                            f"(numeric arrays, no pickled objects)") from None


# ---------------------------------------------------------------- images


def image_pixel_limit(input_shape) -> int:
    """The most pixels an image file may have for a spec with this input (C, H, W) or (F,)."""
    pixels = math.prod(input_shape[1:]) if len(input_shape) == 3 else int(input_shape[0])
    return max(IMAGE_PIXELS_FLOOR, IMAGE_PIXELS_FACTOR * pixels)


def read_image(path: Path, mode: str, max_pixels: int) -> np.ndarray:
    """One image file converted to `mode` ("L", "RGB", "RGBA") as uint8 (H, W[, C]).

    Pillow checks an image's width x height when it opens the file, before decoding: above
    MAX_IMAGE_PIXELS it warns, above twice that it refuses (a decompression bomb). Here the
    limit is `max_pixels` and the warning is a refusal too.
    """
    from PIL import Image
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                check_fits(w * h * (len(im.getbands()) + len(mode)), f"{path}: a {w}x{h} image",
                           "resize the image")
                return np.asarray(im.convert(mode))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        found = re.search(r"\((\d+) pixels\)", str(e))     # Pillow: "Image size (N pixels) exceeds..."
        size = f"has {int(found.group(1)):,} pixels" if found else f"is too large ({e})"
        raise DataError(f"{path}: the image {size}, more than the {max_pixels:,} netspec reads for "
                        f"this spec's input ({IMAGE_PIXELS_FACTOR}x its pixels, at least 4096x4096); "
                        f"it was not decoded (a possible decompression bomb): resize the image") from None
    except (DataError, SpecError, MemoryError):     # our own refusals (check_fits)
        raise
    except Exception as e:     # noqa: BLE001 -- image decoders raise many types on bad bytes
        raise DataError(f"{path}: cannot read this image ({type(e).__name__}: {e})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous


# ---------------------------------------------------------------- values


def nonfinite(x: np.ndarray) -> tuple[int, int]:
    """(NaN count, infinite count) of a float array; (0, 0) for other dtypes."""
    if x.dtype.kind != "f" or x.size == 0:
        return 0, 0
    with np.errstate(over="ignore", invalid="ignore"):
        if math.isfinite(float(np.sum(x, dtype=np.float64))):   # the common case: no temporary
            return 0, 0
    flat = x.reshape(len(x), -1) if x.ndim else x.reshape(1, 1)
    step = max(1, (1 << 22) // max(1, flat.shape[1]))
    nan = inf = 0
    for i in range(0, len(flat), step):
        block = flat[i:i + step]
        nan += int(np.count_nonzero(np.isnan(block)))
        inf += int(np.count_nonzero(np.isinf(block)))
    return nan, inf


def nonfinite_message(where: str, x: np.ndarray) -> str | None:
    """'WHERE: 3 NaN and 1 infinite values among 784: ...' or None when all are finite."""
    nan, inf = nonfinite(x)
    if not nan and not inf:
        return None
    parts = [f"{nan:,} NaN" if nan else "", f"{inf:,} infinite" if inf else ""]
    return (f"{where}: {' and '.join(p for p in parts if p)} values among {x.size:,}: "
            f"replace or drop them (e.g. np.nan_to_num)")


__all__ = ["DataError", "read_idx", "load_npy", "NpzArrays", "read_image", "image_pixel_limit",
           "nonfinite", "nonfinite_message", "NUMERIC_KINDS"]
