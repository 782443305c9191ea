"""`netspec import`: ONNX models no one here wrote (PyTorch's own exporters applied to modules
written below, and the ONNX project's backend test cases shipped in the onnx package) become
readable specs whose outputs equal onnxruntime's, whose parameters are the models'
initializers, and whose repeated units are blocks."""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
nn = torch.nn

import netspec  # noqa: E402
from netspec.cli import main  # noqa: E402
from netspec.interop.onnx_import import UnsupportedModel, import_onnx  # noqa: E402
from zoo import resnet as zoo_resnet  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5     # float32 through different summation orders

# PyTorch's exporters warn about their own deprecations and choices, which are not ours
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning",
                                        "ignore::FutureWarning")


def onnxruntime_outputs(path, x: np.ndarray) -> np.ndarray:
    """onnxruntime's outputs for x, a sample at a time (an export fixes the batch it saw)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


def netspec_outputs(text: str, weights: dict, x: np.ndarray) -> np.ndarray:
    model = netspec.loads(text).compile(training=False, warmup=False)
    model.set_weights(weights)
    return np.asarray(model(x))


def initializer_params(path) -> int:
    """The weights an ONNX file stores: its float initializers (shapes and bounds are ints or
    scalars)."""
    from onnx import numpy_helper
    model = onnx.load(str(path))
    return sum(a.size for a in map(numpy_helper.to_array, model.graph.initializer)
               if a.dtype.kind == "f" and a.ndim >= 1)


def perturb_batchnorms(model: nn.Module) -> None:
    """Statistics and scales away from their starting values, so a batch norm computes
    something a test can see."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)


# ------------------------------------------------------------------ torchvision's ResNet-50

def ResNet50(classes=10):
    """torchvision's ResNet-50 (v1.5), the zoo's copy (tests/zoo/resnet.py)."""
    return zoo_resnet.ResNet((3, 4, 6, 3), classes)


@pytest.fixture(scope="module")
def resnet50_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = ResNet50().eval()
    perturb_batchnorms(model)
    path = tmp_path_factory.mktemp("resnet50") / "resnet50.onnx"
    # the TorchScript exporter (dynamo=False) keeps the batch norms as they are with
    # TrainingMode.PRESERVE on a model in eval mode: the spec reads as the PyTorch code does
    with torch.no_grad():
        torch.onnx.export(model, (torch.zeros(1, 3, 64, 64),), str(path), dynamo=False,
                          training=torch.onnx.TrainingMode.PRESERVE, input_names=["image"],
                          dynamic_axes={"image": {0: "batch"}})
    return path


def test_resnet50_from_pytorch_is_one_residual_block_repeated(resnet50_onnx, tmp_path):
    spec, weights = tmp_path / "resnet50.net", tmp_path / "resnet50.safetensors"
    assert main(["import", str(resnet50_onnx), "-o", str(spec), "--weights", str(weights)]) == 0
    text = spec.read_text()
    # one block for all 16 bottlenecks, the projection shortcut written as resnet50.net does
    assert re.findall(r"^block (\w+)\(", text, re.M) == ["residual"]
    assert "if stride > 1 or x.channels != filters * 4 else x" in text
    network = text[text.index("network "):]
    calls = re.findall(r"residual\(([^)]*)\)(?: \* (\d+))?", network)
    units = sum(int(n or 1) for _, n in calls)
    assert units == 16 and [n for _, n in calls] == ["3", "", "3", "", "5", "", "2"]
    assert [a for a, _ in calls] == ["64", "128, stride=2", "128", "256, stride=2", "256", "512, stride=2", "512"]
    assert "batchnorm(momentum=0.9, epsilon=1e-05)" in text
    graph = netspec.load(spec).graph
    assert sum(graph.total_params()) == initializer_params(resnet50_onnx) == 23_581_642
    # the weights file is one netspec reads back strictly (its fingerprint is the spec's)
    model = netspec.load(spec).compile(training=False, warmup=False)
    model.load_weights(weights)
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    want = onnxruntime_outputs(resnet50_onnx, x)
    np.testing.assert_allclose(np.asarray(model(x)), want, rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------ the dynamo exporter

class SqueezeExcite(nn.Module):
    def __init__(self, channels, squeezed):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.fc2 = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x):
        s = torch.sigmoid(self.fc2(nn.functional.silu(self.fc1(self.pool(x)))))
        return x * s


