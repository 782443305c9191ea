"""Formulas every target computes, written once as plain Python over scalars and array
elements: the CPU target compiles them with numba.njit, the CUDA target with
numba.cuda.jit(device=True, inline=True), so the two compute the same thing in the same order.

Each works on one row (or one element) of a (rows, C) view, the channel last (attention's on
the ISA's (N, T, 3E) and (N, H, T, T) arrays); the targets' kernels choose which rows a call
or a thread takes. The activations of `activation_scalars` work on one element, with
constants of one dtype (so float32 arithmetic stays float32).
"""

from __future__ import annotations

import functools
import math

import numpy as np


def softmax_row(x, y, lse, r):
    """y[r] = softmax(x[r]) and lse[r] = log(sum(exp(x[r]))), stably: the sum in float64,
    its inverse rounded to y's dtype before it scales the row."""
    K = x.shape[1]
    m = x[r, 0]
    for k in range(1, K):
        m = max(m, x[r, k])
    s = 0.0
    for k in range(K):
        e = math.exp(x[r, k] - m)
        y[r, k] = e
        s += e
    inv = y.dtype.type(1.0 / s)
    for k in range(K):
        y[r, k] *= inv
    lse[r] = m + math.log(s)


def softmax_bwd_row(gy, y, gx, r):
    """gx[r] = y[r] * (gy[r] - sum(gy[r] * y[r])), the sum in float64 (gx may be gy)."""
    K = y.shape[1]
    d = 0.0
    for k in range(K):
        d += gy[r, k] * y[r, k]
    dd = y.dtype.type(d)
    for k in range(K):
        gx[r, k] = y[r, k] * (gy[r, k] - dd)


def log_softmax_row(x, y, r):
    """y[r] = x[r] - log(sum(exp(x[r]))), stably: (x - max) - log(sum(exp(x - max))), the sum
    and the subtraction in float64, rounded once to y's dtype (y may be x)."""
    K = x.shape[1]
    m = x[r, 0]
    for k in range(1, K):
        m = max(m, x[r, k])
    s = 0.0
    for k in range(K):
        s += math.exp(x[r, k] - m)
    log_s = math.log(s)
    for k in range(K):
        y[r, k] = np.float64(x[r, k] - m) - log_s


def log_softmax_bwd_row(gy, y, gx, r):
    """gx[r] = gy[r] - exp(y[r]) * sum(gy[r]) (exp(y) is the softmax), the sum in float64,
    rounded to y's dtype before it scales the row (gx may be gy)."""
    K = y.shape[1]
    s = 0.0
    for k in range(K):
        s += gy[r, k]
    ss = y.dtype.type(s)
    for k in range(K):
        gx[r, k] = gy[r, k] - math.exp(y[r, k]) * ss


# the pointwise activations written once for both targets (cpu/activations.py makes them
# numba overloads, cuda/elementwise.py device functions); the others are each target's own
SQRT_HALF = 0.70710678118654752440           # 1 / sqrt(2)
INV_SQRT_2PI = 0.39894228040143267794        # 1 / sqrt(2 pi), the normal density at 0
SQRT_2_OVER_PI = 0.79788456080286535588      # sqrt(2 / pi), gelu's tanh form
GELU_CUBIC = 0.044715


