"""AST -> canonical spec text: the inverse of parser.parse.

    text = to_text(parse(source))
    assert parse(text) == parse(source)        # positions are not compared
    assert to_text(parse(text)) == text        # printing is idempotent

The layout is canonical: 4-space indents, one statement per line, chains on one
line joined by ` -> `, a blank line between top-level definitions, and only the
parentheses that precedence requires. Loosest to tightest:

    ternary (a if c else b)  <  chain (->)  <  or  <  and  <  not  <  comparison
    <  + -  <  * / // %  <  unary - +  <  call, .attr, atoms

Note that `a -> b if c else d` is a ternary whose `then` is the chain `a -> b`.
Comparisons do not chain (`a < b < c` is a syntax error), so either side of a
comparison that is itself a comparison gets parentheses.

An AST the language cannot spell raises ValueError instead of printing text that
would parse differently: a keyword used as a name, a string with a double quote,
backslash or newline, an empty tuple, a non-finite float, an unpacking `a, b = ...`
with fewer than two names or a name twice, or a statement that
begins with `(`, `-` or `+` right after one it would fuse with: the grammar has no
statement separator, so `y = a` followed by `(b, c) -> out` reads as
`y = a(b, c) -> out` (see separation_problem).
Negative numbers are printed as `-5`, which parses back as Unary('-', Const(5)),
the form the parser produces.
"""

from __future__ import annotations

import math

from . import ast as A
from .parser import recursion_room

__all__ = ["to_text", "expr_to_text", "stmt_to_text", "separation_problem", "KEYWORDS"]

INDENT = "    "

KEYWORDS = frozenset({"in", "input", "out", "block", "network", "train", "detect", "import", "if", "else",
                      "and", "or", "not", "true", "false", "none"})

# precedence levels, loosest first
TEST, CHAIN, OR, AND, NOT, CMP, ADD, MUL, UNARY, ATOM = range(10)

_COMPARE = ("==", "!=", "<", "<=", ">", ">=")
_ADD = ("+", "-")
_MUL = ("*", "/", "//", "%")


# ------------------------------------------------------------------ public API

def to_text(module: A.Module) -> str:
    """The canonical text of a module; parse(to_text(m)) == m."""
    with recursion_room():
        return _module_text(module)


def expr_to_text(e, level: int = TEST) -> str:
    """An expression, parenthesised if it binds more loosely than `level` allows."""
    with recursion_room():
        return _text(e, level)


def stmt_to_text(stmt, depth: int = 0) -> str:
    """One statement (a train section spans several lines), indented `depth` levels."""
    with recursion_room():
        return _stmt_text(stmt, depth)


def separation_problem(prev, stmt, text: str | None = None) -> str | None:
    """Why `stmt` cannot follow `prev` in a body, or None when it can.

    The grammar has no statement separator, so a statement that begins with `(`, `-`
    or `+` can fuse with the one before it:
      `y = a` + `(b, c) -> out`    reads as `y = a(b, c) -> out` (a bare name, a layer
                                     without parentheses or a repeat count `* n` then `(`);
      `y = a` + `-b -> out`        reads as `y = a - b -> out` (an expression then - or +);
      `y = x -> f * 2` + `-b -> out` is a syntax error (a repeat count then - or +).
    """
    with recursion_room():
        return _separation_problem(prev, stmt, text)


# ------------------------------------------------------------------ top level

def _module_text(module: A.Module) -> str:
    out: list[str] = []
    prev = None
    for item in module.items:
        if prev is not None and not (isinstance(item, A.Import) and isinstance(prev, A.Import)):
            out.append("")
        out.extend(_item_lines(item))
        prev = item
    return "\n".join(out) + "\n" if out else ""


def _item_lines(item) -> list[str]:
    if isinstance(item, A.Import):
        return [f"import {_string(item.path)}"]
    if isinstance(item, (A.BlockDef, A.NetworkDef)):
        kw = "block" if isinstance(item, A.BlockDef) else "network"
        params = ", ".join(_param(p) for p in item.params)
        head = f"{kw} {_name(item.name)}({params}) {{"
        body = _body_lines(item.body, 1)
        return [head + "}"] if not body else [head, *body, "}"]
    raise ValueError(f"cannot print a top-level {type(item).__name__}")


def _param(p: A.Param) -> str:
    if p.default is None:
        return _name(p.name)
    return f"{_name(p.name)}={_text(p.default)}"


def _body_lines(body: list, depth: int) -> list[str]:
    lines: list[str] = []
    prev = None
    for stmt in body:
        text = _stmt_text(stmt, depth)
        problem = _separation_problem(prev, stmt, text) if prev is not None else None
        if problem:
            raise ValueError(f"cannot print {type(stmt).__name__} after {type(prev).__name__}: "
                             f"{problem}")
        lines.extend(text.split("\n"))
        prev = stmt
    return lines


