"""The ONNX backend test cases shipped inside the onnx package
(onnx/backend/test/data/pytorch-converted/*: model.onnx, test_data_set_0/input_0.pb and
output_0.pb, converted from PyTorch modules by the ONNX project) run through `netspec import`:
each one either imports and matches its stored output, or is refused with the unsupported-op
error. tools/onnx_backend_table.py writes the table in docs/INTEROP.md;
tests/test_onnx_import.py checks every case."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RTOL = ATOL = 1e-4          # float32 against the stored float32 output


@dataclass
class CaseResult:
    name: str
    status: str             # "match", "refused", "differs", "failed"
    detail: str             # the spec's ops, or why it was refused
    max_error: float | None = None


def case_folders() -> list[Path]:
    import onnx
    base = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "pytorch-converted"
    return sorted(p for p in base.iterdir() if (p / "model.onnx").is_file())


def run_case(folder: Path) -> CaseResult:
    import onnx
    from onnx import numpy_helper

    import netspec
    from netspec.interop.onnx_import import OnnxImportError, UnsupportedModel, import_onnx
    name = folder.name
    try:
        imported = import_onnx(folder / "model.onnx", "case")
    except UnsupportedModel as e:
        return CaseResult(name, "refused", "; ".join(f"{op}: {why}" for op, _, why in e.problems))
    except OnnxImportError as e:
        return CaseResult(name, "failed", str(e))
    x = numpy_helper.to_array(onnx.load_tensor(str(folder / "test_data_set_0" / "input_0.pb")))
    want = numpy_helper.to_array(onnx.load_tensor(str(folder / "test_data_set_0" / "output_0.pb")))
    model = netspec.loads(imported.text).compile(training=False, warmup=False)
    model.set_weights(imported.weights)
    got = np.asarray(model(x.astype(np.float32)))
    ops = sorted({l.op for l in imported.translated.layers})
    if got.shape != want.shape:
        return CaseResult(name, "differs", f"shape {got.shape}, expected {want.shape}")
    error = float(np.max(np.abs(got - want))) if got.size else 0.0
    ok = np.allclose(got, want, rtol=RTOL, atol=ATOL)
    return CaseResult(name, "match" if ok else "differs", ", ".join(ops), error)
