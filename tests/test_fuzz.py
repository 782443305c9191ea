"""Fuzzing the front end: whatever the text, netspec answers with a result or a SpecError.

(a) whole programs generated from the grammar itself (hypothesis.extra.lark);
(b) the real specs in specs/, mutated: spans deleted, numbers swapped or made
    huge/zero/negative, odd unicode inserted, lines duplicated, text truncated.

Anything but SpecError (RecursionError, KeyError, TypeError, lark's own errors...)
is a bug. Programs that parse must also survive printer.to_text round trips.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

import lark
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.lark import from_lark

import netspec
from netspec.ops import OPS
from netspec.lang.parser import GRAMMAR_PATH, parse
from netspec.lang.printer import to_text

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.net"))
SPEC_TEXTS = [p.read_text(encoding="utf-8") for p in SPECS]

FUZZ = dict(deadline=None, database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                   HealthCheck.large_base_example, HealthCheck.filter_too_much])


def outcome(text: str) -> str:
    """'ok', 'parsed' (elaboration refused it) or 'syntax' (the parser refused it).

    Raises whatever is not a SpecError: that is the bug the fuzzers look for.
    """
    try:
        module = parse(text, "fuzz.net")
    except netspec.SpecError:
        try:  # loads must refuse it too, the same way
            netspec.loads(text, "fuzz.net")
        except netspec.SpecError:
            return "syntax"
        raise AssertionError("parse refused a spec that loads accepted")
    printed = to_text(module)  # a parsed module always prints back to itself
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 20_000))  # dataclass == recurses on deep expressions
    try:
        assert parse(printed, "printed.net") == module, printed
    finally:
        sys.setrecursionlimit(old)
    try:
        netspec.loads(text, "fuzz.net")
    except netspec.SpecError as e:
        assert e.message, "a SpecError without a message"
        return "parsed"
    return "ok"


# ------------------------------------------------------------------ (a) grammar-generated programs

def _word(strategy):
    """A token with a space either side, so adjacent tokens never merge (`conv 64`, not `conv64`)."""
    return strategy.map(lambda s: f" {s} ")


KEYWORD_TERMINALS = {  # the grammar's anonymous keyword terminals: "in" is IN, and so on
    "IMPORT": "import", "BLOCK": "block", "NETWORK": "network", "IN": "in", "INPUT": "input",
    "OUT": "out", "TRAIN": "train", "IF": "if", "ELSE": "else", "OR": "or", "AND": "and",
    "NOT": "not", "TRUE": "true", "FALSE": "false", "NONE": "none",
}
# names a spec uses: values, symbols, the train section's words, and every op the registry has
NAMES = ["x"] * 6 + ["y", "a", "n", "f", "s", "same", "valid", "channels", "stride", "pad", "unit",
                     "classes", "sgd", "lr", "loss", "batch", "epochs", "optimizer", *OPS]

EXPLICIT = {
    "NAME": _word(st.sampled_from(NAMES)),
    "INT": _word(st.sampled_from([1, 2, 3, 4, 8, 16, 32, 64])),
    "FLOAT": _word(st.sampled_from(["0.5", "1.0", "1e-3", ".25", "2.5e2", "0.0"])),
    "STRING": _word(st.sampled_from(['"lib.net"', '"lib.net"', '"x.net"', '""', '"../x.net"',
                                     '"é ☃"', '"same"'])),
    "SHAPE": _word(st.sampled_from(["3@8x8", "1@4x4", "2@6x6", "1@1x1", "4@8", "3@8x8x2"])),
    "COMP_OP": _word(st.sampled_from(["==", "!=", "<", "<=", ">", ">="])),
    "ADD_OP": _word(st.sampled_from(["+", "-"])),
    "MUL_OP": _word(st.sampled_from(["*", "/", "//", "%"])),
    "NEG_OP": _word(st.sampled_from(["-", "+"])),
    # %ignore'd tokens: from_lark emits them only now and then; a comment needs its newline
    "WS": st.sampled_from([" ", "\n", "\t", "\r\n"]),
    "COMMENT": st.sampled_from(["# c\n", "#\n", "# é ( [ {\n"]),
    **{name: st.just(f" {kw} ") for name, kw in KEYWORD_TERMINALS.items()},
}

LIB = """block unit(f=4, s=1) {
    in x
    out x -> conv(f, 3, stride=s, pad=same) -> batchnorm -> relu
}
"""


# Expression rules nest about ten deep (test -> chain -> or_test -> ... -> atom), and each
# level's recursive alternative is drawn half the time, so untamed draws mostly blow past
# hypothesis's depth limit ("max depth exceeded": ~70% of draws thrown away, 5x slower).
# Favouring each rule's least recursive alternatives keeps programs small but varied.
EXPRESSION_RULES = {"test", "chain", "or_test", "and_test", "not_test", "comparison", "arith",
                    "term", "factor", "atom_expr", "atom", "layer"}
SHALLOW_WEIGHT = 10


def _grammar(start: str):
    grammar = lark.Lark(GRAMMAR_PATH.read_text(encoding="utf-8"), parser="lalr")
    terminals, rules, ignored = grammar.grammar.compile([start], ())
    used = {t.name for t in terminals} | set(ignored)  # from_lark refuses strategies for others
    strategy = from_lark(grammar, start=start,
                         explicit={k: v for k, v in EXPLICIT.items() if k in used})
    # hypothesis internals: without them the strategy still works, only more slowly
    table = getattr(getattr(strategy, "wrapped_strategy", None), "nonterminal_strategies", None)
    if isinstance(table, dict):
        for name in EXPRESSION_RULES & set(table):
            expansions = sorted((tuple(r.expansion) for r in rules if r.origin.name == name), key=len)
            inner = [sum(not sym.is_term for sym in e) for e in expansions]
            table[name] = st.sampled_from([e for e, n in zip(expansions, inner)
                                           for _ in range(SHALLOW_WEIGHT if n == min(inner) else 1)])
    return strategy


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder as cwd, with lib.net to import (imports resolve against cwd)."""
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "lib.net").write_text(LIB)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_grammar_generated_programs_give_results_or_spec_errors(project):
    counts: Counter = Counter()

    @settings(max_examples=300, **FUZZ)
    @given(_grammar("start"))
    def check(text):
        counts[outcome(text)] += 1

    check()  # runs all examples here, so the share below does not depend on test order
    total = sum(counts.values())
    share = (counts["ok"] + counts["parsed"]) / total
    print(f"\ngrammar fuzz, whole programs: {total} programs, {share:.0%} parsed "
          f"({counts['ok']} elaborated, {counts['parsed']} refused by elaboration, "
          f"{counts['syntax']} syntax errors)")
    assert total >= 100
    assert share >= 0.30, counts


