"""`netspec compile --verify`: each graph pass, one at a time, shown as the change it made to
the graph and checked to leave the network's outputs (and, for a training-safe pass, its
loss and gradients) as they were.

For each pass of the selection (`passes.DEFAULT` unless `--passes` says otherwise) the
inference graph before and after it are compared node by node (`graph_diff`: nodes removed,
added, replaced, rewired; layers whose weights the pass recomputes). Then the network is
compiled with the passes up to it and run in float64 on the CPU target, seeded: its
inference outputs, and its training step's loss and every gradient (each parameter's and
each input's; the loss is the mean squared error of the first output against random
targets, as `netspec gradcheck` takes it), against those of the program before the pass. A
pass that is not training-safe (dropout, fold-batchnorm) leaves the training graph as it
was, so it is checked in inference mode only. A pass that changed nothing is not run again.

The parameters are drawn from their initialisers, then moved off them (batch norms' scales
and shifts away from 1 and 0, their running statistics near those of their inputs, as
training leaves them), so that folding a batch norm is not checked at the identity it
starts at. Every compiled program gets the same parameters.

Tolerance: the passes rewrite the graph exactly (they move arithmetic between layers and
kernels, never approximate it), so in float64 two programs differ only by rounding in a
different order, about 1e-15 of a value per layer and well under 1e-10 through a hundred
layers; a pass that computes something else differs by far more than TOLERANCE.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

# the largest difference that passes, relative to the largest value of the tensor compared
TOLERANCE = 1e-8
SHOWN_NAMES = 3          # nodes named in one line of a diff before "..."


class PassChangedResults(Exception):
    """A pass changed the network's outputs or gradients; the message names it."""


@dataclass
class PassCheck:
    """One pass: what it changed in the inference graph and what that did to the results."""
    name: str
    training_safe: bool
    changes: list[str] = field(default_factory=list)   # the graph diff, one line each
    ran: bool = False                 # False: the pass changed nothing, nothing was run
    output_difference: float = 0.0    # largest relative difference of an output
    gradient_difference: float = 0.0  # of the loss or a gradient (training-safe passes)
    worst: str = ""                   # the tensor that differed most

    @property
    def difference(self) -> float:
        return max(self.output_difference, self.gradient_difference)

    @property
    def passed(self) -> bool:
        return self.difference <= TOLERANCE

    def text(self) -> str:
        """'fold-batchnorm: removed 36 batchnorm nodes; ...' and what was checked."""
        head = f"{self.name}: " + ("; ".join(self.changes) if self.changes else "no change")
        if not self.ran:
            return head
        checked = (f"outputs, loss and gradients differ by at most {self.difference:.1e}"
                   if self.training_safe else
                   f"inference only: outputs differ by at most {self.output_difference:.1e}")
        return f"{head}\n    {checked} ({'ok' if self.passed else 'FAIL'})"


# ---------------------------------------------------------------- the graph diff

def _names(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN_NAMES])
    return shown + (", ..." if len(names) > SHOWN_NAMES else "")


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _by_op(nodes) -> list[str]:
    """'36 batchnorm nodes (bn1, bn2, bn3, ...)' per op, the most frequent first."""
    groups: dict[str, list[str]] = {}
    for node in nodes:
        groups.setdefault(node.op, []).append(node.name)
    return [f"{_count(len(names), op + ' node')} ({_names(names)})"
            for op, names in sorted(groups.items(), key=lambda kv: -len(kv[1]))]


