"""Attribute binding and validation of every op in the registry."""

from __future__ import annotations

import pytest

from netspec.errors import AttrError
from netspec.ops import INTERNAL_OPS, OPS, Fusion, Op, OpKind, Purity, get_op
from netspec.ops.base import REQUIRED
from netspec.ops.conv import act_choices

ALL_OPS = sorted(OPS)
# values for the attributes an op requires, by attribute name
REQUIRED_SAMPLES = {"filters": 8, "kernel": 3, "units": 10, "shape": (4, 2, 2), "heads": 2, "groups": 2,
                    "size": 2, "parts": 2}


def make(name, *positional, **keywords):
    return OPS[name].make_attrs(positional, keywords)


def bad(name, *positional, **keywords) -> AttrError:
    with pytest.raises(AttrError) as info:
        make(name, *positional, **keywords)
    return info.value


# ---------------------------------------------------------------- the registry

def _defined_ops(cls=Op):
    """Every op class the ops' modules define: a subclass of Op with a name."""
    for sub in cls.__subclasses__():
        if sub.name:
            yield sub
        yield from _defined_ops(sub)


def test_registry_holds_every_op():
    defined = {cls.name: cls for cls in _defined_ops()}
    registered = {**OPS, **INTERNAL_OPS}
    assert set(defined) == set(registered), "an op class is not registered (@register)"
    assert all(type(registered[name]) is cls for name, cls in defined.items())
    assert not set(OPS) & set(INTERNAL_OPS)
    assert get_op("conv") is OPS["conv"]
    assert get_op("fused") is INTERNAL_OPS["fused"] and "fused" not in OPS
    assert get_op("conv2") is None


@pytest.mark.parametrize("name", ALL_OPS)
def test_every_op_is_described(name):
    op = OPS[name]
    assert isinstance(op, Op)
    assert op.name == name
    assert op.doc, f"{name} has no doc"
    assert isinstance(op.kind, OpKind)
    assert op.signature().startswith(f"{name}(")
    names = [a.name for a in op.attrs]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("name", ALL_OPS)
def test_defaults_are_valid_and_bound_normalised(name):
    """Every default passes its validator, and binding stores the normalised value."""
    op = OPS[name]
    required = [a.name for a in op.attrs if a.default is REQUIRED]
    a = op.make_attrs([REQUIRED_SAMPLES[n] for n in required], {})
    for attr in op.attrs:
        if attr.default is not REQUIRED and attr.default is not None:
            assert a[attr.name] == attr.check(attr.default), (name, attr.name)


@pytest.mark.parametrize("name", ALL_OPS)
def test_kinds_agree_with_traits(name):
    """An op's kind (the family summaries and diagrams group it in) follows from what it
    declares where the two speak of the same thing."""
    op = OPS[name]
    t = op.traits
    if t.activation:
        assert op.kind is OpKind.ACTIVATION
    if t.fusion is Fusion.ANCHOR:
        assert op.kind in (OpKind.CONV, OpKind.DENSE)
    if t.fusion is Fusion.POOL:
        assert op.kind is OpKind.POOL
    assert t.shape_only == (op.kind is OpKind.RESHAPE)
    assert (t.purity is Purity.RANDOM) == (op.kind is OpKind.REGULARIZE)
    assert (t.purity is Purity.SOURCE) == (op.kind is OpKind.INPUT)


def test_act_choices_are_registered_activations():
    for act in act_choices():
        if act != "none":
            assert OPS[act].kind is OpKind.ACTIVATION
            assert OPS[act].make_attrs((), {}) is not None  # usable without arguments


@pytest.mark.parametrize("name", ALL_OPS)
def test_arity(name):
    """An input reads nothing, a merge two inputs or more (some exactly two), every other op
    one, except dfl, which maps each of its inputs through one shared weight to an output of
    its own (YOLOv8's one DFL over three levels); an op written between tensors (Op.infix) is a
    merge; a split, and dfl given several inputs, have several outputs."""
    op = OPS[name]
    if name == "dfl":
        a = op.make_attrs((), {})
        level = (4 * a.bins, 2, 2)
        assert (op.min_inputs, op.max_inputs, op.infix) == (1, None, None)
        assert op.parts(a, [level]) == () and len(op.parts(a, [level] * 3)) == 3
        return
    if op.kind is OpKind.MERGE:
        assert op.min_inputs == 2 and op.max_inputs in (2, None)
    else:
        assert (op.min_inputs, op.max_inputs) == ((0, 0) if op.kind is OpKind.INPUT else (1, 1))
        assert op.infix is None
    a = op.make_attrs([REQUIRED_SAMPLES[x.name] for x in op.attrs if x.default is REQUIRED], {})
    assert bool(op.parts(a, [(4, 2, 2)] * op.min_inputs)) == (op.kind is OpKind.SPLIT)


