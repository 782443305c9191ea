"""The ops' declared traits (ops/base.py Traits) against what the ops do.

Each derived set (the act= choices, the fuse pass's anchors and steps, the ops a batch norm
folds into, the shape-only ops, the random ones) is compared with an independent statement
of what it must contain, found by building a one-op graph of every registered op and
looking at how it lowers, what the passes make of it and how it runs: never with a copy of
the list.
"""

from __future__ import annotations

import numpy as np
import pytest

import netspec
from netspec.errors import AttrError, ShapeError
from netspec.graph.graph import Graph, Node
from netspec.lower.build import lower_optimised
from netspec.model import Model
from netspec.ops import OPS, Fusion, OpKind, Purity, op_names
from netspec.ops.base import REQUIRED
from netspec.ops.cases import Run
from netspec.ops.conv import act_choices
from netspec.passes.manager import optimize
from netspec.runtime.cpu import KERNELS, Context
from netspec.runtime.isa import FUSED_POOLS, KERNELS as ISA

# values for the attributes an op requires, by attribute name
SAMPLE = {"filters": 4, "kernel": 2, "units": 3, "shape": (-1,), "heads": 2, "groups": 2, "size": 2,
          "parts": 2}
# a feature map, a vector, then a sequence: the first input an op's shape rule accepts
INPUTS = ((4, 6, 6), (8,), (3, 8))
LANGUAGE_OPS = sorted(name for name, op in OPS.items() if op.min_inputs > 0)


def _node(graph: Graph, name: str, op: str, inputs: list[str], attrs=None, **given) -> Node:
    op_def = OPS[op]
    if attrs is None:
        attrs = op_def.make_attrs([], {**{a.name: SAMPLE[a.name] for a in op_def.attrs
                                          if a.default is REQUIRED}, **given})
    ins = [graph.shape_of(i) for i in inputs]
    return graph.add(Node(name, op, attrs, inputs, tuple(op_def.shape(attrs, ins)),
                          op_def.params(attrs, ins), parts=tuple(op_def.parts(attrs, ins))))


def one_op(op: str, after: tuple[str, ...] = (), **given) -> Graph:
    """x -> op (as many times x as it needs inputs) -> the ops in `after`, one output (of an
    op of several outputs, its first)."""
    n = OPS[op].min_inputs
    for shape in INPUTS:
        graph = Graph(f"one_{op}")
        _node(graph, "x", "input", [], OPS["input"].make_attrs([shape], {}))
        try:
            last = graph.values(_node(graph, op, op, ["x"] * n, **given))[0]
        except ShapeError:
            continue
        for k, nxt in enumerate(after):
            last = graph.values(_node(graph, f"after{k}", nxt, [last] * max(1, OPS[nxt].min_inputs)))[0]
        graph.outputs = [last]
        return graph
    raise AssertionError(f"{op} accepts none of {INPUTS}")


def lowered(graph: Graph, phase: str = "infer"):
    """The Program of `graph` as written, its training phase differentiating to the inputs too."""
    program = lower_optimised(graph, graph, loss="mse", input_grads=True)
    return program, program.phases[phase]


def own_instrs(graph: Graph, phase: str, node: str) -> list[str]:
    return [i.kernel for i in lowered(graph, phase)[1].instrs if i.node == node]


def _output_instr(graph: Graph, node: str):
    """The instruction that writes `node`'s output in the inference phase, if one does."""
    program, infer = lowered(graph)
    return program, next((i for i in infer.instrs if node in i.outputs), None)


# ---------------------------------------------------------------- activations and act=

def _is_parameter_free_activation(op: str) -> bool:
    """An activation function: an activation op without parameters that lowers to the ISA
    instruction of its own name, whose gradient is that name's _bwd instruction."""
    graph = one_op(op)
    return (OPS[op].kind is OpKind.ACTIVATION and not graph.node(op).params
            and own_instrs(graph, "infer", op) == [op] and own_instrs(graph, "train", op) == [op, op + "_bwd"]
            and op in ISA and op + "_bwd" in ISA)


def test_act_accepts_exactly_the_parameter_free_activations():
    expected = {op for op in LANGUAGE_OPS if _is_parameter_free_activation(op)}
    assert expected and set(act_choices()) == {"none", *expected}
    for op in LANGUAGE_OPS:
        for layer, required in (("conv", [4, 3]), ("dense", [4])):
            if op in expected:
                assert OPS[layer].make_attrs(required, {"act": op}).act == op
            else:
                with pytest.raises(AttrError, match="act"):
                    OPS[layer].make_attrs(required, {"act": op})


def test_act_adds_the_activation_after_the_layer():
    for act in op_names(lambda t: t.activation):
        net = netspec.loads(f"network n() {{\n input x: 8\n x -> dense(3, act={act}) -> out\n}}")
        assert [n.op for n in net.graph.nodes()] == ["input", "dense", act]


