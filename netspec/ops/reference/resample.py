"""Resampling and moving channels: upsample (PyTorch's F.interpolate, nearest and bilinear) and
channel shuffle, in the spec's layout (N, C, H, W)."""

from __future__ import annotations

import math

import numpy as np

from .common import f64


def _nearest_source(o: int, n_in: int, n_out: int, scale) -> int:
    """The input pixel output o copies. PyTorch computes it in float32 (UpSample.h
    nearest_idx): floor(o * step), step = 1 / scale if a scale was given, else n_in / n_out;
    the same size copies, and twice the size halves the index."""
    if n_out == n_in:
        return o
    if n_out == 2 * n_in:
        return o // 2
    step = np.float32(1.0 / scale) if scale else np.float32(n_in) / np.float32(n_out)
    return min(int(math.floor(np.float32(o) * step)), n_in - 1)


def _linear_sources(o: int, n_in: int, n_out: int, scale, align_corners: bool):
    """[(input, weight), (input, weight)]: the two pixels output o interpolates, in float64
    (PyTorch's area_pixel_compute_source_index)."""
    if n_out == n_in:
        return [(o, 1.0), (o, 0.0)]
    if align_corners:
        source = o * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    else:
        step = 1.0 / scale if scale else n_in / n_out
        source = max(step * (o + 0.5) - 0.5, 0.0)
    i = min(math.floor(source), n_in - 1)
    frac = min(max(source - i, 0.0), 1.0)
    return [(i, 1.0 - frac), (min(i + 1, n_in - 1), frac)]


def _sources(mode, o, n_in, n_out, scale, align_corners):
    if mode == "nearest":
        return [(_nearest_source(o, n_in, n_out, scale), 1.0)]
    return _linear_sources(o, n_in, n_out, scale, align_corners)


def upsample(x, size, scale, mode: str, align_corners: bool) -> np.ndarray:
    """y (N, C, OH, OW) = (OH, OW) = size; each output pixel the weighted sum of the input
    pixels its row and its column read (scale: the (h, w) factors given, or None)."""
    x = f64(x)
    (oh, ow), (h, w) = size, x.shape[2:]
    sh, sw = scale or (None, None)
    y = np.zeros((*x.shape[:2], oh, ow))
    for p in range(oh):
        for i, wi in _sources(mode, p, h, oh, sh, align_corners):
            for q in range(ow):
                for j, wj in _sources(mode, q, w, ow, sw, align_corners):
                    y[:, :, p, q] += wi * wj * x[:, :, i, j]
    return y


def channel_shuffle(x, groups: int) -> np.ndarray:
    """Channel k of group g (input channel g * C / groups + k) becomes channel k * groups + g."""
    x = f64(x)
    per_group = x.shape[1] // groups
    y = np.empty_like(x)
    for g in range(groups):
        for k in range(per_group):
            y[:, k * groups + g] = x[:, g * per_group + k]
    return y
