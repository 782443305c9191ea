"""Training: data, the loop, checkpoints and history (`netspec train`, `eval`, `predict`)."""
