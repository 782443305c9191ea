"""The op registry: importing this package registers every op.

`OPS` maps op names to their single definition (see `base.Op`); `get_op(name)`
looks one up; `op_names(where)` lists the ops whose declared traits satisfy `where`.
"""

from .base import (INTERNAL_OPS, OPS, Attr, Attrs, Fusion, Op, OpKind, Param, Purity, Shape, Traits,
                   format_parts, format_shape, get_op, infix_op, op_names, register)
# importing the modules registers their ops
from . import activation, conv, dense, fused, io, merge, norm, pool, resample, tokens  # noqa: F401

__all__ = ["INTERNAL_OPS", "OPS", "Attr", "Attrs", "Fusion", "Op", "OpKind", "Param", "Purity", "Shape",
           "Traits", "format_parts", "format_shape", "get_op", "op_names", "register"]
