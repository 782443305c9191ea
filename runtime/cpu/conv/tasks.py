"""Tasks and the parallel loop that runs them.

Every parallel conv kernel is one `prange` over independent tasks (`_parallel`), each task one
call of a serial body of im2col.py, implicit.py, planar.py or direct.py, chosen by its kind.
The kinds are dispatched by two C functions per dtype (`_task_gemm_c`: the GEMM-based bodies;
`_task_direct_c`: the planar and row-by-row direct ones) that the loop calls by symbol name,
like microkernel._gemm. As ordinary callees their code would be optimised and compiled again
inside every parallel loop (Numba builds each loop body as a separate function and links
callees into it, then links that into the caller), which made the cold compile of these
kernels three times longer. The bodies are inlined into the C functions (inline='always'), so
each is compiled exactly once per dtype (about 13 s per dtype on the 2-core target, cold;
`cache=True` makes later runs near-free).

A task's arguments are eight arrays in typed slots (unused ones empty), the geometry and three
ints. They cross the C boundary as the slots' data pointers and one int64 header, built once
per run (`_header`) and read by the C functions (`_unpack`): the slots' shapes in `_SLOTS`
order, the geometry's fields, then i0, i1, i2. Slots: X4, Y4 (4-D), W3, P3 (3-D), M2, N2
(2-D), V1, U1 (1-D).
"""

from __future__ import annotations

import llvmlite.binding as llvm
import numba
import numpy as np
from numba import carray, cfunc, njit, prange, types
from numba.extending import overload

from .codegen import _ptr
from .config import _DIRECT_CHUNKS_PER_THREAD
from .direct import _direct_bwd_data_rows, _direct_bwd_weight_rows, _direct_fwd_rows
from .geometry import _NO_GEO, Geometry
from .im2col import (_bwd_data_images, _bwd_data_panel, _bwd_weight_chunk, _bwd_weight_panel,
                     _col2im_images, _colt_rows, _fwd_t_gemm, _fwd_t_out, _fwd_task,
                     _im2col_tile, _pack_block)
from .implicit import _implicit_bwd_weight, _implicit_fwd
from .microkernel import _gemm_external
from .planar import _planar_bwd_data, _planar_bwd_weight, _planar_fwd

_T_PACK = 0           # W3 = W (G, Og, K) -> P3 = W.T (G, K, Og), _PACK_BLOCK square blocks
_T_FWD = 1            # X4 x, W3 W.T, V1 b, M2 y2, U1 shared col | i0 tile, i1 nparts, i2 plain
_T_IM2COL = 2         # X4 x -> U1 col (every row) | i0 tile
_T_COLT = 3           # X4 x -> U1 col.T | i0 tile
_T_FWD_T_GEMM = 4     # W3 W (1, O, K), U1 col.T -> N2 y.T (O, M) | i0 output channels per task
_T_FWD_T_OUT = 5      # N2 y.T, V1 b -> M2 y2 | i0 tile
_T_IMPLICIT_FWD = 6   # X4 padded x, W3 W.T (1, K, ld), V1 b -> M2 y2 | i0 units, i1 tasks
_T_BWD_DATA = 7       # M2 gy2, W3 W (1, O, K), V1 b -> X4 gx | i0 tasks, i1 tile
_T_BWD_W_CHUNK = 8    # X4 x, M2 gy2 -> P3 partials (tasks, O, K) | i0 tasks, i1 tile, i2 plain
_T_BWD_W_IMPLICIT = 9  # X4 padded x, M2 gy2 -> P3 partials (tasks, rows, KH*ldk) (stride 1,
                       # see implicit._implicit_wgrad_dims) or (tasks, K, O) | i0 units,
                       # i1 tasks, i2 stacked input
_T_BWD_W_PANEL = 10   # M2 gy2, U1 col -> N2 gw2 (O, K), one column panel per task
_T_SUM = 11           # P3 partials -> N2 their sum, one row per task
_T_DIRECT_FWD = 12    # X4 x, W3 wt (KH, KW, O), V1 b -> Y4 y | i0 units, i1 tasks, i2 planar
_T_DIRECT_BWD_W = 13  # X4 x, Y4 gy -> P3 partials (tasks, KH*KW, O) | i0, i1, i2 as above
_T_DIRECT_BWD_DATA = 14  # Y4 gy, W3 wt, V1 b -> X4 gx | i0, i1, i2 as above
_T_BWD_DATA_PANEL = 15   # M2 gy2, W3 W (1, O, K) -> N2 dcol (M, K), one column panel per task
_T_COL2IM = 16        # N2 dcol, V1 b -> X4 gx, chunks of whole images | i0 tasks

