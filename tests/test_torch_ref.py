"""The PyTorch oracle (netspec.testing.torch_ref) against the graph and against hand-computed numbers.

The oracle is what the CPU backend is tested against, so it is tested first: every spec runs
through it with the graph's shapes and parameter counts, and the conventions that PyTorch does
not share (TensorFlow's asymmetric 'same', avgpool's real-pixel divisor, Keras's batchnorm
momentum, conv_transpose 'same' as the adjoint of a same conv) are checked on numbers written
out by hand.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch


import netspec
from netspec.testing.specs import SMALL
from netspec.ops.reference.common import window_pads
from netspec.testing.torch_ref import TorchGraph, loss, torch_params

F = torch.nn.functional
SPECS = sorted((Path(__file__).parent.parent / "specs").glob("*.net"))

# How each spec is loaded for the shape test: small inputs (and 10 classes) where the spec
# allows them.
LOAD = SMALL

# Every op, with the attribute variants the specs do not reach (dilation, groups, explicit
# and asymmetric padding, strides that differ per axis, multipliers, output_padding,
# conv_transpose same with a kernel smaller than its stride, vectors through batchnorm...).
ALL_OPS = """
network all_ops(classes=5) {
    input image: 3@13x11
    a = image -> conv(8, (3, 2), stride=(2, 1), pad=(1, 0), dilation=(1, 2), act=leaky_relu)
              -> prelu -> lrn(size=3)
    b = image -> depthwise_conv(3, stride=2, pad=same, multiplier=2, dilation=2) -> selu
              -> separable_conv(8, 3, stride=(1, 2), pad=same, multiplier=2, bias=false)
              -> batchnorm(momentum=0.9, epsilon=1e-5, center=false)
              -> maxpool(3, stride=1, pad=same) -> elu
    c = image -> conv(6, 3, groups=3, pad=valid) -> avgpool(3, stride=2, pad=same)
              -> conv_transpose(6, 1, stride=2, pad=same, groups=2) -> relu6
              -> conv_transpose(4, 3, stride=2, pad=1, output_padding=1, dilation=2)
              -> avgpool(3, stride=2, pad=1, include_pad=true)
              -> avgpool(2, stride=1, pad=same)
    m = a -> avgpool(2, pad=1) -> identity -> sigmoid
    v1 = m -> global_maxpool
    v2 = b -> global_avgpool -> prelu -> dropout(0.3) -> tanh
    v3 = c -> flatten -> reshape((-1, 1, 1)) -> reshape(-1) -> batchnorm -> dense(7, bias=false)
    concat(v1, v2, v3) -> dense(classes) -> softmax -> out
}
"""


def load_spec(path: Path):
    kwargs = LOAD.get(path.stem)
    if kwargs is None:
        graph = netspec.load(path).graph
        kwargs = {}
        if "classes" in graph.params:
            kwargs["classes"] = 10
        shape = graph.node(graph.inputs[0]).shape
        if len(shape) == 3 and len(graph.inputs) == 1:
            kwargs["input_shape"] = (shape[0], 64, 64)
    return netspec.load(path, **kwargs).graph


def check_shapes_and_params(graph, dtype=torch.float32):
    model = TorchGraph(graph, dtype=dtype, calibrate=False)
    # parameter count and names: the graph's, split the same way into trainable and not
    t, n = graph.total_params()
    sizes = {name: tuple(v.shape) for name, v in model.state().items()}
    expected = {f"{node.name}.{p.name}": tuple(p.shape) for node in graph.nodes()
                for p in node.params}
    assert sizes == expected
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert (trainable, sum(map(math.prod, sizes.values())) - trainable) == (t, n)
    gen = torch.Generator().manual_seed(0)
    x = {name: torch.randn((2, *graph.node(name).shape), generator=gen, dtype=dtype)
         for name in graph.inputs}
    for mode in ("eval", "train"):
        getattr(model, mode)()
        with torch.no_grad():
            outs = model(x)
        values = [v for node in graph.nodes() for v in graph.values(node)]   # a split's parts
        assert set(outs) == set(values)
        for value in values:
            assert tuple(outs[value].shape) == (2, *graph.shape_of(value)), (mode, value)
        for name in graph.outputs:
            assert torch.isfinite(outs[name]).all(), (mode, name)


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_spec_shapes_and_params(path):
    check_shapes_and_params(load_spec(path))


def test_all_ops_shapes_and_params():
    check_shapes_and_params(netspec.loads(ALL_OPS).graph, torch.float64)


# ---------------------------------------------------------------- hand-computed numbers

X44 = np.arange(1, 17, dtype=np.float64).reshape(1, 1, 4, 4)
#  1  2  3  4
#  5  6  7  8
#  9 10 11 12
# 13 14 15 16


def run_one(text: str, x, params=None, train=False):
    """Load a one-input network, set its parameters, return (graph, model, output array)."""
    graph = netspec.loads(text).graph
    model = TorchGraph(graph)
    if params:
        model.load({**model.state(), **params})
    model.train(train)
    outs = model(torch.as_tensor(x))
    return graph, model, outs[graph.outputs[0]].detach().numpy()


def net(layer: str, shape: str = "1@4x4") -> str:
    return f"network t() {{\n input x: {shape}\n x -> {layer} -> out\n}}"


def test_same_padding_is_tensorflows():
    def same_pads(size, k, s, d=1):    # (before, after) along one axis
        return window_pads("same", (size, 1), (k, 1), (s, 1), (d, 1))[:2]
    assert same_pads(4, 3, 2) == (0, 1)       # out 2: total (2-1)*2 + 3 - 4 = 1, after
    assert same_pads(4, 2, 1) == (0, 1)
    assert same_pads(5, 3, 1) == (1, 1)
    assert same_pads(4, 4, 1) == (1, 2)
    assert same_pads(7, 3, 2, 2) == (2, 2)    # span 5: (4-1)*2 + 5 - 7 = 4
    ones = {"conv1.weight": np.ones((1, 1, 3, 3))}
    # 3x3/2 on 4x4: 2x2 windows at rows/cols 0 and 2; the one padded row and column go
    # bottom/right (PyTorch's symmetric padding=1 would give 14 at the top left)
    _, _, y = run_one(net("conv(1, 3, stride=2, pad=same, bias=false)"), X44, ones)
    assert y[0, 0].tolist() == [[1 + 2 + 3 + 5 + 6 + 7 + 9 + 10 + 11, 3 + 4 + 7 + 8 + 11 + 12],
                                [9 + 10 + 11 + 13 + 14 + 15, 11 + 12 + 15 + 16]]
    assert y[0, 0].tolist() == [[54, 45], [72, 54]]
    # an even kernel at stride 1: the padding is all after
    _, _, y = run_one(net("conv(1, 2, pad=same, bias=false)"), X44,
                      {"conv1.weight": np.ones((1, 1, 2, 2))})
    assert y[0, 0].tolist() == [[14, 18, 22, 12],
                                [30, 34, 38, 20],
                                [46, 50, 54, 28],
                                [27, 29, 31, 16]]
    # an asymmetric kernel pins the orientation: w = [[1, 10], [100, 1000]]
    _, _, y = run_one(net("conv(1, 2, pad=same, bias=false)"), X44,
                      {"conv1.weight": np.array([[[[1, 10], [100, 1000]]]], dtype=float)})
    assert y[0, 0, 0, 0] == 1 + 20 + 500 + 6000
    assert y[0, 0, 3, 3] == 16
    assert y[0, 0, 0, 3] == 4 + 800
    assert y[0, 0, 3, 0] == 13 + 140
    # maxpool 'same': padding never wins, even on negative inputs
    _, _, y = run_one(net("maxpool(3, stride=2, pad=same)"), X44)
    assert y[0, 0].tolist() == [[11, 12], [15, 16]]
    _, _, y = run_one(net("maxpool(3, stride=2, pad=same)"), -X44)
    assert y[0, 0].tolist() == [[-1, -3], [-9, -11]]
    _, _, y = run_one(net("maxpool(3, stride=1, pad=1)"), -X44)
    assert y[0, 0, 0].tolist() == [-1, -1, -2, -3]


def test_avgpool_divisor_at_corners():
    # 3x3/1 with padding 1: a corner window holds 4 real pixels, an edge window 6
    _, _, y = run_one(net("avgpool(3, stride=1, pad=1)"), X44)
    assert y[0, 0, 0, 0] == pytest.approx((1 + 2 + 5 + 6) / 4)
    assert y[0, 0, 0, 1] == pytest.approx((1 + 2 + 3 + 5 + 6 + 7) / 6)
    assert y[0, 0, 3, 3] == pytest.approx((11 + 12 + 15 + 16) / 4)
    assert y[0, 0, 1, 1] == pytest.approx((1 + 2 + 3 + 5 + 6 + 7 + 9 + 10 + 11) / 9)
    _, _, y = run_one(net("avgpool(3, stride=1, pad=1, include_pad=true)"), X44)
    assert y[0, 0, 0, 0] == pytest.approx((1 + 2 + 5 + 6) / 9)
    assert y[0, 0, 0, 1] == pytest.approx((1 + 2 + 3 + 5 + 6 + 7) / 9)
    # asymmetric 'same' (3x3/2 on 4x4: one padded row and column, bottom/right)
    _, _, y = run_one(net("avgpool(3, stride=2, pad=same)"), X44)
    np.testing.assert_allclose(y[0, 0], [[54 / 9, 45 / 6], [72 / 6, 54 / 4]])
    _, _, y = run_one(net("avgpool(3, stride=2, pad=same, include_pad=true)"), X44)
    np.testing.assert_allclose(y[0, 0], [[54 / 9, 45 / 9], [72 / 9, 54 / 9]])


@pytest.mark.parametrize("h, k, s, d, pad, op", [
    (5, 3, 2, 1, "same", 0), (4, 4, 2, 1, "same", 0), (3, 5, 3, 1, "same", 0),
    (4, 1, 2, 1, "same", 0), (3, 2, 3, 1, "same", 0), (4, 3, 1, 2, "same", 0),
    (6, 3, 1, 1, "same", 0), (3, 3, 2, 1, 1, 1), (4, 5, 3, 2, 2, 2), (3, 4, 2, 1, "valid", 1),
])
def test_conv_transpose_is_the_adjoint_of_conv(h, k, s, d, pad, op):
    """<conv(x), y> == <x, conv_transpose(y)>, conv on the transposed conv's output size."""
    cin, cout = 3, 2
    p = pad if isinstance(pad, str) else f"{pad}"
    opad = f", output_padding={op}" if op else ""
    tr = netspec.loads(net(f"conv_transpose({cin}, {k}, stride={s}, pad={p}, dilation={d}, "
                           f"bias=false{opad})", f"{cout}@{h}x{h + 1}")).graph
    big = tr.node(tr.outputs[0]).shape           # (cin, H', W')
    if pad == "same":
        assert big[1:] == (h * s, (h + 1) * s)
    fw = netspec.loads(net(f"conv({cout}, {k}, stride={s}, pad={p}, dilation={d}, bias=false)",
                           f"{cin}@{big[1]}x{big[2]}")).graph
    assert fw.node(fw.outputs[0]).shape == (cout, h, h + 1)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((cout, cin, k, k))   # conv OIHW == conv_transpose (in, out, kh, kw)
    x = rng.standard_normal((2, *big))
    y = rng.standard_normal((2, cout, h, h + 1))
    _, _, cx = run_one(net(f"conv({cout}, {k}, stride={s}, pad={p}, dilation={d}, bias=false)",
                           f"{cin}@{big[1]}x{big[2]}"), x, {"conv1.weight": w})
    _, _, ty = run_one(net(f"conv_transpose({cin}, {k}, stride={s}, pad={p}, dilation={d}, "
                           f"bias=false{opad})", f"{cout}@{h}x{h + 1}"), y,
                       {"conv_transpose1.weight": w})
    assert np.vdot(cx, y) == pytest.approx(np.vdot(x, ty), rel=1e-12)


