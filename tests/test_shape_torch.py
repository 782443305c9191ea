"""Our shape rules and parameter shapes against what torch.nn modules really do."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from netspec.errors import AttrError, ShapeError
from netspec.ops import OPS

nn = torch.nn
F = torch.nn.functional
SETTINGS = settings(deadline=None, max_examples=60)

torch.set_num_threads(1)


def bind(name, *positional, **keywords):
    op = OPS[name]
    return op, op.make_attrs(positional, keywords)


def ours(name, shape, *positional, **keywords):
    """(output shape or None if ShapeError, {param name: (shape, trainable)})."""
    op, a = bind(name, *positional, **keywords)
    try:
        out = op.shape(a, [shape])
    except ShapeError:
        return None, {}
    return out, {p.name: (p.shape, p.trainable) for p in op.params(a, [shape])}


def theirs(module, shape):
    """Output shape without batch, or None if torch refuses the input.

    An empty output (a 0 in the shape, which ConvTranspose2d returns when the padding eats
    everything) counts as refused: netspec rejects it, since nothing can follow it.
    """
    with torch.no_grad():
        try:
            y = module(torch.randn(1, *shape))
        except RuntimeError:
            return None
    return tuple(y.shape[1:]) if y.numel() else None


def torch_params(module):
    ps = {n: (tuple(p.shape), True) for n, p in module.named_parameters()}
    ps.update({n: (tuple(b.shape), False) for n, b in module.named_buffers()
               if n != "num_batches_tracked"})
    return ps


small = st.integers(1, 12)
channels = st.integers(1, 6)


def divisors(n):
    return [g for g in range(1, n + 1) if n % g == 0]


@SETTINGS
@given(c=channels, h=small, w=small, f=channels, kh=st.integers(1, 5), kw=st.integers(1, 5),
       sh=st.integers(1, 4), sw=st.integers(1, 4), ph=st.integers(0, 3), pw=st.integers(0, 3),
       dh=st.integers(1, 3), dw=st.integers(1, 3), bias=st.booleans(), data=st.data())
def test_conv(c, h, w, f, kh, kw, sh, sw, ph, pw, dh, dw, bias, data):
    g = data.draw(st.sampled_from(divisors(math.gcd(c, f))), label="groups")
    m = nn.Conv2d(c, f, (kh, kw), (sh, sw), (ph, pw), (dh, dw), g, bias)
    out, ps = ours("conv", (c, h, w), f, (kh, kw), (sh, sw), (ph, pw), (dh, dw), g, bias)
    assert out == theirs(m, (c, h, w))
    if out is not None:
        assert ps == torch_params(m)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@SETTINGS
@given(c=channels, h=small, w=small, kh=st.integers(1, 6), kw=st.integers(1, 6),
       dh=st.integers(1, 3), dw=st.integers(1, 3), f=channels)
def test_conv_same_stride_1(c, h, w, kh, kw, dh, dw, f):
    """PyTorch's padding='same' (stride 1 only) keeps the size, odd or even kernels."""
    m = nn.Conv2d(c, f, (kh, kw), padding="same", dilation=(dh, dw))
    out, ps = ours("conv", (c, h, w), f, (kh, kw), pad="same", dilation=(dh, dw))
    assert out == theirs(m, (c, h, w))
    assert ps == torch_params(m)


