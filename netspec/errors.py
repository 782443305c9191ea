"""Errors a user can cause, each pointing at the spec text that caused it.

Every error the compiler reports about a spec is a `SpecError`: a message, the
position (file:line:col, and where known the span's end column), an optional
hint, and notes (e.g. the block call that led to the failing line). `format()`
renders it the way compilers do:

    specs/net.net:12:15: error: unknown op 'conv2'
       12 |     image -> conv2(64, 3)
          |              ^~~~~
    hint: did you mean 'conv'?

In IPython and Jupyter a SpecError a cell raises shows this report, not a traceback
(`_render_traceback_`, which IPython calls to show an exception).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

EXCERPT_WIDTH = 100     # columns of a long source line shown around the caret
MAX_MESSAGE = 400       # characters of a message, hint or note (a 1 MB name must not print in full)


@dataclass(frozen=True)
class Pos:
    """A place in a spec file. Lines and columns count from 1."""

    file: str
    line: int
    col: int
    end_col: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class SpecError(Exception):
    """A problem in a spec, reported to the user with its position."""

    def __init__(self, message: str, pos: Pos | None = None, hint: str | None = None,
                 notes: list[tuple[str, Pos | None]] | None = None):
        super().__init__(message)
        self.message = message
        self.pos = pos
        self.hint = hint
        self.notes: list[tuple[str, Pos | None]] = list(notes or [])

    def __str__(self) -> str:
        where = f"{self.pos}: " if self.pos else ""
        return f"{where}error: {self.message}"

    def format(self, sources: dict[str, str] | None = None) -> str:
        """The full report: header, source line with a caret, hint and notes."""
        lines = [clip(str(self))]
        lines += _excerpt(self.pos, sources or _SOURCES)
        if self.hint:
            lines.append(clip(f"hint: {self.hint}"))
        for text, pos in self.notes:
            lines.append(clip(f"{pos}: note: {text}" if pos else f"note: {text}"))
        return "\n".join(lines)

    def _render_traceback_(self) -> list[str]:
        """IPython and Jupyter show these lines for a SpecError a cell raises, instead of a
        Python traceback: the report `netspec` prints, source line and caret included."""
        return self.format().split("\n")


class UsageError(Exception):
    """A bad command line (exit code 2), as opposed to a bad spec (exit code 1)."""


class TrainingError(RuntimeError):
    """Training cannot go on (diverged, or data, settings or a checkpoint that do not fit);
    the message says why. The CLI reports it with exit status 1."""


class OverrideError(SpecError):
    """A value given from outside the spec (--set, --input, --network) that does not fit it.

    The CLI reports it as a usage error (exit 2); from Python it is a SpecError like any other.
    """


@dataclass
class AttrError(Exception):
    """Raised by attribute validation; the elaborator adds the argument's position."""

    message: str
    hint: str | None = None
    arg: str | None = None  # the attribute it concerns, to find its position


@dataclass
class ShapeError(Exception):
    """Raised by a shape rule; the elaborator adds the node's position.

    `message` may name inputs as {in0}, {in1}, ...; the elaborator fills them in
    with the input's shape and where it came from ("64@56x56 from unit3/main").
    """

    message: str
    hint: str | None = None
    extra: dict = field(default_factory=dict)


_SOURCES: dict[str, str] = {}


def remember_source(file: str, text: str) -> None:
    """Keep a spec's text so errors about it can quote the offending line."""
    _SOURCES[file] = text


def did_you_mean(word: str, candidates) -> str | None:
    """A hint naming the closest candidate, or None if nothing is close."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def clip(text: str, limit: int = MAX_MESSAGE) -> str:
    """`text`, its middle elided when longer than `limit` characters."""
    if len(text) <= limit:
        return text
    keep = (limit - 5) // 2
    return f"{text[:keep]} ... {text[-keep:]}"


def normalise_source(text: str) -> str:
    """Spec text as the parser reads it: a leading UTF-8 byte-order mark dropped and \\r\\n line
    endings made \\n (which keeps every line and column). A lone \\r stays: whitespace, or part
    of a comment or string; read_spec turns the \\r of a file with old Mac line endings (no \\n
    at all) into \\n before this."""
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\r\n" in text:
        text = text.replace("\r\n", "\n")
    return text


def _excerpt(pos: Pos | None, sources: dict[str, str] | None) -> list[str]:
    if pos is None or not sources or pos.file not in sources:
        return []
    # lines as the parser counts them (not at \f, \x1c... as splitlines() would)
    text_lines = normalise_source(sources[pos.file]).split("\n")
    if not 1 <= pos.line <= len(text_lines):
        return []
    line = text_lines[pos.line - 1]
    number = str(pos.line)
    gutter = " " * len(number)
    width = max(1, (pos.end_col - pos.col) if pos.end_col and pos.end_col > pos.col else 1)
    start = pos.col - 1                 # the caret's column, from 0
    if len(line) > EXCERPT_WIDTH:       # a window around the caret, cuts marked with ...
        first = max(0, min(start - EXCERPT_WIDTH // 3, len(line) - EXCERPT_WIDTH))
        last = first + EXCERPT_WIDTH
        line = ("..." if first else "") + line[first:last] + ("..." if last < len(line) else "")
        width = max(1, min(width, last - start))
        start = start - first + (3 if first else 0)
    # a tab is one column, as for the parser; control characters (\r, \f...) would move the
    # terminal's cursor: one space each keeps the columns
    line = "".join(" " if ord(c) < 32 or c == "\x7f" else c for c in line)
    caret = " " * start + "^" + "~" * (width - 1)
    return [f" {number} | {line}", f" {gutter} | {caret}"]


class StopTraining(Exception):
    """Raised by a Model.fit callback's on_epoch_end (or True returned from it) to end the run
    after that epoch: the run finishes as if its epochs were done."""
