"""Which shipped networks `netspec import` reads from PyTorch's own exporter: docs/INTEROP.md's table.

    python tools/onnx_torch_table.py            # print the table
    python tools/onnx_torch_table.py --write    # and write it into docs/INTEROP.md

Each spec of specs/ at its test size (netspec/testing/specs.py) is run as the PyTorch oracle
(netspec/testing/torch_ref.py: torch.nn.functional only, float32, random parameters with
calibrated batch norms, inference mode) and exported by torch.onnx.export (the dynamo exporter,
PyTorch's default): an ONNX model no one here wrote, in PyTorch's own spelling (explicit Pad
nodes for TensorFlow's same padding, batch norms folded into the convs, decompositions of its
own). `netspec import` reads it; the imported spec is compiled (float32, CPU) and run beside
onnxruntime on the file: the worst error is max |netspec - onnxruntime| over the largest
|onnxruntime|. A model import refuses is listed with the nodes it names. Needs the test
dependencies (torch, onnx, onnxruntime, onnxscript).
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "INTEROP.md"


def table() -> str:
    from netspec.interop.onnx_import import OnnxImportError
    from netspec.testing.onnx_check import imported_error, small, torch_export
    rows = ["| spec (test size) | import | blocks written | parameters (netspec / the file's initializers) | worst error, or the nodes refused |",
            "|---|---|---:|---|---|"]
    matched = 0
    with tempfile.TemporaryDirectory() as tmp:
        for path in sorted((ROOT / "specs").glob("*.net")):
            net = small(path.stem)
            onnx_path = Path(tmp) / f"{path.stem}.onnx"
            torch_export(net.graph, onnx_path)
            try:
                imported, error, initializers = imported_error(onnx_path)
            except OnnxImportError as e:
                why = str(e).replace("|", "/")
                rows.append(f"| {path.stem} | refused | | | {why[:300]}{'...' if len(why) > 300 else ''} |")
            else:
                matched += error < 1e-3
                blocks = len(re.findall(r"^block ", imported.text, re.M))
                rows.append(f"| {path.stem} | {'matches' if error < 1e-3 else 'DIFFERS'} | {blocks} | "
                            f"{sum(imported.graph.total_params()):,} / {initializers:,} | {error:.1e} |")
            print(rows[-1], file=sys.stderr, flush=True)
    return f"{matched} of {len(rows) - 2} import and match.\n\n" + "\n".join(rows)


if __name__ == "__main__":
    from netspec.testing.tables import doc_table_tool
    doc_table_tool(__doc__.splitlines()[0], DOC, "torch-table", table)