# ---------------------------------------------------------------- binding (shared by all ops)

def test_conv_normalises():
    a = make("conv", 64, 3)
    assert a == dict(filters=64, kernel=(3, 3), stride=(1, 1), pad="valid", dilation=(1, 1),
                     groups=1, bias=True, act="none")
    assert a.kernel == (3, 3)  # attribute access
    a = make("conv", 32, (3, 5), 2, "same", dilation=(2, 1), groups=4, bias=False, act="relu")
    assert (a.kernel, a.stride, a.pad, a.dilation, a.groups, a.bias, a.act) == \
        ((3, 5), (2, 2), "same", (2, 1), 4, False, "relu")
    assert make("conv", 8, 3, pad=1).pad == (1, 1)
    assert make("conv", 8, 3, pad=(0, 2)).pad == (0, 2)
    assert make("conv", 8, 3, pad=0).pad == (0, 0)


@pytest.mark.parametrize("value", [-1, 0, 1.5, True, "64", (64,)])
def test_bad_filters(value):
    e = bad("conv", value, 3)
    assert e.arg == "filters"
    assert "conv: bad value for 'filters'" in e.message
    assert "positive integer" in e.message


@pytest.mark.parametrize("value", [0, -3, (3, 0), (3, 3, 3), 2.5, "3"])
def test_bad_kernel(value):
    e = bad("conv", 8, value)
    assert e.arg == "kernel" and "'kernel'" in e.message


def test_bad_pad_says_what_is_allowed():
    e = bad("conv", 8, 3, pad="sam")
    assert e.arg == "pad"
    assert "same" in e.message and "valid" in e.message and "'sam'" in e.message
    assert e.hint and "ceil" in e.hint
    assert bad("conv", 8, 3, pad=-1).arg == "pad"
    assert bad("conv", 8, 3, pad=(1, 2, 3)).arg == "pad"


def test_unknown_keyword_suggests():
    e = bad("conv", 8, 3, strides=2)
    assert e.message == "conv has no attribute 'strides'"
    assert e.hint == "did you mean 'stride'?"
    assert e.arg == "strides"
    e = bad("conv", 8, 3, zzz=2)
    assert e.hint == OPS["conv"].signature()  # nothing close: the signature instead
    assert bad("dropout", p=0.3).hint is not None


def test_too_many_positional():
    e = bad("conv", 8, 3, 1, "same", 1, 1, True, "relu", 7)
    assert "conv takes at most 8 positional arguments, got 9" in e.message
    assert e.hint == OPS["conv"].signature()
    e = bad("relu", 1)
    assert "relu takes at most 0 positional arguments, got 1" in e.message
    assert "at most 1 positional argument," in bad("dropout", 0.1, 0.2).message


def test_missing_required():
    e = bad("conv")
    assert e.message == "conv needs 'filters'" and e.hint == OPS["conv"].signature()
    assert bad("conv", 64).message == "conv needs 'kernel'"
    assert bad("dense").message == "dense needs 'units'"
    assert bad("maxpool").message == "maxpool needs 'kernel'"
    assert bad("reshape").message == "reshape needs 'shape'"
    assert bad("input").message == "input needs 'shape'"


def test_given_twice():
    e = bad("conv", 64, 3, kernel=5)
    assert "twice" in e.message and e.arg == "kernel"


def test_bad_act():
    e = bad("conv", 8, 3, act="relu7")
    assert e.arg == "act" and "relu" in e.message
    assert bad("dense", 10, act="prelu").arg == "act"


@pytest.mark.parametrize("value", [1, "true", None, 0])
def test_bad_bool(value):
    assert bad("conv", 8, 3, bias=value).arg == "bias"


