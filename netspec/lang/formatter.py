"""`netspec fmt`: a spec's text in the canonical layout, with its comments.

The text is parsed keeping its layout (comments, blank lines, line breaks in chains and
argument lists, floats as written) and printed again by the printer; the result is checked
before anyone writes it: it parses to the same syntax tree and holds the same comments, in
the same order, or FormatError says so (a bug in netspec, never a change to a spec).
"""

from __future__ import annotations

import os
from pathlib import Path

from .parser import parse
from .printer import to_text

__all__ = ["format_text", "spec_files", "FormatError"]

SPEC_SUFFIX = ".net"


class FormatError(Exception):
    """The formatted text would mean something else, or would lose a comment."""


def format_text(text: str, file: str = "<spec>") -> str:
    """The canonical text of a spec's text (SpecError when it does not parse)."""
    module = parse(text, file, keep_layout=True)
    formatted = to_text(module)
    again = parse(formatted, file, keep_layout=True)
    if again != module:
        raise FormatError(f"{file}: the formatted text would parse differently")
    if again.layout.comments != module.layout.comments:
        raise FormatError(f"{file}: the formatted text would lose or reorder a comment")
    return formatted


def spec_files(paths) -> list[Path]:
    """The files to format: each file named, and every *.net below each folder named, sorted;
    a path named twice once."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*" + SPEC_SUFFIX) if p.is_file())
        else:
            files.append(path)
    seen: set[str] = set()
    unique = []
    for f in files:
        real = os.path.realpath(f)
        if real not in seen:
            seen.add(real)
            unique.append(f)
    return unique
