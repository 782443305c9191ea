"""Other formats in and out of netspec: `netspec import` reads ONNX models (onnx_import.py,
with spec_writer.py writing the spec)."""