# ---------------------------------------------------------------- per op

def test_depthwise():
    a = make("depthwise_conv", 3)
    assert a == dict(kernel=(3, 3), stride=(1, 1), pad="valid", multiplier=1, dilation=(1, 1),
                     bias=True, act="none")
    assert make("depthwise_conv", 3, 2, "same", 4).multiplier == 4
    assert bad("depthwise_conv", 3, multiplier=0).arg == "multiplier"
    assert bad("depthwise_conv", 3, filters=8).hint is not None  # no filters: channels * multiplier


def test_separable():
    a = make("separable_conv", 64, 3)
    assert a == dict(filters=64, kernel=(3, 3), stride=(1, 1), pad="valid", multiplier=1,
                     dilation=(1, 1), bias=True, act="none")
    assert bad("separable_conv", 64, 3, groups=2).message == \
        "separable_conv has no attribute 'groups'"
    assert bad("separable_conv", 0, 3).arg == "filters"


def test_conv_transpose():
    a = make("conv_transpose", 16, 4, 2)
    assert a == dict(filters=16, kernel=(4, 4), stride=(2, 2), pad="valid",
                     output_padding=(0, 0), dilation=(1, 1), groups=1, bias=True, act="none")
    assert make("conv_transpose", 16, 3, 2, 1, 1).output_padding == (1, 1)
    assert make("conv_transpose", 16, 3, 1, output_padding=1, dilation=2).output_padding == (1, 1)
    assert make("conv_transpose", 16, 3, (2, 3), output_padding=(1, 2)).output_padding == (1, 2)


def test_conv_transpose_output_padding_must_be_below_stride_or_dilation():
    e = bad("conv_transpose", 16, 3, 2, output_padding=2)
    assert e.arg == "output_padding"
    assert "output_padding 2 must be smaller than the stride or the dilation (2)" in e.message
    e = bad("conv_transpose", 16, 3, stride=1, output_padding=1)
    assert "smaller than" in e.message
    e = bad("conv_transpose", 16, 3, (2, 3), output_padding=(1, 3))
    assert "width" in e.message
    e = bad("conv_transpose", 16, 3, 2, "same", output_padding=1)
    assert e.arg == "output_padding" and "same" in e.message
    assert bad("conv_transpose", 16, 3, output_padding=-1).arg == "output_padding"


@pytest.mark.parametrize("pool", ["maxpool", "avgpool"])
def test_pool_stride_defaults_to_kernel(pool):
    assert make(pool, 2).stride == (2, 2)
    assert make(pool, (3, 2)).stride == (3, 2)
    assert make(pool, 3, 1).stride == (1, 1)
    assert make(pool, 3, stride=2).stride == (2, 2)
    assert make(pool, 3, pad="same").stride == (3, 3)
    assert "stride=kernel" in OPS[pool].signature()


@pytest.mark.parametrize("pool", ["maxpool", "avgpool"])
def test_pool_padding_at_most_half_the_kernel(pool):
    assert make(pool, 3, pad=1).pad == (1, 1)
    assert make(pool, 4, pad=2).pad == (2, 2)
    assert make(pool, (5, 2), pad=(2, 1)).pad == (2, 1)
    e = bad(pool, 3, pad=2)
    assert e.arg == "pad"
    assert "padding 2 is more than half the kernel (3) on the height" in e.message
    e = bad(pool, (5, 2), pad=(2, 2))
    assert "width" in e.message
    assert bad(pool, 3, pad="full").arg == "pad"


def test_avgpool_include_pad():
    assert make("avgpool", 2).include_pad is False
    assert make("avgpool", 3, 1, 1, True).include_pad is True
    assert bad("avgpool", 2, include_pad="yes").arg == "include_pad"
    assert "include_pad" in OPS["avgpool"].doc


@pytest.mark.parametrize("name", [name for name in ALL_OPS if not OPS[name].attrs])
def test_no_attribute_ops(name):
    assert make(name) == {}
    assert bad(name, axis=1).arg == "axis"
    assert OPS[name].describe(make(name)) == ""


