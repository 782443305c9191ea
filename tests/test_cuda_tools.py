"""The CUDA target's tools (issue 15), without a GPU: tools/cuda_registers.py reads real
assembler reports of the CUDA kernels for sm_90; tools/bench_gpu.py refuses to run with no
GPU, refuses bad arguments as usage errors, and its measurement runs end to end on the CPU
target and PyTorch's CPU device, both sides from the same weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "tools"


def run_tool(name, *args, env=None):
    return subprocess.run([sys.executable, str(TOOLS / name), *map(str, args)], capture_output=True,
                          text=True, timeout=600, cwd=ROOT, env=env)


# ---------------------------------------------------------------- cuda_registers

def registers_of(tmp_path, *args, ops="conv"):
    """The tool's JSON records by kernel name (the cases of `ops`). The assembler it needs is
    the one inside nvJitLink, which numba-cuda[cu13] (a test dependency) installs: without it
    this fails, after checking that the tool says so and how to get one."""
    out = tmp_path / f"regs{len(list(tmp_path.iterdir()))}.json"
    done = run_tool("cuda_registers.py", "--ops", ops, "--json", out, *args)
    if done.returncode == 1 and "no PTX assembler" in done.stderr:
        assert "pip install" in done.stderr and "Traceback" not in done.stderr
        pytest.fail("no PTX assembler: install the test dependencies (numba-cuda[cu13] brings "
                    "nvJitLink's): " + done.stderr.strip())
    report = json.loads(out.read_text())
    assert report["arch"] == "sm_90"
    return done, {r["kernel"]: r for r in report["kernels"]}


@pytest.mark.slow
def test_cuda_registers_reads_registers_and_spills_from_the_assembler(tmp_path):
    done, free = registers_of(tmp_path)
    assert done.returncode == 0, done.stderr
    # without a GPU the wrappers take the tiled GEMMs for every conv case (depthwise convs, the
    # direct kernels', are another op): one kernel body, by name, forward and both backward
    assert "gemm._tiled_kernel.kernel" in free
    for name, r in free.items():
        for key in ("registers", "stack_frame_bytes", "spill_store_bytes", "spill_load_bytes"):
            assert type(r[key]) is int and r[key] >= 0, (name, key, r[key])
        assert 1 <= r["registers"] <= 255, (name, r["registers"])        # sm_90's range
        assert r["hot"] == name.startswith(("conv._conv", "gemm.")), name   # not bias_grad's sums
    # capped below what the heaviest kernel uses, the assembler must spill it, and say so
    heaviest = max(free.values(), key=lambda r: r["registers"])
    assert heaviest["registers"] > 32
    done, capped = registers_of(tmp_path, "--max-registers", 32, "--fail-on-spill")
    assert set(capped) == set(free)
    assert all(r["registers"] <= 32 for r in capped.values())
    spilled = capped[heaviest["kernel"]]
    assert spilled["spill_store_bytes"] > 0 and spilled["spill_load_bytes"] > 0
    assert spilled["stack_frame_bytes"] > 0      # spilled values live in the thread's stack frame
    assert done.returncode == 1 and f"hot kernel {heaviest['kernel']}" in done.stderr


@pytest.mark.slow
def test_cuda_registers_reads_the_fused_kernels_whose_extras_are_a_tuple(tmp_path):
    done, fused = registers_of(tmp_path, ops="fused")
    assert done.returncode == 0, done.stderr
    assert any(name.startswith("fused.") for name in fused), sorted(fused)
    assert any("(" in r["types"] for r in fused.values())      # the extras' tuple, written out


def test_cuda_registers_refuses_what_it_cannot_do(tmp_path):
    done = run_tool("cuda_registers.py", "--ops", "nosuchop")
    assert done.returncode == 2 and "unknown op(s) nosuchop" in done.stderr
    done = run_tool("cuda_registers.py", "--max-registers", 8)
    assert done.returncode == 2 and "16 to 255" in done.stderr
    done = run_tool("cuda_registers.py", "--json", tmp_path / "no_such_folder" / "regs.json")
    assert done.returncode == 2 and "no such folder" in done.stderr
    missing = tmp_path / "ptxas"
    done = run_tool("cuda_registers.py", "--ops", "relu", "--assembler", "ptxas",
                    env={**os.environ, "PTXAS": str(missing)})
    assert done.returncode == 1 and f"cannot run ptxas {missing}" in done.stderr
    assert "Traceback" not in done.stderr


# ---------------------------------------------------------------- bench_gpu

@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the no-GPU path is not")
def test_bench_gpu_without_a_gpu_says_so_in_one_line():
    done = run_tool("bench_gpu.py", "--phases", "infer")
    assert done.returncode == 1
    assert done.stderr.startswith("bench_gpu: no GPU") and len(done.stderr.strip().splitlines()) == 1
    assert done.stdout == ""


@pytest.mark.parametrize("args, message", [
    (["--batch", "0"], "must be at least 1"),
    (["--batch", "two"], "not an integer"),
    (["--phases", "infer,backward"], "--phases: backward"),
    (["--spec", "specs/no_such.net"], "no such file"),
    (["--json", "no_such_folder/gpu.json"], "no such folder"),
    (["--budget", "0"], "--budget must be positive"),
    (["--frobnicate"], "unrecognized arguments"),
])
def test_bench_gpu_usage_errors_exit_2(args, message):
    done = run_tool("bench_gpu.py", *args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def test_bench_gpu_measures_both_sides_from_the_same_weights_on_the_cpu():
    """The measurement, with the CPU target and PyTorch's CPU device standing in for the GPU:
    both sides must give the same probabilities and loss before they are timed."""
    sys.path.insert(0, str(TOOLS))
    import bench_gpu
    args = bench_gpu.parse_args(["--spec", "specs/lenet5.net", "--batch", "8", "--repeats", "3",
                                 "--warmup", "1", "--budget", "5"])
    records = []
    on_cpu = SimpleNamespace(target="cpu", device="cpu", sync_netspec=lambda: None,
                             sync_torch=lambda: None)
    bench_gpu.measure_spec(args.spec[0], args, torch, records.append, on_cpu)
    assert [(r["phase"], r["batch"], r["error"]) for r in records] == [("infer", 8, None), ("train", 8, None)]
    for r in records:
        assert r["max_abs_diff"] < 1e-4, r          # float32 sides, one network's weights
        assert r["netspec_ms"] > 0 and r["torch_ms"] > 0 and r["repeats"] >= 3
        assert r["ratio"] == pytest.approx(r["netspec_ms"] / r["torch_ms"])
    assert bench_gpu.table(records).splitlines()[2].split()[:3] == ["lenet5", "infer", "8"]
