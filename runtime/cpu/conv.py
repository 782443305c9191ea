"""CPU kernels for convolution and dense layers (see `runtime/isa.py` for the contract).

Layouts: feature maps NHWC, conv weights OHWI `(O, KH, KW, I/groups)`, dense weights `(U, F)`.
Everything jitted is generic over the dtype (float32 for speed, float64 for gradient checks)
and takes the geometry as int64 values, so one compiled version per dtype serves every layer.

Arithmetic. No BLAS: matrix products go through `_mk`, a register-blocked micro-kernel
written in LLVM IR (a Numba intrinsic: `_MR` rows x `_NV` SIMD vectors of accumulators, fused
multiply-adds), and the direct kernels' inner loops through explicit SIMD loops (`_vaxpy`,
`_vconv`, ...). On the AVX-512 machines this project targets that runs at about twice the
speed of the OpenBLAS SGEMM there (which the environment pins to its AVX2 kernels), and with no
BLAS call inside `prange` the BLAS and Numba thread pools cannot fight. FMA is not fastmath:
each product-sum is rounded once, every sum runs in a fixed order (results are deterministic
for a given thread count), and no-NaN/no-inf assumptions are never made.

Methods, picked by the wrappers from the shapes (M = N*OH*OW output pixels):

- I/groups == 1 (depthwise with any channel multiplier, or a single input channel, e.g.
  LeNet's first layer): direct kernels. Stride 1 with few channels (O < 16): "planar", whole
  zero-padded images in channel-major order, every tap one shifted vector loop: the outputs
  of one input plane (its channel multiplier m; LeNet c1: m = O = 6) up to 6 at a time, a
  block of 6 outputs x 2 vectors of pixels (4 x 3, 2 x 4, 1 x 4) held in registers over all
  taps, each shifted vector of x loaded once for all of them (`_make_vconv`); the planes then
  go to NHWC 2..8 channels at a time by vector shuffles (`_make_interleave`; element by
  element for other O). It was one output at a time with the planes copied out element by
  element, which took twice as long as the taps (LeNet c1 forward ~0.80 -> ~0.32 ms);
  otherwise row by row, the inner loop along the channels (O >= 16) or along the output columns. Except
  the weight gradient of a stride-1 undilated conv with a single input channel and O < 16
  (LeNet c1): the implicit one below on the input restacked per block of images as
  xs[oh, w, kh] = x[oh + kh, w] (an image transposed, then one whole-vector copy per
  pixel), so that all of a pixel's KH*KW taps are one run, a single "kernel row"
  (~0.9 -> ~0.5 ms).
- groups == 1, few input channels (KW*C < 64; stem, LeNet): "implicit" GEMMs straight on the
  zero-padded input, no im2col: a kernel row's taps are a contiguous run, and the
  micro-kernel's reduction is two-level (kernel rows x their runs), so every kernel row goes
  through one micro-tile with the accumulators in registers. Forward: stride 1, micro-tiles
  called directly (not through `_gemm`) over an image's "virtual" rows (every padded column
  of each output row) into a scratch image, the weight zero-padded to whole tiles; strided,
  one `_gemm` per output row into y (bias stored first). Backward weight, stride 1:
  gy.T @ im2col(x), tiles of output channels (gy broadcast, copied per block of images with
  zero rows for the padded columns) x a kernel row's run of taps (vectors of x), called
  directly; the reduction is two-level over a block of images x their virtual rows, so each
  tile keeps its accumulators in registers over a whole block (one partial per thread, the
  order images-then-pixels whatever the block size). It was `im2col(x).T @ gy` per image and
  kernel row through `_gemm`: reductions of one image, a one-vector-wide tile of 16
  broadcasts per vector load, the edge rows through its scratch tile (LeNet c3 ~0.94 ->
  ~0.45 ms). Strided: one `_gemm` per output row and kernel row into (K, O) partials.
- other convs: NHWC im2col (columns in (kh, kw, c) order, matching OHWI weights):
  - forward: tasks over tiles of output rows (and parts of the output channels when there are
    few tiles), im2col tile then `col @ W.T` (W.T packed per call); with M <= O (ResNet's last
    stages) `y.T = W @ col.T` instead, which needs no packing. 1x1 stride-1 unpadded convs
    ("plain") and dense layers read their input as the im2col;
  - backward data: stride 1 when it is not much more work and the layer's input channels
    fill a micro-tile (or the batch is below the thread count), the "full" conv of gy with
    the flipped kernel through the forward path (gathered: any tiling is race-free); else
    (strided, or few input channels as LeNet's c3) `gy @ W` then col2im, each task owning
    whole images (or, with M <= O, all of `gy @ W` first in column panels). W's rows are
    zero-padded to whole micro-tiles (every tile of `gy @ W` stored straight, none through
    `_gemm`'s edge path), and col2im adds a kernel row's taps that fall inside the image as
    one contiguous vector run (dw == 1) (LeNet c3 ~1.7 -> ~0.7 ms);
  - backward weight: `gy.T @ col` into one partial per thread, added in a fixed order; with
    few rows against the weight, im2col of every row once, then one task per column panel
    reducing over all rows (no partials).

Compile time. A parallel loop's body, with all its callees, is optimised and compiled again
inside the loop's own function and again in the function holding the loop; the kernels were
therefore written as serial tasks (`_task_*_c`) compiled once per dtype as C functions that
one small `prange` loop (`_parallel`) calls by symbol name, as is `_gemm`. Cold compile of
every path: about 13 s per dtype on the 2-core target; `cache=True` makes later runs
near-free.
"""

from __future__ import annotations

import llvmlite.binding as llvm
import llvmlite.ir as ir
import numba
import numpy as np
from numba import carray, cfunc, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .table import kernel


# ---------------------------------------------------------------- micro-kernel

def _has_avx512() -> bool:
    """Whether the code Numba generates may use AVX-512 (its target: the host unless
    NUMBA_CPU_NAME / NUMBA_CPU_FEATURES say otherwise)."""
    if numba.config.CPU_FEATURES is not None:
        return "+avx512f" in numba.config.CPU_FEATURES.split(",")
    if numba.config.CPU_NAME is not None:
        return False
    return bool(llvm.get_host_cpu_features().get("avx512f"))


_AVX512 = _has_avx512()
_VBYTES = 64 if _AVX512 else 32   # SIMD register width (bytes)
# micro-tile shapes (rows, SIMD vectors per row); accumulators: 16 of the 32 zmm registers
# (12 of the 16 ymm without AVX-512). The narrow one serves products only one vector wide.
_MR, _NV = (8, 2) if _AVX512 else (6, 2)
_MR_N = 16 if _AVX512 else 12


class _VecIR:
    """Codegen-time helpers shared by the SIMD intrinsics below (plain Python, run while
    Numba lowers an intrinsic; nothing of it is left at run time): one SIMD vector type of
    `dtype` (`_VBYTES` wide), the LLVM intrinsics over it, and the usual address and
    broadcast idioms."""

    def __init__(self, context, builder, dtype):
        self.context, self.builder = context, builder
        self.fty = context.get_value_type(dtype)
        self.isz = isz = context.get_abi_sizeof(self.fty)
        self.vl = vl = _VBYTES // isz
        self.vty = vty = ir.VectorType(self.fty, vl)
        self.i64, self.i32 = i64, i32 = ir.IntType(64), ir.IntType(32)
        self.sfx = f"v{vl}{'f32' if isz == 4 else 'f64'}"
        self.zero = ir.Constant(vty, [0.0] * vl)
        self.undef = ir.Constant(vty, ir.Undefined)
        self.bcast = ir.Constant(ir.VectorType(i32, vl), [0] * vl)   # shuffle mask: lane 0
        self.align = ir.Constant(i32, isz)
        self.lanes = ir.Constant(ir.VectorType(i64, vl), list(range(vl)))

    def _declare(self, name, ret, params):
        return cgutils.get_or_insert_function(self.builder.module,
                                              ir.FunctionType(ret, params), name)

    @property
    def fma(self):
        vty = self.vty
        return self._declare(f"llvm.fma.{self.sfx}", vty, [vty, vty, vty])

    @property
    def mload(self):
        vty, mty = self.vty, ir.VectorType(ir.IntType(1), self.vl)
        return self._declare(f"llvm.masked.load.{self.sfx}.p0{self.sfx}", vty,
                             [vty.as_pointer(), self.i32, mty, vty])

    @property
    def mstore(self):
        vty, mty = self.vty, ir.VectorType(ir.IntType(1), self.vl)
        return self._declare(f"llvm.masked.store.{self.sfx}.p0{self.sfx}", ir.VoidType(),
                             [vty, vty.as_pointer(), self.i32, mty])

    def ptr(self, arr, aty, off):
        """The address of arr[off] (arr: the value of a 1-D array of Numba type aty)."""
        data = cgutils.create_struct_proxy(aty)(self.context, self.builder, value=arr).data
        return self.builder.gep(data, [off])

    def vp(self, p, i):
        """p + i as a pointer to one vector."""
        return self.builder.bitcast(self.builder.gep(p, [i]), self.vty.as_pointer())

    def splat(self, x, vty=None):
        """A vector (of type vty, default the float vector) with x in every lane."""
        builder, vty = self.builder, vty or self.vty
        undef = ir.Constant(vty, ir.Undefined)
        return builder.shuffle_vector(
            builder.insert_element(undef, x, ir.Constant(self.i32, 0)), undef, self.bcast)

    def tail_mask(self, rest):
        """The lane mask of the first `rest` lanes."""
        return self.builder.icmp_signed(
            "<", self.lanes, self.splat(rest, ir.VectorType(self.i64, self.vl)))

    def load(self, p, i, mask=None):
        """The vector at p + i (masked lanes read as zero when `mask` is given)."""
        if mask is None:
            return self.builder.load(self.vp(p, i), align=self.isz)
        return self.builder.call(self.mload, [self.vp(p, i), self.align, mask, self.zero])

    def store(self, v, p, i, mask=None):
        """Store vector v at p + i (only the lanes of `mask` when it is given)."""
        if mask is None:
            self.builder.store(v, self.vp(p, i), align=self.isz)
        else:
            self.builder.call(self.mstore, [v, self.vp(p, i), self.align, mask])


def _close_loop(builder, counter, phis, values, block, limit, again, exit_block):
    """End one iteration of a counted loop built from phi nodes: counter + 1 and the
    accumulator phis' new `values` flow in from `block`; branch to `again` while the counter
    is below `limit`, else to `exit_block`."""
    nxt = builder.add(counter, ir.Constant(counter.type, 1))
    counter.add_incoming(nxt, block)
    for phi, value in zip(phis, values):
        phi.add_incoming(value, block)
    builder.cbranch(builder.icmp_signed("<", nxt, limit), again, exit_block)


def _make_mk(MR, NV):
    @intrinsic
    def mk(typingctx, a, a_off, lda, ldk, b, b_off, ldb, c, c_off, ldc, k, acc, nkh, ldah,
           ldbh):
        """One MR x NR micro-tile (NR = NV vectors of the dtype): for i < MR, j < NR,
            c[c_off + i*ldc + j] = sum_{h < nkh} sum_{q < k} a[a_off + i*lda + h*ldah + q*ldk]
                                                          * b[b_off + h*ldbh + q*ldb + j]
                                   (+ its old value when acc != 0),
        the products added in that (h, q) order. The reduction is two-level so that a conv's
        kernel rows (h), each a contiguous run of taps (q), go through one tile with the
        accumulators kept in registers. a, b, c are 1-D arrays of one float dtype; every
        element addressed must exist."""
        ip = types.intp
        sig = types.void(a, ip, ip, ip, b, ip, ip, c, ip, ip, ip, ip, ip, ip, ip)

        def codegen(context, builder, signature, args):
            (a_arr, a_off, lda, ldk, b_arr, b_off, ldb, c_arr, c_off, ldc, k, acc, nkh, ldah,
             ldbh) = args
            g = _VecIR(context, builder, signature.args[0].dtype)
            isz, vl, vty, i64, zero = g.isz, g.vl, g.vty, g.i64, g.zero
            pa = g.ptr(a_arr, signature.args[0], a_off)
            pb = g.ptr(b_arr, signature.args[4], b_off)
            pc = g.ptr(c_arr, signature.args[7], c_off)
            fma = g.fma
            c0 = ir.Constant(i64, 0)

            # for h in range(nkh): for q in range(k):
            #     acc[i][v] = fma(splat(a[i, h, q]), b[h, q, v], acc[i][v])
            pre = builder.block
            outer = builder.append_basic_block("mk.outer")
            loop = builder.append_basic_block("mk.loop")
            latch_o = builder.append_basic_block("mk.outer_latch")
            done = builder.append_basic_block("mk.done")
            builder.cbranch(builder.and_(builder.icmp_signed(">", k, c0),
                                         builder.icmp_signed(">", nkh, c0)), outer, done)
            builder.position_at_end(outer)
            h = builder.phi(i64)
            h.add_incoming(c0, pre)
            accs_o = []
            for _ in range(MR * NV):
                p = builder.phi(vty)
                p.add_incoming(zero, pre)
                accs_o.append(p)
            pah = builder.gep(pa, [builder.mul(h, ldah)])
            pbh = builder.gep(pb, [builder.mul(h, ldbh)])
            builder.branch(loop)
            builder.position_at_end(loop)
            q = builder.phi(i64)
            q.add_incoming(c0, outer)
            accs = []
            for p_o in accs_o:
                p = builder.phi(vty)
                p.add_incoming(p_o, outer)
                accs.append(p)
            brow = builder.gep(pbh, [builder.mul(q, ldb)])
            bvec = [g.load(brow, ir.Constant(i64, v * vl)) for v in range(NV)]
            acol = builder.gep(pah, [builder.mul(q, ldk)])
            new = []
            for i in range(MR):
                s = g.splat(builder.load(
                    builder.gep(acol, [builder.mul(ir.Constant(i64, i), lda)])))
                for v in range(NV):
                    new.append(builder.call(fma, [s, bvec[v], accs[i * NV + v]]))
            _close_loop(builder, q, accs, new, loop, k, loop, latch_o)
            builder.position_at_end(latch_o)
            _close_loop(builder, h, accs_o, new, latch_o, nkh, outer, done)
            latch = latch_o

            # store (or add) the accumulators
            builder.position_at_end(done)
            totals = []
            for i in range(MR * NV):
                total = builder.phi(vty)
                total.add_incoming(zero, pre)
                total.add_incoming(new[i], latch)
                totals.append(total)
            ptrs = [builder.bitcast(
                        builder.gep(pc, [builder.add(builder.mul(ir.Constant(i64, i), ldc),
                                                     ir.Constant(i64, v * vl))]),
                        vty.as_pointer())
                    for i in range(MR) for v in range(NV)]
            with builder.if_else(builder.icmp_signed("!=", acc, ir.Constant(i64, 0))) as (add, put):
                with add:
                    for ptr, total in zip(ptrs, totals):
                        builder.store(builder.fadd(builder.load(ptr, align=isz), total), ptr,
                                      align=isz)
                with put:
                    for ptr, total in zip(ptrs, totals):
                        builder.store(total, ptr, align=isz)
            return context.get_dummy_value()

        return sig, codegen

    return mk


