"""Architecture diagrams with Graphviz: op families coloured, blocks as clusters.

`to_dot(graph, depth=N)` folds every block deeper than N levels into one box
(the block's name, arguments, output shape and parameter count) and, with
`fold_repeats`, draws a run of identical boxes once as `residual(64) x3`.
Main-path edges weigh more than skip edges so residual paths stay straight.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import graphviz

from ..errors import SpecError
from ..graph.graph import Graph, producer
from ..ops import OPS, OpKind, format_parts, format_shape

FORMATS = ("svg", "png", "pdf", "dot")

# Graphviz's lexer refuses any quoted string over 16 KB (a label, a name, a tooltip), and a box's
# text is for reading: each line of it is cut at MAX_LINE_CHARS, each node or cluster name over
# MAX_ID_CHARS is replaced by a short id derived from it (the tooltip keeps the name's start).
# Even in 4-byte UTF-8 with escapes, both stay far below 16 KB.
MAX_LINE_CHARS = 200
MAX_ID_CHARS = 200
# dot lays out 20,000 boxes in a chain in seconds, but its time grows much faster than the box
# count on wide graphs (100 parallel chains of 100 boxes: over a minute) and it crashes on some
# of 50,000 (Graphviz 2.43); no diagram of thousands of boxes can be read anyway.
MAX_DIAGRAM_BOXES = 5_000
DOT_TIMEOUT_S = 120
# a PNG's resolution: Graphviz's own 96 dpi gave small, blurry images on today's screens
DEFAULT_PNG_DPI = 192
MAX_PNG_DPI = 600    # the pixels grow with its square: a deep network at 600 dpi is already huge

# fill colours by op family (ColorBrewer pastels, readable with black text), one per family
FAMILY_COLOURS = {
    OpKind.INPUT: "#e0e0e0",
    OpKind.CONV: "#a6cee3",
    OpKind.POOL: "#b2df8a",
    OpKind.PAD: "#ccebc5",
    OpKind.NORM: "#ffffb3",
    OpKind.ACTIVATION: "#fdbf6f",
    OpKind.MERGE: "#cab2d6",
    OpKind.SPLIT: "#e7d4e8",
    OpKind.DENSE: "#fb9a99",
    OpKind.RESHAPE: "#ffed6f",
    OpKind.RESAMPLE: "#8dd3c7",
    OpKind.REGULARIZE: "#bc80bd",
    OpKind.IDENTITY: "#ffffff",
    OpKind.TOKENS: "#d9f0a3",
    OpKind.ATTENTION: "#fccde5",
}
FAMILY_NAMES = {
    OpKind.INPUT: "input", OpKind.CONV: "convolution", OpKind.POOL: "pooling",
    OpKind.PAD: "padding", OpKind.NORM: "normalisation", OpKind.ACTIVATION: "activation",
    OpKind.MERGE: "merge", OpKind.SPLIT: "split", OpKind.DENSE: "dense", OpKind.RESHAPE: "reshape",
    OpKind.RESAMPLE: "resampling", OpKind.REGULARIZE: "dropout",
    OpKind.IDENTITY: "identity", OpKind.TOKENS: "tokens", OpKind.ATTENTION: "attention",
}
BLOCK_COLOUR = "#fdd0a2"
CLUSTER_COLOURS = ("#f7f7fb", "#eef3f8", "#f4f8ee", "#fbf5ee")


@dataclass
class Box:
    """One drawn node: a layer, or a folded block (possibly a folded run of them)."""
    id: str
    label: str
    fill: str
    cluster: tuple[str, ...]       # enclosing block paths, outermost first
    members: list[str] = field(default_factory=list)
    block_key: tuple | None = None  # (block name, args) for folding repeats
    shape: tuple = ()
    parts: tuple = ()              # a split's: its outputs' shapes, shown instead of `shape`
    params: int = 0
    repeat: int = 1
    args_vary: bool = False        # a folded run whose blocks' arguments differ
    title: str = ""
    head: str = ""                 # a layer's first line: 'c1: conv 5x5, 6'
    acts: list[str] = field(default_factory=list)  # activations drawn inside the box


PAGE_BOXES = 40     # more boxes than this at --depth N: fold the open level's repeated units


class DiagramError(SpecError):
    """Graphviz cannot draw this diagram (too many boxes, dot failed or took too long)."""


def to_dot(graph: Graph, depth: int | None = None, rankdir: str = "TB",
           edge_shapes: bool = False, fold_repeats: bool = True, legend: bool = True,
           max_boxes: int | None = None) -> graphviz.Digraph:
    """The diagram's Graphviz source; with `max_boxes`, a DiagramError past that many boxes."""
    def layout(repeats=frozenset()):
        boxes, owner = _boxes(graph, depth, repeats)
        edges = _edges(graph, owner)
        if fold_repeats and depth is not None:
            boxes, edges = _fold_runs(boxes, edges)
            for box in boxes.values():
                if box.block_key is not None:
                    box.label = _block_label(graph, box)
        return boxes, edges

    boxes, edges = layout()
    if fold_repeats and depth and len(boxes) > PAGE_BOXES:
        # many units at the open level (ConvNeXt's 18 blocks, EfficientNet's 16): each block's
        # first instance open, the others folded and joined into 'x n' boxes
        shorter = layout(_repeats(graph, depth))
        boxes, edges = shorter if len(shorter[0]) < len(boxes) else (boxes, edges)
    if max_boxes is not None and len(boxes) > max_boxes:
        raise DiagramError(
            f"the diagram of {graph.name} would have {len(boxes):,} boxes, more than Graphviz can "
            f"lay out in reasonable time (the limit is {max_boxes:,})",
            hint=("fold blocks with --depth 0 (or a small --depth), or render" if graph.blocks
                  else "render") + " to a .dot file and lay it out with another tool")

    dot = graphviz.Digraph(_dot_id(graph.name), graph_attr={
        "rankdir": rankdir, "fontname": "Helvetica", "fontsize": "12", "nodesep": "0.25",
        "ranksep": "0.3", "newrank": "true", "ordering": "out", "label": _clip(graph.name), "labelloc": "t",
        "fontcolor": "#333333"},
        node_attr={"shape": "box", "style": "rounded,filled", "fontname": "Helvetica",
                   "fontsize": "10", "margin": "0.08,0.04", "penwidth": "0.8"},
        edge_attr={"arrowsize": "0.6", "color": "#555555", "fontname": "Helvetica", "fontsize": "8"})

    # clusters: a tree of block paths, filled bottom-up
    tree: dict[tuple, list[Box]] = {}
    for b in boxes.values():
        tree.setdefault(b.cluster, []).append(b)
    children: dict[tuple, set] = {}
    for path in list(tree):
        for i in range(len(path)):
            children.setdefault(path[:i], set()).add(path[: i + 1])

    def emit(g, path: tuple):
        for b in tree.get(path, []):
            g.node(_dot_id(b.id), _clip(b.label), fillcolor=b.fill, tooltip=_clip(b.title or b.id))
        for child in sorted(children.get(path, ()), key=_first_member(boxes, tree, children)):
            inst = graph.blocks.get(child[-1])
            name = child[-1].split("/")[-1]
            label = f"{name}: {inst.block}{inst.args_text(keywords=False)}" if inst else name
            with g.subgraph(name=_dot_id(f"cluster_{child[-1]}")) as sub:
                sub.attr(label=_clip(label), style="rounded,filled", color="#9999bb",
                         fillcolor=CLUSTER_COLOURS[(len(child) - 1) % len(CLUSTER_COLOURS)],
                         fontsize="10", labeljust="l", penwidth="0.8")
                emit(sub, child)

    emit(dot, ())
    for (u, v), (shape, weight) in edges.items():
        attrs = {"weight": str(weight)}
        if edge_shapes:
            attrs["label"] = " " + format_shape(shape)
        if weight == 1:  # a skip connection: lighter, and free to bend around the main path
            attrs["color"] = "#8888aa"
        dot.edge(_dot_id(u), _dot_id(v), **attrs)
    if legend:
        _legend(dot, graph, boxes)
    return dot


