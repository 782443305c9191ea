"""The graph's inputs: `input image: 3@224x224` becomes an `input` node."""

from __future__ import annotations

from ..errors import AttrError
from .base import Attr, Op, OpKind, Purity, Traits, format_shape, int_tuple, register
from .cases import Case, ErrorCase


def _input_shape(v):
    v = int_tuple(v)
    if -1 in v:
        raise AttrError("an input's shape must be fully known, got -1",
                        hint="write it as C@HxW, TxF or as a number of features")
    if len(v) not in (1, 2, 3):
        raise AttrError(f"an input is a feature map C@HxW, a sequence TxF or a vector of "
                        f"features, got {len(v)} dimensions", hint="e.g. 3@224x224, 197x768 or 784")
    return v


@register
class Input(Op):
    name = "input"
    traits = Traits(purity=Purity.SOURCE)
    kind = OpKind.INPUT
    doc = "a network input of the given shape (without the batch dimension)"
    attrs = (Attr("shape", _input_shape, doc="C@HxW, TxF for a sequence, or F for a vector"),)
    min_inputs = 0
    max_inputs = 0

    def shape(self, a, ins):
        return a.shape

    def describe(self, a):
        return format_shape(a.shape)

    # an input is its own output: the value fed is the value read back, and its gradient
    cases = (Case(inputs=("3@4x5",), body="x0 -> out"), Case(inputs=("7",), body="x0 -> out"),
             Case(inputs=("3x4",), body="x0 -> out"))
    error_cases = (
        ErrorCase(inputs=("3@0x4",), body="x0 -> out", at="input",
                  words=("every dimension must be at least 1",)),
        ErrorCase(inputs=("(1, 3, 4, 4)",), body="x0 -> out", at="input",
                  words=("an input shape is C@HxW, TxF or a length",)),
    )
