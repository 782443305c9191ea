"""Graph passes: each changes what it says, and no output or gradient changes (in float32, each
pass alone, also after a training step; every shipped spec in float64 is tests/test_verify.py's)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import netspec
from netspec.cli import main
from netspec.passes import manager as P
from netspec.passes.base import PASSES
from netspec.testing.specs import SMALL

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "specs").glob("*.net"))
# small inputs where a spec allows them
LOAD = SMALL


def test_the_covering_specs_use_every_op():
    used = {node.op for spec in SPECS for node in netspec.load(spec, **LOAD.get(spec.stem, {})).graph.nodes()}
    covered = {node.op for spec in COVERING for node in netspec.load(spec, **LOAD.get(spec.stem, {})).graph.nodes()}
    assert covered == used and len(COVERING) < len(SPECS)

# every pass but dead-nodes has something to do here (the language refuses unused values, so
# dead layers only appear when other rewrites orphan them)
BUSY = """
network busy() {
    input x: 1@8x8
    a = x -> conv(4, 3, pad=same) -> identity
    b = a -> relu
    c = a -> relu
    s = b + c
    s -> dropout(0.3) -> drop_path(0.1) -> flatten -> dense(5) -> softmax -> out
}
"""


def records(program, phase):
    return {r.name: r for r in program.pass_records[phase]}


def test_each_pass_does_what_it_says():
    net = netspec.loads(BUSY)
    prog = net.program()
    infer, train = records(prog, "infer"), records(prog, "train")
    assert infer["identity"].changes == ["removed a/identity1"]
    assert infer["dropout"].changes == ["removed dropout1 (rate 0.3)", "removed drop_path1 (rate 0.1)"]
    assert infer["cse"].changes == ["merged c/relu1 into b/relu1 (both relu of a/conv1)"]
    assert infer["dead-nodes"].changes == []
    assert infer["fold-batchnorm"].changes == []   # no batch norm here
    assert train["dropout"].skipped and not train["dropout"].changes
    assert train["cse"].changes == infer["cse"].changes
    unfused = net.program(passes=P.select("-fuse"))
    kernels = [i.kernel for i in unfused.phases["infer"].instrs]
    assert kernels.count("relu") == 1 and not {"dropout", "mul_samples"} & set(kernels)
    # fused: the conv and its one remaining relu are one group (the add reads the relu twice)
    assert infer["fuse"].changes == ["fused a/conv1 + b/relu1 (conv+relu)"]
    assert "dropout" in [i.kernel for i in prog.phases["train"].instrs]
    # the spec's own graph is untouched
    assert {"a/identity1", "c/relu1", "dropout1"} <= {n.name for n in net.graph.nodes()}


def test_dead_nodes_removes_what_no_output_reads():
    from netspec.graph.graph import Node
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
    ("cse,identity", ["cse", "identity"]),
    ("-cse", ["identity", "dropout", "separable", "fold-shapes", "fold-batchnorm", "dead-nodes", "fuse"]),
    ("-cse,-dropout,-fold-batchnorm,-separable,-fold-shapes", ["identity", "dead-nodes", "fuse"]),
    ("cse,+dead-nodes,-cse", ["dead-nodes"]),
])
def test_selection(text, chosen):
    assert P.select(text) == chosen


def test_an_unknown_pass_is_named_with_a_hint():
    with pytest.raises(P.PassError, match="unknown pass 'dead_nodes'.*dead-nodes"):
        P.select("dead_nodes")


def test_the_default_order_names_every_registered_pass_once():
    assert len(set(P.DEFAULT)) == len(P.DEFAULT) and set(P.DEFAULT) == set(PASSES)


# DeepLabV3's output is a softmax per pixel of a 50-layer backbone's logits, with no global
# average to shrink their errors: a few of its probabilities differ by 5e-4 relative between
# float32 programs that round differently (1e-3 after the step below; gradients within 1e-4)
RTOL = {"deeplabv3_resnet50": 2e-3}
# SSDlite's last extra blocks normalise 1x1 maps: over a batch of 2 a batch norm divides by half
# the difference of two values, its backbone's gradients reach the hundreds, and a step of 0.1
# overflows float32 in the next forward pass
STEP = {"ssdlite320_mobilenet_v3_large": 1e-3}


def _compare(net, batch, rng, passes=None):
    """Outputs (inference) and loss + gradients (training) with and without the passes
    (default: the default ones), to float32 rounding (a folded batch norm rounds
    differently, a fused kernel sums a bias gradient in another order), also after a
    training step changed the weights and the running statistics."""
    x = rng.standard_normal((batch, *net.graph.node(net.graph.inputs[0]).shape)).astype(np.float32)
    plain = net.compile(passes=[], warmup=False)
    opt = net.compile(warmup=False, passes=passes)
    _close(plain.predict(x), opt.predict(x), rtol=RTOL.get(net.graph.name, 1e-4))
    out_shape = net.graph.shape_of(net.graph.outputs[0])
    # sparse labels: one per sample, or one per pixel of a map of classes (segmentation)
    y = (rng.integers(0, out_shape[0], (batch, *out_shape[1:]))
         if plain.program.loss_name == "sparse_categorical_crossentropy"
         else rng.random((batch, *out_shape)).astype(np.float32))
    loss_a, ga = plain.loss_and_grads(x, y)
    loss_b, gb = opt.loss_and_grads(x, y)
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
    assert ga.keys() == gb.keys()
    for k in ga:
        _close(ga[k], gb[k], err_msg=k)
    for model in (plain, opt):   # the same step on both: weights and running statistics move
        for k, g in model.loss_and_grads(x, y)[1].items():
            model.params[k][...] -= STEP.get(net.graph.name, 0.1) * g
    _close(plain.predict(x), opt.predict(x), rtol=RTOL.get(net.graph.name, 1e-4))


def _close(a, b, err_msg="", rtol=1e-4):
    if isinstance(a, dict):   # several outputs
        assert a.keys() == b.keys()
        for k in a:
            _close(a[k], b[k], err_msg=k, rtol=rtol)
        return
    scale = max(float(np.abs(a).max()), 1e-3)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-5 * scale, err_msg=err_msg)


def _every_network_but_lenet5_slow(specs):
    """Whole networks, forward and backward, optimised and not: LeNet-5 in the quick subset,
    the rest marked slow (VGG-19 alone takes 48 s)."""
    return [pytest.param(s, id=s.stem, marks=() if s.stem == "lenet5" else pytest.mark.slow) for s in specs]


def _covering(specs) -> list:
    """The fewest specs, smallest first, whose graphs use every op any spec uses: each pass
    alone meets every op there (all passes together meet every spec above)."""
    ops = {}
    for spec in specs:
        graph = netspec.load(spec, **LOAD.get(spec.stem, {})).graph
        ops[spec] = ({node.op for node in graph.nodes()},
                     sum(int(np.prod(p.shape)) for node in graph.nodes() for p in node.params))
    chosen, seen = [], set()
    for spec in sorted(specs, key=lambda s: ops[s][1]):
        if ops[spec][0] - seen:
            chosen.append(spec)
            seen |= ops[spec][0]
    return sorted(chosen)


COVERING = _covering(SPECS)


@pytest.mark.parametrize("spec", _every_network_but_lenet5_slow(COVERING))
def test_each_pass_alone_changes_no_output_or_gradient(spec):
    """Every default pass on its own, on every spec: a pass that changes the graph keeps
    outputs and gradients (to float32 rounding); one that changes nothing leaves the program
    as it was, instruction for instruction."""
    net = netspec.load(spec, **LOAD.get(spec.stem, {}))
    plain = net.program(passes=[]).text()
    for name in P.DEFAULT:
        prog = net.program(passes=[name])
        if any(r.changes for records in prog.pass_records.values() for r in records):
            _compare(net, 2, np.random.default_rng(0), passes=[name])
        else:
            assert prog.text() == plain, name


def test_a_batch_norm_folds_into_a_dense_layer_on_each_token():
    """A sequence's channels are its features (its last axis), not its tokens: a batch norm
    without scale or centre folds into the dense layer before it with constants of F."""
    for attrs in ("scale=false", "center=false", ""):
        net = netspec.loads(f"network t() {{ input x: 3x6  x -> dense(5) -> batchnorm({attrs}) -> relu -> out }}")
        assert "fold-batchnorm" in [n for n, r in records(net.program(), "infer").items() if r.changes]
        _compare(net, 2, np.random.default_rng(3))


def test_busy_graph_unchanged_by_its_passes():
    _compare(netspec.loads(BUSY), 3, np.random.default_rng(1))


# the passes around a split's parts: each reads and rewires values ('p_q/split1:0'), not nodes
SPLITS = """
network splits() {
    input x: 4@4x4
    y = x -> conv(4, 1)
    p, q = split(y, 2)
    r, s = split(y, 2)
    u = p -> identity
    v = q -> flatten -> reshape((2, 4, 4))
    w = relu(u + r)
    concat(w, v * s) -> out
}
"""


def test_passes_rewire_the_parts_of_a_split():
    net = netspec.loads(SPLITS)
    infer = records(net.program(), "infer")
    assert infer["identity"].changes == ["removed u/identity1"]
    assert infer["fold-shapes"].changes == [
        "folded v/flatten1 into v/reshape1 (flatten then reshape(2, 4, 4): v/reshape1 reads "
        "p_q/split1:1, 2@4x4 -> 2@4x4)",
        "removed v/reshape1 (reshape(2, 4, 4) of p_q/split1:1 keeps its shape 2@4x4)"]
    assert infer["cse"].changes == ["merged r_s/split1 into p_q/split1 (both split of y/conv1)"]
    assert infer["fuse"].changes == ["fused w/add1 + w/relu1 (add+relu)"]
    g, _ = P.optimize(net.graph, training=False)
    assert [n.name for n in g.nodes()] == ["x", "y/conv1", "p_q/split1", "w/relu1", "multiply1",
                                           "concat1"]
    assert g.node("w/relu1").inputs == ["p_q/split1:0", "p_q/split1:0"]
    assert g.node("multiply1").inputs == ["p_q/split1:1", "p_q/split1:1"]
    _compare(net, 2, np.random.default_rng(2))


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


# ---------------------------------------------------------------- separable, fold-shapes

# strided same padding on an odd input, a multiplier, a dilation, with and without a bias;
# a batch norm after the first (folded into its 1x1 part), a frozen one, a penalised one
SEPARABLE = """
network seps() {
    input x: 3@9x9
    x -> separable_conv(8, 3, stride=2, pad=same, multiplier=2, bias=false, l2=0.01) -> batchnorm -> relu
      -> sep2: separable_conv(6, (3, 2), dilation=(1, 2), pad=1, act=relu)
      -> separable_conv(4, 1, trainable=false) -> global_avgpool -> dense(3) -> softmax -> out
}
"""

# flatten/reshape chains: one that composes to the identity (removed), one of three that
# becomes one reshape, identities exposed once dropout is gone (inference only), and an
# output that keeps its name
SHAPES = """
network shapes() {
    input x: 4@6x6
    a = x -> conv(4, 3, pad=same) -> flatten -> reshape((4, 6, 6)) -> relu
    b = a -> flatten -> reshape((16, 3, 3)) -> reshape(-1) -> reshape((16, 9, 1)) -> conv(2, 1)
    b -> flatten -> dropout(0.2) -> flatten -> reshape((18,)) -> dense(5) -> softmax -> out
    b -> reshape(-1) -> reshape((2, 9, 1)) -> out
}
"""


def _same_params(net):
    """The program's parameters with and without the passes: names, layouts, initialisers,
    trainability and gradients all the same."""
    plain, opt = net.program(passes=[]), net.program()
    # (as sets: a fused kernel may compute a bias gradient before the weight's)
    assert sorted(plain.params) == sorted(opt.params) and sorted(plain.grads) == sorted(opt.grads)
    for name in plain.params:
        a, b = plain.tensors[plain.params[name]], opt.tensors[opt.params[name]]
        assert (a.shape, a.user_shape, a.perm, a.kind, a.init, a.trainable) == \
               (b.shape, b.user_shape, b.perm, b.kind, b.init, b.trainable), name
    return plain, opt


def test_separable_splits_into_depthwise_then_1x1_conv_under_the_same_parameter_names():
    net = netspec.loads(SEPARABLE)
    plain, opt = _same_params(net)
    assert records(opt, "infer")["separable"].changes == [
        "split separable_conv1 into separable_conv1/depthwise (depthwise_conv 3x3/2, x2) "
        "then separable_conv1 (1x1 conv, 8)",
        "split sep2 into sep2/depthwise (depthwise_conv 3x2) then sep2 (1x1 conv, 6)",
        "split separable_conv2 into separable_conv2/depthwise (depthwise_conv 1x1) "
        "then separable_conv2 (1x1 conv, 4)"]
    assert records(opt, "train")["separable"].changes == records(opt, "infer")["separable"].changes
    assert records(opt, "infer")["fold-batchnorm"].changes == ["folded batchnorm1 into separable_conv1"]
    assert sorted(plain.params) == sorted([
        "separable_conv1.depthwise_weight", "separable_conv1.pointwise_weight",
        "sep2.depthwise_weight", "sep2.pointwise_weight", "sep2.bias",
        "separable_conv2.depthwise_weight", "separable_conv2.pointwise_weight", "separable_conv2.bias",
        "batchnorm1.weight", "batchnorm1.bias", "batchnorm1.running_mean", "batchnorm1.running_var",
        "dense1.weight", "dense1.bias"])
    assert opt.tensors["separable_conv1.depthwise_weight"].user_shape == (6, 1, 3, 3)
    assert opt.tensors["separable_conv1.pointwise_weight"].user_shape == (8, 6, 1, 1)
    assert opt.tensors["sep2.depthwise_weight"].user_shape == (8, 1, 3, 2)
    assert not opt.tensors["separable_conv2.pointwise_weight"].trainable   # still frozen
    assert "separable_conv2.depthwise_weight" not in opt.grads
    # the optimised graph: depthwise then 1x1 conv, the depthwise part's padding as before
    from netspec.passes.manager import optimize
    g, _ = optimize(net.graph, training=True, passes=["separable"])
    dw, pw = g.node("separable_conv1/depthwise"), g.node("separable_conv1")
    assert (dw.op, dw.inputs, dw.shape, dw.attrs.multiplier, dw.attrs.bias) == \
           ("depthwise_conv", ["x"], (6, 5, 5), 2, False)
    assert (pw.op, pw.inputs, pw.attrs.kernel, pw.attrs.bias) == ("conv", [dw.name], (1, 1), False)
    assert dw.penalty == pw.penalty == {"l2": 0.01}
    assert not g.node("separable_conv2/depthwise").trainable and not g.node("separable_conv2").trainable
    assert g.consumers("sep2") == ["sep2_relu"] and g.node("sep2/depthwise").inputs == ["relu1"]
    assert "separable_conv" not in {n.op for n in g.nodes()}
    # the same convolutions, attributes and weights as the separable's own lowering (the
    # training step's backward ones too)
    def convs(prog, phase):
        return [(i.kernel, i.attrs, [t.removesuffix(":folded") for t in i.inputs if t and "weight" in t])
                for i in prog.phases[phase].instrs if i.kernel.startswith("conv2d")]
    assert convs(opt, "infer") == convs(plain, "infer") and len(convs(opt, "infer")) == 6
    assert convs(opt, "train") == convs(plain, "train") and len(convs(opt, "train")) == 6 + 4 + 5   # 4 weight gradients: one layer is frozen
    assert convs(opt, "infer")[0][1] == {"stride": (2, 2), "pad": (1, 1, 1, 1), "dilation": (1, 1),
                                         "groups": 3}
    assert convs(opt, "infer")[2][1] == {"stride": (1, 1), "pad": (1, 1, 1, 1), "dilation": (1, 2),
                                         "groups": 8}
    assert [(i.node, i.kernel) for i in opt.phases["prepare"].instrs] == [("separable_conv1", "bn_fold")]
    # the spec's own graph is untouched
    assert net.graph.node("sep2").op == "separable_conv" and "sep2/depthwise" not in net.graph


def test_a_batch_norm_folded_before_the_split_goes_to_the_1x1_part():
    net = netspec.loads(SEPARABLE)
    prog = net.program(passes=["fold-batchnorm", "separable"])
    assert [(i.node, i.kernel) for i in prog.phases["prepare"].instrs] == [("separable_conv1", "bn_fold")]
    fold = next(i for i in prog.phases["prepare"].instrs)
    assert fold.inputs[0] == "separable_conv1.pointwise_weight"
    assert "batchnorm_infer" not in [i.kernel for i in prog.phases["infer"].instrs]
    x = np.random.default_rng(7).standard_normal((2, 3, 9, 9)).astype(np.float32)
    plain = net.compile(passes=[], warmup=False)
    opt = net.compile(passes=["fold-batchnorm", "separable"], warmup=False)
    for model in (plain, opt):   # running statistics away from (0, 1)
        for k, g in model.loss_and_grads(x, np.array([0, 1]))[1].items():
            model.params[k][...] -= STEP.get(net.graph.name, 0.1) * g
    _close(plain.predict(x), opt.predict(x), rtol=RTOL.get(net.graph.name, 1e-4))


def test_separable_graph_unchanged_by_its_passes():
    _compare(netspec.loads(SEPARABLE), 3, np.random.default_rng(2))


def test_fold_shapes_collapses_chains_and_removes_identities():
    net = netspec.loads(SHAPES)
    _same_params(net)
    prog = net.program()
    infer, train = records(prog, "infer"), records(prog, "train")
    assert infer["fold-shapes"].changes == [
        "folded a/flatten1 into a/reshape1 (flatten then reshape(4, 6, 6): a/reshape1 reads "
        "a/conv1, 4@6x6 -> 4@6x6)",
        "removed a/reshape1 (reshape(4, 6, 6) of a/conv1 keeps its shape 4@6x6)",
        "folded b/flatten1 into b/reshape1 (flatten then reshape(16, 3, 3): b/reshape1 reads "
        "a/relu1, 4@6x6 -> 16@3x3)",
        "folded b/reshape1 into b/reshape2 (reshape(16, 3, 3) then reshape(-1): b/reshape2 reads "
        "a/relu1, 4@6x6 -> 144)",
        "folded b/reshape2 into b/reshape3 (reshape(-1) then reshape(16, 9, 1): b/reshape3 reads "
        "a/relu1, 4@6x6 -> 16@9x1)",
        "folded flatten1 into flatten2 (flatten then flatten: flatten2 reads b/conv1, "
        "2@9x1 -> 18)",
        "folded flatten2 into reshape1 (flatten then reshape(18): reshape1 reads b/conv1, "
        "2@9x1 -> 18)",
        "folded reshape2 into reshape3 (reshape(-1) then reshape(2, 9, 1): reshape3 reads "
        "b/conv1, 2@9x1 -> 2@9x1)"]
    # training keeps the dropout: the flatten before it stays, the two after it are the identity
    assert train["fold-shapes"].changes[:5] == infer["fold-shapes"].changes[:5]
    assert train["fold-shapes"].changes[5:] == [
        "removed flatten2 (flatten of dropout1 keeps its shape 18)",
        "removed reshape1 (reshape(18) of dropout1 keeps its shape 18)",
        "folded reshape2 into reshape3 (reshape(-1) then reshape(2, 9, 1): reshape3 reads "
        "b/conv1, 2@9x1 -> 2@9x1)"]
    from netspec.passes.manager import optimize
    g, _ = optimize(net.graph, training=False, passes=P.select("-fuse"))
    shape_nodes = sorted(n.name for n in g.nodes() if n.op in ("flatten", "reshape"))
    # reshape3 is an output: it keeps its name though it is now its input's shape
    assert shape_nodes == ["b/reshape3", "reshape1", "reshape3"]
    assert g.node("a/relu1").inputs == ["a/conv1"] and g.node("b/reshape3").inputs == ["a/relu1"]
    assert g.node("dense1").inputs == ["reshape1"] and g.node("reshape1").inputs == ["b/conv1"]
    assert g.outputs == net.graph.outputs and g.node("reshape3").inputs == ["b/conv1"]
    kernels = [i.kernel for i in prog.phases["infer"].instrs]
    plain = [i.kernel for i in net.program(passes=[]).phases["infer"].instrs]
    assert (plain.count("to_flat"), plain.count("from_flat")) == (5, 4)
    assert (kernels.count("to_flat"), kernels.count("from_flat")) == (3, 2)


def test_fold_shapes_keeps_a_shape_layer_other_layers_read():
    text = """
    network fan() {
        input x: 2@4x4
        feat = x -> conv(2, 1) -> flatten
        side = feat -> reshape((8, 2, 2)) -> conv(3, 1) -> flatten
        concat(side, feat) -> dense(3) -> out
    }
    """
    net = netspec.loads(text)
    prog = net.program()
    assert records(prog, "infer")["fold-shapes"].changes == []
    _compare(net, 2, np.random.default_rng(4))


def test_shapes_graph_unchanged_by_its_passes():
    _compare(netspec.loads(SHAPES), 3, np.random.default_rng(3))


@pytest.mark.parametrize("text", [SEPARABLE, SHAPES], ids=["separable", "shapes"])
def test_weights_saved_without_passes_load_into_the_optimised_model(text, tmp_path):
    net = netspec.loads(text)
    plain = net.compile(passes=[], seed=1, warmup=False)
    x = np.random.default_rng(5).standard_normal((2, *net.graph.node("x").shape)).astype(np.float32)
    for k, g in plain.loss_and_grads(x, np.array([0, 2]))[1].items():
        plain.params[k][...] -= 0.1 * g   # a step: the batch norm's statistics move too
    path = tmp_path / "w.safetensors"
    plain.save_weights(path)
    opt = net.compile(seed=2, warmup=False)
    assert opt.load_weights(path) == sorted(plain.params)
    for k, v in plain.params.items():
        np.testing.assert_array_equal(opt.params[k], v)
    def outputs(model):
        out = model.predict(x)
        return out if isinstance(out, dict) else {"out": out}
    want = outputs(plain)
    _close(want, outputs(opt))
    fresh = outputs(net.compile(passes=[], seed=2, warmup=False))   # the weights matter
    assert not all(np.allclose(want[k], fresh[k]) for k in want)
    # and back: the optimised model's weights fit the plain one
    opt.save_weights(tmp_path / "back.npz")
    again = net.compile(passes=[], seed=3, warmup=False)
    assert again.load_weights(tmp_path / "back.npz") == sorted(plain.params)
    for k, v in outputs(again).items():
        np.testing.assert_array_equal(v, want[k])
