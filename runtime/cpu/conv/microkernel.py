"""The GEMM engine of every conv and dense kernel: a register-blocked micro-kernel generated as
LLVM IR (`_mk`, a Numba intrinsic: `_MR` rows x `_NV` SIMD vectors of accumulators, fused
multiply-adds; `_mk_narrow` for products one vector wide), and `_gemm`, whole products tiled
over it with zero-padded edge panels.

No BLAS: on the AVX-512 machines this project targets the micro-kernel runs at about twice
the speed of the OpenBLAS SGEMM there (which the environment pins to its AVX2 kernels), and
with no BLAS call inside `prange` the BLAS and Numba thread pools cannot fight. FMA is not
fastmath: each product-sum is rounded once, every sum runs in a fixed order.

Every GEMM-based method (im2col.py, implicit.py) calls `_gemm`, or `_tile` straight over its
operands where the edge handling is not needed; the direct kernels (direct.py, planar.py) use
the vector loops of vectors.py instead.
"""

from __future__ import annotations

import llvmlite.binding as llvm
import llvmlite.ir as ir
import numba
import numpy as np
from numba import carray, cfunc, njit, types
from numba.extending import intrinsic, overload

from .codegen import _for, _nested_loops, _ptr, _VecIR
from .config import _MR, _MR_N, _NV, _REDUCTION_BLOCK, _VBYTES


def _make_mk(MR, NV):
    @intrinsic
    def mk(typingctx, a, a_off, lda, ldk, b, b_off, ldb, c, c_off, ldc, k, acc, nkh, ldah,
           ldbh):
        """One MR x NR micro-tile (NR = NV vectors of the dtype): for i < MR, j < NR,
            c[c_off + i*ldc + j] = sum_{h < nkh} sum_{q < k} a[a_off + i*lda + h*ldah + q*ldk]
                                                          * b[b_off + h*ldbh + q*ldb + j]
                                   (+ its old value when acc != 0),
        the products added in that (h, q) order, in blocks of about `_REDUCTION_BLOCK` of
        them: each block summed in the registers from zero, then added into c (blocked
        summation: float32 errors grow with the blocks' length and their count, not with the
        whole reduction's). The reduction is two-level so that a conv's kernel rows (h), each
        a contiguous run of taps (q), go through one tile with the accumulators kept in
        registers. a, b, c are 1-D arrays of one float dtype; every element addressed must
        exist."""
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
            c0, c1 = ir.Constant(i64, 0), ir.Constant(i64, 1)

            # for h in range(nkh): for q in range(k):
            #     acc[i][v] = fma(splat(a[i, h, q]), b[h, q, v], acc[i][v])
            # in blocks of about _REDUCTION_BLOCK taps, whole kernel rows (hb of them) when a
            # row is shorter, else chunks of one row (kb taps each, the chunks balanced):
            # each block's sums start from zero in the registers and are added into c
            def cdiv(a, b):
                return builder.sdiv(builder.add(a, builder.sub(b, c1)), b)

            def smax(a, b):
                return builder.select(builder.icmp_signed(">", a, b), a, b)

            def smin(a, b):
                return builder.select(builder.icmp_signed("<", a, b), a, b)

            block = ir.Constant(i64, _REDUCTION_BLOCK)
            k1, nkh1 = smax(k, c1), smax(nkh, c1)
            kb = cdiv(k1, cdiv(k1, block))
            hb = smax(builder.sdiv(block, k1), c1)
            hb = cdiv(nkh1, cdiv(nkh1, hb))

            ptrs = [builder.bitcast(
                        builder.gep(pc, [builder.add(builder.mul(ir.Constant(i64, i), ldc),
                                                     ir.Constant(i64, v * vl))]),
                        vty.as_pointer())
                    for i in range(MR) for v in range(NV)]

            def flush(totals, first):
                """c = the block's sums (the first block without acc), else c += them."""
                with builder.if_else(first) as (put, add):
                    with put:
                        for ptr, total in zip(ptrs, totals):
                            builder.store(total, ptr, align=isz)
                    with add:
                        for ptr, total in zip(ptrs, totals):
                            builder.store(builder.fadd(builder.load(ptr, align=isz), total),
                                          ptr, align=isz)

            def row_block(h0, _):
                def chunk(q0, _):
                    def kernel_row(a):
                        h = builder.add(h0, a)
                        return (builder.gep(pa, [builder.mul(h, ldah)]),
                                builder.gep(pb, [builder.mul(h, ldbh)]))

                    def tap(rows, a, b, accs):
                        pah, pbh = rows
                        q = builder.add(q0, b)
                        brow = builder.gep(pbh, [builder.mul(q, ldb)])
                        bvec = [g.load(brow, ir.Constant(i64, v * vl)) for v in range(NV)]
                        acol = builder.gep(pah, [builder.mul(q, ldk)])
                        new = []
                        for i in range(MR):
                            s = g.splat(builder.load(
                                builder.gep(acol, [builder.mul(ir.Constant(i64, i), lda)])))
                            for v in range(NV):
                                new.append(builder.call(fma, [s, bvec[v], accs[i * NV + v]]))
                        return new

                    totals = _nested_loops(builder, smin(hb, builder.sub(nkh, h0)),
                                           smin(kb, builder.sub(k, q0)), [zero] * (MR * NV),
                                           kernel_row, tap)
                    first = builder.and_(
                        builder.icmp_signed("==", acc, c0),
                        builder.icmp_signed("==", builder.or_(h0, q0), c0))
                    flush(totals, first)
                    return []

                _for(builder, c0, k, kb, [], chunk)
                return []

            # an empty reduction: c keeps its values (acc) or gets zeros
            with builder.if_then(builder.or_(builder.icmp_signed("<=", nkh, c0),
                                             builder.icmp_signed("<=", k, c0))):
                flush([zero] * (MR * NV), builder.icmp_signed("==", acc, c0))
            _for(builder, c0, nkh, hb, [], row_block)
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
# before any kernel of that dtype is compiled or runs (tasks._use_dtype, called by every
# wrapper).

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