def render(graph: Graph, out: str | os.PathLike, depth: int | None = None, rankdir: str = "TB",
           edge_shapes: bool = False, fold_repeats: bool = True, dpi: int = DEFAULT_PNG_DPI) -> Path:
    """Draw `graph` into `out` (.svg, .png, .pdf or .dot), replacing it atomically; a .png at
    `dpi` dots per inch."""
    out = Path(out)
    fmt = out.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise SpecError(f"cannot render to '{out.name}': the file name must end in "
                        + ", ".join("." + f for f in FORMATS))
    # a .dot file is written without Graphviz, so only a drawing has a box limit
    dot = to_dot(graph, depth, rankdir, edge_shapes, fold_repeats,
                 max_boxes=None if fmt == "dot" else MAX_DIAGRAM_BOXES)
    data = dot.source.encode() if fmt == "dot" else pipe(dot, fmt, dpi=dpi if fmt == "png" else None)
    from ..outdirs import write_atomic
    write_atomic(out, data)
    return out


def svg_or_source(graph: Graph, depth: int | None = None) -> tuple[str, str, SpecError | None]:
    """The diagram as ('svg', drawing, None), or as ('dot', its source, why) when Graphviz cannot
    draw it: `dot` missing, more than MAX_DIAGRAM_BOXES boxes, or dot failing."""
    try:
        dot = to_dot(graph, depth, max_boxes=MAX_DIAGRAM_BOXES)
        return "svg", pipe(dot, "svg").decode("utf-8"), None
    except SpecError as e:
        return "dot", to_dot(graph, depth).source, e


