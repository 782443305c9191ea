"""Layers (onnx_import.Translated) -> the text of a readable spec: repeated structures as
parameterised blocks, runs of equal instances as `block(args) * n`.

The algorithm:

1. Cut the network at its single-tensor cut points: a value is a cut when, in the layers'
   order, it is the only value that crosses from the layers before it to those after (every
   path from the input to the output passes through it). Between two cuts lies a segment: one
   layer, or a branchy piece (a residual unit, an inception module).
2. Each branchy segment gets a signature: its layers' ops, their inputs (inside the segment)
   and their non-numeric attributes; numbers (filters, kernels, strides, pads) are left out.
   A segment whose last layer adds a short projection branch (conv -> batchnorm) to a long one
   has the signature of the same unit with the identity as its shortcut, and joins it: the block
   writes the projection `... if stride > 1 or x.channels != filters else x`, as
   specs/resnet50.net does (or with a `project` parameter where that rule does not decide it).
3. Segments of one signature, two or more, share a block. It takes the single layers that
   follow every instance alike (the relu after a residual add). Each numeric attribute that
   is the same in every instance is written as it is; one that differs becomes a parameter,
   shared by attributes whose values agree (or are a whole multiple: `filters * 4`), with a
   default where one value holds for at least half the instances.
4. Runs of single layers left outside blocks that repeat three times or more (MobileNet's
   depthwise-pointwise pair) are blocks too, each starting at a layer with weights.
5. Consecutive instances with equal arguments become one call `block(args) * n`.

Values are named by what they feed: `main` and `skip` for an add's operands, `branch1`...
for a concat's, `gate` for a sigmoid's product, a network's outputs after the model's; chains
run through values read once; a split's parts are unpacked (`a, b = x -> split(2)`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ..ops import OPS
from ..ops.base import REQUIRED, OpKind

LINE_WIDTH = 96           # a long chain goes on at the next line past this
MAX_LINEAR_UNIT = 8       # layers in a repeated run of single layers, at most
MIN_LINEAR_COPIES = 3     # copies of such a run that make it a block (two are often a coincidence)
MIN_FOR_MULTIPLES = 3     # instances before a parameter may be another's multiple (two agree by chance)
PARAM_NAMES = {"pad": "padding"}      # attribute -> block parameter where the attribute is an op's name


@dataclass
class Layer:
    """One netspec layer: op, attributes (name -> the ways to write its value, the preferred
    first: explicit pads that equal `same` may be written either way), inputs (value ids),
    parameters in PyTorch's layouts. Its output's value id is `key`."""

    key: str
    op: str
    attrs: dict[str, tuple]
    inputs: list[str]
    params: dict[str, np.ndarray] = field(default_factory=dict)
    source: str = ""            # the ONNX node it came from
    parts: int = 0              # outputs of a layer of several (a split's parts), read as part_value


@dataclass
class Translated:
    """A network as layers: its inputs (name, netspec shape), layers in order, output values."""

    inputs: list[tuple[str, tuple]]
    layers: list[Layer]
    outputs: list[str]
    shapes: dict[str, tuple] = field(default_factory=dict)     # value id -> netspec shape
    output_names: dict[str, str] = field(default_factory=dict)  # output value -> its model's name


def part_value(key: str, index: int) -> str:
    """The value of part `index` of a layer of several outputs (a split)."""
    return f"{key}#part{index}"


def producer(value: str) -> str:
    """The layer that computes a value: a part's layer, or the value's own."""
    return value.split("#part", 1)[0]


# ------------------------------------------------------------------ values as text

def value_text(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, tuple):
        return "(" + ", ".join(value_text(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    if isinstance(v, float):
        text = repr(v)
        return text if ("." in text or "e" in text) else text + ".0"
    return str(v)


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) or (
        isinstance(v, tuple) and all(_is_number(x) for x in v))


def _numeric(op: str, name: str, spellings: tuple) -> bool:
    """Whether an attribute is a number a block may take as a parameter (pad, whatever its
    spelling, is one)."""
    return name == "pad" or all(_is_number(s) for s in spellings)


def _default(op: str, name: str, attrs: dict):
    """The spellings of an attribute a layer leaves out: its op's default (a pool's stride:
    its kernel). None: no default to fill in."""
    attr = next((a for a in OPS[op].attrs if a.name == name), None)
    if attr is None:
        return None
    if attr.default is REQUIRED:
        return None
    if attr.default is None:
        if name == "stride" and "kernel" in attrs:
            return attrs["kernel"]
        return None
    return (attr.default,)


def _same_as_default(op: str, name: str, value) -> bool:
    attr = next(a for a in OPS[op].attrs if a.name == name)
    if attr.default is REQUIRED or attr.default is None:
        return False
    try:
        return attr.check(value) == attr.check(attr.default)
    except Exception:   # noqa: BLE001 -- a value the check refuses is no default
        return False


# ------------------------------------------------------------------ segments

@dataclass
class Segment:
    start: str               # the value it reads (a cut)
    layers: list[Layer]

    @property
    def end(self) -> str:
        return self.layers[-1].key

    @property
    def branchy(self) -> bool:
        return len(self.layers) > 1


def segments(t: Translated) -> list[Segment] | None:
    """The network cut at its single-tensor cut points; after the last cut (before the last
    layer when the network has several outputs: a detector's heads), one segment of the rest.
    None for a network of several inputs (no blocks are looked for then)."""
    if len(t.inputs) != 1 or not t.layers:
        return None
    layers = t.layers
    n = len(layers)
    pos = {t.inputs[0][0]: -1}
    pos.update({l.key: i for i, l in enumerate(layers)})
    last_use = {}
    for i, l in enumerate(layers):
        for v in l.inputs:
            last_use[v] = max(last_use.get(v, -1), i)
    for v in t.outputs:
        last_use[v] = n
    starts = Counter(pos[producer(v)] for v in last_use)
    ends = Counter(last_use.values())
    live = 0
    cuts = []
    for i in range(-1, n):
        live += starts.get(i, 0)
        live -= ends.get(i, 0)
        key = t.inputs[0][0] if i < 0 else layers[i].key
        # the gap after i: only the value made at i crosses it
        if live == 1 and last_use.get(key, -2) > i:
            cuts.append(i)
    if not cuts or cuts[0] != -1:
        return None
    if cuts[-1] != n - 1:
        if len(t.outputs) == 1:
            return None
        cuts.append(n - 1)      # the rest, where several outputs are made
    out, prev = [], -1
    for c in cuts[1:]:
        start = t.inputs[0][0] if prev < 0 else layers[prev].key
        out.append(Segment(start, layers[prev + 1:c + 1]))
        prev = c
    return out


def _local(layers: list[Layer], start: str) -> list[tuple]:
    idx = {start: -1}
    idx.update({l.key: i for i, l in enumerate(layers)})
    return [tuple((idx.get(producer(v), "?"), v[len(producer(v)):]) for v in l.inputs) for l in layers]


def _shape_sig(l: Layer) -> tuple:
    """A layer without its numbers: op, and the attributes that are no numbers (bias=false, a
    mode), and the names of those that are none of its defaults' kind."""
    fixed = tuple(sorted((k, v) for k, v in l.attrs.items() if not _numeric(l.op, k, v)))
    optional = tuple(sorted(k for k, v in l.attrs.items()
                            if _numeric(l.op, k, v) and _default(l.op, k, l.attrs) is None
                            and not _required(l.op, k)))
    return (l.op, fixed, optional)


def _required(op: str, name: str) -> bool:
    attr = next((a for a in OPS[op].attrs if a.name == name), None)
    return attr is not None and attr.default is REQUIRED


def signature(layers: list[Layer], start: str) -> tuple:
    return tuple((_shape_sig(l), refs) for l, refs in zip(layers, _local(layers, start)))


def _split_projection(seg: Segment):
    """(the segment's signature with the identity as its shortcut, the projection's
    signature), or None: its last layer adds two values, one of them the segment's input
    (identity) or the end of a short single-use chain from it (projection)."""
    last = seg.layers[-1]
    if OPS[last.op].infix != "+" or len(last.inputs) != 2:
        return None
    if seg.start in last.inputs:
        return signature(seg.layers, seg.start), ()
    uses = Counter(v for l in seg.layers for v in l.inputs)
    by_key = {l.key: l for l in seg.layers}
    best = None
    for operand in last.inputs:
        chain, v = [], operand
        while v in by_key and len(by_key[v].inputs) == 1 and uses[v] == 1:
            chain.append(by_key[v])
            v = by_key[v].inputs[0]
        if v == seg.start and chain and len(chain) < len(seg.layers) // 2:
            if best is None or len(chain) < len(best[1]):
                best = (operand, chain[::-1])
    if best is None:
        return None
    operand, chain = best
    keys = {l.key for l in chain}
    rest = []
    for l in seg.layers:
        if l.key in keys:
            continue
        if l is last:
            l = Layer(l.key, l.op, l.attrs, [seg.start if v == operand else v for v in l.inputs])
        rest.append(l)
    return signature(rest, seg.start), signature(chain, seg.start)


# ------------------------------------------------------------------ blocks

@dataclass
class Param:
    name: str
    values: list              # per instance
    default: object = None
    has_default: bool = False


@dataclass
class Block:
    name: str
    template: list[Layer]                 # an instance's layers, the projection's included
    skip_keys: set                        # the template's projection layers
    slots: dict                           # (layer index, attr) -> text
    params: list[Param]
    instances: list[tuple[int, int]]      # (first segment, last segment) of each instance
    condition: str | None = None          # of the projection, `x` otherwise
    start: str = ""


def _instance_values(template: list[Layer], instance: list[Layer | None]) -> dict:
    """(layer index, attr) -> the instance's spellings (None where the layer is absent), for
    every numeric attribute of the template's ops, defaults filled in."""
    names = {}
    for i, l in enumerate(template):
        for a in OPS[l.op].attrs:
            names[(i, a.name)] = None
    out = {}
    for (i, name) in names:
        layer = instance[i]
        if layer is None:
            out[(i, name)] = None
            continue
        if name in layer.attrs:
            if not _numeric(layer.op, name, layer.attrs[name]):
                continue
            out[(i, name)] = layer.attrs[name]
        else:
            d = _default(layer.op, name, layer.attrs)
            if d is not None and _numeric(layer.op, name, d):
                out[(i, name)] = d
    return out


def _build_block(name: str, template: list[Layer], skip_keys: set, per_instance: list[list],
                 start_channels: list, taken: set) -> Block:
    values = [_instance_values(template, inst) for inst in per_instance]
    slot_keys = [k for k in values[0] if any(v.get(k) is not None for v in values)]
    slot_keys = [k for k in slot_keys if all(k in v for v in values)]
    params: list[Param] = []
    slots: dict = {}
    for key in slot_keys:
        column = [v[key] for v in values]
        present = [c for c in column if c is not None]
        common = [s for s in present[0] if all(s in c for c in present)]
        if common:
            slots[key] = value_text(common[0])
            continue
        chosen = [c[0] if c is not None else None for c in column]
        expr = None
        for p in params:
            if all(c is None or c == pv for c, pv in zip(chosen, p.values)):
                expr = p.name
                break
        for p in params if expr is None and len(chosen) >= MIN_FOR_MULTIPLES else ():
            if all(isinstance(c, int) and isinstance(pv, int) and not isinstance(c, bool)
                   for c, pv in zip(chosen, p.values) if c is not None):
                ratios = {c // pv if pv and c % pv == 0 else None
                          for c, pv in zip(chosen, p.values) if c is not None}
                if len(ratios) == 1 and None not in ratios and next(iter(ratios)) >= 2:
                    expr = f"{p.name} * {next(iter(ratios))}"
                    break
        if expr is None:
            attr = key[1]
            base = PARAM_NAMES.get(attr, attr)
            pname, k = base, 2
            while pname in taken or pname in {p.name for p in params} or pname in OPS:
                pname, k = f"{base}{k}", k + 1
            fill = Counter(c for c in chosen if c is not None).most_common(1)[0][0]
            params.append(Param(pname, [c if c is not None else fill for c in chosen]))
            expr = pname
        slots[key] = expr
    for p in params:
        value, count = Counter(p.values).most_common(1)[0]
        if count * 2 > len(p.values) and value_text(value) != "none":
            p.default, p.has_default = value, True
    if params and all(p.has_default for p in params):
        params[0].has_default = False     # `unit(4) * 2 -> unit(8)`: one argument always given
    params.sort(key=lambda p: p.has_default)
    block = Block(name, template, skip_keys, slots, params, [])
    if skip_keys:
        block.condition = _projection_condition(block, per_instance, start_channels)
    return block


def _projection_condition(block: Block, per_instance, start_channels) -> str:
    """`stride > 1 or x.channels != filters` when that tells the projection instances from the
    identity ones, else a parameter `project`."""
    skip = [i for i, l in enumerate(block.template) if l.key in block.skip_keys]
    stride = next((block.slots.get((i, "stride")) for i in skip if (i, "stride") in block.slots), None)
    filters = next((block.slots.get((i, "filters")) for i in reversed(skip)
                    if (i, "filters") in block.slots), None)
    by_name = {p.name: p for p in block.params}

    def evaluate(expr, k):
        if expr is None:
            return None
        parts = expr.split(" * ")
        try:
            base = by_name[parts[0]].values[k] if parts[0] in by_name else int(parts[0])
        except ValueError:
            return None
        return base * int(parts[1]) if len(parts) == 2 else base

    if stride is not None and filters is not None:
        ok = True
        for k, inst in enumerate(per_instance):
            projects = inst[skip[0]] is not None
            s, f = evaluate(stride, k), evaluate(filters, k)
            if not isinstance(s, int) or not isinstance(f, int):
                ok = False
                break
            if (s > 1 or start_channels[k] != f) != projects:
                ok = False
                break
        if ok:
            return f"{stride} > 1 or x.channels != {filters}"
    values = [inst[skip[0]] is not None for inst in per_instance]
    block.params.append(Param("project", values, False, True))
    return "project"


def find_blocks(t: Translated, segs: list[Segment], taken: set) -> list[Block]:
    """Blocks for the branchy segments that repeat (with a projection shortcut or without)."""
    groups: dict = {}
    for k, seg in enumerate(segs):
        if not seg.branchy:
            continue
        split = _split_projection(seg)
        if split is None:
            key, variant = ("plain", signature(seg.layers, seg.start)), None
        else:
            key, variant = ("residual", split[0]), split[1]
        groups.setdefault(key, []).append((k, variant))
    claimed: set[int] = set()
    chosen = []
    for key, members in groups.items():
        if len(members) < 2:
            continue
        if len({v for _, v in members if v}) > 1:      # projections of different kinds
            continue
        first = [k for k, _ in members]
        # the single layers that follow every instance alike join the block
        runs = [_linear_run(segs, k, +1, first) for k in first]
        common = _common_prefix(segs, runs)
        spans = [(k, k + common) for k in first]
        if any(a in claimed for s in spans for a in range(s[0], s[1] + 1)):
            continue
        for s in spans:
            claimed.update(range(s[0], s[1] + 1))
        chosen.append((members, spans))
    # then the single layers that precede every instance alike (an MBConv's expansion and
    # depthwise conv before its squeeze-and-excite), where no projection reads the block's input
    for n, (members, spans) in enumerate(chosen):
        if any(v for _, v in members):
            continue
        runs = [_linear_run(segs, a, -1, claimed) for a, _ in spans]
        common = _common_prefix(segs, runs)
        if common:
            for a, _ in spans:
                claimed.update(range(a - common, a))
            chosen[n] = (members, [(a - common, b) for a, b in spans])
    chosen += _linear_units(segs, claimed)
    blocks = []
    shapes = t.shapes
    for members, spans in chosen:
        # the template: an instance with the projection, where there is one
        with_skip = [i for i, (_, v) in enumerate(members) if v]
        ti = with_skip[0] if with_skip else 0
        template_layers = [l for j in range(spans[ti][0], spans[ti][1] + 1) for l in segs[j].layers]
        skip_keys = set()
        if with_skip:
            skip_keys = {l.key for l in _projection_layers(segs[spans[ti][0]])}
        per_instance = []
        for i, (a, b) in enumerate(spans):
            layers = [l for j in range(a, b + 1) for l in segs[j].layers]
            if skip_keys and not members[i][1]:
                # identity: the template's projection layers are absent
                it = iter(layers)
                layers = [None if l.key in skip_keys else next(it) for l in template_layers]
            per_instance.append(layers)
        name = _block_name(template_layers, taken)
        channels = [shapes.get(segs[a].start, (0,))[0] for a, _ in spans]
        block = _build_block(name, template_layers, skip_keys, per_instance, channels, taken)
        block.instances = spans
        block.start = segs[spans[ti][0]].start
        blocks.append(block)
    return blocks


def _linear_units(segs: list[Segment], claimed: set) -> list:
    """Repeated runs of single layers outside the blocks found (MobileNet's depthwise and
    pointwise pair, VGG's conv -> relu): the unit, starting at a layer with weights, that covers
    the most layers in non-overlapping copies (three or more, two layers or more; among equals
    the one that starts latest, leaving a network's stem outside). Once more on what is left."""
    found = []
    for _ in range(2):
        free = {k for k in range(len(segs)) if k not in claimed and not segs[k].branchy}
        sigs = [_shape_sig(s.layers[0]) if k in free else None for k, s in enumerate(segs)]
        best = None
        for length in range(2, MAX_LINEAR_UNIT + 1):
            places: dict[tuple, list[int]] = {}
            for k in sorted(free):
                if not OPS[segs[k].layers[0].op].penalised:
                    continue
                window = sigs[k:k + length]
                if len(window) == length and None not in window:
                    places.setdefault(tuple(window), []).append(k)
            for positions in places.values():
                starts = []
                for k in positions:          # copies that do not overlap, from the left
                    if not starts or k >= starts[-1] + length:
                        starts.append(k)
                if len(starts) < MIN_LINEAR_COPIES:
                    continue
                score = (length * len(starts), starts[0])
                if best is None or score > best[0]:
                    best = (score, length, starts)
        if best is None:
            break
        _, length, starts = best
        spans = [(a, a + length - 1) for a in starts]
        for a, b in spans:
            claimed.update(range(a, b + 1))
        found.append(([(a, None) for a in starts], spans))
    return found


def _linear_run(segs: list[Segment], k: int, step: int, stop) -> list[int]:
    """The single-layer segments next to segment k (after it: step +1; before it: -1, nearest
    first), up to a branchy one or one in `stop`."""
    run, j = [], k + step
    while 0 <= j < len(segs) and not segs[j].branchy and j not in stop:
        run.append(j)
        j += step
    return run


def _common_prefix(segs: list[Segment], runs: list[list[int]]) -> int:
    """How many of the runs' first segments are alike in every run."""
    common = 0
    while all(len(r) > common for r in runs) and len({_shape_sig(segs[r[common]].layers[0])
                                                      for r in runs}) == 1:
        common += 1
    return common


def _projection_layers(seg: Segment) -> list[Layer]:
    last = seg.layers[-1]
    uses = Counter(v for l in seg.layers for v in l.inputs)
    by_key = {l.key: l for l in seg.layers}
    best = []
    for operand in last.inputs:
        chain, v = [], operand
        while v in by_key and len(by_key[v].inputs) == 1 and uses[v] == 1:
            chain.append(by_key[v])
            v = by_key[v].inputs[0]
        if v == seg.start and chain and (not best or len(chain) < len(best)):
            best = chain
    return best


def _block_name(layers: list[Layer], taken: set) -> str:
    joins = {OPS[l.op].infix for l in layers if OPS[l.op].kind == OpKind.MERGE}
    base = ("residual" if "+" in joins else "module" if None in joins
            else "gated" if "*" in joins else "unit")
    name, k = base, 2
    while name in taken or name in OPS:
        name, k = f"{base}{k}", k + 1
    taken.add(name)
    return name


# ------------------------------------------------------------------ emitting a body

@dataclass
class Item:
    key: str
    inputs: list[str]
    stage: str                 # the text of the stage: `conv(64, 3)`, `residual(64) * 3`
    op: str | None = None      # a layer's op (None: a block call)
    skip: bool = False         # a layer of a block's projection shortcut
    call: tuple | None = None  # a block call: (block, its arguments' text)
    repeat: int = 1
    parts: int = 0             # a split's outputs


def _merges(it: Item) -> bool:
    """A layer that joins several values (add, multiply, concat)."""
    return it.op is not None and OPS[it.op].kind == OpKind.MERGE and len(it.inputs) > 1


def _role_name(v, readers, length, chain, fresh) -> str:
    """A part's name, by what reads it."""
    for r in readers.get(v, []):
        if _merges(r) and OPS[r.op].infix is None:
            return fresh(f"branch{r.inputs.index(v) + 1}")
        if _merges(r) and OPS[r.op].infix == "+":
            return fresh("skip")
    return fresh("part")


def layer_stage(l: Layer, texts: dict | None = None) -> str:
    """`op(args)`: required attributes by position, the rest by keyword, defaults left out.
    texts: attribute -> its text (a block's parameter expressions)."""
    pos, kw = [], []
    for a in OPS[l.op].attrs:
        if texts is not None and a.name in texts:
            text = texts[a.name]
            if text is None:
                continue
        elif a.name in l.attrs:
            value = l.attrs[a.name][0]
            if _same_as_default(l.op, a.name, value):
                continue
            text = value_text(value)
        else:
            continue
        if a.default is REQUIRED:
            pos.append(text)
        else:
            kw.append(f"{a.name}={text}")
    args = pos + kw
    return f"{l.op}({', '.join(args)})" if args else l.op


def emit_body(items: list[Item], inputs: dict, outputs: list[str], block: bool, taken: set,
              condition: str | None = None, indent: str = "    ",
              output_names: dict | None = None) -> list[str]:
    """Statements computing `outputs` from `inputs` (value -> name) with the items' chains."""
    uses = Counter(v for it in items for v in it.inputs)
    merge_read = {v for it in items if len(it.inputs) > 1 for v in it.inputs}   # operands: named
    out_set = set(outputs)
    names = dict(inputs)

    def named(v) -> bool:
        return v in names or uses[v] > 1 or v in merge_read or (v in out_set and (uses[v] or len(outputs) > 1))

    chains: list[list[Item]] = []
    open_at: dict[str, list[Item]] = {}
    for it in items:
        if len(it.inputs) == 1 and it.inputs[0] in open_at and not named(it.inputs[0]):
            chain = open_at.pop(it.inputs[0])
            chain.append(it)
        else:
            chain = [it]
            chains.append(chain)
        if not it.parts:          # a split ends its chain: its parts are unpacked
            open_at[it.key] = chain
    # names: by what a value feeds
    readers: dict[str, list[Item]] = {}
    for it in items:
        for v in it.inputs:
            readers.setdefault(v, []).append(it)
    length = {c[-1].key: len(c) for c in chains}
    local = set(taken) | set(names.values())

    def fresh(base: str) -> str:
        name, k = base, 2
        while name in local:
            name, k = f"{base}{k}", k + 1
        local.add(name)
        return name

    for chain in chains:
        v = chain[-1].key
        if chain[-1].parts:
            for i in range(chain[-1].parts):
                part = part_value(v, i)
                if part in out_set:
                    names[part] = fresh((output_names or {}).get(part, "output"))
                else:
                    names[part] = _role_name(part, readers, length, chain, fresh) if uses[part] else "_"
            continue
        if not named(v) or v in names:
            continue
        base = "y"
        if v in out_set and len(outputs) > 1:
            base = (output_names or {}).get(v, "output")
        for r in readers.get(v, []):
            if not _merges(r):
                break
            infix = OPS[r.op].infix
            if infix == "+":
                longest = max(r.inputs, key=lambda u: length.get(u, 0))
                base = "main" if v == longest else "skip"
            elif infix is None:
                base = f"branch{r.inputs.index(v) + 1}"
            elif infix == "*":     # names only: a product with a sigmoid is a gate
                base = "gate" if chain[-1].op in ("sigmoid", "hardsigmoid") else "y"
            break
        names[v] = fresh(base)

    def head(chain) -> tuple[str, list[Item]]:
        first = chain[0]
        if _merges(first):     # `a + b`, `a * b`, `concat(a, b)`: the head of its chain
            operands = [names[v] for v in first.inputs]
            infix = OPS[first.op].infix
            if infix is not None:
                return f" {infix} ".join(operands), chain[1:]
            return f"{first.op}({', '.join(operands)})", chain[1:]
        if len(first.inputs) != 1:     # a call with its tensors first: dfl(a, b, c, bins=8)
            op, _, args = first.stage.partition("(")
            values = ", ".join(names[v] for v in first.inputs)
            return f"{op}({values}, {args}" if args else f"{op}({values})", chain[1:]
        return names[first.inputs[0]], chain

    lines = []
    for chain in chains:
        text, stages = head(chain)
        parts = [text] + [it.stage for it in stages]
        body, line = parts[0], len(indent) + len(parts[0]) + 8
        for p in parts[1:]:
            if line + len(p) + 4 > LINE_WIDTH:
                body += f"\n{indent}    -> {p}"
                line = len(indent) + 7 + len(p)
            else:
                body += f" -> {p}"
                line += len(p) + 4
        v = chain[-1].key
        if chain[-1].parts:
            lhs = ", ".join(names[part_value(v, i)] for i in range(chain[-1].parts))
            lines.append(f"{indent}{lhs} = {body}")
            continue
        if condition is not None and all(it.skip for it in chain):
            body += f"\n{indent}    if {condition} else {names[chain[0].inputs[0]]}"
        if v in names and v not in inputs:
            lines.append(f"{indent}{names[v]} = {body}")
        elif v in out_set:
            lines.append(f"{indent}out {body}" if block else f"{indent}{body} -> out")
        else:
            lines.append(f"{indent}{body}")
    named_outputs = [names[v] for v in outputs if v in names]
    if named_outputs and len(named_outputs) == len(outputs):
        lines.append(f"{indent}out {', '.join(names[v] for v in outputs)}")
    return lines


# ------------------------------------------------------------------ the whole spec

def write_spec(t: Translated, network: str, header: str = "") -> str:
    taken = {name for name, _ in t.inputs} | {network}
    segs = segments(t)
    blocks = find_blocks(t, segs, taken) if segs else []
    block_defs = []
    items: list[Item] = []
    if blocks:
        starts = {}
        for b in blocks:
            for k, span in enumerate(b.instances):
                starts[span[0]] = (b, k)
        j = 0
        while j < len(segs):
            if j in starts:
                b, k = starts[j]
                a, e = b.instances[k]
                args = _call_args(b, k)
                stage = f"{b.name}({args})" if args else b.name
                prev = items[-1] if items else None
                if prev is not None and prev.call == (b.name, args) and prev.key == segs[a].start:
                    prev.repeat += 1
                    prev.key = segs[e].end
                    prev.stage = f"{stage} * {prev.repeat}"
                else:
                    items.append(Item(segs[e].end, [segs[a].start], stage, None, call=(b.name, args)))
                j = e + 1
                continue
            items += [_item(l) for l in segs[j].layers]
            j += 1
        for b in blocks:
            block_defs.append(_block_text(b, taken))
    else:
        items = [_item(l) for l in t.layers]
    lines = [header] if header else []
    for text in block_defs:
        lines += [text, ""]
    lines.append(f"network {network}() {{")
    for name, shape in t.inputs:
        lines.append(f"    input {name}: {_shape_text(shape)}")
    lines += emit_body(items, {name: name for name, _ in t.inputs}, t.outputs, False,
                       taken | {b.name for b in blocks}, output_names=t.output_names)
    lines.append("}")
    return "\n".join(lines) + "\n"


def _item(l: Layer, texts: dict | None = None, skip: bool = False) -> Item:
    return Item(l.key, l.inputs, layer_stage(l, texts), l.op, skip, parts=l.parts)


def _shape_text(shape) -> str:
    if len(shape) == 1:
        return str(shape[0])
    if len(shape) == 2:
        return f"{shape[0]}x{shape[1]}"
    return f"{shape[0]}@{shape[1]}x{shape[2]}"


def _call_args(b: Block, k: int) -> str:
    """The first parameter by position, the others by name (`unit(24, kernel=3, stride=2)`),
    those at their defaults left out."""
    args = []
    for n, p in enumerate(b.params):
        v = p.values[k]
        if p.has_default and v == p.default:
            continue
        args.append(value_text(v) if n == 0 else f"{p.name}={value_text(v)}")
    return ", ".join(args)


def _block_text(b: Block, taken: set) -> str:
    params = ", ".join(f"{p.name}={value_text(p.default)}" if p.has_default else p.name for p in b.params)
    items = []
    for i, l in enumerate(b.template):
        texts = {}
        for a in OPS[l.op].attrs:
            if (i, a.name) in b.slots:
                text = b.slots[(i, a.name)]
                texts[a.name] = None if _literal_default(l.op, a.name, text) else text
        items.append(_item(l, texts, l.key in b.skip_keys))
    body = emit_body(items, {b.start: "x"}, [b.template[-1].key], True,
                     taken | {p.name for p in b.params} | {"x"}, b.condition)
    return "\n".join([f"block {b.name}({params}) {{", "    in x", *body, "}"])


def _literal_default(op: str, name: str, text: str) -> bool:
    """Whether a slot's text is a literal equal to the op's default (written by leaving it out)."""
    from ..lang.elaborate import parse_value
    try:
        value = parse_value(text)
    except Exception:   # noqa: BLE001 -- a parameter expression, not a literal
        return False
    if isinstance(value, list):
        value = tuple(value)
    if hasattr(value, "name") and not isinstance(value, (int, float, tuple)):   # a symbol: `valid`
        value = value.name
    return _same_as_default(op, name, value)