def _in_network(statements: str) -> str:
    """Generated statements inside a network that has an input and an output already."""
    return ('import "lib.net"\n\nnetwork net(n=2, classes=10) {\n    input x: 3@8x8\n'
            f"{statements}\n    x -> unit -> out\n}}\n")


@pytest.mark.slow
def test_grammar_generated_statements_give_results_or_spec_errors(project):
    counts: Counter = Counter()

    @settings(max_examples=300, **FUZZ)
    @given(st.lists(_grammar("stmt"), min_size=1, max_size=4))
    def check(statements):
        counts[outcome(_in_network("\n".join(statements)))] += 1

    check()
    print(f"\ngrammar fuzz, statements in a network: {dict(counts)}")
    assert counts["ok"] + counts["parsed"] >= 0.30 * sum(counts.values()), counts


# ------------------------------------------------------------------ (b) mutated real specs

TOKEN = re.compile(r"\s+|[A-Za-z_][A-Za-z_0-9]*|[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?|->|.", re.S)
NUMBER = re.compile(r"(?<![A-Za-z_0-9.])[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
ODD_CHARS = ["\u200f", "\u200e", "\u202e", "\u2066", "\ufeff", "\u00a0", "\u2028", "\u0301", "😀",
             "👩‍👩‍👧", "\x01", "\x0b", "\x0c", "\x1b", "\x7f", "\r", "\t", "\ud7ff", "é", "ﬁ", "𝟘", "٣",
             "\\", '"', "'", "#", "@", "(", ")", "[", "]", "{", "}", "->", ",", ":", "=", "*", "-"]
NUMBER_SUBSTITUTES = ["0", "-1", str(10**12), str(10**30), "1e308", "1e-320", "0.0", "999999",
                      "3.5", "-0"]


@st.composite
def mutate(draw, text: str) -> str:
    kind = draw(st.sampled_from(["delete", "swap", "number", "insert", "duplicate", "truncate"]))
    if not text:
        return draw(st.sampled_from(["", "\n", "#", "network"]))
    if kind == "delete":
        toks = TOKEN.findall(text)
        i = draw(st.integers(0, len(toks) - 1))
        j = draw(st.integers(i + 1, min(len(toks), i + 8)))
        return "".join(toks[:i] + toks[j:])
    if kind in ("swap", "number"):
        spans = [m.span() for m in NUMBER.finditer(text)]
        if len(spans) < 2:
            return text
        if kind == "number":
            a, b = draw(st.sampled_from(spans))
            return text[:a] + draw(st.sampled_from(NUMBER_SUBSTITUTES)) + text[b:]
        i, j = sorted(draw(st.lists(st.integers(0, len(spans) - 1), min_size=2, max_size=2,
                                    unique=True)))
        (a1, b1), (a2, b2) = spans[i], spans[j]
        return text[:a1] + text[a2:b2] + text[b1:a2] + text[a1:b1] + text[b2:]
    if kind == "insert":
        at = draw(st.integers(0, len(text)))
        ch = draw(st.sampled_from(ODD_CHARS) |
                  st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)),
                          min_size=1, max_size=3))
        return text[:at] + ch + text[at:]
    if kind == "duplicate":
        lines = text.split("\n")
        i = draw(st.integers(0, len(lines) - 1))
        return "\n".join(lines[:i + 1] + [lines[i]] + lines[i + 1:])
    at = draw(st.integers(0, len(text)))  # truncate
    return text[:at]