def _separation_problem(prev, stmt, text: str | None = None) -> str | None:
    first = (text if text is not None else _stmt_text(stmt)).lstrip()[:1]
    if first not in ("(", "-", "+"):
        return None
    kind, bare_name = _stmt_ending(prev)
    if first == "(" and bare_name:
        return "the two statements would parse as one (a name followed by '(' is a call)"
    if first in "-+" and kind == "expr":
        return f"the two statements would parse as one (an expression followed by '{first}')"
    if first in "-+" and kind == "repeat":
        return f"a repeat count followed by '{first}' is a syntax error"
    return None


def _stmt_ending(stmt) -> tuple[str, bool]:
    """How a statement's text ends, see _ending; ('none', False) when nothing can continue it."""
    if isinstance(stmt, (A.Assign, A.Unpack, A.ExprStmt)):
        return _ending(stmt.value)
    if isinstance(stmt, A.Out) and stmt.values:
        return _ending(stmt.values[-1])
    if isinstance(stmt, A.Input):
        return _ending(stmt.shape)
    return "none", False  # `in a` and `train {...}` cannot continue


def _ending(e) -> tuple[str, bool]:
    """(kind, bare_name) for how an expression's printed text ends.

    kind: 'expr' (an operand that `- b` would continue), 'stage' (a chain's last layer) or
    'repeat' (a chain's repeat count); bare_name: the last token is a name that `(` would call.
    """
    t = type(e)
    if t is A.Name:
        return "expr", True
    if t is A.Unary:
        return _ending_at(e.operand, NOT if e.op == "not" else UNARY)
    if t is A.Binary:
        return _ending_at(e.right, _RIGHT_LEVEL.get(e.op, ATOM))
    if t is A.Ternary:
        return _ending(e.orelse)  # at TEST level: never parenthesised
    if t is A.Chain and e.stages:
        last = e.stages[-1]
        if last.repeat is not None:
            return "repeat", type(last.repeat) is A.Name
        return "stage", isinstance(last.layer, A.LayerCall) and last.layer.args is None
    return "expr", False  # literals, tuples, lists, calls and `.attr` end in no bare name


def _ending_at(e, level: int) -> tuple[str, bool]:
    return ("expr", False) if _prec(e) < level else _ending(e)  # `(...)` ends in ')'


def _stmt_text(stmt, depth: int = 0) -> str:
    pad = INDENT * depth
    if isinstance(stmt, A.In):
        return pad + _listing("in", [_name(n) for n in stmt.names], "name")
    if isinstance(stmt, A.Input):
        return f"{pad}input {_name(stmt.name)}: {_text(stmt.shape)}"
    if isinstance(stmt, A.Out):
        return pad + _listing("out", [_text(v) for v in stmt.values], "value")
    if isinstance(stmt, A.Assign):
        return f"{pad}{_name(stmt.name)} = {_text(stmt.value)}"
    if isinstance(stmt, A.Unpack):
        named = [n for n in stmt.names if n != "_"]
        if len(stmt.names) < 2 or len(set(named)) != len(named):
            raise ValueError("unpacking needs two or more names, each once (`_` any number of times)")
        return f"{pad}{', '.join(_name(n) for n in stmt.names)} = {_text(stmt.value)}"
    if isinstance(stmt, A.ExprStmt):
        return pad + _text(stmt.value)
    if isinstance(stmt, A.Train):      # and A.Detect, its subclass
        if not stmt.settings:
            return pad + stmt.keyword + " {}"
        inner = INDENT * (depth + 1)
        lines = [pad + stmt.keyword + " {"]
        lines += [f"{inner}{_name(s.name)} = {_text(s.value)}" for s in stmt.settings]
        lines.append(pad + "}")
        return "\n".join(lines)
    raise ValueError(f"cannot print a statement {type(stmt).__name__}")


def _listing(keyword: str, items: list[str], what: str) -> str:
    """`in a, b` / `out x, y`: a keyword and its comma-separated items, of which it needs one."""
    if not items:
        raise ValueError(f"`{keyword}` needs at least one {what}")
    return f"{keyword} " + ", ".join(items)


# ------------------------------------------------------------------ expressions

def _text(e, level: int = TEST) -> str:
    """An expression, parenthesised if it binds more loosely than `level` allows."""
    text, prec = _expr(e)
    return f"({text})" if prec < level else text


_RIGHT_LEVEL = {"or": AND, "and": NOT, **{op: ADD for op in _COMPARE}, **{op: MUL for op in _ADD},
                **{op: UNARY for op in _MUL}}
_BINARY_PREC = {"or": OR, "and": AND, **{op: CMP for op in _COMPARE}, **{op: ADD for op in _ADD},
                **{op: MUL for op in _MUL}}


def _prec(e) -> int:
    """The precedence _expr gives e, without printing it."""
    t = type(e)
    if t is A.Ternary:
        return TEST
    if t is A.Chain:
        return CHAIN
    if t is A.Binary:
        return _BINARY_PREC.get(e.op, ATOM)
    if t is A.Unary:
        return NOT if e.op == "not" else UNARY
    if t is A.Const and type(e.value) in (int, float) and str(e.value).startswith("-"):
        return UNARY
    return ATOM


