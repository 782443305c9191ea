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


def doc_table_tool(description: str, doc, marker: str, table) -> None:
    """The command line of a tool that prints a table and, with --write, puts it into `doc`
    (a Markdown file) between `<!-- marker -->` and `<!-- /marker -->`."""
    import argparse
    import re
    from pathlib import Path
    doc = Path(doc)
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--write", action="store_true", help=f"write the table into {doc.name}")
    args = parser.parse_args()
    text = table()
    print(text)
    if args.write:
        begin, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
        block = f"{begin}\n{text}\n{end}"
        doc.write_text(re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda m: block,
                              doc.read_text(), flags=re.S))
