"""Text -> AST: the Lark LALR parser, a Transformer to dataclasses, readable syntax errors."""

from __future__ import annotations

import functools
from pathlib import Path

import lark
from lark import Token, Transformer, v_args

from . import ast as A
from .errors import Pos, SpecError

GRAMMAR_PATH = Path(__file__).with_name("grammar.lark")

MAX_FILE_BYTES = 4_000_000      # a 10,000-line spec is ~400 kB
MAX_NESTING = 200               # parentheses/brackets nested deeper than this are refused

# How expected terminals are named in syntax errors.
_TERMINAL_NAMES = {
    "NAME": "a name", "INT": "an integer", "FLOAT": "a number", "STRING": "a string",
    "SHAPE": "a shape such as 3@32x32", "LPAR": "'('", "RPAR": "')'", "LBRACE": "'{'",
    "RBRACE": "'}'", "LSQB": "'['", "RSQB": "']'", "COMMA": "','", "COLON": "':'",
    "EQUAL": "'='", "DOT": "'.'", "STAR": "'*'", "__ANON_0": "'->'", "COMP_OP": "a comparison",
    "ADD_OP": "'+' or '-'", "MUL_OP": "'*', '/', '//' or '%'", "NEG_OP": "'-'",
    "$END": "end of file",
}


@functools.lru_cache(maxsize=1)
def _lark() -> lark.Lark:
    return lark.Lark(GRAMMAR_PATH.read_text(), parser="lalr", propagate_positions=True,
                     maybe_placeholders=True)


def parse(text: str, file: str = "<spec>") -> A.Module:
    """Parse spec text into a Module, or raise SpecError at the offending position."""
    _check_text(text, file)
    try:
        tree = _lark().parse(text)
    except lark.exceptions.UnexpectedInput as e:
        raise _syntax_error(e, text, file) from None
    try:
        module = _ToAst(file).transform(tree)
    except RecursionError:
        raise SpecError("expression nested too deeply", Pos(file, 1, 1)) from None
    module.file = file
    return module


def read_spec(path: str | Path) -> str:
    """Read a spec file as UTF-8 text with clear errors for binary, non-UTF-8 or huge files."""
    p = Path(path)
    shown = str(path)
    try:
        if p.is_dir():
            raise SpecError(f"'{shown}' is a folder, not a spec file")
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise SpecError(f"spec file is too large ({size:,} bytes; the limit is {MAX_FILE_BYTES:,})",
                            Pos(shown, 1, 1))
        data = p.read_bytes()
    except FileNotFoundError:
        raise SpecError(f"no such file: '{shown}'") from None
    except PermissionError:
        raise SpecError(f"cannot read '{shown}': permission denied") from None
    except OSError as e:
        raise SpecError(f"cannot read '{shown}': {e.strerror or e}") from None
    if b"\x00" in data:
        line = data[: data.index(b"\x00")].count(b"\n") + 1
        raise SpecError("this is a binary file, not a spec (it contains NUL bytes)",
                        Pos(shown, line, 1), hint="specs are UTF-8 text files ending in .net")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        before = data[: e.start]
        line = before.count(b"\n") + 1
        col = len(before) - (before.rfind(b"\n") + 1) + 1
        raise SpecError(f"the file is not valid UTF-8 (byte 0x{data[e.start]:02x})",
                        Pos(shown, line, col), hint="save the spec as UTF-8") from None


def _check_text(text: str, file: str) -> None:
    if len(text) > MAX_FILE_BYTES:
        raise SpecError(f"spec is too large ({len(text):,} characters; the limit is {MAX_FILE_BYTES:,})",
                        Pos(file, 1, 1))
    if not text.strip() or all(l.strip().startswith("#") or not l.strip() for l in text.splitlines()):
        raise SpecError("empty spec: there is no network or block in it", Pos(file, 1, 1),
                        hint="a spec holds at least `network name() { input x: 1@28x28 ... }`")
    depth = deepest = 0
    line, col = 1, 0
    for ch in text:
        col += 1
        if ch == "\n":
            line, col = line + 1, 0
        elif ch in "([{":
            depth += 1
            if depth > MAX_NESTING:
                raise SpecError(f"brackets nested more than {MAX_NESTING} deep", Pos(file, line, col))
        elif ch in ")]}":
            depth -= 1
        deepest = max(deepest, depth)


