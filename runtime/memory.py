"""The memory planner: one arena per (phase, batch), tensors placed in it by liveness.

Where it lives: here, in the runtime, not in `netspec.lower`. It reads only what
the runtime already reads (the Program's tensor table, a phase's instruction
list, outputs and aliases) and the capabilities of the target it plans for
(`target.Capabilities`: in-place rules, alignment), and the Executor calls it
when it allocates a phase's buffers; the compiler needs nothing from it but
reports and checks (the pipeline's `plan` stage, netspec/pipeline.py, calls
`plan_memory` for the summary, the build folder and a Model's memory check).
Putting it in `netspec.lower` would make the runtime import the compiler, or
make the Program carry a plan computed for one batch size. It knows no target
by name: a plan is for the target it is given.

What is planned: every tensor a phase reads or writes that is not a parameter,
state or constant (those persist in `Executor.state`): inputs and labels,
activations, gradients (of activations and of parameters), the loss.

Lifetimes come from the phase's instruction order (indices 0 .. n-1, inclusive
at both ends): a tensor is live from the instruction that writes it (from 0 for
tensors fed from outside: inputs and labels) to the last instruction that reads
it; phase outputs (the loss, gradients, network outputs) and tensors the caller
asked to keep live to n-1, so they are still there when the phase returns. A
tensor written and never read lives at its writer only. An alias (a reshaped
view, `Phase.aliases`) is no storage of its own: its reads extend its target's
lifetime.

Blocks: a block is one storage: a tensor, its aliases, and the tensors written
in place over it. In place: an instruction whose kernel has an in-place rule on
the target (`capabilities.inplace`: output index -> the inputs it may be written
over) may write that output into an input's block when that block dies at this
instruction (its last reader is this one), holds no phase output, and has the
output's dtype and byte size. A target declares a rule next to the kernel that
keeps it (it reads each input element before writing the output element of the
same index, and no other element of that input afterwards).

Placement: greedy with best fit (TensorFlow Lite's arena planner, "greedy by
size" in Pisarchyk & Lee, 2020): blocks are taken in decreasing size, and each
goes into the smallest gap, among the blocks already placed whose lifetimes
intersect its own, that holds it, else above them all. A few other orders
(ORDERS) are tried too and the smallest arena kept. Offsets are multiples of the
target's alignment (`capabilities.align`); the arena's size is the planned peak.

The lower bound (`lower_bound_bytes`): the largest total size of blocks live
at one instruction, max over i of the sum of the sizes of the blocks whose
lifetime contains i: the inputs the instruction reads, the outputs it writes,
and everything still needed later. Any placement of these blocks needs that
much at instruction i (an output written in place over its input counts once,
since the two are one block). It is a bound for this Program and these
in-place decisions, not for every possible schedule or for recomputation.

For training (a phase with a loss instruction, index L) the plan also reports
what the issue's criterion names:
- `saved_bytes`, the activations the backward pass needs: forward tensors
  (written at or before L, or fed) that some instruction after L reads;
- `transient_bytes`, the largest transient: max over i of the bytes live at i
  that are not saved activations (gradients, temporaries, scratch outputs,
  parameter gradients, the network outputs). Every instruction's live set is
  at most saved + transient, so that sum also bounds the planned peak from
  above when the placement is perfect.

Not in the arena: kernels' own scratch (im2col panels, per-thread partial sums)
allocated inside a kernel call, and parameters, state and constants.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from .target import Target

# tensors of these kinds persist across runs and phases (Executor.state): never planned
PERSISTENT_KINDS = ("param", "state", "const")

# Every sum the planner forms (live bytes, offsets, the arena) is at most its blocks' total plus
# alignment, and is kept in int64 arrays: a larger total would wrap around silently.
MAX_PLAN_BYTES = 2**62
PHASE_NAMES = {"infer": "inference", "train": "training"}


class PlanTooLarge(MemoryError):
    """A phase's tensors need more bytes than the planner can place (MAX_PLAN_BYTES): no machine
    has that memory, so this is a MemoryError raised before anything is allocated."""


def _align(n: int, align: int) -> int:
    return -(-n // align) * align


@dataclass
class PlannedTensor:
    name: str
    block: int          # the storage it belongs to (its "slot")
    offset: int         # bytes from the arena's start (its block's offset)
    nbytes: int
    first: int          # the instruction that writes it (0 if fed)
    last: int           # the last instruction that reads it (n-1 if a phase output)
    dtype: str
    shape: tuple[int, ...]
    via: str = ""       # "" (own storage), "alias of X" or "in place of X"


@dataclass
class Block:
    index: int
    root: str           # the first tensor of the block; the others share its storage
    nbytes: int
    dtype: str
    first: int
    last: int
    pinned: bool        # holds a phase output (or a kept tensor): lives to the end
    tensors: list[str] = field(default_factory=list)
    offset: int = -1
    # byte offsets of member tensors inside the block (0 for those absent: they share its
    # start); a group of gradients (contiguous_params) lays its members end to end
    parts: dict[str, int] = field(default_factory=dict)


@dataclass
class MemoryPlan:
    phase: str
    batch: int
    instructions: int
    tensors: dict[str, PlannedTensor]
    blocks: list[Block]
    inplace: dict[int, list[tuple[str, str]]]   # instruction -> [(output, the input it overwrites)]
    arena_bytes: int
    naive_bytes: int
    lower_bound_bytes: int
    peak_instruction: int                        # where the lower bound is reached
    align: int                                   # offsets are multiples of this (the target's)
    saved_bytes: int | None = None               # training: activations the backward pass reads
    transient_bytes: int | None = None           # training: the largest transient
    param_grad_bytes: int | None = None          # training: parameter gradients (unbatched)
    live_bytes: list[int] = field(default_factory=list, repr=False)   # per instruction

    def overlaps(self) -> list[tuple[str, str]]:
        """Pairs of blocks live at one instruction whose bytes intersect (a correct plan has
        none). Blocks, not tensors: a block's members share storage by design."""
        bad = []
        placed = sorted(self.blocks, key=lambda b: b.offset)
        for i, a in enumerate(placed):
            for b in placed[i + 1:]:
                if b.offset >= a.offset + a.nbytes:
                    break
                if a.first <= b.last and b.first <= a.last:
                    bad.append((a.root, b.root))
        return bad

    def to_json(self) -> dict:
        return {
            "phase": self.phase, "batch": self.batch, "instructions": self.instructions,
            "arena_bytes": self.arena_bytes, "naive_bytes": self.naive_bytes,
            "lower_bound_bytes": self.lower_bound_bytes, "peak_instruction": self.peak_instruction,
            "saved_bytes": self.saved_bytes, "transient_bytes": self.transient_bytes,
            "param_grad_bytes": self.param_grad_bytes, "align": self.align,
            "tensors": [{"name": t.name, "slot": t.block, "offset": t.offset, "bytes": t.nbytes,
                         "first": t.first, "last": t.last, "dtype": t.dtype,
                         "shape": list(t.shape), **({"via": t.via} if t.via else {})}
                        for t in self.tensors.values()],
            "inplace": [{"instruction": i, "output": o, "input": x}
                        for i, pairs in sorted(self.inplace.items()) for o, x in pairs],
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1)

    def summary(self) -> str:
        """Planned peak beside the naive sum and the lower bound, in a few lines."""
        lines = [f"memory plan: phase {self.phase}, batch {self.batch}, "
                 f"{len(self.tensors)} tensors in {len(self.blocks)} slots, "
                 f"{sum(len(v) for v in self.inplace.values())} written in place",
                 f"  naive sum    {_mib(self.naive_bytes)}",
                 f"  planned peak {_mib(self.arena_bytes)}  "
                 f"({self.arena_bytes / max(self.lower_bound_bytes, 1):.3f}x the lower bound)",
                 f"  lower bound  {_mib(self.lower_bound_bytes)}  "
                 f"(at instruction {self.peak_instruction})"]
        if self.saved_bytes is not None:
            need = self.saved_bytes + self.transient_bytes
            lines += [f"  saved for backward {_mib(self.saved_bytes)} + largest transient "
                      f"{_mib(self.transient_bytes)} = {_mib(need)} "
                      f"(planned peak {self.arena_bytes / max(need, 1):.3f}x; parameter "
                      f"gradients {_mib(self.param_grad_bytes)} of the transient)"]
        return "\n".join(lines)

    def text(self) -> str:
        """The summary, then one row per tensor: slot, offset, size, lifetime."""
        width = max((len(n) for n in self.tensors), default=6)
        rows = [self.summary(), "",
                f"  {'tensor':<{width}}  {'slot':>4}  {'offset':>12}  {'bytes':>12}  lifetime"]
        for t in sorted(self.tensors.values(), key=lambda t: (t.first, t.offset)):
            via = f"  {t.via}" if t.via else ""
            rows.append(f"  {t.name:<{width}}  {t.block:>4}  {t.offset:>12,}  {t.nbytes:>12,}  "
                        f"{t.first}..{t.last}{via}")
        return "\n".join(rows)