_mk = _make_mk(_MR, _NV)
_mk_narrow = _make_mk(_MR_N, 1)


@njit(cache=True, nogil=True)
def _tile(narrow, a, a_off, lda, ldk, b, b_off, ldb, c, c_off, ldc, k, acc, nkh, ldah, ldbh):
    if narrow:
        _mk_narrow(a, a_off, lda, ldk, b, b_off, ldb, c, c_off, ldc, k, acc, nkh, ldah, ldbh)
    else:
        _mk(a, a_off, lda, ldk, b, b_off, ldb, c, c_off, ldc, k, acc, nkh, ldah, ldbh)


@njit(cache=True, nogil=True)
def _gemm_body(a, a_off, lda, ldk, m, b, b_off, ldb, n, c, c_off, ldc, k, acc, a_over, nkh,
               ldah, ldbh):
    """c[c_off + i*ldc + j] (+)= sum_{h < nkh} sum_{q < k} a[a_off + i*lda + h*ldah + q*ldk]
                                                     * b[b_off + h*ldbh + q*ldb + j]
    for i < m, j < n (added to the old value when acc != 0): a GEMM whose reduction runs over
    nkh blocks of k (a conv's kernel rows; nkh = 1: a plain GEMM). a, b, c: 1-D arrays.
    Products one vector wide use the narrow micro-tile. Edge rows of a and edge columns of b
    are copied into zero-padded micro-panels (a's only without `a_over`: the caller guarantees
    rows m.. of a, up to the micro-tile height, can be read), edge tiles of c go through a
    scratch tile, so no element of c outside the m x n product is written."""
    vl = _VBYTES // c.itemsize
    narrow = n <= vl
    mr = _MR_N if narrow else _MR
    nr = vl if narrow else _NV * vl
    mfull = m if a_over else m - m % mr
    nfull = n - n % nr
    kk = nkh * k
    at = np.zeros(mr * kk if m > mfull else 0, c.dtype)
    for i in range(m - mfull):
        for h in range(nkh):
            base = a_off + (mfull + i) * lda + h * ldah
            for q in range(k):
                at[i * kk + h * k + q] = a[base + q * ldk]
    bt = np.zeros(kk * nr if n > nfull else 0, c.dtype)
    for h in range(nkh):
        for q in range(k):
            base = b_off + h * ldbh + q * ldb + nfull
            for j in range(n - nfull):
                bt[(h * k + q) * nr + j] = b[base + j]
    ct = np.empty(mr * nr, c.dtype)
    for j0 in range(0, n, nr):
        for i0 in range(0, m, mr):
            # one call site for the micro-kernel (it is unrolled code): pick its operands
            if i0 < mfull:
                pa, pa_off, plda, pldk, pldah = a, a_off + i0 * lda, lda, ldk, ldah
            else:
                pa, pa_off, plda, pldk, pldah = at, 0, kk, 1, k
            if j0 < nfull:
                pb, pb_off, pldb, pldbh = b, b_off + j0, ldb, ldbh
            else:
                pb, pb_off, pldb, pldbh = bt, 0, nr, k * nr
            inside = i0 + mr <= m and j0 < nfull
            if inside:
                pc, pc_off, pldc, pacc = c, c_off + i0 * ldc + j0, ldc, acc
            else:
                pc, pc_off, pldc, pacc = ct, 0, nr, 0
            _tile(narrow, pa, pa_off, plda, pldk, pb, pb_off, pldb, pc, pc_off, pldc, k, pacc,
                  nkh, pldah, pldbh)
            if not inside:
                for i in range(min(mr, m - i0)):
                    base = c_off + (i0 + i) * ldc + j0
                    for j in range(min(nr, n - j0)):
                        c[base + j] = (c[base + j] if acc != 0 else 0) + ct[i * nr + j]


# _gemm is compiled once per dtype, as a C function that the kernels call by symbol name:
# linked into every kernel that uses it (as Numba does with callees), its code would be
# optimised and compiled again in each of them, and in each of their parallel loops, which
# multiplied the cold compile time. The symbol is resolved when a kernel is linked or loaded
# from the cache, so it is registered (the C function compiled or loaded from the cache)
# before any kernel of that dtype is compiled or runs (`_use_dtype`, called by every wrapper).

def _gemm_c_sig(dtype):
    p, i = types.CPointer(dtype), types.int64
    return types.void(p, i, i, i, p, i, i, p, i, i, i, i, i, i, i)


def _gemm_c(a_p, lda, ldk, m, b_p, ldb, n, c_p, ldc, k, acc, a_over, nkh, ldah, ldbh):
    # views long enough for every index _gemm_body touches (Numba does not bounds-check)
    a = carray(a_p, (m + _MR_N) * lda + (nkh - 1) * ldah + (k + 1) * ldk + 1)
    b = carray(b_p, (nkh - 1) * ldbh + (k + 1) * ldb + n + 1)
    c = carray(c_p, (m + 1) * ldc + n + 1)
    _gemm_body(a, 0, lda, ldk, m, b, 0, ldb, n, c, 0, ldc, k, acc, a_over != 0, nkh, ldah,
               ldbh)


_GEMM_EXTERNAL = {}


def _gemm_external(dtype):
    """Compile (or load from the cache) and register the C GEMM of `dtype`; returns the typed
    external function that jitted code calls."""
    dtype = np.dtype(dtype)
    ext = _GEMM_EXTERNAL.get(dtype)
    if ext is None:
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"conv/dense kernels run in float32 or float64, not {dtype}")
        sig = _gemm_c_sig(numba.from_dtype(dtype))
        compiled = cfunc(sig, cache=True, nopython=True)(_gemm_c)
        name = f"netspec_conv_gemm_{dtype.name}"
        llvm.add_symbol(name, compiled.address)
        ext = _GEMM_EXTERNAL[dtype] = (compiled, types.ExternalFunction(name, sig))
    return ext[1]


@intrinsic
def _ptr(typingctx, arr, off):
    """The address of arr[off], as a typed pointer."""
    sig = types.CPointer(arr.dtype)(arr, types.intp)

    def codegen(context, builder, signature, args):
        data = cgutils.create_struct_proxy(signature.args[0])(context, builder, value=args[0])
        return builder.gep(data.data, [args[1]])

    return sig, codegen


def _gemm(a, a_off, lda, ldk, m, b, b_off, ldb, n, c, c_off, ldc, k, acc, a_over=False, nkh=1,
          ldah=0, ldbh=0):
    """_gemm_body through the per-dtype C function; for jitted code only."""
    raise NotImplementedError("_gemm runs inside jitted kernels only")


@overload(_gemm, jit_options={"cache": True})
def _gemm_overload(a, a_off, lda, ldk, m, b, b_off, ldb, n, c, c_off, ldc, k, acc,
                   a_over=False, nkh=1, ldah=0, ldbh=0):
    external = _gemm_external(numba.np.numpy_support.as_dtype(a.dtype))

    def impl(a, a_off, lda, ldk, m, b, b_off, ldb, n, c, c_off, ldc, k, acc, a_over=False,
             nkh=1, ldah=0, ldbh=0):
        external(_ptr(a, a_off), lda, ldk, m, _ptr(b, b_off), ldb, n, _ptr(c, c_off), ldc, k,
                 acc, 1 if a_over else 0, nkh, ldah, ldbh)

    return impl


# ---------------------------------------------------------------- vector loops
#
# Element-wise loops of any length as explicit SIMD code: full vectors, then one masked vector
# for the tail. (LLVM's own vectorised loops run short trip counts, like a 28-wide output row,
# in their scalar remainder.)

def _make_vloop(kind):
    """kind "copy":   d[d_off + i] = x[x_off + i]                   (i < n)
       kind "axpy":   d[d_off + i] += s * x[x_off + i]
       kind "muladd": d[d_off + i] += x[x_off + i] * z[z_off + i]
       kind "dot":    d[d_off + l] += sum over i = l (mod VL) of x[x_off + i] * z[z_off + i]
                      (l < VL: lane-wise partial sums, VL = one SIMD vector of the dtype)"""

    @intrinsic
    def vloop(typingctx, d, d_off, s, x, x_off, z, z_off, n):
        ip = types.intp
        sig = types.void(d, ip, d.dtype, x, ip, z, ip, ip)

        def codegen(context, builder, signature, args):
            d_arr, d_off, s, x_arr, x_off, z_arr, z_off, n = args
            g = _VecIR(context, builder, signature.args[0].dtype)
            isz, vl, vty, i64, zero, fma = g.isz, g.vl, g.vty, g.i64, g.zero, g.fma
            pd = g.ptr(d_arr, signature.args[0], d_off)
            px = g.ptr(x_arr, signature.args[3], x_off)
            pz = g.ptr(z_arr, signature.args[5], z_off)
            splat = g.splat(s)

            def step(i, acc, mask):
                """One vector at element i (masked when `mask` is not None); returns acc."""
                def load(p):
                    return g.load(p, i, mask)

                if kind == "copy":
                    new = load(px)
                elif kind == "axpy":
                    new = builder.call(fma, [splat, load(px), load(pd)])
                elif kind == "muladd":
                    new = builder.call(fma, [load(px), load(pz), load(pd)])
                else:
                    return builder.call(fma, [load(px), load(pz), acc])
                g.store(new, pd, i, mask)
                return acc

            # full vectors
            nfull = builder.sub(n, builder.srem(n, ir.Constant(i64, vl)))
            pre = builder.block
            loop = builder.append_basic_block("v.loop")
            tail = builder.append_basic_block("v.tail")
            builder.cbranch(builder.icmp_signed(">", nfull, ir.Constant(i64, 0)), loop, tail)
            builder.position_at_end(loop)
            i = builder.phi(i64)
            i.add_incoming(ir.Constant(i64, 0), pre)
            acc = builder.phi(vty)
            acc.add_incoming(zero, pre)
            acc1 = step(i, acc, None)
            i1 = builder.add(i, ir.Constant(i64, vl))
            latch = builder.block
            i.add_incoming(i1, latch)
            acc.add_incoming(acc1, latch)
            builder.cbranch(builder.icmp_signed("<", i1, nfull), loop, tail)
            # the masked tail
            builder.position_at_end(tail)
            acc_t = builder.phi(vty)
            acc_t.add_incoming(zero, pre)
            acc_t.add_incoming(acc1, latch)
            rest = builder.sub(n, nfull)
            mask = g.tail_mask(rest)
            with builder.if_then(builder.icmp_signed(">", rest, ir.Constant(i64, 0))):
                acc_m = step(nfull, acc_t, mask)
                if kind == "dot":
                    tail_blk = builder.block
            if kind == "dot":
                total = builder.phi(vty)
                total.add_incoming(acc_t, tail)
                total.add_incoming(acc_m, tail_blk)
                p = g.vp(pd, ir.Constant(i64, 0))
                builder.store(builder.fadd(builder.load(p, align=isz), total), p, align=isz)
            return context.get_dummy_value()

        return sig, codegen

    return vloop


_vcopy = _make_vloop("copy")
_vaxpy = _make_vloop("axpy")
_vmuladd = _make_vloop("muladd")
_vdot = _make_vloop("dot")


def _make_vconv(NO, unroll):
    @intrinsic
    def vconv(typingctx, d, d_off, d_step, s, s_off, s_step, x, x_off, x_step_h, x_step_w, th,
              tw, n):
        """d[d_off + j*d_step + i] += sum over a < th, b < tw of
               s[s_off + j + (a*tw + b)*s_step] * x[x_off + a*x_step_h + b*x_step_w + i]
        for j < NO, i < n: a small 2-D correlation along one flat plane into NO output planes
        at once. Vectors of d are loaded and stored once for all th*tw taps, `unroll` vectors
        of each of the NO outputs at a time (NO*unroll independent FMA chains, every shifted
        vector of x loaded once for the NO outputs), then single vectors, then a masked
        tail."""
        ip = types.intp
        sig = types.void(d, ip, ip, s, ip, ip, x, ip, ip, ip, ip, ip, ip)

        def codegen(context, builder, signature, args):
            (d_arr, d_off, d_step, s_arr, s_off, s_step, x_arr, x_off, x_step_h, x_step_w, th,
             tw, n) = args
            g = _VecIR(context, builder, signature.args[0].dtype)
            vl, vty, i64, fma = g.vl, g.vty, g.i64, g.fma
            pd = g.ptr(d_arr, signature.args[0], d_off)
            ps = g.ptr(s_arr, signature.args[3], s_off)
            px = g.ptr(x_arr, signature.args[6], x_off)
            c0 = ir.Constant(i64, 0)
            dofs = [builder.mul(ir.Constant(i64, j), d_step) for j in range(NO)]

            def block(i, count, mask):
                """d[j, i : i + count*vl] += the taps (one vector, masked, when `mask` is
                given)."""
                def load(p, j):
                    return g.load(p, j, mask)

                offs = [builder.add(i, ir.Constant(i64, u * vl)) for u in range(count)]
                doffs = [builder.add(dj, o) for dj in dofs for o in offs]   # (j, u) order
                start = builder.block
                acc0 = [load(pd, o) for o in doffs]
                la = builder.append_basic_block("c.a")
                lb = builder.append_basic_block("c.b")
                lb_end = builder.append_basic_block("c.b_end")
                done = builder.append_basic_block("c.done")
                builder.cbranch(builder.and_(builder.icmp_signed(">", th, c0),
                                             builder.icmp_signed(">", tw, c0)), la, done)
                builder.position_at_end(la)                      # for a < th
                a = builder.phi(i64)
                a.add_incoming(c0, start)
                acc_a = [builder.phi(vty) for _ in doffs]
                for p, v in zip(acc_a, acc0):
                    p.add_incoming(v, start)
                builder.branch(lb)
                builder.position_at_end(lb)                      # for b < tw
                b = builder.phi(i64)
                b.add_incoming(c0, la)
                acc_b = [builder.phi(vty) for _ in doffs]
                for p, v in zip(acc_b, acc_a):
                    p.add_incoming(v, la)
                t = builder.add(builder.mul(a, tw), b)
                ts = builder.mul(t, s_step)
                xo = builder.add(builder.mul(a, x_step_h), builder.mul(b, x_step_w))
                xv = [load(px, builder.add(xo, o)) for o in offs]
                acc_n = []
                for j in range(NO):
                    sv = g.splat(builder.load(builder.gep(ps, [builder.add(
                        ts, ir.Constant(i64, j))])))
                    acc_n += [builder.call(fma, [sv, v, acc])
                              for v, acc in zip(xv, acc_b[j * count:(j + 1) * count])]
                _close_loop(builder, b, acc_b, acc_n, lb, tw, lb, lb_end)
                builder.position_at_end(lb_end)
                _close_loop(builder, a, acc_a, acc_n, lb_end, th, la, done)
                builder.position_at_end(done)
                totals = []
                for v0, vn in zip(acc0, acc_n):
                    total = builder.phi(vty)
                    total.add_incoming(v0, start)
                    total.add_incoming(vn, lb_end)
                    totals.append(total)
                for o, total in zip(doffs, totals):
                    g.store(total, pd, o, mask)

            def vector_loop(begin, end, count):
                """for i in range(begin, end, count*vl): block(i, count)."""
                pre = builder.block
                loop = builder.append_basic_block("c.loop")
                after = builder.append_basic_block("c.after")
                builder.cbranch(builder.icmp_signed("<", begin, end), loop, after)
                builder.position_at_end(loop)
                i = builder.phi(i64)
                i.add_incoming(begin, pre)
                block(i, count, None)
                i1 = builder.add(i, ir.Constant(i64, count * vl))
                i.add_incoming(i1, builder.block)
                builder.cbranch(builder.icmp_signed("<", i1, end), loop, after)
                builder.position_at_end(after)

            n_full = builder.sub(n, builder.srem(n, ir.Constant(i64, vl)))
            if unroll > 1:
                n_unrolled = builder.sub(n, builder.srem(n, ir.Constant(i64, unroll * vl)))
                vector_loop(c0, n_unrolled, unroll)
                vector_loop(n_unrolled, n_full, 1)
            else:
                vector_loop(c0, n_full, 1)
            rest = builder.sub(n, n_full)
            mask = g.tail_mask(rest)
            with builder.if_then(builder.icmp_signed(">", rest, c0)):
                block(n_full, 1, mask)
            return context.get_dummy_value()

        return sig, codegen

    return vconv