def _describe_token(tok: Token) -> str:
    if tok.type == "$END":
        return "end of file"
    return f"'{tok.value}'"


def _syntax_error(e: lark.exceptions.UnexpectedInput, text: str, file: str) -> SpecError:
    line, col = max(e.line, 1), max(e.column, 1)
    if isinstance(e, lark.exceptions.UnexpectedCharacters):
        ch = text[e.pos_in_stream] if e.pos_in_stream < len(text) else ""
        msg = f"unexpected character {ch!r}"
        hint = None
        if ch == "'":
            hint = "strings use double quotes"
        elif ch == "=" or ch in "!<>":
            hint = "comparisons are ==, !=, <, <=, >, >="
        return SpecError(msg, Pos(file, line, col, col + 1), hint)
    if isinstance(e, lark.exceptions.UnexpectedEOF):
        lines = text.splitlines() or [""]
        line = len(lines)
        return SpecError("unexpected end of file", Pos(file, line, len(lines[-1]) + 1),
                         hint=_expected_hint(e.expected))
    tok = e.token  # UnexpectedToken
    end = col + len(str(tok.value)) if tok.type != "$END" else None
    if tok.type == "$END":
        lines = text.splitlines() or [""]
        return SpecError("unexpected end of file", Pos(file, len(lines), len(lines[-1]) + 1),
                         hint=_expected_hint(e.expected))
    hint = _expected_hint(e.expected)
    if tok.value in ("in", "out", "input", "block", "network", "train", "import", "if", "else",
                     "and", "or", "not", "true", "false", "none"):
        hint = f"'{tok.value}' is a keyword and cannot be used here" + (f"; {hint}" if hint else "")
    return SpecError(f"unexpected {_describe_token(tok)}", Pos(file, line, col, end), hint)


def _expected_hint(expected) -> str | None:
    if not expected:
        return None
    names = sorted({_TERMINAL_NAMES.get(t, _keyword_name(t)) for t in expected})
    if len(names) > 6:
        return None
    return "expected " + (names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1])


def _keyword_name(t: str) -> str:
    return f"'{t.lower()}'" if t.isupper() and t.isalpha() else t


# --------------------------------------------------------------------- transformer