def _mib(n: int) -> str:
    return f"{n / 2**20:10.2f} MiB"


def _root(name: str, aliases: dict[str, str]) -> str:
    while name in aliases:
        name = aliases[name]
    return name


def phase_tensors(program, phase_name: str) -> list[str]:
    """Every tensor the executor gives a buffer for this phase, in first-use order."""
    phase = program.phases[phase_name]
    seen: dict[str, None] = {}
    for ins in phase.instrs:
        for n in (*ins.inputs, *ins.outputs):
            if n is not None:
                seen.setdefault(n)
    for n in (*program.inputs.values(), *phase.outputs.values()):
        seen.setdefault(n)
    if program.target and phase_name != "infer":
        seen.setdefault(program.target)
    return list(seen)


def plan_memory(program, phase: str, batch: int, target: Target, keep=(),
                inplace: bool = True) -> MemoryPlan:
    """Plan the arena of one phase at one batch size on `target`, as its capabilities allow
    (see the module's docstring).

    keep: tensors to keep live to the end, as phase outputs are (for inspection).
    inplace=False plans without writing any output over an input.
    """
    rules = target.capabilities.inplace if inplace else {}
    align = target.capabilities.align
    ph = program.phases[phase]
    tensors = program.tensors
    n = len(ph.instrs)
    end = max(n - 1, 0)
    aliases = ph.aliases
    persistent = {t.name for t in tensors.values() if t.kind in PERSISTENT_KINDS}
    names = [t for t in phase_tensors(program, phase) if _root(t, aliases) not in persistent]
    fed = set(program.inputs.values()) | ({program.target} if program.target and phase != "infer"
                                          else set())
    pinned_names = set(ph.outputs.values()) | set(keep)

    # -- lifetimes, per tensor
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for i, ins in enumerate(ph.instrs):
        for o in ins.outputs:
            first.setdefault(o, i)
        for x in ins.inputs:
            if x is not None:
                last[x] = i
    for t in sorted(names, key=lambda t: t in aliases):     # roots first, then aliases
        if t in aliases:
            first[t] = first[_root(t, aliases)]     # a view: no writer of its own
        elif t in fed or t not in first:
            first[t] = 0
        last[t] = end if t in pinned_names else max(last.get(t, first[t]), first[t])

    def nbytes(t: str) -> int:
        spec = tensors[t]
        return spec.size(batch) * np.dtype(spec.dtype).itemsize

    # -- blocks: each root tensor, extended over its aliases
    block_of: dict[str, Block] = {}
    blocks: list[Block] = []
    for t in names:
        if t in aliases:
            continue
        b = Block(len(blocks), t, nbytes(t), tensors[t].dtype, first[t], last[t],
                  t in pinned_names, [t])
        blocks.append(b)
        block_of[t] = b
    for t in names:
        if t in aliases:
            b = block_of[_root(t, aliases)]
            b.tensors.append(t)
            b.first, b.last = min(b.first, first[t]), max(b.last, last[t])
            b.pinned |= t in pinned_names
    via = {t: f"alias of {aliases[t]}" for t in names if t in aliases}
    total = sum(b.nbytes for b in blocks)
    if total > MAX_PLAN_BYTES:
        raise PlanTooLarge(f"the {PHASE_NAMES.get(phase, phase)} phase needs about 10^{math.floor(math.log10(total))} bytes "
                           f"of tensors at batch {batch:,}, more than any machine has (the memory "
                           f"planner's limit is 2^62 bytes, 4.6 EB)")

    # -- in place: an output joins an input's block that dies here
    done: dict[int, list[tuple[str, str]]] = {}
    for i, ins in enumerate(ph.instrs):
        given: set[int] = set()          # blocks that took an output at this instruction
        for out_pos, in_pos in rules.get(ins.kernel, ()):
            out = ins.outputs[out_pos]
            ob = block_of.get(out)
            if ob is None or ob.root != out or ob.first != i:
                continue           # not planned, already in another block, or written earlier
            # a block also read at a position that may not be overwritten cannot give its storage
            others = {block_of[_root(x, aliases)].index for p, x in enumerate(ins.inputs)
                      if x is not None and p not in in_pos and _root(x, aliases) in block_of}
            for p in in_pos:
                x = ins.inputs[p] if p < len(ins.inputs) else None
                b = None if x is None else block_of.get(_root(x, aliases))
                if (b is None or b.last != i or b.pinned or b.index in given
                        or b.index in others or b.dtype != ob.dtype or b.nbytes != ob.nbytes):
                    continue
                b.tensors += ob.tensors
                b.last, b.pinned = ob.last, ob.pinned
                block_of[out] = b
                ob.tensors = []
                given.add(b.index)
                done.setdefault(i, []).append((out, x))
                via[out] = f"in place of {x}"
                break
    if target.capabilities.contiguous_params:
        _group_gradients(program, block_of)
    blocks = [b for b in blocks if b.tensors]
    for k, b in enumerate(blocks):
        b.index = k

    # -- the lower bound: the most bytes live at one instruction
    steps = max(n, 1)                    # a phase without instructions still holds its inputs
    live = np.zeros(steps + 1, np.int64)
    for b in blocks:
        live[b.first] += b.nbytes
        live[b.last + 1] -= b.nbytes
    live = np.cumsum(live)[:steps]
    peak_at = int(np.argmax(live))
    lower = int(live[peak_at])

    arena = _place(blocks, align)

    planned = {}
    for b in blocks:
        for t in b.tensors:
            planned[t] = PlannedTensor(t, b.index, b.offset + b.parts.get(t, 0), nbytes(t), first[t], last[t],
                                       tensors[t].dtype, tensors[t].full_shape(batch), via.get(t, ""))
    plan = MemoryPlan(phase, batch, n, planned, blocks, done, arena,
                      sum(nbytes(t) for t in names if t not in aliases), lower, peak_at,
                      align, live_bytes=[int(v) for v in live])
    if program.loss is not None and any(program.loss in ins.outputs for ins in ph.instrs):
        _training_stats(plan, program, ph, first, last, aliases, fed, nbytes, live)
    return plan


