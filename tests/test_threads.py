"""How the CPU kernels' threads wait and how many there are (runtime/cpu/threads.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numba
import pytest

from netspec.runtime.cpu import threads

# a fresh process: the layer and OpenMP's wait policy are fixed when Numba's pool starts
REPORT = """
import json, os, sys, numba, numpy as np
from numba import njit, prange
import netspec.runtime.cpu
from netspec.runtime.cpu.context import runtime_stamp
@njit(parallel=True)
def total(a):
    s = 0.0
    for i in prange(a.size):
        s += a[i]
    return s
assert total(np.ones(1000)) == 1000.0
print(json.dumps({"layer": numba.threading_layer(), "threads": numba.get_num_threads(),
                  "cache": numba.config.CACHE_DIR.endswith(runtime_stamp()),
                  **{k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}}))
"""


def run_probe(**env) -> dict:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("OMP_", "GOMP_", "KMP_", "NUMBA_THREADING", "NUMBA_NUM_THREADS",
                                  "NETSPEC_THREADS", "NETSPEC_NUM_THREADS"))}
    res = subprocess.run([sys.executable, "-c", REPORT], env={**clean, **env}, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_each_setting_reaches_numbas_pool():
    passive = run_probe(NETSPEC_THREADS="passive")
    assert passive == {"layer": "omp", "threads": min(threads.usable_cores(), numba.config.NUMBA_NUM_THREADS),
                       "OMP_WAIT_POLICY": "passive", "GOMP_SPINCOUNT": "0", "cache": True}
    chosen = run_probe(NETSPEC_THREADS="workqueue", NETSPEC_NUM_THREADS="1")
    assert chosen == {"layer": "workqueue", "threads": 1, "OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None,
                      "cache": True}


@pytest.mark.parametrize("load, policy", [(0.0, "spin"), (0.4, "spin"), (0.6, "passive"), (9.0, "passive")])
def test_auto_spins_on_a_quiet_machine_and_sleeps_on_a_busy_one(monkeypatch, load, policy):
    monkeypatch.setattr(os, "getloadavg", lambda: (load, 0.0, 0.0))
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    environ = {"NUMBA_NUM_THREADS": "2"}        # leaves this process's pool alone
    assert threads.configure(environ) == (policy, None)
    assert environ.get("OMP_WAIT_POLICY") == ("passive" if policy == "passive" else None)


def test_the_users_own_openmp_variables_win():
    # NUMBA_NUM_THREADS given: configure leaves the thread count (and this process's pool) alone
    environ = {"NETSPEC_THREADS": "passive", "OMP_WAIT_POLICY": "active", "GOMP_SPINCOUNT": "123",
               "NUMBA_NUM_THREADS": "2"}
    assert threads.configure(environ) == ("passive", None)
    assert environ["OMP_WAIT_POLICY"] == "active" and environ["GOMP_SPINCOUNT"] == "123"
    assert environ["KMP_BLOCKTIME"] == "0"       # the one the user did not set


@pytest.mark.parametrize("load, cores, free", [(0.0, 8, 8), (2.6, 8, 5), (7.9, 8, 1), (30.0, 2, 1),
                                               (0.4, 2, 2)])
def test_free_cores_are_the_usable_ones_less_the_load(monkeypatch, load, cores, free):
    monkeypatch.setattr(os, "getloadavg", lambda: (load, 0.0, 0.0))
    monkeypatch.setattr(threads, "usable_cores", lambda: cores)
    assert threads.free_cores() == free
    assert threads.thread_count("free") == free and threads.thread_count("all") == cores
    assert threads.thread_count("3") == 3


@pytest.mark.parametrize("name, value", [("NETSPEC_THREADS", "fast"), ("NETSPEC_NUM_THREADS", "0"),
                                         ("NETSPEC_NUM_THREADS", "many")])
def test_an_unknown_setting_is_one_line_and_exit_1(name, value, tmp_path):
    cli = "import sys; from netspec.cli import main; sys.exit(main(sys.argv[1:]))"
    res = subprocess.run([sys.executable, "-c", cli, "train", "specs/lenet5.net", "--epochs", "1",
                          "-o", str(tmp_path / "run")], env={**os.environ, name: value},
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stderr
    assert res.stderr == f"error: {name}={value!r}: " + res.stderr.split(": ", 2)[2]
    assert res.stderr.count("\n") == 1 and not (tmp_path / "run").exists()
    with pytest.raises(threads.ThreadSettingError, match=name):
        threads.configure({name: value})
