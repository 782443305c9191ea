"""A fused group's steps (the ISA's `fused_map` attribute `steps`) read for every target: the
order the ISA allows checked, the steps split into their parts (adds, the activation, the
pool, the activation after it), their slopes, the shapes a fused pool accepts, and which
steps the backward kernel can differentiate. Each target generates or picks its kernels from
these (runtime/cpu/fused.py, runtime/cuda/fused.py).
"""

from __future__ import annotations

import functools

from . import isa
from .isa import FUSED_POOLS as POOLS, POINTWISE_ACTIVATIONS as ACTIVATIONS


@functools.lru_cache(maxsize=None)
def pattern(steps) -> tuple:
    """The steps without the values that are arguments (alpha): what a kernel is made for.
    (Cached: the kernels ask on every call, and a program has few distinct steps.)"""
    out = []
    for s in steps:
        if s[0] in ACTIVATIONS:
            out.append((s[0],))
        elif s[0] in POOLS:
            out.append((s[0], int(s[1]), int(s[2])))
        elif s[0] == "add":
            out.append(("add",))
        else:
            raise ValueError(f"fused_map: unknown step {s!r}")
    kinds = ["act" if s[0] in ACTIVATIONS else "pool" if s[0] in POOLS else "add" for s in out]
    order = {"add": 0, "act": 1, "pool": 2}
    head = kinds[:kinds.index("pool") + 1] if "pool" in kinds else kinds
    tail = kinds[len(head):]
    if (head != sorted(head, key=order.__getitem__) or head.count("act") > 1
            or head.count("pool") > 1 or tail not in ([], ["act"])):
        raise ValueError(f"fused_map: steps must be adds, at most one activation, at most one "
                         f"pool, and an activation after the pool only: {steps}")
    return tuple(out)


@functools.lru_cache(maxsize=None)
def split(pat):
    """(number of adds, activation or None, pool step or None, activation after the pool)."""
    adds = sum(s[0] == "add" for s in pat)
    pool_at = next((i for i, s in enumerate(pat) if s[0] in POOLS), len(pat))
    act = next((s[0] for s in pat[:pool_at] if s[0] in ACTIVATIONS), None)
    after = pat[pool_at + 1][0] if pool_at + 1 < len(pat) else None
    return adds, act, (pat[pool_at] if pool_at < len(pat) else None), after


@functools.lru_cache(maxsize=None)
def check_backward(pat) -> None:
    """fused_map_bwd takes each activation's derivative from its output (the ISA): refuses a
    pattern with an activation whose derivative reads its input, which the group does not
    keep (the fuse pass makes such groups for inference only)."""
    reads_x = [s[0] for s in pat if s[0] in ACTIVATIONS and isa.ACTIVATIONS[s[0]].grad_reads == "x"]
    if reads_x:
        raise ValueError(f"fused_map_bwd: the derivative of {', '.join(reads_x)} reads its input, "
                         f"which a fused group does not keep: {pat}")


@functools.lru_cache(maxsize=None)
def alphas(steps) -> tuple[float, float]:
    """alpha of the activation before the pool, and of the one after it (0 where none)."""
    found, seen_pool = [0.0, 0.0], False
    for s in steps:
        if s[0] in POOLS:
            seen_pool = True
        elif s[0] in ACTIVATIONS:
            found[seen_pool] = float(s[1]) if len(s) > 1 else 0.0
    return found[0], found[1]


def check_pool(name, x_shape, y_shape, pool) -> None:
    """Checks that x (N, H, W, C) pools by the step's non-overlapping window into y."""
    _, kh, kw = pool
    n, h, w, c = tuple(x_shape)
    if h % kh or w % kw or tuple(y_shape) != (n, h // kh, w // kw, c):
        raise ValueError(f"{name}: {tuple(x_shape)} does not pool by {kh}x{kw} into {tuple(y_shape)}")
