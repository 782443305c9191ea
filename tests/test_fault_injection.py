"""Fault injection, kept in CI (issue 13): netspec killed by SIGKILL while it writes a checkpoint,
its weights or a build folder leaves the previous results whole and loadable, and the next run
into the same place leaves no temporary file or folder behind.

Deterministic kills use the NETSPEC_FAULT points of netspec/outdirs.py (the exact moments: half a
file written, a file written but not renamed, a build folder written but not swapped in, swapped
in but the old one not removed, moved aside without an atomic exchange). Random kills come from a
thread in the child that kills it after a random delay once writing has begun, and from a
NETSPEC_FAULT point at a random write; what they assert holds whatever moment they hit.
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest

from netspec.cli import main
from netspec.outdirs import BUILD_MARKER, RUN_MARKER
from netspec.runtime.checkpoint import load_arrays
from netspec.testing.hostile import run_limited, run_netspec
from netspec.training.data import digits_raw
from netspec.training.trainer import read_checkpoint

ROOT = Path(__file__).resolve().parent.parent
KILLED = -9        # the exit status of a process killed by SIGKILL, as Outcome.rc gives it

SMALL = """
network small(classes=10) {
    input image: 1@8x8
    image -> conv(4, 3, pad=same, act=relu) -> maxpool(2) -> flatten
          -> dense(16, act=relu) -> dropout(0.2) -> dense(classes) -> softmax -> out
    train { optimizer = adam(lr=0.01)  batch = 32  epochs = 2 }
}
"""

# Run netspec's command line and kill it DELAY seconds after a file matching GLOB appears in FOLDER.
KILL_LATER = """
import os, signal, sys, threading, time
from pathlib import Path
delay, folder, pattern = float(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
def kill_later():
    while not (folder.is_dir() and any(folder.glob(pattern))):
        time.sleep(0.001)
    time.sleep(delay)
    os.kill(os.getpid(), signal.SIGKILL)
threading.Thread(target=kill_later, daemon=True).start()
from netspec.cli import main
sys.exit(main(sys.argv[4:]))
"""

# netspec's command line on a system without an atomic exchange of two folders
NO_EXCHANGE = """
import sys
from netspec import outdirs
outdirs._exchange = lambda a, b: False
from netspec.cli import main
sys.exit(main(sys.argv[1:]))
"""


def hidden(folder: Path) -> list[str]:
    """Hidden entries but the markers: what a killed run leaves."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")
                  and p.name not in (BUILD_MARKER, RUN_MARKER))


