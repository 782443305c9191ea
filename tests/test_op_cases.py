"""Every case of every op, on every registered target: one parametrised suite over the case
tables the ops declare (`Op.cases`, `Op.error_cases`; netspec/ops/cases.py), in the spirit of
PyTorch's OpInfo tests and JAX's LAX_GRAD_OPS.

A case is a one-op network (an internal op's, the chain the graph passes turn into it). For
each case and target:
- forward, float32 and float64, inference and training mode, against the float64 references
  of the graph's ops (`Op.reference`, netspec/ops/reference/): relative error under 1e-5
  for elementwise ops, 1e-4 for reductions and convolutions, 1e-10 in float64; every output
  poisoned (NaN) before its kernel runs, and checked written;
- the gradient of the training loss (MSE unless the case names another) for the input and
  every trainable parameter, float64, against central differences (eps 1e-6, rtol 1e-3,
  atol 1e-5); float32 gradients within 1e-4 of float64 ones;
- parity with PyTorch (netspec.testing.torch_ref, each op's `Op.torch` rule): outputs in both
  modes, the loss, every gradient and the running statistics after the step (a random op,
  dropout or drop_path, applying the mask the step drew, in the reference and in PyTorch);
- every kernel call with an in-place rule (the target's capabilities), replayed with the
  output over its input, gives the bits of separate outputs, also at a batch large enough
  for the parallel paths;
- and each error case is refused with a SpecError pointing into the op's call.

Inputs are drawn fresh from a generator seeded by the case (zlib.crc32 of its id; printed, so
a failure shows it): distinct values (no max-pool ties), never zero, kept away from the op's
kinks (`Op.kinks`), spanning them.
"""

from __future__ import annotations

import functools
import math
import zlib

import numpy as np
import pytest
import torch

import netspec
from netspec.errors import SpecError
from netspec.gradcheck import central_difference, draw_input
from netspec.ops import INTERNAL_OPS, OPS, Purity
from netspec.ops.cases import Run
from netspec.passes.manager import optimize
from netspec.runtime import isa
from netspec.runtime.targets import all_targets, get_target
from netspec.testing.torch_ref import TorchGraph, loss as torch_loss

ALL_OPS = {**OPS, **INTERNAL_OPS}
SAMPLES = [pytest.param(op, case, id=f"{name}:{case.id}")
           for name, op in ALL_OPS.items() for case in op.cases]
ERRORS = [pytest.param(op, case, id=f"{name}:{case.id}")
          for name, op in ALL_OPS.items() for case in op.error_cases]
TARGET_NAMES = sorted(all_targets())
# the CUDA simulator interprets every thread in Python: its cases are most of this module's time
TARGET_PARAMS = [pytest.param(name, marks=pytest.mark.slow) if name == "cuda" else name
                 for name in TARGET_NAMES]
# central differences take two training steps per element of every input and parameter: on the
# host targets. A device target's gradients are held to PyTorch's (test_matches_torch) and to
# the CPU kernels' (tests/test_cuda_kernels.py), which these differences check.
HOST_TARGETS = [name for name in TARGET_NAMES if get_target(name).memory.on_host]

ELEMENTWISE_TOL = 1e-5      # float32 against the float64 reference
REDUCTION_TOL = 1e-4
FLOAT64_TOL = 1e-10
EPS, RTOL, ATOL = 1e-6, 1e-3, 1e-5     # central differences (TESTING.md)


# ---------------------------------------------------------------- building and drawing

def seed_of(op, case) -> int:
    return zlib.crc32(f"{op.name}:{case.id}".encode())


@functools.lru_cache(maxsize=None)
def network(op, case):
    return netspec.loads(case.spec(op.name), file=f"<{op.name} case>")


@functools.lru_cache(maxsize=None)
def compiled(op, case, target: str, dtype: str):
    """The case's model: the op alone (an internal op: what the graph passes make of its
    chain), a training step with the case's loss and the inputs' gradients. A random op's
    draw (its tensor `node:mask`) is kept to the end of the step, for drawn_masks."""
    model = network(op, case).compile(target=target, dtype=dtype, loss=case.loss, input_grads=True,
                                      passes=None if op.internal else [],
                                      sync_batchnorm=case.sync_batchnorm)
    model.executor.keep_alive(name for name in model.program.tensors if name.endswith(":mask"))
    return model


