"""CPU kernels for convolution and dense layers (see `runtime/isa.py` for the contract).

Layouts: feature maps NHWC, conv weights OHWI `(O, KH, KW, I/groups)`, dense weights `(U, F)`.
Everything jitted is generic over the dtype (float32 for speed, float64 for gradient checks)
and takes the geometry as int64 values (`geometry.Geometry`), so one compiled version per
dtype serves every layer. No BLAS: every product goes through our own FMA micro-kernel, each
product-sum rounded once and every sum in a fixed order (results are deterministic for a given
thread count); no fastmath, no no-NaN/no-inf assumptions.

The package, by method (each module's docstring says when dispatch picks it):
  dispatch.py     the conv2d / conv2d_bwd_* / dense* kernels: checks, and the choice of method
  im2col.py       im2col + GEMM (the general method; 1x1 convs, dense layers)
  implicit.py     GEMMs straight on the padded input (few input channels: stem, LeNet)
  planar.py       direct, whole padded planes (one input channel per group, stride 1, few O)
  direct.py       direct, row by row (one input channel per group otherwise)
  bias.py         the bias gradient
  tasks.py        the task kinds, their C functions, the parallel loop (`_run`)
  microkernel.py  the micro-kernel (LLVM IR) and `_gemm`
  vectors.py      explicit SIMD loops (LLVM IR): copies, axpys, dots, small correlations
  codegen.py      codegen helpers of the two above
  buffers.py      aligned buffers
  geometry.py     the conv geometry and the checks of shapes and operands
  config.py       every tunable: tile shapes, block sizes, thresholds, tasks per thread
  cache.py        Numba's cache stamped with the whole package

Compile time. A parallel loop's body, with all its callees, is optimised and compiled again
inside the loop's own function and again in the function holding the loop; the kernels were
therefore written as serial task bodies compiled once per dtype into C functions that one small
`prange` loop calls by symbol name (tasks.py), as is `_gemm`. Cold compile of every path:
about 13 s per dtype on the 2-core target; `cache=True` makes later runs near-free.
"""

from __future__ import annotations

from . import cache

cache.install()     # before any function of the package is decorated

from .bias import bias_grad  # noqa: E402  (registers the kernel)
from .dispatch import (conv2d, conv2d_bwd_data, conv2d_bwd_weight, dense,  # noqa: E402
                       dense_bwd_data, dense_bwd_weight)

__all__ = ["bias_grad", "conv2d", "conv2d_bwd_data", "conv2d_bwd_weight", "dense",
           "dense_bwd_data", "dense_bwd_weight"]