def _make_interleave(O):
    @intrinsic
    def interleave(typingctx, d, d_off, s, s_off, s_step, n):
        """d[d_off + i*O + o] = s[s_off + o*s_step + i] for i < n, o < O: O planes to
        channel-last order, vl pixels at a time (O vector loads, O vector stores, the lanes
        moved by shuffles), then a masked tail."""
        ip = types.intp
        sig = types.void(d, ip, s, ip, ip, ip)

        def codegen(context, builder, signature, args):
            d_arr, d_off, s_arr, s_off, s_step, n = args
            g = _VecIR(context, builder, signature.args[0].dtype)
            vl, i64, i32 = g.vl, g.i64, g.i32
            pd = g.ptr(d_arr, signature.args[0], d_off)
            ps = g.ptr(s_arr, signature.args[2], s_off)
            c0 = ir.Constant(i64, 0)
            soffs = [builder.mul(ir.Constant(i64, o), s_step) for o in range(O)]

            def chunk(i, rest):
                """Pixels i .. i + vl (only `rest` of them when rest is not None)."""
                mask = None if rest is None else g.tail_mask(rest)
                src = [g.load(ps, builder.add(so, i), mask) for so in soffs]
                for k in range(O):
                    # lane e of output vector k: pixel (k*vl + e) // O, channel (k*vl + e) % O
                    lanes = [((k * vl + e) % O, (k * vl + e) // O) for e in range(vl)]
                    used = sorted({o for o, _ in lanes})
                    vty_i = ir.VectorType(i32, vl)
                    v = builder.shuffle_vector(src[used[0]], g.undef, ir.Constant(
                        vty_i, [q if c == used[0] else 0 for c, q in lanes]))
                    have = {used[0]}
                    for o in used[1:]:      # fold in the other sources, placed lanes kept
                        v = builder.shuffle_vector(v, src[o], ir.Constant(vty_i, [
                            vl + q if c == o else (e if c in have else 0)
                            for e, (c, q) in enumerate(lanes)]))
                        have.add(o)
                    off = builder.add(builder.mul(i, ir.Constant(i64, O)),
                                      ir.Constant(i64, k * vl))
                    if rest is None:
                        g.store(v, pd, off)
                    else:                       # the first rest*O - k*vl lanes
                        left = builder.sub(builder.mul(rest, ir.Constant(i64, O)),
                                           ir.Constant(i64, k * vl))
                        with builder.if_then(builder.icmp_signed(">", left, c0)):
                            g.store(v, pd, off, g.tail_mask(left))

            n_full = builder.sub(n, builder.srem(n, ir.Constant(i64, vl)))
            pre = builder.block
            loop = builder.append_basic_block("t.loop")
            after = builder.append_basic_block("t.after")
            builder.cbranch(builder.icmp_signed(">", n_full, c0), loop, after)
            builder.position_at_end(loop)
            i = builder.phi(i64)
            i.add_incoming(c0, pre)
            chunk(i, None)
            i1 = builder.add(i, ir.Constant(i64, vl))
            i.add_incoming(i1, builder.block)
            builder.cbranch(builder.icmp_signed("<", i1, n_full), loop, after)
            builder.position_at_end(after)
            rest = builder.sub(n, n_full)
            with builder.if_then(builder.icmp_signed(">", rest, c0)):
                chunk(n_full, rest)
            return context.get_dummy_value()

        return sig, codegen

    return interleave


_interleave = {o: _make_interleave(o) for o in range(2, 9)}
_interleave2, _interleave3, _interleave4, _interleave5 = (_interleave[o] for o in range(2, 6))
_interleave6, _interleave7, _interleave8 = (_interleave[o] for o in range(6, 9))


@njit(cache=True, nogil=True, inline='always')
def _planes_to_channels(d, d_off, s, s_off, s_step, n, O):
    """d[d_off + i*O + o] = s[s_off + o*s_step + i] (i < n, o < O; 2 <= O <= 8)."""
    if O == 6:
        _interleave6(d, d_off, s, s_off, s_step, n)
    elif O == 2:
        _interleave2(d, d_off, s, s_off, s_step, n)
    elif O == 3:
        _interleave3(d, d_off, s, s_off, s_step, n)
    elif O == 4:
        _interleave4(d, d_off, s, s_off, s_step, n)
    elif O == 5:
        _interleave5(d, d_off, s, s_off, s_step, n)
    elif O == 7:
        _interleave7(d, d_off, s, s_off, s_step, n)
    elif O == 8:
        _interleave8(d, d_off, s, s_off, s_step, n)


# (outputs, vectors) per block: the one-output form for depthwise planes, the multi-output
# ones for a channel multiplier m > 1 (LeNet's c1: m = O = 6), all within 16 accumulators
_VCONV_UNROLL = 4
_vconv = _make_vconv(1, _VCONV_UNROLL)
_vconv2 = _make_vconv(2, 4)
_vconv4 = _make_vconv(4, 3)
_vconv6 = _make_vconv(6, 2)


# ---------------------------------------------------------------- aligned buffers
#
# Vector loads that straddle two cache lines cost about twice as much: buffers read as the
# micro-kernel's right operand (and the direct kernels' planes) start on a 64-byte boundary.

_ALIGN = 64


@njit(cache=True, nogil=True)
def _abuf(n, like):
    """An uninitialised 1-D array of n elements of like's dtype, 64-byte aligned."""
    isz = like.itemsize
    raw = np.empty(n + _ALIGN // isz, like.dtype)
    off = ((_ALIGN - raw.ctypes.data % _ALIGN) % _ALIGN) // isz
    return raw[off:off + n]


def _aligned_empty(shape, dtype):
    """np.empty, 64-byte aligned."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + _ALIGN, np.uint8)
    off = -raw.ctypes.data % _ALIGN
    return raw[off:off + nbytes].view(dtype).reshape(shape)


def _aligned_zeros(shape, dtype):
    a = _aligned_empty(shape, dtype)
    a[...] = 0
    return a


def _aligned(a, dtype=None):
    """a as a C-contiguous, 64-byte aligned array of `dtype` (a itself when it already is)."""
    a = np.ascontiguousarray(a, dtype=dtype)
    if a.ctypes.data % _ALIGN == 0:
        return a
    out = _aligned_empty(a.shape, a.dtype)
    out[...] = a
    return out


# ---------------------------------------------------------------- im2col / col2im
#
# `geo` is the int64 tuple (OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, groups) of the conv whose
# input is the 4-D map; output rows are flat indices r = (n*OH + oh)*OW + ow.

@njit(cache=True, nogil=True)
def _im2col(x, col, r0, r1, geo, c0, Ig):
    """col[(r - r0)*K + (kh*KW + kw)*Ig + i] = x[n, oh*sh - pt + kh*dh, ow*sw - pl + kw*dw, c0 + i]
    for r in [r0, r1), zero outside the image; K = KH*KW*Ig."""
    OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, groups = geo
    N, H, W, C = x.shape
    x3 = x.reshape(N, H, W * C)
    run = KW * Ig
    K = KH * run
    contiguous = dw == 1 and Ig == C
    n = r0 // (OH * OW)                 # (n, oh, ow) of row r, stepped without divisions
    oh = (r0 - n * OH * OW) // OW
    ow = r0 - (n * OH + oh) * OW
    for r in range(r0, r1):
        crow = col[(r - r0) * K:(r - r0 + 1) * K]
        iw0 = ow * sw - pl
        for kh in range(KH):
            ih = oh * sh - pt + kh * dh
            seg = crow[kh * run:(kh + 1) * run]
            if ih < 0 or ih >= H:
                seg[:] = 0
                continue
            xrow = x3[n, ih]
            if contiguous and iw0 >= 0 and iw0 + KW <= W:
                src = xrow[iw0 * C:iw0 * C + run]
                for j in range(run):
                    seg[j] = src[j]
                continue
            for kw in range(KW):
                iw = iw0 + kw * dw
                dst = seg[kw * Ig:(kw + 1) * Ig]
                if iw < 0 or iw >= W:
                    dst[:] = 0
                else:
                    src = xrow[iw * C + c0:iw * C + c0 + Ig]
                    for i in range(Ig):
                        dst[i] = src[i]
        ow += 1
        if ow == OW:
            ow = 0
            oh += 1
            if oh == OH:
                oh = 0
                n += 1


@njit(cache=True, nogil=True)
def _col2im_add(dcol, gx, r0, r1, geo, c0, Ig, ldk):
    """The adjoint of _im2col: gx[...] += dcol[...] (pixels outside the image are dropped);
    dcol's rows are ldk >= K elements apart."""
    OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, groups = geo
    N, H, W, C = gx.shape
    g3 = gx.reshape(N, H, W * C)
    run = KW * Ig
    K = ldk
    contiguous = dw == 1 and Ig == C
    gf = gx.reshape(-1)
    one = np.ones(1, gx.dtype)[0]
    n = r0 // (OH * OW)
    oh = (r0 - n * OH * OW) // OW
    ow = r0 - (n * OH + oh) * OW
    for r in range(r0, r1):
        crow = dcol[(r - r0) * K:(r - r0 + 1) * K]
        iw0 = ow * sw - pl
        for kh in range(KH):
            ih = oh * sh - pt + kh * dh
            if ih < 0 or ih >= H:
                continue
            if contiguous and iw0 >= 0 and iw0 + KW <= W:
                # the kernel row's taps are one contiguous run of gx: one vector loop (an
                # FMA by 1 is the exact sum, rounded once, as the scalar add)
                _vaxpy(gf, ((n * H + ih) * W + iw0) * C, one, dcol, (r - r0) * K + kh * run,
                       dcol, 0, run)
                continue
            seg = crow[kh * run:(kh + 1) * run]
            grow = g3[n, ih]
            for kw in range(KW):
                iw = iw0 + kw * dw
                if iw < 0 or iw >= W:
                    continue
                src = seg[kw * Ig:(kw + 1) * Ig]
                dst = grow[iw * C + c0:iw * C + c0 + Ig]
                for i in range(Ig):
                    dst[i] += src[i]
        ow += 1
        if ow == OW:
            ow = 0
            oh += 1
            if oh == OH:
                oh = 0
                n += 1


# ---------------------------------------------------------------- GEMM-based tasks
#
# Serial bodies; the wrappers run them as tasks spread over Numba's threads (see the
# tasks section below).
# `plain` marks a 1x1, stride-1, unpadded, ungrouped conv (or a dense layer): its im2col is
# the input itself.

@njit(cache=True, nogil=True, inline='always')
def _pack_block(w3, wt, t):
    """Block t (32 x 32) of wt[g, k, o] = w3[g, o, k]: W.T, the forward GEMM's right operand."""
    G, Og, K = w3.shape
    nk = (K + 31) // 32
    no = (Og + 31) // 32
    g = t // (nk * no)
    rem = t - g * nk * no
    k0 = (rem // no) * 32
    o0 = (rem - (rem // no) * no) * 32
    for k in range(k0, min(K, k0 + 32)):
        dst = wt[g, k]
        for o in range(o0, min(Og, o0 + 32)):
            dst[o] = w3[g, o, k]


@njit(cache=True, nogil=True, inline='always')
def _im2col_tile(x, col, t, tile, geo):
    """Rows [t*tile, (t+1)*tile) of the full im2col(x) in col (groups == 1)."""
    M = x.shape[0] * geo[0] * geo[1]
    K = geo[2] * geo[3] * x.shape[3]
    r0 = t * tile
    r1 = min(M, r0 + tile)
    _im2col(x, col[r0 * K:r1 * K], r0, r1, geo, 0, x.shape[3])

@njit(cache=True, nogil=True, inline='always')
def _fwd_task(x, wt, b, y2, geo, plain, r0, r1, part, nparts, col):
    """Rows r0..r1-1 of y2 (= im2col(x) @ wt + b); the output columns are split into `nparts`
    (groups == 1) and this task does `part` of them. A non-empty `col` holds im2col(x) of every
    row already."""
    OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, groups = geo
    C = x.shape[3]
    O = y2.shape[1]
    Ig = C // groups
    Og = O // groups
    K = KH * KW * Ig
    T = r1 - r0
    nr = _NV * _VBYTES // y2.itemsize
    yf = y2.reshape(-1)
    wf = wt.reshape(-1)
    ldw = wt.shape[2]                   # >= Og: rows may be padded (see _good_ld)
    acc = 1 if b.shape[0] > 0 else 0
    if groups == 1:
        panels = (O + nr - 1) // nr
        j0 = min(O, part * panels // nparts * nr)
        j1 = min(O, (part + 1) * panels // nparts * nr)
    else:
        j0 = 0
        j1 = O
    if j1 <= j0:
        return
    if acc:
        for r in range(r0, r1):
            for j in range(j0, j1):
                y2[r, j] = b[j]
    if plain:
        _gemm(x.reshape(-1), r0 * C, C, 1, T, wf, j0, ldw, j1 - j0, yf, r0 * O + j0, O, K, acc)
    elif col.shape[0] > 0:
        _gemm(col, r0 * K, K, 1, T, wf, j0, ldw, j1 - j0, yf, r0 * O + j0, O, K, acc)
    else:
        own = np.empty(T * K, x.dtype)
        for g in range(groups):
            _im2col(x, own, r0, r1, geo, g * Ig, Ig)
            _gemm(own, 0, K, 1, T, wf, g * K * ldw + j0, ldw, j1 - j0 if groups == 1 else Og,
                  yf, r0 * O + g * Og + j0, O, K, acc)


@njit(cache=True, nogil=True, inline='always')
def _colt_rows(x, colt, r0, r1, geo):
    """colt[k*M + r] = im2col(x)[r, k] for rows r0..r1-1 (rows of M = colt.size // K, at
    least the number of output pixels)."""
    KH, KW, C = geo[2], geo[3], x.shape[3]
    K = KH * KW * C
    M = colt.shape[0] // K
    tmp = np.empty((r1 - r0) * K, x.dtype)
    _im2col(x, tmp, r0, r1, geo, 0, C)
    for k in range(K):
        dst = colt[k * M + r0:k * M + r1]
        for r in range(r1 - r0):
            dst[r] = tmp[r * K + k]


@njit(cache=True, nogil=True, inline='always')
def _implicit_fwd(xp, wt, b, y2, geo, u0, u1):
    """Output units u0..u1-1 (images for stride 1, else output rows n*OH + oh) of y2, as
    GEMMs straight on the zero-padded input xp (no im2col; groups 1, dw 1) reducing over all
    kernel rows at once: output pixels along a padded input row are `sw*C` elements apart, so
    a kernel row's taps are one contiguous run of KW*C elements, and kernel rows are
    dh*Wp*C elements apart. With stride 1 whole images go at once over "virtual" rows, every
    padded column of each output row (the last KW-1 are discarded), as micro-tiles called
    directly (wt from _implicit_weight: columns padded with zeros to whole tiles). xp has
    spare zero rows at the bottom for the reads past the last pixel, of these and of the
    micro-tiles (a_over)."""
    OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, groups = geo
    N, Hp, Wp, C = xp.shape
    O = y2.shape[1]
    KC = KW * C
    xf = xp.reshape(-1)
    wf = wt.reshape(-1)
    ldw = wt.shape[2]
    yf = y2.reshape(-1)
    has_b = b.shape[0] > 0
    # every kernel row in one reduction (nkh = KH): rows dh*Wp*C apart in xp, KC*ldw in wt
    ldah, ldbh = dh * Wp * C, KC * ldw
    if sh == 1 and sw == 1:
        # micro-tiles straight over the virtual rows into a scratch image, its columns padded
        # to whole tiles (wt's padding columns are zeros: see _implicit_weight), no _gemm
        # call: its edge handling is not needed here and its per-tile cost was a third
        vl = _VBYTES // y2.itemsize
        narrow = ldw <= vl
        mr = _MR_N if narrow else _MR
        nr = vl if narrow else _NV * vl
        m = OH * Wp
        tmp = np.empty((m + mr) * ldw, y2.dtype)
        for n in range(u0, u1):
            base = n * Hp * Wp * C
            for j0 in range(0, O, nr):
                for i0 in range(0, m, mr):
                    _tile(narrow, xf, base + i0 * C, C, 1, wf, j0, ldw, tmp, i0 * ldw + j0, ldw,
                          KC, 0, KH, ldah, ldbh)
            for oh in range(OH):
                for ow in range(OW):
                    src = tmp[(oh * Wp + ow) * ldw:(oh * Wp + ow) * ldw + O]
                    dst = y2[(n * OH + oh) * OW + ow]
                    for o in range(O):
                        dst[o] = src[o] + (b[o] if has_b else 0)
        return
    for u in range(u0, u1):
        n = u // OH
        oh = u - n * OH
        if has_b:
            for r in range(u * OW, (u + 1) * OW):
                for o in range(O):
                    y2[r, o] = b[o]
        _gemm(xf, (n * Hp + oh * sh) * Wp * C, sw * C, 1, OW, wf, 0, ldw, O, yf, u * OW * O, O,
              KC, 1 if has_b else 0, True, KH, ldah, ldbh)


@njit(cache=True, nogil=True, inline='always')
def _implicit_bwd_weight(xp, gy2, part, geo, u0, u1, stack):
    """The weight gradient from output units u0..u1-1 (images for stride 1, else output rows
    n*OH + oh), with the im2col read straight from the zero-padded input (see _implicit_fwd).

    Stride 1: part (rows, KH*ldk), part[o, kh*ldk + j] = gw[o, kh, j // C, j % C] (rows and
    ldk: O and KW*C rounded up to whole micro-tiles, see _implicit_wgrad_dims), as gy.T @
    im2col(x): a tile's rows are output channels (gy broadcast), its columns one kernel row's
    contiguous run of taps (two vectors of x per pixel), and the reduction is two-level over
    images x their virtual pixels (every padded column of each output row), so one tile
    reduces over a whole block of images with the accumulators in registers. gy is copied
    per block with zero rows for the padded columns. With `stack` (a single input channel:
    runs of KW taps would fill few columns) every block's input is first restacked as
    xs[b, oh, w, kh] = xp[n, oh + kh, w] (C == 1, dh == 1), so that all of a pixel's taps
    are one run of KW*KH (in (kw, kh) order) and the conv one of a single kernel row:
    part (rows, ldk), part[o, kw*KH + kh] = gw[o, kh, kw, 0]. Else (strided):
    part (K, O), the transpose, one `_gemm` per output row and kernel row."""
    OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, groups = geo
    N, Hp, Wp, C = xp.shape
    O = gy2.shape[1]
    KC = KW * C
    part[:] = 0
    xf = xp.reshape(-1)
    gyf = gy2.reshape(-1)
    pf = part.reshape(-1)
    if sh == 1 and sw == 1:
        vl = _VBYTES // xp.itemsize
        C2 = KH * C if stack else C         # channels of the stacked input
        KH2 = 1 if stack else KH            # its kernel rows
        KC = KW * C2
        narrow = KC <= vl
        mr = _MR_N if narrow else _MR
        nr = vl if narrow else _NV * vl
        ldc = part.shape[1]
        ldk = ldc // KH2
        m = OH * Wp
        img = m * O
        ximg = m * C2 if stack else Hp * Wp * C
        # images per block: gy's copy and x's images inside L2 (the sum's order is the same
        # for any block size: images, then pixels, in order)
        nbk = max(1, min(u1 - u0, _TILE_BYTES // ((img + ximg) * xp.itemsize)))
        # + mr: the last tile rows past O read (discarded rows of part)
        gyv = _abuf(nbk * img + mr, gy2)
        gyv[:] = 0
        # + nr: the last pixel's run read past KC (discarded columns of part)
        # (stack: C == 1, dh == 1) + ncopy: the whole-vector copies' overshoot
        ncopy = (KH + vl - 1) // vl * vl
        rows = OH + KH - 1
        ldt = rows + ncopy
        xs = _abuf(nbk * ximg + nr + ncopy if stack else 0, xp)
        xs[:] = 0
        xt = _abuf(Wp * ldt if stack else 0, xp)
        xt[:] = 0
        for n0 in range(u0, u1, nbk):
            nb = min(nbk, u1 - n0)
            for b in range(nb):
                for oh in range(OH):
                    _vcopy(gyv, b * img + oh * Wp * O, gyf[0], gyf, ((n0 + b) * OH + oh) * OW * O,
                           gyf, 0, OW * O)
            if stack:
                for b in range(nb):
                    # the image transposed (xt[w, r] = x[r, w]), then each pixel's KH taps
                    # one whole-vector copy from a column of it (the lanes past KH are
                    # overwritten by the next pixel's, or land in the spare tail)
                    img_t = xf[(n0 + b) * Hp * Wp:(n0 + b) * Hp * Wp + rows * Wp]
                    for r in range(rows):
                        for w in range(Wp):
                            xt[w * ldt + r] = img_t[r * Wp + w]
                    d0 = b * ximg
                    for oh in range(OH):
                        for w in range(Wp):
                            _vcopy(xs, d0, xt[0], xt, w * ldt + oh, xt, 0, ncopy)
                            d0 += KH
                for j0 in range(0, KC, nr):
                    for i0 in range(0, O, mr):
                        _tile(narrow, gyv, i0, 1, O, xs, j0, C2, pf, i0 * ldc + j0, ldc, m, 1,
                              nb, img, ximg)
                continue
            for kh in range(KH):
                for j0 in range(0, KC, nr):
                    for i0 in range(0, O, mr):
                        _tile(narrow, gyv, i0, 1, O, xf, (n0 * Hp + kh * dh) * Wp * C + j0, C,
                              pf, i0 * ldc + kh * ldk + j0, ldc, m, 1, nb, img, ximg)
        return
    for u in range(u0, u1):
        n = u // OH
        oh = u - n * OH
        for kh in range(KH):
            _gemm(xf, (n * Hp + oh * sh + kh * dh) * Wp * C, 1, sw * C, KC, gyf, u * OW * O, O,
                  O, pf, kh * KC * O, O, OW, 1, True)


@njit(cache=True, nogil=True, inline='always')
def _bwd_data_images(gy2, w2, b, gx, n0, n1, geo, tile):
    """Images n0..n1-1 of gx: b (or 0) plus col2im(gy_tile @ w2) over their output rows."""
    OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, groups = geo
    N, H, W, C = gx.shape
    O = gy2.shape[1]
    Ig = C // groups
    Og = O // groups
    K = KH * KW * Ig
    img = gx[n0:n1].reshape((n1 - n0) * H * W, C)
    for p in range(img.shape[0]):
        for c in range(C):
            img[p, c] = b[c] if b.shape[0] > 0 else 0
    r_end = n1 * OH * OW
    ldw = w2.shape[1]                   # >= K: W's rows zero-padded to whole micro-tiles
    dcol = _abuf(min(tile, r_end - n0 * OH * OW) * ldw, gx)
    gyf = gy2.reshape(-1)
    wf = w2.reshape(-1)
    for r0 in range(n0 * OH * OW, r_end, tile):
        r1 = min(r_end, r0 + tile)
        for g in range(groups):
            _gemm(gyf, r0 * O + g * Og, O, 1, r1 - r0, wf, g * Og * ldw, ldw, ldw, dcol, 0, ldw,
                  Og, 0)
            _col2im_add(dcol, gx, r0, r1, geo, g * Ig, Ig, ldw)


@njit(cache=True, nogil=True, inline='always')
def _bwd_weight_chunk(x, gy2, part, r0, r1, tile, geo, plain):
    """part (O, K) = sum over rows r0..r1-1 of gy_row.T @ im2col(x)_row, tile by tile."""
    OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, groups = geo
    C = x.shape[3]
    O = gy2.shape[1]
    Ig = C // groups
    Og = O // groups
    K = KH * KW * Ig
    part[:] = 0
    pf = part.reshape(-1)
    gyf = gy2.reshape(-1)
    col = _abuf(0 if plain else min(tile, r1 - r0) * K, x)
    for t0 in range(r0, r1, tile):
        t1 = min(r1, t0 + tile)
        if plain:
            _gemm(gyf, t0 * O, 1, O, O, x.reshape(-1), t0 * C, C, C, pf, 0, C, t1 - t0, 1)
            continue
        for g in range(groups):
            _im2col(x, col, t0, t1, geo, g * Ig, Ig)
            _gemm(gyf, t0 * O + g * Og, 1, O, Og, col, 0, K, K, pf, g * Og * K, K, t1 - t0, 1)


@njit(cache=True, nogil=True, inline='always')
def _sum_partials(partial, out, r):
    """out[r] = partial[0, r] + partial[1, r] + ... (in that order)"""
    dst = out[r]
    src = partial[0, r]
    for q in range(dst.shape[0]):
        dst[q] = src[q]
    for c in range(1, partial.shape[0]):
        src = partial[c, r]
        for q in range(dst.shape[0]):
            dst[q] += src[q]


@njit(cache=True, nogil=True, inline='always')
def _fwd_t_gemm(w, colt, yt, t, ob):
    """Output channels [t*ob, (t+1)*ob) of yt (O, M) = W @ colt, W = w[0] (O, K), colt rows
    of length colt.size // K >= M."""
    O, K = w.shape[1], w.shape[2]
    M = yt.shape[1]
    ldc = colt.shape[0] // K
    o0 = t * ob
    _gemm(w.reshape(-1), o0 * K, K, 1, min(ob, O - o0), colt, 0, ldc, M, yt.reshape(-1),
          o0 * M, M, K, 0)


@njit(cache=True, nogil=True, inline='always')
def _fwd_t_out(yt, y2, b, t, tile):
    """Rows [t*tile, (t+1)*tile) of y2 = yt.T + b."""
    M, O = y2.shape
    for r in range(t * tile, min(M, (t + 1) * tile)):
        for o in range(O):
            y2[r, o] = yt[o, r] + (b[o] if b.shape[0] > 0 else 0)


@njit(cache=True, nogil=True, inline='always')
def _bwd_weight_panel(gy2, col, gw2, t):
    """Column panel t of gw2 (O, K) = gy2.T @ col (M, K), reduced over all M rows."""
    M, O = gy2.shape
    K = gw2.shape[1]
    nr = _NV * _VBYTES // gy2.itemsize
    j0 = t * nr
    _gemm(gy2.reshape(-1), 0, 1, O, O, col, j0, K, min(nr, K - j0), gw2.reshape(-1), j0, K, M, 0)


@njit(cache=True, nogil=True, inline='always')
def _bwd_data_panel(gy2, w, dcol, t):
    """Column panel t of dcol (M, K) = gy2 @ W, W = w[0] (O, K) as stored (groups == 1)."""
    M, O = gy2.shape
    K = dcol.shape[1]
    nr = _NV * _VBYTES // gy2.itemsize
    j0 = t * nr
    _gemm(gy2.reshape(-1), 0, O, 1, M, w.reshape(-1), j0, K, min(nr, K - j0), dcol.reshape(-1),
          j0, K, O, 0)


@njit(cache=True, nogil=True, inline='always')
def _col2im_images(dcol, gx, b, n0, n1, geo):
    """Images n0..n1-1 of gx: b (or 0) plus col2im of their rows of dcol (groups == 1)."""
    N, H, W, C = gx.shape
    img = gx[n0:n1].reshape((n1 - n0) * H * W, C)
    for p in range(img.shape[0]):
        for c in range(C):
            img[p, c] = b[c] if b.shape[0] > 0 else 0
    per_image = geo[0] * geo[1]
    K = dcol.shape[1]
    r0 = n0 * per_image
    r1 = n1 * per_image
    _col2im_add(dcol.reshape(-1)[r0 * K:r1 * K], gx, r0, r1, geo, 0, C, K)


# ---------------------------------------------------------------- direct kernels, one input
# channel per group (depthwise with multiplier m = O / C; C == 1 with any O)
#
# Output channel o reads input channel o // m; wt is the weight as (KH, KW, O). Two loop
# orders, so that the innermost loop is a long, contiguous multiply-add either way:
# - "channels" (O >= _DIRECT_WIDE): along the channels of one pixel. For m > 1 the input row
#   is "expanded" first, each channel repeated m times, to line up with the outputs;
# - "columns" (few channels): along the output columns of one channel, on rows transposed to
#   channel-major order ((O, OW) accumulators, (C, W) input rows).

_DIRECT_WIDE = 16


@njit(cache=True, nogil=True)
def _expand_row(src, dst, W, C, m):
    """dst[(iw*C + c)*m + j] = src[iw*C + c]"""
    for p in range(W * C):
        v = src[p]
        for j in range(m):
            dst[p * m + j] = v


@njit(cache=True, nogil=True)
def _transpose_row(src, dst, W, C):
    """dst[c*W + w] = src[w*C + c]: one NHWC row to channel-major order."""
    for w in range(W):
        for c in range(C):
            dst[c * W + w] = src[w * C + c]


@njit(cache=True, nogil=True)
def _ow_range(off, sw, W, OW):
    """The output columns ow with 0 <= ow*sw + off < W, as [lo, hi)."""
    lo = 0 if off >= 0 else (-off + sw - 1) // sw
    hi = min(OW, (W - 1 - off) // sw + 1) if W - 1 - off >= 0 else 0
    return lo, max(lo, hi)


# Stride 1 with few channels ("planar"): whole images at once, channel-major and zero-padded,
# over "virtual" pixels p = oh*Wp + ow that run along every padded column (the last KW-1 of
# each row are discarded), so a tap (kh, kw) is one shift of the plane and every product is a
# single vector loop over OH*Wp elements.

@njit(cache=True, nogil=True)
def _planar_dims(geo):
    """(Hp, Wp): the rows and columns a stride-1 conv reads, i.e. the padded plane."""
    OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, groups = geo
    return OH + dh * (KH - 1), OW + dw * (KW - 1)


@njit(cache=True, nogil=True)
def _planar_input(x, n, xp, geo):
    """xp[c, r*Wp + q] = x[n, r - pt, q - pl, c], zero outside the image; one spare zero row
    per plane (over-reads of the last virtual pixels)."""
    OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, groups = geo
    N, H, W, C = x.shape
    Hp, Wp = _planar_dims(geo)
    plane = (Hp + 1) * Wp
    x3 = x.reshape(N, H, W * C)
    xp[:] = 0
    q0, q1 = max(0, pl), min(Wp, W + pl)
    for r in range(max(0, pt), min(Hp, H + pt)):
        xr = x3[n, r - pt]
        if C == 1:
            _vcopy(xp, r * Wp + q0, xr[0], xr, q0 - pl, xr, 0, q1 - q0)
            continue
        for q in range(q0, q1):
            for c in range(C):
                xp[c * plane + r * Wp + q] = xr[(q - pl) * C + c]


@njit(cache=True, nogil=True)
def _planar_grad(gy, n, gt, geo, front, rowlen):
    """gt[o*rowlen + front + oh*Wp + ow] = gy[n, oh, ow, o], zero everywhere else (the
    discarded virtual pixels, and `front` leading elements)."""
    OH, OW, O = gy.shape[1], gy.shape[2], gy.shape[3]
    Hp, Wp = _planar_dims(geo)
    gt[:] = 0
    for oh in range(OH):
        for ow in range(OW):
            g = gy[n, oh, ow]
            base = front + oh * Wp + ow
            for o in range(O):
                gt[o * rowlen + base] = g[o]


@njit(cache=True, nogil=True, inline='always')
def _planar_fwd(x, wt, b, y, geo, n0, n1):
    OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, groups = geo
    C, O = x.shape[3], y.shape[3]
    m = O // C
    Hp, Wp = _planar_dims(geo)
    plane = (Hp + 1) * Wp
    P = OH * Wp
    xp = _abuf(C * plane, x)
    acc = _abuf(O * P, x)
    wf = wt.reshape(-1)
    for n in range(n0, n1):
        _planar_input(x, n, xp, geo)
        for c in range(C):            # the m outputs of plane c, up to 6 at once
            o, o1 = c * m, (c + 1) * m
            xo = c * plane
            while o < o1:
                k = 6 if o1 - o >= 6 else 4 if o1 - o >= 4 else 2 if o1 - o >= 2 else 1
                for j in range(o, o + k):     # the bias, just before (still in cache)
                    acc[j * P:(j + 1) * P] = b[j] if b.shape[0] > 0 else 0
                if k == 6:
                    _vconv6(acc, o * P, P, wf, o, O, xp, xo, dh * Wp, dw, KH, KW, P)
                elif k == 4:
                    _vconv4(acc, o * P, P, wf, o, O, xp, xo, dh * Wp, dw, KH, KW, P)
                elif k == 2:
                    _vconv2(acc, o * P, P, wf, o, O, xp, xo, dh * Wp, dw, KH, KW, P)
                else:
                    _vconv(acc, o * P, 0, wf, o, O, xp, xo, dh * Wp, dw, KH, KW, P)
                o += k
        if 2 <= O <= 8:
            yn = y[n].reshape(-1)
            for oh in range(OH):
                _planes_to_channels(yn, oh * OW * O, acc, oh * Wp, P, OW, O)
        else:
            for oh in range(OH):
                for ow in range(OW):
                    yo = y[n, oh, ow]
                    for o in range(O):
                        yo[o] = acc[o * P + oh * Wp + ow]


@njit(cache=True, nogil=True, inline='always')
def _planar_bwd_weight(x, gy, part, geo, n0, n1):
    """part (KH*KW, O) = the weight gradient (transposed) from images n0..n1-1, summed in
    lanes of one SIMD vector along the virtual pixels, the lanes added at the end."""
    OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, groups = geo
    C, O = x.shape[3], gy.shape[3]
    m = O // C
    Hp, Wp = _planar_dims(geo)
    plane = (Hp + 1) * Wp
    P = OH * Wp
    vl = _VBYTES // x.itemsize
    lanes = _abuf(KH * KW * O * vl, x)
    lanes[:] = 0
    xp = _abuf(C * plane, x)
    gt = _abuf(O * P, x)
    for n in range(n0, n1):
        _planar_input(x, n, xp, geo)
        _planar_grad(gy, n, gt, geo, 0, P)
        for kh in range(KH):
            for kw in range(KW):
                for o in range(O):
                    _vdot(lanes, ((kh * KW + kw) * O + o) * vl, lanes[0], gt, o * P, xp,
                          (o // m) * plane + kh * dh * Wp + kw * dw, P)
    for k in range(KH * KW):
        for o in range(O):
            lane = lanes[(k * O + o) * vl:(k * O + o + 1) * vl]
            acc = lane[0]
            for j in range(1, vl):
                acc += lane[j]
            part[k, o] = acc


@njit(cache=True, nogil=True, inline='always')
def _planar_bwd_data(gy, wt, b, gx, geo, n0, n1):
    """The adjoint of _planar_fwd, gathered: each padded-plane pixel sums the flipped taps
    over gy's planes, which start `front` zeros early so that every read is in range."""
    OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, groups = geo
    N, H, W, C = gx.shape
    O = gy.shape[3]
    m = O // C
    Hp, Wp = _planar_dims(geo)
    front = (KH - 1) * dh * Wp + (KW - 1) * dw
    rowlen = front + Hp * Wp
    gp = _abuf(Hp * Wp, gy)
    gt = _abuf(O * rowlen, gy)
    wf = wt.reshape(-1)
    for n in range(n0, n1):
        _planar_grad(gy, n, gt, geo, front, rowlen)
        for c in range(C):
            gp[:] = 0
            for o in range(c * m, (c + 1) * m):
                _vconv(gp, 0, 0, wf, (KH * KW - 1) * O + o, -O, gt, o * rowlen, dh * Wp, dw, KH,
                       KW, Hp * Wp)
            for ih in range(H):
                r = ih + pt
                for iw in range(W):
                    q = iw + pl
                    v = gp[r * Wp + q] if 0 <= r < Hp and 0 <= q < Wp else 0
                    gx[n, ih, iw, c] = v + (b[c] if b.shape[0] > 0 else 0)


@njit(cache=True, nogil=True, inline='always')
def _direct_src_row(x3, n, ih, xe, W, C, m, wide):
    """Input row (n, ih) of x3 (N, H, W*C) as the row-by-row direct kernels read it: as is,
    or in the scratch row xe, expanded by the channel multiplier m (wide) or channel-major
    (narrow, C > 1)."""
    if wide:
        if m == 1:
            return x3[n, ih]
        _expand_row(x3[n, ih], xe, W, C, m)
        return xe
    if C == 1:
        return x3[n, ih]
    _transpose_row(x3[n, ih], xe, W, C)
    return xe


@njit(cache=True, nogil=True, inline='always')
def _direct_fwd_rows(x, wt, b, y, r0, r1, geo):
    """Output rows r0..r1-1 (n*OH + oh) of y."""
    OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, groups = geo
    N, H, W, C = x.shape
    O = y.shape[3]
    m = O // C
    x3 = x.reshape(N, H, W * C)
    y3 = y.reshape(N, OH, OW * O)
    wide = O >= _DIRECT_WIDE
    xe = np.empty(W * O if wide else W * C, x.dtype)
    acc = np.empty(0 if wide else O * OW, x.dtype)
    for r in range(r0, r1):
        n = r // OH
        oh = r - n * OH
        yr = y3[n, oh]
        if wide:
            for ow in range(OW):
                for o in range(O):
                    yr[ow * O + o] = b[o] if b.shape[0] > 0 else 0
        else:
            for o in range(O):
                for ow in range(OW):
                    acc[o * OW + ow] = b[o] if b.shape[0] > 0 else 0
        for kh in range(KH):
            ih = oh * sh - pt + kh * dh
            if ih < 0 or ih >= H:
                continue
            src = _direct_src_row(x3, n, ih, xe, W, C, m, wide)
            for kw in range(KW):
                off = kw * dw - pl                     # iw = ow*sw + off
                lo, hi = _ow_range(off, sw, W, OW)
                wk = wt[kh, kw]
                if wide:
                    for ow in range(lo, hi):
                        _vmuladd(yr, ow * O, wk[0], src, (ow * sw + off) * O, wk, 0, O)
                    continue
                for o in range(O):
                    a = acc[o * OW + lo:o * OW + hi]
                    xc = src[(o // m) * W:(o // m + 1) * W]
                    wv = wk[o]
                    if sw == 1:
                        xs = xc[lo + off:hi + off]
                        for j in range(hi - lo):
                            a[j] += wv * xs[j]
                    else:
                        for j in range(hi - lo):
                            a[j] += wv * xc[(lo + j) * sw + off]
        if not wide:
            for ow in range(OW):
                for o in range(O):
                    yr[ow * O + o] = acc[o * OW + ow]


@njit(cache=True, nogil=True, inline='always')
def _direct_bwd_weight_rows(x, gy, part, r0, r1, geo):
    """part (KH*KW, O) = the weight gradient (transposed) from output rows r0..r1-1. With few
    channels the sums run in lanes along the output columns, added up at the end."""
    OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, groups = geo
    N, H, W, C = x.shape
    O = gy.shape[3]
    m = O // C
    x3 = x.reshape(N, H, W * C)
    g3 = gy.reshape(N, OH, OW * O)
    wide = O >= _DIRECT_WIDE
    xe = np.empty(W * O if wide else W * C, x.dtype)
    gt = np.empty(0 if wide else O * OW, x.dtype)
    lanes = np.zeros(0 if wide else KH * KW * O * OW, x.dtype)
    part[:] = 0
    for r in range(r0, r1):
        n = r // OH
        oh = r - n * OH
        gr = g3[n, oh]
        if not wide:
            _transpose_row(gr, gt, OW, O)
        for kh in range(KH):
            ih = oh * sh - pt + kh * dh
            if ih < 0 or ih >= H:
                continue
            src = _direct_src_row(x3, n, ih, xe, W, C, m, wide)
            for kw in range(KW):
                off = kw * dw - pl
                lo, hi = _ow_range(off, sw, W, OW)
                k = kh * KW + kw
                if wide:
                    a = part[k]
                    for ow in range(lo, hi):
                        _vmuladd(a, 0, a[0], gr, ow * O, src, (ow * sw + off) * O, O)
                    continue
                for o in range(O):
                    a = lanes[(k * O + o) * OW + lo:(k * O + o) * OW + hi]
                    gs = gt[o * OW + lo:o * OW + hi]
                    xc = src[(o // m) * W:(o // m + 1) * W]
                    if sw == 1:
                        xs = xc[lo + off:hi + off]
                        for j in range(hi - lo):
                            a[j] += gs[j] * xs[j]
                    else:
                        for j in range(hi - lo):
                            a[j] += gs[j] * xc[(lo + j) * sw + off]
    if not wide:
        for k in range(KH * KW):
            for o in range(O):
                a = lanes[(k * O + o) * OW:(k * O + o + 1) * OW]
                s = part[k, o]
                for ow in range(OW):
                    s += a[ow]
                part[k, o] = s


@njit(cache=True, nogil=True, inline='always')
def _direct_bwd_data_rows(gy, wt, b, gx, r0, r1, geo):
    """Rows r0..r1-1 of gx (flat n*H + ih), gathered from the output pixels that read them:
    rows are independent, so tasks never collide."""
    OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, groups = geo
    N, H, W, C = gx.shape
    O = gy.shape[3]
    m = O // C
    g3 = gy.reshape(N, OH, OW * O)
    gx3 = gx.reshape(N, H, W * C)
    wide = O >= _DIRECT_WIDE
    acc = np.empty(W * O if wide else C * W, gy.dtype)   # the gx row (expanded / transposed)
    gt = np.empty(0 if wide else O * OW, gy.dtype)
    for r in range(r0, r1):
        n = r // H
        ih = r - n * H
        acc[:] = 0
        for kh in range(KH):
            t = ih + pt - kh * dh           # = oh * sh
            if t < 0 or t % sh != 0 or t // sh >= OH:
                continue
            gr = g3[n, t // sh]
            if not wide:
                _transpose_row(gr, gt, OW, O)
            for kw in range(KW):
                wk = wt[kh, kw]
                off = kw * dw - pl          # iw = ow*sw + off
                lo, hi = _ow_range(off, sw, W, OW)
                if wide:
                    for ow in range(lo, hi):
                        _vmuladd(acc, (ow * sw + off) * O, wk[0], gr, ow * O, wk, 0, O)
                    continue
                for o in range(O):
                    ac = acc[(o // m) * W:(o // m + 1) * W]
                    gs = gt[o * OW + lo:o * OW + hi]
                    wv = wk[o]
                    if sw == 1:
                        a = ac[lo + off:hi + off]
                        for j in range(hi - lo):
                            a[j] += wv * gs[j]
                    else:
                        for j in range(hi - lo):
                            ac[(lo + j) * sw + off] += wv * gs[j]
        out = gx3[n, ih]
        for iw in range(W):
            for c in range(C):
                if wide:
                    s = acc[(iw * C + c) * m]
                    for j in range(1, m):
                        s += acc[(iw * C + c) * m + j]
                else:
                    s = acc[c * W + iw]
                out[iw * C + c] = s + (b[c] if b.shape[0] > 0 else 0)


# ---------------------------------------------------------------- tasks and the parallel loop
#
# Every parallel kernel is one `prange` over independent tasks (`_parallel`), each task one
# call of a serial dispatcher over the bodies above, with one fixed signature: arrays in typed
# slots (unused ones empty), the geometry, three ints. The dispatchers (one per group: GEMM
# tasks, planar direct, row-by-row direct) are compiled once per dtype as C functions that the
# loop calls by symbol name, like _gemm. As ordinary callees their code would be optimised and
# compiled again inside every parallel loop (Numba builds each loop body as a separate function
# and links callees into it, then links that into the caller), which made the cold compile of
# these kernels three times longer. The bodies are inlined into the dispatchers
# (inline='always'), so each is compiled exactly once.
#
# Slots: X4, Y4 (4-D), W3, P3 (3-D), M2, N2 (2-D), V1, U1 (1-D); geo; i0, i1, i2 (int64).

_T_PACK = 0           # W3 = W (G, Og, K) -> P3 = W.T (G, K, Og), 32 x 32 blocks
_T_FWD = 1            # X4 x, W3 W.T, V1 b, M2 y2, U1 shared col | i0 tile, i1 nparts, i2 plain
_T_IM2COL = 2         # X4 x -> U1 col (every row) | i0 tile
_T_COLT = 3           # X4 x -> U1 col.T | i0 tile
_T_FWD_T_GEMM = 4     # W3 W (1, O, K), U1 col.T -> N2 y.T (O, M) | i0 output channels per task
_T_FWD_T_OUT = 5      # N2 y.T, V1 b -> M2 y2 | i0 tile
_T_IMPLICIT_FWD = 6   # X4 padded x, W3 W.T (1, K, ld), V1 b -> M2 y2 | i0 units, i1 tasks
_T_BWD_DATA = 7       # M2 gy2, W3 W (1, O, K), V1 b -> X4 gx | i0 tasks, i1 tile
_T_BWD_W_CHUNK = 8    # X4 x, M2 gy2 -> P3 partials (tasks, O, K) | i0 tasks, i1 tile, i2 plain
_T_BWD_W_IMPLICIT = 9  # X4 padded x, M2 gy2 -> P3 partials (tasks, rows, KH*ldk) (stride 1,
                       # see _implicit_wgrad_dims) or (tasks, K, O) | i0 units, i1 tasks
_T_BWD_W_PANEL = 10   # M2 gy2, U1 col -> N2 gw2 (O, K), one column panel per task
_T_SUM = 11           # P3 partials -> N2 their sum, one row per task
_T_DIRECT_FWD = 12    # X4 x, W3 wt (KH, KW, O), V1 b -> Y4 y | i0 units, i1 tasks, i2 planar
_T_DIRECT_BWD_W = 13  # X4 x, Y4 gy -> P3 partials (tasks, KH*KW, O) | i0, i1, i2 as above
_T_DIRECT_BWD_DATA = 14  # Y4 gy, W3 wt, V1 b -> X4 gx | i0, i1, i2 as above
_T_BWD_DATA_PANEL = 15   # M2 gy2, W3 W (1, O, K) -> N2 dcol (M, K), one column panel per task
_T_COL2IM = 16        # N2 dcol, V1 b -> X4 gx, chunks of whole images | i0 tasks


# The C functions, one per group of tasks (the gemm-based ones; the direct ones, planar or
# row by row): pointers and shapes in, the slots rebuilt as arrays (C order), then the task.

def _task_c_sig(dtype):
    p, i = types.CPointer(dtype), types.int64
    return types.void(i, i, p, i, i, i, i, p, i, i, i, i, p, i, i, i, p, i, i, i,
                      p, i, i, p, i, i, p, i, p, i, *([i] * 11), i, i, i)


@njit(cache=True, nogil=True, inline='always')
def _views(x_p, x0, x1, x2, x3, y_p, y0, y1, y2, y3, w_p, w0, w1, w2, p_p, p0, p1, p2,
           m_p, m0, m1, n_p, n0, n1, v_p, v0, u_p, u0):
    return (carray(x_p, (x0, x1, x2, x3)), carray(y_p, (y0, y1, y2, y3)),
            carray(w_p, (w0, w1, w2)), carray(p_p, (p0, p1, p2)), carray(m_p, (m0, m1)),
            carray(n_p, (n0, n1)), carray(v_p, (v0,)), carray(u_p, (u0,)))


def _task_gemm_c(kind, t, x_p, x0, x1, x2, x3, y_p, y0, y1, y2, y3, w_p, w0, w1, w2, p_p, p0,
                 p1, p2, m_p, m0, m1, n_p, n0, n1, v_p, v0, u_p, u0, g0, g1, g2, g3, g4, g5,
                 g6, g7, g8, g9, g10, i0, i1, i2):
    X4, Y4, W3, P3, M2, N2, V1, U1 = _views(x_p, x0, x1, x2, x3, y_p, y0, y1, y2, y3, w_p, w0,
                                            w1, w2, p_p, p0, p1, p2, m_p, m0, m1, n_p, n0, n1,
                                            v_p, v0, u_p, u0)
    geo = (g0, g1, g2, g3, g4, g5, g6, g7, g8, g9, g10)
    lo = t * i0 // i1 if i1 > 0 else 0          # units [lo, hi) of task t (implicit)
    hi = (t + 1) * i0 // i1 if i1 > 0 else 0
    if kind == _T_PACK:
        _pack_block(W3, P3, t)
    elif kind == _T_FWD:
        M = M2.shape[0]
        tm = t // i1
        _fwd_task(X4, W3, V1, M2, geo, i2 != 0, tm * i0, min(M, (tm + 1) * i0), t - tm * i1,
                  i1, U1)
    elif kind == _T_IM2COL:
        _im2col_tile(X4, U1, t, i0, geo)
    elif kind == _T_COLT:
        M = X4.shape[0] * geo[0] * geo[1]
        _colt_rows(X4, U1, t * i0, min(M, (t + 1) * i0), geo)
    elif kind == _T_FWD_T_GEMM:
        _fwd_t_gemm(W3, U1, N2, t, i0)
    elif kind == _T_FWD_T_OUT:
        _fwd_t_out(N2, M2, V1, t, i0)
    elif kind == _T_IMPLICIT_FWD:
        _implicit_fwd(X4, W3, V1, M2, geo, lo, hi)
    elif kind == _T_BWD_DATA:
        N = X4.shape[0]
        _bwd_data_images(M2, W3[0], V1, X4, t * N // i0, (t + 1) * N // i0, geo, i1)
    elif kind == _T_BWD_W_CHUNK:
        M = M2.shape[0]
        _bwd_weight_chunk(X4, M2, P3[t], t * M // i0, (t + 1) * M // i0, i1, geo, i2 != 0)
    elif kind == _T_BWD_W_IMPLICIT:
        _implicit_bwd_weight(X4, M2, P3[t], geo, lo, hi, i2 != 0)
    elif kind == _T_BWD_W_PANEL:
        _bwd_weight_panel(M2, U1, N2, t)
    elif kind == _T_SUM:
        _sum_partials(P3, N2, t)
    elif kind == _T_BWD_DATA_PANEL:
        _bwd_data_panel(M2, W3, N2, t)
    elif kind == _T_COL2IM:
        N = X4.shape[0]
        _col2im_images(N2, X4, V1, t * N // i0, (t + 1) * N // i0, geo)


def _task_planar_c(kind, t, x_p, x0, x1, x2, x3, y_p, y0, y1, y2, y3, w_p, w0, w1, w2, p_p,
                   p0, p1, p2, m_p, m0, m1, n_p, n0, n1, v_p, v0, u_p, u0, g0, g1, g2, g3, g4,
                   g5, g6, g7, g8, g9, g10, i0, i1, i2):
    X4, Y4, W3, P3, M2, N2, V1, U1 = _views(x_p, x0, x1, x2, x3, y_p, y0, y1, y2, y3, w_p, w0,
                                            w1, w2, p_p, p0, p1, p2, m_p, m0, m1, n_p, n0, n1,
                                            v_p, v0, u_p, u0)
    geo = (g0, g1, g2, g3, g4, g5, g6, g7, g8, g9, g10)
    lo = t * i0 // i1
    hi = (t + 1) * i0 // i1
    if kind == _T_DIRECT_FWD:
        _planar_fwd(X4, W3, V1, Y4, geo, lo, hi)
    elif kind == _T_DIRECT_BWD_W:
        _planar_bwd_weight(X4, Y4, P3[t], geo, lo, hi)
    elif kind == _T_DIRECT_BWD_DATA:
        _planar_bwd_data(Y4, W3, V1, X4, geo, lo, hi)


def _task_rows_c(kind, t, x_p, x0, x1, x2, x3, y_p, y0, y1, y2, y3, w_p, w0, w1, w2, p_p, p0,
                 p1, p2, m_p, m0, m1, n_p, n0, n1, v_p, v0, u_p, u0, g0, g1, g2, g3, g4, g5,
                 g6, g7, g8, g9, g10, i0, i1, i2):
    X4, Y4, W3, P3, M2, N2, V1, U1 = _views(x_p, x0, x1, x2, x3, y_p, y0, y1, y2, y3, w_p, w0,
                                            w1, w2, p_p, p0, p1, p2, m_p, m0, m1, n_p, n0, n1,
                                            v_p, v0, u_p, u0)
    geo = (g0, g1, g2, g3, g4, g5, g6, g7, g8, g9, g10)
    lo = t * i0 // i1
    hi = (t + 1) * i0 // i1
    if kind == _T_DIRECT_FWD:
        _direct_fwd_rows(X4, W3, V1, Y4, lo, hi, geo)
    elif kind == _T_DIRECT_BWD_W:
        _direct_bwd_weight_rows(X4, Y4, P3[t], lo, hi, geo)
    elif kind == _T_DIRECT_BWD_DATA:
        _direct_bwd_data_rows(Y4, W3, V1, X4, lo, hi, geo)


_TASK_C = (("gemm", _task_gemm_c), ("planar", _task_planar_c), ("rows", _task_rows_c))
_TASK_EXTERNAL = {}


def _task_external(dtype):
    """Compile (or load from the cache) and register the task C functions for `dtype`;
    returns their typed external functions (gemm, planar, rows)."""
    dtype = np.dtype(dtype)
    ext = _TASK_EXTERNAL.get(dtype)
    if ext is None:
        _gemm_external(dtype)       # the tasks call it: registered first
        sig = _task_c_sig(numba.from_dtype(dtype))
        compiled = []
        for group, fn in _TASK_C:
            c = cfunc(sig, cache=True, nopython=True)(fn)
            name = f"netspec_conv_task_{group}_{dtype.name}"
            llvm.add_symbol(name, c.address)
            compiled.append((c, types.ExternalFunction(name, sig)))
        ext = _TASK_EXTERNAL[dtype] = tuple(compiled)
    return tuple(e for _, e in ext)


def _task_call(kind, t, X4, Y4, W3, P3, M2, N2, V1, U1, geo, i0, i1, i2):
    """One task, through the C function of its group; for jitted code only."""
    raise NotImplementedError("_task_call runs inside jitted kernels only")


@overload(_task_call, jit_options={"cache": True})
def _task_call_overload(kind, t, X4, Y4, W3, P3, M2, N2, V1, U1, geo, i0, i1, i2):
    gemm, planar, rows = _task_external(numba.np.numpy_support.as_dtype(X4.dtype))

    def impl(kind, t, X4, Y4, W3, P3, M2, N2, V1, U1, geo, i0, i1, i2):
        args = (kind, t,
                _ptr(X4, 0), X4.shape[0], X4.shape[1], X4.shape[2], X4.shape[3],
                _ptr(Y4, 0), Y4.shape[0], Y4.shape[1], Y4.shape[2], Y4.shape[3],
                _ptr(W3, 0), W3.shape[0], W3.shape[1], W3.shape[2],
                _ptr(P3, 0), P3.shape[0], P3.shape[1], P3.shape[2],
                _ptr(M2, 0), M2.shape[0], M2.shape[1],
                _ptr(N2, 0), N2.shape[0], N2.shape[1],
                _ptr(V1, 0), V1.shape[0], _ptr(U1, 0), U1.shape[0],
                geo[0], geo[1], geo[2], geo[3], geo[4], geo[5], geo[6], geo[7], geo[8], geo[9],
                geo[10], i0, i1, i2)
        if kind < _T_DIRECT_FWD or kind > _T_DIRECT_BWD_DATA:
            gemm(*args)
        elif i2:
            planar(*args)
        else:
            rows(*args)

    return impl


@njit(cache=True, parallel=True)
def _parallel(kind, ntasks, X4, Y4, W3, P3, M2, N2, V1, U1, geo, i0, i1, i2):
    """Tasks 0..ntasks-1 of `kind`, spread over Numba's threads."""
    for t in prange(ntasks):
        _task_call(kind, np.int64(t), X4, Y4, W3, P3, M2, N2, V1, U1, geo, i0, i1, i2)


@njit(cache=True)
def _serial(kind, ntasks, X4, Y4, W3, P3, M2, N2, V1, U1, geo, i0, i1, i2):
    """The same, in the calling thread: for work too small to be worth waking the pool."""
    for t in range(ntasks):
        _task_call(kind, np.int64(t), X4, Y4, W3, P3, M2, N2, V1, U1, geo, i0, i1, i2)


# ---------------------------------------------------------------- bias gradient

@njit(cache=True, nogil=True)
def _colsum_rows(g2, part, r0, r1):
    part[:] = 0
    for r in range(r0, r1):
        row = g2[r]
        for c in range(part.shape[0]):
            part[c] += row[c]


@njit(cache=True)
def _colsum_few(flat, C, acc, r0, r1):
    """Column sums of rows r0..r1 of a (R, C) array seen flat, for few columns: a row-by-row
    loop over C would add into C chains one row at a time (latency-bound, no vector lanes);
    here acc (len(acc) a multiple of C) takes whole blocks of rows elementwise (independent
    lanes, vectorised), and column c is the sum of acc[c::C]."""
    acc[:] = 0.0
    L = acc.shape[0]
    start = r0 * C
    stop = r1 * C
    blocks = (stop - start) // L
    for b in range(blocks):
        base = start + b * L
        for j in range(L):
            acc[j] += flat[base + j]
    for i in range(start + blocks * L, stop):
        acc[(i - start) % L] += flat[i]


@njit(cache=True, parallel=True)
def _bias_grad_few(flat, C, gb, nchunks, lanes):
    M = flat.shape[0] // C
    part = np.empty((nchunks, lanes), np.float64)
    for ch in prange(nchunks):
        _colsum_few(flat, C, part[ch], ch * M // nchunks, (ch + 1) * M // nchunks)
    for c in range(C):
        s = 0.0
        for ch in range(nchunks):
            for j in range(c, lanes, C):
                s += part[ch, j]
        gb[c] = s


_FEW_COLUMNS = 32                # bias_grad sums blocks of rows elementwise below this many columns


@njit(cache=True, parallel=True)
def _bias_grad(g2, gb, nchunks):
    """gb[c] = sum over rows of g2[:, c], in float64, per chunk then across chunks."""
    M, C = g2.shape
    part = np.empty((nchunks, C), np.float64)
    for ch in prange(nchunks):
        _colsum_rows(g2, part[ch], ch * M // nchunks, (ch + 1) * M // nchunks)
    for c in range(C):
        s = 0.0
        for ch in range(nchunks):
            s += part[ch, c]
        gb[c] = s


# ---------------------------------------------------------------- Python wrappers

# tuning (measured on the 2-core AVX-512 target: 1 MiB L2 per core)
_TILE_BYTES = 256 * 1024         # im2col tile of the forward / scatter kernels: inside L2
_WGRAD_TILE_BYTES = 1 << 20      # backward-weight tiles: longer reductions per micro-tile
_SPLIT_COL_BYTES = 64 << 20      # largest full im2col the split backward-weight may build
_SHARED_COL_BYTES = 16 << 20     # largest full im2col built for the few-rows forward paths
_IMPLICIT_MAX_RUN = 64           # implicit GEMMs when a kernel row's taps (KW*C) are fewer
_MIN_TILE_ROWS = 4 * _MR
_TASKS_PER_THREAD = 4            # tasks per thread, for load balance
_DIRECT_CHUNKS_PER_THREAD = 4
_SMALL_PACK = 1 << 14            # weights transposed by NumPy up to this many elements
_SERIAL_WORK = 1 << 20           # multiply-adds below which a GEMM runs as one serial task


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _threads() -> int:
    return numba.get_num_threads()


def _nr(itemsize: int) -> int:
    """Micro-tile width in elements."""
    return _NV * _VBYTES // itemsize


def _tile_rows(rows: int, k: int, itemsize: int, budget: int = _TILE_BYTES,
               spread: bool = True) -> int:
    """Rows per tile: the column buffer within `budget`, a multiple of the micro-tile height,
    and (`spread`) small enough to give every thread several tasks."""
    t = max(_MIN_TILE_ROWS, budget // max(1, k * itemsize))
    if spread:
        t = min(t, max(_MIN_TILE_ROWS, _cdiv(rows, _threads() * _TASKS_PER_THREAD)))
    t = _cdiv(t, _MR) * _MR
    return max(1, min(t, rows))


def _chunks(units: int) -> int:
    return max(1, min(units, _threads() * _DIRECT_CHUNKS_PER_THREAD))


def _geometry(attrs):
    sh, sw = (int(v) for v in attrs["stride"])
    pt, pb, pl, pr = (int(v) for v in attrs["pad"])
    dh, dw = (int(v) for v in attrs["dilation"])
    groups = int(attrs["groups"])
    return sh, sw, pt, pb, pl, pr, dh, dw, groups


def _out_size(size, k, s, p0, p1, d):
    return (size + p0 + p1 - d * (k - 1) - 1) // s + 1


def _check(name, cond, msg):
    """Raise ValueError(name: msg()) unless cond; msg is a function, formatted only then."""
    if not cond:
        raise ValueError(f"{name}: {msg()}")


def _check_conv(name, x_shape, w_shape, y_shape, attrs):
    """Validate the shapes (x, w, y as in the forward conv) against the attributes."""
    sh, sw, pt, pb, pl, pr, dh, dw, groups = _geometry(attrs)
    _check(name, min(sh, sw, dh, dw, groups) >= 1,
           lambda: f"stride {attrs['stride']}, dilation {attrs['dilation']} and groups {groups} "
           "must be positive")
    _check(name, len(x_shape) == 4 and len(w_shape) == 4 and len(y_shape) == 4,
           lambda: f"expected 4-D NHWC maps and OHWI weights, got {x_shape}, {w_shape}, "
           f"{y_shape}")
    N, H, W, C = x_shape
    O, KH, KW, Ig = w_shape
    _check(name, O % groups == 0 and Ig * groups == C,
           lambda: f"input channels {C}, weight {w_shape} and groups {groups} do not agree")
    OH = _out_size(H, KH, sh, pt, pb, dh)
    OW = _out_size(W, KW, sw, pl, pr, dw)
    _check(name, tuple(y_shape) == (N, OH, OW, O) and OH >= 1 and OW >= 1,
           lambda: f"output {y_shape} != expected {(N, OH, OW, O)} for input {x_shape}, weight "
           f"{w_shape}, {attrs}")


def _carr(a, dtype=None):
    return np.ascontiguousarray(a, dtype=dtype)


def _bias_arr(b, n, dtype, name):
    if b is None:
        return np.zeros(0, dtype)
    b = _carr(b, dtype)
    _check(name, b.shape == (n,), lambda: f"bias of shape {b.shape}, expected ({n},)")
    return b


def _check_out(name, out, dtype):
    _check(name, out.flags.c_contiguous, lambda: "output buffer must be C-contiguous")
    _check(name, out.dtype == dtype, lambda: f"output dtype {out.dtype} != input dtype {dtype}")


def _plan(attrs, x_shape, w_shape, y_shape):
    """The int64 geometry tuple the kernels take, and whether the conv is a plain GEMM."""
    sh, sw, pt, pb, pl, pr, dh, dw, groups = _geometry(attrs)
    N, H, W, C = x_shape
    O, KH, KW, Ig = w_shape
    _, OH, OW, _ = y_shape
    geo = (OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, groups)
    return geo, _is_plain(geo, H, W)


def _is_plain(geo, H, W):
    OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, groups = geo
    return (groups == 1 and KH == KW == 1 and sh == sw == 1 and pt == pl == 0
            and OH == H and OW == W)


_SLOTS = ("X4", "Y4", "W3", "P3", "M2", "N2", "V1", "U1")
_EMPTY = {}
_NO_GEO = (1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1)


def _use_dtype(dtype):
    """Every wrapper calls this first: the C functions the kernels call by name must be
    registered before a kernel of this dtype is compiled or loaded from the cache."""
    _task_external(dtype)


def _run(kind, ntasks, dtype, geo=_NO_GEO, i0=0, i1=0, i2=0, **arrays):
    """Run tasks 0..ntasks-1 of `kind` in parallel; arrays go in their named slots."""
    empty = _EMPTY.get(dtype)
    if empty is None:
        empty = _EMPTY[dtype] = {s: np.empty((0,) * int(s[1]), dtype) for s in _SLOTS}
    run = _serial if ntasks <= 1 else _parallel
    run(kind, ntasks, *(arrays.get(s, empty[s]) for s in _SLOTS), geo, int(i0), int(i1), int(i2))


def _good_ld(n, itemsize):
    """A row length >= n for a matrix read as the micro-kernel's right operand: an odd number
    of cache lines, so that a column panel's rows spread over all the cache sets (rows a power
    of two apart crowd into a few sets and evict each other)."""
    lines = _cdiv(n * itemsize, _ALIGN)
    lines += 1 - lines % 2
    return lines * _ALIGN // itemsize


def _pack_t(w3):
    """W.T per group: (G, Og, K) -> (G, K, ld >= Og) (see _good_ld), the forward GEMM's right
    operand; the padding columns are never read."""
    G, Og, K = w3.shape
    wt = _aligned_empty((G, K, _good_ld(Og, w3.itemsize)), w3.dtype)
    if w3.size <= _SMALL_PACK:      # not worth a parallel launch
        wt[:, :, :Og] = w3.transpose(0, 2, 1)
    else:
        _run(_T_PACK, G * _cdiv(K, 32) * _cdiv(Og, 32), w3.dtype, W3=w3, P3=wt)
    return wt


def _run_fwd(x, wt, b, y2, geo, plain):
    """y2 = im2col(x) @ wt + b, wt (groups, K, Og) = W.T. Tasks: row tiles x column parts
    (when there are few row tiles, tasks split the output channels too, and share one
    im2col of every row built first)."""
    M, O = y2.shape
    K = wt.shape[1]
    tile = _tile_rows(M, K, x.itemsize)
    if M * K * O <= _SERIAL_WORK:
        tile = M
    ntm = _cdiv(M, tile)
    nparts = 1
    if geo[10] == 1 and ntm > 1:
        nparts = max(1, min(_cdiv(O, _nr(x.itemsize)),
                            _cdiv(_threads() * _TASKS_PER_THREAD, ntm)))
    col = np.empty(0, x.dtype)
    if nparts > 1 and not plain and M * K * x.itemsize <= _SHARED_COL_BYTES:
        col = _aligned_empty(M * K, x.dtype)
        _run(_T_IM2COL, ntm, x.dtype, geo, tile, X4=x, U1=col)
    _run(_T_FWD, ntm * nparts, x.dtype, geo, tile, nparts, plain, X4=x, W3=wt, V1=b, M2=y2,
         U1=col)


def _transposed_fwd(M, O, K, groups, itemsize):
    """Whether the forward runs as y.T = W @ im2col(x).T: it saves packing W.T (O*K elements)
    for transposing im2col (M*K), worth it when there are fewer output pixels than channels."""
    return groups == 1 and M <= O and M * K * itemsize <= _SHARED_COL_BYTES


def _run_fwd_transposed(x, w2, b, y2, geo):
    M, O = y2.shape
    K = w2.shape[1]
    tile = _tile_rows(M, K, x.itemsize)
    colt = _aligned_empty(K * _good_ld(M, x.itemsize), x.dtype)
    _run(_T_COLT, _cdiv(M, tile), x.dtype, geo, tile, X4=x, U1=colt)
    yt = _aligned_empty((O, M), x.dtype)
    oblock = max(_MR, _cdiv(_cdiv(O, _threads() * _TASKS_PER_THREAD), _MR) * _MR)
    _run(_T_FWD_T_GEMM, _cdiv(O, oblock), x.dtype, geo, oblock, W3=w2.reshape(1, O, K),
         U1=colt, N2=yt)
    _run(_T_FWD_T_OUT, _cdiv(M, tile), x.dtype, geo, tile, N2=yt, M2=y2, V1=b)


def _run_bwd_weight(x, gy2, gw2, geo, plain):
    M, O = gy2.shape
    K = gw2.shape[1]
    threads = _threads()
    # split: no partials, one task per column panel of gw2 reducing over every row; worth it
    # when the partials (one gw2 per thread) would outweigh the rows
    if (geo[10] == 1 and M < 2 * threads * O and M * K * O > _SERIAL_WORK
            and (plain or M * K * x.itemsize <= _SPLIT_COL_BYTES)):
        if plain:
            col = _aligned(x).reshape(-1)
        else:
            tile = _tile_rows(M, K, x.itemsize)
            col = _aligned_empty(M * K, x.dtype)
            _run(_T_IM2COL, _cdiv(M, tile), x.dtype, geo, tile, X4=x, U1=col)
        _run(_T_BWD_W_PANEL, _cdiv(K, _nr(x.itemsize)), x.dtype, M2=gy2, U1=col, N2=gw2)
        return
    tile = _tile_rows(M, K, x.itemsize, _WGRAD_TILE_BYTES)
    nchunks = 1 if M * K * O <= _SERIAL_WORK else max(1, min(threads, _cdiv(M, _MR)))
    partial = gw2.reshape(1, O, K) if nchunks == 1 else np.empty((nchunks, O, K), x.dtype)
    _run(_T_BWD_W_CHUNK, nchunks, x.dtype, geo, nchunks, tile, plain,
         X4=_aligned(x) if plain else x, M2=gy2, P3=partial)
    if nchunks > 1:
        _run(_T_SUM, O, x.dtype, P3=partial, N2=gw2)


def _implicit(geo, C) -> bool:
    """Few input channels: im2col would cost about as much as the GEMM; run the GEMMs straight
    on the padded input instead (needs dw == 1, groups == 1)."""
    return geo[10] == 1 and geo[9] == 1 and C * geo[3] < _IMPLICIT_MAX_RUN


def _implicit_weight(w2, geo):
    """W.T (1, K, ld) for _implicit_fwd; with stride 1, ld a whole number of micro-tile
    columns and the padding columns zeros (its tiles read them)."""
    O, K = w2.shape
    if geo[4] == geo[5] == 1:
        vl = _VBYTES // w2.itemsize
        ld = vl if O <= vl else _cdiv(O, _nr(w2.itemsize)) * _nr(w2.itemsize)
        wt = _aligned_zeros((1, K, ld), w2.dtype)
        wt[0, :, :O] = w2.T
        return wt
    return _pack_t(w2.reshape(1, O, K))


def _stacked(geo, C, O) -> bool:
    """Weight gradient of a stride-1 conv with a single input channel and few outputs (the
    planar direct kernels' case, LeNet's c1): the implicit GEMM on the input restacked so
    that all of a pixel's taps are one run (see _implicit_bwd_weight)."""
    return (C == 1 and geo[10] == 1 and geo[4] == geo[5] == 1 and geo[8] == geo[9] == 1
            and O < _DIRECT_WIDE and geo[2] * geo[3] * C < _IMPLICIT_MAX_RUN)


def _implicit_wgrad_dims(O, KC, itemsize):
    """(rows, ldk) of the stride-1 implicit weight gradient's partials (_implicit_bwd_weight):
    O and KC rounded up to the micro-tile's rows and columns (narrow tile when a kernel row's
    run fits one vector)."""
    vl = _VBYTES // itemsize
    mr, nr = (_MR_N, vl) if KC <= vl else (_MR, _NV * vl)
    return _cdiv(O, mr) * mr, _cdiv(KC, nr) * nr


def _padded(x, attrs, geo):
    """x zero-padded as the conv reads it, plus spare zero rows at the bottom (see
    _implicit_fwd); returns it and the matching geometry (no padding left)."""
    OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, groups = geo
    N, H, W, C = x.shape
    # exactly the rows/columns the conv reads (a negative pad crops)
    rows = (OH - 1) * sh + dh * (KH - 1) + 1
    cols = (OW - 1) * sw + KW
    # + the micro-tile's over-reads past the last output pixel (a_over): up to a tile's rows
    # of pixels, sw*C elements apart, plus one kernel row's run
    spare = 1 + _cdiv(max(_MR, _MR_N) * sw * C + KW * C, cols * C)
    xp = _aligned_zeros((N, rows + spare, cols, C), x.dtype)
    r0, c0 = max(0, -pt), max(0, -pl)
    r1, c1 = min(H, rows - pt), min(W, cols - pl)
    xp[:, r0 + pt:r1 + pt, c0 + pl:c1 + pl, :] = x[:, r0:r1, c0:c1, :]
    return xp, (OH, OW, KH, KW, sh, sw, 0, 0, dh, dw, groups)


def _direct_plan(geo, O, N, rows):
    """Direct kernels: planar (whole padded images, channel-major: stride 1, few channels)
    or row by row; returns (planar, units, tasks)."""
    planar = geo[4] == geo[5] == 1 and O < _DIRECT_WIDE
    units = N if planar else rows
    return planar, units, _chunks(units)


def _wt(w):
    """(O, KH, KW, 1) -> (KH, KW, O), the direct kernels' weight layout."""
    O, KH, KW, _ = w.shape
    return _carr(w.reshape(O, KH, KW).transpose(1, 2, 0))


def _setup(name, first, second, out, shapes, attrs):
    """What the three conv kernels check first: the shapes (x, w, y order) against the
    attributes, both inputs C-contiguous in the first one's dtype, the output's dtype."""
    _check_conv(name, *shapes, attrs)
    first = _carr(first)
    _use_dtype(first.dtype)
    second = _carr(second, first.dtype)
    _check_out(name, out, first.dtype)
    return first, second


@kernel("conv2d")
def conv2d(ins, outs, attrs, ctx):
    x, w, b = ins
    (y,) = outs
    x, w = _setup("conv2d", x, w, y, (x.shape, w.shape, y.shape), attrs)
    if y.size == 0:
        return
    N, H, W, C = x.shape
    O, KH, KW, Ig = w.shape
    b = _bias_arr(b, O, x.dtype, "conv2d")
    geo, plain = _plan(attrs, x.shape, w.shape, y.shape)
    OH, OW, groups = geo[0], geo[1], geo[10]
    dt = x.dtype
    if C == groups:     # one input channel per group
        planar, units, tasks = _direct_plan(geo, O, N, N * OH)
        _run(_T_DIRECT_FWD, tasks, dt, geo, units, tasks, planar, X4=x, W3=_wt(w), V1=b, Y4=y)
        return
    Og, K, M = O // groups, KH * KW * Ig, N * OH * OW
    if _implicit(geo, C):
        xp, pgeo = _padded(x, attrs, geo)
        units = N if geo[4] == geo[5] == 1 else N * OH
        tasks = min(units, _threads() * _TASKS_PER_THREAD)
        _run(_T_IMPLICIT_FWD, tasks, dt, pgeo, units, tasks, X4=xp,
             W3=_implicit_weight(w.reshape(O, K), pgeo), V1=b, M2=y.reshape(M, O))
        return
    if _transposed_fwd(M, O, K, groups, x.itemsize):
        _run_fwd_transposed(x, w.reshape(O, K), b, y.reshape(M, O), geo)
        return
    _run_fwd(x, _pack_t(w.reshape(groups, Og, K)), b, y.reshape(M, O), geo, plain)


@kernel("conv2d_bwd_data")
def conv2d_bwd_data(ins, outs, attrs, ctx):
    gy, w, b = ins
    (gx,) = outs
    gy, w = _setup("conv2d_bwd_data", gy, w, gx, (gx.shape, w.shape, gy.shape), attrs)
    if gx.size == 0:
        return
    N, H, W, C = gx.shape
    O, KH, KW, Ig = w.shape
    b = _bias_arr(b, C, gy.dtype, "conv2d_bwd_data")
    geo, plain = _plan(attrs, gx.shape, w.shape, gy.shape)
    OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, groups = geo
    dt = gy.dtype
    if C == groups:
        planar, units, tasks = _direct_plan(geo, O, N, N * H)
        _run(_T_DIRECT_BWD_DATA, tasks, dt, geo, units, tasks, planar, Y4=gy, W3=_wt(w), V1=b,
             X4=gx)
        return
    Og = O // groups
    # Stride 1: the adjoint is the "full" conv of gy with the flipped kernel, channels swapped,
    # wf[g, (kh, kw, og), ig] = w[g*Og + og, KH-1-kh, KW-1-kw, ig]: gathered, so any tiling is
    # race-free. It computes H*W rows of Ig columns, the scatter OH*OW rows of KH*KW*Ig: use it
    # when that is not much more work and Ig fills the micro-tile, or when the batch is too
    # small for one image per task.
    gather = sh == sw == 1 and (
        (H * W <= 1.25 * OH * OW and Ig >= _nr(gy.itemsize) and N * OH * OW > O)
        or N < _threads())
    if gather:
        wf = _aligned_empty((groups, KH * KW * Og, _good_ld(Ig, gy.itemsize)), dt)
        wf[:, :, :Ig] = (w.reshape(groups, Og, KH, KW, Ig)[:, :, ::-1, ::-1, :]
                         .transpose(0, 2, 3, 1, 4).reshape(groups, KH * KW * Og, Ig))
        full = (H, W, KH, KW, 1, 1, dh * (KH - 1) - pt, dw * (KW - 1) - pl, dh, dw, groups)
        _run_fwd(gy, wf, b, gx.reshape(N * H * W, C), full, _is_plain(full, OH, OW))
        return
    # scatter: gy @ W, then col2im; each task owns whole images (no two write one pixel)
    K = KH * KW * Ig
    w = _aligned(w)
    tasks = max(1, min(N, _threads() * _TASKS_PER_THREAD))
    M = N * OH * OW
    if groups == 1 and M <= O and M * K * gy.itemsize <= _SHARED_COL_BYTES:
        # few rows: the whole gy @ W first, in column panels that read W once, then col2im
        dcol = _aligned_empty((M, K), dt)
        _run(_T_BWD_DATA_PANEL, _cdiv(K, _nr(gy.itemsize)), dt, M2=gy.reshape(M, O),
             W3=w.reshape(1, O, K), N2=dcol)
        _run(_T_COL2IM, tasks, dt, geo, tasks, N2=dcol, V1=b, X4=gx)
        return
    w3 = w.reshape(1, O, K)
    vl, nr = _VBYTES // gy.itemsize, _nr(gy.itemsize)
    ld = vl if K <= vl else _cdiv(K, nr) * nr
    if groups == 1 and ld != K:
        # W's rows (and so the GEMM's output rows) zero-padded to whole micro-tiles: every
        # tile of gy @ W goes straight into the column buffer, none through _gemm's edge path
        w3 = _aligned_zeros((1, O, ld), dt)
        w3[0, :, :K] = w.reshape(O, K)
    tile = _tile_rows(_cdiv(N, tasks) * OH * OW, w3.shape[2], gy.itemsize, spread=False)
    _run(_T_BWD_DATA, tasks, dt, geo, tasks, tile, M2=gy.reshape(N * OH * OW, O), W3=w3, V1=b,
         X4=gx)


@kernel("conv2d_bwd_weight")
def conv2d_bwd_weight(ins, outs, attrs, ctx):
    x, gy = ins
    (gw,) = outs
    x, gy = _setup("conv2d_bwd_weight", x, gy, gw, (x.shape, gw.shape, gy.shape), attrs)
    if gy.size == 0:        # a sum over no pixels
        gw[...] = 0
        return
    N, H, W, C = x.shape
    O, KH, KW, Ig = gw.shape
    geo, plain = _plan(attrs, x.shape, gw.shape, gy.shape)
    OH, OW, groups = geo[0], geo[1], geo[10]
    dt = x.dtype
    if _stacked(geo, C, O):
        xp, pgeo = _padded(x, attrs, geo)
        tasks = max(1, min(_threads(), N))
        rows, ldk = _implicit_wgrad_dims(O, KH * KW * C, dt.itemsize)
        partial = np.empty((tasks, rows, ldk), dt)
        _run(_T_BWD_W_IMPLICIT, tasks, dt, pgeo, N, tasks, 1, X4=xp,
             M2=gy.reshape(N * OH * OW, O), P3=partial)
        gwp = np.empty((rows, ldk), dt)
        _run(_T_SUM, rows, dt, P3=partial, N2=gwp)
        gw[...] = gwp[:O, :KH * KW * C].reshape(O, KW, KH, C).transpose(0, 2, 1, 3)
        return
    if C == groups:
        planar, units, tasks = _direct_plan(geo, O, N, N * OH)
        partial = np.empty((tasks, KH * KW, O), dt)
        _run(_T_DIRECT_BWD_W, tasks, dt, geo, units, tasks, planar, X4=x, Y4=gy, P3=partial)
        gwt = np.empty((KH * KW, O), dt)
        _run(_T_SUM, KH * KW, dt, P3=partial, N2=gwt)
        gw.reshape(O, KH * KW)[...] = gwt.T
        return
    if _implicit(geo, C):
        xp, pgeo = _padded(x, attrs, geo)
        units = N if geo[4] == geo[5] == 1 else N * OH
        tasks = max(1, min(_threads(), units))
        K = KH * KW * C
        if geo[4] == geo[5] == 1:
            rows, ldk = _implicit_wgrad_dims(O, KW * C, dt.itemsize)
            partial = np.empty((tasks, rows, KH * ldk), dt)
            _run(_T_BWD_W_IMPLICIT, tasks, dt, pgeo, units, tasks, X4=xp,
                 M2=gy.reshape(N * OH * OW, O), P3=partial)
            gwp = np.empty((rows, KH * ldk), dt)
            _run(_T_SUM, rows, dt, P3=partial, N2=gwp)
            gw.reshape(O, KH, KW * C)[...] = gwp.reshape(rows, KH, ldk)[:O, :, :KW * C]
            return
        partial = np.empty((tasks, K, O), dt)
        _run(_T_BWD_W_IMPLICIT, tasks, dt, pgeo, units, tasks, X4=xp,
             M2=gy.reshape(N * OH * OW, O), P3=partial)
        gwt = np.empty((K, O), dt)
        _run(_T_SUM, K, dt, P3=partial, N2=gwt)
        gw.reshape(O, K)[...] = gwt.T
        return
    _run_bwd_weight(x, gy.reshape(N * OH * OW, O), gw.reshape(O, KH * KW * Ig), geo, plain)


@kernel("bias_grad")
def bias_grad(ins, outs, attrs, ctx):
    (gy,) = ins
    (gb,) = outs
    gy = _carr(gy)
    _check("bias_grad", gy.ndim >= 1 and gb.shape == gy.shape[-1:],
           lambda: f"gradient {gy.shape} and bias {gb.shape} do not agree")
    _check_out("bias_grad", gb, gy.dtype)
    g2 = gy.reshape(-1, gy.shape[-1])
    C = g2.shape[1]
    if C < _FEW_COLUMNS:
        lanes = C * -(-128 // C)     # a multiple of C, at least 128 accumulators
        _bias_grad_few(g2.reshape(-1), C, gb, _chunks(max(1, g2.shape[0] // 256)), lanes)
        return
    _bias_grad(g2, gb, _chunks(max(1, g2.shape[0] // 64)))


def _dense_shapes(name, x, w, y):
    _check(name, x.ndim == 2 and w.ndim == 2 and y.ndim == 2 and x.shape[1] == w.shape[1]
           and y.shape == (x.shape[0], w.shape[0]),
           lambda: f"x {x.shape}, w {w.shape} and y {y.shape} do not agree (y = x @ w.T)")


# a dense layer is a plain 1x1 conv over (N, 1, 1, F), geometry _NO_GEO


@kernel("dense")
def dense(ins, outs, attrs, ctx):
    x, w, b = ins
    (y,) = outs
    _dense_shapes("dense", x, w, y)
    x = _carr(x)
    _use_dtype(x.dtype)
    w = _carr(w, x.dtype)
    _check_out("dense", y, x.dtype)
    if y.size == 0:
        return
    N, F = x.shape
    U = w.shape[0]
    b = _bias_arr(b, U, x.dtype, "dense")
    _run_fwd(x.reshape(N, 1, 1, F), _pack_t(w.reshape(1, U, F)), b, y, _NO_GEO, True)


@kernel("dense_bwd_data")
def dense_bwd_data(ins, outs, attrs, ctx):
    gy, w = ins
    (gx,) = outs
    _dense_shapes("dense_bwd_data", gx, w, gy)
    gy = _carr(gy)
    _use_dtype(gy.dtype)
    w = _carr(w, gy.dtype)
    _check_out("dense_bwd_data", gx, gy.dtype)
    if gx.size == 0:
        return
    N, U = gy.shape
    _run_fwd(gy.reshape(N, 1, 1, U), _aligned(w).reshape(1, U, w.shape[1]),
             np.zeros(0, gy.dtype), gx, _NO_GEO, True)


@kernel("dense_bwd_weight")
def dense_bwd_weight(ins, outs, attrs, ctx):
    x, gy = ins
    (gw,) = outs
    _dense_shapes("dense_bwd_weight", x, gw, gy)
    x = _carr(x)
    _use_dtype(x.dtype)
    gy = _carr(gy, x.dtype)
    _check_out("dense_bwd_weight", gw, x.dtype)
    if gy.size == 0:
        gw[...] = 0
        return
    N, F = x.shape
    _run_bwd_weight(x.reshape(N, 1, 1, F), gy, gw, _NO_GEO, True)
