"""Graph passes: each changes what it says, and no spec's outputs or gradients change."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import netspec
from netspec import passes as P
from netspec.cli import DEFAULT_PASSES, main
from netspec.testing.specs import SMALL

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "specs").glob("*.net"))
# small inputs where a spec allows them; the deep ones at 64px so the test stays quick
LOAD = {
    **SMALL,
    "resnet34": dict(classes=10, input_shape=(3, 64, 64)),
    "resnet50": dict(classes=10, input_shape=(3, 64, 64)),
    "resnet152": dict(classes=10, input_shape=(3, 64, 64)),
    "vgg16": dict(classes=10, input_shape=(3, 32, 32)),
    "xception": dict(classes=10, input_shape=(3, 71, 71)),
}

# every pass but dead-nodes has something to do here (the language refuses unused values, so
# dead layers only appear when other rewrites orphan them)
BUSY = """
network busy() {
    input x: 1@8x8
    a = x -> conv(4, 3, pad=same) -> identity
    b = a -> relu
    c = a -> relu
    s = b + c
    s -> dropout(0.3) -> flatten -> dense(5) -> softmax -> out
}
"""


def records(program, phase):
    return {r.name: r for r in program.pass_records[phase]}


def test_each_pass_does_what_it_says():
    net = netspec.loads(BUSY)
    prog = net.program()
    infer, train = records(prog, "infer"), records(prog, "train")
    assert infer["identity"].changes == ["removed a/identity1"]
    assert infer["dropout"].changes == ["removed dropout1 (rate 0.3)"]
    assert infer["cse"].changes == ["merged c/relu1 into b/relu1 (both relu of a/conv1)"]
    assert infer["dead-nodes"].changes == []
    assert infer["fold-batchnorm"].changes == []   # no batch norm here
    assert train["dropout"].skipped and not train["dropout"].changes
    assert train["cse"].changes == infer["cse"].changes
    unfused = net.program(passes=P.select("-fuse"))
    kernels = [i.kernel for i in unfused.phases["infer"].instrs]
    assert kernels.count("relu") == 1 and "dropout" not in kernels
    # fused: the conv and its one remaining relu are one group (the add reads the relu twice)
    assert infer["fuse"].changes == ["fused a/conv1 + b/relu1 (conv+relu)"]
    assert "dropout" in [i.kernel for i in prog.phases["train"].instrs]
    # the spec's own graph is untouched
    assert {"a/identity1", "c/relu1", "dropout1"} <= {n.name for n in net.graph.nodes()}


def test_dead_nodes_removes_what_no_output_reads():
    from netspec.graph import Node
    from netspec.ops import OPS
    graph = P.copy_graph(netspec.loads(BUSY).graph)
    conv = graph.node("a/conv1")
    graph.add(Node("orphan", "tanh", OPS["tanh"].make_attrs([], {}), ["a/conv1"], conv.shape))
    graph.add(Node("orphan2", "relu", OPS["relu"].make_attrs([], {}), ["orphan"], conv.shape))
    g, recs = P.optimize(graph, training=True, passes=["dead-nodes"])
    assert recs[0].changes == ["removed orphan (tanh): no output reads it",
                               "removed orphan2 (relu): no output reads it"]
    assert "orphan" not in g and "orphan" in graph


def test_no_passes_lowers_the_graph_as_written():
    prog = netspec.loads(BUSY).program(passes=[])
    assert prog.pass_records["infer"] == []
    assert [i.kernel for i in prog.phases["infer"].instrs].count("relu") == 2


@pytest.mark.parametrize("text, chosen", [
    (None, list(P.DEFAULT)), ("", list(P.DEFAULT)), ("all", list(P.DEFAULT)), ("none", []),
    ("cse,identity", ["cse", "identity"]), ("-cse", ["identity", "dropout", "fold-batchnorm", "dead-nodes", "fuse"]),
    ("-cse,-dropout,-fold-batchnorm", ["identity", "dead-nodes", "fuse"]), ("cse,+dead-nodes,-cse", ["dead-nodes"]),
])
def test_selection(text, chosen):
    assert P.select(text) == chosen


def test_an_unknown_pass_is_named_with_a_hint():
    with pytest.raises(P.PassError, match="unknown pass 'dead_nodes'.*dead-nodes"):
        P.select("dead_nodes")


def test_the_cli_default_list_is_the_pass_managers():
    assert tuple(DEFAULT_PASSES) == P.DEFAULT


def _compare(net, batch, rng):
    """Outputs (inference) and loss + gradients (training) with and without the passes, to
    float32 rounding (a folded batch norm rounds differently, a fused kernel sums a bias
    gradient in another order), also after a training step changed the weights and the
    running statistics."""
    x = rng.standard_normal((batch, *net.graph.node(net.graph.inputs[0]).shape)).astype(np.float32)
    plain = net.compile(passes=[], warmup=False)
    opt = net.compile(warmup=False)
    _close(plain.predict(x), opt.predict(x))
    out_shape = net.graph.node(net.graph.outputs[0]).shape
    y = (rng.integers(0, out_shape[0], batch) if plain.program.loss_name == "sparse_categorical_crossentropy"
         else rng.random((batch, *out_shape)).astype(np.float32))
    loss_a, ga = plain.loss_and_grads(x, y)
    loss_b, gb = opt.loss_and_grads(x, y)
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
    assert ga.keys() == gb.keys()
    for k in ga:
        _close(ga[k], gb[k], err_msg=k)
    for model in (plain, opt):   # the same step on both: weights and running statistics move
        for k, g in model.loss_and_grads(x, y)[1].items():
            model.params[k][...] -= 0.1 * g
    _close(plain.predict(x), opt.predict(x))


def _close(a, b, err_msg=""):
    scale = max(float(np.abs(a).max()), 1e-3)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale, err_msg=err_msg)


@pytest.mark.parametrize("spec", SPECS, ids=[s.stem for s in SPECS])
def test_passes_change_no_output_or_gradient(spec):
    """Every spec, inference and training, to float32 rounding."""
    net = netspec.load(spec, **LOAD.get(spec.stem, {}))
    _compare(net, 2, np.random.default_rng(0))


def test_busy_graph_unchanged_by_its_passes():
    _compare(netspec.loads(BUSY), 3, np.random.default_rng(1))


def test_compile_reports_and_dumps(tmp_path, capsys):
    spec = tmp_path / "busy.net"
    spec.write_text(BUSY)
    out = tmp_path / "build"
    assert main(["compile", str(spec), "-o", str(out), "--report", "--dump", "graph"]) == 0
    text = capsys.readouterr().out
    assert "## after identity" in text and "## after dead-nodes" in text
    assert "merged c/relu1 into b/relu1" in text and "# train graph" in text
    assert "removed dropout1" in (out / "passes.txt").read_text()
    plans = json.loads((out / "memory_plan.json").read_text())
    assert set(plans) == {"infer", "train"}
    for p in plans.values():
        assert p["lower_bound_bytes"] <= p["arena_bytes"] <= p["naive_bytes"]
    summary = (out / "summary.txt").read_text()
    assert "planned peak" in summary and "naive sum" in summary
    assert main(["compile", str(spec), "-o", str(out), "--passes", "cse,dedup"]) == 2
    assert "unknown pass 'dedup'" in capsys.readouterr().err


def test_resnet34_folds_its_36_batch_norms_for_inference_only():
    prog = netspec.load(ROOT / "specs/resnet34.net", classes=10, input_shape=(3, 64, 64)).program()
    folded = records(prog, "infer")["fold-batchnorm"].changes
    assert len(folded) == 36 and folded[0] == "folded batchnorm1 into conv1"
    assert records(prog, "train")["fold-batchnorm"].skipped
    infer = [i.kernel for i in prog.phases["infer"].instrs]
    assert "batchnorm_infer" not in infer and infer.count("conv2d") == 36
    assert [i.kernel for i in prog.phases["prepare"].instrs] == ["bn_fold"] * 36
    assert "batchnorm_train" in [i.kernel for i in prog.phases["train"].instrs]
    # the batch norms' parameters keep their names: weight files fit either program
    assert "residual1/main/batchnorm1.running_var" in prog.params


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_bn_fold_kernel_against_numpy(dtype):
    from netspec.runtime.cpu import KERNELS
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 3, 3, 4)).astype(dtype)
    b = rng.standard_normal(6).astype(dtype)
    gamma, beta, mean = (rng.standard_normal(6).astype(dtype) for _ in range(3))
    var = rng.random(6).astype(dtype) + 0.1
    w_out, b_out = np.empty_like(w), np.empty_like(b)
    KERNELS["bn_fold"]([w, b, gamma, beta, mean, var], [w_out, b_out], {"epsilon": 1e-3}, None)
    s = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + 1e-3)
    tol = 1e-12 if dtype == "float64" else 1e-6
    np.testing.assert_allclose(w_out, w * s[:, None, None, None], rtol=tol)
    np.testing.assert_allclose(b_out, (b - mean) * s + beta, rtol=tol, atol=tol)
    KERNELS["bn_fold"]([w, None, gamma, beta, mean, var], [w_out, b_out], {"epsilon": 1e-3}, None)
    np.testing.assert_allclose(b_out, -mean * s + beta, rtol=tol, atol=tol)
