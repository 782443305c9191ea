"""CPU kernels other than convolution and dense: pooling, normalisation, activations,
merges, data movers, losses.

Each kernel runs with outputs poisoned (NaN, or -7 for ints) and must write every
element. float32 kernels are checked against the float64 references in
tests/reference/other.py (relative error, as a norm, under 1e-5 elementwise and
1e-4 for reductions); backward kernels by a full Jacobian against central
differences in float64 on tiny shapes and by the dot-product (adjoint) test on
larger ones; and against PyTorch where the two should agree.
"""

from __future__ import annotations

import functools
import zlib

import numpy as np
import pytest
import torch

from netspec.runtime.cpu import KERNELS, Context
from netspec.runtime.isa import ACTIVATIONS, POINTWISE_ACTIVATIONS
from reference import other as ref

F = torch.nn.functional

ELEMENTWISE_TOL = 1e-5
REDUCTION_TOL = 1e-4
INT_POISON = -7


# ---- harness

@pytest.fixture
def rng(request):
    seed = zlib.crc32(request.node.nodeid.encode())
    print(f"seed {seed} for {request.node.nodeid}")       # shown when the test fails
    return np.random.default_rng(seed)


def run(name, ins, outs, ctx=None, **attrs):
    """Run a kernel. outs: (shape, dtype) pairs, poisoned before the call, or arrays
    (in-place state) passed as they are. Returns the outputs; checks every poisoned
    output was written."""
    buffers, poisoned = [], []
    for o in outs:
        if isinstance(o, np.ndarray):
            buffers.append(o)
            continue
        shape, dtype = o
        a = np.empty(shape, dtype)
        a.fill(np.nan if np.issubdtype(dtype, np.floating) else INT_POISON)
        buffers.append(a)
        poisoned.append(a)
    KERNELS[name](list(ins), buffers, attrs, ctx or Context())
    for a in poisoned:
        if np.issubdtype(a.dtype, np.floating):
            assert not np.isnan(a).any(), f"{name}: output left unwritten (NaN)"
        else:
            assert not (a == INT_POISON).any(), f"{name}: int output left unwritten"
    return buffers


def run1(name, ins, shape, dtype, **attrs):
    return run(name, ins, [(shape, dtype)], **attrs)[0]


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


def close(a, b, tol=ELEMENTWISE_TOL):
    __tracebackhide__ = True
    assert np.shape(a) == np.shape(b), (np.shape(a), np.shape(b))
    err = rel(a, b)
    assert err < tol, f"relative error {err:.3g} >= {tol:g}"


def jacobian_check(f, vjp, x, eps=1e-6, atol=1e-5, rtol=1e-3):
    """Full Jacobian of f at x by central differences vs rows from vjp (float64)."""
    __tracebackhide__ = True
    y = f(x)
    numeric = np.empty((y.size, x.size))
    for j in range(x.size):
        d = np.zeros(x.size)
        d[j] = eps
        d = d.reshape(x.shape)
        numeric[:, j] = ((f(x + d) - f(x - d)) / (2 * eps)).ravel()
    analytic = np.empty_like(numeric)
    for i in range(y.size):
        e = np.zeros(y.size)
        e[i] = 1.0
        analytic[i] = vjp(e.reshape(y.shape)).ravel()
    np.testing.assert_allclose(analytic, numeric, atol=atol, rtol=rtol)


def adjoint_check(f, vjp, x, rng, eps=1e-6, rtol=1e-6):
    """<u, J^T v> == <J u, v> with J u by a central difference (float64)."""
    __tracebackhide__ = True
    u = rng.standard_normal(x.shape)
    y = f(x)
    v = rng.standard_normal(y.shape)
    ju = (f(x + eps * u) - f(x - eps * u)) / (2 * eps)
    lhs, rhs = np.vdot(u, vjp(v)), np.vdot(ju, v)
    assert abs(lhs - rhs) <= rtol * (abs(lhs) + abs(rhs)) + 1e-9, (lhs, rhs)


def nhwc(t):
    return np.ascontiguousarray(t.detach().numpy().transpose(0, 2, 3, 1))


def nchw(a):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2)))


# ---- activations

# The ISA's activations (isa.ACTIVATIONS) with a slope other than its default where they
# take one, and their references by instruction name (tests/reference/other.py)
ACTS = {name: {} if act.alpha is None else {"alpha": 0.7} for name, act in ACTIVATIONS.items()}


def fwd_ref(name):
    return functools.partial(getattr(ref, name), **ACTS[name])


def vjp_ref(name):
    return functools.partial(getattr(ref, name + "_vjp"), **ACTS[name])

# small and 2-D, 4-D, and one big enough for the parallel path
ACT_SHAPES = [(6, 11), (3, 5, 4, 7), (4, 32, 32, 17)]


def act_input(rng, shape, dtype=np.float32):
    """Normal * 4, kept 0.05 away from the kinks at 0, 6 and +-3."""
    x = rng.standard_normal(shape) * 4
    for kink in (0.0, 6.0, -3.0, 3.0):
        near = np.abs(x - kink) < 0.05
        x[near] = kink + np.where(x[near] >= kink, 0.05, -0.05)
    return x.astype(dtype)


def backward_reads(name, x, y):
    """What the activation's backward instruction reads besides gy: y, or x (isa grad_reads)."""
    return x if ACTIVATIONS[name].grad_reads == "x" else y


@pytest.mark.parametrize("shape", ACT_SHAPES, ids=str)
@pytest.mark.parametrize("name", ACTS)
def test_activation_forward_backward(name, shape, rng):
    attrs = ACTS[name]
    x = act_input(rng, shape)
    y = run1(name, [x], shape, np.float32, **attrs)
    close(y, fwd_ref(name)(x))
    gy = rng.standard_normal(shape).astype(np.float32)
    gx = run1(name + "_bwd", [gy, backward_reads(name, x, y)], shape, np.float32, **attrs)
    close(gx, vjp_ref(name)(gy, x))


@pytest.mark.parametrize("name", ACTS)
def test_activation_gradients(name, rng):
    attrs = ACTS[name]
    x = act_input(rng, (2, 3, 2, 3), np.float64)

    def f(x):
        return run1(name, [x], x.shape, np.float64, **attrs)

    def vjp_at(x):
        u = backward_reads(name, x, f(x))
        return lambda g: run1(name + "_bwd", [g, u], x.shape, np.float64, **attrs)

    jacobian_check(f, vjp_at(x), x)
    big = act_input(rng, (5, 9, 7, 6), np.float64)
    adjoint_check(f, vjp_at(big), big, rng)


def test_activation_extremes():
    x = np.array([[-1e4, -100, -20, -1e-30, 0, 1e-30, 20, 100, 1e4]], np.float32)
    for name in ACTS:
        y = run1(name, [x], x.shape, np.float32, **ACTS[name])
        assert np.isfinite(y).all(), (name, y)
        close(y, fwd_ref(name)(x))
    nan = np.array([np.nan, 1.0], np.float32)
    for name in POINTWISE_ACTIVATIONS:
        y = np.zeros(2, np.float32)
        KERNELS[name]([nan], [y], {}, Context())
        assert np.isnan(y[0]) and not np.isnan(y[1]), f"{name} swallowed a NaN"


