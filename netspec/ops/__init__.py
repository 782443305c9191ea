"""The op registry: importing this package registers every op.

`OPS` maps op names to their single definition (see `base.Op`); `get_op(name)`
looks one up.
"""

from .base import INTERNAL_OPS, OPS, Attr, Attrs, Op, OpKind, Param, Shape, format_shape, get_op, register
from . import activation, conv, dense, fused, io, merge, norm, pool  # noqa: F401  (registers the ops)

__all__ = ["INTERNAL_OPS", "OPS", "Attr", "Attrs", "Op", "OpKind", "Param", "Shape", "format_shape",
           "get_op", "register"]
