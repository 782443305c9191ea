"""Normalisation and regularisation: batchnorm, layer_norm, lrn, dropout, layer_scale, drop_path."""

from __future__ import annotations

import math

import numpy as np

from .base import (Attr, Op, OpKind, Param, Purity, Traits, boolean, channels, number, physical, pos_int,
                   register, require_spatial)
from .cases import Case, ErrorCase, not_a_map
from .reference.common import channel_axis


@register
class BatchNorm(Op):
    name = "batchnorm"
    traits = Traits(init_looks_through=True)
    kind = OpKind.NORM
    doc = ("batch normalisation per channel (feature maps) or per feature (vectors, and the "
           "tokens of a sequence); "
           "Keras defaults: momentum is the moving averages' decay (PyTorch's momentum is "
           "1 - this), epsilon is added to the variance")
    attrs = (
        Attr("momentum", number(0, 1, lo_open=True, hi_open=True), 0.99,
             "decay of the moving mean and variance"),
        Attr("epsilon", number(0, lo_open=True), 0.001, "added to the variance"),
        Attr("center", boolean, True, "learn a shift (bias)"),
        Attr("scale", boolean, True, "learn a scale (weight)"),
    )

    def params(self, a, ins):
        c = channels(ins[0])
        ps = []
        if a.scale:
            ps.append(Param("weight", (c,), "ones"))
        if a.center:
            ps.append(Param("bias", (c,), "zeros"))
        ps.append(Param("running_mean", (c,), "zeros", trainable=False))
        ps.append(Param("running_var", (c,), "ones", trainable=False))
        return ps

    # Training uses the batch's statistics, except in a frozen node (trainable=false), which
    # like Keras' frozen BatchNormalization runs in inference mode (transfer learning).
    def _inputs(self, node, ctx):
        a, c = node.attrs, channels(node.shape)
        return [ctx.x(),
                ctx.param("weight") if a.scale else ctx.const(1.0, (c,)),
                ctx.param("bias") if a.center else ctx.const(0.0, (c,)),
                ctx.param("running_mean"), ctx.param("running_var")]

    def lower(self, node, ctx):
        a, c = node.attrs, channels(node.shape)
        ins = self._inputs(node, ctx)
        if ctx.training and node.trainable:
            outs = [ctx.output(), ctx.tmp("mean", (c,), batched=False),
                    ctx.tmp("invstd", (c,), batched=False), ins[3], ins[4]]
            if ctx.sync_batchnorm:      # the batch's sums, which the ranks add up, in between
                moments = ctx.tmp("moments", (3, c), "float64", batched=False)
                ctx.emit("batchnorm_moments", ins[:1], [moments])
                ctx.emit("batchnorm_normalize", [*ins, moments], outs, momentum=a.momentum,
                         epsilon=a.epsilon)
            else:
                ctx.emit("batchnorm_train", ins, outs, momentum=a.momentum, epsilon=a.epsilon)
        else:
            ctx.emit("batchnorm_infer", ins, [ctx.output()], epsilon=a.epsilon)

    def vjp(self, node, ctx, gy):
        a, c = node.attrs, channels(node.shape)
        x, w, _, mean, var = self._inputs(node, ctx)
        grads = [ctx.param_grad_output(pname) if flag
                 else ctx.tmp(f"unused_d{pname}", (c,), batched=False)
                 for pname, flag in (("weight", a.scale), ("bias", a.center))]
        statistics = [f"{node.name}:mean", f"{node.name}:invstd"]
        if not (ctx.training and node.trainable):
            gx = ctx.input_grad_output()
            ctx.emit("batchnorm_infer_bwd", [gy, x, w, mean, var], [gx, *grads], epsilon=a.epsilon)
        elif ctx.sync_batchnorm:
            sums = ctx.tmp("grad_sums", (2, c), "float64", batched=False)
            ctx.emit("batchnorm_grad_sums", [gy, x, *statistics], [sums, *grads])
            gx = None
            if ctx.needs_input_grad(0):     # else nothing goes further back: no sums to apply
                gx = ctx.input_grad_output()
                ctx.emit("batchnorm_grad_apply", [gy, x, w, *statistics, sums], [gx])
        else:
            gx = ctx.input_grad_output()
            ctx.emit("batchnorm_train_bwd", [gy, x, w, *statistics], [gx, *grads])
        return ctx.needed([gx])

    cases = (
        Case(inputs=("3@4x4",)),
        Case("center=false", ("5",)),
        Case("momentum=0.9, epsilon=1e-5, scale=false", ("2@3x3",), batch=1),
        Case(inputs=("4",), batch=1),           # one value per channel: a variance of 0
        Case("trainable=false", ("3@3x3",)),    # frozen: the running statistics, in training too
        Case(inputs=("3x4",)),                   # per feature, over the batch and the tokens
        # in steps, the batch's sums between them (isa.py's batchnorm_moments ...)
        Case("momentum=0.9", ("3@3x4",), batch=3, sync_batchnorm=True),
        Case(inputs=("3x4",), batch=1, sync_batchnorm=True),
    )
    error_cases = (ErrorCase("momentum=1", ("4",), ("bad value for 'momentum'", "(0, 1)")),)

    def reference(self, a, xs, p, run):
        from .reference import norm
        w, b, axis = p.get("weight", 1.0), p.get("bias", 0.0), channel_axis(xs[0])
        if run.training and run.trainable:
            return norm.batchnorm_train(xs[0], w, b, p["running_mean"], p["running_var"],
                                        a.momentum, a.epsilon, axis)[0]
        return norm.batchnorm_infer(xs[0], w, b, p["running_mean"], p["running_var"], a.epsilon,
                                    axis)

    def onnx(self, a, xs, p, ctx):
        c, x = channels(ctx.ins[0]), xs[0]
        sequence = len(ctx.ins[0]) == 2     # (N, T, F): ONNX's channels are axis 1
        if sequence:
            x = ctx.op("Transpose", [x], perm=[0, 2, 1])
        y = ctx.op("BatchNormalization", [
            x, p.get("weight") or ctx.weight(np.ones(c), "scale"),
            p.get("bias") or ctx.weight(np.zeros(c), "shift"),
            p["running_mean"], p["running_var"]], epsilon=a.epsilon, momentum=a.momentum)
        return ctx.op("Transpose", [y], perm=[0, 2, 1]) if sequence else y

    def torch(self, a, xs, p, run):
        if channel_axis(xs[0]) != 1:     # a sequence (N, T, F): PyTorch's channels are axis 1
            return self._torch(a, xs[0].transpose(1, 2), p, run).transpose(1, 2)
        return self._torch(a, xs[0], p, run)

    def _torch(self, a, x, p, run):
        import torch
        from torch.nn import functional as F
        mean, var = p["running_mean"], p["running_var"]
        if run.calibrate is not None:
            dims = [d for d in range(x.dim()) if d != 1]
            batch_mean, batch_var = x.mean(dim=dims), x.var(dim=dims, unbiased=False)
            c = batch_mean.shape[0]
            noise = torch.as_tensor(run.calibrate.standard_normal(c), dtype=x.dtype)
            scale = torch.as_tensor(run.calibrate.uniform(0.8, 1.25, c), dtype=x.dtype)
            mean.copy_(batch_mean + 0.1 * batch_var.sqrt() * noise)
            var.copy_(batch_var * scale + 1e-3)
        training = run.training and run.trainable
        w, b = p.get("weight"), p.get("bias")
        if training and x.numel() == x.shape[1]:
            # one value per channel (batch 1, a vector): torch refuses; netspec's batch variance
            # is then 0 (the biased one), so y = bias and the running stats move toward (x, 0)
            step = 1.0 - a.momentum
            with torch.no_grad():
                mean.mul_(1 - step).add_(step * x.detach().reshape(-1))
                var.mul_(1 - step)
            y = (x - x) * (1.0 / math.sqrt(a.epsilon))
            shape = (1, -1) + (1,) * (x.dim() - 2)
            if w is not None:
                y = y * w.view(shape)
            return y + b.view(shape) if b is not None else y
        return F.batch_norm(x, mean, var, w, b, training=training, momentum=1.0 - a.momentum,
                            eps=a.epsilon)

    def torch_param(self, a, param, rng):
        if param.name == "weight":
            return 1.0 + 0.1 * rng.standard_normal(param.shape)
        if param.name == "running_var":
            return rng.uniform(0.5, 1.5, param.shape)
        return 0.1 * rng.standard_normal(param.shape)              # bias, running_mean


