"""ONNX export (netspec/interop/onnx_export.py, each op's `Op.onnx` rule) against independent
references: every op case and every shipped spec is exported, checked by onnx.checker (full
check, shape inference included; export does it) and run by onnxruntime in float32; its outputs
must equal the PyTorch oracle's (netspec.testing.torch_ref, float64, the same parameters) within
float32 tolerance, before the graph passes and after them (batch norms folded into their
layers' weights, separable convs split, fused groups), with a batch size the export never saw
(the batch dimension is dynamic). The command: its files, its refusals, and trained weights
exported and run by onnxruntime giving `netspec predict`'s probabilities."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import netspec
from netspec.interop.onnx_export import (DEFAULT_OPSET, MIN_OPSET, ExportError, export,
                                         op_counts, parameter_count)
from netspec.ops import INTERNAL_OPS, OPS
from netspec import pipeline
from netspec.testing.onnx_check import (check_exports, float_params, oracle, random_feeds, run_onnx,
                                        small, worst_error)

onnx = pytest.importorskip("onnx", reason="the onnx extra is part of the test dependencies")
ort = pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted(p.stem for p in (ROOT / "specs").glob("*.net"))
ALL_OPS = {**OPS, **INTERNAL_OPS}
CASES = [pytest.param(op, case, id=f"{name}:{case.id}")
         for name, op in ALL_OPS.items() for case in op.cases if name != "input"]
RTOL = 1e-4     # float32 against float64, relative to the output's largest magnitude
SPEC_RTOL = 2e-3    # whole networks: 150 layers of float32 rounding reach 8.4e-4 (ResNet-152: docs/INTEROP.md)


# ---------------------------------------------------------------- every op

def test_every_op_has_an_onnx_rule():
    from netspec.ops.base import Op
    missing = [name for name, op in ALL_OPS.items()
               if name != "input" and type(op).onnx is Op.onnx]
    assert missing == []


@pytest.mark.parametrize("op,case", CASES)
def test_op_case_exports_and_matches_torch(op, case):
    """Each case as written and after the default passes (a fused op's case is its chain)."""
    net = netspec.loads(case.spec(op.name), file=f"<{op.name} case>")
    check_exports(net.graph, float_params(net.graph, seed=1), batch=case.batch + 1)


# ---------------------------------------------------------------- every shipped spec

QUICK = {"lenet5", "mlp", "mlp_batchnorm", "fashion_cnn", "handson_conv3", "inception_naive",
         "autoencoder"}


@pytest.mark.parametrize("name", [n if n in QUICK else pytest.param(n, marks=pytest.mark.slow)
                                  for n in SPECS])
def test_shipped_spec_exports_and_matches_torch(name):
    net = small(name)
    params = float_params(net.graph)
    check_exports(net.graph, params, batch=2, rtol=SPEC_RTOL)
    model = export(net.graph, params)
    # the initializers are exactly the network's parameters and running statistics
    assert parameter_count(model) == sum(n.param_count for n in net.graph.nodes())
    names = {t.name for t in model.graph.initializer}
    assert names == {f"{n.name}.{p.name}" for n in net.graph.nodes() for p in n.params}


def test_names_come_from_the_spec():
    net = small("resnet50")
    model = export(net.graph, float_params(net.graph))
    names = {n.name for n in model.graph.node}
    assert "stage1/bottleneck1/main/conv1" in names             # one ONNX node: the layer's name
    assert [i.name for i in model.graph.input] == net.graph.inputs
    assert [o.name for o in model.graph.output] == net.graph.outputs
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 32, 32]
    counts = op_counts(model)
    assert counts["Conv"] == 53 and counts["BatchNormalization"] == 53 and counts["Relu"] == 49


def test_folded_batchnorm_exports_as_rescaled_weights():
    net = small("resnet50")
    optimised = pipeline.optimise(net.graph, training=False).infer
    model = export(optimised, float_params(net.graph))
    assert "BatchNormalization" not in op_counts(model)
    names = {t.name for t in model.graph.initializer}
    assert "stage1/bottleneck1/main/conv1.bias" in names       # the folded batch norm's shift
    assert not any("batchnorm" in n for n in names)


def test_opset_out_of_range_is_refused():
    net = small("lenet5")
    with pytest.raises(ExportError, match="opset"):
        export(net.graph, float_params(net.graph), opset=MIN_OPSET - 1)


@pytest.mark.parametrize("opset", [MIN_OPSET, DEFAULT_OPSET])
def test_older_opsets_run_the_same(opset):
    """gelu is an operator from opset 20; before it, its formula."""
    net = netspec.loads("network n() {\n    input x: 3@4x4\n    x -> conv(4, 3, pad=same) -> gelu "
                        "-> gelu(approximate=tanh) -> global_avgpool -> dense(3) -> softmax -> out\n}\n")
    params = float_params(net.graph)
    feeds = random_feeds(net.graph, 2)
    got = run_onnx(export(net.graph, params, opset=opset), feeds)
    assert worst_error(got, oracle(net.graph, params, feeds)) < RTOL


# ---------------------------------------------------------------- the command

def netspec_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "netspec.cli", *args], capture_output=True,
                          text=True, cwd=cwd)


def test_export_command_writes_a_checked_model(tmp_path):
    out = tmp_path / "lenet5.onnx"
    r = netspec_cli("export", str(ROOT / "specs" / "lenet5.net"), "-o", str(out), "--seed", "3")
    assert r.returncode == 0, r.stderr
    assert "lenet5" in r.stdout and str(out) in r.stdout
    model = onnx.load(out)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == DEFAULT_OPSET
    assert {p.key for p in model.metadata_props} >= {"netspec.network", "netspec.spec"}
    # initial weights drawn as `netspec train` draws them (seed 3)
    net = netspec.load(ROOT / "specs" / "lenet5.net")
    m = net.compile(training=False, seed=3)
    x = random_feeds(net.graph, 4)[net.graph.inputs[0]]
    (got,) = run_onnx(model, {net.graph.inputs[0]: x})
    np.testing.assert_allclose(got, m.predict(x), rtol=1e-4, atol=1e-5)


