"""netspec.runtime: executes compiled Programs. It knows nothing of the language.

Installed as `netspec.runtime` (see pyproject.toml); the CPU and CUDA kernels,
the Program executor, training and data loading live here.
"""
