"""Running `netspec` the way a hostile user does, without letting a regression hurt the machine.

Each command runs in a subprocess under an address-space limit (`RLIMIT_AS`), a file-size limit
and a wall-clock timeout, in its own process group (killed whole on timeout). The outcome carries
the exit status, both streams, the wall time and the child's peak resident memory, so a test can
assert "exit 1 or 2, a message naming the problem, within seconds and bounded memory" and a
regression fails that test instead of exhausting CI's machine.

`tree_state` / `changes` snapshot a folder before and after a command, so a test can assert that
nothing outside netspec's own build and run folders changed.
"""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MEMORY_MB = 3072      # address space: numba, LLVM and numpy need ~1 GB of it idle
DEFAULT_TIMEOUT_S = 60
MAX_FILE_MB = 512             # no single file a hostile run writes may grow past this

# The child reports its own peak (VmHWM of its own address space) as it exits: the peak that
# wait4 and getrusage give is not the child's own, since Linux carries the parent's resident
# size at fork across exec (a pytest process of 1.7 GB made every child "peak" at 1.7 GB).
_ENTRY = """
import os, sys
from netspec.cli import main
try:
    code = main(sys.argv[1:])
finally:
    with open(os.environ["NETSPEC_PEAK_FILE"], "w") as f:
        f.write(str(__import__("netspec.testing.hostile", fromlist=["x"]).own_peak_kb(os.getpid())))
sys.exit(code)
"""


def own_peak_kb(pid: int) -> int:
    """The high-water mark of a process's own resident memory (VmHWM), in kB; 0 once gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


@dataclass
class Outcome:
    """What one netspec command did."""

    args: tuple
    rc: int | None            # None when killed for the timeout
    stdout: str
    stderr: str
    seconds: float
    peak_mb: float            # the child's peak resident set size
    timed_out: bool

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def __str__(self) -> str:   # what a failing assertion shows
        def cut(s: str) -> str:
            return s if len(s) < 2000 else s[:1000] + "\n[...]\n" + s[-1000:]
        return (f"netspec {' '.join(map(str, self.args))}\n  rc={self.rc} timed_out={self.timed_out} "
                f"{self.seconds:.1f}s peak {self.peak_mb:.0f} MB\n--- stdout\n{cut(self.stdout)}"
                f"\n--- stderr\n{cut(self.stderr)}")


def _limits(memory_mb: int):
    def apply():
        os.setsid()
        limit = memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        size = MAX_FILE_MB * 2**20
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    return apply


def run_netspec(*args, cwd, memory_mb: int = DEFAULT_MEMORY_MB, timeout: float = DEFAULT_TIMEOUT_S,
                stdin: bytes | None = None, env: dict | None = None) -> Outcome:
    """Run `netspec ARGS...` in `cwd` in a limited subprocess; never raises for what it does."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("NETSPEC_DEBUG", None)           # a traceback would hide the exit status
    fd, peak_file = tempfile.mkstemp(prefix="netspec-peak-")
    os.close(fd)
    full_env["NETSPEC_PEAK_FILE"] = peak_file
    try:
        outcome = run_limited([sys.executable, "-c", _ENTRY, *args], cwd=cwd, memory_mb=memory_mb,
                              timeout=timeout, stdin=stdin, env=full_env, shown=args)
        reported = Path(peak_file).read_text().strip()
        if reported:
            outcome.peak_mb = max(outcome.peak_mb, int(reported) / 1024)
        return outcome
    finally:
        os.unlink(peak_file)


def run_limited(argv: list, *, cwd, memory_mb: int = DEFAULT_MEMORY_MB,
                timeout: float = DEFAULT_TIMEOUT_S, stdin: bytes | None = None,
                env: dict | None = None, shown=None) -> Outcome:
    """Run any command line (a script that kills netspec midway, say) under the same limits."""
    start = time.perf_counter()
    proc = subprocess.Popen(list(map(str, argv)), cwd=cwd, env=env if env is not None else None,
                            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=_limits(memory_mb))
    chunks: dict[str, list[bytes]] = {"out": [], "err": []}

    def drain(stream, key):
        for block in iter(lambda: stream.read(65536), b""):
            chunks[key].append(block)

    readers = [threading.Thread(target=drain, args=(proc.stdout, "out"), daemon=True),
               threading.Thread(target=drain, args=(proc.stderr, "err"), daemon=True)]
    for t in readers:
        t.start()
    if stdin is not None:
        try:
            proc.stdin.write(stdin)
            proc.stdin.close()
        except BrokenPipeError:
            pass
    # the child's own peak, polled while it runs (a command that reports its own peak at exit,
    # as run_netspec's does, also catches what it allocated in its last moments)
    deadline = start + timeout
    timed_out = False
    peak_kb = 0
    while True:
        peak_kb = max(peak_kb, own_peak_kb(proc.pid))
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.01)
    proc.returncode = os.waitstatus_to_exitcode(status)
    for t in readers:
        t.join()
    return Outcome(tuple(shown if shown is not None else argv),
                   None if timed_out else proc.returncode,
                   b"".join(chunks["out"]).decode("utf-8", "replace"),
                   b"".join(chunks["err"]).decode("utf-8", "replace"),
                   time.perf_counter() - start, peak_kb / 1024, timed_out)


def assert_refused(outcome: Outcome, *mentions: str, codes=(1, 2), seconds: float | None = None) -> None:
    """The command failed cleanly: an expected exit code, a message (on stderr) that mentions each
    of `mentions` (case-insensitive), no traceback, no "internal error", within `seconds`."""
    assert not outcome.timed_out, f"timed out\n{outcome}"
    assert outcome.rc in codes, f"exit {outcome.rc}, expected one of {codes}\n{outcome}"
    text = outcome.output
    assert "Traceback" not in text and "internal error" not in text, str(outcome)
    assert outcome.stderr.strip(), f"no message on stderr\n{outcome}"
    low = text.lower()
    for m in mentions:
        assert m.lower() in low, f"the message does not mention {m!r}\n{outcome}"
    if seconds is not None:
        assert outcome.seconds < seconds, f"took {outcome.seconds:.1f}s (limit {seconds}s)\n{outcome}"


def tree_state(root, skip=()) -> dict[str, tuple]:
    """Every file and folder under root (relative path -> kind, size, content hash), except the
    top-level entries named in `skip` (netspec's own build and run folders)."""
    root = Path(root)
    state = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = Path(dirpath).relative_to(root)
        if rel_dir == Path("."):
            dirnames[:] = [d for d in dirnames if d not in skip]
            filenames = [f for f in filenames if f not in skip]
        for d in dirnames:
            state[str(rel_dir / d)] = ("dir",)
        for f in filenames:
            p = Path(dirpath) / f
            if p.is_symlink():
                state[str(rel_dir / f)] = ("link", os.readlink(p))
            elif p.is_file():
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
                state[str(rel_dir / f)] = ("file", p.stat().st_size, digest)
            else:
                state[str(rel_dir / f)] = ("other",)
    return state


def changes(before: dict, after: dict) -> list[str]:
    """What differs between two tree_state snapshots: '+ path', '- path', '~ path'."""
    out = [f"- {p}" for p in before if p not in after]
    out += [f"+ {p}" for p in after if p not in before]
    out += [f"~ {p}" for p in before if p in after and before[p] != after[p]]
    return sorted(out)
