"""Shape rules, parameters and costs of every op, against formulas written out here.

The expected values are computed independently of netspec.ops.base (no conv_out,
spatial_out or same_padding): window positions are counted one by one, transposed
convolutions are scattered tap by tap, and 'same' is ceil(size / stride).
"""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from netspec.errors import ShapeError
from netspec.ops import OPS

SETTINGS = settings(deadline=None, max_examples=150)

# the ops of one input that compute each output from the same position of their input
ELEMENTWISE = sorted(name for name, op in OPS.items()
                     if (op.traits.elementwise or op.traits.activation) and op.max_inputs == 1)


# ---------------------------------------------------------------- helpers

def bind(name, *positional, **keywords):
    op = OPS[name]
    return op, op.make_attrs(positional, keywords)


def out_shape(name, ins, *positional, **keywords):
    op, a = bind(name, *positional, **keywords)
    return op.shape(a, list(ins))


def shape_error(name, ins, *positional, **keywords) -> ShapeError:
    op, a = bind(name, *positional, **keywords)
    with pytest.raises(ShapeError) as info:
        op.shape(a, list(ins))
    e = info.value
    # the elaborator fills {in0}, {in1}...: nothing else in the message may look like a field
    e.message.format(**{f"in{i}": f"<input {i}>" for i in range(len(ins))})
    assert e.hint is None or "{" not in e.hint
    return e


def filled(e: ShapeError, n: int) -> str:
    return e.message.format(**{f"in{i}": f"<input {i}>" for i in range(n)})


def count(params, trainable=None):
    return sum(p.size for p in params if trainable is None or p.trainable == trainable)


def window_positions(size, k, s, pad, d=1):
    """Output length of a window sliding over one axis, by counting its positions."""
    if pad == "same":
        return math.ceil(size / s)
    p = 0 if pad == "valid" else pad
    padded = size + 2 * p
    span = d * (k - 1) + 1
    return len([start for start in range(0, padded, s) if start + span <= padded])


def transposed_length(size, k, s, pad, d, output_padding):
    """Scatter every input position through every kernel tap, then crop the padding."""
    if pad == "same":
        return size * s
    p = 0 if pad == "valid" else pad
    touched = {i * s + j * d for i in range(size) for j in range(k)}
    return max(touched) + 1 - 2 * p + output_padding


def axis_pad(pad, axis):
    return pad if isinstance(pad, str) else pad[axis]


pads = st.one_of(st.sampled_from(["same", "valid"]),
                 st.tuples(st.integers(0, 4), st.integers(0, 4)))
sizes = st.integers(1, 40)
kernels = st.integers(1, 7)
strides = st.integers(1, 6)
dilations = st.integers(1, 3)
maps = st.tuples(st.integers(1, 16), st.integers(1, 24), st.integers(1, 24))
vectors = st.tuples(st.integers(1, 2000))
sequences = st.tuples(st.integers(1, 300), st.integers(1, 1000))     # tokens, features
any_shape = st.one_of(maps, vectors, sequences)


def divisors(n):
    return [g for g in range(1, n + 1) if n % g == 0]


# ---------------------------------------------------------------- conv

@SETTINGS
@given(c=st.integers(1, 12), h=sizes, w=sizes, f=st.integers(1, 12), kh=kernels, kw=kernels,
       sh=strides, sw=strides, dh=dilations, dw=dilations, pad=pads, bias=st.booleans(),
       data=st.data())
