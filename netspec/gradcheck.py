"""Gradients of a network, a block or a layer against central differences, in float64:
what `netspec gradcheck` runs, and the drawing and differencing the op case suite
(tests/test_op_cases.py) shares.

The part checked is cut out of the checked graph as a network of its own (`part_graph`):
its nodes, with every value it reads from outside as a free input of the shape the graph
gives it, and its output as the output. Its loss is the mean squared error against random
targets (central differences are exact on a quadratic, so the loss adds no error of its
own). Each input and trainable parameter's gradient from netspec's float64 training step
(`Model.loss_and_grads`, the default graph passes, inputs' gradients on) is compared with
central differences of that loss: every element of a small tensor, a few random directions
of a larger one (<g, u> against (L(x + h u) - L(x - h u)) / 2h).

The step runs in training mode, as training does: batch norms normalise with the batch's
statistics (so a batch of 2 or more keeps a vector's variance above 0), and a random op
(dropout, drop_path) draws the same mask at every step, so the check is that of the
gradient of the network with that mask.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np

# central differences' step, relative to the tensor's RMS: small enough that the ReLUs of a
# block of a million activations seldom see one cross its kink (each crossing errs by about
# 1/sqrt(activations)), large enough that rounding stays near 1e-7 of the derivative
STEP = 1e-7
TOLERANCE = 1e-3         # the largest relative error that passes (tests/test_op_cases.py's rtol)
EVERY_ELEMENT = 8        # tensors this small are checked element by element
DIRECTIONS = 3           # random directions for a larger tensor
MASK_SEED = 123          # the random ops' draw, the same at every step


class UnknownPart(LookupError):
    """--node or --block names nothing in the graph; the message says what is there."""


# ---------------------------------------------------------------- drawing, differencing

def draw_input(rng, shape, kinks=()) -> np.ndarray:
    """Distinct values, evenly spread over [-span, span] (span reaching past every kink) and
    shuffled; none at 0 or within a quarter step of a kink."""
    n = math.prod(shape)
    span = max([2.0] + [abs(k) + 1.0 for k in kinks])
    step = 2 * span / n
    values = -span + (np.arange(n) + 0.3) * step           # 0.3: never exactly 0
    for kink in kinks:
        values[np.abs(values - kink) < step / 4] += step / 2
    return rng.permutation(values).reshape(shape)


def central_difference(loss_along, step: float) -> float:
    """The derivative of t -> loss_along(t) at 0, from two evaluations a step either side."""
    return (loss_along(step) - loss_along(-step)) / (2 * step)


# ---------------------------------------------------------------- the part checked

def part_graph(graph, names: list[str], output: str, title: str):
    """A network of the nodes `names` of `graph` (in its order): each value they read from
    another node becomes an input of its shape, named after that value; `output` its output."""
    from .graph.graph import Graph, Node
    from .ops import get_op
    part = Graph(title)
    part.params, part.source_file = graph.params, graph.source_file
    inside = set(names)
    outside: dict[str, str] = {}          # value read from outside -> its input node
    for node in graph.nodes():
        if node.name not in inside:
            continue
        for value in node.inputs:
            producer = graph.producer(value)
            if producer.name in inside or value in outside:
                continue
            outside[value] = value.replace(":", ".part")       # node names hold no ':'
            shape = graph.shape_of(value)
            attrs = get_op("input").make_attrs([shape], {})
            part.add(Node(outside[value], "input", attrs, [], shape, pos=producer.pos))
        copied = copy.copy(node)
        copied.inputs = [outside.get(v, v) for v in node.inputs]
        part.add(copied)
    part.outputs = [output]
    return part


def parts_to_check(graph, node: str | None = None, block: str | None = None) -> list:
    """The graphs `netspec gradcheck` checks: the network; one node (by name or label); one
    block instance (by its path, e.g. residual3); or, for a block's name, the first instance
    of each distinct argument list (residual(64), residual(128, stride=2)...)."""
    if node is not None:
        hits = [n for n in graph.nodes() if n.op != "input" and (n.name == node or n.label == node)]
        if not hits:
            names = [n.name for n in graph.nodes() if n.op != "input"]
            raise UnknownPart(_unknown(f"--node: no layer '{node}' in {graph.name}", node, names))
        found = hits[0]
        return [part_graph(graph, [found.name], graph.values(found)[0], found.name)]
    if block is not None:
        if block in graph.blocks:
            chosen = [graph.blocks[block]]
        else:
            instances = [b for b in graph.blocks.values() if b.block == block]
            if not instances:
                names = sorted({b.block for b in graph.blocks.values()}) + list(graph.blocks)
                raise UnknownPart(_unknown(f"--block: no block or block instance '{block}' in "
                                           f"{graph.name}", block, names))
            distinct = {}
            for b in instances:
                distinct.setdefault(b.args_text(), b)
            chosen = list(distinct.values())
        return [part_graph(graph, [n.name for n in graph.nodes() if n.name.startswith(b.path + "/")],
                           b.output, f"{b.path} = {b.block}{b.args_text()}") for b in chosen]
    return [graph]


def _unknown(message: str, word: str, names: list[str]) -> str:
    from .errors import did_you_mean
    hint = did_you_mean(word, names)
    return message + (f" ({hint})" if hint else f"; there are: {', '.join(names[:12])}"
                      + (", ..." if len(names) > 12 else ""))


# ---------------------------------------------------------------- the check

@dataclass
class TensorCheck:
    """One tensor's gradient against central differences."""
    part: str                   # the network, block instance or layer it belongs to
    tensor: str                 # an input's name, or a parameter's (layer.weight)
    shape: tuple[int, ...]
    compared: str               # what was compared: '8 elements', '3 directions'
    error: float                # the largest relative error over them

    @property
    def passed(self) -> bool:
        return self.error <= TOLERANCE


