"""The pipeline, assembled once: load -> elaborate -> verify -> passes -> lower -> autodiff -> plan.

    spec = read(path)                                    # the spec and the files it imports
    graph = check(spec, network, params, inputs)         # elaborate, verify: the checked graph
    optimised = optimise(graph, passes)                  # the graph passes, with their records
    program = lower(optimised)                           # lowering, then autodiff (train phase)
    plans = plan(program, batch, target)                 # the memory planner, per phase

A caller stops after the stage it needs: `netspec check`, `summary` and `render` after the
checked graph, `--dump graph` after the passes, `Network.program` after lowering, `compile`
and a Model's memory check after planning. The Python API (netspec.load/loads, Network),
every command of cli.py and the tools go through these functions; no other module strings
the stages together.

Each stage is a module of its own: the language (lang/: loader, elaborate), the graph's
verification (graph/shapes.py), the passes (passes/), lowering with autodiff (lower/:
build.py calls autodiff.py for the training phase) and the runtime's memory planner
(runtime/memory.py), which plans for a target of runtime/targets.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from .graph.graph import Graph
from .graph.shapes import verify
from .lang.elaborate import elaborate
from .lang.loader import Spec, load_text
from .lang.loader import load as load_file

if TYPE_CHECKING:
    from .lower.program import Program
    from .passes.base import PassRecord
    from .runtime.memory import MemoryPlan

# The later stages are imported where they run: a command that stops at the checked graph
# (check, summary, render) does not pay for the passes, the lowering or Numba's start-up.

# the phases whose memory the reports show (a program's `prepare` phase, when it has one, is
# planned by the executor but holds no activations worth a line)
REPORTED_PHASES = ("infer", "train")


# ------------------------------------------------------------------ read, elaborate, verify

def read(path: str | os.PathLike) -> Spec:
    """A spec file, parsed, with the files it imports."""
    return load_file(path)


def read_text(text: str, file: str = "<spec>") -> Spec:
    """Spec text, parsed (shown as `file` in messages), with the files it imports."""
    return load_text(text, file)


def load(path: str | os.PathLike, network: str | None = None, params: dict | None = None,
         inputs: dict | None = None) -> tuple[Spec, Graph]:
    """A spec file with its imports, and the checked graph of one of its networks.

    params: network parameters by name (values as `lang.elaborate.parse_value` reads them);
    inputs: input name (None: the only input) -> shape tuple."""
    spec = read(path)
    return spec, check(spec, network, params, inputs)


def loads(text: str, file: str = "<spec>", network: str | None = None, params: dict | None = None,
          inputs: dict | None = None) -> tuple[Spec, Graph]:
    """Like load, from spec text shown as `file` in messages."""
    spec = read_text(text, file)
    return spec, check(spec, network, params, inputs)


def check(spec: Spec, network: str | None = None, params: dict | None = None,
          inputs: dict | None = None) -> Graph:
    """The checked graph of network `network` of `spec`: elaborated, then verified."""
    graph = elaborate(spec, network, params, inputs)
    verify(graph)
    return graph


# ------------------------------------------------------------------ passes

@dataclass
class Optimised:
    """What the graph passes leave: the inference graph (every selected pass), the training
    graph (the training-safe ones; None without training), what each pass did, and the
    checked graph they came from (its parameters' initialisers are decided on it)."""

    checked: Graph
    infer: Graph
    train: Graph | None
    records: dict[str, list[PassRecord]] = field(default_factory=dict)   # phase -> records


def optimise(graph: Graph, passes=None, training: bool = True,
             dump: Callable[[str, Graph], None] | None = None) -> Optimised:
    """Run the graph passes on copies of a checked graph.

    passes: pass names (netspec.passes; None: the default ones, [] for none).
    training: also make the training graph. dump(pass name, graph) sees the inference graph
    after each pass."""
    from .passes.manager import optimize
    records = {}
    infer, records["infer"] = optimize(graph, training=False, passes=passes, dump=dump)
    train = None
    if training:
        train, records["train"] = optimize(graph, training=True, passes=passes)
    return Optimised(graph, infer, train, records)


def export_onnx(graph: Graph, params: dict, spec_text: str = "", passes=None,
                opset: int | None = None, input_norm: dict | None = None):
    """What `netspec export` and `Model.export` write: the checked graph after the inference
    passes (`passes` as optimise's) as a checked onnx.ModelProto with `params` (PyTorch
    layouts), and metadata saying what it is (network, spec text, passes run, the input it
    takes; interop/onnx_export.py)."""
    import json
    from .interop import DEFAULT_OPSET
    from .interop.onnx_export import export
    optimised = optimise(graph, passes, training=False)
    metadata = {"netspec.network": graph.name, "netspec.spec": spec_text,
                "netspec.passes": ",".join(r.name for r in optimised.records["infer"] if not r.skipped)}
    if input_norm is not None:
        metadata["netspec.input"] = ("floats scaled as netspec predict reads them ([0, 1]), "
                                     "standardised inside the model as training did: "
                                     + json.dumps({k: input_norm[k] for k in ("mean", "std")}))
    return export(optimised.infer, params, opset=opset or DEFAULT_OPSET,
                  doc=f"{graph.name}, exported by netspec", metadata=metadata, input_norm=input_norm)


# ------------------------------------------------------------------ lower, autodiff

def lower(optimised: Optimised, dtype: str = "float32", loss: str | None = None,
          input_grads: bool = False, sync_batchnorm: bool = False) -> Program:
    """The Program of the optimised graphs: an `infer` phase and, with a training graph, a
    `train` phase (forward, the loss, and the backward pass from the ops' vjps). What the
    passes did is in `program.pass_records`. sync_batchnorm: batch norms as a data-parallel run
    with synchronised batch statistics needs them (lower_optimised)."""
    from .lower.build import lower_optimised
    from .lower.init import initialisers
    program = lower_optimised(optimised.infer, optimised.train, inits=initialisers(optimised.checked),
                              dtype=dtype, loss=loss, input_grads=input_grads,
                              sync_batchnorm=sync_batchnorm)
    program.pass_records.update(optimised.records)
    return program


def program(graph: Graph, training: bool = True, dtype: str = "float32", loss: str | None = None,
            input_grads: bool = False, passes=None, sync_batchnorm: bool = False) -> Program:
    """The passes, then lowering: the Program of a checked graph."""
    return lower(optimise(graph, passes, training), dtype, loss, input_grads, sync_batchnorm)


# ------------------------------------------------------------------ plan

def plan(program: Program, batch: int, target: str = "cpu", phases=None,
         inplace: bool = True) -> dict[str, MemoryPlan]:
    """The memory planner's layout of each phase (default: every phase of the program; else
    those of `phases` it has) at `batch` on `target`, a name in runtime/targets.py.
    inplace=False plans without writing any output over an input (to compare).
    A phase too large to plan raises runtime.memory.PlanTooLarge."""
    from .runtime.memory import plan_memory
    from .runtime.targets import get_target
    chosen = get_target(target)
    names = [p for p in program.phases if phases is None or p in phases]
    if phases is not None:      # in the order asked for
        names.sort(key=list(phases).index)
    return {phase: plan_memory(program, phase, batch, chosen, inplace=inplace) for phase in names}
