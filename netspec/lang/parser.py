"""Text -> AST: the Lark LALR parser, a Transformer to dataclasses, readable syntax errors."""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import re
import stat
import sys
import threading
from pathlib import Path

import lark
from lark import Token, Transformer, v_args

from . import ast as A
from .layout import read_layout
from ..errors import Pos, SpecError, clip, normalise_source, remember_source
from ..paths import file_kind

GRAMMAR_PATH = Path(__file__).with_name("grammar.lark")

MAX_FILE_BYTES = 1_000_000      # a 10,000-line spec is 330 kB and checks in ~2 s: this bounds the time too
MAX_NESTING = 200               # brackets, and operators in a row, nested deeper than this are refused
MAX_INT = 10**18                # integers larger than this (literals, shapes, arithmetic) are refused
# Python frames the parser and the elaborator may use: a few per nesting level (200) and about
# ten per nested block call (64), well within a thread's C stack on Python 3.11+
RECURSION_ROOM = 20_000

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


# The comment tokens the lexer has passed, per thread, while _lark_keeping_comments parses.
_comments_seen = threading.local()


def _collect_comment(token: Token) -> Token:
    _comments_seen.tokens.append(token)
    return token


@functools.lru_cache(maxsize=1)
def _lark_keeping_comments() -> lark.Lark:
    """A second parser whose lexer also hands each (ignored) comment to _collect_comment:
    the usual one pays nothing for comments only `netspec fmt` needs."""
    return lark.Lark(GRAMMAR_PATH.read_text(), parser="lalr", propagate_positions=True,
                     maybe_placeholders=True, lexer_callbacks={"COMMENT": _collect_comment})


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


@contextlib.contextmanager
def recursion_room(limit: int = RECURSION_ROOM):
    """Let a block recurse deeper than Python's default 1000 frames, then restore the limit.

    Lark's transformer and the elaborator recurse a few frames per nesting level; the
    pre-scan (`_check_text`) bounds the nesting, and this makes room for what it allows,
    even inside 64 nested block calls.
    """
    old = sys.getrecursionlimit()
    if old < limit:
        sys.setrecursionlimit(limit)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def parse(text: str, file: str = "<spec>", keep_layout: bool = False) -> A.Module:
    """Parse spec text into a Module, or raise SpecError at the offending position.

    keep_layout: also keep the comments and line breaks (`module.layout`, see layout.py),
    which the printer then re-emits: `netspec fmt`.
    """
    with suspended_gc(), recursion_room():
        return _parse(normalise_source(text), file, keep_layout)


def _parse(text: str, file: str, keep_layout: bool = False) -> A.Module:
    _check_text(text, file)
    _comments_seen.tokens = []
    try:
        tree = (_lark_keeping_comments() if keep_layout else _lark()).parse(text)
    except lark.exceptions.UnexpectedInput as e:
        raise _syntax_error(e, text, file) from None
    finally:
        comments, _comments_seen.tokens = _comments_seen.tokens, []
    try:
        module = _ToAst(file).transform(tree)
    except lark.exceptions.VisitError as e:  # lark wraps what a transformer method raises
        if isinstance(e.orig_exc, SpecError):
            raise e.orig_exc from None
        raise
    module.file = file
    if keep_layout:
        module.layout = read_layout(module, text, comments)
    return module


_NONBLOCK = getattr(os, "O_NONBLOCK", 0)   # (not on Windows, which has no FIFOs to open)