@register
class LayerNorm(Op):
    name = "layer_norm"
    traits = Traits(init_looks_through=True)
    kind = OpKind.NORM
    doc = ("layer normalisation: each position normalised over its channels (the features of "
           "a token or a vector), then a learned scale and shift per channel; PyTorch's "
           "LayerNorm over the last dimension (and ConvNeXt's LayerNorm2d on feature maps)")
    attrs = (Attr("epsilon", number(0, lo_open=True), 1e-5, "added to the variance"),)

    def params(self, a, ins):
        c = channels(ins[0])
        return [Param("weight", (c,), "ones"), Param("bias", (c,), "zeros")]

    def describe(self, a):
        return f"eps={a.epsilon:g}" if a.epsilon != 1e-5 else ""

    # the mean and 1/std of each position, one value per row of the channels-last layout,
    # which the backward pass reads
    def _statistics(self, node, ctx):
        positions = physical(node.shape)[:-1]
        return ctx.tmp("mean", positions), ctx.tmp("invstd", positions)

    def lower(self, node, ctx):
        ctx.emit("layernorm", [ctx.x(), ctx.param("weight"), ctx.param("bias")],
                 [ctx.output(), *self._statistics(node, ctx)], epsilon=node.attrs.epsilon)

    def vjp(self, node, ctx, gy):
        outs = [ctx.input_grad_output(), ctx.param_grad_output("weight"),
                ctx.param_grad_output("bias")]
        ctx.emit("layernorm_bwd", [gy, ctx.x(), ctx.param("weight"), *self._statistics(node, ctx)],
                 outs)
        return ctx.needed(outs[:1])

    cases = (
        Case(inputs=("3@2x3",)),                 # ConvNeXt's LayerNorm2d: over C at each (h, w)
        Case("1e-6", ("3x4",)),                  # ViT's: over the features of each token
        Case(inputs=("5",), batch=1),
        Case("epsilon=0.5", ("1x2",)),           # one token of two features, a large epsilon
    )
    error_cases = (ErrorCase("epsilon=0", ("4",), ("bad value for 'epsilon'", "(0, inf]")),)

    def reference(self, a, xs, p, run):
        from .reference import norm
        return norm.layer_norm(xs[0], p["weight"], p["bias"], a.epsilon, channel_axis(xs[0]))

    def onnx(self, a, xs, p, ctx):
        x, nchw = xs[0], len(ctx.ins[0]) == 3
        if nchw:    # over C at each position
            x = ctx.op("Transpose", [x], perm=[0, 2, 3, 1])
        y = ctx.op("LayerNormalization", [x, p["weight"], p["bias"]], axis=-1, epsilon=a.epsilon)
        return ctx.op("Transpose", [y], perm=[0, 3, 1, 2]) if nchw else y

    def torch(self, a, xs, p, run):
        from torch.nn import functional as F
        x = xs[0]
        if x.dim() == 4:         # NCHW: over C at each position, as torchvision's LayerNorm2d
            return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), p["weight"], p["bias"],
                                a.epsilon).permute(0, 3, 1, 2)
        return F.layer_norm(x, (x.shape[-1],), p["weight"], p["bias"], a.epsilon)

    def torch_param(self, a, param, rng):
        if param.name == "weight":
            return 1.0 + 0.1 * rng.standard_normal(param.shape)
        return 0.1 * rng.standard_normal(param.shape)


