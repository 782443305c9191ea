"""How much memory this process can still allocate, and the check before a large allocation.

Some of netspec's allocations are sized by what a user controls: a layer's width in a spec,
`--input`, `--batch`, the shape a data file's header declares. Each such place calls
`check_fits` first, so a request that cannot fit is refused at once with the sizes and a fix
(`ResourceError`, exit status 1 in the CLI) instead of ending in MemoryError or the kernel's
out-of-memory killer, possibly after minutes of work.

Available memory is the smallest of what is known (`available_bytes`):
- the machine's: MemAvailable in /proc/meminfo (else the free physical pages, os.sysconf);
- the control group's (containers, CI runners): its limit minus its usage, cgroup v2 or v1,
  for the process's group and every group above it;
- the address space left under RLIMIT_AS (`ulimit -v`) and the data left under RLIMIT_DATA.
Swap is not counted: an allocation that only fits by swapping is refused.
"""

from __future__ import annotations

import os
from pathlib import Path

try:
    import resource
except ImportError:          # not on Windows
    resource = None

from .errors import SpecError

_UNLIMITED_CGROUP = 2**62     # cgroup v1 writes "no limit" as a huge number (9223372036854771712)


class ResourceError(SpecError):
    """An allocation that does not fit in the memory available: what, both sizes, and a fix.

    A SpecError without a position, so the CLI reports it like any other input error (exit 1).
    """

    def __init__(self, what: str, need: int, available: int, hint: str | None = None,
                 detail: str | None = None):
        super().__init__(f"{what} needs {format_bytes(need)} of memory but only "
                         f"{format_bytes(available)} is available"
                         + (f" ({detail})" if detail else ""), hint=hint)
        self.what = what
        self.need = need
        self.available = available


def format_bytes(n: float) -> str:
    """Decimal units, as netspec's summaries: '40.0 GB', '512.0 MB', '12 B'."""
    for unit, size in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{int(n)} B"


def available_bytes() -> int | None:
    """Bytes this process can still allocate, by the tightest known limit; None if none is known."""
    known = [b for b in (_system_available(), _cgroup_headroom(), _rlimit_headroom()) if b is not None]
    return max(0, min(known)) if known else None


def check_fits(need_bytes: int, what: str, hint: str | None = None, detail: str | None = None) -> None:
    """Raise ResourceError when `need_bytes` (about to be allocated for `what`) exceeds the
    memory available. `what` names the allocation ("the training data fitted to 1@100000x100000"),
    `hint` says how to make it smaller, `detail` (optional) what the bytes are made of."""
    need_bytes = int(need_bytes)
    available = available_bytes()
    if available is not None and need_bytes > available:
        raise ResourceError(what, need_bytes, available, hint, detail)


# ---------------------------------------------------------------- the sources of a limit


def _system_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None      # cgroup v2 writes "max" for no limit


def _cgroup_headroom() -> int | None:
    """min over the process's control group and its ancestors of (limit - usage)."""
    try:
        lines = Path("/proc/self/cgroup").read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    candidates = []     # (folder, limit file, usage file)
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, group = parts
        if parts[0] == "0" and controllers == "":
            candidates.append((Path("/sys/fs/cgroup"), group, "memory.max", "memory.current"))
        elif "memory" in controllers.split(","):
            candidates.append((Path("/sys/fs/cgroup/memory"), group, "memory.limit_in_bytes",
                               "memory.usage_in_bytes"))
    best = None
    for root, group, limit_name, usage_name in candidates:
        folder = root / group.lstrip("/")
        while True:
            limit, usage = _read_int(folder / limit_name), _read_int(folder / usage_name)
            if limit is not None and usage is not None and limit < _UNLIMITED_CGROUP:
                best = limit - usage if best is None else min(best, limit - usage)
            if folder == root or root not in folder.parents:
                break
            folder = folder.parent
    return best


def _rlimit_headroom() -> int | None:
    """What RLIMIT_AS and RLIMIT_DATA leave above the process's current use."""
    try:
        status = Path("/proc/self/status").read_text(encoding="ascii")
    except OSError:
        status = ""
    used = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmSize", "VmData") and value.strip().endswith("kB"):
            used[key] = int(value.split()[0]) * 1024
    if resource is None:
        return None
    best = None
    for limit_kind, key in ((resource.RLIMIT_AS, "VmSize"), (resource.RLIMIT_DATA, "VmData")):
        soft, _ = resource.getrlimit(limit_kind)
        if soft == resource.RLIM_INFINITY or key not in used:
            continue
        room = soft - used[key]
        best = room if best is None else min(best, room)
    return best