def _group_gradients(program, block_of: dict) -> None:
    """The parameters' gradients made one block, end to end in the program's parameter order
    (Capabilities.contiguous_params). A gradient in a block of its own joins; one written in
    place over another tensor stays where it is (the optimizer's run breaks there). The group
    lives from its first member's writer to the end (gradients are phase outputs)."""
    members = []
    for g in program.grads.values():
        b = block_of.get(g)
        if b is not None and b.root == g and b.tensors and (not members or b.dtype == members[0].dtype):
            members.append(b)
    if len(members) < 2:
        return
    group = members[0]
    group.parts = {t: 0 for t in group.tensors}
    for b in members[1:]:
        for t in b.tensors:
            group.parts[t] = group.nbytes
            block_of[t] = group
        group.tensors += b.tensors
        group.nbytes += b.nbytes
        group.first, group.last = min(group.first, b.first), max(group.last, b.last)
        group.pinned |= b.pinned
        b.tensors = []


def _training_stats(plan, program, ph, first, last, aliases, fed, nbytes, live) -> None:
    loss_at = next(i for i, ins in enumerate(ph.instrs) if program.loss in ins.outputs)
    read_after: set[str] = set()
    for ins in ph.instrs[loss_at + 1:]:
        read_after.update(_root(x, aliases) for x in ins.inputs if x is not None)
    saved = [t for t in plan.tensors
             if t not in aliases and t in read_after and (t in fed or first[t] <= loss_at)]
    views: dict[str, list[str]] = {}
    for a in plan.tensors:
        if a in aliases:
            views.setdefault(_root(a, aliases), []).append(a)
    saved_live = np.zeros(len(live) + 1, np.int64)
    for t in saved:
        lo, hi = first[t], max(last[m] for m in (t, *views.get(t, ())))
        saved_live[lo] += nbytes(t)
        saved_live[hi + 1] -= nbytes(t)
    saved_live = np.cumsum(saved_live)[:len(live)]
    plan.saved_bytes = sum(nbytes(t) for t in saved)
    plan.transient_bytes = int(np.max(live - saved_live))
    plan.param_grad_bytes = sum(nbytes(g) for g in program.grads.values() if g in plan.tensors)