def _expr(e) -> tuple[str, int]:
    """(text, precedence of its outermost construct)."""
    t = type(e)
    if t is A.Name:
        return _name(e.id), ATOM
    if t is A.Const:
        return _const(e.value)
    if t is A.ShapeLit:  # `3@224x224`, an atom
        return _shape(e), ATOM
    if t is A.TupleExpr:
        if not e.items:
            raise ValueError("an empty tuple cannot be written")
        items = [_text(x) for x in e.items]
        return ("(" + items[0] + ",)" if len(items) == 1 else "(" + ", ".join(items) + ")"), ATOM
    if t is A.ListExpr:
        return "[" + ", ".join(_text(x) for x in e.items) + "]", ATOM
    if t is A.Call:
        return f"{_name(e.name)}({_args(e.args)})", ATOM
    if t is A.GetAttr:
        v = e.value
        # `1.x` would lex as the float `1.` then `x`: numbers get parentheses
        if type(v) is A.Const and isinstance(v.value, (int, float)) and not isinstance(v.value, bool):
            base = f"({_expr(v)[0]})"
        else:
            base = _text(v, ATOM)
        return f"{base}.{_name(e.name)}", ATOM
    if t is A.Unary:
        if e.op == "not":
            return "not " + _text(e.operand, NOT), NOT
        if e.op in ("-", "+"):
            return e.op + _text(e.operand, UNARY), UNARY
        raise ValueError(f"unknown unary operator {e.op!r}")
    if t is A.Binary:
        op = e.op
        if op == "or":
            return f"{_text(e.left, OR)} or {_text(e.right, AND)}", OR
        if op == "and":
            return f"{_text(e.left, AND)} and {_text(e.right, NOT)}", AND
        if op in _COMPARE:  # not associative: a comparison operand is at most arithmetic
            return f"{_text(e.left, ADD)} {op} {_text(e.right, ADD)}", CMP
        if op in _ADD:
            return f"{_text(e.left, ADD)} {op} {_text(e.right, MUL)}", ADD
        if op in _MUL:
            return f"{_text(e.left, MUL)} {op} {_text(e.right, UNARY)}", MUL
        raise ValueError(f"unknown binary operator {op!r}")
    if t is A.Ternary:
        return (f"{_text(e.then, CHAIN)} if {_text(e.cond, OR)} "
                f"else {_text(e.orelse, TEST)}"), TEST
    if t is A.Chain:
        if not e.stages:
            raise ValueError("a chain needs at least one stage")
        return " -> ".join([_text(e.head, OR)] + [_stage(s) for s in e.stages]), CHAIN
    raise ValueError(f"cannot print an expression {t.__name__}")


def _stage(s: A.Stage) -> str:
    text = _layer(s.layer)
    if s.label is not None:
        text = f"{_name(s.label)}: {text}"
    if s.repeat is not None:
        text += " * " + _text(s.repeat, ATOM)
    return text


def _layer(layer) -> str:
    if isinstance(layer, A.LayerOut):
        return "out"
    if isinstance(layer, A.LayerCall):
        if layer.args is None:
            return _name(layer.name)
        return f"{_name(layer.name)}({_args(layer.args)})"
    if isinstance(layer, A.LayerGroup):
        if not layer.stages:
            raise ValueError("a layer group needs at least one stage")
        return "(" + " -> ".join(_stage(s) for s in layer.stages) + ")"
    raise ValueError(f"cannot print a layer {type(layer).__name__}")


def _args(args: list) -> str:
    parts = []
    for a in args:
        value = _text(a.value)
        parts.append(value if a.name is None else f"{_name(a.name)}={value}")
    return ", ".join(parts)


# ------------------------------------------------------------------ leaves

def _const(v) -> tuple[str, int]:
    if v is True:
        return "true", ATOM
    if v is False:
        return "false", ATOM
    if v is None:
        return "none", ATOM
    if isinstance(v, str):
        return _string(v), ATOM
    if isinstance(v, int):
        return (str(v), ATOM) if v >= 0 else (f"-{-v}", UNARY)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"{v!r} cannot be written in a spec")
        text = repr(v)  # shortest text that reads back as the same float: 0.1, 1e-05, 1e+16
        return (text, ATOM) if not text.startswith("-") else (text, UNARY)
    raise ValueError(f"cannot print a constant of type {type(v).__name__}")


def _string(s: str) -> str:
    if any(c in s for c in '"\\\n'):
        raise ValueError(f"the string {s!r} cannot be written: strings have no escapes, "
                         "so they cannot hold a double quote, backslash or newline")
    return f'"{s}"'


def _shape(s: A.ShapeLit) -> str:
    dims = [str(int(d)) for d in s.dims]
    if len(dims) == 1:
        return dims[0]  # a length: `input x: 784` (parses back as the integer 784)
    if len(dims) == 2:
        return "x".join(dims)  # a sequence: `197x768`
    return f"{dims[0]}@{'x'.join(dims[1:])}"


def _name(n: str) -> str:
    if n in KEYWORDS:
        raise ValueError(f"'{n}' is a keyword and cannot be used as a name")
    if not n or not (n[0].isascii() and (n[0].isalpha() or n[0] == "_")) or \
            not all(c.isascii() and (c.isalnum() or c == "_") for c in n):
        raise ValueError(f"{n!r} is not a valid name")
    return n
