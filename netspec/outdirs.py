"""The folders netspec writes, and the temporary files and folders behind its atomic writes.

Ownership. A folder netspec owns carries a marker file: `.netspec-build` in a build folder
(`netspec compile -o DIR`), `.netspec-run` in a run folder (`netspec train -o DIR`).

- compile replaces its build folder as a whole, so it writes only into a folder that is new,
  empty, marked as a build folder, or a build folder of an older netspec (only compile's file
  names, graph.json, spec.net and the summaries among them). Anything else is refused and
  nothing is deleted; so are a target that is, or contains, the current folder or a spec file
  being compiled, a path that is not a folder, and a symbolic link (replacing it would not
  replace what it points to; following it could delete something elsewhere).
- train overwrites only its own file names in its run folder, so it writes into a folder that
  is new, empty, marked as a run folder, or holds an older netspec run (checkpoint.safetensors
  and history.json); anything else is refused before any data is loaded.

Permissions. New files and folders get what open() and mkdir() give under the user's umask;
replacing a file or a build folder keeps its mode.

Leftovers. Temporary files are named `.NAME.XXXXXXXX.tmp` and temporary build folders
`.NAME.XXXXXXXX` (8 random characters). The process writing one holds an flock on it for as
long as it writes; the kernel drops the lock when that process dies, SIGKILL included. A later
run removes the ones whose lock is free: temporary files of the run folder's own file names
(train), temporary folders holding the build marker (compile, in the build folder's parent).
A run still writing elsewhere keeps its lock, so its files stay; no clock, no lock file.

Fault injection (tests only). NETSPEC_FAULT=POINT[:FILE[:N]] makes the process kill itself
with SIGKILL the N-th time (default: the first) it reaches POINT, for the file named FILE when
one is given (empty: any). Points:
    write_atomic:partial           half the bytes written to the temporary file
    write_atomic:before_replace    all written and fsynced, not yet renamed over the file
    build_folder:partial           the marker and one file in the temporary folder
    build_folder:before_swap       the temporary folder complete, not yet swapped in
    build_folder:after_swap        the new folder in place, the old one not yet removed
    build_folder:between_renames   (only without an atomic exchange) the old folder moved
                                   aside, the new one not yet in place
Unset, as in normal use, a point costs one environment lookup and does nothing.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import secrets
import shutil
import signal
import stat
import sys
from pathlib import Path

try:
    import fcntl
except ImportError:     # no flock: nothing is ever judged abandoned, so nothing is removed
    fcntl = None

BUILD_MARKER = ".netspec-build"
RUN_MARKER = ".netspec-run"

# what `netspec compile` writes: an older build folder (before markers) holds only these
BUILD_FILES = frozenset({
    "graph.json", "summary.txt", "summary.json", "spec.net", "program.txt", "passes.txt",
    "memory_plan.txt", "memory_plan.json", "diagram.svg", "diagram_blocks.svg", "diagram.dot",
    "diagram_blocks.dot", "kernels"})
_OLD_BUILD_NEEDS = frozenset({"graph.json", "spec.net", "summary.txt", "summary.json"})

# what `netspec train` writes into its run folder (trainer.py, plots.py), in the order it
# lists them
RUN_OUTPUTS = ("weights.safetensors", "checkpoint.safetensors", "history.json", "history.csv",
               "learning_curves.png", "learning_curves.svg", "metrics.json")
RUN_FILES = frozenset({*RUN_OUTPUTS, RUN_MARKER})
_OLD_RUN_NEEDS = frozenset({"checkpoint.safetensors", "history.json"})

_MARKER_TEXT = {
    BUILD_MARKER: "This folder was written by `netspec compile`. The next compile into it "
                  "replaces it as a whole:\nkeep no files of your own here.\n",
    RUN_MARKER: "This folder is a training run of `netspec train`. Later runs into it "
                "overwrite its checkpoint,\nweights, history, learning curves and metrics; "
                "other files are left alone.\n",
}

_TEMP_FILE = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp")    # tempfile's names included
_TEMP_FOLDER = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}")


class OutputFolderError(ValueError):
    """An output folder netspec must not write into; `usage` when the path itself is impossible
    (a file, the current folder, a link), not merely occupied."""

    def __init__(self, message: str, usage: bool = False):
        super().__init__(message)
        self.usage = usage


# ---------------------------------------------------------------- fault injection

_fault_hits: dict[str, int] = {}


def fault_point(point: str, name: str = "") -> None:
    """Die here by SIGKILL when NETSPEC_FAULT names this point (see the module docstring)."""
    wanted = os.environ.get("NETSPEC_FAULT")
    if not wanted:
        return
    parts = wanted.split(":")
    if ":".join(parts[:2]) != point or (len(parts) > 2 and parts[2] not in ("", name)):
        return
    _fault_hits[wanted] = _fault_hits.get(wanted, 0) + 1
    if _fault_hits[wanted] == (int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else 1):
        os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------- locks and temporaries

def _lock(fd: int, shared: bool = False, wait: bool = True) -> bool:
    """flock fd; False when another process holds it (or the file system cannot lock)."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB))
        return True
    except OSError:
        return False


