"""The kernel instruction set: the contract between the compiler and every target.

The compiler lowers a graph to a Program of instructions, each naming a kernel
from this table with its input and output tensors and plain attributes (ints,
floats, bools, tuples of them). A target (a folder under runtime/, today `cpu/`)
implements every kernel here (tests/test_targets.py checks it); nothing in a
target knows the spec language.

Layout rules, shared by all targets:
- feature maps are channels-last, `(N, H, W, C)`, C-contiguous; sequences of
  tokens are `(N, T, F)`; vectors are `(N, F)`; a tensor's first axis is the
  batch unless the table says otherwise;
- conv weights are `(O, KH, KW, I/groups)` ("OHWI"); the user-facing layout is
  PyTorch's OIHW, and the Program records the permutation between the two;
- padding is explicit and may be asymmetric: `pad = (top, bottom, left, right)`;
- every kernel writes *every* element of each output (outputs are never
  accumulated into), except that the `state` outputs below are updated in place
  (the same buffer is an input and an output);
- an output may also be the very buffer of an input where the target's
  capabilities say so (`Target.capabilities.inplace`, which the memory planner
  reads: elementwise kernels); the kernel must then compute what it computes
  with separate buffers.

Each entry: inputs (a trailing `?` marks an optional input, passed as None),
outputs, attributes, and what it computes. The spatial size of an output that
is not determined by the attributes (e.g. conv2d_bwd_data's dx) is read from
the output buffer's shape.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KernelSpec:
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: tuple[str, ...] = ()
    doc: str = ""
    state: tuple[str, ...] = ()   # outputs that alias an input of the same name (in-place state)
    # the first output holds sums over the batch's rows that a data-parallel run adds up over its
    # ranks, in place, before any instruction reads it: "data" as they are, "gradient" weighted
    # as the ranks' gradients are (by the rank's share of the batch: each rank's backward pass
    # starts from the mean loss of its own shard). "" for the others
    rank_sum: str = ""

    @property
    def required_inputs(self) -> int:
        return sum(not i.endswith("?") and not i.startswith("*") for i in self.inputs)


_CONV = ("stride", "pad", "dilation", "groups")
_POOL = ("kernel", "stride", "pad")

KERNELS: dict[str, KernelSpec] = {}


def _k(name, inputs, outputs, attrs=(), doc="", state=(), rank_sum=""):
    KERNELS[name] = KernelSpec(name, tuple(inputs), tuple(outputs), tuple(attrs), doc, tuple(state),
                               rank_sum)


# ---- convolution (groups = 1, grouped, depthwise: groups == I; the kernel picks its method)
_k("conv2d", ["x", "w", "b?"], ["y"], _CONV,
   "y[n,oh,ow,o] = b[o] + sum_{kh,kw,i} x[n, oh*sh - pt + kh*dh, ow*sw - pl + kw*dw, g*Ig + i] "
   "* w[o,kh,kw,i], g = o // (O/groups); x is zero outside the image")
_k("conv2d_bwd_data", ["gy", "w", "b?"], ["gx"], _CONV,
   "the adjoint of conv2d in x: gx = d<gy, conv2d(x)>/dx; gx's H, W come from its buffer. "
   "With b (length I), b is added to every pixel: this is also conv_transpose's forward")
_k("conv2d_bwd_weight", ["x", "gy"], ["gw"], _CONV,
   "gw[o,kh,kw,i] = sum_{n,oh,ow} gy[n,oh,ow,o] * x[n, oh*sh - pt + kh*dh, ...]; "
   "KH, KW come from gw's buffer")
_k("bias_grad", ["gy"], ["gb"], (),
   "gb[c] = sum of gy over every axis but the last")

# ---- dense
# x may also be (N, T, F), y (N, T, U): a sequence, each token a row (PyTorch's Linear); or
# (N, H, W, C), y (N, H, W, U): a channels-last map, each position a row (a 1x1 conv)
_k("dense", ["x", "w", "b?"], ["y"], (), "y = x @ w.T + b; x (N, F), w (U, F), y (N, U)")
_k("dense_bwd_data", ["gy", "w"], ["gx"], (), "gx = gy @ w")
_k("dense_bwd_weight", ["x", "gy"], ["gw"], (), "gw = gy.T @ x, summed over every row")

# ---- pooling (padding never wins a max; see avgpool2d for the divisor) and padding. Window o
# of an axis starts at o*s - pad_before and reads k taps d apart; the output's size is
# floor((size + pads - d*(k-1) - 1) / s) + 1, or with ceil rounded up as long as the last window
# starts inside the input or the padding before it (PyTorch's ceil_mode): runtime/windows.py
# computes the windows of every instruction below for every target.
_k("maxpool2d", ["x"], ["y", "argmax"], (*_POOL, "dilation", "ceil"),
   "y = max over each window; argmax (int32, shape of y) = h*W + w of the first maximum "
   "in row-major window order")
_k("maxpool2d_bwd", ["gy", "argmax"], ["gx"], (*_POOL, "dilation", "ceil"),
   "gx[n, argmax // W, argmax % W, c] += gy[n,oh,ow,c], zero elsewhere")
_k("avgpool2d", ["x"], ["y"], (*_POOL, "ceil", "include_pad"),
   "y = sum over the window / divisor; the divisor along each axis: if include_pad, the "
   "window's positions inside the padded input (a ceil window's part past the padding does "
   "not count), else those inside the image")
_k("avgpool2d_bwd", ["gy"], ["gx"], (*_POOL, "ceil", "include_pad"), "adjoint of avgpool2d")
_k("adaptive_avgpool2d", ["x"], ["y"], (),
   "y[n,i,j,c] = mean of x[n, h, w, c] over h in [floor(i*H/OH), ceil((i+1)*H/OH)), w likewise "
   "(PyTorch's AdaptiveAvgPool2d); OH, OW from y's buffer")
_k("adaptive_avgpool2d_bwd", ["gy"], ["gx"], (), "adjoint of adaptive_avgpool2d")
_k("global_avgpool", ["x"], ["y"], (), "y[n,c] = mean over h, w of x[n,h,w,c]")
_k("global_avgpool_bwd", ["gy"], ["gx"], (), "gx[n,h,w,c] = gy[n,c] / (H*W)")
_k("global_maxpool", ["x"], ["y", "argmax"], (),
   "y[n,c] = max over h, w; argmax (int32, (N, C)) = h*W + w of the first maximum")
_k("global_maxpool_bwd", ["gy", "argmax"], ["gx"], (), "gx gets gy at argmax, zero elsewhere")

# ---- normalisation (the channel is the last axis; x may be (N, C) or (N, H, W, C))
_k("batchnorm_train", ["x", "weight", "bias", "running_mean", "running_var"],
   ["y", "mean", "invstd", "running_mean", "running_var"], ("momentum", "epsilon"),
   "mean, biased var over all axes but the last; invstd = 1/sqrt(var + eps); "
   "y = (x - mean) * invstd * weight + bias; running = momentum * running + (1 - momentum) * "
   "batch, with the unbiased variance (count/(count-1); the biased one when count == 1). "
   "mean and invstd have shape (C,), no batch axis",
   state=("running_mean", "running_var"))
_k("batchnorm_train_bwd", ["gy", "x", "weight", "mean", "invstd"], ["gx", "gweight", "gbias"], (),
   "gradients of batchnorm_train's y through the batch statistics")
# batchnorm_train and its gradient in two steps each, the batch's sums between them: a data-parallel
# run with synchronised batch norm (sync_batchnorm) adds those up over its ranks (rank_sum), so
# every rank normalises with the global batch's statistics and differentiates through them
_k("batchnorm_moments", ["x"], ["moments"], (),
   "moments (float64, (3, C)) = [sum of x, sum of x^2, number of rows] over all axes but the last",
   rank_sum="data")
_k("batchnorm_normalize", ["x", "weight", "bias", "running_mean", "running_var", "moments"],
   ["y", "mean", "invstd", "running_mean", "running_var"], ("momentum", "epsilon"),
   "batchnorm_train with the mean and biased variance of `moments` (batchnorm_moments', perhaps "
   "summed over ranks: their count of rows, not x's)", state=("running_mean", "running_var"))
_k("batchnorm_grad_sums", ["gy", "x", "mean", "invstd"], ["sums", "gweight", "gbias"], (),
   "sums (float64, (2, C)) = [sum of gy, sum of gy * (x - mean)] over all axes but the last; "
   "gweight = sums[1] * invstd, gbias = sums[0] (x's own rows)", rank_sum="gradient")
_k("batchnorm_grad_apply", ["gy", "x", "weight", "mean", "invstd", "sums"], ["gx"], (),
   "batchnorm_train_bwd's gx with the sums of batchnorm_grad_sums (perhaps summed over ranks): "
   "gx = weight invstd (gy - sums[0] / M - (x - mean) invstd^2 sums[1] / M), M = x's rows")
_k("batchnorm_infer", ["x", "weight", "bias", "running_mean", "running_var"], ["y"], ("epsilon",),
   "y = (x - running_mean) / sqrt(running_var + eps) * weight + bias")
_k("batchnorm_infer_bwd", ["gy", "x", "weight", "running_mean", "running_var"],
   ["gx", "gweight", "gbias"], ("epsilon",), "gradients of batchnorm_infer (statistics constant)")
_k("bn_fold", ["weight", "bias?", "bn_weight", "bn_bias", "running_mean", "running_var"],
   ["weight_out", "bias_out"], ("epsilon",),
   "an inference batch norm folded into the layer before it: s = bn_weight / sqrt(running_var "
   "+ eps); weight_out = weight * s along weight's first axis (output channels: OHWI conv, "
   "(units, features) dense); bias_out = (bias - running_mean) * s + bn_bias (bias None: 0). "
   "No batch axis; run once per change of the parameters (the program's prepare phase)")
_k("layernorm", ["x", "weight", "bias"], ["y", "mean", "invstd"], ("epsilon",),
   "per row (each position: every index but the last axis's): mean and biased var over the "
   "last axis, in float64; invstd = 1/sqrt(var + eps); y = (x - mean) * invstd * weight + "
   "bias. mean and invstd have x's shape without its last axis")
_k("layernorm_bwd", ["gy", "x", "weight", "mean", "invstd"], ["gx", "gweight", "gbias"], (),
   "gradients of layernorm: gx = invstd (g - mean(g) - xhat mean(g xhat)) per row, g = gy * "
   "weight, xhat = (x - mean) invstd; gweight = sum over the rows of gy xhat, gbias of gy")
_k("lrn", ["x"], ["y"], ("size", "alpha", "beta", "k"),
   "y = x / (k + alpha/size * sum_{c' in [c - size//2, c + (size-1)//2]} x[c']^2) ^ beta "
   "(PyTorch LocalResponseNorm)")
_k("lrn_bwd", ["gy", "x"], ["gx"], ("size", "alpha", "beta", "k"), "adjoint of lrn")

# ---- regularisation
_k("dropout", ["x"], ["y", "mask"], ("rate",),
   "mask = (u >= rate) / (1 - rate) with u uniform in [0, 1) from the run's random generator "
   "(same dtype as x); y = x * mask")
_k("mul", ["a", "b"], ["y"], (), "y = a * b elementwise (dropout's backward: gy * mask)")
_k("drop_path", ["x"], ["y", "mask"], ("rate",),
   "stochastic depth, a whole sample at a time: mask (N,) = (u >= rate) / (1 - rate) with one "
   "u per sample, uniform in [0, 1) from the run's random generator (x's dtype); "
   "y[n, ...] = x[n, ...] * mask[n]")
_k("mul_samples", ["x", "m"], ["y"], (),
   "y[n, ...] = x[n, ...] * m[n], m (N,) (drop_path's backward: gy * mask)")
_k("mul_channels", ["x", "g"], ["y"], (),
   "y[n, ..., c] = x[n, ..., c] * g[n, c]: a gate of one value per sample and channel, "
   "g (N, C) or (N, 1, 1, C), scaling every position of x")
_k("channel_scale", ["x", "w"], ["y"], (),
   "y[..., c] = x[..., c] * w[c], w (C,): a learned scale per channel (layer scale)")
_k("channel_scale_bwd", ["gy", "x", "w"], ["gx", "gw"], (),
   "gx[..., c] = gy[..., c] * w[c]; gw[c] = sum over every axis but the last of gy * x, "
   "accumulated in float64")
_k("mul_channels_bwd_gate", ["gy", "x"], ["gg"], (),
   "gg[n, c] = sum over the positions of gy[n, ..., c] * x[n, ..., c], accumulated in float64; "
   "gg (N, C) or (N, 1, 1, C): mul_channels' adjoint in g")

# ---- activations: forward (x) -> y; backward (gy, y) -> gx or (gy, x) -> gx. Most
# activations' derivatives are functions of their output (relu: y > 0; elu: y + alpha below
# 0; tanh: 1 - y^2 ...): their backward reads y, so the backward pass keeps y alone alive and
# the forward may overwrite x (the memory planner: x then dies at the forward). Where the
# output does not determine the derivative (silu, gelu, hardswish: not invertible; hardsigmoid:
# not at its kinks) the backward reads x instead (`grad_reads`), which keeps x alive until the
# backward, so the planner never lets their forward overwrite it in training. An activation
# with a parameter is not one of these: it is its own instruction (prelu).

@dataclass(frozen=True)
class Activation:
    """An activation of the ISA: the instructions `name` and `name_bwd`."""
    name: str
    alpha: float | None = None   # the default of its `alpha` attribute (a slope), if it has one
    pointwise: bool = True       # y[i] depends on x[i] alone (softmax: on its row, the last axis)
    grad_reads: str = "y"        # name_bwd's second input: "y", the output, or "x", the input

    def __post_init__(self):
        if self.grad_reads not in ("x", "y"):
            raise ValueError(f"{self.name}: grad_reads must be 'x' or 'y', not {self.grad_reads!r}")

    @property
    def attrs(self) -> tuple[str, ...]:
        return () if self.alpha is None else ("alpha",)


ACTIVATIONS: dict[str, Activation] = {a.name: a for a in (
    Activation("relu"), Activation("relu6"), Activation("leaky_relu", alpha=0.01),
    Activation("elu", alpha=1.0), Activation("selu"), Activation("tanh"), Activation("sigmoid"),
    # x * sigmoid(x); x * relu6(x + 3) / 6 (derivative x/3 + 1/2 strictly inside (-3, 3), 0 at
    # and below -3, 1 at and above 3: PyTorch's); relu6(x + 3) / 6 (derivative 1/6 strictly
    # inside (-3, 3), else 0: from x, since in float32 x + 3 rounds to 6 for the x just below 3);
    # x * Phi(x) (erf); gelu's tanh form
    Activation("silu", grad_reads="x"), Activation("hardswish", grad_reads="x"),
    Activation("hardsigmoid", grad_reads="x"), Activation("gelu", grad_reads="x"),
    Activation("gelu_tanh", grad_reads="x"),
    Activation("softmax", pointwise=False),
    Activation("log_softmax", pointwise=False))}    # x - log(sum(exp(x))); gx = gy - exp(y) sum(gy)
# the ones a fused group's steps may apply, and a target implements as scalar formulas
POINTWISE_ACTIVATIONS = tuple(name for name, a in ACTIVATIONS.items() if a.pointwise)

for _act in ACTIVATIONS.values():
    _k(_act.name, ["x"], ["y"], _act.attrs,
       "elementwise" if _act.pointwise else "over the last axis, numerically stable")
    _reads = f"y = {_act.name}(x)" if _act.grad_reads == "y" else "x itself"
    _k(_act.name + "_bwd", ["gy", _act.grad_reads], ["gx"], _act.attrs,
       f"adjoint of {_act.name} at x, from {_reads}")

_k("prelu", ["x", "w"], ["y"], (), "y = x if x > 0 else w[c] * x (c: the last axis)")
_k("prelu_bwd", ["gy", "x", "w"], ["gx", "gw"], (), "adjoint of prelu in x and w")

# ---- fused groups (netspec's fusion pass): one generated kernel per pattern of steps.
# `steps` is a tuple of steps applied in order to each element of x: ("add",) adds the next
# extra input (same shape as x); (act, alpha) applies one of POINTWISE_ACTIVATIONS (alpha:
# leaky_relu's and elu's slope, else 0); ("avgpool", kh, kw) or ("maxpool", kh, kw)
# pools non-overlapping windows (stride = kernel, no padding or dilation, H and W multiples
# of the window, so ceil mode changes nothing). Order: adds, at most one activation, at most
# one pool, and after the pool at most one more activation. A target generates one function
# per distinct `steps`. fused_map_bwd
# takes the activations' derivatives from their outputs: its steps' activations all have
# grad_reads "y" (fused_map may apply any, in a forward-only program).
FUSED_POOLS = ("avgpool", "maxpool")
_k("fused_map", ["x", "*extras"], ["y", "*saved"], ("steps",),
   "y = the steps applied to x (NHWC, or (N, F) without a pool); saved (when given, with a "
   "pool only): the value entering the pool, for the backward kernel")
_k("fused_map_bwd", ["gy", "a?", "y?"], ["gx", "*gbias"], ("steps",),
   "gradient of fused_map's steps with respect to x (and to each extra input, which is the "
   "same tensor: an add passes its gradient through); a: the activation's output (fused_map's "
   "y without a pool, its saved output with one), read by the activation's derivative and "
   "by maxpool (the first maximum of each window in row-major order gets the gradient); y: "
   "fused_map's y, when an activation follows the pool (its derivative reads it); "
   "gbias (when given): gx summed over every axis but the last, the gradient of the bias of "
   "the layer before the steps")

# ---- sequences of tokens (N, T, F) and attention
_k("attention", ["qkv"], ["y", "weights"], ("heads",),
   "multi-head scaled dot-product self-attention: qkv (N, T, 3E) holds q, k, v side by side; "
   "head h reads features h*d ... h*d + d - 1 of each (d = E / heads); weights (N, heads, T, T) "
   "[n, h, i, j] = softmax over j of q_i . k_j / sqrt(d) (stable, the sum in float64); "
   "y (N, T, E) [n, i, h*d + c] = sum_j weights[n, h, i, j] v_j[h*d + c]")
_k("attention_bwd", ["gy", "qkv", "weights", "y"], ["gqkv", "gscores"], ("heads",),
   "adjoint of attention in qkv (y, weights: its outputs): gscores (N, heads, T, T) = "
   "weights * (gy_i . v_j - gy_i . y_i) per head, a scratch the kernel fills; gq_i = sum_j "
   "gscores[i, j] k_j / sqrt(d), gk_j = sum_i gscores[i, j] q_i / sqrt(d), gv_j = sum_i "
   "weights[i, j] gy_i, each in float64")
_k("prepend_token", ["x", "token"], ["y"], (),
   "y[n, 0] = token, y[n, 1:] = x[n]: x (N, T, F), token F values (e.g. (1, 1, F)), y (N, T+1, F)")
_k("slice_tokens", ["x"], ["y"], ("start",),
   "y[n] = x[n, start ... start + T' - 1]: y (N, T', F), or (N, F) for one token")
_k("pad_tokens", ["gy"], ["gx"], ("start",),
   "slice_tokens' adjoint: gx[n, start ... start + T' - 1] = gy[n], zero elsewhere")
_k("add_broadcast", ["x", "b"], ["y"], (),
   "y[n] = x[n] + b: b one sample's worth of values (x's shape without the batch, leading "
   "axes of length 1 allowed: (1, T, F)), the same for every n")
_k("sum_batch", ["g"], ["s"], (),
   "s = the sum over the batch (the first axis) of g, in float64; s has one sample's worth "
   "of values, leading axes of length 1 allowed (add_broadcast's adjoint in b)")

# ---- merging and moving data
_k("add", ["x0", "x1", "*xs"], ["y"], (), "y = sum of the inputs (two or more, equal shapes)")
_k("concat", ["x0", "x1", "*xs"], ["y"], (), "join along the last axis")
_k("split", ["x"], ["y0", "y1", "*ys"], (),
   "cut the last axis into the outputs' widths, in order: the split op, and concat's adjoint")
_k("zeros", [], ["y"], (), "y = 0: the gradient of a split's part that no loss reaches")
_k("channel_shuffle", ["x"], ["y"], ("groups",),
   "y[..., k * groups + g] = x[..., g * (C / groups) + k] for g < groups, k < C / groups "
   "(ShuffleNet; PyTorch's ChannelShuffle). Its adjoint is itself with C / groups groups")
_k("upsample", ["x"], ["y"], ("mode", "scale", "align_corners"),
   "y (N, OH, OW, C) from x (N, H, W, C), OH and OW from y's buffer, as PyTorch's "
   "F.interpolate: mode 'nearest' or 'bilinear' (align_corners: bilinear only); scale (h, w): "
   "the factors the spec gave, or (0, 0) where it gave the size (PyTorch's source step is then "
   "in / out, else 1 / scale). Each output element sums its taps' weighted inputs, row taps "
   "times column taps (runtime/resample.py computes them, as PyTorch does)")
_k("upsample_bwd", ["gy"], ["gx"], ("mode", "scale", "align_corners"),
   "adjoint of upsample: gx (N, H, W, C), H and W from gx's buffer; each input element gathers "
   "the outputs it feeds, weighted, summed in float64")
_k("to_flat", ["x"], ["y"], (),
   "(N, H, W, C) -> (N, C*H*W) in channel-major order (PyTorch's flatten of NCHW)")
_k("from_flat", ["x"], ["y"], (),
   "(N, C*H*W) channel-major -> (N, H, W, C); H, W, C from y's buffer (to_flat's adjoint)")
_k("pad2d", ["x"], ["y"], ("pad", "mode", "value"),
   "y = x padded by pad = (top, bottom, left, right) rows and columns; mode 'constant': the "
   "new elements are value; 'reflect': mirrored about the edge, the edge not repeated "
   "(pads smaller than the axis); 'replicate': the edge repeated")
_k("pad2d_bwd", ["gy"], ["gx"], ("pad", "mode"),
   "adjoint of pad2d: gx[i] = the sum of gy over the elements that read x[i]")

# ---- losses: outputs are 0-d scalars (shape ()), the mean over the batch. The softmax losses
# take logits (N, ..., K): every position of the leading axes is one row of K classes (a
# sample's vector, or a pixel of a segmentation map (N, H, W, K)), and the mean is over rows.
_k("softmax_xent", ["logits", "labels"], ["loss", "probs"], (),
   "labels int32 of the logits' leading axes (N, ...): loss = mean over rows r of "
   "-log softmax(logits)[r, labels[r]], computed stably with log-sum-exp; probs = "
   "softmax(logits) over the last axis")
_k("softmax_xent_bwd", ["probs", "labels"], ["glogits"], (),
   "glogits = (probs - onehot(labels)) / rows")
_k("softmax_xent_dense", ["logits", "targets"], ["loss", "probs"], (),
   "targets of the logits' shape, probabilities over the last axis: loss = mean over rows of "
   "-sum_k targets * log softmax(logits)")
_k("softmax_xent_dense_bwd", ["probs", "targets"], ["glogits"], (),
   "glogits = (probs * sum_k targets - targets) / rows")
_k("sigmoid_bce", ["logits", "targets"], ["loss", "probs"], (),
   "binary cross-entropy from logits, stable: mean over all elements of "
   "max(z,0) - z*t + log(1 + exp(-|z|)); probs = sigmoid(z)")
_k("sigmoid_bce_bwd", ["probs", "targets"], ["glogits"], (), "(probs - targets) / size")
_k("mse", ["y", "targets"], ["loss"], (), "mean over all elements of (y - t)^2")
_k("mse_bwd", ["y", "targets"], ["gy"], (), "2 (y - t) / size")

# the loss gradients that are factor * (y - t) / size (y: the first input)
DIFFERENCE_GRADIENTS = {"sigmoid_bce_bwd": 1.0, "mse_bwd": 2.0}


# ---- the conv attributes as numbers, and the shapes they imply, for every target's conv kernels

def conv_window(attrs) -> tuple[int, int, int, int, int, int, int, int, int]:
    """Stride, padding, dilation and groups of a conv's attributes, as ints:
    (sh, sw, pt, pb, pl, pr, dh, dw, groups)."""
    sh, sw = (int(v) for v in attrs["stride"])
    pt, pb, pl, pr = (int(v) for v in attrs["pad"])
    dh, dw = (int(v) for v in attrs["dilation"])
    return sh, sw, pt, pb, pl, pr, dh, dw, int(attrs["groups"])


def _conv_out(size, k, s, p0, p1, d):
    return (size + p0 + p1 - d * (k - 1) - 1) // s + 1


def check_conv(name, x_shape, w_shape, y_shape, attrs) -> None:
    """Checks the shapes of a conv (x, w, y as in the forward conv) against its attributes."""
    sh, sw, pt, pb, pl, pr, dh, dw, groups = conv_window(attrs)

    def check(cond, msg):
        if not cond:
            raise ValueError(f"{name}: {msg()}")
    check(min(sh, sw, dh, dw, groups) >= 1,
          lambda: f"stride {attrs['stride']}, dilation {attrs['dilation']} and groups {groups} "
          "must be positive")
    x_shape, w_shape, y_shape = tuple(x_shape), tuple(w_shape), tuple(y_shape)
    check(len(x_shape) == 4 and len(w_shape) == 4 and len(y_shape) == 4,
          lambda: f"expected 4-D NHWC maps and OHWI weights, got {x_shape}, {w_shape}, {y_shape}")
    N, H, W, C = x_shape
    O, KH, KW, Ig = w_shape
    check(O % groups == 0 and Ig * groups == C,
          lambda: f"input channels {C}, weight {w_shape} and groups {groups} do not agree")
    OH = _conv_out(H, KH, sh, pt, pb, dh)
    OW = _conv_out(W, KW, sw, pl, pr, dw)
    check(y_shape == (N, OH, OW, O) and OH >= 1 and OW >= 1,
          lambda: f"output {y_shape} != expected {(N, OH, OW, O)} for input {x_shape}, weight "
          f"{w_shape}, {attrs}")


def lrn_attrs(attrs) -> tuple[int, float, float, float]:
    """(size, alpha / size, beta, k) of a local response norm, with PyTorch's defaults."""
    size = int(attrs.get("size", 5))
    if size < 1:
        raise ValueError(f"lrn size must be positive, got {size}")
    return (size, float(attrs.get("alpha", 1e-4)) / size, float(attrs.get("beta", 0.75)),
            float(attrs.get("k", 2.0)))
