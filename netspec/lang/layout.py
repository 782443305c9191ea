"""The comments and line breaks of a spec's text, attached to the syntax tree for the printer.

The parser drops comments; `parse(text, keep_layout=True)` collects them from its lexer and
`read_layout` hangs each one on a node of the tree, so that `printer.to_text` (`netspec fmt`)
writes it back in place. The nodes a comment can belong to, the anchors, are the ones that
begin a printed line: an import, a definition, a statement, a setting, a stage of a
statement's chain that began a line in the text (and a ternary's `if` that did), the
closing `}` of a body or section, and the end of the file.

- A comment on a line of its own, and a blank line, go with the first anchor below them
  (`Trivia.before`, in order; "" is a blank line, runs of them kept as one).
- A comment after code trails the last anchor that begins on or before its line
  (`Trivia.after`); a second one on the same anchor's lines (a call spread over lines,
  which the printer joins) becomes a comment of its own line below it, so none is lost.

`breaks` keeps the line breaks between a chain's stages and between a call's arguments, as
gofmt keeps those of an expression: the printer begins a line at each stage, ternary `if` or
argument in it, and never wraps a line itself. `spellings` keeps how a float was written
(`1e-4` stays `1e-4`, not Python's `0.0001`).
"""

from __future__ import annotations

import bisect
import dataclasses
from dataclasses import dataclass, field

from . import ast as A

__all__ = ["Trivia", "Layout", "read_layout", "closing", "statement_chain"]


@dataclass
class Trivia:
    """What surrounds one anchor in the text."""
    before: list[str] = field(default_factory=list)   # comment lines above it, "" a blank line
    after: str | None = None                          # the comment that ends its line


@dataclass
class Layout:
    trivia: dict = field(default_factory=dict)   # anchor key (id of the node, or closing()) -> Trivia
    breaks: set = field(default_factory=set)     # ids of the stages, ternaries, arguments that begin a line
    spellings: dict = field(default_factory=dict)   # id of a float Const -> its text as written
    comments: list = field(default_factory=list)    # every comment, in the order of the text

    def before(self, key) -> list[str]:
        found = self.trivia.get(key)
        return found.before if found else []

    def after(self, key) -> str | None:
        found = self.trivia.get(key)
        return found.after if found else None


def closing(owner) -> tuple:
    """The anchor key of an owner's closing `}` (a definition's, a section's; a Module's is
    the end of the file)."""
    return ("}", id(owner))


def key(node) -> int:
    return id(node)


def statement_chain(stmt) -> tuple[A.Chain | None, A.Ternary | None]:
    """The chain a statement's line breaks can fall in: its value's (or, for
    `x -> f if c else y`, its ternary's first branch's), and that ternary; (None, None) when
    the statement has no such chain."""
    if isinstance(stmt, (A.Assign, A.Unpack, A.ExprStmt)):
        value = stmt.value
    elif isinstance(stmt, A.Out) and len(stmt.values) == 1:
        value = stmt.values[0]
    else:
        return None, None
    if isinstance(value, A.Ternary):
        return (value.then, value) if isinstance(value.then, A.Chain) else (None, None)
    return (value, None) if isinstance(value, A.Chain) else (None, None)


def read_layout(module: A.Module, text: str, comments: list) -> Layout:
    """Attach `comments` (the lexer's COMMENT tokens of `text`) and the blank lines of
    `text` to the anchors of `module`, parsed from that text."""
    layout = Layout()
    anchors: list[tuple[int, object]] = []     # (line, anchor key), in the order of the text
    _module_anchors(module, anchors, layout.breaks)
    lines = [line for line, _ in anchors]
    for i in range(1, len(lines)):             # (the walk follows the text; keep it sorted)
        lines[i] = max(lines[i], lines[i - 1])
    keys = [k for _, k in anchors]
    placed: dict[object, list[tuple[int, str]]] = {}

    def put_before(index: int, line: int, what: str) -> None:
        placed.setdefault(keys[min(index, len(keys) - 1)], []).append((line, what))

    text_lines = text.split("\n")
    for number, line in enumerate(text_lines, start=1):
        if not line.strip():
            put_before(bisect.bisect_right(lines, number), number, "")
    for token in comments:
        comment = str(token).rstrip()
        layout.comments.append(comment)
        own_line = not text_lines[token.line - 1][:token.column - 1].strip()
        if own_line:
            put_before(bisect.bisect_right(lines, token.line), token.line, comment)
            continue
        index = max(bisect.bisect_right(lines, token.line) - 1, 0)
        trivia = layout.trivia.setdefault(keys[index], Trivia())
        if trivia.after is None and lines[index] == token.line:
            trivia.after = comment
        else:
            put_before(index + 1, token.line, comment)
    _expression_layout(module, text_lines, layout)
    for anchor, found in placed.items():
        before = [what for _, what in sorted(found, key=lambda pair: pair[0])]
        layout.trivia.setdefault(anchor, Trivia()).before = _one_blank(before)
    return layout


def _one_blank(lines: list[str]) -> list[str]:
    """Runs of blank lines as one."""
    return [l for i, l in enumerate(lines) if l or i == 0 or lines[i - 1]]


def _module_anchors(module: A.Module, out: list, breaks: set) -> None:
    for item in module.items:
        out.append((item.pos.line, key(item)))
        if isinstance(item, (A.BlockDef, A.NetworkDef)):
            _body_anchors(item.body, out, breaks)
            out.append((item.end.line, closing(item)))
    out.append((float("inf"), closing(module)))


def _body_anchors(body: list, out: list, breaks: set) -> None:
    for stmt in body:
        line = stmt.pos.line if stmt.pos else (out[-1][0] if out else 1)
        out.append((line, key(stmt)))
        if isinstance(stmt, A.Train):
            out.extend((s.pos.line, key(s)) for s in stmt.settings)
            out.append((stmt.end.line, closing(stmt)))
            continue
        chain, ternary = statement_chain(stmt)
        if chain is None:
            continue
        for stage in chain.stages:
            if stage.pos is not None and stage.pos.line > line:
                line = stage.pos.line
                out.append((line, key(stage)))
                breaks.add(key(stage))
        cond = ternary.cond if ternary is not None else None
        if cond is not None and cond.pos is not None and cond.pos.line > line:
            out.append((cond.pos.line, key(ternary)))
            breaks.add(key(ternary))


def _expression_layout(module: A.Module, text_lines: list[str], layout: Layout) -> None:
    """The floats' spellings, and the arguments that begin a line of their call."""
    for node in _nodes(module):
        if isinstance(node, A.Const) and type(node.value) is float and node.pos is not None \
                and node.pos.end_col is not None:
            layout.spellings[key(node)] = text_lines[node.pos.line - 1][node.pos.col - 1:
                                                                        node.pos.end_col - 1]
        elif isinstance(node, (A.Call, A.LayerCall)) and node.args and node.pos is not None:
            line = node.pos.line
            for arg in node.args:
                if arg.pos is not None and arg.pos.line > line:
                    layout.breaks.add(key(arg))
                    line = arg.pos.line


def _nodes(node):
    """Every syntax node under `node`, itself included."""
    stack = [node]
    while stack:
        node = stack.pop()
        yield node
        for f in dataclasses.fields(node):
            if not f.compare:
                continue
            value = getattr(node, f.name)
            for child in (value if isinstance(value, list) else (value,)):
                if dataclasses.is_dataclass(child) and not isinstance(child, type):
                    stack.append(child)