def page_depth(graph: Graph) -> int | None:
    """The deepest view of `graph` that fits a page (PAGE_BOXES boxes): every layer (None) if
    that fits, else the deepest --depth that does, else 0 (each top-level block one box).
    A notebook draws a network at this depth."""
    if not graph.blocks:
        return None
    nesting = max(len(graph.enclosing_blocks(path + "/_")) for path in graph.blocks)
    for depth in (None, *range(nesting - 1, 0, -1)):
        try:
            to_dot(graph, depth, max_boxes=PAGE_BOXES)
            return depth
        except DiagramError:
            continue
    return 0


def pipe(dot: graphviz.Digraph, fmt: str, timeout: float = DOT_TIMEOUT_S, dpi: int | None = None) -> bytes:
    """Run Graphviz's dot on the source: the drawing, or a DiagramError with dot's own message.

    dot runs through subprocess.run rather than graphviz's pipe: that one writes the source
    line by line, so a dot that stops reading (a syntax error, a crash) ends in a broken pipe
    that hides dot's message; and it has no timeout.
    """
    try:
        proc = subprocess.run(["dot", f"-T{fmt}", *([f"-Gdpi={dpi}"] if dpi else [])], input=dot.source.encode("utf-8"),
                              capture_output=True, timeout=timeout)
    except FileNotFoundError:
        raise SpecError("Graphviz's `dot` program was not found",
                        hint="install Graphviz: `apt-get install graphviz` (Debian/Ubuntu), "
                             "`brew install graphviz` (macOS); or write a .dot file instead") from None
    except subprocess.TimeoutExpired:
        raise DiagramError(f"Graphviz's dot did not finish laying out the diagram within {timeout:g} s",
                           hint=_DRAW_LESS) from None
    said = proc.stderr.decode("utf-8", errors="replace").strip()
    if proc.returncode != 0:
        if proc.returncode < 0:
            said = f"dot was killed by signal {-proc.returncode}" + (f" after: {said}" if said else "")
        raise DiagramError(f"Graphviz's dot failed: {_clip_text(said, 1000) or f'exit status {proc.returncode}'}",
                           hint=_DRAW_LESS)
    if said:  # warnings, as Graphviz prints them
        print(_clip_text(said, 2000), file=sys.stderr)
    return proc.stdout


_DRAW_LESS = ("draw fewer boxes (--depth 0 folds each block into one), or render to a .dot file "
              "and lay it out with another tool")


