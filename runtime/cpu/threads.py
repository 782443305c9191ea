"""How the CPU kernels' threads wait and how many there are (NETSPEC_THREADS, NETSPEC_NUM_THREADS).

configure() runs on import of runtime/cpu, before any kernel runs: OpenMP reads its wait policy when
libgomp is loaded, which Numba does when its thread pool starts (the first parallel kernel).
A process that loaded libgomp before (PyTorch does) keeps the policy it started with.

NETSPEC_THREADS, how idle threads wait between parallel kernels:
  auto       (the default) spin on a quiet machine, passive on a busy one: busy when the 1-minute
             load average leaves fewer free cores than this process may use, read at start.
  spin       Numba's default as is (OpenMP threads spin a few hundred microseconds for the next
             kernel): fastest on an idle machine, many times slower beside another busy process.
  passive    OpenMP, sleeping at once (OMP_WAIT_POLICY=passive): a kernel waits for its threads
             to wake, but they take no core from anyone between kernels.
  workqueue  Numba's own pool (no OpenMP).
  tbb        Intel TBB (needs the tbb package).
NETSPEC_NUM_THREADS: a number, `all` (the cores this process may use) or `free` (those cores
less the 1-minute load average, at least 1; read once, at start).
Variables the user set (OMP_WAIT_POLICY, GOMP_SPINCOUNT, KMP_BLOCKTIME, NUMBA_THREADING_LAYER,
NUMBA_NUM_THREADS) win over these.
"""

from __future__ import annotations

import os

import numba
import numba.core.config

from ..target import TargetUnavailable

DEFAULT_POLICY = "auto"
DEFAULT_COUNT = "all"

# the variables each policy sets (GNU's libgomp reads the first two, Intel's OpenMP the last)
POLICIES = {
    "auto": {},
    "spin": {},
    "passive": {"OMP_WAIT_POLICY": "passive", "GOMP_SPINCOUNT": "0", "KMP_BLOCKTIME": "0"},
    "workqueue": {},
    "tbb": {},
}
LAYERS = {"passive": "omp", "workqueue": "workqueue", "tbb": "tbb"}
# (policy, threads) as configure() chose them, for reports (tools/bench_busy.py)
chosen: tuple[str, int | None] | None = None
# a bad setting seen at start, raised when the target is used (require_valid_settings)
setting_error: Exception | None = None


class ThreadSettingError(TargetUnavailable):
    """A NETSPEC_THREADS or NETSPEC_NUM_THREADS value netspec does not know (the CLI says it
    in one line, as for any target that cannot start)."""


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, so a container's or taskset's limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                     # not on Linux
        return os.cpu_count() or 1


def free_cores() -> int:
    """Usable cores less the 1-minute load average (other processes' running threads), at least 1."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    return max(1, min(usable_cores(), round(usable_cores() - load)))


def thread_count(value: str) -> int:
    """NETSPEC_NUM_THREADS's value as a number of threads."""
    if value == "all":
        return usable_cores()
    if value == "free":
        return free_cores()
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise ThreadSettingError(f"NETSPEC_NUM_THREADS={value!r}: expected a positive number, 'all' or 'free'")


def configure(environ=os.environ) -> tuple[str, int | None]:
    """Set the wait policy's variables and Numba's layer and thread count; (policy, threads) where
    policy is auto's choice and threads None when the user's NUMBA_NUM_THREADS decides."""
    global chosen
    policy = environ.get("NETSPEC_THREADS", "").strip().lower() or DEFAULT_POLICY
    if policy not in POLICIES:
        raise ThreadSettingError(f"NETSPEC_THREADS={policy!r}: expected one of {', '.join(POLICIES)}")
    if policy == "auto":
        # spinning threads cost nothing on idle cores and save each kernel a wake-up; beside a
        # busy process they take its cores (and it ours): 10x slower epochs (BENCHMARKS.md)
        policy = "passive" if free_cores() < usable_cores() else "spin"
    for name, value in POLICIES[policy].items():
        environ.setdefault(name, value)
    if policy in LAYERS and not environ.get("NUMBA_THREADING_LAYER"):
        # in the environment too: Numba re-reads its config from it when a NUMBA_ variable changes
        environ["NUMBA_THREADING_LAYER"] = numba.config.THREADING_LAYER = LAYERS[policy]
    if environ is os.environ:
        # Numba's compiler re-reads every NUMBA_ variable when one changed since it last looked,
        # resetting what was set in numba.config directly (context.py's cache folder, set after
        # this): let it see the change now
        numba.core.config.reload_config()
    if environ.get("NUMBA_NUM_THREADS"):
        chosen = policy, None
        return chosen
    count = min(thread_count(environ.get("NETSPEC_NUM_THREADS", "").strip().lower() or DEFAULT_COUNT),
                numba.config.NUMBA_NUM_THREADS)
    if count < numba.config.NUMBA_NUM_THREADS:    # (this starts the pool: the variables are set)
        numba.set_num_threads(count)
    chosen = policy, count
    return chosen


def configure_at_start() -> None:
    """configure() on import, keeping a bad setting's error for the target's first use: the
    import must not fail (the CLI lists the targets before it runs a command)."""
    global setting_error
    try:
        configure()
    except ThreadSettingError as e:
        setting_error = e


def require_valid_settings() -> None:
    """The CPU target's require_device: refuse to run under a setting configure() refused."""
    if setting_error is not None:
        raise setting_error