def test_hard_activations_take_pytorchs_values_at_their_kinks():
    """At the kinks, and at the float32 x just above -3 and just below 3 (where x + 3 rounds
    to 6), outputs and derivatives are PyTorch's float32 bits: hardswish's derivative is 0 at
    -3 and 1 at 3, hardsigmoid's 0 at both."""
    below_3, above_minus_3 = np.nextafter(np.float32(3), 0), np.nextafter(np.float32(-3), 0)
    x = np.array([-4, -3, above_minus_3, -0.5, 0.5, below_3, 3, 4], np.float32)
    gy = np.linspace(0.5, 2, x.size).astype(np.float32)
    for name in ("hardswish", "hardsigmoid"):
        tx = torch.from_numpy(x.copy()).requires_grad_()
        ty = getattr(F, name)(tx)
        ty.backward(torch.from_numpy(gy))
        np.testing.assert_array_equal(run1(name, [x], x.shape, np.float32), ty.detach().numpy())
        np.testing.assert_array_equal(run1(name + "_bwd", [gy, x], x.shape, np.float32),
                                      tx.grad.numpy())


def test_prelu(rng):
    for shape in [(7, 5), (2, 4, 3, 6)]:
        x = act_input(rng, shape)
        w = rng.uniform(0.05, 0.5, shape[-1]).astype(np.float32)
        close(run1("prelu", [x, w], shape, np.float32), ref.prelu(x, w))
        gy = rng.standard_normal(shape).astype(np.float32)
        gx, gw = run("prelu_bwd", [gy, x, w], [(shape, np.float32), ((shape[-1],), np.float32)])
        want_gx, want_gw = ref.prelu_vjp(gy, x, w)
        close(gx, want_gx)
        close(gw, want_gw, REDUCTION_TOL)
    tx = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_()
    tw = torch.from_numpy(w).requires_grad_()
    ty = F.prelu(tx, tw)
    ty.backward(nchw(gy))
    close(run1("prelu", [x, w], x.shape, np.float32), nhwc(ty))
    close(gx, nhwc(tx.grad))
    close(gw, tw.grad.numpy(), REDUCTION_TOL)


def test_prelu_gradients(rng):
    x = act_input(rng, (2, 2, 3, 3), np.float64)
    w = rng.uniform(0.05, 0.5, 3)

    def fwd(x, w):
        return run1("prelu", [x, w], x.shape, np.float64)

    def bwd(g):
        return run("prelu_bwd", [g, x, w], [(x.shape, np.float64), ((3,), np.float64)])

    jacobian_check(lambda x: fwd(x, w), lambda g: bwd(g)[0], x)
    jacobian_check(lambda w: fwd(x, w), lambda g: bwd(g)[1], w)


# ---- merges and data movers

def test_add_mul(rng):
    for shape in [(5, 7), (2, 3, 4, 5), (3, 40, 40, 16)]:
        xs = [rng.standard_normal(shape).astype(np.float32) for _ in range(3)]
        close(run1("add", xs[:2], shape, np.float32), xs[0].astype(np.float64) + xs[1])
        close(run1("add", xs, shape, np.float32), sum(x.astype(np.float64) for x in xs))
        close(run1("mul", xs[:2], shape, np.float32), xs[0].astype(np.float64) * xs[1])


def test_concat_split(rng):
    for lead in [(6,), (2, 3, 4)]:
        widths = [3, 1, 5]
        xs = [rng.standard_normal((*lead, w)).astype(np.float32) for w in widths]
        y = run1("concat", xs, (*lead, sum(widths)), np.float32)
        np.testing.assert_array_equal(y, ref.concat(xs))
        parts = run("split", [y], [((*lead, w), np.float32) for w in widths])
        for got, want in zip(parts, ref.split(y, widths)):
            np.testing.assert_array_equal(got, want)


def test_to_flat_from_flat(rng):
    x = rng.standard_normal((3, 4, 5, 6)).astype(np.float32)
    flat = run1("to_flat", [x], (3, 120), np.float32)
    np.testing.assert_array_equal(flat, ref.to_flat(x))
    np.testing.assert_array_equal(flat, torch.flatten(nchw(x), 1).numpy())
    back = run1("from_flat", [flat], x.shape, np.float32)
    np.testing.assert_array_equal(back, ref.from_flat(flat, x.shape))
    np.testing.assert_array_equal(back, x)


def test_dropout(rng):
    x = rng.standard_normal((8, 16, 16, 4)).astype(np.float32) + 3.0
    y, mask = run("dropout", [x], [(x.shape, np.float32)] * 2, Context(np.random.default_rng(5)),
                  rate=0.3)
    assert mask.dtype == np.float32
    kept = mask != 0
    np.testing.assert_allclose(mask[kept], 1 / 0.7, rtol=1e-6)
    assert abs(kept.mean() - 0.7) < 0.02
    np.testing.assert_array_equal(y, x * mask)
    again = run("dropout", [x], [(x.shape, np.float32)] * 2, Context(np.random.default_rng(5)),
                rate=0.3)
    np.testing.assert_array_equal(again[1], mask)          # the run's generator decides
    y0, m0 = run("dropout", [x], [(x.shape, np.float32)] * 2, rate=0.0)
    np.testing.assert_array_equal(m0, 1.0)
    np.testing.assert_array_equal(y0, x)
    gy = rng.standard_normal(x.shape).astype(np.float32)
    np.testing.assert_array_equal(run1("mul", [gy, mask], x.shape, np.float32), gy * mask)


def test_drop_path(rng):
    """Whole samples dropped with probability rate, the kept ones scaled; the run's generator
    decides; mul_samples is its backward."""
    x = rng.standard_normal((4000, 2, 2, 3)).astype(np.float32) + 3.0
    outs = [(x.shape, np.float32), ((4000,), np.float32)]
    y, mask = run("drop_path", [x], outs, Context(np.random.default_rng(5)), rate=0.3)
    kept = mask != 0
    np.testing.assert_allclose(mask[kept], 1 / 0.7, rtol=1e-6)
    assert abs(kept.mean() - 0.7) < 0.03
    np.testing.assert_array_equal(y, x * mask[:, None, None, None])
    again = run("drop_path", [x], outs, Context(np.random.default_rng(5)), rate=0.3)
    np.testing.assert_array_equal(again[1], mask)
    y0, m0 = run("drop_path", [x], outs, rate=0.0)
    np.testing.assert_array_equal(m0, 1.0)
    np.testing.assert_array_equal(y0, x)
    gy = rng.standard_normal(x.shape).astype(np.float32)
    np.testing.assert_array_equal(run1("mul_samples", [gy, mask], x.shape, np.float32),
                                  gy * mask[:, None, None, None])