def tolerance(op, dtype: str) -> float:
    if dtype == "float64":
        return FLOAT64_TOL
    return ELEMENTWISE_TOL if op.traits.elementwise else REDUCTION_TOL


def rel(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-300))


def draw_inputs(op, case, rng, batch: int | None = None) -> dict[str, np.ndarray]:
    graph = network(op, case).graph
    kinks = op.kinks if not op.internal else ()
    return {name: draw_input(rng, (batch or case.batch, *graph.node(name).shape), kinks)
            for name in graph.inputs}


def draw_params(op, case, rng) -> dict[str, np.ndarray]:
    """{node.param: value} in PyTorch's layouts: trainable ones +-U(0.5, 1.5), running
    statistics U(0.5, 1.5)."""
    params = {}
    for node in network(op, case).graph.nodes():
        for p in node.params:
            value = rng.uniform(0.5, 1.5, p.shape)
            params[f"{node.name}.{p.name}"] = value * rng.choice([-1, 1], p.shape) if p.trainable else value
    return params


def draw_targets(model, case, rng, batch: int | None = None):
    batch = batch or case.batch
    graph = model.network.graph
    shape = (batch, *graph.shape_of(graph.outputs[0]))
    # the cross-entropies' classes are axis 1: one label (or distribution) per sample, or per
    # pixel of a map (N, C, H, W)
    if case.loss == "sparse_categorical_crossentropy":
        return rng.integers(0, shape[1], (batch, *shape[2:]))
    if case.loss == "categorical_crossentropy":
        rows = rng.dirichlet(np.ones(shape[1]), (batch, *shape[2:]))
        return np.moveaxis(rows, -1, 1)
    if case.loss == "binary_crossentropy":
        return rng.uniform(0, 1, shape)
    return rng.standard_normal(shape)


def set_params(model, params) -> None:
    for name, value in params.items():
        model.params[name][...] = value


def as_dtype(model, xs):
    return {k: v.astype(model.dtype) for k, v in xs.items()}


def physical(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1) if a.ndim == 4 else a)


def spec_layout(a: np.ndarray) -> np.ndarray:
    return np.array(a.transpose(0, 3, 1, 2) if a.ndim == 4 else a)


def infer_checked(model, xs) -> np.ndarray:
    """The output in inference mode, every kernel's outputs poisoned first and checked."""
    feeds = {model.program.inputs[k]: physical(v) for k, v in as_dtype(model, xs).items()}
    batch = len(next(iter(xs.values())))
    (out,) = model.program.outputs.values()
    return spec_layout(model.to_host(model.executor.run("infer", feeds, batch, check=True)[out]))


def train_step(model, xs, targets, check=False):
    """(loss, grads, the output of the training forward pass), dropout masks drawn the same
    every time."""
    model.executor.ctx.rng = np.random.default_rng(123)
    loss, grads = model.loss_and_grads(as_dtype(model, xs), targets, check=check)
    grads = {k: np.array(g) for k, g in grads.items()}
    (out,) = model.program.outputs.values()
    batch = len(next(iter(xs.values())))
    return loss, grads, spec_layout(model.to_host(model.executor.buffers("train", batch)[out]))


def drawn_masks(model, batch: int) -> dict[str, np.ndarray]:
    """{node: the mask its random op drew in the last training step}, in the spec's layout:
    what the references and the PyTorch rules apply as Run.mask."""
    buffers = model.executor.buffers("train", batch)
    return {node.name: spec_layout(model.to_host(buffers[f"{node.name}:mask"]))
            for node in model.network.graph.nodes() if f"{node.name}:mask" in buffers}