@functools.lru_cache(maxsize=None)
def activation_scalars(dtype, exp=math.exp) -> dict:
    """{activation: (act(v, alpha), g * act'(x) from u)} with constants of `dtype`, where u is
    what the ISA's backward reads (isa.Activation.grad_reads: x for each of these). The
    formulas and their order are PyTorch's (its CPU kernels), gradients at the kinks too.
    `exp`: the target's exponential (the CPU's vectorises, cpu/activations.py fast_exp)."""
    t = np.dtype(dtype).type
    zero, half, one, three, six = t(0), t(0.5), t(1), t(3), t(6)
    sixth = t(1 / 6)
    sqrt_half, inv_sqrt_2pi = t(SQRT_HALF), t(INV_SQRT_2PI)
    sqrt_2_over_pi, cubic, cubic3 = t(SQRT_2_OVER_PI), t(GELU_CUBIC), t(3 * GELU_CUBIC)

    def silu(v, alpha):
        return v / (one + exp(-v))

    def silu_grad(g, x, alpha):
        s = one / (one + exp(-x))
        return g * s * (one + x * (one - s))

    def hardswish(v, alpha):
        return v * min(max(v + three, zero), six) / six

    def hardswish_grad(g, x, alpha):     # PyTorch's: x/3 + 1/2 strictly inside (-3, 3)
        if x <= -three:
            return zero
        return g * (x / three + half) if x < three else g

    def hardsigmoid(v, alpha):
        return min(max(v + three, zero), six) / six if v == v else v    # a NaN stays a NaN

    def hardsigmoid_grad(g, x, alpha):   # 0 at the kinks, as PyTorch's
        return g * sixth if (x > -three and x < three) else zero

    def gelu(v, alpha):
        return v * half * (one + math.erf(v * sqrt_half))

    def gelu_grad(g, x, alpha):
        cdf = half * (one + math.erf(x * sqrt_half))
        pdf = inv_sqrt_2pi * exp(x * x * -half)
        return g * (cdf + x * pdf)

    def gelu_tanh(v, alpha):
        inner = sqrt_2_over_pi * (v + cubic * v * v * v)
        return half * v * (one + math.tanh(inner))

    def gelu_tanh_grad(g, x, alpha):
        x_sq = x * x
        th = math.tanh(sqrt_2_over_pi * (x + cubic * x_sq * x))
        left_derivative = half * (one + th)
        right_derivative = half * x * (one - th * th)
        inner_derivative = sqrt_2_over_pi * (one + cubic3 * x_sq)
        return g * (left_derivative + right_derivative * inner_derivative)

    table = locals()
    return {name: (f, table[name + "_grad"]) for name, f in table.items() if name + "_grad" in table}


