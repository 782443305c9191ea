"""Networks in and out of netspec: ONNX export (onnx_export.py), ONNX import (onnx_import.py,
with spec_writer.py writing the spec), and weights published for PyTorch matched to a spec by
structure (torch_weights.py). The optional libraries they need (onnx, onnxruntime) are imported
inside, with a clear message where they are missing."""

# the ONNX opsets `netspec export` writes: ReduceMean/ReduceMax take their axes as an input
# from 18; the default is one onnxruntime 1.18 and later run
MIN_OPSET = 18
DEFAULT_OPSET = 21
INSTALL_HINT = "pip install 'netspec[onnx]'"


class OnnxUnavailable(Exception):
    """The onnx package is not installed (the optional extra netspec[onnx])."""


def require_onnx(what: str):
    """The onnx module, or OnnxUnavailable saying that `what` needs it and how to install it."""
    try:
        import onnx
    except ImportError:
        raise OnnxUnavailable(f"{what} needs the onnx package: {INSTALL_HINT}") from None
    return onnx