def _kept_mode(path: Path) -> int | None:
    """The permission bits of an existing regular file or folder at path, else None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) else None


def create_temp_file(path: Path) -> tuple[int, Path]:
    """A new, locked temporary file beside path, for writing path atomically: (fd, its path).
    Its mode is what open() would give path: the existing file's, else 0o666 less the umask."""
    path = Path(path)
    mode = _kept_mode(path)
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        _lock(fd)
        # another run's clean-up may have removed it between the open and the lock: start over
        if os.fstat(fd).st_nlink == 0:
            os.close(fd)
            continue
        if mode is not None:
            os.fchmod(fd, mode)
        return fd, tmp


def _create_temp_folder(target: Path, mode: int | None) -> tuple[Path, int]:
    """A new, locked, empty folder `.NAME.XXXXXXXX` beside target: (its path, an fd holding the lock)."""
    while True:
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}")
        try:
            os.mkdir(tmp, 0o777)         # the umask applies, as for any mkdir
        except FileExistsError:
            continue
        fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        _lock(fd)     # no clean-up takes a folder without the marker, which comes next
        if mode is not None:
            os.chmod(tmp, mode)
        return tmp, fd


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:     # some file systems cannot fsync a folder; the rename is still atomic
        pass
    finally:
        os.close(fd)


def _has_marker(folder, marker: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(os.path.join(folder, marker)).st_mode)
    except OSError:
        return False


def _remove_if_abandoned(path: str, folder: bool) -> bool:
    """Remove a temporary file or folder whose writer is gone (its flock is free)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | (getattr(os, "O_DIRECTORY", 0) if folder else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return False
    try:
        if not _lock(fd, shared=True, wait=False):
            return False
        st, now = os.fstat(fd), os.lstat(path)
        if (st.st_dev, st.st_ino) != (now.st_dev, now.st_ino):
            return False
        if folder:
            shutil.rmtree(path)
        else:
            os.unlink(path)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def remove_leftovers(folder, file_names=frozenset(), build_folders: bool = False) -> int:
    """Remove what killed netspec runs left in `folder`: temporary files of `file_names` and,
    with build_folders, temporary folders holding the build marker. Returns how many."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    removed = 0
    for entry in entries:
        m = _TEMP_FILE.fullmatch(entry.name)
        if m and m["name"] in file_names and entry.is_file(follow_symlinks=False):
            removed += _remove_if_abandoned(entry.path, folder=False)
            continue
        if (build_folders and _TEMP_FOLDER.fullmatch(entry.name)
                and entry.is_dir(follow_symlinks=False) and _has_marker(entry.path, BUILD_MARKER)):
            removed += _remove_if_abandoned(entry.path, folder=True)
    return removed


# ---------------------------------------------------------------- build folders

