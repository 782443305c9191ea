"""The values a spec computes with, and how they print in messages.

Numbers, strings, booleans, none and tuples are plain Python values; these add tensors
(a node's output), symbols (bare names such as `same`, meaningful as attribute values) and
settings calls of a train section (`sgd(lr=0.1)`). elaborate.py evaluates specs into them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import Pos
from ..ops import format_shape


@dataclass(frozen=True)
class Tensor:
    node: str
    shape: tuple

    def describe(self) -> str:
        return f"{format_shape(self.shape)} from {self.node}"


@dataclass(frozen=True)
class Symbol:
    """A bare name that is not defined: meaningful only as an attribute value (`pad=same`)."""
    name: str
    pos: Pos | None = field(default=None, compare=False)

    def __str__(self):
        return self.name


@dataclass(frozen=True)
class SettingCall:
    """`sgd(lr=0.1)` in a train section: a name with arguments, validated later."""
    name: str
    args: tuple
    kwargs: tuple  # ((key, value), ...)
    pos: Pos | None = field(default=None, compare=False)


# builtins callable in expressions; each refuses what is not a number
BUILTINS = {
    "min": min,
    "max": max,
    "int": lambda x: int(x) if not isinstance(x, bool) and isinstance(x, (int, float)) else _bad(),
    "round": lambda x: round(x) if not isinstance(x, bool) and isinstance(x, (int, float)) else _bad(),
}


def _bad():
    raise TypeError


def tensors_of(value) -> tuple:
    if isinstance(value, Tensor):
        return (value,)
    if isinstance(value, tuple):
        return value
    return ()


def has_tensor(value) -> bool:
    return isinstance(value, Tensor) or (isinstance(value, tuple) and any(isinstance(v, Tensor) for v in value))


def attr_value(v):
    """Symbols become their names for attribute validation (pad=same -> 'same')."""
    if isinstance(v, Symbol):
        return v.name
    if isinstance(v, tuple):
        return tuple(attr_value(x) for x in v)
    return v


def plain(v):
    """A value as plain Python, for attributes and settings: symbols as their names."""
    if isinstance(v, Symbol):
        return v.name
    if isinstance(v, tuple):
        return tuple(plain(x) for x in v)
    if isinstance(v, Tensor):
        return f"<{format_shape(v.shape)} tensor>"
    return v


def show(v) -> str:
    """A value as a message shows it, in the spec's own notation."""
    if isinstance(v, Tensor):
        return f"a tensor {format_shape(v.shape)}"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, Symbol):
        return f"'{v.name}'"
    if isinstance(v, str):
        return f'"{v}"'
    if v is None:
        return "none"
    if isinstance(v, tuple):
        return "(" + ", ".join(show(x) for x in v) + ")"
    if isinstance(v, SettingCall):
        return f"{v.name}(...)"
    return str(v)


def format_bytes(n: float) -> str:
    if n >= 1e21:  # a million PB and up; n may be an int too large to convert to a float
        return f"10^{int(math.log10(n))} bytes"
    for unit, size in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:,.0f} {unit}" if n >= 1000 * size else f"{n / size:.1f} {unit}"
    return f"{int(n)} B"
