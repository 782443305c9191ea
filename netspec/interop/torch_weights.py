"""PyTorch state dicts matched to a spec by structure: `netspec weights`.

A state dict saved with safetensors has lost its definition order (keys are stored sorted:
`bn1` before `conv1`), so names alone cannot say which tensor is which layer, and renaming
rules differ per network. Instead:

1. The file's tensors are grouped into layers by module prefix (`layer1.0.conv1.weight` ->
   layer `layer1.0.conv1`, parameter `weight`; `num_batches_tracked` is dropped: netspec has no
   such tensor), and the prefixes into a tree of modules (`layer1` > `0` > `conv1`).
2. The spec's parameterised nodes, in graph order, are the sequence to fill. A layer pairs
   with a node when their tensors agree: same parameter names (netspec uses PyTorch's names and
   layouts: conv weight (O, I/g, kh, kw), dense (out, in)) and shapes, or, under other names,
   one shape each.
3. An order of the tree is searched for (numbered children in their numeric order, named
   children in any order, each module's layers kept together) that lays the layers along the
   nodes: a dynamic programme over each module's children, minimising what stays unpaired.
   Parallel lists (a detection head's per-level box branches `cv2.0..2` beside its class
   branches `cv3.0..2`) are also tried zipped, for a spec that builds them level by level.
   Where several orders fit equally (same-shaped siblings: `bn1`/`bn2`, `conv3`/`downsample`),
   names decide: the pairing whose last path components share most words with netspec's
   (`conv3` with `main/conv3`, `bn` read as batchnorm), then the natural order of the names.

What cannot be paired is reported: a layer whose shapes differ from the node it sits against
(same kind: another class count), layers of the file with no node, nodes with no layer.

    match = match_state_dict(graph, arrays)        # arrays: the file's tensors by name
    match.complete, match.table(), match.problems()
    weights = match.to_netspec(arrays)             # netspec's names
    state = match.to_torch(weights, template)      # template: a state dict giving the names
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..runtime.checkpoint import WeightsError, load_arrays

# PyTorch's pickled checkpoints: refused (loading them runs arbitrary code), with the way out
PICKLED = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle", ".tar")
PICKLE_HINT = ("convert it where it was made: `from safetensors.torch import save_file; "
               "save_file(model.state_dict(), 'weights.safetensors')` (safetensors is how "
               "weights are published now)")
# PyTorch's batch norms count their training steps; netspec keeps no such tensor
DROPPED = ("num_batches_tracked",)
# named children of one module searched in every order; above this many they keep their
# natural name order (the search is exponential in their number)
MAX_PERMUTED = 12
# unpaired layers the search may leave along the way beyond the two sequences' length
# difference (each costs as much as a mismatch, so an exact pairing is always preferred)
SLACK = 2
# a partial match is searched only for files within this many layers of the spec (each layer
# apart widens the search); farther apart they are different networks
MAX_APART = 16
# steps of the search before it gives up (a few seconds): a file far from the spec
MAX_STEPS = 1_000_000
# words read as one another when names break a tie
ALIASES = {"bn": "batchnorm", "norm": "batchnorm", "fc": "dense", "linear": "dense",
           "classifier": "dense", "head": "dense", "downsample": "skip", "shortcut": "skip"}
MAX_SHOWN = 8      # layers named in one message before "and N more"


class MatchError(WeightsError):
    """A state dict that does not match the spec, or cannot be read as one."""


@dataclass
class Layer:
    """One parameterised layer: a netspec node, or a module of the file (its prefix)."""

    name: str
    shapes: dict[str, tuple[int, ...]]      # parameter -> shape
    keys: dict[str, str] = field(default_factory=dict)   # parameter -> its full name
    op: str = ""                            # netspec's op; "" for the file's layers

    @property
    def shown(self) -> str:
        return self.name or "(top level)"     # a file's tensors without a module prefix

    def describe(self, order=()) -> str:
        """'weight 64x3x7x7, bias 64': its tensors, those named in `order` first."""
        names = [p for p in order if p in self.shapes] + [p for p in self.shapes if p not in order]
        return ", ".join(f"{p} {'x'.join(map(str, self.shapes[p])) or 'scalar'}" for p in names)


@dataclass
class Pair:
    ours: Layer
    theirs: Layer
    renames: dict[str, str]     # our parameter -> theirs
    exact: bool                 # shapes agree (else: the same kind of layer, other shapes)


@dataclass
class Match:
    pairs: list[Pair]                       # in netspec's order, exact and not
    ours_unmatched: list[Layer]
    theirs_unmatched: list[Layer]
    dropped: list[str]                      # the file's keys left out on purpose

    @property
    def exact(self) -> list[Pair]:
        return [p for p in self.pairs if p.exact]

    @property
    def mismatched(self) -> list[Pair]:
        return [p for p in self.pairs if not p.exact]

    @property
    def complete(self) -> bool:
        return not (self.mismatched or self.ours_unmatched or self.theirs_unmatched)

    def problems(self) -> str:
        """What keeps the match from being complete, in one line ('' when it is)."""
        parts = []
        if self.mismatched:
            parts.append(f"{len(self.mismatched)} layer(s) differ in shape: " + _some(
                f"{p.ours.name} ({p.ours.describe()}) vs {p.theirs.shown} "
                f"({p.theirs.describe(p.renames.values())})" for p in self.mismatched))
        if self.ours_unmatched:
            parts.append(f"{len(self.ours_unmatched)} layer(s) of the spec have no tensors in the "
                         "file: " + _some(f"{l.op} {l.name} ({l.describe()})" for l in self.ours_unmatched))
        if self.theirs_unmatched:
            parts.append(f"{len(self.theirs_unmatched)} layer(s) of the file fit nowhere in the "
                         "spec: " + _some(f"{l.shown} ({l.describe()})" for l in self.theirs_unmatched))
        return "; ".join(parts)

    def table(self) -> str:
        """netspec layer <- the file's prefix, one row per run of siblings on both sides
        (`stage1/bottleneck1/main/{conv1,batchnorm1} <- layer1.0.{conv1,bn1}`), then what is
        unmatched."""
        rows: list[tuple[str, str]] = []
        run: list[Pair] = []

        def flush():
            if run:
                rows.append((_folded([p.ours.name for p in run], "/"),
                             _folded([p.theirs.shown for p in run], ".")))
                run.clear()
        for pair in self.exact:
            if run and (_parent(run[-1].ours.name, "/") != _parent(pair.ours.name, "/")
                        or _parent(run[-1].theirs.name, ".") != _parent(pair.theirs.name, ".")):
                flush()
            run.append(pair)
        flush()
        for p in self.mismatched:
            rows.append((p.ours.name, f"{p.theirs.shown}   (shapes differ: {p.ours.describe()} "
                                      f"here, {p.theirs.describe(p.renames.values())} in the file)"))
        rows += [(l.name, "(nothing in the file)") for l in self.ours_unmatched]
        rows += [("(nothing in the spec)", l.shown) for l in self.theirs_unmatched]
        width = min(max([len("netspec layer")] + [len(a) for a, _ in rows]), 60)
        lines = [f"{'netspec layer':<{width}}  <- source", f"{'-' * width}  {'-' * 9}"]
        lines += [f"{a:<{width}}  <- {b}" for a, b in rows]
        return "\n".join(lines)

    def to_netspec(self, arrays: dict, dtype=np.float32) -> dict[str, np.ndarray]:
        """The paired tensors of `arrays` (the file's) under netspec's names, floating-point
        ones as `dtype` (others kept: check_weights refuses them by name)."""
        out = {}
        for p in self.exact:
            for param, theirs in p.renames.items():
                value = np.asarray(arrays[p.theirs.keys[theirs]])
                out[p.ours.keys[param]] = value.astype(dtype) if value.dtype.kind == "f" else value
        return out

    def to_torch(self, weights: dict, template: dict) -> dict[str, np.ndarray]:
        """netspec's `weights` under the names of `template` (the state dict the match was made
        against), each in the template tensor's dtype; a paired batch norm's step count, which
        netspec does not keep, as zero."""
        out = {}
        for p in self.exact:
            for param, theirs in p.renames.items():
                key = p.theirs.keys[theirs]
                out[key] = np.asarray(weights[p.ours.keys[param]]).astype(template[key].dtype)
            for dropped in DROPPED:
                key = _join(p.theirs.name, dropped)
                if key in template:
                    out[key] = np.zeros_like(template[key])
        return out


# ------------------------------------------------------------------ both directions

def from_torch(graph, arrays: dict, source, allow_partial: bool = False) -> tuple[dict, Match]:
    """(netspec's weights for `graph`, the match) from a state dict's tensors `arrays`, read
    from `source` (named in errors). A match that leaves anything unpaired is refused
    (PartialMatch) unless allow_partial, which keeps the layers that pair exactly; the values
    are checked as Model.check_weights checks them (floating point, finite)."""
    from ..model import check_weights
    from ..training.metadata import parameter_shapes
    match = match_state_dict(graph, arrays, source)
    _refuse_partial(match, graph, source, allow_partial)
    weights = match.to_netspec(arrays)
    check_weights(parameter_shapes(graph), weights, graph.name, strict=match.complete,
                  source=str(source), error=MatchError)
    return weights, match


def to_torch(graph, weights: dict, template: dict, source, names_source,
             allow_partial: bool = False) -> tuple[dict, Match]:
    """(a state dict under the names of `template`, the match): netspec's `weights` for
    `graph` (read from `source`, every parameter) laid out as the state dict `template` (read
    from `names_source`) by the same matching; partial matches as in from_torch."""
    from ..model import check_weights
    from ..training.metadata import parameter_shapes
    check_weights(parameter_shapes(graph), weights, graph.name, strict=True, source=str(source),
                  error=MatchError)
    match = match_state_dict(graph, template, names_source)
    _refuse_partial(match, graph, names_source, allow_partial)
    return match.to_torch(weights, template), match


class PartialMatch(MatchError):
    """A match that leaves layers unpaired, refused (allow_partial was not given)."""

    def __init__(self, message: str, match: Match):
        super().__init__(message)
        self.match = match


def _refuse_partial(match: Match, graph, source, allow_partial: bool) -> None:
    if not match.exact:
        raise PartialMatch(f"{source}: no layer matches {graph.name} ({match.problems()})", match)
    if not match.complete and not allow_partial:
        raise PartialMatch(f"{source} does not match {graph.name} completely: {match.problems()}",
                           match)


# ------------------------------------------------------------------ reading

def read_state_dict(path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """A state dict from .safetensors or .npz (load_arrays: no pickle); a pickled PyTorch file
    is refused with how to convert it."""
    suffix = Path(path).suffix.lower()
    if suffix in PICKLED:
        raise MatchError(f"{path}: a pickled PyTorch file ({suffix}), which netspec does not load "
                         f"(unpickling runs arbitrary code); {PICKLE_HINT}")
    try:
        return load_arrays(path)
    except WeightsError as e:
        if "unknown weight file type" in str(e):
            raise MatchError(f"{e}; for a PyTorch checkpoint, {PICKLE_HINT}") from None
        raise


def file_layers(arrays: dict) -> tuple[list[Layer], list[str]]:
    """The file's tensors grouped into layers by module prefix, and the keys dropped."""
    layers: dict[str, Layer] = {}
    dropped = []
    for key in sorted(arrays):
        prefix, _, param = key.rpartition(".")
        if param in DROPPED:
            dropped.append(key)
            continue
        layer = layers.setdefault(prefix, Layer(prefix, {}))
        layer.shapes[param] = tuple(np.shape(arrays[key]))
        layer.keys[param] = key
    return list(layers.values()), dropped


def spec_layers(graph) -> list[Layer]:
    """The graph's parameterised nodes in graph order, as layers. A node whose parameters
    are named as a submodule's (attention's `out_proj.weight`, as PyTorch's MultiheadAttention
    names them) is a layer per submodule, as the file's grouping makes it."""
    layers = []
    for node in graph.nodes():
        parts: dict[str, Layer] = {}
        for p in node.params:
            sub, _, local = p.name.rpartition(".")
            layer = parts.setdefault(sub, Layer(_join(node.name, sub), {}, op=node.op))
            layer.shapes[local] = tuple(p.shape)
            layer.keys[local] = f"{node.name}.{p.name}"
        layers += parts.values()
    return layers


# ------------------------------------------------------------------ matching

def match_state_dict(graph, arrays: dict, source="the file") -> Match:
    """Pair the layers of `arrays` (a state dict's tensors by key, read from `source`: named in
    errors) with the graph's nodes."""
    ours = spec_layers(graph)
    theirs, dropped = file_layers(arrays)
    if not theirs:
        raise MatchError(f"{source} holds no tensors to match")
    tree = _tree(theirs)
    apart = abs(len(ours) - len(theirs))
    too_far = MatchError(f"{source} holds {len(theirs)} layers and {graph.name} {len(ours)}, which do "
                         "not line up (is it the same architecture, at the same --set values?)")
    if apart > MAX_APART:
        raise too_far
    slack = apart + SLACK
    # an exact pairing first (its search dies at the first layer out of place: fast), then
    # one leaving a few layers unpaired, then any
    results = {}
    exact = _Search(ours, 0, 0)
    for most in ([0] if not apart else []) + [slack, len(ours) + len(theirs)]:
        try:
            results = (exact if not most else _Search(ours, slack, most, exact, len(theirs))).fit(tree, 0)
        except _TooFar:
            raise too_far from None
        results = {end: v for end, v in results.items() if v[0] + len(ours) - end <= most}
        if results:
            break
    if not results:
        raise too_far
    # nodes after the last layer placed stay unpaired
    end, (cost, _, _, plan) = min(results.items(), key=lambda kv: (kv[1][0] + len(ours) - kv[0],
                                                                   kv[1][1], kv[1][2]))
    pairs, theirs_unmatched = {}, []
    for item in _flatten(plan):
        if item[0] == "pair":
            _, layer, pos, renames, exact = item
            pairs[pos] = Pair(ours[pos], layer, renames, exact)
        else:
            theirs_unmatched.append(item[1])
    return Match([pairs[pos] for pos in sorted(pairs)],
                 [l for i, l in enumerate(ours) if i not in pairs], theirs_unmatched, dropped)


@dataclass
class _Module:
    name: str
    children: dict[str, "_Module"] = field(default_factory=dict)
    layer: Layer | None = None      # the tensors held by the module itself
    size: int = 0                   # layers below it, itself included
    # the same layers with parallel lists zipped (_zipped), tried besides the module itself
    zipped: "_Module | None" = None

    def ordered(self):
        """(children in a fixed order, children whose order is searched): numbered children
        in numeric order; named ones searched unless there are too many."""
        kids = sorted(self.children.items(), key=lambda kv: _natural(kv[0]))
        named = [m for k, m in kids if not k.isdigit()]
        if len(named) > MAX_PERMUTED:
            return [m for _, m in kids], []
        return [m for k, m in kids if k.isdigit()], named


def _tree(layers: list[Layer]) -> _Module:
    root = _Module("")
    for layer in layers:
        node = root
        for part in [p for p in re.split(r"[./]", layer.name) if p] if layer.name else []:
            node = node.children.setdefault(part, _Module(_join(node.name, part)))
        node.layer = layer

    def count(m):
        if m.layer is not None and m.children:   # a module's own tensors: one more child
            m.children[""] = _Module(m.name, layer=m.layer)
            m.layer = None
        m.size = (m.layer is not None) + sum(count(c) for c in m.children.values())
        m.zipped = _zipped(m)
        return m.size
    count(root)
    return root


def _zipped(module: _Module) -> "_Module | None":
    """Parallel lists zipped: a module holding two or more numbered lists of one length (a
    detection head's per-level box branches in `cv2.0..2` and class branches in `cv3.0..2`)
    rearranged as one numbered child per index holding each list's entry (`0`: cv2.0 and
    cv3.0), for a spec that builds them level by level. None when it has no such lists."""
    lists = {k: m for k, m in module.children.items()
             if len(m.children) > 1 and all(c.isdigit() for c in m.children)}
    by_length: dict[int, list[str]] = {}
    for k, m in lists.items():
        by_length.setdefault(len(m.children), []).append(k)
    parallel = max(by_length.values(), key=len, default=[])
    if len(parallel) < 2 or len(parallel) > MAX_PERMUTED:
        return None
    length = len(module.children[parallel[0]].children)
    if any(sorted(module.children[k].children) != sorted(map(str, range(length))) for k in parallel):
        return None
    alt = _Module(module.name, {k: m for k, m in module.children.items() if k not in parallel},
                  size=module.size)
    for i in range(length):
        entries = {k: module.children[k].children[str(i)] for k in parallel}
        alt.children[str(i)] = _Module(f"{module.name}[{i}]", entries,
                                       size=sum(m.size for m in entries.values()))
    return alt


class _TooFar(Exception):
    """The search ran past MAX_STEPS."""


class _Search:
    """The dynamic programme: fit(module, pos) -> {end: (cost, -name score, order, plan)}, the
    best way to lay the module's layers along ours[pos:end]. cost counts the layers left
    unpaired on either side and the pairs whose shapes differ; plans are ropes (nested
    tuples) flattened at the end."""

    def __init__(self, ours: list[Layer], slack: int, most: int, exact: "_Search | None" = None,
                 theirs: int = 0):
        self.ours = ours
        self.slack = slack
        # how far the nodes reached may run ahead of the layers placed (nodes left unpaired),
        # and behind (layers left unpaired): the length difference one way, SLACK the other
        more_ours = len(ours) > theirs
        self.window = (slack if more_ours else min(slack, SLACK), min(slack, SLACK) if more_ours else slack)
        self.most = most            # the largest cost kept
        # with most > 0: the exact search, which settles every module that fits somewhere
        self.exact = exact
        self.steps = 0
        self.memo: dict = {}
        self.pair_memo: dict = {}

    def fit(self, module: _Module, pos: int) -> dict:
        """The module as it is, or with its parallel lists zipped where that fits better."""
        results = self._fit(module, pos)
        if module.zipped is not None:
            results = dict(results)
            for end, value in self._fit(module.zipped, pos).items():
                _keep(results, end, value)
        return results

    def _fit(self, module: _Module, pos: int) -> dict:
        key = (id(module), pos)
        if key not in self.memo:
            if not module.children:
                self.memo[key] = self._fit_leaf(module.layer, pos)
            elif self.exact is None:
                self.memo[key] = self._fit_children(module, pos)
            else:
                self.memo[key] = self._fit_settled(module, pos)
        return self.memo[key]

    def _fit_settled(self, module: _Module, pos: int) -> dict:
        """A module that fits exactly here is taken as it fits; one that fits exactly a few
        nodes away is left whole here (the parent reaches it there past unpaired nodes);
        only a module that fits nowhere near is searched layer by layer, unpaired ones
        allowed: the search stays on the few modules that differ."""
        here = self.exact.fit(module, pos)
        if here:
            return here
        near = range(max(0, pos - self.slack), min(len(self.ours), pos + self.slack) + 1)
        if any(self.exact.fit(module, p) for p in near):
            return {pos: (module.size, 0, (), _unpaired(module))}
        return self._fit_children(module, pos)

    def _fit_leaf(self, layer: Layer, pos: int) -> dict:
        results = {pos: (1, _late(len(self.ours), pos), (), ("theirs", layer))} if self.most else {}
        if pos < len(self.ours):
            paired = self._pair(layer, pos)
            if paired is not None and (paired[1] or self.most):
                renames, exact, score = paired
                results[pos + 1] = (0 if exact else 1, -score, (), ("pair", layer, pos, renames, exact))
        return results

    def _pair(self, layer: Layer, pos: int):
        key = (id(layer), pos)
        if key not in self.pair_memo:
            self.pair_memo[key] = _pairing(self.ours[pos], layer)
        return self.pair_memo[key]

    def _fit_children(self, module: _Module, start: int) -> dict:
        fixed, free = module.ordered()
        total = len(fixed) + len(free)
        n = len(self.ours)
        ahead, behind = self.window
        consumed: dict = {}         # layers of the children used, by (mask, k)

        def done(mask, k):
            if (mask, k) not in consumed:
                consumed[(mask, k)] = (sum(m.size for m in fixed[:k])
                                       + sum(m.size for i, m in enumerate(free) if mask >> i & 1))
            return consumed[(mask, k)]
        # states by (children used: bitmask of the free ones, how many fixed ones, position)
        layer = {(0, 0, start): (0, 0, (), None)}
        for _ in range(total + 1):
            # ours[pos] left unpaired between two children, chained in position order
            by_pos: dict[int, list] = {}
            for state in layer:
                by_pos.setdefault(state[2], []).append(state)
            for pos in range(min(by_pos), n):
                for mask, k, _ in by_pos.get(pos, ()):
                    cost, score, order, plan = layer[(mask, k, pos)]
                    if cost < self.most and pos + 1 - start - done(mask, k) <= ahead:
                        if (mask, k, pos + 1) not in layer:
                            by_pos.setdefault(pos + 1, []).append((mask, k, pos + 1))
                        _keep(layer, (mask, k, pos + 1), (cost + 1, score + _late(n, pos), order, plan))
            nxt: dict = {}
            for (mask, k, pos), (cost, score, order, plan) in layer.items():
                offset = start + done(mask, k)
                choices = [(fixed[k], mask, k + 1, (0, k))] if k < len(fixed) else []
                choices += [(m, mask | 1 << i, k, (1, i)) for i, m in enumerate(free) if not mask >> i & 1]
                for child, new_mask, new_k, tag in choices:
                    self.steps += 1
                    if self.steps > MAX_STEPS:
                        raise _TooFar
                    for end, (c, s, _, p) in self.fit(child, pos).items():
                        if (not -behind <= end - offset - child.size <= ahead) or cost + c > self.most:
                            continue
                        _keep(nxt, (new_mask, new_k, end), (cost + c, score + s, order + (tag,),
                                                            (plan, p)))
            if not nxt:
                break
            layer = nxt
        full = (1 << len(free)) - 1
        return {pos: value for (mask, k, pos), value in layer.items()
                if mask == full and k == len(fixed)}


def _late(n: int, pos: int) -> float:
    """What leaving a layer unpaired at `pos` adds to the score: a little less the later it is,
    so that of two equal matches the one pairing from the start wins (a file with extra layers
    at its end: those are the ones left)."""
    return (n - pos) * 1e-7


def _unpaired(module: _Module):
    """The plan leaving every layer of `module` unpaired."""
    if not module.children:
        return ("theirs", module.layer)
    plan = None
    for child in module.children.values():
        plan = (plan, _unpaired(child))
    return plan


def _consumed(mask: int, k: int, fixed, free) -> int:
    return sum(m.size for m in fixed[:k]) + sum(m.size for i, m in enumerate(free) if mask >> i & 1)


def _keep(states: dict, key, value) -> None:
    """Keep the better of two ways to the same state: fewer unpaired, then the better name
    score, then the children's natural order."""
    old = states.get(key)
    if old is None or value[:3] < old[:3]:
        states[key] = value


def _pairing(ours: Layer, theirs: Layer):
    """(our parameter -> theirs, shapes agree, name score) when the two layers are the same
    kind of layer, else None. Same parameter names with the same number of dimensions each;
    or other names with a shape each that pairs them one to one."""
    if set(ours.shapes) == set(theirs.shapes):
        if any(len(ours.shapes[p]) != len(theirs.shapes[p]) for p in ours.shapes):
            return None
        exact = all(ours.shapes[p] == theirs.shapes[p] for p in ours.shapes)
        return {p: p for p in ours.shapes}, exact, _name_score(ours.name, theirs.name)
    mine, other = list(ours.shapes.values()), list(theirs.shapes.values())
    if (len(mine) == len(other) and len(set(mine)) == len(mine) and set(mine) == set(other)):
        by_shape = {s: p for p, s in theirs.shapes.items()}
        return ({p: by_shape[s] for p, s in ours.shapes.items()}, True,
                _name_score(ours.name, theirs.name))
    return None


def _words(name: str, sep: str) -> set[str]:
    """The words of a name's last two path components, aliases read as one: each word, and
    each word with the number after it ('bn1': batchnorm, batchnorm1); bare numbers (list
    indices, which count differently on each side) are no words."""
    words = set()
    for part in name.lower().split(sep)[-2:]:
        for word, number in re.findall(r"([a-z]+)(\d*)", part):
            word = ALIASES.get(word, word)
            words |= {word, word + number}
    return words


def _name_score(ours: str, theirs: str) -> int:
    """Words shared by the last two path components of the two names."""
    return len(_words(ours, "/") & _words(theirs, "."))


def _flatten(plan) -> list:
    out, stack = [], [plan]
    while stack:
        p = stack.pop()
        if p is None:
            continue
        if isinstance(p[0], str):
            out.append(p)
        else:
            stack.append(p[1])
            stack.append(p[0])
    return out


# ------------------------------------------------------------------ text

def _natural(name: str):
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.findall(r"\d+|\D+", name))


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _parent(name: str, sep: str) -> str:
    return name.rpartition(sep)[0]


def _folded(names: list[str], sep: str) -> str:
    if len(names) == 1:
        return names[0]
    parent = _parent(names[0], sep)
    tails = [n.rpartition(sep)[2] for n in names]
    return (f"{parent}{sep}" if parent else "") + "{" + ",".join(tails) + "}"


def _some(items) -> str:
    items = list(items)
    shown = ", ".join(items[:MAX_SHOWN])
    return shown + (f" and {len(items) - MAX_SHOWN} more" if len(items) > MAX_SHOWN else "")
