"""float64 NumPy references of the ops, one module per family (as ONNX's
onnx/reference/ops): written for clarity, loops where a loop is the clearest statement, and
sharing no code with the compiler or the runtime targets, so that agreeing with them means
something.

Layouts are the spec's and PyTorch's: feature maps (N, C, H, W), vectors (N, F), weights
as PyTorch holds them (conv OIHW, dense (units, features)); explicit padding is
(top, bottom, left, right). Each op's `reference` rule (netspec/ops/*.py) calls these with its
attributes; tests/reference/ adapts them to the ISA's channels-last layout for the kernel tests.
Nothing in the compiler imports this package.
"""
