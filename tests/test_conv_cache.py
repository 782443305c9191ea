"""The conv kernels' entries in Numba's on-disk cache are stamped with every file of their
package (runtime/cpu/conv/cache.py): Numba alone checks a function against its own file, so an
edit of a tunable in config.py, or of a body that tasks.py's C functions inline, would leave
stale compiled code in the cache."""

from __future__ import annotations

from pathlib import Path

import numba

from netspec.runtime.cpu.conv import cache, im2col, microkernel, tasks


def function_in(folder: Path, name: str = "kernels.py"):
    """A function defined in a file of `folder`."""
    path = folder / name
    path.write_text("def f():\n    return 1\n")
    namespace = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    return namespace["f"], str(path)


def test_the_stamp_changes_with_any_file_of_the_folder(tmp_path):
    function_in(tmp_path)
    (tmp_path / "config.py").write_text("TILE = 8\n")
    before = cache.folder_stamp(tmp_path)
    assert cache.folder_stamp(tmp_path) == before
    (tmp_path / "config.py").write_text("TILE = 16\n")
    assert cache.folder_stamp(tmp_path) != before


def test_the_locator_stamps_the_folder_s_functions_only(tmp_path, monkeypatch):
    monkeypatch.setattr(numba.config, "CACHE_DIR", str(tmp_path / "numba"))
    folder = tmp_path / "package"
    folder.mkdir()
    f, path = function_in(folder)
    locator = cache.stamping_locator(folder).from_function(f, path)
    assert locator.get_source_stamp() == cache.folder_stamp(folder)
    # where the files go is still Numba's choice (here: under its CACHE_DIR)
    assert Path(locator.get_cache_path()).is_relative_to(tmp_path / "numba")
    g, elsewhere = function_in(tmp_path, "other.py")
    assert cache.stamping_locator(folder).from_function(g, elsewhere) is None


def test_every_cached_function_of_the_package_carries_the_package_stamp():
    stamp = cache.folder_stamp(Path(cache.__file__).parent)
    for function in (im2col._im2col, microkernel._gemm_body, tasks._parallel, tasks._serial):
        assert function._cache._impl.locator.get_source_stamp() == stamp, function


def test_the_cache_folder_follows_every_runtime_source(tmp_path):
    """Numba checks a cached kernel against its own file only: the CPU target's cache folder is
    named by a stamp of all the runtime's files, which an edit anywhere in the tree changes."""
    from netspec.runtime.cpu import context
    (tmp_path / "cpu").mkdir()
    (tmp_path / "formulas.py").write_text("ONE = 1\n")
    (tmp_path / "cpu" / "activations.py").write_text("def silu(v): return v\n")
    before = context.tree_stamp(tmp_path)
    (tmp_path / "cpu" / "activations.py").write_text("def silu(v): return v * 2\n")
    after = context.tree_stamp(tmp_path)
    (tmp_path / "notes.txt").write_text("not a source")
    assert before != after == context.tree_stamp(tmp_path)
    import numba
    assert numba.config.CACHE_DIR.endswith(context.runtime_stamp())
