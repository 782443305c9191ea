"""The harness of the hostile tests measures what it claims: the child's own peak memory, its
time limit and its memory limit (netspec/testing/hostile.py)."""

from __future__ import annotations

import sys

import numpy as np

from netspec.testing.hostile import run_limited, run_netspec

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def test_the_peak_is_the_childs_own_not_the_parents(tmp_path):
    parent = np.ones(50_000_000)              # 400 MB resident here, in the test process
    parent[::512] = 2
    out = run_netspec("check", ROOT / "specs" / "lenet5.net", cwd=tmp_path)
    assert out.rc == 0, out
    assert 10 < out.peak_mb < 300, out        # python + lark, not the 400 MB above
    grow = run_limited([sys.executable, "-c", "import numpy as np, time\n"
                        "a = np.ones(40_000_000); time.sleep(0.3)"], cwd=tmp_path)
    assert grow.rc == 0 and 300 < grow.peak_mb < 600, grow     # 320 MB of float64
    assert parent.sum() > 0


def test_the_time_limit_kills_the_whole_group(tmp_path):
    out = run_limited([sys.executable, "-c", "import time; time.sleep(60)"], cwd=tmp_path, timeout=1)
    assert out.timed_out and out.rc is None and out.seconds < 10, out


def test_the_memory_limit_holds(tmp_path):
    out = run_limited([sys.executable, "-c", "import numpy as np; np.ones(10**9)"], cwd=tmp_path,
                      memory_mb=1024)
    assert out.rc == 1 and "Unable to allocate" in out.stderr, out
    assert out.peak_mb < 1024, out