def read_spec(path: str | Path, shown: str | None = None) -> str:
    """Read a spec file as UTF-8 text with clear errors for binary, non-UTF-8 or huge files.

    Only a regular file is read (a pipe would block, /dev/zero would never end), and at most
    MAX_FILE_BYTES + 1 bytes of it, whatever its size claims. `shown` is the name errors give
    the file (default: `path` as written).
    """
    shown = str(path) if shown is None else shown
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then refuses it
        fd = os.open(path, os.O_RDONLY | _NONBLOCK)
    except FileNotFoundError:
        raise SpecError(f"no such file: '{clip(shown, 200)}'") from None
    except IsADirectoryError:
        raise SpecError(f"'{clip(shown, 200)}' is a folder, not a spec file") from None
    except PermissionError:
        raise SpecError(f"cannot read '{clip(shown, 200)}': permission denied") from None
    except OSError as e:
        raise SpecError(f"cannot read '{clip(shown, 200)}': {e.strerror or e}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise SpecError(f"'{clip(shown, 200)}' is a folder, not a spec file")
        if not stat.S_ISREG(mode):
            raise SpecError(f"'{clip(shown, 200)}' is not a regular file (it is {file_kind(mode)})",
                            hint="a spec is a text file ending in .net; save generated text to a "
                                 "file first, or load it from Python with netspec.loads(text)")
        if _NONBLOCK:
            os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_FILE_BYTES + 1)   # a size from stat may be 0 (/proc) or wrong
    except OSError as e:
        raise SpecError(f"cannot read '{clip(shown, 200)}': {e.strerror or e}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise SpecError(f"spec file is too large (more than {MAX_FILE_BYTES:,} bytes, the limit)",
                        Pos(shown, 1, 1))
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SpecError("the file is UTF-16 text, not UTF-8", Pos(shown, 1, 1),
                        hint="save the spec as UTF-8")
    if b"\r" in data and b"\n" not in data:
        # old Mac line endings: lines end at \r, as editors detect it, not one long comment
        data = data.replace(b"\r", b"\n")
    if b"\x00" in data:
        line, col = _position(data[:data.index(b"\x00")].decode("utf-8", errors="replace"))
        # no source excerpt: quoting a binary file would print garbage to the terminal
        raise SpecError("this is a binary file, not a spec (it contains NUL bytes)",
                        Pos(shown, line, col), hint="specs are UTF-8 text files ending in .net")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        # data[:e.start] is valid UTF-8; columns count characters, like the excerpt
        line, col = _position(data[: e.start].decode("utf-8"))
        remember_source(shown, data.decode("utf-8", errors="replace"))  # to quote the line
        raise SpecError(f"the file is not valid UTF-8 (byte 0x{data[e.start]:02x})",
                        Pos(shown, line, col, col + 1),
                        hint="save the spec as UTF-8 (this byte suggests Latin-1 or "
                             "Windows-1252 text)") from None


def _position(before: str) -> tuple[int, int]:
    """(line, column) just after `before`, counted as the parser counts them."""
    before = normalise_source(before)
    return before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1


def _check_text(text: str, file: str) -> None:
    if len(text) > MAX_FILE_BYTES:
        raise SpecError(f"spec is too large ({len(text):,} characters; the limit is {MAX_FILE_BYTES:,})",
                        Pos(file, 1, 1))
    if not text.strip() or all(l.strip().startswith("#") or not l.strip() for l in text.split("\n")):
        raise SpecError("empty spec: there is no network or block in it", Pos(file, 1, 1),
                        hint="a spec holds at least `network name() { input x: 1@28x28 ... }`")
    _check_nesting(text, file)


# The tokens that matter to nesting, in the order the lexer would prefer them (a number
# before `.`, `->` before `-`, `==` before `=`). Other characters are left to the parser.
_NESTING_TOKEN = re.compile(r"""
    (?P<operand>[0-9]+@[0-9]+(?:x[0-9]+)*
              | [0-9]+\.[0-9]*(?:[eE][-+]?[0-9]+)? | [0-9]+[eE][-+]?[0-9]+
              | \.[0-9]+(?:[eE][-+]?[0-9]+)? | [0-9]+
              | [A-Za-z_][A-Za-z_0-9]* | \x00)
  | (?P<open>[(\[{])
  | (?P<close>[)\]}])
  | (?P<reset>->)
  | (?P<op>==|!=|<=|>=|//|[-+*/%<>.])
  | (?P<reset2>[,:=])
""", re.X)
_OPERATOR_WORDS = frozenset(("and", "or", "not", "if", "else"))
_STATEMENT_WORDS = frozenset(("in", "out", "input", "block", "network", "train", "detect", "import"))