def test_channel_scale(rng):
    x = rng.standard_normal((3, 4, 5, 6))
    w = rng.standard_normal(6)
    np.testing.assert_allclose(run1("channel_scale", [x, w], x.shape, np.float64), x * w, rtol=1e-15)
    gy = rng.standard_normal(x.shape)
    gx, gw = run("channel_scale_bwd", [gy, x, w], [(x.shape, np.float64), ((6,), np.float64)])
    np.testing.assert_allclose(gx, gy * w, rtol=1e-15)
    np.testing.assert_allclose(gw, (gy * x).sum(axis=(0, 1, 2)), rtol=1e-12)


def test_channel_shuffle_matches_torch_and_its_inverse(rng):
    x = rng.standard_normal((2, 3, 4, 12))
    for groups in (1, 2, 3, 4, 6, 12):
        y = run1("channel_shuffle", [x], x.shape, np.float64, groups=groups)
        want = nhwc(F.channel_shuffle(torch.as_tensor(x.transpose(0, 3, 1, 2).copy()), groups))
        np.testing.assert_array_equal(y, want)
        back = run1("channel_shuffle", [y], x.shape, np.float64, groups=12 // groups)
        np.testing.assert_array_equal(back, x)


# (input H, W, then scale (0, 0) with size, or a scale giving the size), mode, align_corners:
# non-integer steps, a scale that is not out / in, a scale of 2 whose step 1/2.0000001 rounds
# below 1/2 (PyTorch still halves the index), shrinking, one pixel and a single output
UPSAMPLES = [
    ((5, 7), (11, 3), None, "nearest", False),
    ((5, 7), None, (1.3, 2.5), "nearest", False),
    ((9, 4), None, (2.0000001, 0.5), "nearest", False),
    ((6, 5), (4, 13), None, "bilinear", False),
    ((5, 7), None, (1.7, 0.6), "bilinear", False),
    ((5, 7), (9, 2), None, "bilinear", True),
    ((4, 3), None, (2.5, 1.5), "bilinear", True),
    ((1, 1), (5, 4), None, "bilinear", False),
    ((3, 4), (1, 1), None, "bilinear", True),
]


@pytest.mark.parametrize("hw, size, scale, mode, align", UPSAMPLES)
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-13), (np.float32, 1e-6)])
def test_upsample_matches_torch(hw, size, scale, mode, align, dtype, tol, rng):
    """F.interpolate forward and its autograd backward, with the same arguments."""
    x = rng.standard_normal((2, *hw, 3))
    tx = torch.tensor(x.transpose(0, 3, 1, 2), dtype=torch.float64 if dtype == np.float64
                      else torch.float32, requires_grad=True)
    how = {"size": size} if size else {"scale_factor": scale}
    ty = F.interpolate(tx, mode=mode, align_corners=align if mode == "bilinear" else None, **how)
    attrs = {"mode": mode, "scale": scale or (0.0, 0.0), "align_corners": align}
    y = run1("upsample", [x.astype(dtype)], nhwc(ty).shape, dtype, **attrs)
    close(y, nhwc(ty), tol)
    gy = rng.standard_normal(y.shape)
    ty.backward(torch.as_tensor(gy.transpose(0, 3, 1, 2), dtype=ty.dtype))
    gx = run1("upsample_bwd", [gy.astype(dtype)], x.shape, dtype, **attrs)
    close(gx, nhwc(tx.grad), tol)


def test_upsample_bwd_is_the_adjoint(rng):
    attrs = {"mode": "bilinear", "scale": (1.7, 2.3), "align_corners": False}
    x = rng.standard_normal((1, 4, 3, 2))
    out = (1, 6, 6, 2)
    jacobian_check(lambda v: run1("upsample", [v], out, np.float64, **attrs),
                   lambda g: run1("upsample_bwd", [g], x.shape, np.float64, **attrs), x)


# ---- pooling

def pool_attrs(kernel, stride, pad, **extra):
    return {"kernel": kernel, "stride": stride, "pad": pad, **extra}


