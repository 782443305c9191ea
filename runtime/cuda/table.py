"""The CUDA target's kernel table, which its kernel modules fill with `@kernel("name")`."""

from __future__ import annotations

from ..target import KernelTable

TABLE = KernelTable("cuda")
kernel = TABLE.kernel