def test_dense():
    assert make("dense", 300) == dict(units=300, bias=True, act="none", per_position=False)
    assert make("dense", 8, per_position=True).per_position is True
    assert make("dense", 10, act="softmax").act == "softmax"
    assert bad("dense", 0).arg == "units"
    assert bad("dense", -5).arg == "units"
    assert bad("dense", 10, unit=3).hint == "did you mean 'units'?"
    # Keras' and PyTorch's names get netspec's
    assert bad("dense", 10, activation="relu").hint == "netspec calls activation 'act'"
    assert bad("conv", 8, 3, out_channels=4).hint == "netspec calls out_channels 'filters'"
    assert bad("maxpool", pool_size=2).hint == "netspec calls pool_size 'kernel'"


def test_reshape():
    assert make("reshape", (1024, 1, 1)).shape == (1024, 1, 1)
    assert make("reshape", 784).shape == (784,)
    assert make("reshape", (-1,)).shape == (-1,)
    assert make("reshape", (-1, 7, 7)).shape == (-1, 7, 7)
    assert make("reshape", (28, 28)).shape == (28, 28)       # a sequence: 28 tokens of 28
    for value in [(-1, -1, 4), (0, 4, 4), (2, -2, 1), 0, "28x28", ()]:
        assert bad("reshape", value).arg == "shape", value
    e = bad("reshape", (7, 4, 4, 7))
    assert "1 dimension" in e.message and "2 (tokens, features)" in e.message and "3" in e.message


def test_input():
    assert make("input", (3, 224, 224)).shape == (3, 224, 224)
    assert make("input", 784).shape == (784,)
    e = bad("input", (3, -1, 224))
    assert e.arg == "shape" and "-1" in e.message
    assert make("input", (197, 768)).shape == (197, 768)    # a sequence
    assert bad("input", (3, 0, 224)).arg == "shape"
    assert bad("input", (28, 0)).arg == "shape"
    assert bad("input", (1, 3, 28, 28)).arg == "shape"


def test_batchnorm():
    a = make("batchnorm")
    assert a == dict(momentum=0.99, epsilon=0.001, center=True, scale=True)
    assert make("batchnorm", 0.9, 1e-5).momentum == 0.9
    assert make("batchnorm", epsilon=1).epsilon == 1.0
    for m in (0, 1, 1.5, -0.1, "x", True):
        assert bad("batchnorm", momentum=m).arg == "momentum", m
    e = bad("batchnorm", momentum=1)
    assert "(0, 1)" in e.message
    for eps in (0, -1e-3, float("nan"), float("inf")):
        assert bad("batchnorm", epsilon=eps).arg == "epsilon"
    assert bad("batchnorm", scale="no").arg == "scale"


def test_lrn():
    assert make("lrn") == dict(size=5, alpha=0.0001, beta=0.75, k=2.0)
    assert make("lrn", 4).size == 4  # PyTorch allows even sizes
    assert make("lrn", 3, 1e-3, 0.5, 1).k == 1.0
    assert bad("lrn", 0).arg == "size"
    assert bad("lrn", 2.5).arg == "size"
    assert bad("lrn", k=0).arg == "k"
    assert bad("lrn", alpha=-1).arg == "alpha"
    assert bad("lrn", beta=-0.5).arg == "beta"


def test_dropout():
    assert make("dropout").rate == 0.5
    assert make("dropout", 0).rate == 0.0
    assert make("dropout", 0.999).rate == 0.999
    for r in (1.5, 1, 1.0, -0.1, "half", None):
        e = bad("dropout", r)
        assert e.arg == "rate", r
    assert "[0, 1)" in bad("dropout", 1.5).message


def test_leaky_relu_and_elu():
    assert make("leaky_relu").alpha == 0.01
    assert make("leaky_relu", 0.2).alpha == 0.2
    assert bad("leaky_relu", -0.1).arg == "alpha"
    assert make("elu").alpha == 1.0
    assert bad("elu", alpha="one").arg == "alpha"


# ---------------------------------------------------------------- describe and window

