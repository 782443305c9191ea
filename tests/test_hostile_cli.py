"""Hostile command lines (issue 13, classes 6 and 7): flags with huge, negative and non-finite
values, diagrams Graphviz cannot draw, a closed stdout, and the last line of defence in main().

Each must end with exit 1 or 2 and a message naming the problem (or succeed where the input is
legitimate), never exit 3 ("internal error"). Runs that could take time or memory go through
netspec.testing.hostile: a subprocess under a memory limit and a timeout.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import click
import graphviz
import pytest

import netspec.cli
import netspec.report.render
from netspec.cli import EXIT_BROKEN_PIPE, MAX_COUNT, cli, main
from netspec.report.render import DiagramError, pipe
from netspec.testing.hostile import assert_refused, changes, run_netspec, tree_state

ROOT = Path(__file__).resolve().parent.parent
LENET = str(ROOT / "specs" / "lenet5.net")
MLP = str(ROOT / "specs" / "mlp.net")


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "internal error" not in err, err
    return rc, out, err


def chain_spec(folder: Path, relus: int) -> Path:
    """`x -> relu * N -> out`, in runs of at most 10,000 (the repeat limit)."""
    runs = " -> ".join(f"relu * {min(10_000, relus - i)}" for i in range(0, relus, 10_000))
    path = folder / f"chain{relus}.net"
    path.write_text(f"network chain() {{\n    input x: 16\n    x -> {runs} -> out\n}}\n")
    return path


# ------------------------------------------------------------------ numeric flags

def test_summary_at_a_batch_of_ten_to_the_fifteen_prints_its_exact_totals(tmp_path):
    """Python's integers do not overflow: the totals are printed; only the memory planner, whose
    arrays are int64, says it cannot plan that much (it was OverflowError, exit 3)."""
    out = run_netspec("summary", LENET, "--batch", str(10**15), cwd=tmp_path, memory_mb=2048, timeout=60)
    assert out.rc == 0, out
    assert "MACs:                 416520000.0T (416,520,000,000,000,000,000 at batch 1000000000000000)" in out.stdout
    assert "Inference memory:     37.6 EB" in out.stdout
    assert ("Planned memory: not planned: the inference phase needs about 10^19 bytes of tensors at "
            "batch 1,000,000,000,000,000, more than any machine has") in out.stdout
    assert out.peak_mb < 1024, out


def test_summary_json_at_a_huge_batch_says_why_the_plan_is_missing(capsys):
    rc, out, _ = run(capsys, "summary", LENET, "--batch", MAX_COUNT, "--format", "json")
    assert rc == 0
    data = json.loads(out)
    assert data["totals"]["macs"] == 416_520 * MAX_COUNT
    assert data["planned_memory"] == {}
    assert data["planned_memory_note"].startswith("not planned: the inference phase needs about 10^22")


def test_compile_at_a_batch_no_machine_holds_is_refused_before_writing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc, _, err = run(capsys, "compile", LENET, "--batch", MAX_COUNT, "-o", "build")
    assert rc == 1
    assert "error: not enough memory for netspec compile: the inference phase needs about 10^22 bytes" in err
    assert "hint: use a smaller --batch" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [
    ["summary", LENET, "--batch", str(10**18 + 1)],
    ["summary", LENET, "--batch", str(10**400)],
    ["summary", LENET, "--depth", str(10**19)],
    ["compile", LENET, "--batch", str(2**64)],
    ["render", LENET, "-o", "x.svg", "--depth", str(10**18 + 1)],
    ["train", MLP, "--epochs", str(10**18 + 1)],
    ["train", MLP, "--batch", str(2**63)],
    ["train", MLP, "--seed", str(10**30)],
])
def test_integer_flags_past_ten_to_the_eighteen_are_usage_errors(argv, capsys):
    rc, _, err = run(capsys, *argv)
    assert rc == 2
    assert "is not in the range" in err and "1000000000000000000" in err


def test_every_integer_flag_of_every_command_has_the_same_bound():
    """The class, not the cases: no integer flag is unbounded."""
    found = []
    for name, cmd in cli.commands.items():
        for param in cmd.params:
            if isinstance(param.type, click.types.IntParamType):
                found.append((name, param.name))
                assert isinstance(param.type, click.IntRange) and param.type.max == MAX_COUNT, (name, param.name)
    assert ("summary", "batch") in found and ("train", "epochs") in found and ("train", "seed") in found


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "NaN", "1e400", "Infinity"])
def test_train_refuses_a_learning_rate_that_is_not_finite(value, capsys):
    rc, _, err = run(capsys, "train", MLP, "--lr", value, "--epochs", "1")
    assert rc == 2
    assert f"Invalid value for '--lr': '{value}' is not a finite number" in err


def test_every_float_flag_of_every_command_refuses_nan_and_infinity(capsys):
    """Click's FloatRange lets nan past any bound: every float flag uses FiniteFloat instead."""
    checked = 0
    for name, cmd in cli.commands.items():
        for param in cmd.params:
            if isinstance(param.type, click.types.FloatParamType):
                assert isinstance(param.type, netspec.cli.FiniteFloat), (name, param.name)
                for value in ("nan", "inf", "-inf"):
                    rc, _, err = run(capsys, name, MLP, param.opts[0], value)
                    assert rc == 2 and f"'{value}' is not a finite number" in err, (name, param.name, err)
                    checked += 1
    assert checked == 6   # train's --lr and --validation-split


