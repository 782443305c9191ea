"""printer.to_text is the inverse of parser.parse: parse(print(ast)) == ast.

(a) every spec in specs/ round-trips and prints idempotently;
(b) hypothesis builds ASTs directly from the dataclasses, prints and re-parses them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netspec.lang import ast as A
from netspec.lang.parser import parse
from netspec.errors import SpecError
from netspec.lang.printer import KEYWORDS, expr_to_text, separation_problem, stmt_to_text, to_text

SPECS_DIR = Path(__file__).resolve().parent.parent / "specs"
SPECS = sorted(SPECS_DIR.rglob("*.net"))  # specs/*.net and the libraries they import


# ------------------------------------------------------------------ (a) the real specs

def test_there_are_specs():
    assert SPECS, "no specs/*.net found"


@pytest.mark.parametrize("path", SPECS, ids=[str(p.relative_to(SPECS_DIR)) for p in SPECS])
def test_spec_round_trips(path):
    original = parse(path.read_text(encoding="utf-8"), str(path))
    text = to_text(original)
    again = parse(text, "printed.net")
    assert again == original
    assert to_text(again) == text  # idempotent


# ------------------------------------------------------------------ hand-picked cases

def _expr(src: str):
    """Parse `src` as the value of an assignment."""
    return parse(f"network n() {{ v = {src} }}").items[0].body[0].value


@pytest.mark.parametrize("src", [
    "a -> b if c else d",                      # ternary(chain(a, b), c, d)
    "(a if c else d) -> b",
    "a if b else c if d else e",
    "(a if b else c) if d else e",
    "a if (b -> c) else d",
    "(a -> b) -> c",
    "x -> (conv(8, 3) -> relu) * 2 -> out",
    "x -> c1: conv(8, 3) -> r: relu * n -> g: (a -> b) * (n + 1) -> out",
    "x -> relu() -> relu -> f(x.channels, g(1).rank)",
    "x -> relu * f(2).shape",
    "(a + b) * c - -d",
    "a - (b - c)",
    "a - b - c",
    "a / (b * c) // d % e",
    "-(a + b)",
    "--a",
    "- -a",
    "+-a",
    "-a.channels",
    "(-a).channels",
    "(1).channels",
    "(1.5).channels",
    "(a + b).channels",
    "not a == b",
    "(not a) == b",
    "not not a",
    "not (a and b)",
    "(a < b) < c",
    "a < (b < c)",
    "a + b < c * d",
    "a or b and c",
    "(a or b) and c",
    "a and (b or c)",
    "a or (b or c)",
    "(1,)",
    "(1, 2)",
    "((1, 2), [3, [4]], [])",
    "[a -> b, c if d else e]",
    "f()",
    "f(a, k=b -> c, z=(1,))",
    "1e-05 + 1e+16 + 0.1 + 5e-324 + 2.5",
    '"a b # not a comment"',
    "true and false or none == none",
    "3@224x224",
    "3@8x8.channels + (2@4x4x4, 1@1x1)",
    "x.shape == 3@8x8",
])
def test_expression_round_trips(src):
    e = _expr(src)
    text = expr_to_text(e)
    assert _expr(text) == e, text
    assert expr_to_text(_expr(text)) == text


def test_minimal_parentheses():
    assert expr_to_text(_expr("((a + b)) * ((c))")) == "(a + b) * c"
    assert expr_to_text(_expr("(a -> b) if (c) else (d -> e)")) == "a -> b if c else d -> e"
    assert expr_to_text(_expr("(a * b) + (c * d)")) == "a * b + c * d"
    assert expr_to_text(_expr("x -> relu * (2)")) == "x -> relu * 2"
    assert expr_to_text(_expr("-(1)")) == "-1"


def test_layer_without_args_differs_from_empty_args():
    a, b = _expr("x -> relu"), _expr("x -> relu()")
    assert a != b
    assert expr_to_text(a) == "x -> relu"
    assert expr_to_text(b) == "x -> relu()"


def test_negative_int_stays_unary():
    e = _expr("-3")
    assert e == A.Unary("-", A.Const(3))
    assert expr_to_text(e) == "-3"


def test_canonical_layout():
    src = """import "a.net"
import "b.net"
block b(f, s=1) { in x, y
  out x + y }
network n(classes=10) { input image: 3@32x32
  image -> b(image, 8) -> dense(classes) -> out
  train { batch = 32
    optimizer = sgd(lr=0.1) } }
"""
    assert to_text(parse(src)) == """import "a.net"
import "b.net"

block b(f, s=1) {
    in x, y
    out x + y
}

