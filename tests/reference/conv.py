"""float64 NumPy references for conv2d and dense, written for clarity.

Layouts follow the kernel contract (runtime/isa.py): x (N, H, W, C), w (O, KH, KW, C/groups),
y (N, OH, OW, O); pad = (top, bottom, left, right). Nothing here is shared with the kernels.
"""

from __future__ import annotations

import numpy as np


def conv2d(x, w, b=None, stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1), groups=1):
    """y[n, oh, ow, o] = b[o] + sum_{kh, kw, i} xpad[n, oh*sh + kh*dh, ow*sw + kw*dw, g*Ig + i]
    * w[o, kh, kw, i], with g = o // (O / groups) and xpad the zero-padded input."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    n, h, wd, c = x.shape
    o, kh, kw, ig = w.shape
    sh, sw = stride
    top, bottom, left, right = pad
    dh, dw = dilation
    assert c == ig * groups and o % groups == 0
    og = o // groups

    xpad = np.zeros((n, h + top + bottom, wd + left + right, c))
    xpad[:, top:top + h, left:left + wd, :] = x
    oh = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + left + right - dw * (kw - 1) - 1) // sw + 1

    y = np.zeros((n, oh, ow, o))
    for g in range(groups):
        xin = xpad[..., g * ig:(g + 1) * ig]
        wg = w[g * og:(g + 1) * og]
        for i in range(kh):
            for j in range(kw):
                # the input pixels that meet tap (i, j) of every output pixel
                patch = xin[:, i * dh:i * dh + sh * (oh - 1) + 1:sh,
                            j * dw:j * dw + sw * (ow - 1) + 1:sw, :]
                y[..., g * og:(g + 1) * og] += patch @ wg[:, i, j, :].T
    if b is not None:
        y += np.asarray(b, np.float64)
    return y


def dense(x, w, b=None):
    """y[n, u] = b[u] + sum_f x[n, f] * w[u, f]"""
    y = np.asarray(x, np.float64) @ np.asarray(w, np.float64).T
    if b is not None:
        y = y + np.asarray(b, np.float64)
    return y