def _real(target: Path) -> Path:
    """target with its parent's links and '..' resolved, its last part kept (it may be a link)."""
    if target.name in ("", ".", ".."):
        return target.resolve()
    return Path(os.path.realpath(target.parent)) / target.name


def _listing(names, limit: int = 4) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _is_inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _only_kernels(folder: Path) -> bool:
    """True when an older build folder's kernels/ (if any) holds only generated .py files."""
    if not folder.exists():
        return True
    return (folder.is_dir() and not folder.is_symlink()
            and all(p.suffix == ".py" and p.is_file() and not p.is_symlink() for p in folder.iterdir()))


def check_build_target(target, sources=(), shown: str | None = None) -> None:
    """Raise OutputFolderError unless `netspec compile` may replace `target` with a build
    folder (module docstring); `sources` are the spec files being compiled, `shown` how the
    messages name the target (default: 'build folder TARGET')."""
    target = Path(target)
    shown = shown or f"build folder {target}"
    real = _real(target)
    if real.is_symlink():
        raise OutputFolderError(f"{shown} is a symbolic link (to {os.readlink(real)}); netspec "
                                "compile replaces its build folder as a whole and does not follow "
                                "links: give the folder itself", usage=True)
    cwd = Path.cwd().resolve()
    if _is_inside(cwd, real):
        what = "is the current folder" if real == cwd else "contains the current folder"
        raise OutputFolderError(f"{shown} {what}; netspec compile replaces its build folder as a "
                                "whole: give the build a folder of its own (default: build/NETWORK)",
                                usage=True)
    if real.exists() and not real.is_dir():
        raise OutputFolderError(f"{shown} is a file, not a folder: give a folder for the build",
                                usage=True)
    for ancestor in real.parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise OutputFolderError(f"{shown}: {ancestor} is a file, not a folder", usage=True)
            break
    for source in sources:     # as given (a link inside would go) and where it leads
        if any(_is_inside(p, real) for p in (Path(os.path.abspath(source)), Path(source).resolve())):
            raise OutputFolderError(f"{shown} contains {source}, a spec being compiled; netspec "
                                    "compile replaces its build folder as a whole: give the build "
                                    "a folder of its own (default: build/NETWORK)", usage=True)
    if not real.is_dir():
        return
    entries = set(os.listdir(real))
    if not entries or _has_marker(real, BUILD_MARKER):
        return
    if _OLD_BUILD_NEEDS <= entries <= BUILD_FILES and _only_kernels(real / "kernels"):
        return      # a build folder of a netspec from before the marker
    if _has_marker(real, RUN_MARKER):
        raise OutputFolderError(f"{shown} is a training run folder of netspec train; compile would "
                                "replace it as a whole: give the build another folder")
    raise OutputFolderError(f"{shown} holds files netspec did not write ({_listing(entries)}); "
                            "netspec compile replaces its build folder as a whole, so it writes "
                            f"only into a new or empty folder or one it made (with {BUILD_MARKER}): "
                            "choose another folder, or move those files away")


