"""`netspec compile --verify`: every shipped spec passes it; a pass that changes the results
is caught, named, with the difference; the graph diff says what each pass did."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import netspec
from netspec.cli import cli, main
from netspec.passes.base import PASSES, GraphPass
from netspec.passes.manager import optimize
from netspec.testing.specs import SMALL
from netspec.verify import TOLERANCE, check_passes, graph_diff, verify_passes

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted(p.stem for p in (ROOT / "specs").glob("*.net"))


# every spec through every default pass in float64 (the float32 kernels, each pass alone on
# specs covering every op and after a training step, are tests/test_passes.py's)
@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n == "lenet5" else pytest.mark.slow)
                                  for n in SPECS])
def test_every_shipped_spec_keeps_its_results_through_every_pass(name):
    net = netspec.load(ROOT / "specs" / f"{name}.net", **SMALL.get(name, {}))
    checks = check_passes(net.graph)         # raises PassChangedResults naming a failing pass
    assert [c.name for c in checks] == list(netspec.passes.DEFAULT)
    assert all(c.difference <= TOLERANCE for c in checks)
    # a pass's results are compared exactly when it changed the graph (handson_conv3's three
    # layers give no pass anything to do), and then its diff says how
    assert all(bool(c.changes) == c.ran for c in checks)


def _wrong_pass(monkeypatch, name: str, training_safe: bool, victim_op: str):
    """Register pass `name`: it drops the first `victim_op` node (shapes stay valid, the
    results do not)."""
    def drop(graph, training):
        node = next(n for n in graph.nodes() if n.op == victim_op)
        graph.bypass(node.name)
        return [f"dropped {node.name}"]
    monkeypatch.setitem(PASSES, name, GraphPass(name, "deliberately wrong", drop, training_safe))


def test_a_pass_that_changes_the_outputs_fails_compile_verify_naming_it(tmp_path, monkeypatch,
                                                                        capsys):
    _wrong_pass(monkeypatch, "drop-tanh", True, "tanh")
    out = tmp_path / "build"
    code = main(["compile", str(ROOT / "specs/lenet5.net"), "--verify", "--passes",
                 "identity,drop-tanh", "-o", str(out)])
    printed = capsys.readouterr()
    assert code == 1, printed
    assert "drop-tanh: removed 1 tanh node (c1_tanh)" in printed.out
    error = printed.err.strip().splitlines()[-1]
    found = re.fullmatch(r"error: pass drop-tanh changed the network's results: (.+) differs by "
                         r"(\S+) of its largest value \(tolerance 1e-08\)", error)
    assert found, error
    assert found[1] in ("output softmax1", "loss") or found[1].startswith("gradient of ")
    assert float(found[2]) > 1e-3
    assert not out.exists()                  # refused before anything is written


def test_an_inference_only_pass_is_checked_in_inference_mode(monkeypatch):
    # dropping a relu changes training too, but an inference-only pass leaves the training
    # graph as it was: only the outputs are compared, and they differ
    _wrong_pass(monkeypatch, "drop-relu", False, "relu")
    graph = netspec.load(ROOT / "specs/mlp.net").graph
    (check,) = verify_passes(graph, ["drop-relu"])
    assert not check.passed and check.gradient_difference == 0.0
    assert check.worst.startswith("output ") and check.output_difference > 1e-3
    assert "inference only" in check.text()


def test_a_training_safe_pass_is_checked_on_its_gradients_too(monkeypatch):
    _wrong_pass(monkeypatch, "drop-relu", True, "relu")
    graph = netspec.load(ROOT / "specs/mlp.net").graph
    (check,) = verify_passes(graph, ["drop-relu"])
    assert check.gradient_difference > 1e-3 and check.output_difference > 1e-3


def test_compile_verify_prints_each_pass_and_writes_the_build(tmp_path):
    out = tmp_path / "build"
    result = CliRunner().invoke(cli, ["compile", str(ROOT / "specs/lenet5.net"), "--verify",
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "identity: no change" in lines
    assert any(line.startswith("fuse: removed 3 conv nodes (c1, c3, c5)") for line in lines)
    assert "verified: no pass changed lenet5's results" in lines
    assert (out / "program.txt").is_file()


def test_the_graph_diff_of_batch_norm_folding_names_what_it_changed():
    graph = netspec.load(ROOT / "specs/resnet34.net").graph
    after = []
    optimize(graph, False, ["fold-batchnorm"], dump=lambda name, g: after.append(g))
    lines = graph_diff(graph, after[0])
    assert lines[0].startswith("removed 36 batchnorm nodes (batchnorm1, residual1/main/batchnorm1")
    assert lines[-1] == ("weights and bias of 36 layers rescaled by the batch norm after it "
                         "(conv1 by batchnorm1, ...)")
    assert graph_diff(graph, graph) == []
