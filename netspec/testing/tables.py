"""Plain-text tables for the tools' reports (tools/bench_*.py, float32_error.py, ...)."""

from __future__ import annotations


def text_table(rows: list[tuple[str, ...]], right: set[int] | range) -> str:
    """`rows` (the first the headings) in columns two spaces apart, a rule under the headings;
    the columns in `right` aligned right (numbers), the others left."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i in right else c.ljust(w)
                       for i, (c, w) in enumerate(zip(row, widths))).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