def pooled_shape(x_shape, a):
    n, h, w, c = x_shape
    (kh, kw), (sh, sw), (pt, pb, pl, pr) = a["kernel"], a["stride"], a["pad"]
    return n, (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1, c


POOLS = [  # (input shape, attrs): channel counts on both sides of the small-C path
    ((2, 7, 7, 3), pool_attrs((2, 2), (2, 2), (0, 0, 0, 0))),            # odd size, floor
    ((2, 8, 8, 16), pool_attrs((2, 2), (2, 2), (0, 0, 0, 0))),
    ((2, 9, 9, 5), pool_attrs((3, 3), (2, 2), (1, 1, 1, 1))),            # windows start in padding
    ((2, 9, 10, 16), pool_attrs((3, 3), (2, 2), (1, 1, 1, 1))),
    ((2, 8, 8, 3), pool_attrs((3, 3), (2, 2), (0, 1, 0, 1))),            # 'same', stride 2
    ((1, 8, 8, 13), pool_attrs((3, 3), (2, 2), (0, 1, 0, 1))),
    ((2, 7, 6, 4), pool_attrs((2, 3), (2, 1), (0, 1, 1, 1))),            # asymmetric everything
    ((2, 7, 6, 20), pool_attrs((2, 3), (2, 1), (0, 1, 1, 1))),
    ((2, 10, 10, 2), pool_attrs((2, 2), (3, 3), (0, 0, 0, 0))),          # stride > kernel
    ((1, 6, 6, 12), pool_attrs((3, 3), (1, 1), (1, 1, 1, 1))),           # overlapping, stride 1
    ((64, 28, 28, 6), pool_attrs((2, 2), (2, 2), (0, 0, 0, 0))),         # LeNet, parallel path
    ((4, 32, 32, 64), pool_attrs((3, 3), (2, 2), (1, 1, 1, 1))),         # ResNet stem, parallel
]
POOL_IDS = [f"{s}-k{a['kernel']}-s{a['stride']}-p{a['pad']}".replace(" ", "") for s, a in POOLS]


@pytest.mark.parametrize("shape,attrs", POOLS, ids=POOL_IDS)
def test_maxpool(shape, attrs, rng):
    x = rng.permutation(np.prod(shape)).reshape(shape).astype(np.float32) / 7 - 50  # no ties
    out = pooled_shape(shape, attrs)
    y, am = run("maxpool2d", [x], [(out, np.float32), (out, np.int32)], **attrs)
    want_y, want_am = ref.maxpool2d(x, attrs["kernel"], attrs["stride"], attrs["pad"])
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(am, want_am)
    gy = rng.standard_normal(out).astype(np.float32)
    gx = run1("maxpool2d_bwd", [gy, am], shape, np.float32, **attrs)
    close(gx, ref.maxpool2d_vjp(gy, want_am, shape))


@pytest.mark.parametrize("include_pad", [False, True])
@pytest.mark.parametrize("shape,attrs", POOLS, ids=POOL_IDS)
def test_avgpool(shape, attrs, include_pad, rng):
    attrs = {**attrs, "include_pad": include_pad}
    x = rng.standard_normal(shape).astype(np.float32)
    out = pooled_shape(shape, attrs)
    y = run1("avgpool2d", [x], out, np.float32, **attrs)
    k, s, p = attrs["kernel"], attrs["stride"], attrs["pad"]
    close(y, ref.avgpool2d(x, k, s, p, include_pad))
    gy = rng.standard_normal(out).astype(np.float32)
    gx = run1("avgpool2d_bwd", [gy], shape, np.float32, **attrs)
    close(gx, ref.avgpool2d_vjp(gy, shape, k, s, p, include_pad))


def test_avgpool_divisor_with_padding():
    """A 3x3 window at a corner with pad 1 sees 4 pixels: divisor 4, or 9 with include_pad."""
    x = np.ones((1, 4, 4, 2), np.float32)
    a = pool_attrs((3, 3), (2, 2), (1, 1, 1, 1))
    np.testing.assert_allclose(run1("avgpool2d", [x], (1, 2, 2, 2), np.float32,
                                    include_pad=False, **a), 1.0, rtol=1e-6)
    y = run1("avgpool2d", [x], (1, 2, 2, 2), np.float32, include_pad=True, **a)
    np.testing.assert_allclose(y[0, :, :, 0], [[4 / 9, 6 / 9], [6 / 9, 9 / 9]], rtol=1e-6)


@pytest.mark.parametrize("shape,attrs", POOLS, ids=POOL_IDS)
def test_pool_gradients(shape, attrs, rng):
    """Full Jacobians on a tiny crop of each configuration, adjoint test on the rest."""
    tiny = (1, min(shape[1], 7), min(shape[2], 7), 2)
    for name, extra in (("maxpool2d", {}), ("avgpool2d", {"include_pad": False}),
                        ("avgpool2d", {"include_pad": True})):
        a = {**attrs, **extra}
        for shp, full in ((tiny, True), (shape[:3] + (min(shape[3], 16),), False)):
            out = pooled_shape(shp, a)
            x = rng.permutation(np.prod(shp)).reshape(shp) / np.prod(shp)   # distinct values
            if name == "maxpool2d":
                def f(x):
                    return run("maxpool2d", [x], [(out, np.float64), (out, np.int32)], **a)[0]
                am = run("maxpool2d", [x], [(out, np.float64), (out, np.int32)], **a)[1]

                def vjp(g):
                    return run1("maxpool2d_bwd", [g, am], shp, np.float64, **a)
            else:
                def f(x):
                    return run1("avgpool2d", [x], out, np.float64, **a)

                def vjp(g):
                    return run1("avgpool2d_bwd", [g], shp, np.float64, **a)
            if full:
                jacobian_check(f, vjp, x)
            else:   # a step far below the gap between values, so no maximum changes place
                adjoint_check(f, vjp, x, rng, eps=0.05 / x.size)


def test_maxpool_ties(rng):
    """Ties everywhere: the first maximum (row-major in the window) takes the whole gradient,
    the gradient's sum is conserved, and PyTorch does the same."""
    shape = (2, 9, 9, 5)
    x = rng.integers(0, 3, shape).astype(np.float32)
    a = pool_attrs((3, 3), (2, 2), (1, 1, 1, 1))
    out = pooled_shape(shape, a)
    y, am = run("maxpool2d", [x], [(out, np.float32), (out, np.int32)], **a)
    want_y, want_am = ref.maxpool2d(x, (3, 3), (2, 2), (1, 1, 1, 1))
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(am, want_am)
    gy = rng.standard_normal(out).astype(np.float32)
    gx = run1("maxpool2d_bwd", [gy, am], shape, np.float32, **a)
    np.testing.assert_allclose(gx.sum(), gy.astype(np.float64).sum(), rtol=1e-5)
    tx = nchw(x).requires_grad_()
    ty, ti = F.max_pool2d(tx, 3, 2, 1, return_indices=True)
    ty.backward(nchw(gy))
    np.testing.assert_array_equal(am, nhwc(ti))
    np.testing.assert_array_equal(gx, nhwc(tx.grad))
    # global max pool: constant channels tie everywhere, the first pixel wins
    flat = np.ones((2, 3, 4, 5), np.float32)
    gy2 = rng.standard_normal((2, 5)).astype(np.float32)
    y2, am2 = run("global_maxpool", [flat], [((2, 5), np.float32), ((2, 5), np.int32)])
    np.testing.assert_array_equal(am2, 0)
    gx2 = run1("global_maxpool_bwd", [gy2, am2], flat.shape, np.float32)
    np.testing.assert_array_equal(gx2[:, 0, 0], gy2)
    assert np.count_nonzero(gx2) == np.count_nonzero(gy2)


@pytest.mark.parametrize("include_pad", [False, True])
@pytest.mark.parametrize("k,s,p,shape", [(2, 2, 0, (4, 28, 28, 6)), (3, 2, 1, (2, 17, 16, 24)),
                                         (3, 1, 1, (2, 9, 9, 3)), (2, 2, 1, (2, 7, 9, 16))])
def test_pools_match_torch(k, s, p, shape, include_pad, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    gy_shape = pooled_shape(shape, pool_attrs((k, k), (s, s), (p,) * 4))
    gy = rng.standard_normal(gy_shape).astype(np.float32)
    a = pool_attrs((k, k), (s, s), (p,) * 4)
    tx = nchw(x).requires_grad_()
    ty = F.avg_pool2d(tx, k, s, p, count_include_pad=include_pad)
    ty.backward(nchw(gy))
    close(run1("avgpool2d", [x], gy_shape, np.float32, include_pad=include_pad, **a), nhwc(ty))
    close(run1("avgpool2d_bwd", [gy], shape, np.float32, include_pad=include_pad, **a),
          nhwc(tx.grad))
    if include_pad:
        return
    tx = nchw(x).requires_grad_()
    ty = F.max_pool2d(tx, k, s, p)
    ty.backward(nchw(gy))
    y, am = run("maxpool2d", [x], [(gy_shape, np.float32), (gy_shape, np.int32)], **a)
    np.testing.assert_array_equal(y, nhwc(ty))
    close(run1("maxpool2d_bwd", [gy, am], shape, np.float32, **a), nhwc(tx.grad))


@pytest.mark.parametrize("shape", [(3, 5, 4, 6), (2, 1, 1, 7), (16, 8, 8, 512)], ids=str)
def test_global_pools(shape, rng):
    n, h, w, c = shape
    x = rng.permutation(np.prod(shape)).reshape(shape).astype(np.float32) / 11 - 3
    gy = rng.standard_normal((n, c)).astype(np.float32)
    close(run1("global_avgpool", [x], (n, c), np.float32), ref.global_avgpool(x), REDUCTION_TOL)
    close(run1("global_avgpool_bwd", [gy], shape, np.float32), ref.global_avgpool_vjp(gy, shape))
    y, am = run("global_maxpool", [x], [((n, c), np.float32), ((n, c), np.int32)])
    want_y, want_am = ref.global_maxpool(x)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(am, want_am)
    close(run1("global_maxpool_bwd", [gy, am], shape, np.float32),
          ref.global_maxpool_vjp(gy, want_am, shape))
    close(run1("global_avgpool", [x], (n, c), np.float32),
          F.adaptive_avg_pool2d(nchw(x), 1).flatten(1).numpy(), REDUCTION_TOL)


def _torch_pool_and_grad(pool, x, rng):
    """PyTorch's pool of x (NHWC) and its gradient for a random gy: (y, gy, gx), NHWC."""
    tx = nchw(x).requires_grad_()
    ty = pool(tx)
    gy = rng.standard_normal(nhwc(ty).shape).astype(x.dtype)
    ty.backward(nchw(gy))
    return nhwc(ty), gy, nhwc(tx.grad)


# ceil mode and dilation, at the cases' sizes and at sizes that take the parallel paths (and,
# with few channels, the average pools' row paths): (input shape, kernel, stride, pad, dilation)
CEIL_POOLS = [
    ((2, 6, 5, 3), 3, 2, 0, 1), ((2, 4, 5, 16), 3, 2, 1, 1), ((2, 5, 3, 2), 2, 2, 0, 1),
    ((4, 56, 56, 6), 3, 2, 0, 1),                 # SqueezeNet's 56 -> 28
    ((2, 45, 40, 24), 3, 2, 1, 2), ((2, 9, 8, 3), 2, 1, 1, 3),
]


@pytest.mark.parametrize("shape,k,s,p,d", CEIL_POOLS, ids=[str(c) for c in CEIL_POOLS])
@pytest.mark.parametrize("ceil", [True, False])
def test_ceil_and_dilated_pools_match_torch(shape, k, s, p, d, ceil, rng):
    x = rng.permutation(np.prod(shape)).reshape(shape).astype(np.float32) / 7 - 50  # no ties
    a = pool_attrs((k, k), (s, s), (p,) * 4, dilation=(d, d), ceil=ceil)
    y_want, gy, gx_want = _torch_pool_and_grad(
        lambda t: F.max_pool2d(t, k, s, p, d, ceil_mode=ceil), x, rng)
    y, am = run("maxpool2d", [x], [(y_want.shape, np.float32), (y_want.shape, np.int32)], **a)
    np.testing.assert_array_equal(y, y_want)
    close(run1("maxpool2d_bwd", [gy, am], shape, np.float32, **a), gx_want)
    if d > 1:
        return                                      # average pools have no dilation
    for include_pad in (False, True):
        a = pool_attrs((k, k), (s, s), (p,) * 4, ceil=ceil, include_pad=include_pad)
        y_want, gy, gx_want = _torch_pool_and_grad(
            lambda t: F.avg_pool2d(t, k, s, p, ceil, count_include_pad=include_pad), x, rng)
        close(run1("avgpool2d", [x], y_want.shape, np.float32, **a), y_want, REDUCTION_TOL)
        close(run1("avgpool2d_bwd", [gy], shape, np.float32, **a), gx_want)


@pytest.mark.parametrize("shape,size", [((2, 5, 7, 3), (3, 2)), ((2, 3, 2, 16), (4, 3)),
                                        ((4, 60, 56, 5), (6, 7)), ((2, 40, 36, 32), (7, 7))],
                         ids=str)
def test_adaptive_avgpool_matches_torch(shape, size, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    y_want, gy, gx_want = _torch_pool_and_grad(lambda t: F.adaptive_avg_pool2d(t, size), x,
                                               rng)
    close(run1("adaptive_avgpool2d", [x], y_want.shape, np.float32), y_want, REDUCTION_TOL)
    close(run1("adaptive_avgpool2d_bwd", [gy], shape, np.float32), gx_want)


@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate"])
@pytest.mark.parametrize("shape,sides", [((2, 3, 4, 2), (2, 1, 0, 3)),
                                         ((1, 2, 2, 5), (1, 1, 1, 1)),
                                         ((4, 40, 30, 20), (3, 0, 2, 5))], ids=str)
def test_pad_matches_torch(shape, sides, mode, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    top, bottom, left, right = sides
    value = {"value": -1.5} if mode == "constant" else {}
    a = {"pad": sides, "mode": mode, "value": value.get("value", 0.0)}
    y_want, gy, gx_want = _torch_pool_and_grad(
        lambda t: F.pad(t, (left, right, top, bottom), mode=mode, **value), x, rng)
    np.testing.assert_array_equal(run1("pad2d", [x], y_want.shape, np.float32, **a), y_want)
    close(run1("pad2d_bwd", [gy], shape, np.float32, pad=sides, mode=mode), gx_want)


def test_pool_and_pad_kernels_refuse_operands_that_do_not_fit():
    x = np.zeros((1, 5, 5, 2), np.float32)
    a = pool_attrs((2, 2), (2, 2), (0,) * 4, ceil=False)
    with pytest.raises(ValueError, match="gives 2x2, not 3x3"):
        run1("avgpool2d", [x], (1, 3, 3, 2), np.float32, **a)
    run1("avgpool2d", [x], (1, 3, 3, 2), np.float32, **{**a, "ceil": True})   # ceil: 3x3
    with pytest.raises(ValueError, match="must be smaller than the map's 5x5"):
        run1("pad2d", [x], (1, 5, 10, 2), np.float32, pad=(0, 0, 5, 0), mode="reflect")
    with pytest.raises(ValueError, match="padded by"):
        run1("pad2d", [x], (1, 6, 5, 2), np.float32, pad=(1, 1, 0, 0), mode="constant")


def test_global_pool_gradients(rng):
    x = rng.permutation(24).reshape(2, 3, 2, 2) / 24.0
    am = run("global_maxpool", [x], [((2, 2), np.float64), ((2, 2), np.int32)])[1]
    jacobian_check(lambda x: run1("global_avgpool", [x], (2, 2), np.float64),
                   lambda g: run1("global_avgpool_bwd", [g], x.shape, np.float64), x)
    jacobian_check(lambda x: run("global_maxpool", [x], [((2, 2), np.float64),
                                                        ((2, 2), np.int32)])[0],
                   lambda g: run1("global_maxpool_bwd", [g, am], x.shape, np.float64), x,
                   eps=1e-4)


# ---- batch norm

BN_SHAPES = [(8, 5), (4, 6, 5, 7), (16, 16, 16, 64)]


def bn_params(rng, c, dtype=np.float32):
    return (rng.uniform(0.5, 1.5, c).astype(dtype), rng.standard_normal(c).astype(dtype),
            rng.standard_normal(c).astype(dtype), rng.uniform(0.5, 2.0, c).astype(dtype))


def bn_train(x, w, b, rm, rv, momentum=0.9, epsilon=1e-3):
    """Returns y, mean, invstd, and the (updated in place) running buffers."""
    c, dt = x.shape[-1], x.dtype
    rm, rv = rm.copy(), rv.copy()
    return run("batchnorm_train", [x, w, b, rm, rv],
               [(x.shape, dt), ((c,), dt), ((c,), dt), rm, rv],
               momentum=momentum, epsilon=epsilon)


@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
def test_batchnorm_train(shape, rng):
    x = (rng.standard_normal(shape) * 3 + 2).astype(np.float32)
    w, b, rm, rv = bn_params(rng, shape[-1])
    y, mean, invstd, new_rm, new_rv = bn_train(x, w, b, rm, rv)
    want = ref.batchnorm_train(x, w, b, rm, rv, 0.9, 1e-3)
    for got, exp in zip((y, mean, invstd, new_rm, new_rv), want):
        close(got, exp, REDUCTION_TOL)
    gy = rng.standard_normal(shape).astype(np.float32)
    gx, gw, gb = run("batchnorm_train_bwd", [gy, x, w, mean, invstd],
                     [(shape, np.float32), ((shape[-1],), np.float32), ((shape[-1],), np.float32)])
    for got, exp in zip((gx, gw, gb), ref.batchnorm_train_vjp(gy, x, w, 1e-3)):
        close(got, exp, REDUCTION_TOL)


@pytest.mark.parametrize("shape", [(9, 5), (5, 3, 4, 6)], ids=str)
def test_batchnorm_in_steps_over_shards_is_the_whole_batchs(shape, rng):
    """sync_batchnorm's instructions (isa.py), as the ranks run them: the batch cut in shards of
    5 and 4 samples (3 and 2), each shard's moments summed, each shard normalised with the sum,
    is the batch norm of the whole batch (the float64 reference), statistics and running
    statistics too, on every shard. Backward, with the whole batch's loss L the shards' mean
    losses weighted by their shares n_r / B: shard r's gy is (B / n_r) dL/dy; its gradient sums,
    weighted by n_r / B and added, give each shard its gx, which (times n_r / B, as the ranks'
    gradients are summed) is its part of the whole batch's dL/dx, and the weighted gweight and
    gbias add up to the whole batch's."""
    x = rng.standard_normal(shape) * 3 + 2
    gy = rng.standard_normal(shape)
    w, b, rm, rv = bn_params(rng, shape[-1], np.float64)
    c, batch = shape[-1], shape[0]
    shards = np.array_split(np.arange(batch), 2)
    moments = [run1("batchnorm_moments", [x[part]], (3, c), np.float64) for part in shards]
    total = moments[0] + moments[1]
    want = ref.batchnorm_train(x, w, b, rm, rv, 0.9, 1e-3)
    want_gx, want_gw, want_gb = ref.batchnorm_train_vjp(gy, x, w, 1e-3)
    grad_sums, gw, gb = np.zeros((2, c)), 0.0, 0.0
    statistics = []
    for part in shards:
        share = len(part) / batch
        y, mean, invstd, new_rm, new_rv = run(
            "batchnorm_normalize", [x[part], w, b, rm.copy(), rv.copy(), total],
            [(x[part].shape, np.float64), ((c,), np.float64), ((c,), np.float64), rm.copy(), rv.copy()],
            momentum=0.9, epsilon=1e-3)
        for got, exp in zip((y, mean, invstd, new_rm, new_rv), (want[0][part], *want[1:])):
            close(got, exp, 1e-12)
        sums, gw_r, gb_r = run("batchnorm_grad_sums", [gy[part] / share, x[part], mean, invstd],
                               [((2, c), np.float64), ((c,), np.float64), ((c,), np.float64)])
        grad_sums += share * sums
        gw, gb = gw + share * gw_r, gb + share * gb_r
        statistics.append((part, share, mean, invstd))
    close(gw, want_gw, 1e-12)
    close(gb, want_gb, 1e-12)
    for part, share, mean, invstd in statistics:
        gx = run1("batchnorm_grad_apply", [gy[part] / share, x[part], w, mean, invstd, grad_sums],
                  x[part].shape, np.float64)
        close(share * gx, want_gx[part], 1e-10)


@pytest.mark.parametrize("in_steps", [False, True], ids=["fused", "in_steps"])
def test_batchnorm_large_mean(rng, in_steps):
    """|mean| / std = 1e4: the variance must not cancel away, in the fused kernel (which shifts
    by the first row) nor from sync_batchnorm's unshifted float64 sums."""
    x = (rng.standard_normal((64, 3)) * 0.1 + 1000).astype(np.float32)
    w, b, rm, rv = bn_params(rng, 3)
    if in_steps:
        moments = run1("batchnorm_moments", [x], (3, 3), np.float64)
        y, mean, invstd, _, new_rv = run(
            "batchnorm_normalize", [x, w, b, rm.copy(), rv.copy(), moments],
            [(x.shape, np.float32), ((3,), np.float32), ((3,), np.float32), rm.copy(), rv.copy()],
            momentum=0.9, epsilon=1e-8)
    else:
        y, mean, invstd, _, new_rv = bn_train(x, w, b, rm, rv, epsilon=1e-8)
    want = ref.batchnorm_train(x, w, b, rm, rv, 0.9, 1e-8)
    close(invstd, want[2], REDUCTION_TOL)
    close(y, want[0], 1e-3)     # float32 x - mean itself carries 1e-3 relative error here
    close(new_rv, want[4], REDUCTION_TOL)


@pytest.mark.parametrize("shape", [(1, 6), (1, 3, 4, 5)], ids=str)
def test_batchnorm_batch_size_one(shape, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    w, b, rm, rv = bn_params(rng, shape[-1])
    outs = bn_train(x, w, b, rm, rv)
    for got, exp in zip(outs, ref.batchnorm_train(x, w, b, rm, rv, 0.9, 1e-3)):
        assert np.isfinite(got).all()
        close(got, exp, REDUCTION_TOL)
    if len(shape) == 2:   # one sample per channel: var 0, y = bias, running var decays
        close(outs[0], np.broadcast_to(b, shape))
        close(outs[4], 0.9 * rv)
    gy = rng.standard_normal(shape).astype(np.float32)
    grads = run("batchnorm_train_bwd", [gy, x, w, outs[1], outs[2]],
                [(shape, np.float32), ((shape[-1],), np.float32), ((shape[-1],), np.float32)])
    want = ref.batchnorm_train_vjp(gy, x, w, 1e-3)
    if len(shape) == 2:   # x - mean = 0: gx and gw vanish (up to float32 rounding of w / sqrt(eps))
        np.testing.assert_allclose(grads[0], 0.0, atol=1e-4)
        np.testing.assert_allclose(grads[1], 0.0, atol=1e-6)
        close(grads[2], want[2])
    else:
        for got, exp in zip(grads, want):
            close(got, exp, REDUCTION_TOL)


def test_batchnorm_train_gradients(rng):
    shape, c = (2, 2, 3, 3), 3
    x = rng.standard_normal(shape) * 2 + 1
    w, b, rm, rv = bn_params(rng, c, np.float64)

    def grads(x, w):
        y, mean, invstd, _, _ = bn_train(x, w, b, rm, rv)
        c = x.shape[-1]
        return lambda g: run("batchnorm_train_bwd", [g, x, w, mean, invstd],
                             [(x.shape, np.float64), ((c,), np.float64), ((c,), np.float64)])

    g = grads(x, w)
    jacobian_check(lambda x: bn_train(x, w, b, rm, rv)[0], lambda gy: g(gy)[0], x)
    jacobian_check(lambda w: bn_train(x, w, b, rm, rv)[0], lambda gy: g(gy)[1], w)
    jacobian_check(lambda b: bn_train(x, w, b, rm, rv)[0], lambda gy: g(gy)[2], b)
    big = rng.standard_normal((6, 7, 5, 4)) + 3
    w, b, rm, rv = bn_params(rng, 4, np.float64)
    g = grads(big, w)
    adjoint_check(lambda x: bn_train(x, w, b, rm, rv)[0], lambda gy: g(gy)[0], big, rng)


@pytest.mark.parametrize("shape", BN_SHAPES[:2], ids=str)
def test_batchnorm_infer(shape, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    w, b, rm, rv = bn_params(rng, shape[-1])
    y = run1("batchnorm_infer", [x, w, b, rm, rv], shape, np.float32, epsilon=1e-3)
    close(y, ref.batchnorm_infer(x, w, b, rm, rv, 1e-3))
    gy = rng.standard_normal(shape).astype(np.float32)
    c = shape[-1]
    grads = run("batchnorm_infer_bwd", [gy, x, w, rm, rv],
                [(shape, np.float32), ((c,), np.float32), ((c,), np.float32)], epsilon=1e-3)
    for got, exp in zip(grads, ref.batchnorm_infer_vjp(gy, x, w, rm, rv, 1e-3)):
        close(got, exp, REDUCTION_TOL)
    # float64 Jacobians in x and w (the map is affine in each)
    x64 = rng.standard_normal((2, 2, 2, 3))
    w64, b64, rm64, rv64 = bn_params(rng, 3, np.float64)

    def fwd(x, w):
        return run1("batchnorm_infer", [x, w, b64, rm64, rv64], x.shape, np.float64, epsilon=1e-3)

    def bwd(g):
        return run("batchnorm_infer_bwd", [g, x64, w64, rm64, rv64],
                   [(x64.shape, np.float64), ((3,), np.float64), ((3,), np.float64)], epsilon=1e-3)

    jacobian_check(lambda x: fwd(x, w64), lambda g: bwd(g)[0], x64)
    jacobian_check(lambda w: fwd(x64, w), lambda g: bwd(g)[1], w64)


@pytest.mark.parametrize("shape", [(8, 6), (4, 5, 6, 7)], ids=str)
def test_batchnorm_matches_torch(shape, rng):
    """Training step (output, running statistics, gradients) then inference; PyTorch's
    momentum is 1 - ours."""
    c = shape[-1]
    x = rng.standard_normal(shape).astype(np.float32) * 2 + 1
    w, b, rm, rv = bn_params(rng, c)
    gy = rng.standard_normal(shape).astype(np.float32)
    bn = (torch.nn.BatchNorm1d if len(shape) == 2 else torch.nn.BatchNorm2d)(
        c, eps=1e-3, momentum=1 - 0.9)
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(w))
        bn.bias.copy_(torch.from_numpy(b))
        bn.running_mean.copy_(torch.from_numpy(rm))
        bn.running_var.copy_(torch.from_numpy(rv))
    tx = (torch.from_numpy(x) if len(shape) == 2 else nchw(x)).requires_grad_()
    ty = bn.train()(tx)
    ty.backward(torch.from_numpy(gy) if len(shape) == 2 else nchw(gy))
    back = (lambda t: t.detach().numpy()) if len(shape) == 2 else nhwc
    y, mean, invstd, new_rm, new_rv = bn_train(x, w, b, rm, rv)
    close(y, back(ty), REDUCTION_TOL)
    close(new_rm, bn.running_mean.numpy(), REDUCTION_TOL)
    close(new_rv, bn.running_var.numpy(), REDUCTION_TOL)
    gx, gw, gb = run("batchnorm_train_bwd", [gy, x, w, mean, invstd],
                     [(shape, np.float32), ((c,), np.float32), ((c,), np.float32)])
    close(gx, back(tx.grad), REDUCTION_TOL)
    close(gw, bn.weight.grad.numpy(), REDUCTION_TOL)
    close(gb, bn.bias.grad.numpy(), REDUCTION_TOL)
    with torch.no_grad():
        ty = bn.eval()(tx)
    close(run1("batchnorm_infer", [x, w, b, new_rm, new_rv], shape, np.float32, epsilon=1e-3),
          back(ty), REDUCTION_TOL)


# ---- local response norm

LRN_CASES = [dict(size=5, alpha=1e-2, beta=0.75, k=2.0), dict(size=4, alpha=0.5, beta=0.6, k=1.0),
             dict(size=1, alpha=0.3, beta=1.0, k=1.5)]


@pytest.mark.parametrize("attrs", LRN_CASES, ids=lambda a: f"size{a['size']}-beta{a['beta']}")
def test_lrn(attrs, rng):
    for shape in [(2, 5, 4, 11), (2, 33, 33, 32)]:
        x = (rng.standard_normal(shape) * 3).astype(np.float32)
        y = run1("lrn", [x], shape, np.float32, **attrs)
        close(y, ref.lrn(x, **attrs))
        gy = rng.standard_normal(shape).astype(np.float32)
        gx = run1("lrn_bwd", [gy, x], shape, np.float32, **attrs)
        close(gx, ref.lrn_vjp(gy, x, **attrs), REDUCTION_TOL)
    tx = nchw(x).requires_grad_()
    ty = torch.nn.LocalResponseNorm(attrs["size"], attrs["alpha"], attrs["beta"], attrs["k"])(tx)
    ty.backward(nchw(gy))
    close(y, nhwc(ty))
    close(gx, nhwc(tx.grad), REDUCTION_TOL)
    x64 = rng.standard_normal((1, 2, 2, 6)) * 3

    def f(x):
        return run1("lrn", [x], x.shape, np.float64, **attrs)

    jacobian_check(f, lambda g: run1("lrn_bwd", [g, x64], x64.shape, np.float64, **attrs), x64)
    big = rng.standard_normal((3, 6, 5, 13)) * 3
    adjoint_check(f, lambda g: run1("lrn_bwd", [g, big], big.shape, np.float64, **attrs), big, rng)


# ---- losses

def scalar_loss(name, ins, dtype, with_probs=True):
    shape = ins[0].shape
    outs = [((), dtype)] + ([(shape, dtype)] if with_probs else [])
    return run(name, ins, outs)


def test_softmax_xent(rng):
    for n, k in [(7, 10), (16, 512)]:
        z = (rng.standard_normal((n, k)) * 3).astype(np.float32)
        labels = rng.integers(0, k, n).astype(np.int32)
        loss, probs = scalar_loss("softmax_xent", [z, labels], np.float32)
        assert loss.shape == ()
        want_loss, want_probs = ref.softmax_xent(z, labels)
        close(loss, want_loss, REDUCTION_TOL)
        close(probs, want_probs)
        close(loss, F.cross_entropy(torch.from_numpy(z), torch.from_numpy(labels).long()).numpy(),
              REDUCTION_TOL)
        g = run1("softmax_xent_bwd", [probs, labels], (n, k), np.float32)
        close(g, ref.softmax_xent_grad(z, labels))
        tz = torch.from_numpy(z).requires_grad_()
        F.cross_entropy(tz, torch.from_numpy(labels).long()).backward()
        close(g, tz.grad.numpy())


def test_softmax_xent_dense(rng):
    n, k = 9, 6
    z = (rng.standard_normal((n, k)) * 3).astype(np.float32)
    t = rng.dirichlet(np.ones(k), n).astype(np.float32)
    t[0] *= 2.0                                   # a row that does not sum to 1
    loss, probs = scalar_loss("softmax_xent_dense", [z, t], np.float32)
    want_loss, want_probs = ref.softmax_xent_dense(z, t)
    close(loss, want_loss, REDUCTION_TOL)
    close(probs, want_probs)
    close(loss, F.cross_entropy(torch.from_numpy(z), torch.from_numpy(t)).numpy(), REDUCTION_TOL)
    g = run1("softmax_xent_dense_bwd", [probs, t], (n, k), np.float32)
    close(g, ref.softmax_xent_dense_grad(z, t))
    tz = torch.from_numpy(z).requires_grad_()
    F.cross_entropy(tz, torch.from_numpy(t)).backward()
    close(g, tz.grad.numpy())


def test_sigmoid_bce_and_mse(rng):
    for shape in [(8, 3), (4, 5, 5, 2)]:
        z = (rng.standard_normal(shape) * 4).astype(np.float32)
        t = rng.uniform(0, 1, shape).astype(np.float32)
        loss, probs = scalar_loss("sigmoid_bce", [z, t], np.float32)
        want_loss, want_probs = ref.sigmoid_bce(z, t)
        close(loss, want_loss, REDUCTION_TOL)
        close(probs, want_probs)
        close(loss, F.binary_cross_entropy_with_logits(torch.from_numpy(z),
                                                       torch.from_numpy(t)).numpy(), REDUCTION_TOL)
        g = run1("sigmoid_bce_bwd", [probs, t], shape, np.float32)
        close(g, ref.sigmoid_bce_grad(z, t))
        y = z
        (mse_loss,) = scalar_loss("mse", [y, t], np.float32, with_probs=False)
        close(mse_loss, ref.mse(y, t), REDUCTION_TOL)
        close(mse_loss, F.mse_loss(torch.from_numpy(y), torch.from_numpy(t)).numpy(),
              REDUCTION_TOL)
        close(run1("mse_bwd", [y, t], shape, np.float32), ref.mse_grad(y, t))


def test_losses_stay_finite_for_huge_logits(rng):
    z = (rng.standard_normal((6, 5)) * 1e4).astype(np.float32)
    z[0, 0] = 3e4
    labels = rng.integers(0, 5, 6).astype(np.int32)
    loss, probs = scalar_loss("softmax_xent", [z, labels], np.float32)
    assert np.isfinite(loss) and np.isfinite(probs).all()
    close(loss, ref.softmax_xent(z, labels)[0], REDUCTION_TOL)
    t = rng.dirichlet(np.ones(5), 6).astype(np.float32)
    loss, probs = scalar_loss("softmax_xent_dense", [z, t], np.float32)
    assert np.isfinite(loss)
    close(loss, ref.softmax_xent_dense(z, t)[0], REDUCTION_TOL)
    g = run1("softmax_xent_bwd", [probs, labels], z.shape, np.float32)
    assert np.isfinite(g).all()
    tb = rng.uniform(0, 1, z.shape).astype(np.float32)
    loss, probs = scalar_loss("sigmoid_bce", [z, tb], np.float32)
    assert np.isfinite(loss) and np.isfinite(probs).all()
    close(loss, ref.sigmoid_bce(z, tb)[0], REDUCTION_TOL)


def test_loss_gradients(rng):
    """Each loss's backward is the gradient of its forward (central differences, float64)."""
    n, k = 3, 4
    z = rng.standard_normal((n, k)) * 2
    labels = rng.integers(0, k, n).astype(np.int32)
    t_dense = rng.dirichlet(np.ones(k), n)
    t_bin = rng.uniform(0, 1, (n, k))
    cases = [("softmax_xent", labels), ("softmax_xent_dense", t_dense), ("sigmoid_bce", t_bin),
             ("mse", t_bin)]
    for name, target in cases:
        has_probs = name != "mse"

        def f(z):
            return scalar_loss(name, [z, target], np.float64, has_probs)[0]

        first = scalar_loss(name, [z, target], np.float64, has_probs)
        bwd_in = [first[1] if has_probs else z, target]

        def vjp(g):
            return run1(name + "_bwd", bwd_in, z.shape, np.float64) * g

        jacobian_check(f, vjp, z)


def test_bad_inputs_raise(rng):
    x = rng.standard_normal((2, 4, 4, 3)).astype(np.float32)
    with pytest.raises(ValueError):
        run("maxpool2d", [x], [((2, 3, 3, 3), np.float32), ((2, 3, 3, 3), np.int32)],
            **pool_attrs((2, 2), (2, 2), (0, 0, 0, 0)))
    with pytest.raises(ValueError):
        run("softmax_xent", [x[:, 0, 0], np.array([0, 3], np.int32)],
            [((), np.float32), ((2, 3), np.float32)])
    with pytest.raises(ValueError):
        run("relu", [x], [((2, 4, 4, 2), np.float32)])
    with pytest.raises(ValueError, match="groups do not divide"):
        run("channel_shuffle", [x], [(x.shape, np.float32)], groups=2)
    with pytest.raises(ValueError, match="batch or channels"):
        run("upsample", [x], [((2, 8, 8, 4), np.float32)], mode="nearest", scale=(2.0, 2.0),
            align_corners=False)
    with pytest.raises(ValueError, match="bilinear only"):
        run("upsample", [x], [((2, 8, 8, 3), np.float32)], mode="nearest", scale=(2.0, 2.0),
            align_corners=True)
    with pytest.raises(ValueError, match="one value per sample"):
        run("mul_samples", [x, np.ones(3, np.float32)], [(x.shape, np.float32)])


def test_fast_exp_float32_against_float64():
    """The CPU's vectorised float32 exp (activations.fast_exp) within 1 ulp of float64's exp
    over its whole normal range, inf past 88.72, 0 below -87, NaN kept; float64 is libm's."""
    from numba import njit

    from netspec.runtime.cpu.activations import fast_exp

    @njit
    def run(x):
        out = np.empty_like(x)
        for i in range(x.size):
            out[i] = fast_exp(x[i])
        return out

    x = np.concatenate([np.linspace(-87, 88.72, 1_000_001), np.random.default_rng(0).standard_normal(10_000),
                        [0.0, -0.0, 1e-30, -1e-30]]).astype(np.float32)
    exact = np.exp(x.astype(np.float64))
    relative = np.abs(run(x).astype(np.float64) - exact) / exact
    assert relative.max() < 2 ** -23       # under one float32 ulp
    edges = np.array([88.8, 1e30, np.inf, -87.5, -1e30, -np.inf, np.nan], np.float32)
    np.testing.assert_array_equal(run(edges)[:6], [np.inf] * 3 + [0.0] * 3)
    assert np.isnan(run(edges)[6])
    y = np.array([-3.0, 0.5, 700.0])
    np.testing.assert_array_equal(run(y), np.exp(y))