def graph_diff(before, after) -> list[str]:
    """What a pass changed, from the graphs before and after it: nodes removed, added,
    replaced by another op, reading other inputs or with other attributes, and the layers
    whose parameters it changes (a batch norm folded in, parameters renamed into parts)."""
    old = {n.name: n for n in before.nodes()}
    new = {n.name: n for n in after.nodes()}
    lines = []
    removed = [n for name, n in old.items() if name not in new]
    added = [n for name, n in new.items() if name not in old]
    kept = [(old[name], n) for name, n in new.items() if name in old]
    lines += [f"removed {text}" for text in _by_op(removed)]
    lines += [f"added {text}" for text in _by_op(added)]
    replaced = Counter()
    replaced_names: dict[tuple, list[str]] = {}
    for a, b in kept:
        if a.op != b.op:
            replaced[(a.op, b.op)] += 1
            replaced_names.setdefault((a.op, b.op), []).append(b.name)
    for (was, now), n in replaced.most_common():
        lines.append(f"replaced {_count(n, was + ' node')} by {now} "
                     f"({_names(replaced_names[(was, now)])})")
    same_op = [(a, b) for a, b in kept if a.op == b.op]
    rewired = [b.name for a, b in same_op if a.inputs != b.inputs]
    if rewired:
        lines.append(f"{_count(len(rewired), 'node')} read other inputs ({_names(rewired)})")
    reattributed = [b.name for a, b in same_op if a.attrs != b.attrs]
    if reattributed:
        lines.append(f"{_count(len(reattributed), 'node')} with other attributes "
                     f"({_names(reattributed)})")
    folded = [(b.name, b.folded.node) for a, b in kept if b.folded and not a.folded]
    if folded:
        first = folded[0]
        lines.append(f"weights and bias of {_count(len(folded), 'layer')} rescaled by the batch "
                     f"norm after it ({first[0]} by {first[1]}"
                     + (", ...)" if len(folded) > 1 else ")"))
    renamed = [b.name for b in new.values() if b.param_names
               and (b.name not in old or old[b.name].param_names != b.param_names)]
    if renamed:
        lines.append(f"parameters of {_count(len(renamed), 'node')} taken from the layer split "
                     f"({_names(renamed)})")
    return lines


# ---------------------------------------------------------------- running the programs

def _move_off_init(params: dict, rng) -> dict[str, np.ndarray]:
    """Every parameter moved off its initial value by a random shift of half its RMS (of 0.5
    where it is all zeros). Running statistics are set by `_calibrate`."""
    state = {}
    for name in sorted(params):
        value = np.array(params[name], dtype=np.float64)
        rms = float(np.sqrt(np.mean(np.square(value)))) if value.size else 0.0
        state[name] = value + 0.5 * (rms or 1.0) * rng.standard_normal(value.shape)
    return state


def _calibrate(model, state: dict, xs, targets) -> None:
    """Set each batch norm's running statistics to the statistics its input has in the
    training step (as training leaves them, and away from 0 and 1, so that a fold that
    ignored them would show): without that, inference-mode activations grow layer after
    layer until a softmax saturates and hides any difference. A variance is kept at least
    the median of its layer's: a batch of 2 at 1x1 has channels of nearly no variance, which
    would magnify the smallest difference (rounding) beyond any tolerance."""
    from .gradcheck import MASK_SEED
    norms = [n.name for n in model.network.graph.nodes() if n.op == "batchnorm"]
    if not norms:
        return
    model.executor.ctx.rng = np.random.default_rng(MASK_SEED)
    bufs = model.train_buffers(xs, targets)
    for name in norms:
        mean = np.array(model.to_host(bufs[f"{name}:mean"]), np.float64)
        invstd = np.array(model.to_host(bufs[f"{name}:invstd"]), np.float64)
        var = 1.0 / np.square(invstd) - _epsilon(model, name)
        var = np.maximum(var, np.median(var))
        state[f"{name}.running_mean"] = mean
        state[f"{name}.running_var"] = var
    model.set_weights(state)


def _epsilon(model, name: str) -> float:
    return float(model.network.graph.node(name).attrs.epsilon)


def _results(model, xs, targets, training: bool = True) -> dict[str, np.ndarray]:
    """The inference outputs, then (training) the training step's loss and gradients, by name."""
    from .gradcheck import MASK_SEED
    out = model(xs)
    results = {f"output {k}": v for k, v in (out.items() if isinstance(out, dict)
                                                else [(model.network.graph.outputs[0], out)])}
    if not training:
        return results
    model.executor.ctx.rng = np.random.default_rng(MASK_SEED)   # one dropout mask for all
    loss, grads = model.loss_and_grads(xs, targets)
    results["loss"] = np.array(loss)
    results.update({f"gradient of {k}": np.array(g) for k, g in grads.items()})
    return results


