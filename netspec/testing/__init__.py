"""Test support for netspec (never imported by the compiler or a runtime).

`netspec.testing.torch_ref` is an independent PyTorch interpreter of a checked
graph: the oracle the CPU backend is tested against, and its benchmark peer.
It needs torch, a test dependency only.
"""
