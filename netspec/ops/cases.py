"""An op's test cases, declared on the op (`Op.cases`, `Op.error_cases`) and run by one
parametrised suite (tests/test_op_cases.py) on every target, in the spirit of PyTorch's
OpInfo and JAX's LAX_GRAD_OPS.

A case is a one-op network written as a spec: `x0 -> op(args) -> out`, or `op(x0, x1, ...)`
for an op of several inputs, on inputs of the given shapes. The suite checks the lowered
program against the op's float64 reference (`Op.reference`), its gradients against central
differences, and both against PyTorch (`Op.torch`); an error case must be refused with a
SpecError at its position in the spec, saying the given words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Run:
    """What an op's reference and PyTorch rules (`Op.reference`, `Op.torch`) may read of the
    run besides the node's inputs and parameters."""

    training: bool = False          # a training step: batch statistics, dropout active
    trainable: bool = True          # the node's flag: a frozen batch norm keeps its running statistics
    shape: tuple[int, ...] = ()     # the node's output shape, without the batch
    mask: Any = None                # a random op in training: the mask to apply (else it draws one)
    # set while the oracle calibrates (torch_ref.TorchGraph.calibrate): a batch norm takes
    # its running statistics from the batch it sees, perturbed with this generator
    calibrate: Any = None


@dataclass(frozen=True)
class Case:
    """A sample call of an op. `body` replaces the one-op chain where the op is not called
    by name (a graph input, or the fused op, which the fuse pass makes of a chain); its
    inputs are still x0, x1, ... and its output `out`."""

    args: str = ""                          # the call's arguments, as written in a spec
    inputs: tuple[str, ...] = ("2@5x5",)    # the inputs' spec shapes (C@HxW, or F)
    batch: int = 2
    loss: str = "mse"                       # the training loss the gradient checks go through
    body: str = ""
    # lowered for a data-parallel run with synchronised batch statistics (Network.compile's
    # sync_batchnorm): alone, it must compute what it computes without
    sync_batchnorm: bool = False

    def spec(self, op: str) -> str:
        """The case as a spec: a network `case` with inputs x0, x1, ... and one output."""
        names = [f"x{i}" for i in range(len(self.inputs))]
        if self.body:
            body = self.body
        elif len(names) == 1:
            body = f"x0 -> {op}({self.args}) -> out" if self.args else f"x0 -> {op} -> out"
        else:
            body = f"{op}({', '.join(names + [self.args] * bool(self.args))}) -> out"
        decls = "".join(f"    input {n}: {s}\n" for n, s in zip(names, self.inputs))
        return f"network case() {{\n{decls}    {body}\n}}\n"

    @property
    def id(self) -> str:
        what = self.body or self.args or "()"
        extra = ([f"batch{self.batch}"] * (self.batch != Case.batch) + [self.loss] * (self.loss != Case.loss)
                 + ["sync_batchnorm"] * self.sync_batchnorm)
        return "-".join([what, ",".join(self.inputs), *extra]).replace(" ", "")


@dataclass(frozen=True)
class ErrorCase:
    """A call the op must refuse: the spec's error names the call (or `at`, text of the spec
    the error must point into) and says every one of `words`."""

    args: str = ""
    inputs: tuple[str, ...] = ("2@5x5",)
    words: tuple[str, ...] = ()
    body: str = ""
    at: str = ""                            # default: the op's call, `op(`

    def spec(self, op: str) -> str:
        return Case(self.args, self.inputs, body=self.body).spec(op)

    @property
    def id(self) -> str:
        return Case(self.args, self.inputs, body=self.body).id


# what every windowed op refuses: a vector, and a window larger than its input
def not_a_map(args: str = "") -> ErrorCase:
    return ErrorCase(args, ("8",), ("expects a feature map C@HxW", "got 8 from x0"))


def too_large(args: str, inputs: str = "3@4x4") -> ErrorCase:
    return ErrorCase(args, (inputs,), ("is larger than its input", f"{inputs} from x0"))