def test_conv(c, h, w, f, kh, kw, sh, sw, dh, dw, pad, bias, data):
    g = data.draw(st.sampled_from(divisors(math.gcd(c, f))), label="groups")
    op, a = bind("conv", f, (kh, kw), (sh, sw), pad, dilation=(dh, dw), groups=g, bias=bias)
    oh = window_positions(h, kh, sh, axis_pad(pad, 0), dh)
    ow = window_positions(w, kw, sw, axis_pad(pad, 1), dw)
    if oh == 0 or ow == 0:
        e = shape_error("conv", [(c, h, w)], f, (kh, kw), (sh, sw), pad, dilation=(dh, dw),
                        groups=g)
        assert "larger than its input" in e.message
        return
    out = op.shape(a, [(c, h, w)])
    assert out == (f, oh, ow)
    ps = {p.name: p for p in op.params(a, [(c, h, w)])}
    assert ps["weight"].shape == (f, c // g, kh, kw)
    assert ps["weight"].init == "glorot_uniform" and ps["weight"].trainable
    if bias:
        assert ps["bias"].shape == (f,) and ps["bias"].init == "zeros"
    assert set(ps) == ({"weight", "bias"} if bias else {"weight"})
    assert count(ps.values()) == f * (c // g) * kh * kw + (f if bias else 0)
    assert op.macs(a, [(c, h, w)], out) == f * oh * ow * (c // g) * kh * kw


@SETTINGS
@given(c=st.integers(1, 24), f=st.integers(1, 24), g=st.integers(2, 8))
def test_conv_groups_must_divide(c, f, g):
    assume(c % g or f % g)
    e = shape_error("conv", [(c, 8, 8)], f, 1, groups=g)
    assert f"groups={g}" in e.message and f"({c})" in e.message and f"({f})" in e.message


def test_kernel_larger_than_input():
    e = shape_error("conv", [(3, 4, 10)], 8, 5)
    assert filled(e, 1) == ("conv window 5x5 is larger than its input <input 0> "
                            "(window spans 5 on the height, input is 4)")
    assert "pad=same" in e.hint
    e = shape_error("conv", [(3, 10, 4)], 8, 3, dilation=2, pad=(0, 0))
    assert "spans 5 on the width" in e.message
    assert out_shape("conv", [(3, 4, 4)], 8, 5, pad="same") == (8, 4, 4)  # same never fails
    assert out_shape("conv", [(3, 4, 4)], 8, 5, pad=1) == (8, 2, 2)


# ---------------------------------------------------------------- depthwise and separable

@SETTINGS
@given(c=st.integers(1, 12), h=sizes, w=sizes, m=st.integers(1, 4), kh=kernels, kw=kernels,
       sh=strides, sw=strides, dh=dilations, dw=dilations, pad=pads, bias=st.booleans())
def test_depthwise(c, h, w, m, kh, kw, sh, sw, dh, dw, pad, bias):
    op, a = bind("depthwise_conv", (kh, kw), (sh, sw), pad, m, (dh, dw), bias)
    oh = window_positions(h, kh, sh, axis_pad(pad, 0), dh)
    ow = window_positions(w, kw, sw, axis_pad(pad, 1), dw)
    if oh == 0 or ow == 0:
        with pytest.raises(ShapeError):
            op.shape(a, [(c, h, w)])
        return
    out = op.shape(a, [(c, h, w)])
    assert out == (c * m, oh, ow)
    ps = {p.name: p for p in op.params(a, [(c, h, w)])}
    assert ps["weight"].shape == (c * m, 1, kh, kw)
    assert set(ps) == ({"weight", "bias"} if bias else {"weight"})
    if bias:
        assert ps["bias"].shape == (c * m,)
    # Keras DepthwiseConv2D: kh*kw*C*m weights + C*m biases
    assert count(ps.values()) == kh * kw * c * m + (c * m if bias else 0)
    assert op.macs(a, [(c, h, w)], out) == c * m * oh * ow * kh * kw


@SETTINGS
@given(c=st.integers(1, 12), h=sizes, w=sizes, f=st.integers(1, 16), m=st.integers(1, 4),
       kh=kernels, kw=kernels, sh=strides, sw=strides, dh=dilations, dw=dilations, pad=pads,
       bias=st.booleans())
def test_separable(c, h, w, f, m, kh, kw, sh, sw, dh, dw, pad, bias):
    op, a = bind("separable_conv", f, (kh, kw), (sh, sw), pad, m, (dh, dw), bias)
    oh = window_positions(h, kh, sh, axis_pad(pad, 0), dh)
    ow = window_positions(w, kw, sw, axis_pad(pad, 1), dw)
    if oh == 0 or ow == 0:
        with pytest.raises(ShapeError):
            op.shape(a, [(c, h, w)])
        return
    out = op.shape(a, [(c, h, w)])
    assert out == (f, oh, ow)
    ps = {p.name: p for p in op.params(a, [(c, h, w)])}
    assert ps["depthwise_weight"].shape == (c * m, 1, kh, kw)
    assert ps["pointwise_weight"].shape == (f, c * m, 1, 1)
    assert set(ps) == {"depthwise_weight", "pointwise_weight"} | ({"bias"} if bias else set())
    if bias:
        assert ps["bias"].shape == (f,)
    # Keras SeparableConv2D: kh*kw*C*m + C*m*filters + filters
    assert count(ps.values()) == kh * kw * c * m + c * m * f + (f if bias else 0)
    assert op.macs(a, [(c, h, w)], out) == oh * ow * c * m * kh * kw + oh * ow * c * m * f


def test_separable_keras_example():
    """Keras SeparableConv2D(64, 3) on 32 channels: 3*3*32 + 32*64 + 64 = 2,400 parameters."""
    op, a = bind("separable_conv", 64, 3)
    assert count(op.params(a, [(32, 10, 10)])) == 2400
    op, a = bind("depthwise_conv", 3, multiplier=2)
    assert count(op.params(a, [(32, 10, 10)])) == 3 * 3 * 64 + 64


# ---------------------------------------------------------------- conv_transpose

@SETTINGS
@given(c=st.integers(1, 12), h=st.integers(1, 20), w=st.integers(1, 20), f=st.integers(1, 12),
       kh=kernels, kw=kernels, sh=strides, sw=strides, dh=dilations, dw=dilations, pad=pads,
       bias=st.booleans(), data=st.data())
def test_conv_transpose(c, h, w, f, kh, kw, sh, sw, dh, dw, pad, bias, data):
    g = data.draw(st.sampled_from(divisors(math.gcd(c, f))), label="groups")
    if pad == "same":
        oph = opw = 0
    else:
        oph = data.draw(st.integers(0, max(sh, dh) - 1), label="output_padding h")
        opw = data.draw(st.integers(0, max(sw, dw) - 1), label="output_padding w")
    op, a = bind("conv_transpose", f, (kh, kw), (sh, sw), pad, (oph, opw), (dh, dw), g, bias)
    oh = transposed_length(h, kh, sh, axis_pad(pad, 0), dh, oph)
    ow = transposed_length(w, kw, sw, axis_pad(pad, 1), dw, opw)
    if oh <= 0 or ow <= 0:
        with pytest.raises(ShapeError) as info:
            op.shape(a, [(c, h, w)])
        assert "padding is too large" in info.value.message
        return
    out = op.shape(a, [(c, h, w)])
    assert out == (f, oh, ow)
    ps = {p.name: p for p in op.params(a, [(c, h, w)])}
    assert ps["weight"].shape == (c, f // g, kh, kw)
    assert set(ps) == ({"weight", "bias"} if bias else {"weight"})
    if bias:
        assert ps["bias"].shape == (f,)
    assert count(ps.values()) == c * (f // g) * kh * kw + (f if bias else 0)
    assert op.macs(a, [(c, h, w)], out) == h * w * c * (f // g) * kh * kw


def test_conv_transpose_examples():
    # DCGAN-style upsampling: 4x4/2, padding 1 doubles the size
    assert out_shape("conv_transpose", [(128, 8, 8)], 64, 4, 2, 1) == (64, 16, 16)
    # 3x3/2 padding 1 gives 2H-1; output_padding 1 makes it 2H
    assert out_shape("conv_transpose", [(16, 7, 7)], 8, 3, 2, 1) == (8, 13, 13)
    assert out_shape("conv_transpose", [(16, 7, 7)], 8, 3, 2, 1, 1) == (8, 14, 14)
    # Keras same: H * s whatever the kernel
    assert out_shape("conv_transpose", [(16, 7, 5)], 8, 5, (2, 3), "same") == (8, 14, 15)
    assert out_shape("conv_transpose", [(16, 7, 7)], 8, 3, 2) == (8, 15, 15)
    e = shape_error("conv_transpose", [(4, 1, 1)], 8, 1, pad=1)
    assert "height would be -1" in e.message
    e = shape_error("conv_transpose", [(6, 4, 4)], 8, 3, groups=4)
    assert "groups=4" in e.message


# ---------------------------------------------------------------- pools

@SETTINGS
@given(c=st.integers(1, 16), h=sizes, w=sizes, kh=kernels, kw=kernels,
       stride=st.one_of(st.none(), st.tuples(strides, strides)),
       pad=st.one_of(st.sampled_from(["same", "valid"]), st.tuples(st.integers(0, 3),
                                                                   st.integers(0, 3))),
       pool=st.sampled_from(["maxpool", "avgpool"]))
def test_pool(c, h, w, kh, kw, stride, pad, pool):
    if isinstance(pad, tuple):
        assume(pad[0] <= kh // 2 and pad[1] <= kw // 2)
    keywords = {"pad": pad} if stride is None else {"pad": pad, "stride": stride}
    op, a = bind(pool, (kh, kw), **keywords)
    sh, sw = stride or (kh, kw)
    oh = window_positions(h, kh, sh, axis_pad(pad, 0))
    ow = window_positions(w, kw, sw, axis_pad(pad, 1))
    if oh == 0 or ow == 0:
        e = shape_error(pool, [(c, h, w)], (kh, kw), **keywords)
        assert "larger than its input" in e.message
        return
    out = op.shape(a, [(c, h, w)])
    assert out == (c, oh, ow)
    assert op.params(a, [(c, h, w)]) == []
    assert op.macs(a, [(c, h, w)], out) == 0


def ceil_window_positions(size, k, s, p, d=1):
    """Windows in ceil mode, one by one: each starts a stride after the last, inside the input
    or the padding before it, as long as the window before it did not reach the end of the
    padded axis (the first one: as long as it overshoots that end by less than a stride)."""
    padded, span = size + 2 * p, d * (k - 1) + 1
    count, start = 0, 0
    while start < size + p and start - s + span < padded:
        count, start = count + 1, start + s
    return count


def sees_only_padding(size, k, s, p, d, windows):
    """Whether some window's taps all fall in the padding."""
    return any(all(not 0 <= o * s - p + t * d < size for t in range(k)) for o in range(windows))


@SETTINGS
@given(c=st.integers(1, 4), h=sizes, w=sizes, kh=kernels, kw=kernels, sh=strides, sw=strides,
       ph=st.integers(0, 3), pw=st.integers(0, 3), dh=dilations, dw=dilations,
       ceil=st.booleans(), pool=st.sampled_from(["maxpool", "avgpool"]))
def test_pool_ceil_and_dilation(c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, ceil, pool):
    assume(ph <= kh // 2 and pw <= kw // 2)
    keywords = {"stride": (sh, sw), "pad": (ph, pw), "ceil": ceil}
    if pool == "maxpool":
        keywords["dilation"] = (dh, dw)
    else:
        dh = dw = 1
    count = ceil_window_positions if ceil else window_positions
    oh, ow = count(h, kh, sh, ph, dh), count(w, kw, sw, pw, dw)
    if oh == 0 or ow == 0:
        e = shape_error(pool, [(c, h, w)], (kh, kw), **keywords)
        assert "larger than its input" in e.message
    elif sees_only_padding(h, kh, sh, ph, dh, oh) or sees_only_padding(w, kw, sw, pw, dw, ow):
        e = shape_error(pool, [(c, h, w)], (kh, kw), **keywords)
        assert "sees only padding" in e.message and dh * dw > 1
    else:
        assert out_shape(pool, [(c, h, w)], (kh, kw), **keywords) == (c, oh, ow)


def test_pool_examples():
    assert out_shape("maxpool", [(64, 112, 112)], 3, 2, "same") == (64, 56, 56)  # ResNet stem
    assert out_shape("maxpool", [(96, 55, 55)], 3, 2) == (96, 27, 27)  # AlexNet overlapping pool
    assert out_shape("avgpool", [(6, 28, 28)], 2) == (6, 14, 14)  # LeNet subsampling
    assert out_shape("maxpool", [(1, 5, 5)], 2) == (1, 2, 2)
    assert out_shape("maxpool", [(1, 5, 5)], 2, pad="same") == (1, 3, 3)
    assert out_shape("maxpool", [(8, 4, 4)], 5, pad="same") == (8, 1, 1)
    assert out_shape("maxpool", [(1, 2, 2)], 3, 1, 1) == (1, 2, 2)
    # SqueezeNet 1.0 at 227 px: floor gives 55 -> 27, ceil (PyTorch's) 111 -> 55 -> 27 as well
    assert out_shape("maxpool", [(96, 111, 111)], 3, 2, ceil=True) == (96, 55, 55)
    assert out_shape("maxpool", [(96, 55, 55)], 3, 2, ceil=True) == (96, 27, 27)
    assert out_shape("maxpool", [(256, 56, 56)], 3, 2, ceil=True) == (256, 28, 28)
    assert out_shape("maxpool", [(256, 56, 56)], 3, 2) == (256, 27, 27)
    assert out_shape("maxpool", [(1, 2, 2)], 3, 2, ceil=True) == (1, 1, 1)   # wider than its input
    assert out_shape("maxpool", [(1, 9, 9)], 3, 1, 1, dilation=2) == (1, 7, 7)


@SETTINGS
@given(shape=maps, pool=st.sampled_from(["global_avgpool", "global_maxpool"]))
def test_global_pool(shape, pool):
    op, a = bind(pool)
    assert op.shape(a, [shape]) == (shape[0],)
    assert op.params(a, [shape]) == [] and op.macs(a, [shape], (shape[0],)) == 0


@SETTINGS
@given(shape=maps, oh=st.integers(1, 30), ow=st.integers(1, 30))
def test_adaptive_pool(shape, oh, ow):
    """Any output size, smaller or larger than the input's; one int is a square."""
    assert out_shape("adaptive_avgpool", [shape], (oh, ow)) == (shape[0], oh, ow)
    assert out_shape("adaptive_avgpool", [shape], oh) == (shape[0], oh, oh)
    assert "feature map" in shape_error("adaptive_avgpool", [(shape[0],)], oh).message


@SETTINGS
@given(shape=maps, sides=st.tuples(*[st.integers(0, 5)] * 4),
       mode=st.sampled_from(["constant", "reflect", "replicate"]))
def test_pad(shape, sides, mode):
    c, h, w = shape
    top, bottom, left, right = sides
    named = dict(zip(("top", "bottom", "left", "right"), sides))
    if mode == "reflect" and (max(top, bottom) >= h or max(left, right) >= w):
        assert "smaller than its axis" in shape_error("pad", [shape], 0, mode, **named).message
        return
    want = (c, h + top + bottom, w + left + right)
    assert out_shape("pad", [shape], 0, mode, **named) == want
    # the amount fills the sides not named
    assert out_shape("pad", [shape], (top, left), mode, bottom=bottom, right=right) == want


# ---------------------------------------------------------------- dense, flatten, reshape

@SETTINGS
@given(f=st.integers(1, 5000), units=st.integers(1, 5000), bias=st.booleans())
def test_dense(f, units, bias):
    op, a = bind("dense", units, bias)
    out = op.shape(a, [(f,)])
    assert out == (units,)
    ps = {p.name: p for p in op.params(a, [(f,)])}
    assert ps["weight"].shape == (units, f) and ps["weight"].init == "glorot_uniform"
    assert set(ps) == ({"weight", "bias"} if bias else {"weight"})
    assert count(ps.values()) == f * units + (units if bias else 0)
    assert op.macs(a, [(f,)], out) == f * units


@SETTINGS
@given(shape=maps)
def test_dense_on_feature_map_without_per_position(shape):
    e = shape_error("dense", [shape], 10)
    assert e.message == "dense expects a flat vector or a sequence, got {in0}"
    assert e.hint.startswith("add flatten (or global_avgpool) before it")


@SETTINGS
@given(shape=maps, units=st.integers(1, 500))
def test_dense_per_position_on_feature_map(shape, units):
    """Each position over its channels: PyTorch's Linear weight (units, C), as ConvNeXt's."""
    c, h, w = shape
    op, a = bind("dense", units, per_position=True)
    out = op.shape(a, [shape])
    assert out == (units, h, w)
    assert {p.name: p.shape for p in op.params(a, [shape])} == {"weight": (units, c), "bias": (units,)}
    assert op.macs(a, [shape], out) == c * h * w * units


@SETTINGS
@given(shape=any_shape)
def test_flatten(shape):
    assert out_shape("flatten", [shape]) == (math.prod(shape),)


@SETTINGS
@given(target=st.one_of(st.tuples(st.integers(1, 64)),
                        st.tuples(st.integers(1, 16), st.integers(1, 8), st.integers(1, 8))),
       source=st.sampled_from(["flat", "map"]), infer=st.integers(-1, 2), data=st.data())
def test_reshape(target, source, infer, data):
    total = math.prod(target)
    if source == "flat":
        src = (total,)
    else:
        c = data.draw(st.sampled_from(divisors(total)), label="channels")
        h = data.draw(st.sampled_from(divisors(total // c)), label="height")
        src = (c, h, total // c // h)
    written = target
    if 0 <= infer < len(target):
        written = tuple(-1 if i == infer else d for i, d in enumerate(target))
    assert out_shape("reshape", [src], written) == target


@SETTINGS
@given(src=any_shape, target=st.one_of(st.tuples(st.integers(1, 64)),
                                       st.tuples(st.integers(1, 16), st.integers(1, 8),
                                                 st.integers(1, 8))))
def test_reshape_count_mismatch(src, target):
    assume(math.prod(src) != math.prod(target))
    e = shape_error("reshape", [src], target)
    text = filled(e, 1)
    assert "<input 0>" in text
    assert f"({math.prod(src)} elements)" in text and f"({math.prod(target)} elements)" in text


def test_reshape_examples():
    assert out_shape("reshape", [(1024,)], (1024, 1, 1)) == (1024, 1, 1)
    assert out_shape("reshape", [(1024, 1, 1)], -1) == (1024,)
    assert out_shape("reshape", [(784,)], (1, 28, -1)) == (1, 28, 28)
    e = shape_error("reshape", [(784,)], (3, -1, 28))
    assert "cannot infer -1" in e.message and "784" in e.message and "84" in e.message
    e = shape_error("reshape", [(64, 7, 7)], (64, 8, 8))
    assert filled(e, 1) == ("reshape cannot turn <input 0> (3136 elements) into 64@8x8 "
                            "(4096 elements)")


# ---------------------------------------------------------------- normalisation and elementwise

@SETTINGS
@given(shape=any_shape, center=st.booleans(), scale=st.booleans())
def test_batchnorm(shape, center, scale):
    op, a = bind("batchnorm", center=center, scale=scale)
    assert op.shape(a, [shape]) == shape
    c = shape[-1] if len(shape) == 2 else shape[0]      # a sequence: per feature
    ps = {p.name: p for p in op.params(a, [shape])}
    assert ps["running_mean"].shape == ps["running_var"].shape == (c,)
    assert not ps["running_mean"].trainable and not ps["running_var"].trainable
    assert (ps["running_mean"].init, ps["running_var"].init) == ("zeros", "ones")
    assert ("weight" in ps) == scale and ("bias" in ps) == center
    if scale:
        assert ps["weight"].shape == (c,) and ps["weight"].init == "ones" and ps["weight"].trainable
    if center:
        assert ps["bias"].shape == (c,) and ps["bias"].init == "zeros" and ps["bias"].trainable
    assert count(ps.values(), trainable=True) == c * (center + scale)
    assert count(ps.values(), trainable=False) == 2 * c
    assert op.macs(a, [shape], shape) == 0


@SETTINGS
@given(shape=maps)
def test_lrn(shape):
    assert out_shape("lrn", [shape]) == shape


@SETTINGS
@given(shape=any_shape, name=st.sampled_from(ELEMENTWISE))
def test_elementwise_keep_shape(shape, name):
    op, a = bind(name)
    assert op.shape(a, [shape]) == shape
    assert op.macs(a, [shape], shape) == 0
    ps = op.params(a, [shape])
    channels = shape[-1] if len(shape) == 2 else shape[0]    # a sequence's: each token's features
    if name == "prelu":
        assert [(p.name, p.shape, p.init, p.trainable) for p in ps] == \
            [("weight", (channels,), "constant:0.25", True)]
    elif name == "layer_scale":          # ConvNeXt's gamma: one per channel, 1e-6 at first,
        per_channel = (channels, 1, 1) if len(shape) == 3 else (channels,)   # (C, 1, 1) on a map
        assert [(p.name, p.shape, p.init, p.trainable) for p in ps] == \
            [("layer_scale", per_channel, "constant:1e-06", True)]
    else:
        assert ps == []


@SETTINGS
@given(shape=any_shape, eps=st.floats(1e-8, 1.0))
def test_layer_norm(shape, eps):
    op, a = bind("layer_norm", eps)
    assert op.shape(a, [shape]) == shape and op.macs(a, [shape], shape) == 0
    c = shape[-1] if len(shape) == 2 else shape[0]      # each position over its channels
    assert [(p.name, p.shape, p.init, p.trainable) for p in op.params(a, [shape])] == \
        [("weight", (c,), "ones", True), ("bias", (c,), "zeros", True)]


# ---------------------------------------------------------------- sequences of tokens

@SETTINGS
@given(shape=sequences, units=st.integers(1, 500), bias=st.booleans())
def test_dense_on_each_token(shape, units, bias):
    op, a = bind("dense", units, bias)
    t, f = shape
    assert op.shape(a, [shape]) == (t, units)
    assert count(op.params(a, [shape])) == f * units + (units if bias else 0)
    assert op.macs(a, [shape], (t, units)) == t * f * units
    assert op.window_on(a, [shape]) is None and op.window_on(a, [(f,)]) == "global"


@SETTINGS
@given(shape=maps)
def test_to_tokens(shape):
    c, h, w = shape
    assert out_shape("to_tokens", [shape]) == (h * w, c)
    assert shape_error("to_tokens", [(c,)]).message == \
        "to_tokens expects a feature map C@HxW, got {in0}"


@SETTINGS
@given(shape=sequences)
def test_class_token_position_embedding_and_token(shape):
    t, f = shape
    op, a = bind("class_token")
    assert op.shape(a, [shape]) == (t + 1, f)
    assert [(p.name, p.shape, p.init) for p in op.params(a, [shape])] == [("class_token", (1, 1, f), "zeros")]
    op, a = bind("position_embedding")
    assert op.shape(a, [shape]) == shape
    assert [(p.name, p.shape, p.init) for p in op.params(a, [shape])] == \
        [("pos_embedding", (1, t, f), "normal:0.02")]
    assert out_shape("token", [shape], t - 1) == (f,)
    assert "past the end" in shape_error("token", [shape], t).message
    for name in ("class_token", "position_embedding", "token"):
        e = shape_error(name, [(f, 2, 2)])
        assert e.message == f"{name} expects a sequence of tokens TxF, got {{in0}}"
        assert "to_tokens" in e.hint


@SETTINGS
@given(t=st.integers(1, 300), d=st.integers(1, 64), heads=st.integers(1, 16), bias=st.booleans())
def test_attention(t, d, heads, bias):
    e = d * heads
    op, a = bind("attention", heads, bias)
    assert op.shape(a, [(t, e)]) == (t, e)
    ps = {p.name: p.shape for p in op.params(a, [(t, e)])}
    assert ps == {"in_proj_weight": (3 * e, e), "out_proj.weight": (e, e),    # nn.MultiheadAttention's
                  **({"in_proj_bias": (3 * e,), "out_proj.bias": (e,)} if bias else {})}
    assert op.macs(a, [(t, e)], (t, e)) == t * e * 3 * e + 2 * t * t * e + t * e * e
    if heads > 1:
        assert "not a multiple" in shape_error("attention", [(t, e + 1)], heads).message


def test_vit_b_16_encoder_layer_counts():
    """torchvision's vit_b_16 layer by layer: 590,592 in conv_proj, 7,087,872 per encoder layer."""
    attention = count(OPS["attention"].params(bind("attention", 12)[1], [(197, 768)]))
    mlp = count(OPS["dense"].params(bind("dense", 3072)[1], [(197, 768)])) + \
        count(OPS["dense"].params(bind("dense", 768)[1], [(197, 3072)]))
    norms = 2 * count(OPS["layer_norm"].params(bind("layer_norm")[1], [(197, 768)]))
    assert (attention, mlp, norms) == (2_362_368, 4_722_432, 3072)
    assert attention + mlp + norms == 7_087_872


# ---------------------------------------------------------------- resampling

@SETTINGS
@given(shape=maps, kh=st.integers(1, 4), kw=st.integers(1, 4),
       mode=st.sampled_from(["nearest", "bilinear"]))
def test_upsample_by_whole_factors(shape, kh, kw, mode):
    c, h, w = shape
    assert out_shape("upsample", [shape], (kh, kw), mode=mode) == (c, h * kh, w * kw)
    assert out_shape("upsample", [shape]) == (c, 2 * h, 2 * w)      # Keras' UpSampling2D's 2
    op, a = bind("upsample", (kh, kw))
    assert op.params(a, [shape]) == [] and op.macs(a, [shape], (c, h * kh, w * kw)) == 0


@SETTINGS
@given(shape=maps, size=st.tuples(st.integers(1, 40), st.integers(1, 40)))
def test_upsample_to_a_size(shape, size):
    """Any size, larger or smaller: DeepLab's resize to the input, ASPP's 1x1 to the map."""
    assert out_shape("upsample", [shape], size=size, mode="bilinear") == (shape[0], *size)


def test_upsample_refuses_vectors_and_empty_outputs():
    assert "feature map" in shape_error("upsample", [(8,)]).message
    e = shape_error("upsample", [(3, 4, 9)], 0.2)                    # 4 * 0.2 < 1
    assert "leaves nothing" in filled(e, 1) and "0x1" in e.message


@SETTINGS
@given(c=st.integers(1, 24), hw=st.tuples(st.integers(1, 8), st.integers(1, 8)),
       groups=st.integers(1, 24))
def test_channel_shuffle(c, hw, groups):
    shape = (c, *hw)
    if c % groups:
        assert "do not divide" in shape_error("channel_shuffle", [shape], groups).message
    else:
        assert out_shape("channel_shuffle", [shape], groups) == shape


# ---------------------------------------------------------------- merges

@SETTINGS
@given(shape=any_shape, n=st.integers(2, 5))
def test_add(shape, n):
    op, a = bind("add")
    assert op.shape(a, [shape] * n) == shape
    assert op.params(a, [shape] * n) == [] and op.macs(a, [shape] * n, shape) == 0


@SETTINGS
@given(shapes=st.lists(maps, min_size=2, max_size=5))
def test_add_mismatch_names_first_mismatch(shapes):
    k = next((i for i, s in enumerate(shapes) if s != shapes[0]), None)
    assume(k is not None)
    e = shape_error("add", shapes)
    assert e.message == f"add needs equal shapes: {{in0}} vs {{in{k}}}"
    assert "1x1 conv" in e.hint and "stride" in e.hint


def test_add_mixed_ranks():
    e = shape_error("add", [(64, 1, 1), (64,)])
    assert e.message == "add needs equal shapes: {in0} vs {in1}"


@SETTINGS
@given(h=st.integers(1, 30), w=st.integers(1, 30),
       channels=st.lists(st.integers(1, 256), min_size=2, max_size=6))
def test_concat_maps(h, w, channels):
    op, a = bind("concat")
    ins = [(c, h, w) for c in channels]
    assert op.shape(a, ins) == (sum(channels), h, w)
    assert op.params(a, ins) == [] and op.macs(a, ins, (sum(channels), h, w)) == 0


@SETTINGS
@given(features=st.lists(st.integers(1, 1000), min_size=2, max_size=6))
def test_concat_vectors(features):
    assert out_shape("concat", [(f,) for f in features]) == (sum(features),)


@SETTINGS
@given(shapes=st.lists(maps, min_size=2, max_size=5))
def test_concat_mismatch(shapes):
    k = next((i for i, s in enumerate(shapes) if s[1:] != shapes[0][1:]), None)
    assume(k is not None)
    e = shape_error("concat", shapes)
    assert e.message == ("concat joins channels, so height and width must match: "
                         f"{{in0}} vs {{in{k}}}")


def test_concat_mixed_ranks():
    e = shape_error("concat", [(8, 4, 4), (8, 4, 4), (16,)])
    assert "{in0} vs {in2}" in e.message and "flatten" in e.hint


@SETTINGS
@given(shape=any_shape)
def test_input(shape):
    op, a = bind("input", shape)
    assert op.shape(a, []) == shape
    assert op.params(a, []) == []


# ---------------------------------------------------------------- published figures

class Chain:
    """Applies ops one after another, adding up parameters and MACs."""

    def __init__(self):
        self.params = []
        self.macs = 0

    def __call__(self, name, x, *positional, **keywords):
        op, a = bind(name, *positional, **keywords)
        ins = x if isinstance(x, list) else [x]
        out = op.shape(a, ins)
        self.params += op.params(a, ins)
        self.macs += op.macs(a, ins, out)
        return out

    def total(self, trainable=None):
        return count(self.params, trainable)


def test_conv_figures():
    """A 5x5 conv with 200 maps on a 150x100 RGB image, stride 1, same (Géron ch. 14)."""
    net = Chain()
    out = net("conv", (3, 150, 100), 200, 5, pad="same")
    assert out == (200, 150, 100)
    assert net.total() == 15_200
    assert net.macs == 225_000_000
    assert math.prod(out) * 4 == 12_000_000  # 12 MB of float32 output per instance
    net = Chain()
    net("conv", (64, 56, 56), 128, 3, pad="same")
    assert net.total() == 73_856


def test_googlenet_inception_3a():
    """Szegedy et al. 2015 table 1: 3a is 163,328 weights (159K) and 128,049,152 MACs (128M)."""
    net = Chain()
    x = (192, 28, 28)
    b1 = net("conv", x, 64, 1, bias=False)
    b2 = net("conv", net("conv", x, 96, 1, bias=False), 128, 3, pad="same", bias=False)
    b3 = net("conv", net("conv", x, 16, 1, bias=False), 32, 5, pad="same", bias=False)
    b4 = net("conv", net("maxpool", x, 3, 1, "same"), 32, 1, bias=False)
    assert net("concat", [b1, b2, b3, b4]) == (256, 28, 28)
    assert net.total() == 163_328
    assert net.macs == 128_049_152


def test_inception_naive_vs_bottleneck():
    """28x28x256 with 128/192/96 filters: 854,196,224 MACs naive, 271,351,808 with 64-channel
    1x1 bottlenecks."""
    x = (256, 28, 28)
    net = Chain()
    net("conv", x, 128, 1)
    net("conv", x, 192, 3, pad="same")
    net("conv", x, 96, 5, pad="same")
    assert net.macs == 854_196_224
    net = Chain()
    net("conv", x, 128, 1)
    net("conv", net("conv", x, 64, 1), 192, 3, pad="same")
    net("conv", net("conv", x, 64, 1), 96, 5, pad="same")
    net("conv", net("maxpool", x, 3, 1, "same"), 64, 1)
    assert net.macs == 271_351_808


@pytest.mark.parametrize("with_bn", [False, True])
def test_mlp(with_bn):
    """MLP 784-300-100-10: 266,610 parameters; with BatchNormalization before each Dense
    (Keras): 271,346, of which 2,368 non-trainable."""
    net = Chain()
    x = net("flatten", net("input", [], (1, 28, 28)))
    for units in (300, 100, 10):
        if with_bn:
            x = net("batchnorm", x)
        x = net("dense", x, units)
    assert x == (10,)
    if with_bn:
        assert (net.total(), net.total(True), net.total(False)) == (271_346, 268_978, 2_368)
    else:
        assert net.total() == 266_610
        assert net.macs == 784 * 300 + 300 * 100 + 100 * 10


def test_lenet5():
    """LeNet-5 with a full C3 and no pooling coefficients: 61,706 parameters."""
    net = Chain()
    x = net("conv", (1, 32, 32), 6, 5, act="tanh")
    x = net("avgpool", x, 2)
    x = net("conv", x, 16, 5, act="tanh")
    x = net("avgpool", x, 2)
    x = net("conv", x, 120, 5, act="tanh")
    assert x == (120, 1, 1)
    x = net("dense", net("flatten", x), 84, act="tanh")
    x = net("dense", x, 10, act="softmax")
    assert net.total() == 61_706


def test_resnet34():
    """ResNet-34 (3@224x224, 10 classes) as in Géron ch. 14: 21,306,826 parameters,
    17,024 of them non-trainable (batch-norm moving statistics)."""
    net = Chain()
    x = net("conv", (3, 224, 224), 64, 7, 2, "same", bias=False)
    x = net("relu", net("batchnorm", x))
    x = net("maxpool", x, 3, 2, "same")
    assert x == (64, 56, 56)
    prev = 64
    for filters in [64] * 3 + [128] * 4 + [256] * 6 + [512] * 3:
        stride = 1 if filters == prev else 2
        main = net("conv", x, filters, 3, stride, "same", bias=False)
        main = net("relu", net("batchnorm", main))
        main = net("batchnorm", net("conv", main, filters, 3, 1, "same", bias=False))
        skip = x
        if stride > 1:
            skip = net("batchnorm", net("conv", x, filters, 1, stride, "same", bias=False))
        x = net("relu", net("add", [main, skip]))
        prev = filters
    assert x == (512, 7, 7)
    x = net("flatten", net("global_avgpool", x))
    assert net("softmax", net("dense", x, 10)) == (10,)
    assert net.total() == 21_306_826
    assert net.total(trainable=True) == 21_289_802
    assert net.total(trainable=False) == 17_024
