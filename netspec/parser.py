"""Text -> AST: the Lark LALR parser, a Transformer to dataclasses, readable syntax errors."""

from __future__ import annotations

import contextlib
import functools
import gc
import re
from pathlib import Path

import lark
from lark import Token, Transformer, v_args

from . import ast as A
from .errors import Pos, SpecError, remember_source

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


@contextlib.contextmanager
def suspended_gc():
    """Run a block with Python's cyclic garbage collector paused, then restore it.

    Parsing and elaboration allocate hundreds of thousands of small objects that all
    stay alive (the AST, the graph), so the collector keeps re-walking them for nothing:
    it took about half of `netspec check` on a 10,000-line spec. Reference counting still
    frees everything that is not in a cycle while the collector is paused.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def parse(text: str, file: str = "<spec>") -> A.Module:
    """Parse spec text into a Module, or raise SpecError at the offending position."""
    with suspended_gc():
        return _parse(text, file)


def _parse(text: str, file: str) -> A.Module:
    _check_text(text, file)
    try:
        tree = _lark().parse(text)
    except lark.exceptions.UnexpectedInput as e:
        raise _syntax_error(e, text, file) from None
    try:
        module = _ToAst(file).transform(tree)
    except RecursionError:
        raise SpecError("expression nested too deeply", Pos(file, 1, 1)) from None
    except lark.exceptions.VisitError as e:  # lark wraps what a transformer method raises
        if isinstance(e.orig_exc, SpecError):
            raise e.orig_exc from None
        if isinstance(e.orig_exc, RecursionError):
            raise SpecError("expression nested too deeply", Pos(file, 1, 1)) from None
        raise
    module.file = file
    return module


def read_spec(path: str | Path, shown: str | None = None) -> str:
    """Read a spec file as UTF-8 text with clear errors for binary, non-UTF-8 or huge files.

    `shown` is the name errors give the file (default: `path` as written).
    """
    p = Path(path)
    shown = str(path) if shown is None else shown
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
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SpecError("the file is UTF-16 text, not UTF-8", Pos(shown, 1, 1),
                        hint="save the spec as UTF-8")
    if b"\x00" in data:
        nul = data.index(b"\x00")
        line = data[:nul].count(b"\n") + 1
        col = nul - (data.rfind(b"\n", 0, nul) + 1) + 1
        # no source excerpt: quoting a binary file would print garbage to the terminal
        raise SpecError("this is a binary file, not a spec (it contains NUL bytes)",
                        Pos(shown, line, col), hint="specs are UTF-8 text files ending in .net")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        before = data[: e.start]             # valid UTF-8: e.start is the first bad byte
        line = before.count(b"\n") + 1
        line_start = before.rfind(b"\n") + 1
        col = len(before[line_start:].decode("utf-8")) + 1  # in characters, like the excerpt
        remember_source(shown, data.decode("utf-8", errors="replace"))  # to quote the line
        raise SpecError(f"the file is not valid UTF-8 (byte 0x{data[e.start]:02x})",
                        Pos(shown, line, col, col + 1),
                        hint="save the spec as UTF-8 (this byte suggests Latin-1 or "
                             "Windows-1252 text)") from None


def _check_text(text: str, file: str) -> None:
    if len(text) > MAX_FILE_BYTES:
        raise SpecError(f"spec is too large ({len(text):,} characters; the limit is {MAX_FILE_BYTES:,})",
                        Pos(file, 1, 1))
    if not text.strip() or all(l.strip().startswith("#") or not l.strip() for l in text.split("\n")):
        raise SpecError("empty spec: there is no network or block in it", Pos(file, 1, 1),
                        hint="a spec holds at least `network name() { input x: 1@28x28 ... }`")
    depth = deepest = 0
    line, col = 1, 0
    # brackets inside comments and strings do not nest; blank them out, keeping positions
    code = re.sub(r'#[^\n]*|"[^"\n]*"', lambda m: " " * len(m.group()), text)
    for ch in code:
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


KEYWORDS = ("in", "out", "input", "block", "network", "train", "import", "if", "else",
            "and", "or", "not", "true", "false", "none")
_KEYWORD_SET = frozenset(KEYWORDS)
_CLOSER = {"(": ")", "[": "]", "{": "}"}


def _syntax_error(e: lark.exceptions.UnexpectedInput, text: str, file: str) -> SpecError:
    line, col = max(e.line, 1), max(e.column, 1)
    if isinstance(e, lark.exceptions.UnexpectedCharacters):
        ch = text[e.pos_in_stream] if e.pos_in_stream < len(text) else ""
        msg = f"unexpected character {ch!r}"
        hint = None
        if ch == "'":
            hint = "strings use double quotes"
        elif ch == '"' and '"' in text[e.pos_in_stream + 1:].split("\n", 1)[0]:
            msg, hint = "bad string", "a string cannot hold a backslash"
        elif ch == '"':
            msg, hint = "unterminated string", "a string ends with \" on the same line"
        elif ch == "=" or ch in "!<>":
            hint = "comparisons are ==, !=, <, <=, >, >="
        return SpecError(msg, Pos(file, line, col, col + 1), hint)
    tok = getattr(e, "token", None)
    if isinstance(e, lark.exceptions.UnexpectedEOF) or tok is None or tok.type == "$END":
        return _eof_error(e, text, file)
    # UnexpectedToken
    offset = tok.start_pos if tok.start_pos is not None else len(text)
    end = col + len(str(tok.value))
    hint = _expected_hint(e.expected)
    # a keyword where a name was meant: `in = x -> relu`, `if -> out`
    before = re.search(r"([A-Za-z_][A-Za-z_0-9]*)[ \t]*-?\Z", text[:offset])
    if before and before.group(1) in KEYWORDS and (tok.value in ("=", ":", ">") or
                                                   text.startswith("->", offset)):
        word = before.group(1)
        kline = text.count("\n", 0, before.start(1)) + 1
        kcol = before.start(1) - (text.rfind("\n", 0, before.start(1)) + 1) + 1
        return SpecError(f"'{word}' is a keyword and cannot be used as a name",
                         Pos(file, kline, kcol, kcol + len(word)),
                         hint=f"choose another name, e.g. '{word}_'")
    if tok.value in KEYWORDS:
        hint = f"'{tok.value}' is a keyword and cannot be used here" + (f"; {hint}" if hint else "")
    notes = []
    open_ = _open_brackets(text, offset)
    if open_:
        ch, bline, bcol = open_[-1]
        if tok.value in _CLOSER.values() and tok.value != _CLOSER[ch] or \
                _CLOSER[ch] in [_TERMINAL_SYMBOLS.get(t) for t in e.expected]:
            notes.append((f"the '{ch}' opened here is not closed", Pos(file, bline, bcol, bcol + 1)))
    return SpecError(f"unexpected {_describe_token(tok)}", Pos(file, line, col, end), hint, notes)


_TERMINAL_SYMBOLS = {"RPAR": ")", "RSQB": "]", "RBRACE": "}"}


def _eof_error(e, text: str, file: str) -> SpecError:
    """The file ends too soon: point just after its last token, and at what is still open."""
    body = text.rstrip()
    line = body.count("\n") + 1
    col = len(body) - (body.rfind("\n") + 1) + 1
    open_ = _open_brackets(text, len(text))
    if open_:
        ch, bline, bcol = open_[-1]
        return SpecError("unexpected end of file", Pos(file, line, col),
                         hint=f"expected '{_CLOSER[ch]}' to close the '{ch}' on line {bline}",
                         notes=[(f"the '{ch}' opened here is not closed",
                                 Pos(file, bline, bcol, bcol + 1))])
    return SpecError("unexpected end of file", Pos(file, line, col),
                     hint=_expected_hint(getattr(e, "expected", None)))


def _open_brackets(text: str, upto: int) -> list[tuple[str, int, int]]:
    """Brackets opened before offset `upto` and not yet closed: (char, line, col), innermost last.

    Comments and strings are skipped; a closer that does not match is ignored.
    """
    stack: list[tuple[str, int, int]] = []
    line, line_start, i = 1, 0, 0
    while i < upto:
        ch = text[i]
        if ch == "\n":
            line, line_start = line + 1, i + 1
        elif ch == "#":
            j = text.find("\n", i)
            i = (j if j >= 0 else len(text))
            continue
        elif ch == '"':
            j = i + 1
            while j < len(text) and text[j] not in '"\n':
                j += 1
            i = j + 1 if j < len(text) and text[j] == '"' else j
            continue
        elif ch in _CLOSER:
            stack.append((ch, line, i - line_start + 1))
        elif ch in ")]}" and stack and _CLOSER[stack[-1][0]] == ch:
            stack.pop()
        i += 1
    return stack


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
        super().__init__(visit_tokens=False)  # no token callbacks: skip a failing getattr per token
        self.file = file

    def _ident(self, tok: Token) -> str:
        """A NAME token's text. Lark's contextual lexer reads a keyword as a NAME wherever the
        keyword itself cannot come next (`y = out`, `f(in=1)`, `block input()`), so the
        keywords are refused here, as the language reference says they are."""
        word = str(tok)
        if word in _KEYWORD_SET:
            raise SpecError(f"'{word}' is a keyword and cannot be used as a name", self._pos(tok),
                            hint=f"choose another name, e.g. '{word}_'")
        return word

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
        return A.BlockDef(self._ident(name), params or [], body, self._pos(name))

    @v_args(meta=True)
    def network_def(self, meta, c):
        name, params, *body = c
        return A.NetworkDef(self._ident(name), params or [], body, self._pos(name))

    def params(self, c):
        return [p for p in c if p is not None]

    def param(self, c):
        name, default = c
        return A.Param(self._ident(name), default, self._pos(name))

    # --- statements
    @v_args(meta=True)
    def in_stmt(self, meta, c):
        return A.In([self._ident(n) for n in c], self._pos(meta), [self._pos(n) for n in c])

    @v_args(meta=True)
    def input_stmt(self, meta, c):
        name, shape = c
        return A.Input(self._ident(name), shape, self._pos(name))

    def shape(self, c):
        tok = c[0]
        try:
            dims = parse_shape_text(str(tok))
        except ValueError as e:  # a 0 dimension: 0@32x32
            raise SpecError(f"bad shape: {e}", self._pos(tok),
                            hint="write C@HxW with every size at least 1, e.g. 3@224x224") from None
        return A.ShapeLit(dims, self._pos(tok))

    @v_args(meta=True)
    def out_stmt(self, meta, c):
        return A.Out(list(c), self._pos(meta))

    @v_args(meta=True)
    def assign(self, meta, c):
        return A.Assign(self._ident(c[0]), c[1], self._pos(c[0]))

    @v_args(meta=True)
    def expr_stmt(self, meta, c):
        return A.ExprStmt(c[0], self._pos(meta))

    @v_args(meta=True)
    def train_section(self, meta, c):
        return A.Train(list(c), self._pos(meta))

    def setting(self, c):
        return A.Setting(self._ident(c[0]), c[1], self._pos(c[0]))

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
        return self._ident(c[0])

    def repeat(self, c):
        return c[0]

    def layer_ref(self, c):
        return A.LayerCall(self._ident(c[0]), None, self._pos(c[0]))

    def layer_call(self, c):
        return A.LayerCall(self._ident(c[0]), c[1] or [], self._pos(c[0]))

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
        return A.Call(self._ident(c[0]), c[1] or [], self._pos(c[0]))

    def getattr(self, c):
        return A.GetAttr(c[0], self._ident(c[1]), self._pos(c[1]))

    def args(self, c):
        return [a if isinstance(a, A.Arg) else A.Arg(None, a, getattr(a, "pos", None))
                for a in c if a is not None]

    def kwarg(self, c):
        return A.Arg(self._ident(c[0]), c[1], self._pos(c[0]))

    # --- atoms
    def name(self, c):
        return A.Name(self._ident(c[0]), self._pos(c[0]))

    def int(self, c):
        try:
            return A.Const(int(c[0]), self._pos(c[0]))
        except ValueError:  # Python refuses to read integers of more than 4300 digits
            raise SpecError(f"number too large ({len(c[0]):,} digits)", self._pos(c[0])) from None

    def float(self, c):
        value = float(c[0])
        if value == float("inf"):  # 1e999
            raise SpecError("number too large", self._pos(c[0]),
                            hint="the largest number is about 1.8e308")
        return A.Const(value, self._pos(c[0]))

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
    words = text.split("@", 1)
    words = [words[0], *words[1].split("x")] if len(words) == 2 else words
    for w in words:  # not int(): it takes '+1' and '1_0'
        if not (w.isascii() and w.isdigit()):
            raise ValueError(f"'{w}' is not a whole number" if w else "a dimension is missing")
    dims = tuple(int(w) for w in words)
    if any(d < 1 for d in dims):
        raise ValueError(f"every dimension must be at least 1 in '{text}'")
    return dims
