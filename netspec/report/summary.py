"""Keras-style summaries: per layer and per block, params, MACs, memory, receptive field.

Conventions (also in docs/LANGUAGE.md):
- parameters: batch-norm moving statistics count as non-trainable, as Keras counts them;
- units: every count a Summary or a Row reports (`macs`, `activation_bytes`, `inference_bytes`,
  `training_bytes`) is for the whole batch the summary was made at, as its table shows it;
  the `*_per_sample` fields are per sample; parameters and weights do not depend on the batch;
- MACs: multiply-accumulates of convolutions and dense layers (pooling, activations, merges
  and normalisation count 0);
- memory: float32, decimal units (1 MB = 10^6 bytes);
- inference peak: the largest set of activations live at once in topological
  order (a tensor lives from its producer to its last consumer), plus weights;
- training: every activation kept for the backward pass, plus weights, their
  gradients and the optimizer's state (per trainable weight: plain sgd 0;
  sgd with momentum, momentum, nesterov, adagrad and rmsprop 1; adam and nadam 2);
- receptive field (RF) and jump (effective stride), in input pixels, along the
  deepest path; 'all' once a layer sees the whole input (dense, global pooling).
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import asdict, dataclass, field
from decimal import Decimal

from ..graph.graph import Graph, producer
from ..ops import OPS, format_parts, format_shape
from ..lang.train_section import optimizer_state

BYTES = 4  # float32
GLOBAL = -1


class BatchTotals:
    """A row's or a whole summary's totals for the batch it was made at (`batch`), from its
    per-sample fields: a summary's activation_bytes is every activation of the batch (what
    training keeps for the backward pass), a row's its output's."""

    @property
    def params(self) -> int:
        return self.trainable + self.non_trainable

    @property
    def macs(self) -> int:
        """Multiply-accumulates of one forward pass of the whole batch."""
        return self.macs_per_sample * self.batch

    @property
    def activation_bytes(self) -> int:
        return self.activation_bytes_per_sample * self.batch


@dataclass
class Row(BatchTotals):
    """A layer's (or a block's) line of the table; counts at the summary's batch."""
    name: str
    op: str
    depth: int
    shape: tuple
    trainable: int = 0
    non_trainable: int = 0
    macs_per_sample: int = 0
    activation_bytes_per_sample: int = 0
    rf: tuple = (1, 1)
    jump: tuple = (1, 1)
    detail: str = ""
    is_block: bool = False     # a block's row: a header (opened) or folded
    folded: bool = False       # a folded block: its layers are not listed
    layers: int = 1
    parts: tuple = ()          # a node of several outputs (split): their shapes
    batch: int = 1

    @property
    def shape_text(self) -> str:
        """The Output column: the shape, or a split's parts' shapes ('16@8x8, 48@8x8')."""
        if self.parts:
            return format_parts(self.parts)
        return format_shape(self.shape) if self.shape else ""


