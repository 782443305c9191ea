"""Merges of several inputs: add, concat (along the channels, or a vector's features); and
split, concat's inverse."""

from __future__ import annotations

import numpy as np

from .common import f64


def add(xs):
    total = np.zeros_like(f64(xs[0]))
    for x in xs:
        total = total + f64(x)
    return total


def concat(xs, axis=1):
    return np.concatenate([f64(x) for x in xs], axis=axis)


def split(x, widths, axis=1):
    """x cut along `axis` into parts of the given widths, in order (also concat's adjoint)."""
    x, out, start = f64(x), [], 0
    for width in widths:
        out.append(np.take(x, range(start, start + width), axis=axis))
        start += width
    return out