def _largest_difference(before: dict, after: dict, keys) -> tuple[float, str]:
    """The largest difference between two runs' tensors of `keys`, each relative to its own
    largest magnitude (floored at 1e-12 of the largest over all of them: a gradient of
    nearly nothing is rounding noise), and which tensor it was."""
    scale = max((float(np.max(np.abs(before[k]), initial=0.0)) for k in keys), default=0.0)
    worst, where = 0.0, ""
    for k in keys:
        a, b = before[k], after.get(k)
        if b is None or a.shape != b.shape:
            return float("inf"), k
        if not np.array_equal(np.isfinite(a), np.isfinite(b)):
            return float("inf"), k
        finite = np.isfinite(a)
        size = max(float(np.max(np.abs(a[finite]), initial=0.0)), 1e-12 * scale, 1e-300)
        d = float(np.max(np.abs(a[finite] - b[finite]), initial=0.0)) / size
        if d > worst:
            worst, where = d, k
    return worst, where


def verify_passes(graph, passes=None, batch: int = 2, seed: int = 0,
                  status: Callable[[str], None] | None = None) -> Iterator[PassCheck]:
    """Each pass of `passes` (names; None: the default ones) on the checked `graph`, one at a
    time, as a PassCheck, yielded as it is done (the caller decides what a failure does;
    `check_passes` raises). status(text) hears what is being compiled or run."""
    from .gradcheck import draw_input
    from .network import Network
    from .passes import DEFAULT
    from .passes.base import PASSES
    from .pipeline import optimise

    say = status or (lambda text: None)
    chosen = list(DEFAULT if passes is None else passes)
    graphs = []           # the inference graph after each pass
    optimise(graph, chosen, training=False, dump=lambda name, g: graphs.append(_copy(g)))
    network = Network(None, graph)
    rng = np.random.default_rng(seed)
    xs = {name: draw_input(rng, (batch, *graph.node(name).shape)) for name in graph.inputs}
    targets = rng.standard_normal((batch, *graph.shape_of(graph.outputs[0])))
    state = None

    def run(upto: int, what: str, training: bool = True) -> dict:
        nonlocal state
        say(f"compiling and running {what}")
        # the program without passes keeps every tensor in a buffer of its own: the batch
        # norms' statistics are read from it after a training step
        model = network.compile(training=True, dtype="float64", loss="mse", input_grads=True,
                                seed=seed, warmup=False, passes=chosen[:upto], batch=batch,
                                plan_memory=upto > 0)
        feeds = xs if len(xs) > 1 else next(iter(xs.values()))
        try:
            if state is None:
                state = _move_off_init(model.params, rng)
                model.set_weights(state)
                _calibrate(model, state, feeds, targets)
            model.set_weights(state)
            return _results(model, feeds, targets, training)
        finally:
            model.executor.release()

    previous = run(0, "the network without passes")
    before_graph = graph
    for k, name in enumerate(chosen):
        p = PASSES[name]
        check = PassCheck(name, p.training_safe, graph_diff(before_graph, graphs[k]))
        before_graph = graphs[k]
        if check.changes:
            # an inference-only pass leaves the training graph as it was: its results stand
            current = run(k + 1, f"the network after {name}", training=p.training_safe)
            if not p.training_safe:
                current = {**previous, **current}
            outputs = [key for key in previous if key.startswith("output ")]
            check.output_difference, out_worst = _largest_difference(previous, current, outputs)
            check.worst = out_worst
            if p.training_safe:
                trained = [key for key in previous if not key.startswith("output ")]
                check.gradient_difference, grad_worst = _largest_difference(previous, current,
                                                                            trained)
                if check.gradient_difference > check.output_difference:
                    check.worst = grad_worst
            check.ran = True
            previous = current
        yield check


def failure_message(check: PassCheck) -> str:
    """The error for a pass that changed the results: its name, the tensor, the size."""
    mode = "" if check.training_safe else " (inference mode)"
    return (f"pass {check.name} changed the network's results{mode}: {check.worst} differs by "
            f"{check.difference:.3g} of its largest value (tolerance {TOLERANCE:g})")


def check_passes(graph, passes=None, batch: int = 2, seed: int = 0,
                 status: Callable[[str], None] | None = None) -> list[PassCheck]:
    """verify_passes, every pass; PassChangedResults at the first one that changes results."""
    checks = []
    for check in verify_passes(graph, passes, batch, seed, status):
        checks.append(check)
        if not check.passed:
            raise PassChangedResults(failure_message(check))
    return checks


def _copy(graph):
    from .passes.manager import copy_graph
    return copy_graph(graph)
