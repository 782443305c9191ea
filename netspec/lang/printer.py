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

import contextvars
import math

from . import ast as A
from .layout import closing, statement_chain
from . import parser
from .parser import recursion_room

__all__ = ["to_text", "expr_to_text", "stmt_to_text", "separation_problem", "KEYWORDS"]

INDENT = "    "

# The layout of the module being printed (lang/layout.py), read where expressions are printed.
_LAYOUT: contextvars.ContextVar = contextvars.ContextVar("layout", default=None)

KEYWORDS = frozenset(parser.KEYWORDS)

# precedence levels, loosest first
TEST, CHAIN, OR, AND, NOT, CMP, ADD, MUL, UNARY, ATOM = range(10)

_COMPARE = ("==", "!=", "<", "<=", ">", ">=")
_ADD = ("+", "-")
_MUL = ("*", "/", "//", "%")


# ------------------------------------------------------------------ public API

def to_text(module: A.Module) -> str:
    """The canonical text of a module; parse(to_text(m)) == m. A module parsed with
    keep_layout=True is printed with its comments, line breaks and floats as written."""
    token = _LAYOUT.set(module.layout)
    try:
        with recursion_room():
            return _module_text(module)
    finally:
        _LAYOUT.reset(token)


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

# A printed line: its code, and the comment that ends it (None, or when there is no layout).
Line = tuple[str, "str | None"]


def _module_text(module: A.Module) -> str:
    layout = module.layout
    out: list[Line] = []
    prev = None
    for item in module.items:
        before = _before(layout, item)
        if prev is None:
            before = _strip_blanks(before)
        elif not (isinstance(item, A.Import) and isinstance(prev, A.Import)):
            out.append(("", None))             # one blank line between definitions, always
            before = _strip_blanks(before)
        out.extend(_comment_lines(before, ""))
        out.extend(_item_lines(item, layout))
        prev = item
    out.extend(_comment_lines(_strip_blanks(_before(layout, closing(module)), leading=False), ""))
    return _joined(out) + "\n" if out else ""


def _joined(lines: list[Line]) -> str:
    """The lines as text, the comments ending consecutive lines aligned two spaces past the
    longest code among those lines (as gofmt aligns them); a chain's continuation line
    without a comment does not part them (`-> flatten` between commented stages)."""
    def in_run(k: int) -> bool:
        code, comment = lines[k]
        return comment is not None or code.lstrip().startswith(("-> ", "if "))

    texts = []
    i = 0
    while i < len(lines):
        if lines[i][1] is None:
            texts.append(lines[i][0])
            i += 1
            continue
        j = i
        while j < len(lines) and in_run(j):
            j += 1
        while lines[j - 1][1] is None:     # the run ends at its last comment
            j -= 1
        column = max(len(code) for code, comment in lines[i:j] if comment is not None) + 2
        texts.extend(code if comment is None else code.ljust(column) + comment
                     for code, comment in lines[i:j])
        i = j
    return "\n".join(texts)


def _before(layout, anchor) -> list[str]:
    """The comment lines (and "" blank lines) written above an anchor (a node, or closing())."""
    if layout is None:
        return []
    return layout.before(anchor if isinstance(anchor, tuple) else id(anchor))


def _after(layout, anchor) -> str | None:
    if layout is None:
        return None
    return layout.after(anchor if isinstance(anchor, tuple) else id(anchor))


def _strip_blanks(lines: list[str], leading: bool = True) -> list[str]:
    """Comment lines without the blank lines at their start (leading) or at their end."""
    start, end = 0, len(lines)
    if leading:
        while start < end and not lines[start]:
            start += 1
    else:
        while end > start and not lines[end - 1]:
            end -= 1
    return lines[start:end]


def _comment_lines(comments: list[str], pad: str) -> list[Line]:
    return [(pad + c if c else "", None) for c in comments]


def _closing_lines(layout, owner, depth: int) -> list[Line]:
    """The comments written before an owner's closing `}` (a blank line above them kept), then it."""
    comments = _strip_blanks(_before(layout, closing(owner)), leading=False)
    if comments and not any(comments):
        comments = []
    return [*_comment_lines(comments, INDENT * (depth + 1)),
            (INDENT * depth + "}", _after(layout, closing(owner)))]


def _item_lines(item, layout=None) -> list[Line]:
    if isinstance(item, A.Import):
        return [(f"import {_string(item.path)}", _after(layout, item))]
    if isinstance(item, (A.BlockDef, A.NetworkDef)):
        kw = "block" if isinstance(item, A.BlockDef) else "network"
        params = ", ".join(_param(p) for p in item.params)
        head = f"{kw} {_name(item.name)}({params}) {{"
        return _braced(head, _body_lines(item.body, 1, layout), item, 0, layout)
    raise ValueError(f"cannot print a top-level {type(item).__name__}")


def _braced(head: str, body: list[Line], owner, depth: int, layout) -> list[Line]:
    """`head {`, the body, `}`; `head {}` on one line when there is nothing inside."""
    end = _closing_lines(layout, owner, depth)
    head_comment = _after(layout, owner)
    if not body and len(end) == 1 and (head_comment is None or end[0][1] is None):
        return [(head + "}", head_comment or end[0][1])]
    return [(head, head_comment), *body, *end]


def _param(p: A.Param) -> str:
    if p.default is None:
        return _name(p.name)
    return f"{_name(p.name)}={_text(p.default)}"