def _check_nesting(text: str, file: str) -> None:
    """Refuse nesting deeper than MAX_NESTING before the parser and the AST recurse into it.

    A level is a bracket, or an operator in an unbroken run of them (`- - x`, `not not b`,
    `a + b * c`, `x.shape`, `a if c else b`): a run of n operators makes an expression tree
    at most n deep, and the trees of bracketed runs nest in the runs around them. A run ends
    at `,`, `=`, `:`, `->`, a statement keyword, or where a new statement begins (an operand
    right after an operand). One pass of a regular expression, so 1 MB of `- - -` is refused
    at its 201st level at once, at the place it passes the limit.
    """
    # brackets inside comments and strings do not nest; blank them out, keeping positions
    # (a string becomes a NUL, one operand; a NUL in the text itself is a lexer error anyway)
    code = re.sub(r'#[^\n]*|"[^"\n]*"', lambda m: " " * len(m.group()) if m.group()[0] == "#"
                  else "\x00" + " " * (len(m.group()) - 1), text)
    stack: list[tuple] = []   # the enclosing levels' saved state, and their bracket
    above = 0                 # nesting of the enclosing levels: each one's run of operators + 1
    ops = child = best = 0    # this level: operators in the current run, the deepest bracket in
    start = None              # it, the deepest run so far; where the current run begins
    after_operand = False
    for m in _NESTING_TOKEN.finditer(code):
        kind = m.lastgroup
        if kind == "operand":
            word = m.group()
            if word in _OPERATOR_WORDS:
                kind = "op"
            elif word in _STATEMENT_WORDS or after_operand:       # a new statement begins
                best, ops, child = max(best, ops + child), 0, 0
                start = None if word in _STATEMENT_WORDS else m.start()
                after_operand = word not in _STATEMENT_WORDS
                continue
            else:
                start = m.start() if start is None else start
                after_operand = True
                continue
        if kind == "op":
            start = m.start() if start is None else start
            ops += 1
            after_operand = False
            if above + ops + child > MAX_NESTING:
                raise _too_deep(text, file, m.start(), _statement_start(stack, start), False)
        elif kind == "open":
            start = m.start() if start is None else start
            stack.append((ops, child, best, start, m.group()))
            above += ops + 1
            ops = child = best = 0
            start = None
            after_operand = False
            if above > MAX_NESTING:
                raise _too_deep(text, file, m.start(), _statement_start(stack, start),
                                brackets_only=len(stack) == above)
        elif kind == "close":
            if not stack:                  # unbalanced: the parser says where
                continue
            inner = max(best, ops + child)
            ops, child, best, start, _ = stack.pop()
            above -= ops + 1
            child = max(child, inner + 1)
            after_operand = True
        else:   # `->`, `,`, `:`, `=`: the run of operators ends
            best, ops, child = max(best, ops + child), 0, 0
            start = None
            after_operand = False


def _statement_start(stack: list[tuple], start: int | None) -> int | None:
    """Where the statement being scanned begins: the run inside the innermost `{`."""
    for i in range(len(stack) - 1, -1, -1):
        if stack[i][4] == "{":
            return stack[i + 1][3] if i + 1 < len(stack) else start
    return stack[0][3] if stack else start


def _too_deep(text: str, file: str, offset: int, start: int | None,
              brackets_only: bool) -> SpecError:
    line, col = _position(text[:offset])
    if brackets_only:
        return SpecError(f"brackets nested more than {MAX_NESTING} deep", Pos(file, line, col),
                         hint="split the expression into named values: `a = ...`")
    notes = []
    if start is not None and start < offset:
        sline, scol = _position(text[:start])
        notes.append(("the expression starts here", Pos(file, sline, scol)))
    return SpecError(f"expression nested too deeply: more than {MAX_NESTING} levels",
                     Pos(file, line, col, col + 1),
                     hint="each bracket, and each operator in a row (`- - x`, `not not b`, "
                          "`a + b + c`), is a level; split it into named values: `a = ...`",
                     notes=notes)


def _describe_token(tok: Token) -> str:
    if tok.type == "$END":
        return "end of file"
    return f"'{clip(str(tok.value), 60)}'"


KEYWORDS = ("in", "out", "input", "block", "network", "train", "detect", "import", "if", "else",
            "and", "or", "not", "true", "false", "none")