def compiled(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- compile

@pytest.fixture
def builds(tmp_path, monkeypatch, capsys):
    """A project with mlp.net, its build folder at build/mlp (batch 1), and the build folders of
    batch 2 and 3 for comparison: {batch: files}."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlp.net").write_text((ROOT / "specs" / "mlp.net").read_text())
    versions = {}
    for batch in (2, 3, 1):
        assert main(["compile", "mlp.net", "-o", "build/mlp", "--batch", str(batch)]) == 0
        versions[batch] = compiled(tmp_path / "build" / "mlp")
        assert f"batch {batch}" in versions[batch]["summary.txt"].decode()
    capsys.readouterr()
    return versions


@pytest.mark.parametrize("point", ["build_folder:partial", "build_folder:before_swap",
                                   "build_folder:after_swap"])
def test_a_kill_while_compile_writes_leaves_a_whole_build_folder(tmp_path, builds, point):
    build = tmp_path / "build"
    out = run_netspec("compile", "mlp.net", "-o", "build/mlp", "--batch", "2", cwd=tmp_path,
                      env={"NETSPEC_FAULT": point}, timeout=120)
    assert out.rc == KILLED, str(out)
    # the old build whole, or (killed after the swap) the new one whole: never a mix
    want = 2 if point == "build_folder:after_swap" else 1
    assert compiled(build / "mlp") == builds[want]
    left = hidden(build)
    assert len(left) == 1 and left[0].startswith(".mlp.") and (build / left[0] / BUILD_MARKER).is_file()
    assert main(["compile", "mlp.net", "-o", "build/mlp", "--batch", "3"]) == 0
    assert compiled(build / "mlp") == builds[3] and hidden(build) == []


def test_without_an_atomic_exchange_a_kill_between_the_renames_keeps_both_builds(tmp_path, builds,
                                                                                monkeypatch):
    build = tmp_path / "build"
    out = run_limited([sys.executable, "-c", NO_EXCHANGE, "compile", "mlp.net", "-o", "build/mlp",
                       "--batch", "2"], cwd=tmp_path, timeout=120,
                      env={**os.environ, "NETSPEC_FAULT": "build_folder:between_renames"})
    assert out.rc == KILLED, str(out)
    # the build folder has moved aside, whole, beside the whole new one; the next compile
    # puts a build in place and removes both
    assert not (build / "mlp").exists()
    aside = sorted(compiled(build / name)["summary.txt"] for name in hidden(build))
    assert aside == sorted([builds[1]["summary.txt"], builds[2]["summary.txt"]])
    from netspec import outdirs
    monkeypatch.setattr(outdirs, "_exchange", lambda a, b: False)
    assert main(["compile", "mlp.net", "-o", "build/mlp", "--batch", "3"]) == 0
    assert compiled(build / "mlp") == builds[3] and hidden(build) == []
    assert main(["compile", "mlp.net", "-o", "build/mlp"]) == 0        # the fallback's own swap
    assert compiled(build / "mlp") == builds[1] and hidden(build) == []


def test_kills_at_random_moments_of_compile_leave_a_whole_build_folder(tmp_path, builds):
    build = tmp_path / "build"
    rng = random.Random()
    for _ in range(3):
        delay = rng.uniform(0, 0.12)   # writing takes some 50-100 ms: most kills land in it
        out = run_limited([sys.executable, "-c", KILL_LATER, delay, build, ".mlp.*", "compile",
                           "mlp.net", "-o", "build/mlp", "--batch", "2"], cwd=tmp_path, timeout=120)
        assert out.rc in (0, KILLED), str(out)
        assert compiled(build / "mlp") in (builds[1], builds[2]), f"killed after {delay:.4f} s"
        assert main(["compile", "mlp.net", "-o", "build/mlp"]) == 0
        assert compiled(build / "mlp") == builds[1] and hidden(build) == [], f"after {delay:.4f} s"


# ---------------------------------------------------------------- train

@pytest.fixture
def project(tmp_path):
    (tmp_path / "small.net").write_text(SMALL)
    x, y = digits_raw()
    np.savez(tmp_path / "d.npz", x=x[:200].astype(np.uint8), y=y[:200])
    return tmp_path


def train(project, *flags, fault=None):
    return run_netspec("train", "small.net", "--data", "d.npz", "-o", "run", *flags, cwd=project,
                       env={"NETSPEC_FAULT": fault} if fault else None, timeout=300)


def checkpoint_epoch(run: Path) -> int:
    return json.loads(read_checkpoint(run / "checkpoint.safetensors")[1]["state"])["epoch"]


@pytest.mark.slow
def test_kills_while_train_writes_keep_the_last_checkpoint_and_weights(project):
    run = project / "run"
    out = train(project, "--epochs", "1")
    assert out.rc == 0, str(out)
    first = load_arrays(run / "weights.safetensors")[0]
    # killed as epoch 3's checkpoint is renamed into place: epoch 2's stays
    out = train(project, "--epochs", "3", "--resume",
                fault="write_atomic:before_replace:checkpoint.safetensors:2")
    assert out.rc == KILLED, str(out)
    assert checkpoint_epoch(run) == 2
    assert [n.startswith(".checkpoint.safetensors.") for n in hidden(run)] == [True]
    # resumed, and killed half way through writing the weights: the old ones stay
    out = train(project, "--epochs", "3", "--resume", fault="write_atomic:partial:weights.safetensors")
    assert out.rc == KILLED, str(out)
    assert "removed 1 temporary file(s) an interrupted run left in run" in out.stdout
    assert checkpoint_epoch(run) == 3
    weights = load_arrays(run / "weights.safetensors")[0]
    assert weights.keys() == first.keys() and all(np.array_equal(weights[k], first[k]) for k in first)
    assert [n.startswith(".weights.safetensors.") for n in hidden(run)] == [True]
    # and the run goes on to the end, leaving nothing behind
    out = train(project, "--epochs", "4", "--resume")
    assert out.rc == 0, str(out)
    assert json.loads((run / "metrics.json").read_text())["epochs_run"] == 4
    assert checkpoint_epoch(run) == 4 and hidden(run) == []
    assert not all(np.array_equal(v, first[k]) for k, v in load_arrays(run / "weights.safetensors")[0].items())


def test_kills_at_random_moments_of_training_leave_loadable_results(project):
    run = project / "run"
    rng = random.Random()
    point = rng.choice(["write_atomic:partial", "write_atomic:before_replace"])
    nth = rng.randint(1, 15)         # a 3-epoch run makes 19 writes: the marker, 5 per epoch, 3 at the end
    kills = [train(project, "--epochs", "3", fault=f"{point}::{nth}")]
    delay = rng.uniform(0, 1.5)
    flags = ["--epochs", "5", *(["--resume"] if (run / "checkpoint.safetensors").exists() else [])]
    kills.append(run_limited([sys.executable, "-c", KILL_LATER, delay, run, "*checkpoint.safetensors*",
                              "train", "small.net", "--data", "d.npz", "-o", "run", *flags],
                             cwd=project, timeout=300))
    where = f"killed at {point}::{nth}, then after {delay:.2f} s"
    assert kills[0].rc == KILLED, f"{where}\n{kills[0]}"
    assert kills[1].rc in (0, KILLED), f"{where}\n{kills[1]}"
    for name in ("checkpoint.safetensors", "weights.safetensors"):
        if (run / name).exists():
            assert load_arrays(run / name)[0], where
    flags = ["--epochs", "6", *(["--resume"] if (run / "checkpoint.safetensors").exists() else [])]
    out = train(project, *flags)
    assert out.rc == 0, f"{where}\n{out}"
    assert checkpoint_epoch(run) == 6 and hidden(run) == [], where
    assert json.loads((run / "metrics.json").read_text())["epochs_run"] == 6