@dataclass(repr=False)
class Summary(BatchTotals):
    """What `netspec summary` prints: `str(summary)` (and its repr) is the table.

    Totals are properties, for the whole batch the summary was made at (`batch`), as the table
    shows them; the `*_per_sample` fields are per sample. Only what takes an argument is a
    method: `table(depth, memory_budget)`, `max_batch(budget)`, `collapsed(depth)`."""
    network: str
    batch: int
    rows: list[Row]
    trainable: int
    non_trainable: int
    macs_per_sample: int
    activation_bytes_per_sample: int        # all tensors (training keeps them for the backward)
    peak_activation_bytes_per_sample: int   # live at once in topological order (inference)
    optimizer: str
    optimizer_slots: int
    blocks: dict = field(default_factory=dict)
    enclosing: dict = field(default_factory=dict)  # row name -> enclosing block paths

    # --- totals at this batch (params, macs and activation_bytes: BatchTotals')
    @property
    def weight_bytes(self) -> int:
        return self.params * BYTES

    @property
    def peak_activation_bytes(self) -> int:
        """The batch's activations live at once in inference."""
        return self.peak_activation_bytes_per_sample * self.batch

    @property
    def inference_bytes(self) -> int:
        return self.inference_bytes_at(self.batch)

    @property
    def training_fixed_bytes(self) -> int:
        """Training memory that does not grow with the batch: weights, gradients, optimizer state."""
        return self.weight_bytes + self.trainable * BYTES * (1 + self.optimizer_slots)

    @property
    def training_bytes(self) -> int:
        return self.training_bytes_at(self.batch)

    def inference_bytes_at(self, batch: int) -> int:
        return self.peak_activation_bytes_per_sample * batch + self.weight_bytes

    def training_bytes_at(self, batch: int) -> int:
        return self.activation_bytes_per_sample * batch + self.training_fixed_bytes

    def max_batch(self, budget: int) -> tuple[int, int]:
        """Largest batch whose (inference, training) memory fits `budget` bytes."""
        def fit(per_sample, fixed):
            return max(0, (budget - fixed) // per_sample) if per_sample else 0
        return (fit(self.peak_activation_bytes_per_sample, self.weight_bytes),
                fit(self.activation_bytes_per_sample, self.training_fixed_bytes))

    def __str__(self) -> str:
        return self.table()

    __repr__ = __str__

    # --- views
    def collapsed(self, depth: int | None) -> list[Row]:
        """Rows with blocks nested deeper than `depth` levels folded into one row each.

        depth 0 folds every top-level block (one row per residual unit); depth 1
        opens those and folds the blocks inside them; None shows every layer.
        """
        if depth is None:
            return self.rows
        out: list[Row] = []
        index: dict[str, Row] = {}
        for r in self.rows:
            blocks = self.enclosing[r.name] if r.name in self.enclosing else ()
            if r.is_block:
                # a header row stays when its block is opened, i.e. not inside a folded block
                if r.name in self.blocks and len(self.enclosing.get(r.name, ())) < depth:
                    out.append(r)
                elif r.name not in self.blocks and len(blocks) <= depth:
                    out.append(r)  # a named value's header inside an opened block
                continue
            if len(blocks) <= depth:
                out.append(r)
                continue
            key = blocks[depth]
            agg = index.get(key)
            if agg is None:
                block = self.blocks[key]
                agg = Row(key, block["block"], key.count("/"), r.shape, rf=r.rf, jump=r.jump,
                          detail=block["detail"], is_block=True, folded=True, layers=0,
                          parts=r.parts, batch=r.batch)
                index[key] = agg
                out.append(agg)
            agg.trainable += r.trainable
            agg.non_trainable += r.non_trainable
            agg.macs_per_sample += r.macs_per_sample
            agg.activation_bytes_per_sample += r.activation_bytes_per_sample
            agg.layers += 1
            agg.shape, agg.parts = r.shape, r.parts
            agg.rf, agg.jump = r.rf, r.jump
        return out

    COLUMNS = ("Layer", "Op", "Output", "Trainable", "Non-train.", "MACs", "Memory", "RF", "Jump")
    NUMERIC = frozenset(range(3, 9))   # the columns set right-aligned

    def cells(self, depth: int | None = None) -> list[list[str]]:
        """The table's body, one list of COLUMNS' texts per row; a name is indented two spaces
        per block level (the text table and the HTML one both lay out these cells)."""
        body = []
        for r in self.collapsed(depth):
            indent = "  " * r.depth
            name = r.name.split("/")[-1]  # indentation shows the path
            op = r.op + (f" {r.detail}" if r.detail else "")
            if r.is_block and depth is not None and r.layers:
                op += f"  [{r.layers} layers]"
            body.append([indent + name + ("/" if r.is_block and depth is None else ""), op,
                         r.shape_text, _int(r.trainable),
                         _int(r.non_trainable), _si(r.macs), format_bytes(r.activation_bytes),
                         _rf(r.rf), _rf(r.jump)])
        return body

    def title(self) -> str:
        return f'Network "{self.network}"  (batch {self.batch})'

    def table(self, depth: int | None = None, memory_budget: int | None = None) -> str:
        header, body = self.COLUMNS, self.cells(depth)
        widths = [max(len(str(x)) for x in col) for col in zip(header, *body)] if body else [len(h) for h in header]

        def line(cells):
            return "  ".join(str(c).rjust(w) if i in self.NUMERIC else str(c).ljust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

        total_w = sum(widths) + 2 * (len(widths) - 1)
        out = [self.title(), "=" * total_w, line(header), "-" * total_w]
        out += [line(b) for b in body]
        out.append("=" * total_w)
        out += self.totals_text(memory_budget)
        return "\n".join(out)

    def html(self, depth: int | None = None, memory_budget: int | None = None) -> str:
        """The table as HTML: the same cells as `table`, then the totals (params, MACs, memory)
        as label/value rows in the footer; every text escaped."""
        def cell(i, text, tag="td"):
            align = "right" if i in self.NUMERIC else "left"
            # a name's indentation as a padding, which HTML would collapse as spaces
            level = (len(text) - len(text.lstrip(" "))) // 2 if i == 0 else 0
            pad = f";padding-left:{0.5 + 1.5 * level:g}em" if level else ""
            return f'<{tag} style="text-align:{align}{pad}">{html.escape(text.lstrip(" "))}</{tag}>'

        def row(cells, tag="td"):
            return "<tr>" + "".join(cell(i, c, tag) for i, c in enumerate(cells)) + "</tr>"

        totals = []
        for text in self.totals_text(memory_budget):
            label, value = text.split(":", 1)
            totals.append(f'<tr><th colspan="2" style="text-align:left">{html.escape(label)}</th>'
                          f'<td colspan="{len(self.COLUMNS) - 2}" style="text-align:left">'
                          f"{html.escape(value.strip())}</td></tr>")
        return "\n".join([
            '<table class="netspec-summary">',
            f'<caption style="text-align:left">{html.escape(self.title())}</caption>',
            "<thead>" + row(self.COLUMNS, "th") + "</thead>",
            "<tbody>", *(row(c) for c in self.cells(depth)), "</tbody>",
            "<tfoot>", *totals, "</tfoot>",
            "</table>"])

    def _repr_html_(self) -> str:
        """Jupyter's view: the table, every layer listed, as HTML."""
        return self.html()

    def totals_text(self, memory_budget: int | None = None) -> list[str]:
        lines = [
            f"Total params:         {self.params:,} ({format_bytes(self.weight_bytes)})",
            f"Trainable params:     {self.trainable:,}",
            f"Non-trainable params: {self.non_trainable:,}",
            f"MACs:                 {_si(self.macs)} ({self.macs:,} at batch {self.batch})",
            f"Inference memory:     {format_bytes(self.inference_bytes)} = peak activations "
            f"{format_bytes(self.peak_activation_bytes)} + weights {format_bytes(self.weight_bytes)}",
            f"Training memory:      {format_bytes(self.training_bytes)} = activations "
            f"{format_bytes(self.activation_bytes)} + weights {format_bytes(self.weight_bytes)} + gradients "
            f"{format_bytes(self.trainable * BYTES)} + {self.optimizer} state "
            f"{format_bytes(self.trainable * BYTES * self.optimizer_slots)}",
        ]
        if memory_budget is not None:
            inf, tr = self.max_batch(memory_budget)
            lines.append(f"Largest batch in {format_bytes(memory_budget)}: inference {inf:,}, training {tr:,}")
        return lines

    def to_json(self, depth: int | None = None, memory_budget: int | None = None) -> dict:
        layers = []
        for r in self.collapsed(depth):
            # keys in the order `summary --format json` has always written them
            d = {("macs" if k == "macs_per_sample" else k): v for k, v in asdict(r).items()
                 if k not in ("activation_bytes_per_sample", "batch")}
            d["shape"] = list(r.shape)
            d["shape_text"] = r.shape_text
            if r.parts:
                d["parts"] = [list(p) for p in r.parts]
            else:
                del d["parts"]
            d["params"] = r.params
            d["macs"] = r.macs
            d["memory_bytes"] = r.activation_bytes
            d["rf"] = _json_rf(r.rf)
            d["jump"] = _json_rf(r.jump)
            layers.append(d)
        out = {
            "network": self.network,
            "batch": self.batch,
            "layers": layers,
            "totals": {
                "params": self.params,
                "trainable": self.trainable,
                "non_trainable": self.non_trainable,
                "macs": self.macs,
                "macs_per_sample": self.macs_per_sample,
                "weight_bytes": self.weight_bytes,
                "inference_peak_activation_bytes": self.peak_activation_bytes,
                "inference_bytes": self.inference_bytes,
                "training_activation_bytes": self.activation_bytes,
                "training_bytes": self.training_bytes,
                "optimizer": self.optimizer,
            },
        }
        if memory_budget is not None:
            inf, tr = self.max_batch(memory_budget)
            out["totals"]["memory_budget"] = memory_budget
            out["totals"]["max_batch_inference"] = inf
            out["totals"]["max_batch_training"] = tr
        return out


def summarize(graph: Graph, batch: int = 1, optimizer: str | None = None) -> Summary:
    """Per-layer rows (with block header rows) and totals for `graph` at `batch`."""
    optimizer, slots = optimizer_state(graph.train, optimizer)
    rf: dict[str, tuple] = {}
    jump: dict[str, tuple] = {}
    rows: list[Row] = []
    open_blocks: list[str] = []
    block_rows: dict[str, Row] = {}
    blocks_info = {}
    for path, b in graph.blocks.items():
        blocks_info[path] = {"block": b.block, "detail": b.args_text()}
    total_t = total_n = total_macs = total_acts = 0
    for node in graph.nodes():
        op = OPS[node.op]
        ins = [graph.shape_of(i) for i in node.inputs]
        # receptive field and jump along the deepest input path (a split's parts: its own)
        if node.inputs:
            r_in = max((rf[producer(i)] for i in node.inputs), key=_rf_key)
            j_in = max((jump[producer(i)] for i in node.inputs), key=_rf_key)
        else:
            r_in, j_in = (1, 1), (1, 1)
        w = op.window_on(node.attrs, ins)
        if w == "global" or r_in == (GLOBAL, GLOBAL):
            r, j = (GLOBAL, GLOBAL), (GLOBAL, GLOBAL)
        elif w is None:
            r, j = r_in, j_in
        else:
            kh, kw, sh, sw = w
            r = (r_in[0] + (kh - 1) * j_in[0], r_in[1] + (kw - 1) * j_in[1])
            j = (j_in[0] * sh, j_in[1] * sw)
            if node.op == "conv_transpose":  # upsampling: output pixels are 1/stride apart
                th, tw = node.attrs.stride
                j = (max(1, j_in[0] // th), max(1, j_in[1] // tw))
        rf[node.name], jump[node.name] = r, j
        t = sum(p.size for p in node.params if p.trainable and node.trainable)
        n = node.param_count - t
        macs = op.macs(node.attrs, ins, node.shape)
        act = math.prod(node.shape) * BYTES
        total_t, total_n, total_macs, total_acts = total_t + t, total_n + n, total_macs + macs, total_acts + act
        # block header rows, opened when a node enters a new block scope
        scopes = ["/".join(node.name.split("/")[: k + 1]) for k in range(len(node.scope))]
        while open_blocks and open_blocks[-1] not in scopes:
            open_blocks.pop()
        for s in scopes:
            if s not in open_blocks:
                info = blocks_info.get(s)
                hdr = Row(s, info["block"] if info else "(value)", s.count("/"), node.shape,
                          detail=info["detail"] if info else "", is_block=True, layers=0,
                          parts=node.parts, batch=batch)
                block_rows[s] = hdr
                rows.append(hdr)
                open_blocks.append(s)
        for s in scopes:
            hdr = block_rows[s]
            hdr.trainable += t
            hdr.non_trainable += n
            hdr.macs_per_sample += macs
            hdr.activation_bytes_per_sample += act
            hdr.shape, hdr.parts, hdr.rf, hdr.jump = node.shape, node.parts, r, j
            hdr.layers += 1
        rows.append(Row(node.name, node.op, len(node.scope), node.shape, t, n, macs, act, r, j,
                        op.describe(node.attrs), parts=node.parts, batch=batch))
    enclosing = {r.name: graph.enclosing_blocks(r.name) for r in rows}
    return Summary(graph.name, batch, rows, total_t, total_n, total_macs, total_acts,
                   peak_live_bytes(graph), optimizer, slots, blocks_info, enclosing)


def planned_memory_text(plans: dict, batch: int) -> str:
    """The summary's lines on planned memory: the planner's peak of each phase (pipeline.plan)
    beside the naive sum and the lower bound."""
    lines = [f"Planned memory (batch {batch}; the program after the graph passes: activations, "
             f"temporaries, gradients):"]
    for phase, p in plans.items():
        lines.append(f"  {'inference' if phase == 'infer' else 'training':<9}  planned peak "
                     f"{format_bytes(p.arena_bytes):>9}   naive sum {format_bytes(p.naive_bytes):>9}   "
                     f"lower bound {format_bytes(p.lower_bound_bytes):>9}")
    return "\n".join(lines)


def planned_memory_json(plans: dict) -> dict:
    """The planned memory of each phase, as `summary --format json` reports it."""
    return {phase: {"planned_peak_bytes": p.arena_bytes, "naive_sum_bytes": p.naive_bytes,
                    "lower_bound_bytes": p.lower_bound_bytes}
            for phase, p in plans.items()}


def peak_live_bytes(graph: Graph) -> int:
    """Largest sum of activation bytes (per sample) live at once in topological order."""
    order = list(graph.nodes())
    last_use = {}
    for i, node in enumerate(order):
        for src in node.inputs:   # a split's parts live as long as the last of them is read
            last_use[producer(src)] = i
    outputs = {producer(v) for v in graph.outputs}
    live = 0
    peak = 0
    frees: dict[int, list[int]] = {}
    for i, node in enumerate(order):
        size = math.prod(node.shape) * BYTES
        live += size
        peak = max(peak, live)
        end = len(order) if node.name in outputs else last_use.get(node.name, i)
        frees.setdefault(end, []).append(size)
        live -= sum(frees.pop(i, []))
    return peak


MAX_MEMORY_BYTES = 10**18     # a budget for --memory: 1 EB
_MEMORY = re.compile(r"\s*((?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)\s*([kKMGTPE]?)(i?)[bB]?\s*")


def parse_memory(text: str) -> int:
    """'16GB' -> 16e9 bytes, '16GiB' -> 16 * 2**30, '512MB', '1TB', '1e9'; at most 1 EB."""
    # the number is read exactly (a float would make '1e400' infinite), and the pattern has
    # one way to match each text, so a long text fails in linear time
    m = _MEMORY.fullmatch(text) if len(text) <= 100 else None
    if not m:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise ValueError(f"cannot read memory size '{shown}' (try 16GB or 512MiB)")
    value, unit, binary = Decimal(m.group(1)), m.group(2).upper(), m.group(3)
    powers = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}
    scale = (1024 if binary else 1000) ** powers[unit]
    if value > Decimal(MAX_MEMORY_BYTES) / scale:
        raise ValueError(f"memory size '{text.strip()}' is too large (the limit is 1 EB, 10^18 bytes)")
    return int(value * scale)


# ------------------------------------------------------------------ formatting

def _rf_key(t):
    return (t[0] == GLOBAL, max(t))


def _rf(t) -> str:
    if t[0] == GLOBAL:
        return "all"
    return str(t[0]) if t[0] == t[1] else f"{t[0]}x{t[1]}"


def _json_rf(t):
    return "all" if t[0] == GLOBAL else list(t)


def _int(n: int) -> str:
    return f"{n:,}" if n else "0"


def _si(n: float) -> str:
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(int(n))


def format_bytes(n: float) -> str:
    for unit, size in (("EB", 1e18), ("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"
