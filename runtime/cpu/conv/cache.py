"""Numba's on-disk cache for this package, invalidated by a change to any of its files.

Numba checks a cached function against its own source file only (its caching notes: changes
in symbols defined in another file are not detected, and globals are frozen as they were at
compile time). The kernels of this package inline functions of each other's files and read
config.py's values, so a cached task C function (tasks.py) would outlive an edit of a body it
inlined, or of a tile shape, and disagree with the Python code that sizes its buffers. Every
function of the package is therefore stamped with the contents of all the package's files: an
edit to any of them recompiles them all, as an edit of the single file they once were did.

`install()` puts the stamping locator ahead of Numba's own, which still decide where the cache
files go; it must run before the first function of the package is decorated (the package's
__init__ calls it first).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from numba.core import caching

_PACKAGE = Path(__file__).resolve().parent


def folder_stamp(folder: Path) -> str:
    """A digest of the names and contents of the .py files of `folder`."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def stamping_locator(folder: Path) -> type:
    """A Numba cache locator class for the functions defined in `folder`'s files: where the
    next locator that accepts a function puts its cache, with the stamp of the whole folder
    (as it is now) in place of the function's file's."""
    folder = folder.resolve()
    stamp = folder_stamp(folder)

    class FolderStampLocator(caching._CacheLocator):
        def __init__(self, inner):
            self._inner = inner

        def ensure_cache_path(self):
            self._inner.ensure_cache_path()

        def get_cache_path(self):
            return self._inner.get_cache_path()

        def get_source_stamp(self):
            return stamp

        def get_disambiguator(self):
            return self._inner.get_disambiguator()

        @classmethod
        def from_function(cls, py_func, py_file):
            if Path(py_file).resolve().parent != folder:
                return None
            for other in caching.CacheImpl._locator_classes:
                if other is not cls:
                    inner = other.from_function(py_func, py_file)
                    if inner is not None:
                        return cls(inner)
            return None

    return FolderStampLocator


def install() -> None:
    """Stamp this package's cached functions with the whole package (once per process)."""
    locators = caching.CacheImpl._locator_classes
    if not any(getattr(c, "stamped_folder", None) == _PACKAGE for c in locators):
        locator = stamping_locator(_PACKAGE)
        locator.stamped_folder = _PACKAGE
        locators.insert(0, locator)