# Orders in which blocks are placed. Greedy by size alone is within a few per cent of the
# bound on most networks but not all (an inception block's training step at batch 1: 1.14x);
# each order costs milliseconds, so the planner tries them all and keeps the smallest arena.
ORDERS = {
    "size": lambda b: (-b.nbytes, b.first, b.index),
    "size x lifetime": lambda b: (-b.nbytes * (b.last - b.first + 1), b.index),
    "lifetime": lambda b: (-(b.last - b.first), -b.nbytes, b.index),
    "first use": lambda b: (b.first, -b.nbytes, b.index),
}


def _place(blocks: list[Block], align: int) -> int:
    """Set each block's offset (a multiple of `align`) by the best of ORDERS; return the
    arena's size."""
    best = None
    for key in ORDERS.values():
        size, offsets = _best_fit(sorted(blocks, key=key), align)
        if best is None or size < best[0]:
            best = (size, offsets)
    size, offsets = best if best else (0, {})
    for b in blocks:
        b.offset = offsets[b.index]
    return size


def _best_fit(order: list[Block], align: int) -> tuple[int, dict[int, int]]:
    """Place blocks in this order, each into the smallest gap that holds it among the
    blocks placed before it whose lifetimes meet its own, else above them all."""
    firsts = np.empty(len(order), np.int64)
    lasts = np.empty(len(order), np.int64)
    offs = np.empty(len(order), np.int64)
    ends = np.empty(len(order), np.int64)
    offsets: dict[int, int] = {}
    arena = 0
    for k, b in enumerate(order):
        size = _align(b.nbytes, align)
        hit = (firsts[:k] <= b.last) & (lasts[:k] >= b.first)
        o, e = offs[:k][hit], ends[:k][hit]
        at = 0
        if o.size:
            idx = np.argsort(o, kind="stable")
            o, e = o[idx], e[idx]
            reach = np.maximum.accumulate(e)                     # the top of everything below
            lows = np.concatenate(([0], reach[:-1]))             # each gap starts here ...
            gaps = o - lows                                      # ... and ends at the next block
            fits = np.nonzero(gaps >= size)[0]
            at = int(lows[fits[np.argmin(gaps[fits])]]) if fits.size else int(reach[-1])
        offsets[b.index] = at
        firsts[k], lasts[k], offs[k], ends[k] = b.first, b.last, at, at + size
        arena = max(arena, at + size)
    return arena, offsets