def test_a_validation_split_of_nan_is_a_usage_error(capsys):
    rc, _, err = run(capsys, "train", MLP, "--validation-split", "nan")
    assert rc == 2 and "'--validation-split': 'nan' is not a finite number" in err


@pytest.mark.parametrize("augment,words", [
    ("shift(amount=1e300)", "shift amount must be a number >= 0 and <= 1, got 1e+300"),
    ("crop(amount=1e300)", "crop amount must be a number >= 0 and <= 10000, got 1e+300"),
    ("shift(amount=nan)", 'shift amount must be a number >= 0 and <= 1, got "nan"'),
    ("brightness(amount=-1)", "brightness amount must be a number >= 0, got -1"),
])
def test_augmentation_amounts_are_bounded_before_training(augment, words, capsys):
    """A shift of 1e300 image sizes was exit 3 at the first batch (an int64 bound in numpy)."""
    rc, _, err = run(capsys, "train", MLP, "--augment", augment, "--epochs", "1")
    assert rc == 2 and words in err


@pytest.mark.parametrize("memory,words", [
    ("1e400", "memory size '1e400' is too large (the limit is 1 EB, 10^18 bytes)"),
    ("1001PB", "memory size '1001PB' is too large"),
    ("nan", "cannot read memory size 'nan'"),
    ("inf", "cannot read memory size 'inf'"),
])
def test_summary_refuses_a_memory_budget_past_an_exabyte(memory, words, capsys):
    rc, _, err = run(capsys, "summary", LENET, "--memory", memory)
    assert rc == 2 and words in err


def test_a_memory_budget_of_one_exabyte_is_read_exactly(capsys):
    rc, out, _ = run(capsys, "summary", LENET, "--memory", "1EB", "--format", "json")
    assert rc == 0
    totals = json.loads(out)["totals"]
    assert totals["memory_budget"] == 10**18
    assert totals["max_batch_inference"] == (10**18 - 61_706 * 4) // 37_632


def test_a_long_memory_text_is_refused_at_once(tmp_path):
    """The pattern used to backtrack quadratically: 30,000 digits took 97 s."""
    out = run_netspec("summary", LENET, "--memory", "1" * 100_000 + "x", cwd=tmp_path, timeout=60)
    assert_refused(out, "cannot read memory size", "--memory", codes=(2,), seconds=30)
    assert len(out.stderr) < 1000   # the text is not echoed whole


# ------------------------------------------------------------------ diagrams

def test_render_of_twenty_thousand_chained_relus(tmp_path):
    """It exited 1 printing nothing: a 140 KB label ('relu + relu + ...') that dot refused, and
    the broken pipe swallowed. The run is now one box, counted."""
    spec = chain_spec(tmp_path, 20_000)
    before = tree_state(tmp_path)
    out = run_netspec("render", spec, "-o", "chain.svg", cwd=tmp_path, timeout=120)
    assert out.rc == 0, out
    assert out.stdout == "rendered chain -> chain.svg\n"
    svg = (tmp_path / "chain.svg").read_text()
    assert ">relu x20000</text>" in svg and "relu + relu" not in svg
    assert changes(before, tree_state(tmp_path)) == ["+ chain.svg"]
    assert out.peak_mb < 1500, out


