"""Convolutions: conv2d (grouped, depthwise: groups == channels) and its transpose."""

from __future__ import annotations

import numpy as np

from .common import f64, window_pads


def conv2d(x, w, b=None, stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1):
    """y[n, o, i, j] = b[o] + sum_{c, u, v} xpad[n, g*Cg + c, i*sh + u*dh, j*sw + v*dw] * w[o, c, u, v]
    with g = o // (O / groups), Cg = C / groups and xpad the zero-padded input."""
    x, w = f64(x), f64(w)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (dh, dw) = stride, dilation
    top, bottom, left, right = pads
    assert c == cg * groups and o % groups == 0
    og = o // groups
    xpad = np.zeros((n, c, h + top + bottom, wd + left + right))
    xpad[:, :, top:top + h, left:left + wd] = x
    oh = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + left + right - dw * (kw - 1) - 1) // sw + 1
    y = np.zeros((n, o, oh, ow))
    for g in range(groups):
        for u in range(kh):
            for v in range(kw):
                # the input pixels that meet tap (u, v) of every output pixel
                patch = xpad[:, g * cg:(g + 1) * cg, u * dh:u * dh + sh * (oh - 1) + 1:sh,
                             v * dw:v * dw + sw * (ow - 1) + 1:sw]
                y[:, g * og:(g + 1) * og] += np.einsum("nchw,oc->nohw", patch,
                                                       w[g * og:(g + 1) * og, :, u, v])
    if b is not None:
        y += f64(b)[None, :, None, None]
    return y


def conv_transpose2d(x, w, b=None, stride=(1, 1), pad="valid", output_padding=(0, 0),
                     dilation=(1, 1), groups=1):
    """Each input pixel scatters its kernel: full[n, g*Og + o, i*sh + u*dh, j*sw + v*dw] +=
    x[n, c, i, j] * w[c, o, u, v] for c in group g (w is (C, O/groups, KH, KW)), then the
    padding is cut: `p` rows each side (output_padding more kept at the bottom/right), or for
    'same' the H*s rows of the same-padded conv input whose adjoint this is."""
    x, w = f64(x), f64(w)
    n, c, h, wd = x.shape
    _, og, kh, kw = w.shape
    cg = c // groups
    (sh, sw), (dh, dw) = stride, dilation
    full_h, full_w = (h - 1) * sh + dh * (kh - 1) + 1, (wd - 1) * sw + dw * (kw - 1) + 1
    if pad == "same":
        oh, ow = h * sh, wd * sw
        top, _, left, _ = window_pads("same", (oh, ow), (kh, kw), stride, dilation)
    else:
        top, _, left, _ = window_pads(pad, (h, wd), (kh, kw), stride, dilation)
        oh = full_h - 2 * top + output_padding[0]
        ow = full_w - 2 * left + output_padding[1]
    full = np.zeros((n, og * groups, max(full_h, top + oh), max(full_w, left + ow)))
    for ci in range(c):
        g = ci // cg
        for u in range(kh):
            for v in range(kw):
                full[:, g * og:(g + 1) * og, u * dh:u * dh + sh * (h - 1) + 1:sh,
                     v * dw:v * dw + sw * (wd - 1) + 1:sw] += \
                    x[:, ci, None] * w[ci, :, u, v][None, :, None, None]
    y = full[:, :, top:top + oh, left:left + ow].copy()
    if b is not None:
        y += f64(b)[None, :, None, None]
    return y