def write_build_folder(target, files: dict[str, str], sources=(), shown: str | None = None) -> None:
    """Write `files` (relative path -> text) as the build folder `target`, atomically: they go
    into a fresh temporary folder beside it, fsynced, which then takes the old one's place in
    one step (renameat2 RENAME_EXCHANGE where the system has it), so a crash at any moment
    leaves the old folder or the new one whole, never a mix. Refuses (OutputFolderError) a
    target that is not netspec's (check_build_target, which `shown` is for)."""
    target = Path(target)
    check_build_target(target, sources, shown)
    real = _real(target)
    real.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(real.parent, build_folders=True)
    tmp, fd = _create_temp_folder(real, _kept_mode(real) if real.is_dir() else None)
    try:
        _write_text(tmp / BUILD_MARKER, _MARKER_TEXT[BUILD_MARKER])
        for i, (name, text) in enumerate(files.items()):
            if i == 1:
                fault_point("build_folder:partial", real.name)
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            _write_text(tmp / name, text)
        for sub in {(tmp / name).parent for name in files}:
            _fsync_folder(sub)
        fault_point("build_folder:before_swap", real.name)
        old = _swap_in(tmp, real)
        _fsync_folder(real.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(fd)


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _swap_in(tmp: Path, target: Path) -> Path | None:
    """Put the folder tmp at target; return where the old target went (to be removed), if any."""
    if not target.is_dir():
        os.rename(tmp, target)
        return None
    if not _has_marker(target, BUILD_MARKER):
        # an adopted empty or older build folder: marked, so a kill before its removal
        # leaves a leftover the next compile recognises
        _write_text(target / BUILD_MARKER, _MARKER_TEXT[BUILD_MARKER])
    if _exchange(tmp, target):
        fault_point("build_folder:after_swap", target.name)
        return tmp
    # no atomic exchange: move the old folder onto a fresh empty one of ours, then the new in
    aside, aside_fd = _create_temp_folder(target, None)
    os.close(aside_fd)
    try:
        os.replace(target, aside)
    except BaseException:
        os.rmdir(aside)
        raise
    fault_point("build_folder:between_renames", target.name)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(aside, target)
        raise
    fault_point("build_folder:after_swap", target.name)
    return aside


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 with RENAME_EXCHANGE); False where the
    system or the file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(b))


# ---------------------------------------------------------------- run folders

def check_run_folder(out, error=OutputFolderError) -> None:
    """Raise `error` unless `netspec train` may write its files into `out` (module docstring).
    Reads only: call it before any long work."""
    out = Path(out)
    shown = f"run folder {out}"

    def impossible(message):     # the path itself cannot be a run folder: a usage error
        return OutputFolderError(message, usage=True) if error is OutputFolderError else error(message)
    if out.is_symlink() and not out.exists():
        raise impossible(f"{shown} is a symbolic link to a missing folder ({os.readlink(out)})")
    if out.exists() and not out.is_dir():
        raise impossible(f"{shown} is a file, not a folder: give -o a folder for the run")
    for ancestor in out.absolute().parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise impossible(f"{shown}: {ancestor} is a file, not a folder")
            break
    if not out.is_dir():
        return
    entries = set(os.listdir(out))
    # a run killed while it wrote the marker leaves only its temporary files: still a new run's
    # folder (prepare_run_folder removes them once their writer is gone)
    leftovers = {e for e in entries if (m := _TEMP_FILE.fullmatch(e)) and m["name"] in RUN_FILES}
    if entries <= leftovers or _has_marker(out, RUN_MARKER) or _OLD_RUN_NEEDS <= entries:
        return
    if _has_marker(out, BUILD_MARKER):
        raise error(f"{shown} is a build folder of netspec compile: give the run another folder "
                    "(default: runs/NETWORK)")
    raise error(f"{shown} holds files netspec did not write ({_listing(entries)}); netspec train "
                f"writes {', '.join(sorted(RUN_FILES - {RUN_MARKER}))} into its run folder, "
                "overwriting files of those names, so it writes only into a new or empty folder "
                f"or one of an earlier run (with {RUN_MARKER}): choose another -o")


def prepare_run_folder(out, error=OutputFolderError) -> int:
    """Check `out` (check_run_folder), create it with its marker and remove the temporary files
    that killed runs left in it; returns how many were removed."""
    out = Path(out)
    check_run_folder(out, error)
    out.mkdir(parents=True, exist_ok=True)
    if not _has_marker(out, RUN_MARKER):
        write_atomic(out / RUN_MARKER, _MARKER_TEXT[RUN_MARKER])
    return remove_leftovers(out, RUN_FILES)


# ---------------------------------------------------------------- files

def write_atomic(path, data: bytes | str) -> None:
    """Write data to path through a temporary file in the same folder, fsynced and renamed
    over it: readers see the old file or the new one, never a part. The file gets the mode
    open() would give it (the old file's, else 0o666 less the umask); the temporary file is
    locked while written, so a later write removes it only if this process died
    (the NETSPEC_FAULT points used here in tests are documented above)."""
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
