"""The old entry point: the graph passes, then lowering, in one call.

Lowering itself runs no pass (build.py `lower_optimised` takes optimised graphs); this
module keeps `lower_program(graph, ..., passes)` for the Python API (`Network.program`),
the CLI and the tools until the one pipeline module assembles the stages.
"""

from __future__ import annotations

from ..graph import Graph
from ..init import initialisers
from ..passes import optimize
from .build import lower_optimised
from .program import Program


def lower_program(graph: Graph, dtype: str = "float32", training: bool = True,
                  loss: str | None = None, input_grads: bool = False, passes=None) -> Program:
    """The Program for a checked graph: an `infer` phase and, if training, a `train` phase.

    passes: the graph passes to run first (netspec.passes names; None: the default ones,
    [] for none): all of them on the inference graph, the training-safe ones on the
    training graph. What they did is in `program.pass_records`."""
    records = {}
    infer, records["infer"] = optimize(graph, training=False, passes=passes)
    train = None
    if training:
        train, records["train"] = optimize(graph, training=True, passes=passes)
    prog = lower_optimised(infer, train, inits=initialisers(graph), dtype=dtype, loss=loss,
                           input_grads=input_grads)
    prog.pass_records.update(records)
    return prog
