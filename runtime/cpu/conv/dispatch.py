"""The conv and dense kernels (`@kernel` wrappers): check the shapes against the attributes,
pick a method from the shapes, and run its tasks (tasks.py) on the buffers it needs.

conv2d, conv2d_bwd_data, conv2d_bwd_weight (M = N*OH*OW output pixels):
- one input channel per group (C == groups): direct kernels, planar.py at stride 1 with few
  channels (O < _DIRECT_WIDE), else row by row (direct.py); except the weight gradient of a
  stride-1 undilated conv with a single input channel and O < _DIRECT_WIDE (LeNet c1):
  implicit.py's GEMM on the restacked input;
- groups == 1, dw == 1 and few input channels (KW*C < _IMPLICIT_MAX_RUN): implicit.py's
  GEMMs on the padded input for the forward and the weight gradient; the backward data is
  im2col.py's scatter (or the gather below);
- otherwise im2col.py: forward `col @ W.T` by row tiles (or `y.T = W @ col.T` with M <= O);
  backward data gathered through the forward path at stride 1 when it is not much more work
  and the input channels fill a micro-tile (or the batch is below the thread count), else
  scattered (`gy @ W`, col2im); backward weight `gy.T @ col` into partials per thread, or by
  column panels with few rows.
dense, dense_bwd_data, dense_bwd_weight: plain 1x1 convs over (N, 1, 1, F) through the im2col
forward and backward-weight paths; a sequence's tokens (N, T, F) are N*T rows.
"""

from __future__ import annotations

import numpy as np

from ..table import kernel
from .buffers import _aligned, _aligned_empty, _aligned_zeros, _cdiv, _good_ld
from .config import (_DIRECT_WIDE, _GATHER_MAX_ROWS, _MIN_TILE_ROWS, _MR, _NV, _PACK_BLOCK,
                     _SERIAL_WORK, _SHARED_COL_BYTES, _SMALL_PACK, _SPLIT_COL_BYTES,
                     _SPLIT_ROWS_PER_THREAD_CHANNEL, _TASKS_PER_THREAD, _TILE_BYTES, _VBYTES,
                     _WGRAD_TILE_BYTES)
from .geometry import (_NO_GEO, Geometry, _bias_arr, _carr, _check, _check_conv, _check_out,
                       _is_plain, _plan)
from .implicit import _implicit, _implicit_wgrad_dims, _padded, _stacked
from .tasks import (_T_BWD_DATA, _T_BWD_DATA_PANEL, _T_BWD_W_CHUNK, _T_BWD_W_IMPLICIT,
                    _T_BWD_W_PANEL, _T_COL2IM, _T_COLT, _T_DIRECT_BWD_DATA, _T_DIRECT_BWD_W,
                    _T_DIRECT_FWD, _T_FWD, _T_FWD_T_GEMM, _T_FWD_T_OUT, _T_IM2COL,
                    _T_IMPLICIT_FWD, _T_PACK, _T_SUM, _chunks, _run, _threads, _use_dtype)


# ---------------------------------------------------------------- shared by the wrappers

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


def _setup(name, first, second, out):
    """What every kernel does once the shapes are checked: both inputs C-contiguous in the
    first one's dtype (whose C functions are registered), the output's layout and dtype
    checked."""
    first = _carr(first)
    _use_dtype(first.dtype)
    second = _carr(second, first.dtype)
    _check_out(name, out, first.dtype)
    return first, second


def _summed(partial, out=None):
    """The per-task partials summed over their first axis in task order, one row per task,
    into `out` (2-D; a new array when not given)."""
    if out is None:
        out = np.empty(partial.shape[1:], partial.dtype)
    _run(_T_SUM, partial.shape[1], partial.dtype, P3=partial, N2=out)
    return out


# ---------------------------------------------------------------- im2col paths