def test_trained_weights_export_and_give_predict_probabilities(tmp_path):
    spec = str(ROOT / "specs" / "lenet5.net")
    run = tmp_path / "run"
    r = netspec_cli("train", spec, "--epochs", "1", "--seed", "0", "-o", str(run), "--no-progress")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "trained.onnx"
    r = netspec_cli("export", spec, "--weights", str(run / "weights.safetensors"), "-o", str(out))
    assert r.returncode == 0, r.stderr
    net = netspec.load(spec)
    model = net.compile(training=False)
    model.load_weights(run / "weights.safetensors")
    x = random_feeds(net.graph, 5)[net.graph.inputs[0]]
    (got,) = run_onnx(onnx.load(out), {net.graph.inputs[0]: x})
    np.testing.assert_allclose(got, model.predict(x), rtol=1e-4, atol=1e-6)


def test_export_before_the_passes_keeps_every_layer(tmp_path):
    out, spec = tmp_path / "m.onnx", tmp_path / "m.net"
    spec.write_text("network m() {\n    input x: 3@8x8\n    x -> conv(4, 3, bias=false) -> batchnorm "
                    "-> relu -> global_avgpool -> dense(2) -> out\n}\n")
    r = netspec_cli("export", str(spec), "-o", str(out), "--passes", "none")
    assert r.returncode == 0, r.stderr
    assert "BatchNormalization" in op_counts(onnx.load(out))
    r = netspec_cli("export", str(spec), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "BatchNormalization" not in op_counts(onnx.load(out))


def test_bad_requests_exit_with_one_line_and_keep_the_file(tmp_path):
    out = tmp_path / "keep.onnx"
    out.write_bytes(b"precious")
    spec = str(ROOT / "specs" / "lenet5.net")
    for args, code, words in (
            (["--opset", "7"], 1, "opset 7"),
            (["--weights", str(tmp_path / "missing.safetensors")], 1, "missing.safetensors: no such file"),
            (["--passes", "nonsense"], 2, "--passes"),
    ):
        r = netspec_cli("export", spec, "-o", str(out), *args)
        assert r.returncode == code, (args, r.stderr)
        assert words in r.stderr and "Traceback" not in r.stderr
        assert out.read_bytes() == b"precious"
    # weights of another network
    other = tmp_path / "mlp.safetensors"
    mlp = netspec.load(ROOT / "specs" / "mlp.net").compile(training=False)
    mlp.save_weights(other)
    r = netspec_cli("export", spec, "--weights", str(other), "-o", str(out))
    assert r.returncode == 1 and "different network" in r.stderr
    assert out.read_bytes() == b"precious"


def test_without_onnx_the_command_says_how_to_get_it(tmp_path):
    code = ("import sys; sys.modules['onnx'] = None\n"
            "from netspec.cli import main\n"
            f"sys.exit(main(['export', {str(ROOT / 'specs' / 'lenet5.net')!r}, '-o', "
            f"{str(tmp_path / 'm.onnx')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 1
    assert "pip install 'netspec[onnx]'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_model_export_in_python_writes_what_the_model_predicts(tmp_path):
    net = netspec.load(ROOT / "specs" / "lenet5.net")
    model = net.compile(training=False, seed=5)
    proto = model.export(tmp_path / "m.onnx")
    assert onnx.load(tmp_path / "m.onnx").graph.name == proto.graph.name == "lenet5"
    x = random_feeds(net.graph, 3)[net.graph.inputs[0]]
    (got,) = run_onnx(proto, {net.graph.inputs[0]: x})
    np.testing.assert_allclose(got, model.predict(x), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match=".onnx"):
        model.export(tmp_path / "m.net")


def test_an_op_without_an_onnx_rule_is_named_with_its_place_in_the_spec(monkeypatch):
    from netspec.ops.base import Op
    net = netspec.loads("network n() {\n    input x: 3@8x8\n    x -> conv(4, 3) -> relu -> out\n}\n",
                        file="n.net")
    monkeypatch.setattr(type(OPS["relu"]), "onnx", Op.onnx)
    with pytest.raises(ExportError) as e:
        export(net.graph, float_params(net.graph))
    assert "n.net:3:" in e.value.message and "relu1 (relu)" in e.value.message
    assert "no ONNX rule" in e.value.message


def test_force_takes_the_tensors_that_match_and_names_the_rest(tmp_path):
    mlp = netspec.load(ROOT / "specs" / "mlp.net").compile(training=False, seed=1)
    mlp.save_weights(tmp_path / "w.safetensors")
    spec, out = str(ROOT / "specs" / "mlp.net"), tmp_path / "m.onnx"
    args = [spec, "--set", "classes=5", "--weights", str(tmp_path / "w.safetensors"), "-o", str(out)]
    assert netspec_cli("export", *args).returncode == 1 and not out.exists()
    r = netspec_cli("export", *args, "--force")
    assert r.returncode == 0, r.stderr
    assert "took 4 of 6 tensors" in r.stderr and "dense3.weight (shape (10, 100), here (5, 100))" in r.stderr
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(out).graph.initializer}
    np.testing.assert_array_equal(initializers["dense1.weight"], mlp.params["dense1.weight"])
    assert initializers["dense3.weight"].shape == (5, 100)
