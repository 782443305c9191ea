"""The ONNX backend test cases of the onnx package through `netspec import`, as a table in
docs/INTEROP.md.

    python tools/onnx_backend_table.py            # rewrite the table in docs/INTEROP.md
    python tools/onnx_backend_table.py --print    # print it instead

Each case (onnx/backend/test/data/pytorch-converted/*: a model PyTorch exported, its input and
its expected output, made by the ONNX project) is imported; one netspec translates is compiled
on the CPU target (float32) and its output compared with the stored one
(netspec/testing/onnx_backend.py). The table says which cases match, and which are refused and
why; tests/test_onnx_import.py checks the same, and the count of matches the table states.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "INTEROP.md"
START = "<!-- onnx-backend-table: start (tools/onnx_backend_table.py writes it) -->"
END = "<!-- onnx-backend-table: end -->"


def table() -> str:
    from netspec.testing.onnx_backend import case_folders, run_case
    results = [run_case(folder) for folder in case_folders()]
    matching = sum(r.status == "match" for r in results)
    refused = sum(r.status == "refused" for r in results)
    import onnx
    lines = [f"onnx {onnx.__version__}'s {len(results)} cases: **{matching} import and match** their stored output "
             f"(float32, within 1e-4), {refused} are refused naming the nodes netspec cannot "
             f"express, {len(results) - matching - refused} do neither.", "",
             "| case | result | netspec ops, or why refused | largest difference |",
             "|---|---|---|---|"]
    for r in results:
        error = f"{r.max_error:.1e}" if r.max_error is not None else ""
        detail = r.detail.replace("|", "\\|")
        lines.append(f"| `{r.name[len('test_'):]}` | {r.status} | {detail} | {error} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--print", action="store_true", help="print the table, write nothing")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    text = table()
    if args.print:
        print(text, end="")
        return 0
    doc = DOC.read_text()
    if START not in doc or END not in doc:
        print(f"{DOC}: no table markers ({START} ... {END})", file=sys.stderr)
        return 1
    head, rest = doc.split(START, 1)
    _, tail = rest.split(END, 1)
    from netspec.outdirs import write_atomic
    write_atomic(DOC, f"{head}{START}\n{text}{END}{tail}")
    print(f"wrote the table into {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