def _pack_t(w3):
    """W.T per group: (G, Og, K) -> (G, K, ld >= Og) (see _good_ld), the forward GEMM's right
    operand; the padding columns are never read."""
    G, Og, K = w3.shape
    wt = _aligned_empty((G, K, _good_ld(Og, w3.itemsize)), w3.dtype)
    if w3.size <= _SMALL_PACK:      # not worth a parallel launch
        wt[:, :, :Og] = w3.transpose(0, 2, 1)
    else:
        _run(_T_PACK, G * _cdiv(K, _PACK_BLOCK) * _cdiv(Og, _PACK_BLOCK), w3.dtype, W3=w3, P3=wt)
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
    if geo.groups == 1 and ntm > 1:
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
    if (geo.groups == 1 and M < _SPLIT_ROWS_PER_THREAD_CHANNEL * threads * O
            and M * K * O > _SERIAL_WORK and (plain or M * K * x.itemsize <= _SPLIT_COL_BYTES)):
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
        _summed(partial, gw2)


# ---------------------------------------------------------------- implicit paths

def _implicit_weight(w2, geo):
    """W.T (1, K, ld) for implicit._implicit_fwd; with stride 1, ld a whole number of
    micro-tile columns and the padding columns zeros (its tiles read them)."""
    O, K = w2.shape
    if geo.sh == geo.sw == 1:
        vl = _VBYTES // w2.itemsize
        ld = vl if O <= vl else _cdiv(O, _nr(w2.itemsize)) * _nr(w2.itemsize)
        wt = _aligned_zeros((1, K, ld), w2.dtype)
        wt[0, :, :O] = w2.T
        return wt
    return _pack_t(w2.reshape(1, O, K))


