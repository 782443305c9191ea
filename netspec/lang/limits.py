"""How much elaboration a spec may ask for (docs/LIMITS.md), and the accounting that holds it
there as the elaborator runs: the steps taken, the repeats running inside each other, the
network's layers and bytes so far. Each refusal is a SpecError at the place that passed the
limit, with notes for the repeats and block calls around it.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

from ..errors import Pos, SpecError
from .parser import MAX_INT
from .values import format_bytes

MAX_REPEAT = 10_000                  # `layer * n`
MAX_NODES = 500_000                  # a graph larger than this is refused
# Elaboration steps one network may take: an expression evaluated, a layer applied (one step
# each), a block called (BLOCK_CALL_STEPS: it makes a scope and a block instance and runs a
# body). Work that creates no node (`relu * 0` repeated, an empty block) is bounded by this,
# not by MAX_NODES. resnet152 takes about 3,000 steps and a 10,000-line spec 27,000; the limit
# is spent in a few seconds at worst, and nested repeats whose counts multiply past it are
# refused before they start.
MAX_WORK = 2_000_000
BLOCK_CALL_STEPS = 10
MAX_BLOCK_DEPTH = 64                 # nested block calls
MAX_BYTES = 1e12                     # weights + batch-1 activations (float32): 1 TB
BYTES_PER_VALUE = 4


@dataclass
class Repeat:
    """A `* n` loop running now."""
    count: int
    pos: Pos | None
    frames: int      # block calls enclosing it (how many were running when it started)


class Work:
    """One network's elaboration, counted against the limits.

    frames: the elaborator's block calls running now, outermost first (each with `block`,
    `instance` and `pos`), the list itself, so the notes see the calls as they are."""

    def __init__(self, frames: list):
        self.frames = frames
        self.steps = 0                    # elaboration steps taken (MAX_WORK)
        self.repeats: list[Repeat] = []   # the `* n` loops running now, outermost first
        self.repeat_product = 1           # their counts multiplied
        self.params = 0                   # parameters of the nodes made so far (MAX_BYTES)
        self.activations = 0              # values of their batch-1 outputs

    def step(self, where, n: int = 1) -> None:
        """Take n steps at `where` (an expression, a layer or a position)."""
        self.steps += n
        if self.steps > MAX_WORK:
            raise self.too_much_work(getattr(where, "pos", where))

    @contextmanager
    def repeat(self, count: int, pos: Pos | None):
        """A `* count` loop runs inside the `with`: refused first if, with the loops around it,
        it would apply its layers more often than the work limit allows."""
        repeat = Repeat(count, pos, len(self.frames))
        if self.repeat_product * count > MAX_WORK:
            raise self.repeats_multiply(repeat)
        self.repeats.append(repeat)
        self.repeat_product *= count
        try:
            yield
        finally:
            self.repeats.pop()
            self.repeat_product //= count

    def count_node(self, node, nodes: int, notes: list) -> None:
        """A node was added (the graph now has `nodes`): refused past MAX_NODES or MAX_BYTES."""
        self.params += node.param_count
        self.activations += math.prod(node.shape)
        if nodes > MAX_NODES:
            raise SpecError(f"the network has more than {MAX_NODES:,} layers", node.pos,
                            hint="is a repeat count too large?")
        need = (self.params + self.activations) * BYTES_PER_VALUE
        if need > MAX_BYTES:
            raise SpecError(
                f"the network is too large for any machine: about {format_bytes(need)} at batch 1 "
                f"(weights {format_bytes(self.params * BYTES_PER_VALUE)}, activations "
                f"{format_bytes(self.activations * BYTES_PER_VALUE)}) and growing at this layer",
                node.pos, hint="check the input size, filter counts and repeat counts", notes=notes)

    def repeats_multiply(self, repeat: Repeat) -> SpecError:
        """Repeats inside repeats (directly or through blocks) apply the inner layer the product
        of their counts times, at least one step each: refused before it starts."""
        counts = [r.count for r in self.repeats] + [repeat.count]
        product = math.prod(counts)
        return SpecError(
            f"repeats nested inside each other would run this {count_text(product)} times "
            f"({' x '.join(f'{c:,}' for c in counts)}); the work limit is {MAX_WORK:,} steps",
            repeat.pos,
            hint="lower the repeat counts; a repeat inside a repeated group or block multiplies",
            notes=self.context_notes())

    def too_much_work(self, pos: Pos | None) -> SpecError:
        """The work limit is spent: at the innermost repeat running in the innermost block call
        (else where it ran out), with the repeats and block calls around it."""
        at_repeat = bool(self.repeats) and self.repeats[-1].frames == len(self.frames)
        where = self.repeats[-1].pos if at_repeat else pos
        return SpecError(
            f"elaborating this network takes more than {MAX_WORK:,} steps, the work limit "
            "(layers applied, blocks called, expressions evaluated)", where,
            hint="look for large repeat counts and blocks that call blocks many times; work that "
                 "creates no layer (`relu * 0`, an empty block) counts too",
            notes=self.context_notes(skip_innermost_repeat=at_repeat))

    def context_notes(self, skip_innermost_repeat: bool = False) -> list:
        """Notes for the repeats running and the block calls, innermost first."""
        repeats = self.repeats[:-1] if skip_innermost_repeat else self.repeats
        events = []   # (nesting order, note), outermost first
        for i, f in enumerate(self.frames):
            events.append(((i, 1), (f"in block '{f.block}' ({f.instance}) called here", f.pos)))
        for j, r in enumerate(repeats):
            events.append(((r.frames - 1, 2 + j),
                           (f"inside a repeat of {r.count:,} here", r.pos)))
        return [note for _, note in sorted(events, key=lambda e: e[0], reverse=True)]


def count_text(n: int) -> str:
    return f"{n:,}" if n < 10**15 else f"about 10^{len(str(n)) - 1}"


def number_too_large(value: int, pos) -> SpecError:
    return SpecError(f"number too large ({count_text(abs(value))})", pos,
                     hint=f"integers go up to 10^18 ({MAX_INT:,})")