@register
class LRN(Op):
    name = "lrn"
    kind = OpKind.NORM
    doc = ("local response normalisation across channels (AlexNet): "
           "x / (k + alpha / size * sum of x^2 over `size` neighbouring channels) ^ beta, "
           "as PyTorch's LocalResponseNorm and Caffe (alpha is divided by size; the AlexNet "
           "paper's and TensorFlow's alpha is not, so their alpha is this alpha / size)")
    attrs = (
        Attr("size", pos_int, 5, "number of neighbouring channels summed over"),
        Attr("alpha", number(0), 0.0001),
        Attr("beta", number(0), 0.75),
        Attr("k", number(0, lo_open=True), 2.0),
    )

    def shape(self, a, ins):
        return require_spatial(self.name, ins[0])

    def describe(self, a):
        return f"size={a.size}"

    def _attrs(self, a):
        return {"size": a.size, "alpha": a.alpha, "beta": a.beta, "k": a.k}

    def lower(self, node, ctx):
        ctx.emit("lrn", [ctx.x()], [ctx.output()], **self._attrs(node.attrs))

    def vjp(self, node, ctx, gy):
        return ctx.emit_input_grad("lrn_bwd", [gy, ctx.x()], **self._attrs(node.attrs))

    cases = (
        Case("size=3, alpha=0.5, beta=0.75, k=1.5", ("6@3x3",)),
        Case(inputs=("4@2x3",)),
        Case("size=4, alpha=0.3, beta=0.6, k=1", ("5@2x2",), batch=1),
    )
    error_cases = (not_a_map(),)

    def reference(self, a, xs, p, run):
        from .reference import norm
        return norm.lrn(xs[0], a.size, a.alpha, a.beta, a.k)

    def onnx(self, a, xs, p, ctx):
        if a.size % 2:
            return ctx.op("LRN", xs, size=a.size, alpha=a.alpha, beta=a.beta, bias=a.k)
        # ONNX's LRN centres its window (onnxruntime takes odd sizes only); PyTorch's starts
        # size // 2 channels before: the sum of squares as a fixed conv along the channels
        c, h, w = ctx.ins[0]
        x = xs[0]
        squares = ctx.reshaped(ctx.op("Mul", [x, x]), [1, c, h * w])
        padded = ctx.op("Pad", [squares, ctx.const([0, 0, a.size // 2, 0, 0, 0, (a.size - 1) // 2, 0])])
        window = ctx.op("Conv", [padded, ctx.weight(np.ones((1, 1, a.size, 1)), "window")],
                        kernel_shape=[a.size, 1])
        scaled = ctx.op("Mul", [ctx.reshaped(window, [c, h, w]), ctx.weight(a.alpha / a.size, "alpha")])
        div = ctx.op("Pow", [ctx.op("Add", [scaled, ctx.weight(a.k, "k")]), ctx.weight(a.beta, "beta")])
        return ctx.op("Div", [x, div])

    def torch(self, a, xs, p, run):
        from torch.nn import functional as F
        return F.local_response_norm(xs[0], a.size, a.alpha, a.beta, a.k)


class _RandomDrop(Op):
    """Dropout and drop_path: while training, `instruction` zeroes parts of x at random and
    keeps its draw in a mask of `_mask_shape`, which the gradient multiplies in by
    `grad_instruction`; identity at inference or at rate 0."""
    traits = Traits(purity=Purity.RANDOM, elementwise=True, init_looks_through=True,
                    identity_at_inference=True)
    kind = OpKind.REGULARIZE
    instruction = grad_instruction = ""
    error_cases = (ErrorCase("1", ("4",), ("bad value for 'rate'", "[0, 1)")),)

    def _mask_shape(self, ctx, y) -> tuple[int, ...]:
        raise NotImplementedError

    def describe(self, a):
        return f"p={a.rate:g}"

    def lower(self, node, ctx):
        if not ctx.training or node.attrs.rate == 0:
            ctx.alias(ctx.x())
            return
        y = ctx.output()
        mask = ctx.tmp("mask", self._mask_shape(ctx, y))
        ctx.emit(self.instruction, [ctx.x()], [y, mask], rate=node.attrs.rate)

    def vjp(self, node, ctx, gy):
        if not ctx.needs_input_grad():
            return [None]
        if node.attrs.rate == 0:
            return [gy]
        gx = ctx.input_grad()
        ctx.emit(self.grad_instruction, [gy, f"{node.name}:mask"], [gx])
        return [gx]


@register
class Dropout(_RandomDrop):
    name = "dropout"
    instruction, grad_instruction = "dropout", "mul"
    doc = ("while training, zero each element with probability rate and scale the rest "
           "by 1 / (1 - rate); identity at inference")
    attrs = (Attr("rate", number(0, 1, hi_open=True), 0.5, "probability of dropping an element"),)

    def _mask_shape(self, ctx, y):
        return ctx.shape_of(y)

    cases = (Case("0.3", ("3@3x3",)), Case("0", ("4",)), Case("0.5", ("6",), batch=1))

    def reference(self, a, xs, p, run):
        if run.training and a.rate:     # the run's own draw, given as the mask
            return xs[0] * run.mask
        return xs[0]

    def onnx(self, a, xs, p, ctx):
        return xs[0]       # the inference graph's: the identity

    def torch(self, a, xs, p, run):
        from torch.nn import functional as F
        if not run.training or a.rate == 0:
            return xs[0]
        if run.mask is not None:
            return xs[0] * run.mask
        return F.dropout(xs[0], a.rate, training=True)


@register
class LayerScale(Op):
    name = "layer_scale"
    traits = Traits(elementwise=True)
    kind = OpKind.NORM
    doc = ("a learned scale per channel (feature maps) or per feature (vectors, tokens), starting at "
           "`init`: ConvNeXt's layer scale, gamma * x; on a map held as (C, 1, 1), as "
           "torchvision's CNBlock.layer_scale")
    attrs = (Attr("init", number(), 1e-6, "the scale's starting value (ConvNeXt's 1e-6)"),)

    def params(self, a, ins):
        c = channels(ins[0])
        shape = (c, 1, 1) if len(ins[0]) == 3 else (c,)    # a map's broadcasts over H, W
        return [Param("layer_scale", shape, f"constant:{a.init!r}")]

    def describe(self, a):
        return f"init={a.init:g}"

    @staticmethod
    def _vector(ctx, tensor: str, suffix: str, kind: str) -> str:
        """`tensor` (the scale or its gradient) as the (C,) vector channel_scale reads: a
        map's (C, 1, 1) parameter is viewed as its C values."""
        shape = ctx.shape_of(tensor)
        if len(shape) == 1:
            return tensor
        view = ctx.tmp(suffix, shape[:1], batched=False, kind=kind)
        ctx.low.alias(view, tensor)
        return view

    def lower(self, node, ctx):
        scale = self._vector(ctx, ctx.param("layer_scale"), "scale", "act")
        ctx.emit("channel_scale", [ctx.x(), scale], [ctx.output()])

    def vjp(self, node, ctx, gy):
        gx = ctx.input_grad_output()
        scale = self._vector(ctx, ctx.param("layer_scale"), "scale", "act")
        gscale = self._vector(ctx, ctx.param_grad_output("layer_scale"), "dscale", "grad")
        ctx.emit("channel_scale_bwd", [gy, ctx.x(), scale], [gx, gscale])
        return ctx.needed([gx])

    cases = (Case(inputs=("3@2x3",)), Case("0.5", ("4",), batch=1), Case("0.5", ("3x4",)))
    error_cases = (ErrorCase("init=true", ("4",), ("bad value for 'init'", "expected a number")),)

    def reference(self, a, xs, p, run):
        x = np.asarray(xs[0], np.float64)
        gamma = np.asarray(p["layer_scale"], np.float64)
        return x * gamma.reshape(_along_channels(x.ndim, channel_axis(x)))

    def onnx(self, a, xs, p, ctx):
        return ctx.op("Mul", [xs[0], ctx.per_channel(p["layer_scale"], len(ctx.ins[0]) + 1)])

    def torch(self, a, xs, p, run):
        x = xs[0]
        return x * p["layer_scale"].view(_along_channels(x.dim(), channel_axis(x)))


@register
class DropPath(_RandomDrop):
    name = "drop_path"
    instruction, grad_instruction = "drop_path", "mul_samples"
    doc = ("stochastic depth (torchvision's StochasticDepth, mode='row'): while training, drop "
           "each sample's whole input with probability rate and scale the kept ones by "
           "1 / (1 - rate); identity at inference. On a residual branch, before the add")
    attrs = (Attr("rate", number(0, 1, hi_open=True), 0.5, "probability of dropping a sample"),)

    def _mask_shape(self, ctx, y):
        return ()           # one value per sample

    cases = (Case("0.3", ("2@2x2",), batch=3), Case("0", ("4",)), Case(inputs=("3",), batch=4))

    def reference(self, a, xs, p, run):
        x = np.asarray(xs[0], np.float64)
        if run.training and a.rate:     # the run's own draw, given as the mask
            return x * np.asarray(run.mask, np.float64).reshape(-1, *(1,) * (x.ndim - 1))
        return x

    def onnx(self, a, xs, p, ctx):
        return xs[0]       # the inference graph's: the identity

    def torch(self, a, xs, p, run):
        import torch
        x = xs[0]
        if not run.training or a.rate == 0:
            return x
        shape = (-1, *(1,) * (x.dim() - 1))
        if run.mask is not None:
            return x * run.mask.view(shape)
        # torchvision.ops.stochastic_depth(x, rate, "row")
        keep = 1.0 - a.rate
        return x * torch.empty(x.shape[0], dtype=x.dtype).bernoulli_(keep).div_(keep).view(shape)


def _along_channels(ndim: int, axis: int) -> tuple[int, ...]:
    """The shape that lays a per-channel vector along `axis` of an ndim batch."""
    return tuple(-1 if k == axis else 1 for k in range(ndim))
