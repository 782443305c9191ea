"""Weights from and to other frameworks' files (PyTorch state dicts: torch_weights)."""
