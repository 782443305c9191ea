"""The AVX2 code path of the conv micro-kernels, tested on any machine."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.slow      # a cold compile of every conv kernel for the other vector width: ~50 s
def test_the_avx2_code_path_too(tmp_path):
    """The micro-kernels pick their vector width from the CPU; run this file's float32
    cases as a Haswell (AVX2, no AVX-512) would, so both widths are tested on any machine."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, NUMBA_CPU_NAME="haswell", NETSPEC_CACHE_DIR=str(tmp_path / "cache"),
               NUMBA_CPU_FEATURES="+avx,+avx2,+fma,+sse4.2,+popcnt,+f16c,+bmi,+bmi2")
    env.pop("NUMBA_CACHE_DIR", None)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                          str(Path(__file__).with_name("test_kernels_conv.py")), "-k", "float32 and not avx2"],
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
