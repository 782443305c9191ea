"""The convolution and dense references (netspec/ops/reference/) in the kernels' layouts:
x (N, H, W, C), w (O, KH, KW, C/groups), y (N, OH, OW, O); pad = (top, bottom, left, right)
(runtime/isa.py). Nothing here is shared with the kernels.
"""

from __future__ import annotations

import numpy as np

from netspec.ops.reference import conv, dense as _dense
from netspec.ops.reference.common import f64


def conv2d(x, w, b=None, stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1), groups=1):
    """y[n, oh, ow, o] = b[o] + sum_{kh, kw, i} xpad[n, oh*sh + kh*dh, ow*sw + kw*dw, g*Ig + i]
    * w[o, kh, kw, i], with g = o // (O / groups) and xpad the zero-padded input."""
    y = conv.conv2d(f64(x).transpose(0, 3, 1, 2), f64(w).transpose(0, 3, 1, 2), b, stride, pad,
                    dilation, groups)
    return np.ascontiguousarray(y.transpose(0, 2, 3, 1))


dense = _dense.dense