def _body_lines(body: list, depth: int, layout=None) -> list[Line]:
    lines: list[Line] = []
    prev = None
    for stmt in body:
        before = _before(layout, stmt)
        stmt_lines = _stmt_lines(stmt, depth, layout)
        text = "\n".join(code for code, _ in stmt_lines)
        problem = _separation_problem(prev, stmt, text) if prev is not None else None
        if problem:
            raise ValueError(f"cannot print {type(stmt).__name__} after {type(prev).__name__}: "
                             f"{problem}")
        lines.extend(_comment_lines(_strip_blanks(before) if prev is None else before,
                                    INDENT * depth))
        lines.extend(stmt_lines)
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
    return "\n".join(code for code, _ in _stmt_lines(stmt, depth))


def _stmt_lines(stmt, depth: int = 0, layout=None) -> list[Line]:
    pad = INDENT * depth
    if isinstance(stmt, A.Train):      # and A.Detect, its subclass
        inner = INDENT * (depth + 1)
        settings: list[Line] = []
        for i, s in enumerate(stmt.settings):
            before = _before(layout, s)
            settings += _comment_lines(_strip_blanks(before) if i == 0 else before, inner)
            settings += _aligned_in_brackets([(f"{inner}{_name(s.name)} = {_text(s.value)}",
                                               _after(layout, s))])
        return _braced(pad + stmt.keyword + " {", settings, stmt, depth, layout)
    if isinstance(stmt, A.In):
        prefix, value = pad + _listing("in", [_name(n) for n in stmt.names], "name"), None
    elif isinstance(stmt, A.Input):
        prefix, value = f"{pad}input {_name(stmt.name)}: ", stmt.shape
    elif isinstance(stmt, A.Out):
        values = [_text(v) for v in stmt.values]
        if len(values) == 1:
            prefix, value = pad + "out ", stmt.values[0]
        else:
            prefix, value = pad + _listing("out", values, "value"), None
    elif isinstance(stmt, A.Assign):
        prefix, value = f"{pad}{_name(stmt.name)} = ", stmt.value
    elif isinstance(stmt, A.Unpack):
        named = [n for n in stmt.names if n != "_"]
        if len(stmt.names) < 2 or len(set(named)) != len(named):
            raise ValueError("unpacking needs two or more names, each once (`_` any number of times)")
        prefix, value = f"{pad}{', '.join(_name(n) for n in stmt.names)} = ", stmt.value
    elif isinstance(stmt, A.ExprStmt):
        prefix, value = pad, stmt.value
    else:
        raise ValueError(f"cannot print a statement {type(stmt).__name__}")
    chain, ternary = statement_chain(stmt)
    if layout is None or chain is None:
        lines = [(prefix + (_text(value) if value is not None else ""), _after(layout, stmt))]
    else:
        lines = _broken_chain(prefix, chain, ternary, layout, _after(layout, stmt))
    return _aligned_in_brackets(lines)


def _aligned_in_brackets(lines: list[Line]) -> list[Line]:
    """The lines with the breaks inside their code (between a call's arguments) made lines
    of their own, each indented one column past the bracket it is in (the comment stays on
    the first); lines outside any bracket keep their indent."""
    out: list[Line] = []
    open_columns: list[int] = []
    for code, comment in lines:
        for number, part in enumerate(code.split("\n")):
            if open_columns:
                part = " " * (open_columns[-1] + 1) + part.lstrip()
            if not part.lstrip().startswith("#"):   # (an own-line comment's brackets count not)
                _track_brackets(part, open_columns)
            out.append((part, comment if number == 0 else None))
    return out


def _track_brackets(code: str, open_columns: list[int]) -> None:
    in_string = False
    for column, ch in enumerate(code):
        if ch == '"':
            in_string = not in_string
        elif in_string:
            continue
        elif ch in "([":
            open_columns.append(column)
        elif ch in ")]" and open_columns:
            open_columns.pop()


def _broken_chain(prefix: str, chain: A.Chain, ternary, layout, comment) -> list[Line]:
    """A statement whose chain (or ternary `if`) keeps the line breaks it was written with:
    each continuation line begins with `->` (or `if`) under the first line's first `->`."""
    head = _text(chain.head, OR)
    # `->` under the first line's first `->`; under the head when the head spans lines
    indent = " " * (len(prefix) + (len(head) + 1 if "\n" not in head else 0))
    lines: list[Line] = []
    line = prefix + head
    parts = [(stage, "-> " + _stage(stage)) for stage in chain.stages]
    if ternary is not None:
        parts.append((ternary, f"if {_text(ternary.cond, OR)} else {_text(ternary.orelse, TEST)}"))
    for node, text in parts:
        if id(node) in layout.breaks:
            lines.append((line, comment))
            lines.extend(_comment_lines([c for c in _before(layout, node) if c], indent))
            line, comment = indent + text, _after(layout, node)
        else:
            line += " " + text
    lines.append((line, comment))
    return lines


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
        layout = _LAYOUT.get()
        if layout is not None and id(e) in layout.spellings:
            return layout.spellings[id(e)], ATOM
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
    layout = _LAYOUT.get()
    text = ""
    for a in args:
        value = _text(a.value)
        if text:
            text += ",\n" if layout is not None and id(a) in layout.breaks else ", "
        text += value if a.name is None else f"{_name(a.name)}={value}"
    return text


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