def test_conv_transpose_same_bias_everywhere():
    """The bias reaches every output pixel, the ones no input pixel reaches included."""
    _, _, y = run_one(net("conv_transpose(1, 1, stride=2, pad=same)", "1@2x2"), np.ones((1, 1, 2, 2)),
                      {"conv_transpose1.weight": np.full((1, 1, 1, 1), 3.0),
                       "conv_transpose1.bias": np.array([0.5])})
    assert y[0, 0].tolist() == [[3.5, 0.5, 3.5, 0.5], [0.5, 0.5, 0.5, 0.5],
                                [3.5, 0.5, 3.5, 0.5], [0.5, 0.5, 0.5, 0.5]]


def test_batchnorm_keras_momentum_by_hand():
    x = np.array([[1.0, 2.0], [3.0, 2.0], [5.0, 4.0], [7.0, 4.0]])
    # feature 0: mean 4, biased var 5, unbiased 20/3; feature 1: mean 3, var 1, unbiased 4/3
    params = {"batchnorm1.weight": np.array([1.0, 2.0]), "batchnorm1.bias": np.array([0.0, 1.0]),
              "batchnorm1.running_mean": np.array([0.0, 10.0]),
              "batchnorm1.running_var": np.array([1.0, 2.0])}
    graph, model, y = run_one(net("batchnorm(momentum=0.9, epsilon=0.01)", "2"), x, params,
                              train=True)
    state = model.state()
    np.testing.assert_allclose(state["batchnorm1.running_mean"], [0.9 * 0 + 0.1 * 4,
                                                                  0.9 * 10 + 0.1 * 3])
    np.testing.assert_allclose(state["batchnorm1.running_var"], [0.9 * 1 + 0.1 * 20 / 3,
                                                                 0.9 * 2 + 0.1 * 4 / 3])
    np.testing.assert_allclose(y[:, 0], (x[:, 0] - 4) / math.sqrt(5 + 0.01))
    np.testing.assert_allclose(y[:, 1], 2 * (x[:, 1] - 3) / math.sqrt(1 + 0.01) + 1)
    # inference: the running statistics, untouched
    model.eval()
    y = model(torch.as_tensor(x))[graph.outputs[0]].detach().numpy()
    np.testing.assert_allclose(y[:, 0], (x[:, 0] - 0.4) / math.sqrt(0.9 + 2 / 3 + 0.01))
    np.testing.assert_allclose(model.state()["batchnorm1.running_mean"], [0.4, 9.3])
    # default Keras momentum 0.99 on a feature map: 1 - 0.99 of the batch statistics
    graph, model, _ = run_one(net("batchnorm"), X44, train=True)
    model.load({**model.state(), "batchnorm1.running_mean": np.zeros(1),
                "batchnorm1.running_var": np.ones(1)})
    model(torch.as_tensor(X44))
    np.testing.assert_allclose(model.state()["batchnorm1.running_mean"], [0.01 * 8.5])
    np.testing.assert_allclose(model.state()["batchnorm1.running_var"],
                               [0.99 + 0.01 * np.var(X44, ddof=1)])