network n(classes=10) {
    input image: 3@32x32
    image -> b(image, 8) -> dense(classes) -> out
    train {
        batch = 32
        optimizer = sgd(lr=0.1)
    }
}
"""


def test_empty_bodies():
    m = parse("block b() {} network n() { train {} }")
    assert to_text(m) == "block b() {}\n\nnetwork n() {\n    train {}\n}\n"
    assert parse(to_text(m)) == m


PREVIOUS = ["y = a", "y = a.b", "y = f(a)", "y = 3", "y = -3", "y = 1.5", 'y = "s"', "y = true",
            "y = (a, b)", "y = [a]", "y = a * (b + c)", "y = a + b", "y = a if b else c",
            "y = a if b else x -> relu", "y = not a", "y = -a", "y = x -> relu", "y = x -> relu()",
            "y = x -> relu * 2", "y = x -> relu * n", "y = x -> relu * n.b", "y = x -> relu * f(2)",
            "y = x -> relu * (n + 1)", "x -> out", "y = x -> (a -> b)", "y = x -> (a -> b) * 2",
            "y = x -> l: relu", "out a", "out a, b", "out a, x -> relu", "input x: 3",
            "input x: a", "input x: 3@4x4", "in a", "train {}"]
NEXT = ["(b, c) -> out", "(b) -> out", "-b -> out", "+b -> out", "[b] -> out", "not b -> out",
        "b -> out", "out (b)"]


def _body(src):
    return parse("network n() {\n" + src + "\n}").items[0].body


@pytest.mark.parametrize("prev", PREVIOUS)
def test_separation_problem_matches_the_parser(prev):
    """The grammar has no statement separator; separation_problem says exactly when it matters."""
    for nxt in NEXT:
        expected = _body(prev) + _body(nxt)
        try:  # as the printer would write them: `(b) -> out` prints as `b -> out`
            fine = _body("\n".join(stmt_to_text(s) for s in expected)) == expected
        except SpecError:
            fine = False
        problem = separation_problem(expected[0], expected[1])
        assert (problem is None) == fine, (prev, nxt, problem)
        m = A.Module([A.NetworkDef("n", [], expected)])
        if fine:
            assert parse(to_text(m)) == m
        else:
            with pytest.raises(ValueError):
                to_text(m)


def test_statements_that_would_merge_are_refused():
    # `y = a` then `(b, c) -> out` reads as `y = a(b, c) -> out`
    tup = A.ExprStmt(A.Chain(A.TupleExpr([A.Name("b"), A.Name("c")]), [A.Stage(None, A.LayerOut(), None)]))
    m = A.Module([A.NetworkDef("n", [], [A.Assign("y", A.Name("a")), tup])])
    assert len(parse(f"network n() {{\n    y = a\n{stmt_to_text(tup, 1)}\n}}").items[0].body) == 1
    with pytest.raises(ValueError, match="parse as one"):
        to_text(m)
    # first in a body, or after a statement that cannot continue, it is fine
    for body in ([tup], [A.In(["x"]), tup], [A.Input("x", A.ShapeLit((3, 8, 8))), tup],
                 [A.Assign("y", A.Call("f", [])), tup]):
        m = A.Module([A.BlockDef("b", [], body)])
        assert parse(to_text(m)) == m


@pytest.mark.parametrize("src", [
    "a, b = split(x, 2)",
    "a, _, _ = x -> conv(8, 1) -> split((2, 2, 4))",
    "_, b = (1, 2) if c else (3, 4)",
    "k, s = (3, 2)",
])
def test_unpacking_round_trips(src):
    m = parse(f"network n() {{\n    {src}\n}}")
    assert isinstance(m.items[0].body[0], A.Unpack)
    assert to_text(m) == f"network n() {{\n    {src}\n}}\n"
    assert parse(to_text(m)) == m


@pytest.mark.parametrize("names", [["a"], ["a", "a"], ["a", "_", "a"], ["a", "in"]])
def test_unpacking_the_language_cannot_spell_raises_value_error(names):
    m = A.Module([A.NetworkDef("n", [], [A.Unpack(names, A.Name("x"))])])
    with pytest.raises(ValueError):
        to_text(m)


@pytest.mark.parametrize("make", [
    lambda n: "-" * n + "1", lambda n: "1 + " * n + "1", lambda n: "not " * n + "a",
    lambda n: "a if b else " * n + "c", lambda n: "x" + ".c" * n, lambda n: "f(" * n + ")" * n,
    lambda n: "-(a + " * n + "1" + ")" * n,
], ids=["unary", "binary", "not", "ternary", "getattr", "call", "parenthesised"])
def test_deepest_parseable_nesting_prints(make):
    """The parser accepts nesting ~490 deep; printing it must not hit the recursion limit."""
    lo, hi = 1, 2000
    while lo < hi:  # the deepest nesting this form can have and still parse
        mid = (lo + hi + 1) // 2
        try:
            parse(f"network n() {{ v = {make(mid)} }}")
            lo = mid
        except SpecError:
            hi = mid - 1
    module = parse(f"network n() {{ v = {make(lo)} }}")
    text = to_text(module)
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)  # dataclass == recurses too
    try:
        assert parse(text) == module
    finally:
        sys.setrecursionlimit(old)


@pytest.mark.parametrize("bad", [
    A.Name("in"), A.Name("1x"), A.Name("é"), A.Const('say "hi"'), A.Const("a\\b"), A.Const("a\nb"),
    A.Const(float("inf")), A.Const(float("nan")), A.TupleExpr([]), A.Chain(A.Name("x"), []),
    A.Unary("~", A.Name("x")), A.Binary("**", A.Name("x"), A.Name("y")), object(),
])
def test_unprintable_raises_value_error(bad):
    with pytest.raises(ValueError):
        expr_to_text(bad)


# ------------------------------------------------------------------ (b) generated ASTs

NAMES = ["a", "b", "x", "y", "n1", "_t", "conv", "relu", "e5", "x_2",
         # near-keywords: must lex as names
         "inx", "outer", "iff", "nota", "trueish", "nones", "Train", "IN", "or_", "import1"]
assert not KEYWORDS & set(NAMES)

names = st.sampled_from(NAMES)
ints = st.integers(min_value=0, max_value=10**20)
floats = st.floats(min_value=0.0, allow_nan=False, allow_infinity=False).map(abs)  # no -0.0
strings = st.text(st.characters(exclude_characters='"\\\n', exclude_categories=("Cs",)), max_size=6)
consts = st.builds(A.Const, st.one_of(ints, floats, strings, st.booleans(), st.none()))
shapes = st.builds(A.ShapeLit, st.lists(st.integers(1, 10**6), min_size=2, max_size=4).map(tuple))
leaves = st.one_of(st.builds(A.Name, names), consts, shapes)

UNARY_OPS = ["-", "+", "not"]
BINARY_OPS = ["+", "-", "*", "/", "//", "%", "==", "!=", "<", "<=", ">", ">=", "and", "or"]


def _args(children):
    return st.lists(st.builds(A.Arg, st.none() | names, children), max_size=3)


def _stages(children):
    layer_call = st.builds(A.LayerCall, names, st.none() | _args(children))
    repeat = st.none() | children
    label = st.none() | names

    def stage(layer):
        return st.builds(A.Stage, label, layer, repeat)

    out = st.builds(A.LayerOut)
    inner = stage(st.one_of(layer_call, out))
    group1 = st.builds(A.LayerGroup, st.lists(inner, min_size=1, max_size=3))
    group2 = st.builds(A.LayerGroup, st.lists(stage(st.one_of(layer_call, group1)), min_size=1, max_size=3))
    return st.lists(stage(st.one_of(layer_call, layer_call, out, group1, group2)), min_size=1, max_size=4)


def _extend(children):
    return st.one_of(
        st.builds(A.Unary, st.sampled_from(UNARY_OPS), children),
        st.builds(A.Binary, st.sampled_from(BINARY_OPS), children, children),
        st.builds(A.Ternary, children, children, children),
        st.builds(A.TupleExpr, st.lists(children, min_size=1, max_size=3)),
        st.builds(A.ListExpr, st.lists(children, max_size=3)),
        st.builds(A.Call, names, _args(children)),
        st.builds(A.GetAttr, children, names),
        st.builds(A.Chain, children, _stages(children)),
    )


exprs = st.recursive(leaves, _extend, max_leaves=10)

statements = st.one_of(
    st.builds(A.In, st.lists(names, min_size=1, max_size=3, unique=True)),
    st.builds(A.Input, names, st.one_of(shapes, exprs)),
    st.builds(A.Out, st.lists(exprs, min_size=1, max_size=3)),
    st.builds(A.Assign, names, exprs),
    # two or more names, each once, and `_` any number of times
    st.builds(A.Unpack, st.lists(names | st.just("_"), min_size=2, max_size=3).filter(
        lambda ns: len({n for n in ns if n != "_"}) == sum(n != "_" for n in ns)), exprs),
    st.builds(A.ExprStmt, exprs),
    st.builds(A.Train, st.lists(st.builds(A.Setting, names, exprs), max_size=3)),
)


@st.composite
def bodies(draw):
    """Statements, leaving out any that would fuse with the one before (see separation_problem)
    and `in` statements that repeat a name (a block's inputs must differ)."""
    body, inputs = [], set()
    for stmt in draw(st.lists(statements, max_size=5)):
        if body and separation_problem(body[-1], stmt):
            continue
        if isinstance(stmt, A.In):
            if inputs & set(stmt.names):
                continue
            inputs |= set(stmt.names)
        body.append(stmt)
    return body


params = st.lists(st.builds(A.Param, names, st.none() | exprs), max_size=3,
                  unique_by=lambda p: p.name)
items = st.one_of(
    st.builds(A.Import, strings),
    st.builds(A.BlockDef, names, params, bodies()),
    st.builds(A.NetworkDef, names, params, bodies()),
)
modules = st.builds(A.Module, st.lists(items, min_size=1, max_size=3))


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(modules)
def test_generated_ast_round_trips(module):
    text = to_text(module)
    again = parse(text, "generated.net")
    assert again == module, text
    assert to_text(again) == text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(exprs)
def test_generated_expression_round_trips(e):
    text = expr_to_text(e)
    assert _expr(text) == e, text