def test_describe():
    d = lambda name, *p, **k: OPS[name].describe(make(name, *p, **k))  # noqa: E731
    assert d("conv", 64, 3, 2) == "3x3/2, 64"
    assert d("conv", 64, 3) == "3x3, 64"
    assert d("conv", 64, (1, 7), (1, 2)) == "1x7/1x2, 64"
    assert d("maxpool", 3, 2) == "3x3/2"
    assert d("maxpool", 2) == "2x2/2"
    assert d("avgpool", 5, 3) == "5x5/3"
    assert d("dense", 300) == "300"
    assert d("dropout", 0.5) == "p=0.5"
    assert d("depthwise_conv", 3, 2) == "3x3/2"
    assert d("depthwise_conv", 3, multiplier=2) == "3x3, x2"
    assert d("separable_conv", 128, 3) == "3x3, 128"
    assert d("conv_transpose", 32, 4, 2) == "4x4/2, 32"
    assert d("input", (3, 224, 224)) == "3@224x224"
    assert d("reshape", (-1, 1, 1)) == "(-1, 1, 1)"
    assert d("lrn") == "size=5"
    assert d("leaky_relu", 0.2) == "alpha=0.2"
    assert d("batchnorm") == "" and d("elu") == ""      # at their defaults (the attribute-free: above)


def test_window():
    w = lambda name, *p, **k: OPS[name].window(make(name, *p, **k))  # noqa: E731
    assert w("conv", 64, 3, 2) == (3, 3, 2, 2)
    assert w("conv", 64, (3, 5), (1, 2), dilation=(2, 3)) == (5, 13, 1, 2)
    assert w("depthwise_conv", 3, 2, dilation=2) == (5, 5, 2, 2)
    assert w("separable_conv", 8, 5) == (5, 5, 1, 1)
    assert w("maxpool", 3, 2) == (3, 3, 2, 2)
    assert w("avgpool", 2) == (2, 2, 2, 2)
    assert w("maxpool", 3, 2, dilation=(2, 1), ceil=True) == (5, 3, 2, 2)
    assert w("avgpool", 3, 1, ceil=True) == (3, 3, 1, 1)
    assert w("pad", 3) is None and w("pad", 1, "reflect", left=4) is None
    on = lambda name, shape, *p, **k: OPS[name].window_on(make(name, *p, **k), [shape])  # noqa: E731
    assert on("adaptive_avgpool", (3, 12, 12), 4) == (3, 3, 3, 3)      # a multiple: avgpool(3)
    # rows [0, 3) [2, 5); columns [0, 3) [2, 5) [4, 8) [7, 10) [9, 12): the largest window
    # and the longest step
    assert on("adaptive_avgpool", (3, 5, 12), (2, 5)) == (3, 4, 2, 3)
    # 2 rows into 5: [0, 1) [0, 1) [0, 2) [1, 2) [1, 2); 2 columns into 1: [0, 2)
    assert on("adaptive_avgpool", (3, 2, 2), (5, 1)) == (2, 2, 1, 1)
    assert on("adaptive_avgpool", (3, 6, 9), 1) == "global"
    assert on("conv", (3, 9, 9), 8, 3, 2) == w("conv", 8, 3, 2)        # the rest: their window
    assert w("adaptive_avgpool", 4) == "global"     # without the input's size: an upper bound
    assert w("conv_transpose", 8, 4, 2) == (2, 2, 1, 1)
    assert w("conv_transpose", 8, 3, 2) == (2, 2, 1, 1)
    assert w("conv_transpose", 8, 3, 1) == (3, 3, 1, 1)
    for name in ("global_avgpool", "global_maxpool"):
        assert w(name) == "global"


@pytest.mark.parametrize("name", ALL_OPS)
def test_window_by_kind(name):
    """Ops that mix every position (dense, the reshapes) see their whole input; ops that work
    position by position (activations, merges, normalisations, dropout) have no window, and
    neither have the resampling ops (an upsample's jump shrinks: pointwise is an upper bound)."""
    op = OPS[name]
    a = op.make_attrs([REQUIRED_SAMPLES[x.name] for x in op.attrs if x.default is REQUIRED], {})
    if op.kind in (OpKind.DENSE, OpKind.RESHAPE):
        assert op.window(a) == "global"
    elif op.kind in (OpKind.ACTIVATION, OpKind.IDENTITY, OpKind.MERGE, OpKind.SPLIT, OpKind.NORM,
                     OpKind.REGULARIZE, OpKind.INPUT, OpKind.RESAMPLE):
        assert op.window(a) is None
