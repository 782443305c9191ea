"""The CPU target: Numba kernels for every entry of `netspec.runtime.isa.KERNELS`.

Its kernel table (table.py) maps each instruction to `fn(ins, outs, attrs, ctx)`: `ins`
and `outs` are lists of NumPy arrays laid out as the ISA says (an optional input
that is absent is None), `attrs` a dict of plain values, `ctx` the run's
`Context` (its random generator, for dropout and drop_path). The Python wrapper reshapes and
dispatches; the work happens in `@njit(cache=True)` functions specialised by
dtype only (never by layer), so the number of compiled functions does not grow
with the network.

Kernels by method: conv.py (convolution and dense), pool.py, norm.py,
elementwise.py (activations, merges, data movers; activations.py holds the
activation formulas), resample.py (upsample, channel shuffle), loss.py, fused.py
(kernels generated per fused pattern); target.py imports them and builds `TARGET`,
with the in-place rules they declare.

Threads: parallel kernels use Numba's pool, and nothing here calls BLAS: the
GEMMs are our own micro-kernels (conv.py), so no second thread pool competes
for the cores (docs/RUNTIME.md, "Kernels and threads").
"""

from . import threads

threads.configure_at_start()  # first: OpenMP reads its wait policy when Numba starts its pool
from .context import Context  # noqa: E402  (it sets Numba's cache folder before any kernel is compiled)
from .target import TARGET  # noqa: E402

KERNELS = TARGET.kernels

__all__ = ["Context", "KERNELS", "TARGET"]