def test_compile_of_three_thousand_chained_relus_draws_its_diagram(tmp_path):
    """3,000 relus made a 21 KB label, past Graphviz's 16 KB."""
    spec = chain_spec(tmp_path, 3_000)
    out = run_netspec("compile", spec, "-o", "build", cwd=tmp_path, timeout=120)
    assert out.rc == 0, out
    assert out.stderr == ""
    assert ">relu x3000</text>" in (tmp_path / "build" / "diagram.svg").read_text()


def test_a_diagram_with_too_many_boxes_is_refused_with_a_hint(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(netspec.report.render, "MAX_DIAGRAM_BOXES", 8)   # lenet5 draws 9 boxes
    rc, _, err = run(capsys, "render", LENET, "-o", tmp_path / "x.svg")
    assert rc == 1
    assert err == ("error: the diagram of lenet5 would have 9 boxes, more than Graphviz can lay out "
                   "in reasonable time (the limit is 8)\n"
                   "hint: render to a .dot file and lay it out with another tool\n")
    assert not (tmp_path / "x.svg").exists()
    rc, _, _ = run(capsys, "render", LENET, "-o", tmp_path / "x.dot")   # the .dot has no limit
    assert rc == 0 and (tmp_path / "x.dot").read_text().startswith("digraph lenet5")


def test_the_box_limit_hint_names_depth_when_the_network_has_blocks(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(netspec.report.render, "MAX_DIAGRAM_BOXES", 20)
    rc, _, err = run(capsys, "render", ROOT / "specs" / "resnet34.net", "-o", tmp_path / "x.svg")
    assert rc == 1 and "hint: fold blocks with --depth 0 (or a small --depth)" in err
    rc, _, _ = run(capsys, "render", ROOT / "specs" / "resnet34.net", "-o", tmp_path / "x.svg", "--depth", "0")
    assert rc == 0   # folded: 6 stem boxes + 7 folded runs


def test_compile_writes_the_dot_source_of_a_diagram_it_cannot_draw(tmp_path, monkeypatch, capsys):
    """A picture is not worth failing the whole build folder for: the .dot and a note instead."""
    monkeypatch.setattr(netspec.report.render, "MAX_DIAGRAM_BOXES", 8)
    monkeypatch.chdir(tmp_path)
    rc, out, err = run(capsys, "compile", LENET, "-o", "build")
    assert rc == 0
    assert err == ("note: diagram.svg not drawn: the diagram of lenet5 would have 9 boxes, more than "
                   "Graphviz can lay out in reasonable time (the limit is 8); wrote diagram.dot "
                   "instead (hint: render to a .dot file and lay it out with another tool)\n")
    files = sorted(p.name for p in (tmp_path / "build").iterdir())
    assert "diagram.dot" in files and "diagram.svg" not in files and "summary.txt" in files
    assert "diagram.dot" in out


@pytest.mark.parametrize("where", ["label", "network", "block"])
def test_names_longer_than_graphviz_takes_are_drawn_shortened(where, tmp_path, capsys):
    """Graphviz refuses any quoted string over 16 KB: a 20,000-character label, network name or
    block name (each a node id, a cluster name or a label) ended in 'syntax error' or silence."""
    long = "a" * 20_000
    spec = {
        "label": f"network n() {{\n input x: 4\n x -> {long}: dense(4) -> out\n}}\n",
        "network": f"network {long}() {{\n input x: 4\n x -> dense(4) -> out\n}}\n",
        "block": f"block {long}() {{\n in x\n out x -> dense(4)\n}}\n"
                 f"network n() {{\n input x: 4\n x -> {long}() -> out\n}}\n",
    }[where]
    (tmp_path / "long.net").write_text(spec)
    for depth in ([], ["--depth", "0"]):
        rc, _, err = run(capsys, "render", tmp_path / "long.net", "-o", tmp_path / "long.svg", *depth)
        assert rc == 0, err
        svg = (tmp_path / "long.svg").read_text()
        assert "a" * 199 + "…" in svg and "a" * 201 not in svg


def test_a_failing_dot_is_reported_with_its_own_message():
    dot = graphviz.Digraph("broken")
    dot.body.append("\tthis is { not dot\n")
    with pytest.raises(DiagramError) as failed:
        pipe(dot, "svg")
    assert failed.value.message == "Graphviz's dot failed: Error: <stdin>: syntax error in line 4"
    assert "--depth 0" in failed.value.hint


def fake_dot(folder: Path, body: str) -> str:
    """A `dot` program that misbehaves, first on a PATH of its own."""
    folder.mkdir()
    script = folder / "dot"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


def test_a_crashing_dot_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", fake_dot(tmp_path / "bin", "echo 'Error: install_in_rank' >&2; kill -SEGV $$"))
    with pytest.raises(DiagramError) as failed:
        pipe(graphviz.Digraph("g"), "svg")
    assert failed.value.message == "Graphviz's dot failed: dot was killed by signal 11 after: Error: install_in_rank"


def test_a_dot_that_never_finishes_is_stopped(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", fake_dot(tmp_path / "bin", "exec sleep 60"))
    with pytest.raises(DiagramError) as failed:
        pipe(graphviz.Digraph("g"), "svg", timeout=1)
    assert failed.value.message == "Graphviz's dot did not finish laying out the diagram within 1 s"


def test_dot_warnings_still_reach_stderr(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("PATH", fake_dot(tmp_path / "bin", "cat > /dev/null; echo 'Warning: odd' >&2; echo '<svg/>'"))
    assert pipe(graphviz.Digraph("g"), "svg") == b"<svg/>\n"
    assert capfd.readouterr().err == "Warning: odd\n"


# ------------------------------------------------------------------ main()'s safety net

def closed_stdout_run(*argv) -> subprocess.CompletedProcess:
    """netspec with a stdout whose reader is gone before it writes (`| head -1` that has exited)."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([sys.executable, "-c", "import sys; from netspec.cli import main; "
                               "sys.exit(main(sys.argv[1:]))", *argv],
                              stdout=write, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(write)


@pytest.mark.parametrize("argv", [["check", LENET], ["summary", LENET], ["--help"]])
def test_a_closed_stdout_ends_quietly(argv):
    """It was exit 1 and nothing said, like a failure; now it is the shell's status for a
    command SIGPIPE ended (141), and still nothing on stderr: no traceback, no 'internal error'."""
    done = closed_stdout_run(*argv)
    assert done.returncode == EXIT_BROKEN_PIPE == 141
    assert done.stderr == b""


def test_a_broken_pipe_that_is_not_stdout_is_an_error(monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise BrokenPipeError(32, "Broken pipe")
    monkeypatch.setattr(netspec.cli, "build_graph", broken)
    rc, _, err = run(capsys, "check", LENET)
    assert rc == 1 and err == "error: Broken pipe\n"


def test_a_memory_error_anywhere_is_exit_one_with_a_hint(monkeypatch, capsys):
    def exhausted(*args, **kwargs):
        raise MemoryError("Unable to allocate 926. GiB for an array with shape (1000000000, 3, 3, 3)")
    monkeypatch.setattr(netspec.cli, "build_graph", exhausted)
    rc, _, err = run(capsys, "summary", LENET, "--batch", "4")
    assert rc == 1
    assert err == ("error: not enough memory for netspec summary: Unable to allocate 926. GiB for an "
                   "array with shape (1000000000, 3, 3, 3)\nhint: use a smaller --batch or input, or a "
                   "machine with more memory (netspec summary SPEC --memory SIZE shows the largest "
                   "batch that fits)\n")


def test_a_recursion_error_is_exit_one(monkeypatch, capsys):
    def deep(*args, **kwargs):
        raise RecursionError("maximum recursion depth exceeded")
    monkeypatch.setattr(netspec.cli, "build_graph", deep)
    rc, _, err = run(capsys, "check", LENET)
    assert rc == 1
    assert err.startswith("error: netspec check: the input is nested too deeply for netspec to follow\n")


def test_a_true_bug_is_still_exit_three(monkeypatch, capsys):
    def bug(*args, **kwargs):
        raise KeyError("norm")
    monkeypatch.setattr(netspec.cli, "build_graph", bug)
    assert main(["check", LENET]) == 3
    assert "internal error: KeyError: 'norm'" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["predict", "specs/mlp.net", "x.npy", "--draw=a\x00b"],
                                  ["check", "specs/lenet5.net\x00"], ["summary", "specs/mlp.net", "--set", "a=\x00"]])
def test_an_argument_holding_a_nul_byte_is_a_usage_error(argv, capsys):
    """No path or value can hold one (an OS passes none in argv); in-process callers could."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "NUL byte" in err and "internal error" not in err