class MBConv(nn.Module):
    """EfficientNet's inverted residual: expand, depthwise, squeeze-and-excite, project."""

    def __init__(self, cin, cout, kernel, stride, expand=4):
        super().__init__()
        mid = cin * expand
        self.residual = stride == 1 and cin == cout
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.SiLU(),
            nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False), nn.BatchNorm2d(mid),
            nn.SiLU(), SqueezeExcite(mid, max(1, cin // 4)),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class TinyEfficientNet(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        self.blocks = nn.Sequential(MBConv(16, 24, 3, 2), MBConv(24, 24, 3, 1), MBConv(24, 24, 3, 1),
                                    MBConv(24, 32, 5, 2), MBConv(32, 32, 5, 1), MBConv(32, 32, 5, 1))
        self.head = nn.Sequential(nn.Conv2d(32, 64, 1), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Dropout(0.2), nn.Linear(64, classes))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


def test_efficientnet_style_net_from_the_dynamo_exporter(tmp_path):
    torch.manual_seed(0)
    model = TinyEfficientNet().eval()
    perturb_batchnorms(model)
    path = tmp_path / "tiny.onnx"
    with torch.no_grad():
        torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=True, external_data=False,
                          verbose=False)
    imported = import_onnx(path, "tiny")
    text = imported.text
    ops = {layer.op for layer in imported.translated.layers}
    # the patterns: x * sigmoid(x) is silu, a Conv of group C depthwise, Clip(0, 6) relu6
    assert {"silu", "hardswish", "depthwise_conv", "relu6", "multiply", "dense"} <= ops
    assert "conv(16, 3, stride=2, pad=1" in text
    # the residual MBConvs of each stage: one block, two in a row
    assert re.search(r"^block residual\(", text, re.M)
    assert len(re.findall(r"residual\([^)]*\) \* 2", text)) == 2, text
    assert sum(imported.graph.total_params()) == initializer_params(path)
    x = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(netspec_outputs(text, imported.weights, x), onnxruntime_outputs(path, x),
                               rtol=RTOL, atol=ATOL)


class Patterns(nn.Module):
    """What the rules recognise, one each: same padding, a MatMul + Add dense, a global
    average pool kept as a map (an SE gate) and one before a flatten, concat, avg pool."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 8, 3, padding=1)
        self.b = nn.Conv2d(4, 8, 5, padding=2, bias=False)
        self.gate = nn.Conv2d(16, 16, 1)
        self.w = nn.Parameter(torch.randn(16, 6) * 0.3)
        self.bias = nn.Parameter(torch.randn(6) * 0.1)

    def forward(self, x):
        y = torch.cat([torch.relu(self.a(x)), nn.functional.leaky_relu(self.b(x), 0.2)], 1)
        y = y * torch.sigmoid(self.gate(y.mean((2, 3), keepdim=True)))
        y = nn.functional.avg_pool2d(y, 2)
        return torch.softmax(y.mean((2, 3)) @ self.w + self.bias, 1)


def test_patterns_and_defaults(tmp_path):
    torch.manual_seed(2)
    path = tmp_path / "patterns.onnx"
    torch.onnx.export(Patterns().eval(), (torch.zeros(1, 4, 12, 12),), str(path), dynamo=False)
    imported = import_onnx(path)
    text = imported.text
    assert "conv(8, 3, pad=same)" in text and "conv(8, 5, pad=same, bias=false)" in text
    assert "leaky_relu(alpha=0.2)" in text and "adaptive_avgpool(1)" in text
    assert "avgpool(2)" in text and "global_avgpool -> dense(6) -> softmax" in text
    assert "concat(branch1, branch2)" in text
    x = np.random.default_rng(2).standard_normal((2, 4, 12, 12)).astype(np.float32)
    np.testing.assert_allclose(netspec_outputs(text, imported.weights, x), onnxruntime_outputs(path, x),
                               rtol=RTOL, atol=ATOL)


def test_several_inputs_and_outputs_keep_their_names_and_order(tmp_path):
    """A model written with onnx's helper: two inputs joined, two outputs (a map and logits),
    a dynamic batch; an input named as no spec may name it."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(4)
    weights = [numpy_helper.from_array(rng.standard_normal((4, 6, 3, 3)).astype(np.float32), "w"),
               numpy_helper.from_array(rng.standard_normal((5, 4)).astype(np.float32), "g")]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3, 8, 8]) for n in ("a", "b.1")]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("feat", "logits")]
    nodes = [helper.make_node("Concat", ["a", "b.1"], ["c"], axis=1),
             helper.make_node("Conv", ["c", "w"], ["d"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["d"], ["feat"]),
             helper.make_node("GlobalAveragePool", ["feat"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "g"], ["logits"], transB=1)]
    path = tmp_path / "two.onnx"
    onnx.save(helper.make_model(helper.make_graph(nodes, "two", inputs, outputs, weights),
                                opset_imports=[helper.make_opsetid("", 17)]), str(path))
    spec = tmp_path / "two.net"
    assert main(["import", str(path), "-o", str(spec), "--network", "two_heads"]) == 0
    assert main(["import", str(path), "-o", str(spec), "--network", "2heads"]) == 2   # no name
    imported = import_onnx(path, "two_heads")
    assert spec.read_text() == imported.text and "network two_heads() {" in imported.text
    assert "input b_1: 3@8x8" in imported.text and "out feat, logits" in imported.text
    x = {"a": rng.standard_normal((2, 3, 8, 8)).astype(np.float32),
         "b.1": rng.standard_normal((2, 3, 8, 8)).astype(np.float32)}
    model = netspec.loads(imported.text).compile(training=False, warmup=False)
    model.set_weights(imported.weights)
    got = list(model({"a": x["a"], "b_1": x["b.1"]}).values())
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, x)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------ the onnx package's own cases

