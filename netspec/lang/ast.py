"""The syntax tree of a .net file: plain dataclasses, each carrying its position.

Positions do not take part in equality, so a tree printed back to text and
parsed again compares equal to the original (see printer.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from ..errors import Pos


def _pos():
    return field(default=None, compare=False, repr=False)


# ------------------------------------------------------------------ expressions

@dataclass(eq=True)
class Name:
    id: str
    pos: Pos | None = _pos()


@dataclass(eq=True)
class Const:
    """A literal: int, float, str, bool or None."""
    value: object
    pos: Pos | None = _pos()

    def __eq__(self, other):  # 1 == 1.0 == True in Python; literals must keep their type
        return (isinstance(other, Const) and type(self.value) is type(other.value)
                and self.value == other.value)

    def __hash__(self):
        return hash((type(self.value), self.value))


@dataclass(eq=True)
class ShapeLit:
    """`3@224x224` (a feature map) or `197x768` (a sequence) as written."""
    dims: tuple[int, ...]
    pos: Pos | None = _pos()


@dataclass(eq=True)
class _Items:
    items: list
    pos: Pos | None = _pos()


class TupleExpr(_Items):
    """`(a, b)`."""


class ListExpr(_Items):
    """`[a, b]`."""


@dataclass(eq=True)
class Unary:
    op: str  # '-', '+', 'not'
    operand: object
    pos: Pos | None = _pos()


@dataclass(eq=True)
class Binary:
    op: str  # + - * / // % == != < <= > >= and or
    left: object
    right: object
    pos: Pos | None = _pos()


@dataclass(eq=True)
class Ternary:
    then: object
    cond: object
    orelse: object
    pos: Pos | None = _pos()


@dataclass(eq=True)
class Arg:
    name: str | None  # None for positional
    value: object
    pos: Pos | None = _pos()


@dataclass(eq=True)
class Call:
    """`name(args)` in value position: an op or block applied to tensors, or a setting."""
    name: str
    args: list[Arg]
    pos: Pos | None = _pos()


@dataclass(eq=True)
class GetAttr:
    value: object
    name: str
    pos: Pos | None = _pos()


@dataclass(eq=True)
class LayerCall:
    """A layer in a chain: `conv(64, 3)`, or `relu` without parentheses (args None)."""
    name: str
    args: list[Arg] | None
    pos: Pos | None = _pos()


@dataclass(eq=True)
class LayerGroup:
    """`(a -> b)` in a chain, usually repeated: `(conv(64, 3) -> relu) * 2`."""
    stages: list
    pos: Pos | None = _pos()


@dataclass(eq=True)
class LayerOut:
    """`-> out` at the end of a chain: the chain's value is the network's output."""
    pos: Pos | None = _pos()


@dataclass(eq=True)
class Stage:
    label: str | None
    layer: Union[LayerCall, LayerGroup, LayerOut]
    repeat: object | None
    pos: Pos | None = _pos()


@dataclass(eq=True)
class Chain:
    head: object
    stages: list[Stage]
    pos: Pos | None = _pos()


# ------------------------------------------------------------------ statements

@dataclass(eq=True)
class In:
    names: list[str]
    pos: Pos | None = _pos()
    name_pos: list = field(default_factory=list, compare=False, repr=False)


@dataclass(eq=True)
class Input:
    name: str
    shape: object  # ShapeLit or an expression
    pos: Pos | None = _pos()


@dataclass(eq=True)
class Out:
    values: list
    pos: Pos | None = _pos()


@dataclass(eq=True)
class _NameValue:
    name: str
    value: object
    pos: Pos | None = _pos()


class Assign(_NameValue):
    """`name = value` in a network or block body."""


@dataclass(eq=True)
class Unpack:
    """`a, b = value`: each name takes one value of a tuple, in order (`_` takes one and
    names nothing)."""
    names: list[str]
    value: object
    pos: Pos | None = _pos()
    name_pos: list = field(default_factory=list, compare=False, repr=False)


@dataclass(eq=True)
class ExprStmt:
    value: object
    pos: Pos | None = _pos()


class Setting(_NameValue):
    """`name = value` in a train or detect section."""


@dataclass(eq=True)
class Train:
    settings: list[Setting]
    pos: Pos | None = _pos()
    end: Pos | None = _pos()    # its closing `}`
    keyword = "train"


@dataclass(eq=True)
class Detect(Train):
    """`detect { ... }`: how `netspec predict` turns a detector's raw outputs into boxes."""
    keyword = "detect"


@dataclass(eq=True)
class Param:
    name: str
    default: object | None
    pos: Pos | None = _pos()


@dataclass(eq=True)
class _Definition:
    name: str
    params: list[Param]
    body: list
    pos: Pos | None = _pos()
    end: Pos | None = _pos()    # its closing `}`


class BlockDef(_Definition):
    """`block name(params) { body }`."""


class NetworkDef(_Definition):
    """`network name(params) { body }`."""


@dataclass(eq=True)
class Import:
    path: str
    pos: Pos | None = _pos()


@dataclass(eq=True)
class Module:
    items: list
    file: str = field(default="", compare=False)
    # the comments and the line breaks the text was written with (lang/layout.py), when it
    # was parsed with keep_layout=True: the printer re-emits them
    layout: object = field(default=None, compare=False, repr=False)
