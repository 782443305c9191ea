"""Syntax highlighting of .net specs, from the language's own lists of words.

One table of rules, `RULES`, drives both highlighters: the Pygments lexer below
(`pygmentize -l netspec FILE`, and Markdown's ```net blocks; registered as an entry point in
pyproject.toml) and the TextMate grammar that tools/make_tmlanguage.py writes to
tools/editors/ for VS Code, Sublime Text and GitHub. The regular expressions are the subset
that Python's `re` and TextMate's Oniguruma read alike. The keywords come from the parser,
the op names from the op registry and the builtins from the evaluator, so a new op is
highlighted without an edit here.
"""

from __future__ import annotations

from pygments.lexer import RegexLexer, bygroups
from pygments.token import (Comment, Keyword, Name, Number, Operator, Punctuation, String, Whitespace)

from ..ops import OPS
from .parser import KEYWORDS
from .values import BUILTINS

__all__ = ["NetspecLexer", "RULES", "Rule", "word_pattern", "CONSTANTS", "OPERATOR_WORDS",
           "DECLARATIONS"]

CONSTANTS = ("true", "false", "none")
OPERATOR_WORDS = ("and", "or", "not")
DECLARATIONS = ("block", "network")
STATEMENT_KEYWORDS = tuple(sorted(set(KEYWORDS) - set(CONSTANTS) - set(OPERATOR_WORDS)
                                  - set(DECLARATIONS)))
NAME = r"[A-Za-z_][A-Za-z_0-9]*"


def word_pattern(words) -> str:
    """A regular expression for any of `words` as a whole word (longest first)."""
    return r"\b(?:" + "|".join(sorted(words, key=lambda w: (-len(w), w))) + r")\b"


class Rule:
    """A pattern and what each of its parts is: (Pygments token, TextMate scope) for the whole
    match, or one pair per group."""

    def __init__(self, pattern: str, *parts: tuple):
        self.pattern = pattern
        self.parts = parts


# In order: where two rules match at the same place, the first wins (in both highlighters).
RULES = [
    Rule(r"#.*", (Comment.Single, "comment.line.number-sign.netspec")),
    Rule(r'"[^"\n]*"', (String.Double, "string.quoted.double.netspec")),
    Rule(r"\b(" + "|".join(DECLARATIONS) + r")(\s+)(" + NAME + ")",
         (Keyword.Declaration, "storage.type.netspec"), (Whitespace, None),
         (Name.Class, "entity.name.type.netspec")),
    Rule(r"\b[0-9]+@[0-9]+(?:x[0-9]+)*\b|\b[0-9]+x[0-9]+\b",
         (Number, "constant.numeric.shape.netspec")),
    Rule(r"\b[0-9]+\.[0-9]*(?:[eE][-+]?[0-9]+)?|\b[0-9]+[eE][-+]?[0-9]+\b"
         r"|\.[0-9]+(?:[eE][-+]?[0-9]+)?",
         (Number.Float, "constant.numeric.float.netspec")),
    Rule(r"\b[0-9]+\b", (Number.Integer, "constant.numeric.integer.netspec")),
    Rule(word_pattern(CONSTANTS), (Keyword.Constant, "constant.language.netspec")),
    Rule(word_pattern(OPERATOR_WORDS), (Operator.Word, "keyword.operator.word.netspec")),
    Rule(word_pattern(STATEMENT_KEYWORDS), (Keyword, "keyword.control.netspec")),
    Rule(word_pattern(OPS), (Name.Builtin, "support.function.op.netspec")),
    Rule(word_pattern(BUILTINS), (Name.Builtin.Pseudo, "support.function.builtin.netspec")),
    Rule(NAME, (Name, "variable.other.netspec")),
    Rule(r"->|==|!=|<=|>=|//|[-+*/%<>=]", (Operator, "keyword.operator.netspec")),
    Rule(r"[(){}\[\],.:]", (Punctuation, "punctuation.netspec")),
]


def _pygments_rule(rule: Rule):
    tokens = [token for token, _ in rule.parts]
    return rule.pattern, tokens[0] if len(tokens) == 1 else bygroups(*tokens)


class NetspecLexer(RegexLexer):
    """Pygments lexer for netspec's .net network specs."""

    name = "netspec"
    aliases = ["netspec", "net"]
    filenames = ["*.net"]
    mimetypes = ["text/x-netspec"]

    tokens = {"root": [*(_pygments_rule(rule) for rule in RULES),
                       (r"\s+", Whitespace)]}    # anything else is an Error token