_KEYWORD_SET = frozenset(KEYWORDS)
SECTIONS = frozenset(("train", "detect"))   # keywords that open a `{ setting = value ... }` section
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
    if tok.value == ":":
        colon = _colon_error(text, offset, file)
        if colon is not None:
            return colon
    notes = []
    open_ = _open_brackets(text, offset)
    # a note on the innermost open bracket if the parser could close it here and the file
    # never does (`y = u: b(x)` expects `}` too, but the network's `{` is closed further on)
    if open_ and open_[-1] in _open_brackets(text, len(text)):
        ch, bline, bcol = open_[-1]
        if tok.value in _CLOSER.values() and tok.value != _CLOSER[ch] or \
                _CLOSER[ch] in [_TERMINAL_SYMBOLS.get(t) for t in e.expected]:
            notes.append((f"the '{ch}' opened here is not closed", Pos(file, bline, bcol, bcol + 1)))
    return SpecError(f"unexpected {_describe_token(tok)}", Pos(file, line, col, end), hint, notes)


_TERMINAL_SYMBOLS = {"RPAR": ")", "RSQB": "]", "RBRACE": "}"}

# a colon after a name: `u: b(...)` is a label, `in x: 3@8x8` a shape, `lr: 0.1` a value
_NAME_BEFORE = re.compile(r"([A-Za-z_][A-Za-z_0-9]*)[ \t]*\Z")
_LAYER_AFTER = re.compile(r":[ \t]*([A-Za-z_][A-Za-z_0-9]*|\()")


def _colon_error(text: str, offset: int, file: str) -> SpecError | None:
    """The error for an unexpected ':' after a name, if the mistake is clear: a label where
    there is no chain stage (`y = u: b(x, 4)`), a shape on a block input (`in x: 3@8x8`),
    or a colon for `=` (`conv(filters: 8)`, `lr: 0.1`)."""
    before = _NAME_BEFORE.search(text, 0, offset)
    if not before or before.group(1) in _KEYWORD_SET:
        return None
    name = before.group(1)
    line, col = _position(text[:before.start()])
    line_start = text.rfind("\n", 0, before.start()) + 1
    if re.match(r"[ \t]*in\b", text[line_start:before.start()]):
        return SpecError("a block's inputs take no shape", Pos(file, *_position(text[:offset])),
                         hint="write `in x`: the shape comes from the value passed in")
    after = _LAYER_AFTER.match(text, offset)
    if after and after.group(1) not in _KEYWORD_SET and not _in_arguments(text, offset):
        return SpecError(f"a label ('{name}:') can only name a stage of a chain",
                         Pos(file, line, col, col + len(name) + 1),
                         hint=f"apply the layer in a chain: `x -> {name}: layer(...)`; "
                              "a call such as `layer(x, ...)` takes no label")
    return SpecError("unexpected ':'", Pos(file, *_position(text[:offset])),
                     hint=f"a keyword argument or a setting is written `{name}=value`")


