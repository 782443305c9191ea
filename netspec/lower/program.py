"""The Program: what the compiler hands a runtime target.

A Program is plain data: a table of tensors and ordered lists of instructions
naming kernels of the ISA (`netspec.runtime.isa`). It says nothing about the
spec language; a runtime executes it knowing only the ISA.

Tensors are written once per run (SSA), except `state` tensors (batch-norm
running statistics) that kernels update in place. An alias is a tensor that
shares another's buffer, reshaped (identity, inference dropout, flatten of a
vector).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class TensorSpec:
    name: str
    shape: tuple[int, ...]          # physical shape, without the batch axis if batched
    dtype: str                      # float32, float64, int32
    kind: str                       # input, label, param, state, const, act, grad, loss
    batched: bool = True
    # parameters only:
    user_shape: tuple[int, ...] | None = None   # the user-facing (PyTorch) shape
    perm: tuple[int, ...] | None = None         # physical = user.transpose(perm)
    init: str | None = None                      # initialiser name (params, state)
    trainable: bool = False
    value: float | None = None                   # const fill value

    def full_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, *self.shape) if self.batched else self.shape

    def size(self, batch: int = 1) -> int:
        return math.prod(self.full_shape(batch))

    def describe(self) -> str:
        dims = ("N",) * self.batched + tuple(str(d) for d in self.shape)
        return f"{self.dtype}[{', '.join(dims)}]"


@dataclass
class Instr:
    kernel: str
    inputs: list[str | None]
    outputs: list[str]
    attrs: dict
    node: str                        # the graph node this serves (for reports)

    def text(self) -> str:
        ins = ", ".join(i or "-" for i in self.inputs)
        attrs = "".join(f" {k}={_fmt(v)}" for k, v in self.attrs.items())
        return f"{', '.join(self.outputs)} = {self.kernel}({ins}){attrs}"


def _fmt(v) -> str:
    if isinstance(v, tuple):
        return "(" + ",".join(_fmt(x) for x in v) + ")"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


@dataclass
class Phase:
    """One executable sequence: inference, or a training step (forward, loss, backward)."""
    name: str
    instrs: list[Instr]
    outputs: dict[str, str]          # what it returns: role -> tensor
    aliases: dict[str, str] = field(default_factory=dict)   # tensor -> tensor whose buffer it shares


@dataclass
class Program:
    name: str
    dtype: str
    tensors: dict[str, TensorSpec] = field(default_factory=dict)
    phases: dict[str, Phase] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)     # graph input -> tensor
    outputs: dict[str, str] = field(default_factory=dict)    # graph output -> tensor
    params: dict[str, str] = field(default_factory=dict)     # param name -> tensor (params and state)
    grads: dict[str, str] = field(default_factory=dict)      # trainable param -> gradient tensor
    input_grads: dict[str, str] = field(default_factory=dict)
    loss: str | None = None
    loss_name: str | None = None
    target: str | None = None        # the labels / targets tensor
    # what the graph passes did, per phase (netspec.passes.base.PassRecord); not read by the runtime
    pass_records: dict[str, list] = field(default_factory=dict)

    def kernels(self) -> set[str]:
        return {i.kernel for p in self.phases.values() for i in p.instrs}

    def text(self) -> str:
        """A readable listing: tensors, then each phase's instructions."""
        lines = [f"program {self.name} ({self.dtype}): {len(self.tensors)} tensors, "
                 f"{sum(len(p.instrs) for p in self.phases.values())} instructions, "
                 f"{len(self.kernels())} distinct kernels", ""]
        width = max((len(n) for n in self.tensors), default=0)
        for kind in ("input", "label", "param", "state", "const"):
            group = [t for t in self.tensors.values() if t.kind == kind]
            if not group:
                continue
            lines.append(f"# {kind}s")
            for t in group:
                extra = f"  (stored as user{list(t.perm)})" if t.perm else ""
                init = f"  init={t.init}" if t.init else ""
                frozen = "  frozen" if kind == "param" and not t.trainable else ""
                lines.append(f"  {t.name:<{width}}  {t.describe()}{init}{frozen}{extra}")
            lines.append("")
        for phase in self.phases.values():
            grads = sum(k.startswith("grad:") for k in phase.outputs)
            shown = [f"{k}={v}" for k, v in phase.outputs.items() if not k.startswith("grad:")]
            returns = ", ".join(shown + ([f"{grads} parameter gradients"] if grads else []))
            lines.append(f"# phase {phase.name}: {len(phase.instrs)} instructions; returns {returns}")
            for name, src in phase.aliases.items():
                lines.append(f"  {name} = view of {src}")
            for ins in phase.instrs:
                note = f"    # {ins.node}" if ins.node not in ins.outputs else ""
                lines.append(f"  {ins.text()}{note}")
            lines.append("")
        return "\n".join(lines)