# docs/INTEROP.md's table (tools/onnx_backend_table.py) states this many cases import and match
# (of the 82 onnx 1.23 ships; another onnx release ships other cases)
BACKEND_MATCHING = 43


def test_onnx_backend_cases_match_or_are_refused():
    from netspec.testing.onnx_backend import case_folders, run_case
    results = [run_case(folder) for folder in case_folders()]
    assert len(results) >= 80
    wrong = [(r.name, r.status, r.detail) for r in results if r.status not in ("match", "refused")]
    assert not wrong
    assert sum(r.status == "match" for r in results) == BACKEND_MATCHING
    # those refused name what netspec lacks, node by node
    for r in results:
        if r.status == "refused":
            assert r.detail


# ------------------------------------------------------------------ the command's errors

def _unsupported_model(path):
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="fine"),
             helper.make_node("Softplus", ["a"], ["b"], name="soft"),
             helper.make_node("Neg", ["x"], ["c"], name="negate"),
             helper.make_node("Add", ["b", "c"], ["y"], name="sum")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))


def test_unsupported_nodes_are_all_listed_and_nothing_is_written(tmp_path, capsys):
    path = tmp_path / "odd.onnx"
    _unsupported_model(path)
    with pytest.raises(UnsupportedModel) as e:
        import_onnx(path)
    assert [(op, name) for op, name, _ in e.value.problems] == [("Softplus", "soft"), ("Neg", "negate")]
    assert main(["import", str(path), "-o", str(tmp_path / "odd.net"), "--weights",
                 str(tmp_path / "odd.npz")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: 2 ONNX nodes netspec cannot translate: Softplus 'soft'")
    assert "Neg 'negate'" in err and "Traceback" not in err
    assert not list(tmp_path.glob("odd.n*"))


def test_bad_inputs_are_clear_errors(tmp_path, capsys, monkeypatch):
    spec = tmp_path / "net.net"
    spec.write_text("network n() {\n    input x: 4\n    x -> dense(2) -> out\n}\n")
    (tmp_path / "corrupt.onnx").write_bytes(b"\x08\x07\x12\xff\xff garbage" * 10)
    cases = [([str(tmp_path / "missing.onnx")], "no such file"),
             ([str(spec)], "is not an ONNX model"),
             ([str(tmp_path / "corrupt.onnx")], "is not an ONNX model")]
    for args, message in cases:
        assert main(["import", *args, "-o", str(tmp_path / "out.net")]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "out.net").exists()
    # without the onnx package: what to install
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert main(["import", str(spec), "-o", str(tmp_path / "out.net")]) == 1
    assert "pip install 'netspec[onnx]'" in capsys.readouterr().err


# ------------------------------------------------------------------ round trip: export, import

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted(p.stem for p in (ROOT / "specs").glob("*.net"))
# over 5 s each (their weights drawn, exported, compiled twice)
SLOW = {"vgg19", "resnet152", "deeplabv3_resnet50", "vgg16", "alexnet"}


def canonical_ops(graph) -> Counter:
    """Nodes per op, as ONNX can tell them apart: regularisers that are the identity at
    inference gone; a separable conv its depthwise and pointwise convs; a conv of one group per
    channel a depthwise conv; a reshape to a vector a flatten; an adaptive average pool whose
    windows tile the map an average pool (what the exporter writes for them)."""
    from netspec.ops import get_op
    from netspec.ops.base import OpKind
    counts = Counter()
    for node in graph.nodes():
        op = get_op(node.op)
        if op.traits.identity_at_inference or op.kind in (OpKind.IDENTITY, OpKind.INPUT):
            continue
        name = node.op
        if name == "separable_conv":
            counts["depthwise_conv"] += 1
            name = "conv"
        elif name == "conv" and node.attrs["groups"] > 1 and node.attrs["groups"] == graph.shape_of(node.inputs[0])[0]:
            name = "depthwise_conv"
        elif op.traits.shape_only and len(node.shape) == 1:
            name = "flatten"
        elif name == "adaptive_avgpool":
            name = "avgpool"
        counts[name] += 1
    return counts


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in SPECS])
def test_import_of_export_is_the_same_network(name, tmp_path):
    from netspec.interop.onnx_export import export
    from netspec.lower.init import initial_params
    from netspec.testing.specs import SMALL
    net = netspec.load(ROOT / "specs" / f"{name}.net", **SMALL.get(name, {}))
    params = {k: np.asarray(v, np.float32) for k, v in initial_params(net.graph, 0).items()}
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(export(net.graph, params).SerializeToString())
    imported = import_onnx(path, name)
    assert canonical_ops(imported.graph) == canonical_ops(net.graph)
    assert sum(imported.graph.total_params()) == sum(net.graph.total_params())
    # a block called twice or more in the original: blocks in the import
    called = Counter(b.block for b in net.graph.blocks.values())
    if any(n >= 2 for n in called.values()):
        assert re.search(r"^block \w+\(", imported.text, re.M), imported.text
    feeds = {i: np.random.default_rng(3).standard_normal((2, *net.graph.node(i).shape)).astype(np.float32)
             for i in net.graph.inputs}
    original = net.compile(training=False, warmup=False)
    original.set_weights(params)
    model = netspec.loads(imported.text).compile(training=False, warmup=False)
    model.set_weights(imported.weights)
    x = feeds if len(feeds) > 1 else next(iter(feeds.values()))
    want, got = original(x), model(dict(zip(imported.graph.inputs, feeds.values())) if len(feeds) > 1 else x)
    for w, g in zip(*(v.values() if isinstance(v, dict) else [v] for v in (want, got))):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(w).max())))


