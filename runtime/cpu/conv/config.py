"""The conv kernels' tunables, all in one place: the SIMD micro-tile shapes, the block, tile and
buffer sizes, the thresholds that choose a method, and how work is split over the threads.

Measured on the 2-core AVX-512 target (1 MiB L2 per core) with tools/bench_conv_kernels.py
(LeNet-5 at batch 256, ResNet-34 at 3@64x64 batch 16) unless a comment says otherwise.

Numba freezes these values into the compiled kernels; the package's cache stamp (cache.py)
makes a change here recompile every kernel of the package.
"""

from __future__ import annotations

import llvmlite.binding as llvm
import numba


def _has_avx512() -> bool:
    """Whether the code Numba generates may use AVX-512 (its target: the host unless
    NUMBA_CPU_NAME / NUMBA_CPU_FEATURES say otherwise)."""
    if numba.config.CPU_FEATURES is not None:
        return "+avx512f" in numba.config.CPU_FEATURES.split(",")
    if numba.config.CPU_NAME is not None:
        return False
    return bool(llvm.get_host_cpu_features().get("avx512f"))


# ---------------------------------------------------------------- SIMD shapes

_AVX512 = _has_avx512()
_VBYTES = 64 if _AVX512 else 32   # SIMD register width (bytes)
# micro-tile shapes (rows, SIMD vectors per row); accumulators: 16 of the 32 zmm registers
# (12 of the 16 ymm without AVX-512). The narrow one serves products only one vector wide.
_MR, _NV = (8, 2) if _AVX512 else (6, 2)
_MR_N = 16 if _AVX512 else 12
# the micro-kernel's reduction runs in blocks of about this many taps (products per output):
# each block's sums start from zero in the registers and are then added into the output, so
# a long reduction (a 3x3 conv over 512 channels: 4,608 taps) is a short chain per block plus
# a short chain of blocks, not one chain of every product. float32 relative error vs float64
# (tools/float32_error.py): that conv 1.2e-6 -> 2.3e-7 (PyTorch 2.3e-7), a 25,088-long dense
# layer 2.0e-6 -> 3.4e-7 (PyTorch 3.0e-7); the flush, a load, add and store per accumulator
# per block, is about 1% of a block's 128 x 16 vector FMAs
_REDUCTION_BLOCK = 128
# planar direct kernels, (outputs, vectors) per register block, largest first: the one-output
# form for depthwise planes, the multi-output ones for a channel multiplier m > 1 (LeNet's c1:
# m = O = 6), all within 16 accumulators; each shifted vector of x is loaded once for all the
# block's outputs (LeNet c1 forward ~0.80 -> ~0.32 ms with the NHWC shuffles below)
_VCONV_BLOCKS = ((6, 2), (4, 3), (2, 4), (1, 4))
# the planar forward moves its planes to NHWC by vector shuffles for 2 .. this many channels
# (each count its own generated code), element by element for more
_SHUFFLE_MAX_CHANNELS = 8
# vector loads that straddle two cache lines cost about twice as much: buffers read as the
# micro-kernel's right operand (and the direct kernels' planes) start on this boundary (bytes)
_ALIGN = 64

# ---------------------------------------------------------------- choosing a method

# one input channel per group (direct kernels): from this many output channels the inner loop
# runs along the channels of one pixel (vectors of channels), below it along the output
# columns of one channel; stride-1 convs below it run "planar" (whole padded images)
_DIRECT_WIDE = 16
# implicit GEMMs, straight on the padded input, when a kernel row's taps (KW*C) are fewer: with
# so few channels im2col costs about as much as the GEMM (stem, LeNet c1/c3)
_IMPLICIT_MAX_RUN = 64
# backward data at stride 1 gathers (the "full" conv of gy through the forward path: H*W rows
# of Ig) rather than scatters (OH*OW rows of KH*KW*Ig, then col2im) when it computes at most
# this many times the scatter's rows (and Ig fills a micro-tile)
_GATHER_MAX_ROWS = 1.25
# backward weight of ungrouped convs: with fewer rows than this many per thread and output
# channel, one task per column panel reduces over all rows (no partials) instead of one partial
# gradient per thread, which would then outweigh the rows (ResNet's last stages)
_SPLIT_ROWS_PER_THREAD_CHANNEL = 2
# largest full im2col (bytes) built for the few-rows paths: one im2col shared by the forward's
# tasks, the transposed forward y.T = W @ im2col(x).T (fewer pixels than output channels,
# ResNet's last stages), all of the scatter backward data's gy @ W before col2im
_SHARED_COL_BYTES = 16 << 20
# largest full im2col the split backward weight may build (bytes)
_SPLIT_COL_BYTES = 64 << 20

# ---------------------------------------------------------------- tiles and blocks

# im2col tile of the forward / scatter kernels (bytes): it stays inside L2 while the GEMM
# reads it; also the images per block of the implicit weight gradient (gy's copy and x's)
_TILE_BYTES = 256 * 1024
# backward-weight tiles (bytes): larger than the forward's, for longer reductions per
# micro-tile (the tile's rows are the reduction of gy.T @ col)
_WGRAD_TILE_BYTES = 1 << 20
_MIN_TILE_ROWS = 4 * _MR         # rows of the smallest im2col tile: the GEMM's overhead per tile
_PACK_BLOCK = 32                 # W.T is packed in square blocks of this many rows and columns
# weights up to this many elements are transposed by NumPy in the calling thread: a parallel
# launch costs more than the copy
_SMALL_PACK = 1 << 14

# ---------------------------------------------------------------- threads and tasks

# tasks per thread (GEMM-based kernels): more balance the load between the threads, fewer
# cost less (each task allocates its own buffers and runs its own edge tiles)
_TASKS_PER_THREAD = 4
_DIRECT_CHUNKS_PER_THREAD = 4    # the same for the direct kernels and the bias gradient
# multiply-adds below which a GEMM runs as one serial task: waking the thread pool costs more
_SERIAL_WORK = 1 << 20

# ---------------------------------------------------------------- bias gradient

# below this many columns bias_grad sums blocks of rows elementwise (independent vector
# lanes) into at least _FEW_COLUMNS_LANES accumulators, instead of C chains one row at a time
# (LeNet c1: 0.31 -> 0.22 ms)
_FEW_COLUMNS = 32
_FEW_COLUMNS_LANES = 128
# rows per chunk of the bias gradient (chunks: at most _DIRECT_CHUNKS_PER_THREAD per thread)
_BIAS_ROWS_PER_CHUNK_FEW = 256
_BIAS_ROWS_PER_CHUNK = 64