def reference(op, case, xs, params, training: bool, masks=None) -> np.ndarray:
    """The case's output from the float64 references of the graph's ops, node by node (a
    random op applying its mask in `masks`; a node of several outputs gives one value
    per part)."""
    graph = network(op, case).graph
    values = dict(xs)
    for node in graph.nodes():
        if node.name in values:
            continue
        p = {q.name: params[f"{node.name}.{q.name}"] for q in node.params}
        run = Run(training, node.trainable, tuple(node.shape), (masks or {}).get(node.name))
        y = node.opdef.reference(node.attrs, [values[i] for i in node.inputs], p, run)
        values.update(zip(graph.values(node), y if node.parts else [y]))
    return values[graph.outputs[0]]


def prepared(op, case, target, dtype):
    """A model with fresh parameters, inputs and targets from the case's seed."""
    seed = seed_of(op, case)
    print(f"seed {seed} for {op.name} case {case.id}")
    rng = np.random.default_rng(seed)
    model = compiled(op, case, target, dtype)
    params = draw_params(op, case, rng)
    set_params(model, params)
    xs = draw_inputs(op, case, rng)
    return model, params, xs, draw_targets(model, case, rng), seed


# ---------------------------------------------------------------- the suite

@pytest.mark.parametrize("target", TARGET_PARAMS)
@pytest.mark.parametrize("op, case", SAMPLES)
def test_forward_matches_the_reference(op, case, target):
    for dtype in ("float64", "float32"):
        model, params, xs, targets, seed = prepared(op, case, target, dtype)
        tol = tolerance(op, dtype)
        err = rel(infer_checked(model, xs), reference(op, case, xs, params, training=False))
        assert err < tol, f"{dtype} inference: relative error {err:.3g} (seed {seed})"
        _, _, y = train_step(model, xs, targets, check=True)
        masks = drawn_masks(model, case.batch)       # a random op's: the run's own draw
        err = rel(y, reference(op, case, xs, params, training=True, masks=masks))
        assert err < tol, f"{dtype} training: relative error {err:.3g} (seed {seed})"


@pytest.mark.parametrize("target", HOST_TARGETS)
@pytest.mark.parametrize("op, case", SAMPLES)
def test_gradients_match_central_differences(op, case, target):
    model, params, xs, targets, seed = prepared(op, case, target, "float64")
    loss, grads, _ = train_step(model, xs, targets)
    wrt = {**xs, **{k: model.params[k] for k in model.trainable}}
    assert set(grads) == set(wrt), f"seed {seed}"

    def loss_with(name, index, delta):
        if name in xs:
            moved = {**xs, name: xs[name].copy()}
            moved[name][index] += delta
            return train_step(model, moved, targets)[0]
        p = model.params[name]        # a view of the parameter's buffer, maybe transposed
        old = p[index]
        p[index] = old + delta
        try:
            return train_step(model, xs, targets)[0]
        finally:
            p[index] = old

    for name, array in wrt.items():
        numeric = np.zeros(array.shape)
        for index in np.ndindex(array.shape):
            numeric[index] = central_difference(lambda delta: loss_with(name, index, delta), EPS)
        np.testing.assert_allclose(grads[name], numeric, rtol=RTOL, atol=ATOL,
                                   err_msg=f"gradient of {name} (seed {seed})")
    if op.traits.purity is Purity.RANDOM:
        return                  # each dtype draws its masks in its own precision: other masks
    # float32: the same outputs and step within float32's reach of float64's
    model32 = compiled(op, case, target, "float32")
    set_params(model32, params)
    set_params(model, params)      # the steps above moved the running statistics
    err = rel(infer_checked(model32, xs), infer_checked(model, xs))
    assert err < 1e-5, f"float32 output: relative error {err:.3g} from float64's (seed {seed})"
    loss32, grads32, _ = train_step(model32, xs, targets.astype(np.float32)
                                    if targets.dtype.kind == "f" else targets, check=True)
    assert abs(loss32 - loss) <= 1e-5 * max(1.0, abs(loss)), f"float32 loss (seed {seed})"
    for name in grads:
        err = rel(grads32[name], grads[name]) if np.any(grads[name]) else np.abs(grads32[name]).max()
        assert err < 1e-4, f"float32 gradient of {name}: relative error {err:.3g} (seed {seed})"