def test_an_adaptive_pool_whose_windows_overlap_reads_back(tmp_path):
    """netspec's exporter writes it as means over slices (ONNX has no adaptive pool): the
    pattern is read back as the one layer, on PyTorch's windows."""
    from netspec.interop.onnx_export import export
    from netspec.lower.init import initial_params
    net = netspec.loads("network n() {\n    input x: 3@7x5\n"
                        "    x -> conv(4, 1) -> adaptive_avgpool((3, 2)) -> flatten -> dense(2) -> out\n}\n")
    params = {k: np.asarray(v, np.float32) for k, v in initial_params(net.graph, 0).items()}
    path = tmp_path / "n.onnx"
    path.write_bytes(export(net.graph, params).SerializeToString())
    assert {"Slice", "ReduceMean"} <= {n.op_type for n in onnx.load(str(path)).graph.node}
    imported = import_onnx(path)
    assert "adaptive_avgpool((3, 2))" in imported.text
    x = np.random.default_rng(5).standard_normal((2, 3, 7, 5)).astype(np.float32)
    np.testing.assert_allclose(netspec_outputs(imported.text, imported.weights, x), onnxruntime_outputs(path, x),
                               rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------- PyTorch's exporter on the shipped networks

# shipped networks whose PyTorch references (netspec/testing/torch_ref.py) PyTorch's own exporter
# writes and netspec reads back; tools/onnx_torch_table.py tries them all (docs/INTEROP.md)
TORCH_EXPORTED = ["lenet5", "mlp_batchnorm", "resnet50", "mobilenet", "squeezenet1_1",
                  "inception_bottleneck"]


@pytest.mark.parametrize("name", TORCH_EXPORTED)
def test_pytorchs_export_of_a_shipped_reference_imports_and_matches(name, tmp_path):
    """An ONNX model no one here wrote: torch.onnx.export (dynamo) of the PyTorch oracle, in
    PyTorch's spelling (explicit Pad nodes, batch norms after convs folded into them)."""
    from netspec import pipeline
    from netspec.interop.onnx_export import export, parameter_count
    from netspec.testing.onnx_check import float_params, imported_error, small, torch_export
    net = small(name)
    torch_export(net.graph, tmp_path / f"{name}.onnx")
    imported, error, _ = imported_error(tmp_path / f"{name}.onnx")
    assert error < 1e-4, f"worst error {error:.3g}"
    # the parameters of netspec's own inference graph, to the element (its batch norms folded
    # where PyTorch folds them: after a conv)
    folded = export(pipeline.optimise(net.graph, training=False).infer, float_params(net.graph))
    assert sum(imported.graph.total_params()) == parameter_count(folded)
    if any(n >= 2 for n in Counter(b.block for b in net.graph.blocks.values()).values()):
        assert re.search(r"^block \w+\(", imported.text, re.M), imported.text


def test_pytorchs_decomposition_of_lrn_is_refused_naming_its_nodes(tmp_path):
    """GoogLeNet's local response norm: the dynamo exporter writes it as Pow, Div and a rank-5
    Reshape, which netspec does not read back as lrn (yet): refused, every node named."""
    from netspec.testing.onnx_check import small, torch_export
    torch_export(small("googlenet").graph, tmp_path / "googlenet.onnx")
    with pytest.raises(UnsupportedModel) as e:
        import_onnx(tmp_path / "googlenet.onnx")
    assert "Pow" in str(e.value) and "node_pow" in str(e.value)
