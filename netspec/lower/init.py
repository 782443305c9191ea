"""Parameter initialisers, by the names ops give their parameters (Param.init).

Shapes are the user-facing (PyTorch) layouts: conv weights (O, I/groups, KH, KW),
dense weights (units, features), so fan_in = I/groups * KH * KW and
fan_out = O * KH * KW, as Keras and PyTorch compute them.
"""

from __future__ import annotations

import math

import numpy as np


def default_init(graph, node, param) -> str:
    """The initialiser of `param` of `node`: the op's, unless it is the generic Glorot
    default and every path from the layer reaches the same activation, through ops the
    choice looks through (Traits.init_looks_through), and that activation names one
    (Traits.weight_init: He for the ReLU family, LeCun for SELU; Geron, ch. 11)."""
    if param.init != "glorot_uniform":
        return param.init
    reached, frontier = set(), [node.name]
    while frontier:
        for c in graph.consumers(frontier.pop()):
            op = graph.node(c).opdef
            if op.traits.init_looks_through:
                frontier.append(c)
            else:
                reached.add(op)
    if len(reached) == 1:
        return reached.pop().traits.weight_init or param.init
    return param.init


def initialisers(graph) -> dict[str, str]:
    """Every parameter tensor's initialiser ('node.param' -> name), decided on `graph`: the
    spec's own graph, so that passes which remove layers in between never change them."""
    return {f"{n.name}.{p.name}": default_init(graph, n, p) for n in graph.nodes() for p in n.params}


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) < 2:
        return shape[0] if shape else 1, shape[0] if shape else 1
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def initial_value(init: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A float64 array for initialiser `init` (zeros, ones, arange, constant:v, normal:std,
    glorot_uniform, ...)."""
    if init == "zeros":
        return np.zeros(shape)
    if init == "ones":
        return np.ones(shape)
    if init == "arange":                  # 0, 1, 2 ... in order (YOLOv8's DFL bin distances)
        return np.arange(math.prod(shape), dtype=np.float64).reshape(shape)
    if init.startswith("constant:"):
        return np.full(shape, float(init.split(":", 1)[1]))
    if init.startswith("normal:"):        # normal:STD, a normal of mean 0 (ViT's positions)
        return rng.normal(0.0, float(init.split(":", 1)[1]), shape)
    family, _, dist = init.partition("_")
    fan_in, fan_out = fans(shape)
    scale = {"glorot": 2.0 / (fan_in + fan_out), "he": 2.0 / fan_in, "lecun": 1.0 / fan_in}.get(family)
    if scale is None or dist not in ("uniform", "normal"):
        raise ValueError(f"unknown initialiser {init}")
    if dist == "uniform":
        limit = math.sqrt(3.0 * scale)
        return rng.uniform(-limit, limit, shape)
    # Keras draws from a normal truncated at 2 std, rescaled to keep the variance
    std = math.sqrt(scale) / 0.87962566103423978
    out = rng.standard_normal(shape)
    bad = np.abs(out) > 2
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2
    return out * std


def draw_initial(tensors: dict[str, tuple[str, tuple[int, ...]]], seed: int) -> dict[str, np.ndarray]:
    """Initial values (float64) of {name: (initialiser, shape)}, drawn from one generator of
    `seed` in the order of the names: what a compiled Model starts from (Model.init_params)."""
    rng = np.random.default_rng(seed)
    return {name: initial_value(init, shape, rng) for name, (init, shape) in sorted(tensors.items())}


def initial_params(graph, seed: int = 0) -> dict[str, np.ndarray]:
    """The initial values of every parameter and running statistic of `graph` (a checked
    graph), as `graph`'s compiled Model draws them with `seed`: without compiling it."""
    inits = initialisers(graph)
    return draw_initial({f"{n.name}.{p.name}": (inits[f"{n.name}.{p.name}"], p.shape)
                         for n in graph.nodes() for p in n.params}, seed)