def tf_same_pad(size, k, s, d):
    """TensorFlow 'same': enough padding for ceil(size / s) windows, the odd pixel after."""
    n = -(-size // s)
    total = max((n - 1) * s + d * (k - 1) + 1 - size, 0)
    return total // 2, total - total // 2


@SETTINGS
@given(c=channels, h=small, w=small, kh=st.integers(1, 6), kw=st.integers(1, 6),
       sh=st.integers(1, 4), sw=st.integers(1, 4), dh=st.integers(1, 2), dw=st.integers(1, 2),
       op=st.sampled_from(["conv", "maxpool", "avgpool", "depthwise_conv"]))
def test_same_strided_as_tensorflow(c, h, w, kh, kw, sh, sw, dh, dw, op):
    """'same' with any stride equals TensorFlow's asymmetric padding followed by 'valid'."""
    top, bottom = tf_same_pad(h, kh, sh, dh if "conv" in op else 1)
    left, right = tf_same_pad(w, kw, sw, dw if "conv" in op else 1)
    x = F.pad(torch.randn(1, c, h, w), (left, right, top, bottom))
    if op == "conv":
        y = F.conv2d(x, torch.randn(5, c, kh, kw), stride=(sh, sw), dilation=(dh, dw))
        out, _ = ours("conv", (c, h, w), 5, (kh, kw), (sh, sw), "same", dilation=(dh, dw))
    elif op == "depthwise_conv":
        y = F.conv2d(x, torch.randn(2 * c, 1, kh, kw), stride=(sh, sw), dilation=(dh, dw),
                     groups=c)
        out, _ = ours(op, (c, h, w), (kh, kw), (sh, sw), "same", 2, (dh, dw))
    else:
        pool = F.max_pool2d if op == "maxpool" else F.avg_pool2d
        y = pool(x, (kh, kw), (sh, sw))
        out, _ = ours(op, (c, h, w), (kh, kw), (sh, sw), "same")
    assert out == tuple(y.shape[1:])


@SETTINGS
@given(c=channels, h=small, w=small, m=st.integers(1, 3), kh=st.integers(1, 5),
       kw=st.integers(1, 5), sh=st.integers(1, 3), sw=st.integers(1, 3), ph=st.integers(0, 2),
       pw=st.integers(0, 2), dh=st.integers(1, 2), dw=st.integers(1, 2), bias=st.booleans())
def test_depthwise(c, h, w, m, kh, kw, sh, sw, ph, pw, dh, dw, bias):
    mod = nn.Conv2d(c, c * m, (kh, kw), (sh, sw), (ph, pw), (dh, dw), groups=c, bias=bias)
    out, ps = ours("depthwise_conv", (c, h, w), (kh, kw), (sh, sw), (ph, pw), m, (dh, dw), bias)
    assert out == theirs(mod, (c, h, w))
    if out is not None:
        assert ps == torch_params(mod)


@SETTINGS
@given(c=channels, h=small, w=small, f=channels, m=st.integers(1, 3), k=st.integers(1, 5),
       s=st.integers(1, 3), p=st.integers(0, 2), bias=st.booleans())
def test_separable(c, h, w, f, m, k, s, p, bias):
    depthwise = nn.Conv2d(c, c * m, k, s, p, groups=c, bias=False)
    pointwise = nn.Conv2d(c * m, f, 1, bias=bias)
    out, ps = ours("separable_conv", (c, h, w), f, k, s, p, m, 1, bias)
    assert out == theirs(nn.Sequential(depthwise, pointwise), (c, h, w))
    if out is not None:
        expected = {"depthwise_weight": (tuple(depthwise.weight.shape), True),
                    "pointwise_weight": (tuple(pointwise.weight.shape), True)}
        if bias:
            expected["bias"] = (tuple(pointwise.bias.shape), True)
        assert ps == expected


@SETTINGS
@given(c=channels, h=st.integers(1, 8), w=st.integers(1, 8), f=channels,
       kh=st.integers(1, 5), kw=st.integers(1, 5), sh=st.integers(1, 4), sw=st.integers(1, 4),
       ph=st.integers(0, 3), pw=st.integers(0, 3), dh=st.integers(1, 3), dw=st.integers(1, 3),
       bias=st.booleans(), data=st.data())
def test_conv_transpose(c, h, w, f, kh, kw, sh, sw, ph, pw, dh, dw, bias, data):
    g = data.draw(st.sampled_from(divisors(math.gcd(c, f))), label="groups")
    oph = data.draw(st.integers(0, max(sh, dh) - 1), label="output_padding h")
    opw = data.draw(st.integers(0, max(sw, dw) - 1), label="output_padding w")
    m = nn.ConvTranspose2d(c, f, (kh, kw), (sh, sw), (ph, pw), (oph, opw), g, bias, (dh, dw))
    out, ps = ours("conv_transpose", (c, h, w), f, (kh, kw), (sh, sw), (ph, pw), (oph, opw),
                   (dh, dw), g, bias)
    assert out == theirs(m, (c, h, w))
    if out is not None:
        assert ps == torch_params(m)


@SETTINGS
@given(s=st.integers(1, 4), d=st.integers(1, 3), extra=st.integers(0, 2))
def test_conv_transpose_output_padding_limit(s, d, extra):
    """Both refuse output_padding >= max(stride, dilation)."""
    op_ = max(s, d) + extra
    with pytest.raises(AttrError):
        bind("conv_transpose", 2, 3, s, 0, op_, d)
    m = nn.ConvTranspose2d(2, 2, 3, s, 0, op_, dilation=d)
    with pytest.raises((RuntimeError, ValueError)):
        m(torch.randn(1, 2, 5, 5))


@SETTINGS
@given(c=channels, h=small, w=small, kh=st.integers(1, 5), kw=st.integers(1, 5),
       stride=st.one_of(st.none(), st.tuples(st.integers(1, 4), st.integers(1, 4))),
       ph=st.integers(0, 3), pw=st.integers(0, 3), include_pad=st.booleans(),
       dilation=st.tuples(st.integers(1, 3), st.integers(1, 3)), ceil=st.booleans(),
       pool=st.sampled_from(["maxpool", "avgpool"]))
def test_pool(c, h, w, kh, kw, stride, ph, pw, include_pad, dilation, ceil, pool):
    too_much = ph > kh // 2 or pw > kw // 2
    kwargs = {"pad": (ph, pw), "ceil": ceil}
    if stride is not None:
        kwargs["stride"] = stride
    if pool == "avgpool":
        kwargs["include_pad"] = include_pad
        m = nn.AvgPool2d((kh, kw), stride, (ph, pw), ceil, count_include_pad=include_pad)
    else:
        kwargs["dilation"] = dilation
        m = nn.MaxPool2d((kh, kw), stride, (ph, pw), dilation, ceil_mode=ceil)
    if too_much:  # both refuse padding over half the kernel
        with pytest.raises(AttrError):
            bind(pool, (kh, kw), **kwargs)
        with pytest.raises(RuntimeError):
            m(torch.randn(1, c, h, w))
        return
    out, ps = ours(pool, (c, h, w), (kh, kw), **kwargs)
    if out is None and theirs(m, (c, h, w)) is not None:
        # refused where a dilated window sees only padding, which PyTorch pools to -infinity
        op, a = bind(pool, (kh, kw), **kwargs)
        with pytest.raises(ShapeError, match="sees only padding"):
            op.shape(a, [(c, h, w)])
        with torch.no_grad():
            assert torch.isinf(m(torch.randn(1, c, h, w))).any()
        return
    assert out == theirs(m, (c, h, w))
    assert ps == {}


@SETTINGS
@given(c=channels, h=small, w=small, oh=st.integers(1, 15), ow=st.integers(1, 15))
def test_adaptive_avgpool(c, h, w, oh, ow):
    out, ps = ours("adaptive_avgpool", (c, h, w), (oh, ow))
    assert out == theirs(nn.AdaptiveAvgPool2d((oh, ow)), (c, h, w)) and ps == {}


@SETTINGS
@given(c=channels, h=small, w=small, sides=st.tuples(*[st.integers(0, 13)] * 4),
       mode=st.sampled_from(["constant", "reflect", "replicate"]))
def test_pad(c, h, w, sides, mode):
    """F.pad's order is (left, right, top, bottom); both refuse reflecting by the axis or more."""
    top, bottom, left, right = sides
    out, ps = ours("pad", (c, h, w), 0, mode, top=top, bottom=bottom, left=left, right=right)
    with torch.no_grad():
        try:
            y = F.pad(torch.randn(1, c, h, w), (left, right, top, bottom), mode=mode)
            want = tuple(y.shape[1:])
        except RuntimeError:
            want = None
    assert out == want and ps == {}


@SETTINGS
@given(c=channels, h=small, w=small, pool=st.sampled_from(["global_avgpool", "global_maxpool"]))
def test_global_pool(c, h, w, pool):
    m = nn.Sequential(nn.AdaptiveAvgPool2d(1) if pool == "global_avgpool"
                      else nn.AdaptiveMaxPool2d(1), nn.Flatten())
    assert ours(pool, (c, h, w))[0] == theirs(m, (c, h, w))


@SETTINGS
@given(shape=st.one_of(st.tuples(channels, small, small), st.tuples(st.integers(1, 50))),
       units=st.integers(1, 20), bias=st.booleans())
def test_flatten_dense(shape, units, bias):
    flat, _ = ours("flatten", shape)
    assert flat == theirs(nn.Flatten(), shape)
    m = nn.Linear(flat[0], units, bias=bias)
    out, ps = ours("dense", flat, units, bias)
    assert out == theirs(m, flat)
    assert ps == torch_params(m)


@SETTINGS
@given(shape=st.one_of(st.tuples(channels, small, small), st.tuples(st.integers(1, 50))),
       center=st.booleans(), scale=st.booleans())
def test_batchnorm(shape, center, scale):
    m = (nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d)(shape[0]).eval()
    out, ps = ours("batchnorm", shape, center=center, scale=scale)
    assert out == theirs(m, shape)
    expected = torch_params(m)
    if not scale:
        del expected["weight"]
    if not center:
        del expected["bias"]
    assert ps == expected


@SETTINGS
@given(shape=st.one_of(st.tuples(channels, small, small), st.tuples(st.integers(1, 50))))
def test_prelu(shape):
    """(The other activations' shapes against PyTorch: their cases, tests/test_op_cases.py.)"""
    m = nn.PReLU(shape[0])
    out, ps = ours("prelu", shape)
    assert out == theirs(m, shape)
    assert ps == torch_params(m)
    assert torch.all(m.weight == 0.25)  # our init 'constant:0.25' is PyTorch's


@SETTINGS
@given(c=channels, h=small, w=small, mode=st.sampled_from(["nearest", "bilinear"]),
       scale=st.one_of(st.sampled_from([0.29, 0.5, 1.0, 1.1, 1.3, 1.7, 2.0, 2.5, 3.0]),
                       st.floats(0.05, 4.0)))
def test_upsample_by_a_scale(c, h, w, mode, scale):
    """floor(size * scale) in double precision, as torch (0.29 * 100 is 28.999...: 28)."""
    out, ps = ours("upsample", (c, h, w), (scale, 2 * scale), mode=mode)
    assert out == theirs(nn.Upsample(scale_factor=(scale, 2 * scale), mode=mode), (c, h, w))
    assert ps == {}


@SETTINGS
@given(c=channels, h=small, w=small, size=st.tuples(st.integers(1, 30), st.integers(1, 30)))
def test_upsample_to_a_size(c, h, w, size):
    m = nn.Upsample(size=size, mode="bilinear", align_corners=True)
    out, _ = ours("upsample", (c, h, w), size=size, mode="bilinear", align_corners=True)
    assert out == theirs(m, (c, h, w))


@SETTINGS
@given(c=st.integers(1, 24), h=small, w=small, groups=st.integers(1, 12))
def test_channel_shuffle(c, h, w, groups):
    m = nn.ChannelShuffle(groups)
    assert ours("channel_shuffle", (c, h, w), groups)[0] == theirs(m, (c, h, w))


@SETTINGS
@given(c=channels, h=small, w=small, target=st.sampled_from([(-1,), (-1, 1, 1), (1, -1, 1)]))
def test_reshape(c, h, w, target):
    assert ours("reshape", (c, h, w), target)[0] == \
        tuple(torch.randn(1, c, h, w).reshape(1, *target).shape[1:])


def test_defaults_match_keras_and_torch_where_claimed():
    """avgpool's include_pad=false is Keras' (PyTorch's count_include_pad is true): at a border,
    only real pixels are averaged."""
    x = torch.ones(1, 1, 3, 3)
    y = nn.AvgPool2d(3, 1, 1, count_include_pad=False)(x)
    assert torch.allclose(y, torch.ones_like(y))
    assert bind("avgpool", 3, 1, 1)[1].include_pad is False