def lrn_denominator(x, r, c, size, alpha_n, k):
    """k + alpha / size * the sum of x[r]^2 over channels c - size//2 ... c + (size-1)//2,
    in float64 (alpha_n = alpha / size)."""
    C = x.shape[1]
    s = 0.0
    for j in range(max(c - size // 2, 0), min(c + (size - 1) // 2 + 1, C)):
        v = np.float64(x[r, j])
        s += v * v
    return k + alpha_n * s


def pow_neg(d, beta):
    """d ** -beta; AlexNet's beta = 0.75 by two square roots instead of a pow."""
    return 1.0 / math.sqrt(d * math.sqrt(d)) if beta == 0.75 else d ** -beta


def layernorm_row(x, w, b, y, mean, invstd, r, eps):
    """Row r of (rows, C) arrays normalised over its C values: the mean, then the variance
    about it (two passes, in float64); y[r] = (x[r] - mean) * invstd * w + b, and the row's
    mean and invstd = 1 / sqrt(var + eps) in mean[r], invstd[r] (y may be x)."""
    C = x.shape[1]
    s = 0.0
    for c in range(C):
        s += np.float64(x[r, c])
    m = s / C
    v = 0.0
    for c in range(C):
        d = np.float64(x[r, c]) - m
        v += d * d
    inv = 1.0 / math.sqrt(v / C + eps)
    for c in range(C):
        y[r, c] = (np.float64(x[r, c]) - m) * inv * np.float64(w[c]) + np.float64(b[c])
    mean[r] = m
    invstd[r] = inv


def layernorm_bwd_row(gy, x, w, mean, invstd, gx, r):
    """gx[r] = invstd (g - mean(g) - xhat mean(g xhat)) over row r, g = gy[r] * w, xhat =
    (x[r] - mean[r]) * invstd[r]; the means in float64 (gx may be gy or x)."""
    C = x.shape[1]
    m = np.float64(mean[r])
    inv = np.float64(invstd[r])
    s1 = 0.0
    s2 = 0.0
    for c in range(C):
        g = np.float64(gy[r, c]) * np.float64(w[c])
        s1 += g
        s2 += g * (np.float64(x[r, c]) - m) * inv
    s1 /= C
    s2 /= C
    for c in range(C):
        g = np.float64(gy[r, c]) * np.float64(w[c])
        gx[r, c] = inv * (g - s1 - (np.float64(x[r, c]) - m) * inv * s2)


# Attention on qkv (N, T, 3E), q, k and v side by side; head h of H reads features
# h*d ... h*d + d - 1 of each (d = E / H); weights (N, H, T, T), y (N, T, E).

def attention_row(qkv, weights, n, h, i, scale):
    """weights[n, h, i] = softmax over the keys j of q_i . k_j * scale (head h): each product
    in float64, the softmax as softmax_row's (the exponentials' sum in float64, its inverse
    rounded to the weights' dtype before it scales the row)."""
    T = qkv.shape[1]
    E = qkv.shape[2] // 3
    d = E // weights.shape[1]
    q0 = h * d
    k0 = E + h * d
    m = 0.0
    for j in range(T):
        s = 0.0
        for c in range(d):
            s += np.float64(qkv[n, i, q0 + c]) * np.float64(qkv[n, j, k0 + c])
        s *= scale
        weights[n, h, i, j] = s
        if j == 0 or s > m:
            m = s
    total = 0.0
    for j in range(T):
        e = math.exp(np.float64(weights[n, h, i, j]) - m)
        weights[n, h, i, j] = e
        total += e
    inv = weights.dtype.type(1.0 / total)
    for j in range(T):
        weights[n, h, i, j] *= inv


def attention_value(qkv, weights, y, n, i, e):
    """y[n, i, e] = sum over the tokens j of weights[n, h, i, j] * v_j[e], h the head of
    feature e, in float64."""
    T = qkv.shape[1]
    E = y.shape[2]
    h = e // (E // weights.shape[1])
    s = 0.0
    for j in range(T):
        s += np.float64(weights[n, h, i, j]) * np.float64(qkv[n, j, 2 * E + e])
    y[n, i, e] = s


def attention_scores_grad_row(gy, qkv, weights, y, gscores, n, h, i):
    """gscores[n, h, i, j] = weights[n, h, i, j] * (gy_i . v_j - gy_i . y_i) over head h's
    features: the gradient of the scores through the softmax (sum_j weights gy_i . v_j is
    gy_i . y_i), the dot products in float64."""
    T = qkv.shape[1]
    E = y.shape[2]
    d = E // weights.shape[1]
    f0 = h * d
    dy = 0.0
    for c in range(d):
        dy += np.float64(gy[n, i, f0 + c]) * np.float64(y[n, i, f0 + c])
    for j in range(T):
        s = 0.0
        for c in range(d):
            s += np.float64(gy[n, i, f0 + c]) * np.float64(qkv[n, j, 2 * E + f0 + c])
        gscores[n, h, i, j] = np.float64(weights[n, h, i, j]) * (s - dy)


def attention_qkv_grad(gy, qkv, weights, gscores, gqkv, n, t, f, scale):
    """gqkv[n, t, f], summed over the tokens in float64: f < E, the query's: scale * sum_j
    gscores[t, j] k_j; then the key's: scale * sum_i gscores[i, t] q_i; then the value's:
    sum_i weights[i, t] gy_i (of head h, the head of feature f % E)."""
    T = qkv.shape[1]
    E = gy.shape[2]
    e = f % E
    h = e // (E // weights.shape[1])
    s = 0.0
    if f < E:
        for j in range(T):
            s += np.float64(gscores[n, h, t, j]) * np.float64(qkv[n, j, E + e])
        s *= scale
    elif f < 2 * E:
        for i in range(T):
            s += np.float64(gscores[n, h, i, t]) * np.float64(qkv[n, i, e])
        s *= scale
    else:
        for i in range(T):
            s += np.float64(weights[n, h, i, t]) * np.float64(gy[n, i, e])
    gqkv[n, t, f] = s


def resampled(x, n, p, q, c, rows, cols):
    """The sum over the taps a of row p and b of column q (runtime/resample.py: rows and cols
    are (at, index, weight) tables) of weight_a * weight_b * x[n, index_a, index_b, c], in
    float64: an upsample's output element, or, over the transposed tables, its gradient's. (The
    CPU target computes the same sums in this order a whole pixel at a time, its channel loops
    innermost: runtime/cpu/resample.py.)"""
    row_at, row_index, row_weight = rows
    col_at, col_index, col_weight = cols
    s = 0.0
    for a in range(row_at[p], row_at[p + 1]):
        i = row_index[a]
        t = 0.0
        for b in range(col_at[q], col_at[q + 1]):
            t += np.float64(col_weight[b]) * np.float64(x[n, i, col_index[b], c])
        s += np.float64(row_weight[a]) * t
    return s