@pytest.mark.parametrize("target", TARGET_PARAMS)
@pytest.mark.parametrize("op, case", SAMPLES)
def test_matches_torch(op, case, target):
    model, params, xs, targets, seed = prepared(op, case, target, "float64")
    graph = network(op, case).graph
    oracle = TorchGraph(graph, dtype=torch.float64, params=params)
    (out,) = graph.outputs
    with torch.no_grad():
        want = oracle.eval()({k: torch.as_tensor(v) for k, v in xs.items()})[out].numpy()
    assert rel(infer_checked(model, xs), want) < 1e-10, f"inference (seed {seed})"
    loss, grads, y = train_step(model, xs, targets)
    tx = {k: torch.tensor(v, requires_grad=True) for k, v in xs.items()}
    outs = oracle.train()(tx, dropout_masks=drawn_masks(model, case.batch))   # random ops: ours
    want_loss = torch_loss(graph, outs, torch.as_tensor(targets), case.loss)
    want_loss.backward()
    assert rel(y, outs[out].detach().numpy()) < 1e-10, f"training output (seed {seed})"
    assert abs(loss - want_loss.item()) <= 1e-10 * max(1.0, abs(loss)), f"loss (seed {seed})"
    want_grads = {**oracle.grads(), **{k: t.grad.numpy() for k, t in tx.items()}}
    assert set(grads) == set(want_grads), f"seed {seed}"
    for name, g in want_grads.items():
        assert rel(grads[name], g) < 1e-8, f"gradient of {name} (seed {seed})"
    for name, value in oracle.state().items():     # running statistics after the step
        assert rel(model.params[name], value) < 1e-10, f"{name} after the step (seed {seed})"


@pytest.mark.parametrize("op, case", ERRORS)
def test_errors_are_refused_at_the_call(op, case):
    text = case.spec(op.name)
    with pytest.raises(SpecError) as info:
        netspec.loads(text, file="<case>")
    e = info.value
    for word in case.words:
        assert word in e.message, (word, e.message)
    at = case.at or op.name
    line = next(k for k, source in enumerate(text.splitlines(), 1) if at in source)
    source = text.splitlines()[line - 1]
    assert e.pos is not None and (e.pos.file, e.pos.line) == ("<case>", line), (e.pos, text)
    assert source.index(at) < e.pos.col <= len(source), (e.pos, source)


# ---------------------------------------------------------------- in place

# elements from which the CPU kernels take their parallel paths (runtime/cpu/elementwise.py
# PARALLEL_MIN): a second run of each case at a batch that makes its inputs this large
PARALLEL_ELEMENTS = 1 << 16


def recorded_calls(model, run) -> list:
    """The kernel calls `run()` makes on the model's executor, each with copies of its inputs
    as the kernel saw them: (instruction, inputs, outputs' shapes and dtypes, {output: the
    input it is, for state updated in place}, attributes)."""
    calls, executor = [], model.executor
    kernels, memory = executor.kernels, executor.memory

    def recording(name, kernel):
        def record(ins, outs, attrs, ctx):
            state = {k: j for k, o in enumerate(outs) for j, x in enumerate(ins) if x is o}
            calls.append((name, [None if x is None else np.array(memory.download(x)) for x in ins],
                          [(o.shape, o.dtype) for o in outs], state, dict(attrs)))
            kernel(ins, outs, attrs, ctx)
        return record

    executor.kernels = {name: recording(name, kernel) for name, kernel in kernels.items()}
    executor.release()
    try:
        run()
    finally:
        executor.kernels = kernels
        executor.release()
    return calls


def replay(model, call, shared) -> list[bytes]:
    """The call again on copies of its inputs, with output shared[0] written over input
    shared[1] (None: separate outputs); the outputs' bytes. Random kernels draw the same."""
    name, ins, outs, state, attrs = call
    memory = model.executor.memory
    copies = [None if x is None else memory.full(x.shape, 0, x.dtype) for x in ins]
    for copy, x in zip(copies, ins):
        if x is not None:
            memory.upload(copy, x)
    over = {**state, **dict([shared] if shared else [])}
    arrays = [copies[over[k]].reshape(shape) if k in over else memory.full(shape, np.nan, dtype)
              for k, (shape, dtype) in enumerate(outs)]
    model.executor.ctx.rng = np.random.default_rng(1)
    model.executor.kernels[name](copies, arrays, attrs, model.executor.ctx)
    return [memory.download(a).tobytes() for a in arrays]