def check_part(graph, batch: int = 2, seed: int = 0, target: str = "cpu") -> list[TensorCheck]:
    """Every input's and trainable parameter's gradient of `graph` (a checked graph, or a
    part_graph) against central differences; parameters drawn from their initialisers."""
    from .network import Network
    model = Network(None, graph).compile(target=target, dtype="float64", loss="mse",
                                         input_grads=True, seed=seed, batch=batch)
    rng = np.random.default_rng(seed)
    xs = {name: draw_input(rng, (batch, *graph.node(name).shape)) for name in graph.inputs}
    targets = rng.standard_normal((batch, *graph.shape_of(graph.outputs[0])))

    def loss_at(inputs) -> float:
        model.executor.ctx.rng = np.random.default_rng(MASK_SEED)
        return model.loss_and_grads(inputs, targets)[0]

    model.executor.ctx.rng = np.random.default_rng(MASK_SEED)
    loss, grads = model.loss_and_grads(xs, targets)
    grads = {k: np.array(g) for k, g in grads.items()}
    floor = 1e-8 * max(1.0, abs(loss))    # below this a derivative is rounding noise
    checks = []
    for name, grad in grads.items():
        is_input = name in xs
        value = xs[name] if is_input else model.params[name]   # a view of the parameter's buffer
        h = STEP * (float(np.sqrt(np.mean(np.square(value)))) or 1.0)
        error = 0.0
        directions = _directions(rng, value.shape)
        for u in directions:
            if is_input:
                def along(t, u=u):
                    return loss_at({**xs, name: xs[name] + t * u})
            else:
                def along(t, u=u, p=value):
                    saved = p.copy()
                    p += t * u
                    try:
                        return loss_at(xs)
                    finally:
                        p[...] = saved
            numeric = central_difference(along, h)
            analytic = float(np.sum(grad * u))
            error = max(error, abs(analytic - numeric) / max(abs(analytic), abs(numeric), floor))
        compared = (f"{len(directions)} elements" if len(directions) == value.size
                    else f"{len(directions)} directions")
        checks.append(TensorCheck(graph.name, name, tuple(value.shape), compared, error))
    return checks


def _directions(rng, shape) -> list[np.ndarray]:
    """Each element of a small tensor; a few random directions of unit RMS for a larger one."""
    n = math.prod(shape)
    if n <= EVERY_ELEMENT:
        return list(np.eye(n).reshape(n, *shape))
    return [rng.standard_normal(shape) for _ in range(DIRECTIONS)]