def _run_implicit_bwd_weight(x, gy, gw, geo, stack):
    """The weight gradient through implicit GEMMs on the padded input: at stride 1 over whole
    images (on the input restacked so that a pixel's taps are one run with `stack`), else
    output row by output row; partials per task, then summed."""
    N, H, W, C = x.shape
    O, KH, KW, _ = gw.shape
    dt = x.dtype
    xp, pgeo = _padded(x, geo)
    stride1 = geo.sh == geo.sw == 1
    units = N if stride1 else N * geo.OH
    tasks = max(1, min(_threads(), units))
    if stride1:
        runs = 1 if stack else KH       # kernel rows of the (restacked) input
        rows, ldk = _implicit_wgrad_dims(O, KH * KW * C // runs, dt.itemsize)
        partial = np.empty((tasks, rows, runs * ldk), dt)
    else:
        partial = np.empty((tasks, KH * KW * C, O), dt)
    _run(_T_BWD_W_IMPLICIT, tasks, dt, pgeo, units, tasks, stack, X4=xp, M2=gy.reshape(-1, O),
         P3=partial)
    total = _summed(partial)
    if not stride1:
        gw.reshape(O, KH * KW * C)[...] = total.T
    elif stack:
        gw[...] = total[:O, :KH * KW * C].reshape(O, KW, KH, C).transpose(0, 2, 1, 3)
    else:
        gw.reshape(O, KH, KW * C)[...] = total.reshape(rows, KH, ldk)[:O, :, :KW * C]


# ---------------------------------------------------------------- direct paths

def _direct_plan(geo, O, N, rows):
    """Direct kernels: planar (whole padded images, channel-major: stride 1, few channels)
    or row by row; returns (planar, units, tasks)."""
    planar = geo.sh == geo.sw == 1 and O < _DIRECT_WIDE
    units = N if planar else rows
    return planar, units, _chunks(units)


def _wt(w):
    """(O, KH, KW, 1) -> (KH, KW, O), the direct kernels' weight layout."""
    O, KH, KW, _ = w.shape
    return _carr(w.reshape(O, KH, KW).transpose(1, 2, 0))


# ---------------------------------------------------------------- the choice of method

def _forward(x, w, b, y, geo, plain):
    """y = conv(x, w) + b (b: None without a bias)."""
    if y.size == 0:
        return
    N, H, W, C = x.shape
    O, KH, KW, Ig = w.shape
    b = _bias_arr(b, O, x.dtype, "conv2d")
    dt = x.dtype
    if C == geo.groups:     # one input channel per group
        planar, units, tasks = _direct_plan(geo, O, N, N * geo.OH)
        _run(_T_DIRECT_FWD, tasks, dt, geo, units, tasks, planar, X4=x, W3=_wt(w), V1=b, Y4=y)
        return
    Og, K, M = O // geo.groups, KH * KW * Ig, N * geo.OH * geo.OW
    if _implicit(geo, C):
        xp, pgeo = _padded(x, geo)
        units = N if geo.sh == geo.sw == 1 else N * geo.OH
        tasks = min(units, _threads() * _TASKS_PER_THREAD)
        _run(_T_IMPLICIT_FWD, tasks, dt, pgeo, units, tasks, X4=xp,
             W3=_implicit_weight(w.reshape(O, K), pgeo), V1=b, M2=y.reshape(M, O))
        return
    if _transposed_fwd(M, O, K, geo.groups, x.itemsize):
        _run_fwd_transposed(x, w.reshape(O, K), b, y.reshape(M, O), geo)
        return
    _run_fwd(x, _pack_t(w.reshape(geo.groups, Og, K)), b, y.reshape(M, O), geo, plain)


def _backward_data(gy, w, b, gx, geo):
    """gx = the adjoint of the conv applied to gy, + b (b: None without a bias)."""
    if gx.size == 0:
        return
    N, H, W, C = gx.shape
    O, KH, KW, Ig = w.shape
    b = _bias_arr(b, C, gy.dtype, "conv2d_bwd_data")
    OH, OW, groups = geo.OH, geo.OW, geo.groups
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
    gather = geo.sh == geo.sw == 1 and (
        (H * W <= _GATHER_MAX_ROWS * OH * OW and Ig >= _nr(gy.itemsize) and N * OH * OW > O)
        or N < _threads())
    if gather:
        wf = _aligned_empty((groups, KH * KW * Og, _good_ld(Ig, gy.itemsize)), dt)
        wf[:, :, :Ig] = (w.reshape(groups, Og, KH, KW, Ig)[:, :, ::-1, ::-1, :]
                         .transpose(0, 2, 3, 1, 4).reshape(groups, KH * KW * Og, Ig))
        full = Geometry(OH=H, OW=W, KH=KH, KW=KW, sh=1, sw=1, pt=geo.dh * (KH - 1) - geo.pt,
                        pl=geo.dw * (KW - 1) - geo.pl, dh=geo.dh, dw=geo.dw, groups=groups)
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
    _run(_T_BWD_DATA, tasks, dt, geo, tasks, tile, M2=gy.reshape(M, O), W3=w3, V1=b, X4=gx)


def _backward_weight(x, gy, gw, geo, plain):
    """gw = the gradient of the conv's weight from its input x and output gradient gy."""
    if gy.size == 0:        # a sum over no pixels
        gw[...] = 0
        return
    N, H, W, C = x.shape
    O, KH, KW, Ig = gw.shape
    stack = _stacked(geo, C, O)
    if stack or (C != geo.groups and _implicit(geo, C)):
        _run_implicit_bwd_weight(x, gy, gw, geo, stack)
        return
    if C == geo.groups:
        planar, units, tasks = _direct_plan(geo, O, N, N * geo.OH)
        partial = np.empty((tasks, KH * KW, O), x.dtype)
        _run(_T_DIRECT_BWD_W, tasks, x.dtype, geo, units, tasks, planar, X4=x, Y4=gy,
             P3=partial)
        gw.reshape(O, KH * KW)[...] = _summed(partial).T
        return
    _run_bwd_weight(x, gy.reshape(-1, O), gw.reshape(O, KH * KW * Ig), geo, plain)


# ---------------------------------------------------------------- the kernels

def _conv_setup(name, first, second, out, x_w_y, attrs):
    """What the three conv kernels do first: the shapes of x, w, y (as in the forward conv)
    checked against the attributes, the operands as _setup makes them; returns the inputs,
    the geometry and whether the conv is a plain GEMM."""
    shapes = [a.shape for a in x_w_y]
    _check_conv(name, *shapes, attrs)
    first, second = _setup(name, first, second, out)
    return (first, second, *_plan(attrs, *shapes))


@kernel("conv2d")
def conv2d(ins, outs, attrs, ctx):
    x, w, b = ins
    (y,) = outs
    x, w, geo, plain = _conv_setup("conv2d", x, w, y, (x, w, y), attrs)
    _forward(x, w, b, y, geo, plain)


@kernel("conv2d_bwd_data")
def conv2d_bwd_data(ins, outs, attrs, ctx):
    gy, w, b = ins
    (gx,) = outs
    gy, w, geo, _ = _conv_setup("conv2d_bwd_data", gy, w, gx, (gx, w, gy), attrs)
    _backward_data(gy, w, b, gx, geo)


@kernel("conv2d_bwd_weight")
def conv2d_bwd_weight(ins, outs, attrs, ctx):
    x, gy = ins
    (gw,) = outs
    x, gy, geo, plain = _conv_setup("conv2d_bwd_weight", x, gy, gw, (x, gw, gy), attrs)
    _backward_weight(x, gy, gw, geo, plain)


def _token_rows(a):
    """A dense operand as rows: a sequence (N, T, F), each token a row, as (N*T, F), a view
    (an output must be one); a vector batch (N, F) or a weight as it is."""
    if a.ndim != 3:
        return a
    if not a.flags.c_contiguous:
        raise ValueError(f"dense kernels need C-contiguous sequences, got strides {a.strides}")
    return a.reshape(-1, a.shape[-1])


def _dense_setup(name, first, second, out, x_w_y):
    """What the dense kernels do first: the shapes of x, w, y (y = x @ w.T) checked, the
    operands as _setup makes them."""
    x, w, y = (a.shape for a in x_w_y)
    _check(name, len(x) == len(w) == len(y) == 2 and x[1] == w[1] and y == (x[0], w[0]),
           lambda: f"x {x}, w {w} and y {y} do not agree (y = x @ w.T)")
    return _setup(name, first, second, out)


# a dense layer is a plain 1x1 conv over (N, 1, 1, F), geometry _NO_GEO

@kernel("dense")
def dense(ins, outs, attrs, ctx):
    x, w, b = ins
    x, y = _token_rows(x), _token_rows(outs[0])
    x, w = _dense_setup("dense", x, w, y, (x, w, y))
    if y.size:
        U, F = w.shape
        b = _bias_arr(b, U, x.dtype, "dense")
        _run_fwd(x.reshape(len(x), 1, 1, F), _pack_t(w.reshape(1, U, F)), b, y, _NO_GEO, True)


@kernel("dense_bwd_data")
def dense_bwd_data(ins, outs, attrs, ctx):
    gy, w = ins
    gy, gx = _token_rows(gy), _token_rows(outs[0])
    gy, w = _dense_setup("dense_bwd_data", gy, w, gx, (gx, w, gy))
    if gx.size:     # gx = gy @ w: the forward, with w as stored in the place of W.T
        U, F = w.shape
        _run_fwd(gy.reshape(len(gy), 1, 1, U), _aligned(w).reshape(1, U, F),
                 np.zeros(0, gy.dtype), gx, _NO_GEO, True)


@kernel("dense_bwd_weight")
def dense_bwd_weight(ins, outs, attrs, ctx):
    x, gy = _token_rows(ins[0]), _token_rows(ins[1])
    (gw,) = outs
    x, gy = _dense_setup("dense_bwd_weight", x, gy, gw, (x, gw, gy))
    if gy.size:
        _run_bwd_weight(x.reshape(len(x), 1, 1, x.shape[1]), gy, gw, _NO_GEO, True)
    else:           # a sum over no rows
        gw[...] = 0
