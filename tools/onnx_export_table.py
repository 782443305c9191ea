"""The worst error of `netspec export` per shipped spec: docs/INTEROP.md's export table.

    python tools/onnx_export_table.py            # print the table
    python tools/onnx_export_table.py --write    # and write it into docs/INTEROP.md

Each spec of specs/ at the small size the tests load it at (netspec/testing/specs.py), random
parameters (batch norms' statistics calibrated), a batch of 2 standard-normal inputs: exported
as written and after the default graph passes, run by onnxruntime (float32, CPU), compared with
the PyTorch oracle in float64 (netspec/testing/torch_ref.py). The error is max |onnx - oracle|
over the largest |oracle| of the outputs (1 where every output is smaller). Needs the test
dependencies (torch, onnx, onnxruntime).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "INTEROP.md"


def table() -> str:
    from netspec.interop.onnx_export import export, op_counts, parameter_count
    from netspec import pipeline
    from netspec.testing.onnx_check import check_exports, float_params, small
    rows = ["| spec (test size) | ONNX nodes | parameters (batch norms folded) | worst error, as written | after the passes |",
            "|---|---:|---:|---:|---:|"]
    for path in sorted((ROOT / "specs").glob("*.net")):
        net = small(path.stem)
        params = float_params(net.graph)
        errors = check_exports(net.graph, params, batch=2, rtol=float("inf"))
        model = export(pipeline.optimise(net.graph, training=False).infer, params)
        rows.append(f"| {path.stem} | {sum(op_counts(model).values())} | {parameter_count(model):,} | "
                    f"{errors['as written']:.1e} | {errors['after the passes']:.1e} |")
        print(rows[-1], file=sys.stderr, flush=True)
    return "\n".join(rows)


if __name__ == "__main__":
    from netspec.testing.tables import doc_table_tool
    doc_table_tool(__doc__.splitlines()[0], DOC, "export-table", table)
