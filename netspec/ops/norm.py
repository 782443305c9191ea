"""Normalisation and regularisation: batchnorm, lrn, dropout."""

from __future__ import annotations

from .base import Attr, Op, OpKind, Param, boolean, number, pos_int, register, require_spatial


@register
class BatchNorm(Op):
    name = "batchnorm"
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


@register
class Dropout(Op):
    name = "dropout"
    kind = OpKind.REGULARIZE
    doc = ("while training, zero each element with probability rate and scale the rest "
           "by 1 / (1 - rate); identity at inference")
    attrs = (Attr("rate", number(0, 1, hi_open=True), 0.5, "probability of dropping an element"),)

    def describe(self, a):
        return f"p={a.rate:g}"
