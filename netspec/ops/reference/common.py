"""What the references share: float64 arrays, the channel axis, and the padding a window
attribute asks for (also for the ops' PyTorch rules, `torch_padded`)."""

from __future__ import annotations

import numpy as np


def f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def channel_axis(x) -> int:
    """The channel axis of a batch in the spec's layout (a NumPy array or a torch tensor): 1
    for maps (N, C, H, W) and vectors (N, F), the features of a sequence (N, T, F)."""
    return 2 if x.ndim == 3 else 1


def window_pads(pad, size_hw, kernel, stride, dilation=(1, 1)) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) for a window attribute: 'valid' none; (ph, pw) symmetric;
    'same' (TensorFlow's) as few rows as give ceil(size / stride) windows, the odd one after."""
    if pad == "valid":
        return 0, 0, 0, 0
    if pad != "same":
        return pad[0], pad[0], pad[1], pad[1]
    out = []
    for size, k, s, d in zip(size_hw, kernel, stride, dilation):
        windows = -(-size // s)
        covered = (windows - 1) * s + d * (k - 1) + 1     # the rows those windows span
        total = max(covered - size, 0)
        out += [total // 2, total - total // 2]
    return tuple(out)


def torch_padded(x, a, dilation=(1, 1), value: float = 0.0):
    """x (N, C, H, W), a torch tensor, padded as a windowed op's attributes say: the ops'
    PyTorch rules pad explicitly, since PyTorch pads symmetrically only."""
    from torch.nn import functional as F
    t, b, l, r = window_pads(a["pad"], tuple(x.shape[2:]), a["kernel"], a["stride"], dilation)
    return F.pad(x, (l, r, t, b), value=value) if t or b or l or r else x