def test_lrn_by_hand():
    x = np.arange(1.0, 5.0).reshape(1, 4, 1, 1)
    _, _, y = run_one(net("lrn(size=3, alpha=0.3, beta=0.5, k=2)", "4@1x1"), x)
    # channel 0 sums channels [-1, 1] (0 and 1); channel 3 sums 2..4 (2 and 3)
    assert y[0, 0, 0, 0] == pytest.approx(1 / math.sqrt(2 + 0.1 * (1 + 4)))
    assert y[0, 1, 0, 0] == pytest.approx(2 / math.sqrt(2 + 0.1 * (1 + 4 + 9)))
    assert y[0, 3, 0, 0] == pytest.approx(4 / math.sqrt(2 + 0.1 * (9 + 16)))


def test_flatten_and_reshape_are_channel_major():
    x = np.arange(12.0).reshape(1, 3, 2, 2)
    _, _, y = run_one(net("flatten", "3@2x2"), x)
    assert y[0].tolist() == list(range(12))
    _, _, y = run_one(net("reshape((2, 3, 2))", "3@2x2"), x)
    assert y[0, 1, 0].tolist() == [6, 7]


def test_softmax_over_channels_and_dropout_masks():
    graph = netspec.loads(net("dropout(0.5) -> softmax", "3@2x2")).graph
    model = TorchGraph(graph)
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    outs = model.eval()(x)
    assert torch.equal(outs["dropout1"], x)
    torch.testing.assert_close(outs["softmax1"].sum(dim=1), torch.ones(2, 2, 2, dtype=torch.float64))
    mask = (np.random.default_rng(0).random((2, 3, 2, 2)) >= 0.5) * 2.0
    outs = model.train()(x, dropout_masks={"dropout1": mask})
    torch.testing.assert_close(outs["dropout1"], x * torch.as_tensor(mask))