def _in_arguments(text: str, offset: int) -> bool:
    """Whether `offset` is in a call's arguments (`conv(...)`) or a section (`train {`, `detect {`)."""
    open_ = _open_brackets(text, offset)
    if not open_:
        return False
    ch, line, col = open_[-1]
    start = sum(len(l) + 1 for l in text.split("\n", line - 1)[:line - 1]) + col - 1
    before = _NAME_BEFORE.search(text, 0, start)
    return before is not None and (ch == "(" and before.group(1) not in _KEYWORD_SET
                                   or ch == "{" and before.group(1) in SECTIONS)


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

    def _end(self, meta) -> Pos:
        """Where a `{ ... }` construct's closing brace is."""
        return Pos(self.file, meta.end_line, meta.end_column - 1, meta.end_column)

    # --- top level
    def start(self, items):
        return A.Module(list(items), self.file)

    @v_args(meta=True)
    def import_stmt(self, meta, c):
        return A.Import(_string(c[0]), self._pos(meta))

    @v_args(meta=True)
    def block_def(self, meta, c):
        name, params, *body = c
        inputs = [(n, p) for s in body if isinstance(s, A.In) for n, p in zip(s.names, s.name_pos)]
        _refuse_twice(inputs, "input", "a block's inputs need different names")
        return A.BlockDef(self._ident(name), params or [], body, self._pos(name), self._end(meta))

    @v_args(meta=True)
    def network_def(self, meta, c):
        name, params, *body = c
        return A.NetworkDef(self._ident(name), params or [], body, self._pos(name), self._end(meta))

    def params(self, c):
        params = [p for p in c if p is not None]
        _refuse_twice([(p.name, p.pos) for p in params], "parameter",
                      "parameters need different names")
        return params

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
        except ValueError as e:  # a 0 dimension: 0@32x32, or one beyond 10^18
            raise SpecError(f"bad shape: {e}", self._pos(tok),
                            hint="write C@HxW (a feature map) or TxF (a sequence) with every "
                                 "size at least 1 (and at most 10^18), e.g. 3@224x224 or "
                                 "197x768") from None
        return A.ShapeLit(dims, self._pos(tok))

    @v_args(meta=True)
    def out_stmt(self, meta, c):
        return A.Out(list(c), self._pos(meta))

    @v_args(meta=True)
    def assign(self, meta, c):
        return A.Assign(self._ident(c[0]), c[1], self._pos(c[0]))

    @v_args(meta=True)
    def unpack(self, meta, c):
        *names, value = c
        _refuse_twice([(str(n), self._pos(n)) for n in names if str(n) != "_"], "name",
                      "each name takes one value; `_` takes one and names nothing")
        return A.Unpack([self._ident(n) for n in names], value, self._pos(names[0]),
                        [self._pos(n) for n in names])

    @v_args(meta=True)
    def expr_stmt(self, meta, c):
        return A.ExprStmt(c[0], self._pos(meta))

    @v_args(meta=True)
    def train_section(self, meta, c):
        return A.Train(list(c), self._pos(meta), self._end(meta))

    @v_args(meta=True)
    def detect_section(self, meta, c):
        return A.Detect(list(c), self._pos(meta), self._end(meta))

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
        # a literal beyond MAX_INT is refused where it is used (elaborate.py), which keeps any
        # parsed module printable; Python itself refuses to read more than 4300 digits
        try:
            return A.Const(int(c[0]), self._pos(c[0]))
        except ValueError:
            raise SpecError(f"number too large ({len(c[0]):,} digits)", self._pos(c[0]),
                            hint=f"integers go up to 10^18 ({MAX_INT:,})") from None

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


def _refuse_twice(names: list[tuple[str, Pos | None]], what: str, hint: str) -> None:
    """A SpecError at the second of two equal names (`network p(a=8, a=16)`, `in x, x`)."""
    first: dict[str, Pos | None] = {}
    for name, pos in names:
        if name in first:
            raise SpecError(f"{what} '{name}' is declared twice", pos, hint=hint,
                            notes=[("first declared here", first[name])])
        first[name] = pos


def _string(tok) -> str:
    return str(tok)[1:-1]


def parse_shape_text(text: str) -> tuple[int, ...]:
    """'3@224x224' -> (3, 224, 224); '197x768' -> (197, 768), a sequence; '784' -> (784,).
    Raises ValueError."""
    text = text.strip()
    words = text.split("@", 1)
    if len(words) == 2:
        words = [words[0], *words[1].split("x")]
        if len(words) == 2:    # 3@224 would read as a sequence: a map has a height and a width
            raise ValueError(f"'{clip(text, 60)}' has no width: a feature map is C@HxW")
    else:
        words = text.split("x")
    for w in words:  # not int(): it takes '+1' and '1_0'
        if not (w.isascii() and w.isdigit()):
            raise ValueError(f"'{w}' is not a whole number" if w else "a dimension is missing")
    for w in words:  # before int(): it refuses more than 4300 digits
        if len(w.lstrip("0")) > 19 or int(w) > MAX_INT:
            raise ValueError(f"number too large: {clip(w, 40)} ({len(w):,} digits; the limit "
                             "is 10^18)")
    dims = tuple(int(w) for w in words)
    if any(d < 1 for d in dims):
        raise ValueError(f"every dimension must be at least 1 in '{clip(text, 60)}'")
    return dims