# ---------------------------------------------------------------- fusion

def _kernel_is_elementwise(op: str) -> bool:
    """Whether the CPU kernel of `op` commutes with any shuffle of its input's elements."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    perm = rng.permutation(x.size)
    attrs = dict(OPS[op].make_attrs([], {}))

    def run(v):
        y = np.empty_like(v)
        KERNELS[op]([v], [y], attrs, Context())
        return y
    return np.allclose(run(x.reshape(-1)[perm].reshape(x.shape)).reshape(-1), run(x).reshape(-1)[perm])


def _fused_patterns(graph: Graph) -> list[str]:
    g, _ = optimize(graph, training=False, passes=["fuse"])
    return [n.attrs.pattern for n in g.nodes() if n.op == "fused"]


def test_fused_activations_are_the_elementwise_activation_functions():
    expected = {op for op in act_choices()[1:] if _kernel_is_elementwise(op)}
    assert expected and set(op_names(lambda t: t.fusion is Fusion.ACTIVATION)) == expected
    assert all(OPS[op].traits.elementwise for op in expected)
    for op in expected:
        assert _fused_patterns(one_op("conv", (op,))) == [f"conv+{op}"]


def test_fused_adds_are_the_merges_that_lower_to_the_add_instruction():
    merges = [op for op in LANGUAGE_OPS if OPS[op].min_inputs > 1]
    expected = {op for op in merges if own_instrs(one_op(op), "infer", op) == ["add"]}
    assert expected and set(op_names(lambda t: t.fusion is Fusion.ADD)) == expected
    for op in expected:
        assert _fused_patterns(one_op(op, ("relu",))) == [f"{op}+relu"]


def test_fused_pools_are_the_windowed_pools():
    expected = {op for op in LANGUAGE_OPS
                if OPS[op].kind is OpKind.POOL and isinstance(OPS[op].window(one_op(op).node(op).attrs), tuple)}
    assert expected and set(op_names(lambda t: t.fusion is Fusion.POOL)) == expected
    assert set(FUSED_POOLS) == expected        # the pool steps the ISA's fused_map takes
    for op in expected:
        assert _fused_patterns(one_op("conv", ("relu", op), pad="same")) == [f"conv+relu+{op}"]
        # windows that overlap do not tile their input: not fused
        assert _fused_patterns(_overlapping(op)) == ["conv+relu"]


def _overlapping(pool: str) -> Graph:
    graph = one_op("conv", ("relu",), pad="same")
    last = _node(graph, "pool", pool, ["after0"], stride=1)
    graph.outputs = [last.name]
    return graph


def _weight_layer(op: str) -> bool:
    """Its output is written by a conv2d or dense instruction whose weight's first axis is
    the output channel (the one thing a batch-norm fold and the fused bias gradient need)."""
    graph = one_op(op)
    program, instr = _output_instr(graph, op)
    return (instr is not None and instr.kernel in ("conv2d", "dense")
            and program.tensors[instr.inputs[1]].shape[0] == graph.node(op).shape[0])


def test_anchors_and_batchnorm_folding_are_the_weight_layers():
    expected = {op for op in LANGUAGE_OPS if _weight_layer(op)}
    assert expected and set(op_names(lambda t: t.fusion is Fusion.ANCHOR)) == expected
    assert set(op_names(lambda t: t.folds_batchnorm)) == expected
    for op in expected:
        assert _fused_patterns(one_op(op, ("relu",))) == [f"{op}+relu"]


@pytest.mark.parametrize("op", LANGUAGE_OPS)
def test_a_batch_norm_folds_into_exactly_the_ops_that_say_so(op):
    graph = one_op(op, ("batchnorm", "relu"))   # an output's batch norm is never folded
    program = lower_optimised(optimize(graph, training=False, passes=["fold-batchnorm"])[0])
    infer, prepare = program.phases["infer"], program.phases.get("prepare")
    folds = prepare.instrs if prepare else []
    if OPS[op].traits.folds_batchnorm:
        assert [(i.node, i.kernel) for i in folds] == [(op, "bn_fold")]
        weight = folds[0].outputs[0]
        assert program.tensors[weight].shape[0] == graph.node(op).shape[0]   # scaled per output channel
        assert weight in next(i for i in infer.instrs if op in i.outputs).inputs
    else:
        assert not folds and "batchnorm_infer" in [i.kernel for i in infer.instrs]


# ---------------------------------------------------------------- shape-only, purity

REINTERPRET = {"to_flat", "from_flat"}


def _only_reinterprets(op: str) -> bool:
    """Its lowering in both phases only views or reorders the elements channel-major (no
    arithmetic), it can change its input's shape, and its output is its input's elements
    read in channel-major order (to_tokens, a view of the channels-last layout, is not)."""
    graph = one_op(op)
    node = graph.node(op)
    if node.params or node.shape == graph.node("x").shape:
        return False
    if not all(set(own_instrs(graph, phase, op)) <= REINTERPRET for phase in ("infer", "train")):
        return False
    x = np.random.default_rng(0).standard_normal((2, *graph.node("x").shape))
    y = node.opdef.reference(node.attrs, [x], {}, Run(shape=node.shape))
    return np.array_equal(y, x.reshape(y.shape))


def test_shape_only_ops_are_the_ops_that_only_reinterpret_their_input():
    expected = {op for op in LANGUAGE_OPS if _only_reinterprets(op)}
    assert expected and set(op_names(lambda t: t.shape_only)) == expected


def _training_runs(op: str) -> list[tuple]:
    """Two training steps of x -> op on the same input and weights: (loss, gradients) each."""
    graph = one_op(op)
    program = lower_optimised(graph, graph, loss="mse")
    model = Model(netspec.Network(None, graph), program, warmup=False)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, *graph.node("x").shape)).astype(np.float32)
    y = rng.standard_normal((2, *graph.shape_of(graph.outputs[0]))).astype(np.float32)
    runs = []
    for _ in range(2):
        loss, grads = model.loss_and_grads(x, y)
        runs.append((loss, {k: np.array(v) for k, v in grads.items()}))
    return runs


def test_random_ops_are_the_ops_whose_training_step_differs_between_runs():
    random = set()
    for op in LANGUAGE_OPS:
        (l1, g1), (l2, g2) = _training_runs(op)
        if l1 != l2 or any(not np.array_equal(g1[k], g2[k]) for k in g1):
            random.add(op)
    assert random and set(op_names(lambda t: t.purity is Purity.RANDOM)) == random


def test_sources_are_the_ops_without_inputs():
    assert set(op_names(lambda t: t.purity is Purity.SOURCE)) == {
        name for name, op in OPS.items() if op.max_inputs == 0}


# ---------------------------------------------------------------- initialisers

def test_weight_init_follows_the_activation_through_the_ops_that_say_so():
    """A dense layer's weights take the initialiser its activation names, also through an op
    the choice looks through, and the op's own default otherwise."""
    through = op_names(lambda t: t.init_looks_through)
    assert through
    for act in op_names(lambda t: t.weight_init is not None):
        assert OPS[act].traits.activation
        for between in ((), *((op,) for op in through)):
            graph = one_op("dense", (*between, act))
            tensor = lowered(graph)[0].tensors["dense.weight"]
            assert tensor.init == OPS[act].traits.weight_init, (act, between)
    # an activation that names none, or an op in between that the choice does not look through
    for after in (("tanh",), ("flatten", "relu")):
        assert lowered(one_op("dense", after))[0].tensors["dense.weight"].init == "glorot_uniform"


