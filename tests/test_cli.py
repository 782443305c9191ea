"""The `netspec` command line: exit codes (0 ok, 1 bad spec, 2 bad usage), outputs, build folders."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from netspec.cli import build_graph, main

ROOT = Path(__file__).resolve().parent.parent
RESNET = str(ROOT / "specs" / "resnet34.net")
TOTAL = 21_306_826


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


def summary_json(capsys, *extra):
    rc, out, err = run(capsys, "summary", RESNET, "--format", "json", *extra)
    assert rc == 0, err
    return json.loads(out)


def layer(data, name):
    return next(l for l in data["layers"] if l["name"] == name)


def table_rows(text):
    """The layer rows of a summary table: the lines between the header rule and the end rule."""
    lines = text.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("---")) + 1
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("==="))
    return lines[start:end]


# ------------------------------------------------------------------ check / summary

def test_check_ok(capsys):
    rc, out, err = run(capsys, "check", RESNET)
    assert rc == 0, err
    assert "ok" in out and "resnet34" in out and f"{TOTAL:,}" in out
    assert err == ""


def test_summary_table_total(capsys):
    rc, out, err = run(capsys, "summary", RESNET)
    assert rc == 0, err
    assert "21,306,826" in out


def test_summary_json_totals(capsys):
    data = summary_json(capsys)
    assert data["totals"]["params"] == TOTAL
    assert data["network"] == "resnet34"


def test_summary_reports_the_planned_memory_beside_the_naive_sum(capsys):
    """The memory planner's arena for the lowered program, in the table and the JSON, equal
    to what the planner computes (and the inference arena at its lower bound)."""
    from netspec import pipeline
    from netspec.runtime.memory import plan_memory
    from netspec.runtime.targets import get_target
    rc, out, err = run(capsys, "summary", RESNET, "--batch", "4")
    assert rc == 0, err
    assert "Planned memory (batch 4" in out and "naive sum" in out and "lower bound" in out
    data = summary_json(capsys, "--batch", "4")["planned_memory"]
    program = pipeline.program(build_graph(RESNET)[1], training=True)
    for phase in ("infer", "train"):
        plan = plan_memory(program, phase, 4, get_target("cpu"))
        assert data[phase] == {"planned_peak_bytes": plan.arena_bytes, "naive_sum_bytes": plan.naive_bytes,
                               "lower_bound_bytes": plan.lower_bound_bytes}
    assert data["infer"]["planned_peak_bytes"] == data["infer"]["lower_bound_bytes"]
    assert data["train"]["planned_peak_bytes"] < data["train"]["naive_sum_bytes"] / 2


def test_set_classes_changes_the_dense_head(capsys):
    base = summary_json(capsys)
    data = summary_json(capsys, "--set", "classes=1000")
    assert layer(base, "dense1")["params"] == 512 * 10 + 10
    assert layer(data, "dense1")["params"] == 512 * 1000 + 1000
    assert data["totals"]["params"] == TOTAL + 512 * 990 + 990


def test_set_unknown_parameter_is_usage_error_with_did_you_mean(capsys):
    rc, out, err = run(capsys, "check", RESNET, "--set", "clases=1000")
    assert rc == 2
    assert "no parameter 'clases'" in err and "did you mean 'classes'?" in err


def test_set_bare_word_reaches_dense_as_a_symbol(capsys):
    # `abc` is read as a symbol (like `same`); dense units must then fail as a spec error
    rc, out, err = run(capsys, "check", RESNET, "--set", "classes=abc")
    assert rc == 1
    assert err.startswith(f"{RESNET}:23:38: error: dense: bad value for 'units'")
    assert "positive integer" in err and "'abc'" in err
    assert "hint: 'abc' was given with --set" in err


@pytest.mark.parametrize("value", ["", "(", "1 2", "=3"])
def test_set_unreadable_value_is_usage_error(capsys, value):
    rc, out, err = run(capsys, "check", RESNET, "--set", f"classes={value}")
    assert rc == 2
    assert "--set" in err


def test_set_without_equals_is_usage_error(capsys):
    rc, out, err = run(capsys, "check", RESNET, "--set", "classes")
    assert rc == 2 and "NAME=VALUE" in err


def test_input_override_changes_macs(capsys):
    base = summary_json(capsys)
    small = summary_json(capsys, "--input", "3@64x64")
    assert layer(small, "image")["shape"] == [3, 64, 64]
    assert small["totals"]["macs"] < base["totals"]["macs"]
    assert small["totals"]["params"] == TOTAL       # global_avgpool: same weights


@pytest.mark.parametrize("shape", ["3@0x5", "3@abc", "3@64x", "x"])
def test_input_bad_shape_is_usage_error(capsys, shape):
    rc, out, err = run(capsys, "check", RESNET, "--input", shape)
    assert rc == 2
    assert "--input" in err and "invalid literal" not in err


def test_input_unknown_name_is_usage_error(capsys):
    rc, out, err = run(capsys, "check", RESNET, "--input", "picture=3@64x64")
    assert rc == 2 and "no input named 'picture'" in err and "image" in err


def test_batch_zero_is_usage_error(capsys):
    rc, out, err = run(capsys, "summary", RESNET, "--batch", "0")
    assert rc == 2 and "--batch" in err


def test_memory_budget_reports_largest_batch(capsys):
    rc, out, err = run(capsys, "summary", RESNET, "--memory", "16GB")
    assert rc == 0, err
    assert "Largest batch in 16.0 GB" in out


def test_memory_unreadable_is_usage_error(capsys):
    rc, out, err = run(capsys, "summary", RESNET, "--memory", "lots")
    assert rc == 2 and "--memory" in err and "lots" in err


def test_depth_folds_blocks(capsys):
    # --depth N opens N levels of blocks: 0 folds each top-level block (residual1...) into one
    # row; resnet34 has no blocks inside blocks, so 1 opens everything again
    rc, full, _ = run(capsys, "summary", RESNET)
    rc0, depth0, err0 = run(capsys, "summary", RESNET, "--depth", "0")
    rc1, depth1, err1 = run(capsys, "summary", RESNET, "--depth", "1")
    assert rc == rc0 == rc1 == 0, err0 + err1
    rows, rows0, rows1 = table_rows(full), table_rows(depth0), table_rows(depth1)
    assert len(rows0) < len(rows1) <= len(rows)
    assert len(rows0) == 5 + 16 + 3       # stem, 16 residual units, pool/dense/softmax
    unit = next(r for r in rows0 if r.split()[0] == "residual1")
    assert "[7 layers]" in unit and "73,984" in unit
    assert not any(r.startswith("  ") for r in rows0)   # nothing nested under a folded block
    assert any(r.split()[0] == "residual1" for r in rows1)
    assert "21,306,826" in depth0 and "21,306,826" in depth1


# ------------------------------------------------------------------ compile

def test_compile_writes_the_build_folder(tmp_path, capsys):
    out_dir = tmp_path / "build"
    rc, out, err = run(capsys, "compile", RESNET, "-o", str(out_dir))
    assert rc == 0, err
    written = {p.name for p in out_dir.iterdir()}
    assert written >= {"graph.json", "spec.net", "summary.json", "summary.txt"}, written
    graph = json.loads((out_dir / "graph.json").read_text())
    _, g = build_graph(RESNET)
    assert len(graph["nodes"]) == len(g) == 126
    assert graph["network"] == "resnet34"
    assert json.loads((out_dir / "summary.json").read_text())["totals"]["params"] == TOTAL
    assert "21,306,826" in (out_dir / "summary.txt").read_text()
    assert (out_dir / "spec.net").read_text() == Path(RESNET).read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["build"]     # no temporary folder left


def test_compile_bad_spec_leaves_existing_build_untouched(tmp_path, capsys):
    out_dir = tmp_path / "build"
    assert run(capsys, "compile", RESNET, "-o", str(out_dir))[0] == 0
    before = {str(p.relative_to(out_dir)): p.read_bytes() for p in out_dir.rglob("*") if p.is_file()}
    bad = tmp_path / "bad.net"
    bad.write_text("network n() {\n    input x: 3@32x32\n    x -> conv2(8, 3) -> out\n}\n")
    rc, out, err = run(capsys, "compile", str(bad), "-o", str(out_dir))
    assert rc == 1
    assert err.startswith(f"{bad}:3:10: error: unknown op 'conv2'")
    assert {str(p.relative_to(out_dir)): p.read_bytes() for p in out_dir.rglob("*") if p.is_file()} == before
    assert "kernels/fused_add_relu.py" in before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.net", "build"]


# ------------------------------------------------------------------ bad paths and usage

def test_nonexistent_spec_is_a_spec_error(tmp_path, capsys):
    missing = tmp_path / "nope.net"
    rc, out, err = run(capsys, "check", str(missing))
    assert rc == 1
    assert "no such file" in err and str(missing) in err


def test_directory_as_spec_is_a_spec_error(tmp_path, capsys):
    rc, out, err = run(capsys, "check", str(tmp_path))
    assert rc == 1
    assert "folder" in err or "directory" in err


def test_unknown_command_is_usage_error(capsys):
    rc, out, err = run(capsys, "frobnicate", RESNET)
    assert rc == 2 and "frobnicate" in err


def test_unknown_option_is_usage_error(capsys):
    rc, out, err = run(capsys, "check", RESNET, "--bogus")
    assert rc == 2 and "--bogus" in err


def test_missing_spec_argument_is_usage_error(capsys):
    rc, out, err = run(capsys, "check")
    assert rc == 2 and "SPEC" in err


def test_console_script_entry_point():
    exe = shutil.which("netspec") or str(Path(sys.executable).with_name("netspec"))
    assert os.path.exists(exe), "the netspec console script is not installed"
    proc = subprocess.run([exe, "check", "specs/resnet34.net"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("specs/resnet34.net: ok: network resnet34")
    bad = subprocess.run([exe, "check", "specs/no-such.net"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