def _clip_text(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _clip(label: str) -> str:
    """A label with each line cut at MAX_LINE_CHARS (Graphviz refuses strings over 16 KB)."""
    return "\n".join(_clip_text(line, MAX_LINE_CHARS) for line in label.split("\n"))


def _dot_id(name: str) -> str:
    """A node or cluster name for the source: itself, or a short stable id if it is too long."""
    if len(name) <= MAX_ID_CHARS:
        return name
    return f"{name[:40]}~{hashlib.sha256(name.encode('utf-8')).hexdigest()[:16]}"


# ------------------------------------------------------------------ building boxes

def _repeats(graph: Graph, depth: int) -> set[str]:
    """The block instances at the deepest level `depth` opens whose block was used before in
    the same enclosing one: folded where the page would be too long, the block's first instance
    staying open to show what it holds."""
    parents = {path: graph.enclosing_blocks(path + "/_")[:-1] for path in graph.blocks}
    seen: set[tuple] = set()
    repeats = set()
    for path, inst in graph.blocks.items():
        if len(parents[path]) == depth - 1:
            if (parents[path], inst.block) in seen:
                repeats.add(path)
            seen.add((parents[path], inst.block))
    return repeats


def _boxes(graph: Graph, depth: int | None, repeats: frozenset[str] = frozenset()):
    """The boxes at `depth`, and each node's box; the block instances in `repeats` folded."""
    boxes: dict[str, Box] = {}
    owner: dict[str, str] = {}
    for node in graph.nodes():
        blocks = graph.enclosing_blocks(node.name)
        level = next((i for i, b in enumerate(blocks) if b in repeats), None)
        if level is None and depth is not None and len(blocks) > depth:
            level = depth
        if level is not None:
            path = blocks[level]
            box = boxes.get(path)
            if box is None:
                inst = graph.blocks[path]
                box = boxes[path] = Box(path, "", BLOCK_COLOUR, blocks[:level],
                                        block_key=(inst.block, tuple(sorted(inst.args.items()))))
            box.members.append(node.name)
            box.params += node.param_count
            output = graph.blocks[path].output
            if node.name == producer(output):
                box.shape = graph.shape_of(output)
            elif not box.shape:
                box.shape = node.shape
            owner[node.name] = path
            continue
        op = OPS[node.op]
        prev = owner.get(producer(node.inputs[0])) if len(node.inputs) == 1 else None
        if (op.kind is OpKind.ACTIVATION and prev in boxes and boxes[prev].block_key is None
                and boxes[prev].cluster == blocks and len(graph.consumers(node.inputs[0])) == 1
                and graph.producer(node.inputs[0]).op != "input"
                and not graph.producer(node.inputs[0]).parts):
            # an activation right after its only producer is drawn inside the producer's box
            box = boxes[prev]
            box.acts.append(node.op)
            box.members.append(node.name)
            owner[node.name] = prev
            continue
        detail = op.describe(node.attrs)
        head = f"{node.label}: {node.op}" if node.label and node.label != node.op else node.op
        if node.op == "input":
            head, detail = node.name, ""
        head += f" {detail}" if detail else ""
        boxes[node.name] = Box(node.name, "", FAMILY_COLOURS[op.kind], blocks, [node.name],
                               shape=node.shape, parts=node.parts, params=node.param_count,
                               title=f"{node.name} ({node.pos})" if node.pos else node.name, head=head)
        owner[node.name] = node.name
    for box in boxes.values():
        box.label = (_block_label(graph, box) if box.block_key is not None
                     else _layer_label(box.head, box.acts, format_parts(box.parts) if box.parts
                                  else format_shape(box.shape)))
    return boxes, owner


def _layer_label(head: str, acts: list[str], shape: str) -> str:
    """'c1: conv 5x5, 6 + tanh' over the shape (a split's: its parts', '3@4x4, 3@4x4'); a run
    of one op is counted: 'relu x20000'."""
    runs: list[list] = []
    for text in [head, *acts]:
        if runs and runs[-1][0] == text:
            runs[-1][1] += 1
        else:
            runs.append([text, 1])
    ops = " + ".join(text if n == 1 else f"{text} x{n}" for text, n in runs)
    return f"{ops}\n{shape}"


def _block_label(graph: Graph, box: Box) -> str:
    inst = graph.blocks[box.id]
    call = f"{inst.block}(…)" if box.args_vary else f"{inst.block}{inst.args_text(keywords=False)}"
    head = f"{call} x{box.repeat}" if box.repeat > 1 else f"{box.id.split('/')[-1]}: {call}"
    return f"{head}\n{format_shape(box.shape)} · {box.params:,} params"


def _edges(graph: Graph, owner: dict[str, str]) -> dict:
    """Edges between boxes: (u, v) -> (shape, weight). An elementwise merge (a residual add) has
    one main path, its first input, which the others join; a concat's inputs all are main."""
    edges: dict = {}
    for node in graph.nodes():
        v = owner[node.name]
        for slot, src in enumerate(node.inputs):
            u = owner[producer(src)]
            if u == v:
                continue
            main = slot == 0 or not OPS[node.op].traits.elementwise
            weight = 10 if main else 1
            old = edges.get((u, v))
            edges[(u, v)] = (graph.shape_of(src), max(weight, old[1]) if old else weight)
    return edges


def _fold_runs(boxes: dict[str, Box], edges: dict):
    """Draw a chain of like block boxes as one 'x n' box: the same block with the same
    arguments, or with others (ConvNeXt's blocks differ in their drop-path rate) where each
    keeps the shape and has as many parameters as the first."""
    outs: dict[str, list] = {}
    ins: dict[str, list] = {}
    for (u, v) in edges:
        outs.setdefault(u, []).append(v)
        ins.setdefault(v, []).append(u)
    merged: dict[str, str] = {}
    for bid in list(boxes):
        box = boxes.get(bid)
        if box is None or box.block_key is None or bid in merged:
            continue
        while True:
            nxt = outs.get(bid, [])
            if len(nxt) != 1:
                break
            cand = boxes.get(nxt[0])
            if (cand is None or cand.block_key is None or cand.block_key[0] != box.block_key[0]
                    or ins.get(nxt[0]) != [bid] or cand.cluster != box.cluster):
                break
            like = cand.shape == box.shape and cand.params * box.repeat == box.params
            if cand.block_key != box.block_key and not like:
                break
            box.args_vary |= cand.block_key != box.block_key
            # absorb cand into box: its outgoing edges now leave box
            box.repeat += 1
            box.members += cand.members
            box.shape = cand.shape
            box.params += cand.params
            merged[cand.id] = box.id
            del boxes[cand.id]
            new_edges = {}
            for (u, v), val in edges.items():
                if (u, v) == (bid, cand.id):
                    continue
                u2 = box.id if u == cand.id else u
                new_edges[(u2, v)] = val
            edges = new_edges
            outs[bid] = outs.pop(cand.id, [])
            for v in outs[bid]:
                ins[v] = [bid if x == cand.id else x for x in ins.get(v, [])]
    return boxes, edges


def _legend(dot: graphviz.Digraph, graph: Graph, boxes: dict[str, Box]) -> None:
    kinds = []
    for node in graph.nodes():
        k = OPS[node.op].kind
        if k not in kinds and any(b.fill == FAMILY_COLOURS[k] for b in boxes.values()):
            kinds.append(k)
    has_blocks = any(b.block_key is not None for b in boxes.values())
    entries = [(FAMILY_NAMES[k], FAMILY_COLOURS[k]) for k in kinds]
    if has_blocks:
        entries.append(("folded block", BLOCK_COLOUR))
    # one compact table node, so the legend does not stretch along the graph's ranks
    rows = "".join(f'<TR><TD BGCOLOR="{colour}" WIDTH="14"> </TD><TD ALIGN="LEFT">{name}</TD></TR>'
                   for name, colour in entries)
    dot.node("legend", f'<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="2">'
                       f'<TR><TD COLSPAN="2"><B>legend</B></TD></TR>{rows}</TABLE>>',
             shape="box", style="rounded", color="#bbbbbb", fontsize="8")


def _first_member(boxes, tree, children):
    order = {b.id: i for i, b in enumerate(boxes.values())}

    def key(path):
        stack = [path]
        best = len(order)
        while stack:
            p = stack.pop()
            for b in tree.get(p, []):
                best = min(best, order[b.id])
            stack.extend(children.get(p, ()))
        return best
    return key
