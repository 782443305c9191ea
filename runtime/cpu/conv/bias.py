"""The bias gradient of conv and dense layers (`bias_grad`): the column sums of the output
gradient, in float64, per chunk of rows then across chunks in a fixed order. Few columns
(C < `_FEW_COLUMNS`, e.g. LeNet's c1 and c3) sum blocks of rows elementwise instead."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..table import kernel
from .config import (_BIAS_ROWS_PER_CHUNK, _BIAS_ROWS_PER_CHUNK_FEW, _FEW_COLUMNS,
                     _FEW_COLUMNS_LANES)
from .geometry import _carr, _check, _check_out
from .tasks import _chunks


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
        lanes = C * -(-_FEW_COLUMNS_LANES // C)     # a multiple of C, at least that many
        _bias_grad_few(g2.reshape(-1), C, gb,
                       _chunks(max(1, g2.shape[0] // _BIAS_ROWS_PER_CHUNK_FEW)), lanes)
        return
    _bias_grad(g2, gb, _chunks(max(1, g2.shape[0] // _BIAS_ROWS_PER_CHUNK)))