@st.composite
def mutants(draw) -> str:
    text = draw(st.sampled_from(SPEC_TEXTS))
    for _ in range(draw(st.integers(1, 3))):
        text = draw(mutate(text))
    return text


def test_specs_exist():
    assert SPEC_TEXTS


@pytest.mark.slow
def test_mutated_specs_give_results_or_spec_errors(monkeypatch):
    monkeypatch.chdir(ROOT / "specs")  # their imports (lib/...) resolve against cwd
    counts: Counter = Counter()

    @settings(max_examples=400, **FUZZ)
    @given(mutants())
    def check(text):
        counts[outcome(text)] += 1

    check()
    print(f"\nmutation fuzz: {dict(counts)}")
    assert counts["syntax"] and counts["parsed"] + counts["ok"]  # both kinds were exercised


# ------------------------------------------------------------------ crashes found by fuzzing

def _loads_outcome(text):
    try:
        netspec.loads(text)
        return "ok"
    except netspec.SpecError as e:
        return e.message


def test_zero_in_a_shape_literal_is_a_spec_error():
    # was lark.exceptions.VisitError(ValueError) from the transformer
    assert "at least 1" in _loads_outcome("network n() { input x: 0@3x3\n x -> out }")


def test_deep_ternary_is_a_spec_error():
    # was lark.exceptions.VisitError(RecursionError)
    src = "network n() { input x: 3@8x8\n y = " + "1 if true else " * 600 + "1\n x -> out }"
    assert "nested too deeply" in _loads_outcome(src)


@pytest.mark.parametrize("src", [
    "network n() { input x: 3@8x8\n y = out\n x -> out }",          # was Name('out')
    "network n() { input x: 3@8x8\n x -> conv(4, 3, in=1) -> out }",
    "block input() { in x\n out x }\nnetwork n() { input x: 3@8x8\n x -> out }",
    "network n() { input x: 3@8x8\n x -> out\n train { not = 1 } }",
    "network n() { input x: 3@8x8\n y = x.if\n x -> out }",
    "network n(train=1) { input x: 3@8x8\n x -> out }",
])
def test_keywords_are_not_names_anywhere(src):
    # lark's contextual lexer read a keyword as a NAME wherever the keyword could not
    # come next; the AST then held names the printer (and the reference) call keywords
    assert "is a keyword" in _loads_outcome(src)