@pytest.mark.parametrize("target", TARGET_PARAMS)
@pytest.mark.parametrize("op, case", SAMPLES)
def test_kernels_in_place_give_the_bits_of_separate_outputs(op, case, target):
    """Every call the case's programs make (inference and a training step, float32) of a kernel
    with in-place rules (the target's capabilities, which the memory planner reads), replayed
    with each output it may write over an input sharing that input's buffer, gives the bits of
    the call with separate outputs: at the case's batch, and at a batch large enough for the
    kernels' parallel paths."""
    inplace = get_target(target).capabilities.inplace
    model = compiled(op, case, target, "float32")
    rng = np.random.default_rng(seed_of(op, case))
    set_params(model, draw_params(op, case, rng))
    smallest = min(math.prod(network(op, case).graph.node(n).shape) for n in network(op, case).graph.inputs)
    parallel = -(-PARALLEL_ELEMENTS // smallest)
    for batch in (case.batch, parallel) if model.executor.memory.on_host else (case.batch,):
        xs = draw_inputs(op, case, rng, batch)
        targets = draw_targets(model, case, rng, batch)
        calls = recorded_calls(model, lambda: (infer_checked(model, xs), train_step(model, xs, targets)))
        for call in calls:
            for out, inputs in inplace.get(call[0], ()):
                for inp in inputs:
                    x, (shape, dtype) = call[1][inp], call[2][out]
                    if x is None or x.dtype != dtype or x.size != math.prod(shape):
                        continue     # the planner shares only a buffer of the output's bytes
                    assert replay(model, call, None) == replay(model, call, (out, inp)), \
                        f"{call[0]}: output {out} over input {inp} differs at batch {batch}"


@pytest.mark.parametrize("target", TARGET_NAMES)
def test_every_in_place_rule_is_replayed_by_some_case(target):
    """The suite above replays every in-place rule of the target: for each (instruction,
    output, input) a rule allows, some case's program calls the instruction with that output
    and input of one size and dtype (so the planner could share them)."""
    rules = {(kernel, out, inp) for kernel, pairs in get_target(target).capabilities.inplace.items()
             for out, inputs in pairs for inp in inputs}
    used = set()
    for param in SAMPLES:
        op, case = param.values
        program = compiled(op, case, target, "float32").program
        tensors = program.tensors
        for phase in program.phases.values():
            for instr in phase.instrs:
                for kernel, out, inp in rules:
                    if kernel != instr.kernel or inp >= len(instr.inputs) or instr.inputs[inp] is None:
                        continue
                    x, y = tensors[instr.inputs[inp]], tensors[instr.outputs[out]]
                    if x.dtype == y.dtype and math.prod(x.shape) == math.prod(y.shape) \
                            and x.batched == y.batched:
                        used.add((kernel, out, inp))
    assert sorted(rules - used) == [], "in-place rules no case's program can use"


# ---------------------------------------------------------------- coverage

@pytest.mark.parametrize("name", sorted(ALL_OPS))
def test_every_op_has_cases(name):
    assert ALL_OPS[name].cases, f"op {name} has no cases: add them to its module (Op.cases)"


@pytest.mark.parametrize("op, case", [p for p in SAMPLES if p.values[0].internal])
def test_an_internal_ops_cases_make_it(op, case):
    """The passes make the op of each of its cases (in inference; a batch norm in training
    stays itself)."""
    graph, _ = optimize(network(op, case).graph, training=False)
    assert any(node.op == op.name for node in graph.nodes()), case.body


def test_every_instruction_is_exercised_by_some_case():
    """Each instruction of the ISA appears in some case's program (inference, training step
    or prepare phase): the suite runs it, forward and backward, on every target."""
    used = set()
    for param in SAMPLES:
        op, case = param.values
        program = compiled(op, case, TARGET_NAMES[0], "float64").program
        used |= {instr.kernel for phase in program.phases.values() for instr in phase.instrs}
    assert sorted(set(isa.KERNELS) - used) == [], "instructions no op case exercises"
