"""Normalisation and regularisation: batchnorm, lrn, dropout."""

from __future__ import annotations

from .base import Attr, Op, OpKind, Param, Purity, Traits, boolean, number, pos_int, register, require_spatial


@register
class BatchNorm(Op):
    name = "batchnorm"
    traits = Traits(init_looks_through=True)
    kind = OpKind.NORM
    doc = ("batch normalisation per channel (feature maps) or per feature (vectors); "
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
        c = ins[0][0]
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
        a, c = node.attrs, node.shape[0]
        return [ctx.x(),
                ctx.param("weight") if a.scale else ctx.const(1.0, (c,)),
                ctx.param("bias") if a.center else ctx.const(0.0, (c,)),
                ctx.param("running_mean"), ctx.param("running_var")]

    def lower(self, node, ctx):
        a, c = node.attrs, node.shape[0]
        ins = self._inputs(node, ctx)
        if ctx.training and node.trainable:
            stats = [ctx.tmp("mean", (c,), batched=False), ctx.tmp("invstd", (c,), batched=False)]
            ctx.emit("batchnorm_train", ins, [ctx.output(), *stats, ins[3], ins[4]],
                     momentum=a.momentum, epsilon=a.epsilon)
        else:
            ctx.emit("batchnorm_infer", ins, [ctx.output()], epsilon=a.epsilon)

    def vjp(self, node, ctx, gy):
        a, c = node.attrs, node.shape[0]
        x, w, _, mean, var = self._inputs(node, ctx)
        outs = [ctx.input_grad_output()]
        for pname, flag in (("weight", a.scale), ("bias", a.center)):
            outs.append(ctx.param_grad_output(pname) if flag
                        else ctx.tmp(f"unused_d{pname}", (c,), batched=False))
        if ctx.training and node.trainable:
            ctx.emit("batchnorm_train_bwd", [gy, x, w, f"{node.name}:mean", f"{node.name}:invstd"],
                     outs)
        else:
            ctx.emit("batchnorm_infer_bwd", [gy, x, w, mean, var], outs, epsilon=a.epsilon)
        return ctx.needed(outs[:1])


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
        if not ctx.needs_input_grad():
            return [None]
        gx = ctx.input_grad()
        ctx.emit("lrn_bwd", [gy, ctx.x()], [gx], **self._attrs(node.attrs))
        return [gx]


@register
class Dropout(Op):
    name = "dropout"
    traits = Traits(purity=Purity.RANDOM, elementwise=True, init_looks_through=True)
    kind = OpKind.REGULARIZE
    doc = ("while training, zero each element with probability rate and scale the rest "
           "by 1 / (1 - rate); identity at inference")
    attrs = (Attr("rate", number(0, 1, hi_open=True), 0.5, "probability of dropping an element"),)

    def describe(self, a):
        return f"p={a.rate:g}"

    def lower(self, node, ctx):
        if not ctx.training or node.attrs.rate == 0:
            ctx.alias(ctx.x())
            return
        y = ctx.output()
        mask = ctx.tmp("mask", ctx.shape_of(y))
        ctx.emit("dropout", [ctx.x()], [y, mask], rate=node.attrs.rate)

    def vjp(self, node, ctx, gy):
        if not ctx.needs_input_grad():
            return [None]
        if node.attrs.rate == 0:
            return [gy]
        gx = ctx.input_grad()
        ctx.emit("mul", [gy, f"{node.name}:mask"], [gx])
        return [gx]