class _ToAst(Transformer):
    def __init__(self, file: str):
        super().__init__()
        self.file = file

    def _pos(self, meta_or_tok) -> Pos | None:
        if isinstance(meta_or_tok, Token):
            return Pos(self.file, meta_or_tok.line, meta_or_tok.column, meta_or_tok.end_column
                       if meta_or_tok.line == meta_or_tok.end_line else None)
        if getattr(meta_or_tok, "empty", True):
            return None
        end = meta_or_tok.end_column if meta_or_tok.end_line == meta_or_tok.line else None
        return Pos(self.file, meta_or_tok.line, meta_or_tok.column, end)

    # --- top level
    def start(self, items):
        return A.Module(list(items), self.file)

    @v_args(meta=True)
    def import_stmt(self, meta, c):
        return A.Import(_string(c[0]), self._pos(meta))

    @v_args(meta=True)
    def block_def(self, meta, c):
        name, params, *body = c
        return A.BlockDef(str(name), params or [], body, self._pos(name))

    @v_args(meta=True)
    def network_def(self, meta, c):
        name, params, *body = c
        return A.NetworkDef(str(name), params or [], body, self._pos(name))

    def params(self, c):
        return [p for p in c if p is not None]

    def param(self, c):
        name, default = c
        return A.Param(str(name), default, self._pos(name))

    # --- statements
    @v_args(meta=True)
    def in_stmt(self, meta, c):
        return A.In([str(n) for n in c], self._pos(meta), [self._pos(n) for n in c])

    @v_args(meta=True)
    def input_stmt(self, meta, c):
        name, shape = c
        if isinstance(shape, Token):  # SHAPE terminal
            shape = A.ShapeLit(parse_shape_text(str(shape)), self._pos(shape))
        return A.Input(str(name), shape, self._pos(name))

    @v_args(meta=True)
    def out_stmt(self, meta, c):
        return A.Out(list(c), self._pos(meta))

    @v_args(meta=True)
    def assign(self, meta, c):
        return A.Assign(str(c[0]), c[1], self._pos(c[0]))

    @v_args(meta=True)
    def expr_stmt(self, meta, c):
        return A.ExprStmt(c[0], self._pos(meta))

    @v_args(meta=True)
    def train_section(self, meta, c):
        return A.Train(list(c), self._pos(meta))

    def setting(self, c):
        return A.Setting(str(c[0]), c[1], self._pos(c[0]))

    # --- chains
    @v_args(meta=True)
    def chain(self, meta, c):
        return A.Chain(c[0], list(c[1:]), self._pos(meta))

    @v_args(meta=True)
    def ternary(self, meta, c):
        return A.Ternary(c[0], c[1], c[2], self._pos(meta))

    @v_args(meta=True)
    def stage(self, meta, c):
        label, layer, repeat = c
        return A.Stage(label, layer, repeat, self._pos(meta))

    def label(self, c):
        return str(c[0])

    def repeat(self, c):
        return c[0]

    def layer_ref(self, c):
        return A.LayerCall(str(c[0]), None, self._pos(c[0]))

    def layer_call(self, c):
        return A.LayerCall(str(c[0]), c[1] or [], self._pos(c[0]))

    @v_args(meta=True)
    def layer_group(self, meta, c):
        return A.LayerGroup(list(c), self._pos(meta))

    @v_args(meta=True)
    def layer_out(self, meta, c):
        return A.LayerOut(self._pos(meta))

    # --- operators
    @v_args(meta=True)
    def or_op(self, meta, c):
        return A.Binary("or", c[0], c[1], self._pos(meta))

    @v_args(meta=True)
    def and_op(self, meta, c):
        return A.Binary("and", c[0], c[1], self._pos(meta))

    @v_args(meta=True)
    def not_op(self, meta, c):
        return A.Unary("not", c[0], self._pos(meta))

    @v_args(meta=True)
    def compare(self, meta, c):
        return A.Binary(str(c[1]), c[0], c[2], self._pos(c[1]))

    @v_args(meta=True)
    def binary(self, meta, c):
        return A.Binary(str(c[1]), c[0], c[2], self._pos(c[1]))

    @v_args(meta=True)
    def unary(self, meta, c):
        return A.Unary(str(c[0]), c[1], self._pos(meta))

    def call(self, c):
        return A.Call(str(c[0]), c[1] or [], self._pos(c[0]))

    def getattr(self, c):
        return A.GetAttr(c[0], str(c[1]), self._pos(c[1]))

    def args(self, c):
        return [a if isinstance(a, A.Arg) else A.Arg(None, a, getattr(a, "pos", None))
                for a in c if a is not None]

    def kwarg(self, c):
        return A.Arg(str(c[0]), c[1], self._pos(c[0]))

    # --- atoms
    def name(self, c):
        return A.Name(str(c[0]), self._pos(c[0]))

    def int(self, c):
        return A.Const(int(c[0]), self._pos(c[0]))

    def float(self, c):
        return A.Const(float(c[0]), self._pos(c[0]))

    def string(self, c):
        return A.Const(_string(c[0]), self._pos(c[0]))

    @v_args(meta=True)
    def true(self, meta, c):
        return A.Const(True, self._pos(meta))

    @v_args(meta=True)
    def false(self, meta, c):
        return A.Const(False, self._pos(meta))

    @v_args(meta=True)
    def none(self, meta, c):
        return A.Const(None, self._pos(meta))

    @v_args(meta=True)
    def tuple(self, meta, c):
        return A.TupleExpr([x for x in c if x is not None], self._pos(meta))

    @v_args(meta=True)
    def list(self, meta, c):
        return A.ListExpr([x for x in c if x is not None], self._pos(meta))


def _string(tok) -> str:
    return str(tok)[1:-1]


def parse_shape_text(text: str) -> tuple[int, ...]:
    """'3@224x224' -> (3, 224, 224); '784' -> (784,). Raises ValueError."""
    text = text.strip()
    if "@" in text:
        c, rest = text.split("@", 1)
        dims = (int(c), *(int(d) for d in rest.split("x")))
    else:
        dims = (int(text),)
    if any(d < 1 for d in dims):
        raise ValueError(f"every dimension must be at least 1 in '{text}'")
    return dims