_SLOTS = ("X4", "Y4", "W3", "P3", "M2", "N2", "V1", "U1")
# the header: the slots' shapes (X4's 4 dims at 0, Y4's at 4, W3's at 8, P3's at 11, M2's at
# 14, N2's at 16, V1's at 18, U1's at 19), the geometry's fields in order, then i0, i1, i2
_GEO_AT = sum(int(s[1]) for s in _SLOTS)
_INTS_AT = _GEO_AT + len(Geometry._fields)
_HEADER_LEN = _INTS_AT + 3


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
def _share(t, units, tasks):
    """Units [lo, hi) of task t when `tasks` tasks share `units` units."""
    return t * units // tasks, (t + 1) * units // tasks


# ---------------------------------------------------------------- the C functions

def _task_c_sig(dtype):
    p = types.CPointer(dtype)
    return types.void(types.int64, types.int64, *([p] * len(_SLOTS)), types.CPointer(types.int64))


@njit(cache=True, nogil=True, inline='always')
def _unpack(x_p, y_p, w_p, p_p, m_p, n_p, v_p, u_p, h_p):
    """The slots as arrays (C order), the geometry, i0, i1 and i2, from the slots' data
    pointers and the header (see the module's docstring)."""
    h = carray(h_p, (_HEADER_LEN,))
    g = h[_GEO_AT:_INTS_AT]
    geo = Geometry(g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8], g[9], g[10])
    return (carray(x_p, (h[0], h[1], h[2], h[3])), carray(y_p, (h[4], h[5], h[6], h[7])),
            carray(w_p, (h[8], h[9], h[10])), carray(p_p, (h[11], h[12], h[13])),
            carray(m_p, (h[14], h[15])), carray(n_p, (h[16], h[17])), carray(v_p, (h[18],)),
            carray(u_p, (h[19],)), geo, h[_INTS_AT], h[_INTS_AT + 1], h[_INTS_AT + 2])


def _task_gemm_c(kind, t, x_p, y_p, w_p, p_p, m_p, n_p, v_p, u_p, h_p):
    X4, Y4, W3, P3, M2, N2, V1, U1, geo, i0, i1, i2 = _unpack(x_p, y_p, w_p, p_p, m_p, n_p,
                                                              v_p, u_p, h_p)
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
        M = X4.shape[0] * geo.OH * geo.OW
        _colt_rows(X4, U1, t * i0, min(M, (t + 1) * i0), geo)
    elif kind == _T_FWD_T_GEMM:
        _fwd_t_gemm(W3, U1, N2, t, i0)
    elif kind == _T_FWD_T_OUT:
        _fwd_t_out(N2, M2, V1, t, i0)
    elif kind == _T_IMPLICIT_FWD:
        lo, hi = _share(t, i0, i1)
        _implicit_fwd(X4, W3, V1, M2, geo, lo, hi)
    elif kind == _T_BWD_DATA:
        n0, n1 = _share(t, X4.shape[0], i0)
        _bwd_data_images(M2, W3[0], V1, X4, n0, n1, geo, i1)
    elif kind == _T_BWD_W_CHUNK:
        r0, r1 = _share(t, M2.shape[0], i0)
        _bwd_weight_chunk(X4, M2, P3[t], r0, r1, i1, geo, i2 != 0)
    elif kind == _T_BWD_W_IMPLICIT:
        lo, hi = _share(t, i0, i1)
        _implicit_bwd_weight(X4, M2, P3[t], geo, lo, hi, i2 != 0)
    elif kind == _T_BWD_W_PANEL:
        _bwd_weight_panel(M2, U1, N2, t)
    elif kind == _T_SUM:
        _sum_partials(P3, N2, t)
    elif kind == _T_BWD_DATA_PANEL:
        _bwd_data_panel(M2, W3, N2, t)
    elif kind == _T_COL2IM:
        n0, n1 = _share(t, X4.shape[0], i0)
        _col2im_images(N2, X4, V1, n0, n1, geo)


