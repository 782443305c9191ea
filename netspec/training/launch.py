"""`netspec train SPEC --ranks N` on one machine: start N ranks through the MPI launcher
(`mpiexec -n N python -m netspec.cli train SPEC ...`, the same command without --ranks), pass their
output on, and when one dies say which.

A rank that dies (killed, or ending without finishing) makes mpiexec stop the others at once,
and MPICH's own report names a process id at best, or nothing (a rank that exits with status 1).
So every rank records its pid when it starts and records that it ended when it ends on purpose
(distributed.record_exit; an error it reports itself counts), and a rank without that record
died. The first to die is the one hydra's report names (it names a process a signal ended), else
the first the launcher saw end (it watches the pids: pidfd, Linux). Across machines
(`mpirun -n N -f hosts netspec train SPEC`) there is no launcher of ours: mpirun's report is
what there is (docs/DISTRIBUTED.md).
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..errors import TrainingError
from .distributed import MPI_HINT, STATUS_DIR_VARIABLE

# lines of MPICH's hydra report about a process that ended badly: the launcher says it better
_HYDRA_REPORT = ("====", "=   ", "YOUR APPLICATION TERMINATED WITH THE EXIT STRING",
                 "This typically refers to a problem with your application",
                 "Please see the FAQ page for debugging suggestions")
_HYDRA_PID = re.compile(r"=\s+PID (\d+) RUNNING AT")


def mpiexec_path() -> str:
    """The MPI launcher beside this Python (the mpich wheel installs it there), else on PATH."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        raise TrainingError(f"--ranks needs MPI, and mpi4py is not installed: {MPI_HINT}") from None
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("mpiexec")
    if found is None:
        raise TrainingError(f"--ranks needs an MPI launcher (mpiexec), and none is installed: "
                            f"{MPI_HINT} (its mpich wheel brings one)")
    return found


def without_ranks(words: list[str]) -> list[str]:
    """The command line with its --ranks option removed (either spelling)."""
    out, skip = [], False
    for w in words:
        if skip:
            skip = False
        elif w == "--ranks":
            skip = True
        elif not w.startswith("--ranks="):
            out.append(w)
    return out


def launch(words: list[str], ranks: int, run_dir: Path, echo, echo_err) -> int:
    """Run `netspec <words>` (without --ranks) as `ranks` MPI ranks; returns the exit status.
    echo/echo_err: where the ranks' standard output and error lines go."""
    mpiexec = mpiexec_path()
    from ..runtime.cpu.threads import usable_cores
    with tempfile.TemporaryDirectory(prefix="netspec-ranks-") as status:
        env = dict(os.environ)
        env[STATUS_DIR_VARIABLE] = status
        # the ranks share this machine's cores rather than each taking them all
        env.setdefault("NETSPEC_NUM_THREADS", str(max(1, usable_cores() // ranks)))
        command = [mpiexec, "-n", str(ranks), sys.executable, "-m", "netspec.cli", *without_ranks(words)]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                text=True, errors="replace")
        watcher = _DeathWatch(Path(status), ranks, proc)
        reported: list[int] = []     # the pids hydra's report names, in order
        forwarders = [threading.Thread(target=_forward, args=(proc.stdout, echo, reported), daemon=True),
                      threading.Thread(target=_forward, args=(proc.stderr, echo_err, reported), daemon=True)]
        for t in forwarders:
            t.start()
        watcher.start()
        rc = proc.wait()
        for t in forwarders:
            t.join()
        watcher.join()
        if rc == 0:
            return 0
        if not any(Path(status).glob("rank-*.pid")):
            echo_err(f"error: the ranks ended before they joined the run ({mpiexec}'s exit status "
                     f"{rc}; what they said, if anything, is above)")
            return 1
        # hydra names the first process that ended badly when a signal ended it; otherwise the
        # order in which the watcher saw the ranks end (two ending within one wake-up of a busy
        # machine's watcher come out by rank)
        pids = {pid: rank for rank in range(ranks)
                if (pid := _read_int(Path(status) / f"rank-{rank}.pid")) is not None}
        named = [(pids[pid], pid) for pid in reported if pid in pids]
        dead = [(rank, pid) for rank, pid in named + watcher.ended
                if not (Path(status) / f"rank-{rank}.exit").exists()]
        if not dead:
            return 1      # the ranks said what went wrong themselves
        rank, pid = dead[0]
        echo_err(f"error: rank {rank} (pid {pid}) of {ranks} died before the run finished "
                 f"(mpiexec's exit status {rc}); the other ranks were stopped. "
                 + checkpoint_note(run_dir))
        return 1


def checkpoint_note(run_dir: Path) -> str:
    """What a stopped run left: its last checkpoint (checked to be whole) and how to go on."""
    from .trainer import CHECKPOINT, read_checkpoint
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        return "No epoch finished, so there is no checkpoint: start the run again."
    try:
        _, meta = read_checkpoint(path)
        epoch = meta.state["epoch"]
    except Exception as e:     # the note must not hide the error it completes
        return f"{path} cannot be read ({e})."
    return (f"{path} holds epoch {epoch}, the last whole one: continue with --resume "
            f"(with any number of ranks).")


def _forward(stream, echo, reported: list[int]) -> None:
    """Pass lines on, leaving out hydra's report (and the blank lines around it); the pids it
    names go into `reported`."""
    blank = 0
    for line in stream:
        line = line.rstrip("\n")
        if not line.strip():
            blank += 1
            continue
        if line.startswith(_HYDRA_REPORT):
            found = _HYDRA_PID.match(line)
            if found:
                reported.append(int(found.group(1)))
            blank = 0
            continue
        for _ in range(blank):
            echo("")
        blank = 0
        echo(line)


class _DeathWatch(threading.Thread):
    """Watches the ranks' pids as they record them; `ended` lists (rank, pid) in the order they
    ended (those that end together in one wake-up, by rank)."""

    def __init__(self, status: Path, ranks: int, proc):
        super().__init__(daemon=True)
        self.status, self.ranks, self.proc = status, ranks, proc
        self.ended: list[tuple[int, int]] = []

    def run(self) -> None:
        if not hasattr(os, "pidfd_open"):
            return
        poller = select.poll()
        fds: dict[int, tuple[int, int]] = {}
        seen: set[int] = set()
        while True:
            for rank in range(self.ranks):
                if rank in seen:
                    continue
                pid = _read_int(self.status / f"rank-{rank}.pid")
                if pid is None:
                    continue
                seen.add(rank)
                try:
                    fd = os.pidfd_open(pid)
                except OSError:        # already gone
                    self.ended.append((rank, pid))
                    continue
                fds[fd] = (rank, pid)
                poller.register(fd, select.POLLIN)
            if fds:
                ready = sorted(fds[fd] for fd, _ in poller.poll(20))
                for rank, pid in ready:
                    fd = next(f for f, v in fds.items() if v == (rank, pid))
                    poller.unregister(fd)
                    os.close(fd)
                    del fds[fd]
                    self.ended.append((rank, pid))
            else:
                time.sleep(0.02)
            if self.proc.poll() is not None and not fds:
                return
            if self.proc.poll() is not None and len(seen) < self.ranks:
                # mpiexec is gone and some rank never started: nothing more will come
                for fd, v in fds.items():
                    os.close(fd)
                    self.ended.append(v)
                return


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
