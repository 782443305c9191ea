"""Highlighting .net specs: the Pygments lexer and the TextMate grammar, both checked token by
token against Lark's lexer (the parser's own reading of the text) on every shipped spec."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
from pygments.lexers import get_lexer_by_name, get_lexer_for_filename
from pygments.token import Comment, Error, Keyword, Name, Number, Operator, Punctuation, String

from netspec.lang.highlight import NetspecLexer
from netspec.lang.parser import KEYWORDS, _comments_seen, _lark_keeping_comments
from netspec.lang.values import BUILTINS
from netspec.ops import OPS

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "specs").rglob("*.net"))
GRAMMAR = ROOT / "tools" / "editors" / "netspec.tmLanguage.json"
OPERATORS = {"ADD_OP", "MUL_OP", "COMP_OP", "NEG_OP", "__ANON_0", "EQUAL", "STAR"}
PUNCTUATION = {"LPAR", "RPAR", "LBRACE", "RBRACE", "LSQB", "RSQB", "COMMA", "COLON", "DOT"}


def lark_tokens(text: str) -> list[tuple[int, int, str, str]]:
    """(line, column from 0, kind, text) of every token of the text, comments included, as the
    parser's lexer reads them. kind: keyword, op, builtin, definition, name, integer, float,
    shape, string, comment, operator or punctuation."""
    _comments_seen.tokens = []
    lexed = list(_lark_keeping_comments().lex(text))
    out, previous = [], None
    for t in [*lexed, *_comments_seen.tokens]:
        value = str(t)
        if t.type == "NAME":
            kind = ("definition" if previous in ("BLOCK", "NETWORK") else "op" if value in OPS
                    else "builtin" if value in BUILTINS else "name")
        elif value in KEYWORDS and t.type == value.upper():
            kind = "keyword"
        elif t.type in OPERATORS:
            kind = "operator"
        elif t.type in PUNCTUATION:
            kind = "punctuation"
        else:
            kind = {"INT": "integer"}.get(t.type, t.type.lower())    # FLOAT, SHAPE, STRING, COMMENT
        out.append((t.line, t.column - 1, kind, value))
        previous = t.type
    return sorted(out)


def test_the_parsers_tokens_cover_every_kind_in_the_specs():
    kinds = {kind for path in SHIPPED for _, _, kind, _ in lark_tokens(path.read_text())}
    assert kinds == {"keyword", "op", "builtin", "definition", "name", "integer", "float", "shape",
                     "string", "comment", "operator", "punctuation"}


# ---------------------------------------------------------------- Pygments

PYGMENTS_KIND = {"op": Name.Builtin, "builtin": Name.Builtin.Pseudo, "definition": Name.Class,
                 "name": Name, "integer": Number.Integer, "float": Number.Float, "shape": Number,
                 "string": String.Double, "comment": Comment.Single, "operator": Operator,
                 "punctuation": Punctuation}


def pygments_kind(kind: str, value: str):
    if kind != "keyword":
        return PYGMENTS_KIND[kind]
    if value in ("true", "false", "none"):
        return Keyword.Constant
    if value in ("and", "or", "not"):
        return Operator.Word
    return Keyword.Declaration if value in ("block", "network") else Keyword


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_pygments_gives_every_token_of_a_spec_its_type(path):
    text = path.read_text()
    starts = [0]
    for line in text.split("\n"):
        starts.append(starts[-1] + len(line) + 1)
    found = {}
    for index, token, value in NetspecLexer().get_tokens_unprocessed(text):
        assert token is not Error, f"{path.name}: Error token {value!r} at offset {index}"
        found[index] = (token, value)
    for line, column, kind, value in lark_tokens(text):
        token, lexed = found.get(starts[line - 1] + column, (None, None))
        assert (token, lexed) == (pygments_kind(kind, value), value), (path.name, line, column, kind)


def test_the_lexer_is_registered_by_name_alias_and_file_name():
    for name in ("netspec", "net"):
        assert type(get_lexer_by_name(name)) is NetspecLexer
    assert type(get_lexer_for_filename("specs/lenet5.net")) is NetspecLexer


def test_unknown_characters_are_error_tokens():
    tokens = list(NetspecLexer().get_tokens("x = 'a' $"))
    assert [v for t, v in tokens if t is Error] == ["'", "'", "$"]


# ---------------------------------------------------------------- TextMate

def load_tool():
    spec = importlib.util.spec_from_file_location("make_tmlanguage", ROOT / "tools" / "make_tmlanguage.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_textmate_grammar_is_up_to_date():
    assert GRAMMAR.read_text() == load_tool().grammar_text(), \
        "run python tools/make_tmlanguage.py and commit tools/editors/netspec.tmLanguage.json"


def textmate_scopes(line: str, patterns: list[dict]) -> dict[int, tuple[str, str]]:
    """{column: (scope, text)} for one line, scanned as TextMate scans it: at each point the
    pattern matching earliest wins, the first in the list on a tie; then on past its match."""
    compiled = [re.compile(p["match"]) for p in patterns]
    out, position = {}, 0
    while position < len(line):
        best = None
        for pattern, regex in zip(patterns, compiled):
            m = regex.search(line, position)
            if m and m.end() > m.start() and (best is None or m.start() < best[1].start()):
                best = (pattern, m)
        if best is None:
            break
        pattern, m = best
        if "name" in pattern:
            out[m.start()] = (pattern["name"], m.group())
        for group, capture in pattern.get("captures", {}).items():
            out[m.start(int(group))] = (capture["name"], m.group(int(group)))
        position = m.end()
    return out


TEXTMATE_KIND = {"op": "support.function.op", "builtin": "support.function.builtin",
                 "definition": "entity.name.type", "name": "variable.other",
                 "integer": "constant.numeric.integer", "float": "constant.numeric.float",
                 "shape": "constant.numeric.shape", "string": "string.quoted.double",
                 "comment": "comment.line.number-sign", "operator": "keyword.operator",
                 "punctuation": "punctuation"}


def textmate_kind(kind: str, value: str) -> str:
    if kind != "keyword":
        return TEXTMATE_KIND[kind] + ".netspec"
    if value in ("true", "false", "none"):
        return "constant.language.netspec"
    if value in ("and", "or", "not"):
        return "keyword.operator.word.netspec"
    return "storage.type.netspec" if value in ("block", "network") else "keyword.control.netspec"


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_the_textmate_grammar_gives_every_token_of_a_spec_its_scope(path):
    patterns = json.loads(GRAMMAR.read_text())["patterns"]
    text = path.read_text()
    lines = text.split("\n")
    scopes = {}
    for number, line in enumerate(lines, start=1):
        for column, found in textmate_scopes(line, patterns).items():
            scopes[number, column] = found
    for line, column, kind, value in lark_tokens(text):
        assert scopes.get((line, column)) == (textmate_kind(kind, value), value), \
            (path.name, line, column, kind, value)