def _task_direct_c(kind, t, x_p, y_p, w_p, p_p, m_p, n_p, v_p, u_p, h_p):
    X4, Y4, W3, P3, M2, N2, V1, U1, geo, units, tasks, planar = _unpack(
        x_p, y_p, w_p, p_p, m_p, n_p, v_p, u_p, h_p)
    lo, hi = _share(t, units, tasks)
    if kind == _T_DIRECT_FWD:
        if planar:
            _planar_fwd(X4, W3, V1, Y4, geo, lo, hi)
        else:
            _direct_fwd_rows(X4, W3, V1, Y4, geo, lo, hi)
    elif kind == _T_DIRECT_BWD_W:
        if planar:
            _planar_bwd_weight(X4, Y4, P3[t], geo, lo, hi)
        else:
            _direct_bwd_weight_rows(X4, Y4, P3[t], geo, lo, hi)
    elif kind == _T_DIRECT_BWD_DATA:
        if planar:
            _planar_bwd_data(Y4, W3, V1, X4, geo, lo, hi)
        else:
            _direct_bwd_data_rows(Y4, W3, V1, X4, geo, lo, hi)


_TASK_C = (("gemm", _task_gemm_c), ("direct", _task_direct_c))
_TASK_EXTERNAL = {}


def _task_external(dtype):
    """Compile (or load from the cache) and register the task C functions for `dtype`;
    returns their typed external functions (gemm, direct)."""
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


def _threads() -> int:
    return numba.get_num_threads()


def _chunks(units: int) -> int:
    """How many tasks share `units` units of a direct kernel (or the bias gradient)."""
    return max(1, min(units, _threads() * _DIRECT_CHUNKS_PER_THREAD))


def _use_dtype(dtype):
    """Every wrapper calls this first: the C functions the kernels call by name must be
    registered before a kernel of this dtype is compiled or loaded from the cache."""
    _task_external(dtype)


# ---------------------------------------------------------------- the loop

def _task_call(kind, t, X4, Y4, W3, P3, M2, N2, V1, U1, header):
    """One task, through the C function of its group; for jitted code only."""
    raise NotImplementedError("_task_call runs inside jitted kernels only")


@overload(_task_call, jit_options={"cache": True})
def _task_call_overload(kind, t, X4, Y4, W3, P3, M2, N2, V1, U1, header):
    gemm, direct = _task_external(numba.np.numpy_support.as_dtype(X4.dtype))

    def impl(kind, t, X4, Y4, W3, P3, M2, N2, V1, U1, header):
        args = (kind, t, _ptr(X4, 0), _ptr(Y4, 0), _ptr(W3, 0), _ptr(P3, 0), _ptr(M2, 0),
                _ptr(N2, 0), _ptr(V1, 0), _ptr(U1, 0), _ptr(header, 0))
        if kind < _T_DIRECT_FWD or kind > _T_DIRECT_BWD_DATA:
            gemm(*args)
        else:
            direct(*args)

    return impl


@njit(cache=True, nogil=True, inline='always')
def _header(X4, Y4, W3, P3, M2, N2, V1, U1, geo, i0, i1, i2):
    """The int64 header of a run's tasks (see the module's docstring); geo: the geometry's
    fields as a plain tuple."""
    return np.array(X4.shape + Y4.shape + W3.shape + P3.shape + M2.shape + N2.shape + V1.shape
                    + U1.shape + geo + (i0, i1, i2))


@njit(cache=True, parallel=True)
def _parallel(kind, ntasks, X4, Y4, W3, P3, M2, N2, V1, U1, geo, i0, i1, i2):
    """Tasks 0..ntasks-1 of `kind`, spread over Numba's threads."""
    header = _header(X4, Y4, W3, P3, M2, N2, V1, U1, geo, i0, i1, i2)
    for t in prange(ntasks):
        _task_call(kind, np.int64(t), X4, Y4, W3, P3, M2, N2, V1, U1, header)


@njit(cache=True)
def _serial(kind, ntasks, X4, Y4, W3, P3, M2, N2, V1, U1, geo, i0, i1, i2):
    """The same, in the calling thread: for work too small to be worth waking the pool."""
    header = _header(X4, Y4, W3, P3, M2, N2, V1, U1, geo, i0, i1, i2)
    for t in range(ntasks):
        _task_call(kind, np.int64(t), X4, Y4, W3, P3, M2, N2, V1, U1, header)


_EMPTY = {}


def _run(kind, ntasks, dtype, geo=_NO_GEO, i0=0, i1=0, i2=0, **arrays):
    """Run tasks 0..ntasks-1 of `kind` in parallel; arrays go in their named slots."""
    empty = _EMPTY.get(dtype)
    if empty is None:
        empty = _EMPTY[dtype] = {s: np.empty((0,) * int(s[1]), dtype) for s in _SLOTS}
    run = _serial if ntasks <= 1 else _parallel
    run(kind, ntasks, *(arrays.get(s, empty[s]) for s in _SLOTS), tuple(geo), int(i0), int(i1),
        int(i2))