def test_losses_from_logits():
    graph = netspec.loads("network t() {\n input x: 4\n x -> dense(3) -> softmax -> out\n}").graph
    model = TorchGraph(graph)
    x = torch.randn(5, 4, dtype=torch.float64)
    outs = model(x)
    labels = np.array([0, 2, 1, 1, 0])
    logp = torch.log(outs["softmax1"]).detach().numpy()
    expected = -np.mean(logp[np.arange(5), labels])
    assert loss(graph, outs, labels, "sparse_categorical_crossentropy").item() == \
        pytest.approx(expected)
    onehot = np.eye(3)[labels]
    assert loss(graph, outs, onehot, "categorical_crossentropy").item() == pytest.approx(expected)
    loss(graph, outs, labels, "sparse_categorical_crossentropy").backward()
    grads = model.grads()
    assert set(grads) == {"dense1.weight", "dense1.bias"}
    p = outs["softmax1"].detach().numpy()
    np.testing.assert_allclose(grads["dense1.bias"], ((p - onehot) / 5).sum(0))

    graph = netspec.loads("network t() {\n input x: 4\n x -> dense(3, act=sigmoid) -> out\n}").graph
    outs = TorchGraph(graph)(x)
    t = np.random.default_rng(1).random((5, 3))
    prob = outs[graph.outputs[0]].detach().numpy()
    bce = -np.mean(t * np.log(prob) + (1 - t) * np.log(1 - prob))
    assert loss(graph, outs, t, "binary_crossentropy").item() == pytest.approx(bce)
    assert loss(graph, outs, t, "mse").item() == pytest.approx(np.mean((prob - t) ** 2))


def test_params_deterministic_and_frozen_layers():
    graph = netspec.loads(
        "network t() {\n input x: 3@8x8\n"
        " x -> conv(4, 3, trainable=false) -> batchnorm -> global_avgpool -> dense(2) -> out\n}"
    ).graph
    a, b = torch_params(graph, seed=3), torch_params(graph, seed=3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], torch_params(graph, seed=4)["conv1.weight"])
    assert (a["batchnorm1.running_var"] > 0).all()
    model = TorchGraph(graph, params=a).train()
    out = model(torch.randn(2, 3, 8, 8, dtype=torch.float64))
    out[graph.outputs[0]].sum().backward()
    assert set(model.grads()) == {"batchnorm1.weight", "batchnorm1.bias", "dense1.weight",
                                  "dense1.bias"}