@pytest.mark.parametrize("name", op_names(lambda traits: traits.logit_losses))
def test_an_op_that_makes_probabilities_is_folded_into_its_losses(name):
    """A network ending in the op defaults to its first loss, reports probabilities, and each of
    its losses takes the op's input as logits: the training loss equals the loss computed in
    float64 from the logits (stable log-sum-exp / softplus), on logits large enough that
    computing it from the op's rounded probabilities would lose digits."""
    from netspec.lower.build import LOSSES, default_loss, outputs_probabilities
    op = OPS[name]
    net = netspec.loads(f"network t() {{\n input x: 4\n x -> {name} -> out\n}}\n")
    assert default_loss(net.graph) == op.traits.logit_losses[0]
    assert outputs_probabilities(net.graph)
    x = np.array([[30.0, -4.0, 1.0, 2.5], [-1.0, 0.5, 40.0, -30.0]])
    for loss in op.traits.logit_losses:
        assert loss in LOSSES
        model = net.compile(dtype="float64", loss=loss)
        if loss == "sparse_categorical_crossentropy":
            targets = np.array([1, 3])
            want = np.mean(np.logaddexp.reduce(x, axis=1) - x[[0, 1], targets])
        elif loss == "categorical_crossentropy":
            targets = np.array([[0.1, 0.6, 0.2, 0.1], [0.0, 0.0, 0.0, 1.0]])
            want = np.mean(np.sum(targets * (np.logaddexp.reduce(x, axis=1, keepdims=True) - x), axis=1))
        else:
            targets = np.array([[1.0, 0.0, 0.5, 1.0], [0.0, 1.0, 1.0, 0.0]])
            want = np.mean(np.logaddexp(0, x) - targets * x)
        got, _ = model.loss_and_grads({"x": x}, targets)
        assert got == pytest.approx(want, rel=1e-12)


def test_ops_that_do_not_make_probabilities_default_to_mse():
    from netspec.lower.build import default_loss, outputs_probabilities
    net = netspec.loads("network t() {\n input x: 4\n x -> tanh -> out\n}\n")
    assert default_loss(net.graph) == "mse" and not outputs_probabilities(net.graph)
