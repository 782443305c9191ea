"""AST -> Graph: parameters bound, blocks expanded, repeats unrolled, shapes checked.

The elaborator is the expression evaluator (evaluate.py) that also applies layers: every op
application adds a node whose shape is inferred at once, so shape queries (`x.channels`) and
compile-time conditions see real shapes, and errors point at the spec line. Its steps, repeats
and the network's size are counted against the limits of limits.py. parse_value and
parse_setting read a value given on the command line as the language reads it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from . import ast as A
from ..errors import AttrError, OverrideError, Pos, ShapeError, SpecError, clip, did_you_mean
from ..graph.graph import BlockInstance, Graph, Node, part_ref, producer
from ..ops import OPS, Attrs, Param, format_shape
from .evaluate import Binding, Evaluator, Scope, pos_of
from .limits import BLOCK_CALL_STEPS, MAX_BLOCK_DEPTH, MAX_REPEAT, Work
from .loader import Spec
from .parser import KEYWORDS, recursion_room, suspended_gc
from .values import Symbol, Tensor, attr_value, has_tensor, plain, show
from .values import tensors_of as _tensors


DISCARD = "_"    # `a, _ = split(x, 2)`: the name that takes a value and names nothing


@dataclass
class _Frame:
    """A block call running now: the block, its instance's path and where it was called."""
    block: str
    instance: str
    pos: Pos | None


# ------------------------------------------------------------------ entry point

def elaborate(spec: Spec, network: str | None = None, overrides: dict | None = None,
              input_shapes: dict | None = None) -> Graph:
    """Build the checked graph of one network of `spec`.

    overrides: network parameters by name (values already parsed, see parse_value);
    input_shapes: input name (or None for the only input) -> shape tuple.
    """
    # suspended_gc: a large graph makes the collector re-walk it for nothing
    with suspended_gc(), recursion_room():
        return _Elaborator(spec).run(spec.network(network), overrides or {}, input_shapes or {})


def _merged(stack: list[dict]) -> dict | None:
    """The l1/l2 penalties in force: each key from the innermost call that sets it."""
    out = {}
    for d in stack:
        out.update(d)
    return out or None


class _Elaborator(Evaluator):
    def __init__(self, spec: Spec):
        self.spec = spec
        self.graph: Graph | None = None
        self.frames: list[_Frame] = []   # the block calls running now, outermost first
        super().__init__(Work(self.frames))
        self.frozen = 0               # > 0 inside `trainable=false`
        self.penalties: list[dict] = []  # `l1=` / `l2=` of the enclosing calls, innermost last
        self.section_pos: dict[str, Pos] = {}     # where the train and detect sections begin
        self.naming: list[str] = []   # sub-scopes from assignments (`main = ...`)
        self.counters: dict[str, dict[str, int]] = {}
        self.group_scopes: set[str] = set()   # paths of labelled groups (`g: (...)`)

    def is_layer(self, name: str) -> bool:
        return name in OPS or name in self.spec.blocks

    def apply_infix(self, op, tensors: list, pos: Pos | None):
        return self.apply_op(op.name, tensors, [], {}, None, pos, {})

    # ---------------------------------------------------------------- network
    def run(self, net: A.NetworkDef, overrides: dict, input_shapes: dict) -> Graph:
        g = self.graph = Graph(net.name)
        g.source_file = self.spec.main
        scope = Scope("network", net.name)
        known = {p.name for p in net.params}
        for key in overrides:
            if key not in known:
                raise OverrideError(f"network '{net.name}' has no parameter '{key}'", net.pos,
                                hint=did_you_mean(key, known) or
                                (f"its parameters are: {', '.join(sorted(known))}" if known
                                 else "it takes no parameters"))
        self.bind_params(net.params, overrides, scope, lambda p: SpecError(
            f"network parameter '{p.name}' has no default and was not set", p.pos,
            hint=f"give a default ({p.name}=...) or pass --set {p.name}=..."))
        g.params.update((p.name, scope.vars[p.name].value) for p in net.params)
        self.input_shapes = dict(input_shapes)
        self.exec_body(net.body, scope, net.pos)
        unknown_inputs = set(self.input_shapes) - {None} - set(g.inputs)
        if unknown_inputs:
            raise OverrideError(f"network '{net.name}' has no input named '{sorted(unknown_inputs)[0]}'",
                            net.pos, hint=f"its inputs are: {', '.join(g.inputs) or 'none'}")
        if not g.inputs:
            raise SpecError(f"network '{net.name}' has no input", net.pos,
                            hint="declare one: input image: 3@224x224")
        if not scope.outputs:
            raise SpecError(f"network '{net.name}' has no output", net.pos,
                            hint="end a chain with `-> out`, or write `out value`")
        seen = set()
        for t in scope.outputs:
            if t.node not in seen:
                g.outputs.append(t.node)
                seen.add(t.node)
        self.check_all_reach_outputs(g)
        return g

    def bind_params(self, params: list[A.Param], given: dict, scope: Scope, missing) -> None:
        """Bind declared parameters in `scope`, in order: the value given, else the default
        (evaluated in `scope`, so it may read the parameters before it), else missing(param),
        the error to raise."""
        for p in params:
            if p.name in given:
                value = given[p.name]
            elif p.default is not None:
                value = self.eval(p.default, scope)
            else:
                raise missing(p)
            scope.vars[p.name] = Binding(value, p.pos, used=True, kind="param")

    def check_all_reach_outputs(self, g: Graph) -> None:
        """Every layer and input must lead to an output. A value used only by shape queries
        does not: they are answered while the graph is built, so its layers would compute
        nothing any output needs (and hold weights nothing trains)."""
        import networkx as nx
        live = {producer(v) for v in g.outputs}
        for name in list(live):
            live |= nx.ancestors(g.g, name)
        for node in g.nodes():
            if node.name not in live:
                if node.op == "input":
                    raise SpecError(f"input '{node.name}' never reaches an output", node.pos,
                                    hint="only its shape is used (a shape query is answered "
                                         "while the network is built): remove the input, or "
                                         "lead it to an output")
                raise SpecError(f"'{node.name}' never reaches an output", node.pos,
                                hint="only its shape is used, and a shape query does not keep "
                                     "a layer in the network: remove it and compute the size "
                                     "from its input, or lead it to an output")

    # ---------------------------------------------------------------- statements
    def exec_body(self, body: list, scope: Scope, where: Pos | None = None) -> None:
        for stmt in body:
            self.exec_stmt(stmt, scope)
        if not scope.outputs:  # before "unused": a missing output is the real problem
            raise self.no_output(scope, where)
        for name, b in scope.vars.items():
            if not b.used and isinstance(b.value, (Tensor, tuple)) and has_tensor(b.value):
                what = "input" if b.kind == "input" else "value"
                raise SpecError(f"unused {what} '{name}'", b.pos,
                                hint="every value must reach an output: use it, or remove it")

    def no_output(self, scope: Scope, where: Pos | None) -> SpecError:
        last = [n for n, b in scope.vars.items()
                if not b.used and b.kind == "value" and has_tensor(b.value)]
        if scope.kind == "network":
            if not self.graph.inputs:
                return SpecError(f"network '{scope.name}' has no input", where,
                                 hint="declare one: input image: 3@224x224")
            return SpecError(f"network '{scope.name}' has no output", where,
                             hint="end a chain with `-> out`, or write `out "
                                  f"{last[-1] if last else 'value'}`")
        return SpecError(f"block '{scope.name}' has no output", where,
                         hint=f"end it with `out {last[-1] if last else 'value'}`",
                         notes=self.notes())

    def exec_stmt(self, stmt, scope: Scope) -> None:
        if isinstance(stmt, A.Assign):
            prev = self.assignable(stmt.name, stmt.pos, scope)
            self.naming.append(stmt.name)
            try:
                value = self.eval(stmt.value, scope)
            finally:
                self.naming.pop()
            self.bind(stmt.name, value, stmt.pos, prev, scope)
        elif isinstance(stmt, A.Unpack):
            self.exec_unpack(stmt, scope)
        elif isinstance(stmt, A.ExprStmt):
            value = self.eval(stmt.value, scope)
            if isinstance(value, Symbol):
                raise self.undefined(value, scope)
            ends_in_out = (isinstance(stmt.value, A.Chain) and stmt.value.stages
                           and isinstance(stmt.value.stages[-1].layer, A.LayerOut))
            if not ends_in_out:
                if has_tensor(value):
                    raise SpecError("the result of this chain is never used", stmt.pos,
                                    hint="end it with `-> out`, or name it: `x = ...`")
                raise SpecError("this statement has no effect", stmt.pos,
                                hint="a statement is a chain ending in `-> out`, an assignment "
                                     "`name = ...`, or `out value`")
        elif isinstance(stmt, A.Out):
            for v in stmt.values:
                value = self.eval(v, scope)
                self.mark_output(value, v, scope)
        elif isinstance(stmt, A.In):
            if scope.kind != "block":
                raise SpecError("`in` declares a block's inputs; a network uses `input`",
                                stmt.pos, hint="write: input image: 3@224x224")
            # bound by apply_block before the body runs
        elif isinstance(stmt, A.Input):
            if scope.kind != "network":
                raise SpecError("`input` belongs in a network; a block declares `in x`", stmt.pos)
            self.declare_input(stmt, scope)
        elif isinstance(stmt, A.Train):     # a train or a detect section (A.Detect)
            self.section(stmt, scope)
        else:  # pragma: no cover - the parser makes no other statements
            raise SpecError(f"unexpected statement {type(stmt).__name__}", getattr(stmt, "pos", None))

    def section(self, stmt: A.Train, scope: Scope) -> None:
        """A network's one `train { }` or `detect { }` section, validated into graph.train or
        graph.detect."""
        kind = stmt.keyword
        if scope.kind != "network":
            raise SpecError(f"a {kind} section belongs in a network, not a block", stmt.pos)
        if getattr(self.graph, kind) is not None:
            raise SpecError(f"a network has one {kind} section", stmt.pos,
                            notes=[("the first one is here", self.section_pos[kind])])
        self.section_pos[kind] = stmt.pos
        settings = [(s.name, self.eval(s.value, scope, settings=True), s.pos) for s in stmt.settings]
        if kind == "train":
            from .train_section import validate_train as validate
        else:
            from .detect_section import validate_detect as validate
        setattr(self.graph, kind, validate(settings, stmt.pos))

    def assignable(self, name: str, pos: Pos | None, scope: Scope) -> Binding | None:
        """The binding `name = ...` replaces (None if new), after checking that it may."""
        if name in KEYWORDS:
            raise SpecError(f"'{name}' is a keyword and cannot be used as a name",
                            pos, hint=f"choose another name, e.g. '{name}_'")
        if name in OPS or name in self.spec.blocks:
            raise SpecError(f"'{name}' is an op or block name and cannot be assigned",
                            pos, hint="choose another name")
        prev = scope.vars.get(name)
        if prev is not None and prev.kind in ("input", "param"):
            what = "an input" if prev.kind == "input" else "a parameter"
            raise SpecError(f"'{name}' is already {what} and cannot be reassigned",
                            pos, notes=[("defined here", prev.pos)])
        return prev

    def bind(self, name: str, value, pos: Pos | None, prev: Binding | None, scope: Scope) -> None:
        """Name a value evaluated for an assignment (the right-hand side runs first, so
        `y = y -> relu` has used the previous y)."""
        if prev is not None and not prev.used and has_tensor(prev.value):
            raise SpecError(f"'{name}' is reassigned before its value is used", pos,
                            notes=[("first assigned here", prev.pos)])
        if isinstance(value, Symbol):
            raise self.undefined(value, scope)
        scope.vars[name] = Binding(value, pos)

    def exec_unpack(self, stmt: A.Unpack, scope: Scope) -> None:
        """`a, b = value`: each name takes one value of a tuple (a split's parts, a block's
        outputs), in order; `_` takes one and names nothing. The nodes made are named under
        the names joined by '_' (`a_b/split1`), as `a = ...` names them under `a/`."""
        positions = stmt.name_pos or [stmt.pos] * len(stmt.names)
        named = [(k, n, p) for k, (n, p) in enumerate(zip(stmt.names, positions)) if n != DISCARD]
        prevs = [self.assignable(n, p, scope) for _, n, p in named]
        self.naming.append("_".join(n for _, n, _ in named) or DISCARD)
        try:
            value = self.eval(stmt.value, scope)
        finally:
            self.naming.pop()
        count = len(stmt.names)
        if isinstance(value, Symbol):
            raise self.undefined(value, scope)
        if not isinstance(value, tuple):
            raise SpecError(f"cannot unpack {show(value)} into {count} names", stmt.pos,
                            hint="a split, or a block with several outputs, gives a tuple: "
                                 "a, b = split(x, 2)")
        if len(value) != count:
            raise SpecError(f"{len(value)} values cannot be unpacked into {count} names", stmt.pos,
                            hint=f"name each of the {len(value)} values, in order; `_` takes one "
                                 "that is not needed")
        for (k, name, pos), prev in zip(named, prevs):
            self.bind(name, value[k], pos, prev, scope)

    def declare_input(self, stmt: A.Input, scope: Scope) -> None:
        if stmt.name in scope.vars:
            raise SpecError(f"'{stmt.name}' is already defined", stmt.pos)
        override = self.input_shapes.get(stmt.name, self.input_shapes.get(None))
        if override is not None and None in self.input_shapes and self.graph.inputs:
            raise OverrideError("--input without a name needs a network with one input", stmt.pos,
                            hint=f"name it: --input {stmt.name}=...")
        if override is not None:
            shape = tuple(override)
            if len(shape) not in (1, 2, 3):
                raise OverrideError(f"input '{stmt.name}' takes a shape C@HxW, TxF or a length, "
                                    f"got {format_shape(shape)}", stmt.pos)
        elif isinstance(stmt.shape, A.ShapeLit):
            shape = stmt.shape.dims
        else:
            value = self.eval(stmt.shape, scope)
            shape = value if isinstance(value, tuple) else (value,)
            if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape) \
                    or len(shape) not in (1, 2, 3):
                raise SpecError(f"an input shape is C@HxW, TxF or a length, got {show(value)}",
                                stmt.pos, hint="for example: input image: 3@224x224, "
                                               "input x: (3, size, size), or input t: (tokens, 64)")
        if len(shape) not in (1, 2, 3):
            raise SpecError(f"an input shape is C@HxW, TxF or a length, got {format_shape(shape)}",
                            stmt.pos)
        node = self.add_node("input", {"shape": shape}, [], shape, stmt.pos, name=stmt.name)
        scope.vars[stmt.name] = Binding(Tensor(node.name, shape), stmt.pos, kind="input")

    def mark_output(self, value, expr, scope: Scope) -> None:
        tensors = _tensors(value)
        if not tensors or not all(isinstance(t, Tensor) for t in tensors):
            if isinstance(value, Symbol):
                raise self.undefined(value, scope)
            raise SpecError(f"an output must be a tensor, got {show(value)}", pos_of(expr))
        scope.outputs.extend(tensors)

    # ---------------------------------------------------------------- expressions
    # ---------------------------------------------------------------- chains and calls
    def eval_chain(self, e: A.Chain, scope: Scope):
        value = self.eval(e.head, scope)
        if isinstance(value, Symbol):
            if value.name in OPS or value.name in self.spec.blocks:
                raise SpecError(f"a chain starts with a value, but '{value.name}' is a layer",
                                value.pos, hint="start from an input or a named value: "
                                                "x -> " + value.name)
            raise self.undefined(value, scope)
        for i, stage in enumerate(e.stages):
            if isinstance(stage.layer, A.LayerOut):
                if i != len(e.stages) - 1:
                    raise SpecError("`out` must end the chain", stage.pos)
                if stage.label or stage.repeat is not None:
                    raise SpecError("`out` takes no label or repeat", stage.pos)
                self.mark_output(value, e, scope)
                return value
            value = self.apply_stage(stage, value, scope)
        return value

    def apply_stage(self, stage: A.Stage, value, scope: Scope):
        inputs = _tensors(value)
        if not inputs or not all(isinstance(t, Tensor) for t in inputs):
            raise SpecError(f"a layer needs tensor inputs, got {show(value)}", stage.pos)
        count = 1
        if stage.repeat is not None:
            count = self.eval(stage.repeat, scope)
            if isinstance(count, bool) or not isinstance(count, int):
                raise SpecError(f"a repeat count must be an integer, got {show(count)}",
                                pos_of(stage.repeat))
            if count < 0:
                raise SpecError(f"a repeat count cannot be negative, got {count}",
                                pos_of(stage.repeat))
            if count > MAX_REPEAT:
                raise SpecError(f"repeat count {count:,} is too large (the limit is {MAX_REPEAT:,})",
                                pos_of(stage.repeat), hint="no real network repeats a layer that often")
        if count <= 1:
            return self.apply_layer(stage.layer, value, scope, stage.label) if count else value
        with self.work.repeat(count, pos_of(stage.repeat)):
            for i in range(count):
                label = f"{stage.label}_{i + 1}" if stage.label else None
                value = self.apply_layer(stage.layer, value, scope, label)
        return value

    def apply_layer(self, layer, value, scope: Scope, label: str | None):
        self.work.step(layer)
        if isinstance(layer, A.LayerGroup):
            if label:   # `g: (conv(8, 1) -> relu)` names its nodes g/conv1, g/relu1
                self.group_scopes.add(self.fresh_name("group", label, layer.pos))
                self.naming.append(label)
            try:
                for st in layer.stages:
                    if isinstance(st.layer, A.LayerOut):
                        raise SpecError("`out` cannot be used inside a group", st.pos)
                    value = self.apply_stage(st, value, scope)
            finally:
                if label:
                    self.naming.pop()
            return value
        if isinstance(layer, A.LayerOut):  # pragma: no cover - handled by eval_chain
            raise SpecError("`out` must end the chain", layer.pos)
        return self.call(layer.name, list(_tensors(value)), layer.args or [], scope, label,
                         layer.pos)
    def unknown_layer(self, name: str, pos, scope: Scope) -> SpecError:
        if name in scope.vars:
            return SpecError(f"'{name}' is a value, not a layer", pos,
                             hint="merge values with + or concat(a, b); apply layers with ->")
        if name == "input":
            return SpecError("`input` declares a network input; it is not a layer", pos)
        return SpecError(f"unknown op '{name}'", pos,
                         hint=did_you_mean(name, list(OPS) + list(self.spec.blocks)) or
                         "see docs/LANGUAGE.md for the ops, or define a block with this name")

    def call(self, name: str, inputs: list, args: list, scope: Scope, label: str | None, pos):
        """Apply op or block `name` to inputs (from the chain) and args (tensors join the inputs)."""
        if name not in OPS and name not in self.spec.blocks:
            raise self.unknown_layer(name, pos, scope)
        positional, keywords, arg_pos = [], {}, {}
        for a in args:
            v = self.eval(a.value, scope)
            if a.name is None:
                if keywords:
                    raise SpecError("a positional argument cannot follow keyword arguments", a.pos)
                if has_tensor(v) and all(isinstance(t, Tensor) for t in _tensors(v)):
                    if positional:
                        raise SpecError("tensor arguments come before the other arguments", a.pos)
                    inputs.extend(_tensors(v))
                    continue
                arg_pos[len(positional)] = a.pos
                positional.append(v)
            else:
                if a.name in keywords:
                    raise SpecError(f"argument '{a.name}' given twice", a.pos)
                keywords[a.name] = v
                arg_pos[a.name] = a.pos
        trainable = keywords.pop("trainable", True)
        if not isinstance(trainable, bool):
            raise SpecError(f"trainable must be true or false, got {show(trainable)}",
                            arg_pos.get("trainable", pos))
        penalty = {}
        for key in ("l1", "l2"):
            if key in keywords:
                v = keywords.pop(key)
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or v == math.inf:
                    raise SpecError(f"{key} (a weight penalty) must be a number >= 0, got {show(v)}",
                                    arg_pos.get(key, pos))
                penalty[key] = float(v)
        if penalty and name not in self.spec.blocks and name in OPS and not OPS[name].penalised:
            raise SpecError(f"{name} has no weights for an {'/'.join(penalty)} penalty", pos,
                            hint="put l1= / l2= on a conv or dense layer, or on a block call")
        self.frozen += not trainable
        self.penalties.append(penalty)
        try:
            if name in self.spec.blocks:
                return self.apply_block(name, inputs, positional, keywords, label, pos, arg_pos, scope)
            return self.apply_op(name, inputs, positional, keywords, label, pos, arg_pos, scope)
        finally:
            self.frozen -= not trainable
            self.penalties.pop()

    def apply_op(self, name, inputs, positional, keywords, label, pos, arg_pos, scope=None):
        op = OPS[name]
        if op.max_inputs == 0:
            raise SpecError(f"'{name}' is not a layer", pos)
        n = len(inputs)
        if n < op.min_inputs or (op.max_inputs is not None and n > op.max_inputs):
            want = (f"{op.min_inputs}" if op.max_inputs == op.min_inputs else
                    f"at least {op.min_inputs}" if op.max_inputs is None else
                    f"{op.min_inputs} to {op.max_inputs}")
            plural = "" if want == "1" else "s"
            if n <= (op.max_inputs or n):
                hint = f"give it {want} input{plural}: {name}(a, b) or a -> {name}(b)"
            elif op.infix:     # a * b * c nests the op's nodes
                hint = f"write a {op.infix} b {op.infix} c: one {name} after another"
            else:
                hint = "merge inputs first with + or concat(...)"
            raise SpecError(f"{name} expects {want} input{plural}, got {n}", pos, hint=hint)
        try:
            attrs = op.make_attrs([attr_value(v) for v in positional],
                                  {k: attr_value(v) for k, v in keywords.items()})
        except AttrError as err:
            where, bad, hint = pos, None, err.hint
            names = [a.name for a in op.attrs]
            if err.arg in keywords:
                where, bad = arg_pos.get(err.arg, pos), keywords[err.arg]
            elif err.arg in names and names.index(err.arg) < len(positional):
                where, bad = arg_pos.get(names.index(err.arg), pos), positional[names.index(err.arg)]
            elif err.arg is None and len(positional) > len(names):  # point at the first extra one
                where = arg_pos.get(len(names), pos)
            if isinstance(bad, Symbol) and scope is not None:
                close = did_you_mean(bad.name, scope.vars)
                # `pad=sam`: a misspelt option named by the message ("one of a, b", "must be a, b")
                options = re.search(r"(?:one of|must be) (.*), got ", err.message)
                close_option = options and did_you_mean(
                    bad.name, set(re.findall(r"[A-Za-z_]\w*", options.group(1))) - {bad.name})
                if close:  # `stride=strid`: a misspelt parameter, not a keyword
                    hint = f"'{bad.name}' is not defined; {close}"
                elif close_option:
                    hint = close_option + (f" ({hint})" if hint else "")
                elif bad.pos is not None and bad.pos.file == "--set":
                    hint = f"'{bad.name}' was given with --set; a bare word there is a name, not a number"
            elif isinstance(bad, str) and re.fullmatch(r"[-+]?[0-9.]+(e[-+]?[0-9]+)?", bad):
                hint = f'"{bad}" is a string; write the number without quotes: {bad}'
            raise SpecError(err.message, where, hint=hint, notes=self.notes()) from None
        in_shapes = [t.shape for t in inputs]
        try:
            shape = op.shape(attrs, in_shapes)
            parts = op.parts(attrs, in_shapes)
        except ShapeError as err:
            text = err.message.format(**{f"in{i}": t.describe() for i, t in enumerate(inputs)})
            raise SpecError(text, pos, hint=err.hint, notes=self.notes()) from None
        if any(d <= 0 for d in shape):
            raise SpecError(f"{name} would produce an empty output {format_shape(shape)}", pos,
                            notes=self.notes())
        node = self.add_node(name, attrs, [t.node for t in inputs], shape, pos, label=label,
                             params=op.params(attrs, in_shapes), parts=parts)
        if parts:   # a node of several outputs: its parts, as a tuple
            return tuple(Tensor(part_ref(node.name, k), s) for k, s in enumerate(parts))
        out = Tensor(node.name, shape)
        act = attrs.get("act")
        if act and act != "none":
            act_node = self.add_node(act, OPS[act].make_attrs([], {}), [node.name], shape, pos,
                                     name=f"{node.name}_{act}")
            out = Tensor(act_node.name, shape)
        return out

    def apply_block(self, name, inputs, positional, keywords, label, pos, arg_pos, scope):
        bdef, bfile = self.spec.blocks[name]
        if any(f.block == name for f in self.frames):
            chain = " -> ".join([f.block for f in self.frames] + [name])
            raise SpecError(f"block '{name}' calls itself ({chain})", pos,
                            hint="blocks cannot be recursive; repeat them with `* n` instead",
                            notes=self.notes())
        if len(self.frames) >= MAX_BLOCK_DEPTH:
            raise SpecError(f"blocks nested more than {MAX_BLOCK_DEPTH} deep", pos, notes=self.notes())
        ins = [s for s in bdef.body if isinstance(s, A.In)]
        in_names = [n for s in ins for n in s.names]
        in_pos = [p for s in ins for p in (s.name_pos or [s.pos] * len(s.names))]
        if len(inputs) != len(in_names):
            plural = "" if len(in_names) == 1 else "s"
            raise SpecError(f"block '{name}' expects {len(in_names)} input{plural}, got {len(inputs)}",
                            pos, hint=f"it declares: in {', '.join(in_names)}" if in_names else
                            "it declares no `in`", notes=self.notes())
        param_names = [p.name for p in bdef.params]
        if len(positional) > len(param_names):
            raise SpecError(f"block '{name}' takes {len(param_names)} argument"
                            f"{'' if len(param_names) == 1 else 's'}, got {len(positional)}",
                            arg_pos.get(len(param_names), pos),  # at the first extra argument
                            hint=f"{name}({', '.join(param_names)})", notes=self.notes())
        bound = dict(zip(param_names, positional))
        for k, v in keywords.items():
            if k not in param_names:
                raise SpecError(f"block '{name}' has no parameter '{k}'", arg_pos.get(k, pos),
                                hint=did_you_mean(k, param_names) or f"{name}({', '.join(param_names)})")
            if k in bound:
                raise SpecError(f"block '{name}' got '{k}' twice", arg_pos.get(k, pos))
            bound[k] = v
        self.work.step(pos, BLOCK_CALL_STEPS)
        path = self.fresh_name(name, label, pos)
        inner = Scope("block", name)
        outer_naming, self.naming = self.naming, []
        self.frames.append(_Frame(name, path, pos))
        try:
            self.bind_params(bdef.params, bound, inner, lambda p: SpecError(
                f"block '{name}' needs '{p.name}'", pos, hint=f"{name}({', '.join(param_names)})",
                notes=self.notes()[:-1]))
            for n, t, ps in zip(in_names, inputs, in_pos):
                if n in inner.vars:
                    raise SpecError(f"'{n}' is both a parameter and an input of block '{name}'", ps)
                inner.vars[n] = Binding(t, ps, kind="input")
            self.graph.blocks[path] = BlockInstance(
                path, name, {k: plain(v) for k, v in bound.items()}, pos)
            self.exec_body(bdef.body, inner, bdef.pos)
        except SpecError as e:  # every error inside the block says where the block was called
            note = (f"in block '{name}' ({path}) called here", pos)
            if note not in e.notes and pos != e.pos:
                e.notes.append(note)
            raise
        finally:
            self.frames.pop()
            self.naming = outer_naming
        if not inner.outputs:
            raise SpecError(f"block '{name}' has no output", bdef.pos,
                            hint="end it with `out value`")
        self.graph.blocks[path].output = inner.outputs[0].node
        return inner.outputs[0] if len(inner.outputs) == 1 else tuple(inner.outputs)

    # ---------------------------------------------------------------- nodes
    def prefix(self) -> str:
        """Path prefix of names made now: enclosing block instance, then named values."""
        block = self.frames[-1].instance + "/" if self.frames else ""
        return block + "".join(n + "/" for n in self.naming)

    def fresh_name(self, base: str, label: str | None, pos) -> str:
        """A unique node/block path: the label as given, or base + a counter (conv1, conv2...)."""
        key = self.prefix()
        if label:
            path = key + label
            if path in self.graph or path in self.graph.blocks or path in self.group_scopes:
                raise SpecError(f"label '{label}' is used twice", pos)
            return path
        counters = self.counters.setdefault(key, {})
        while True:
            counters[base] = counters.get(base, 0) + 1
            candidate = f"{key}{base}{counters[base]}"
            if candidate not in self.graph and candidate not in self.graph.blocks:
                return candidate

    def add_node(self, op, attrs, inputs, shape, pos, label=None, params=(), name=None,
                 parts=()) -> Node:
        g = self.graph
        if name is None:
            name = self.fresh_name(op, label, pos)
        elif name in g:
            raise SpecError(f"'{name}' is already defined", pos)
        params = list(params)
        if self.frozen:
            params = [Param(p.name, p.shape, p.init, False) for p in params]
        node = Node(name=name, op=op, attrs=Attrs(attrs), inputs=list(inputs), shape=tuple(shape),
                    params=params, pos=pos, scope=tuple(name.split("/")[:-1]), label=label,
                    trainable=not self.frozen, penalty=_merged(self.penalties),
                    parts=tuple(tuple(p) for p in parts))
        g.add(node)
        self.work.count_node(node, len(g), self.notes())
        return node

    def notes(self) -> list:
        return [(f"in block '{f.block}' ({f.instance}) called here", f.pos)
                for f in reversed(self.frames)]


# ------------------------------------------------------------------ values from the command line

def parse_setting(name: str, text: str, shown: str | None = None) -> dict:
    """A train-section setting given as text (`--augment "flip, shift(amount=0.2)"`, or
    `optimizer="sgd(momentum=0.9)"` in Python), checked as if the spec's train section held it:
    the validated dict's entry. shown: how messages name it (default: --NAME)."""
    from .loader import Spec
    from .parser import parse
    from .train_section import LISTED_SETTINGS, validate_train
    shown = shown or f"--{name}"
    value = f"[{text}]" if name in LISTED_SETTINGS else text
    src = f"network _flag() {{ _v = {value} }}"
    try:
        module = parse(src, shown)
    except SpecError:
        raise SpecError(f"cannot read {shown} '{clip(text, 100)}'") from None
    body = module.items[0].body
    if len(body) != 1 or not isinstance(body[0], A.Assign):
        raise SpecError(f"cannot read {shown} '{clip(text, 100)}'")
    ev = _Elaborator(Spec(main=f"--{name}", text=src))
    value = ev.eval(body[0].value, Scope("network", "_flag"), settings=True)
    return validate_train([(name, value, None)], None)[name]


def parse_value(text: str):
    """A --set value: a number, true/false, a shape (3@224x224), a tuple, or a bare word."""
    import re
    if re.fullmatch(r"\s*[0-9]+@[0-9]+(x[0-9]+)*\s*", text):
        from .parser import parse_shape_text
        try:
            return parse_shape_text(text)
        except ValueError as err:
            raise SpecError(str(err)) from None
    from .parser import parse
    from .loader import Spec
    src = f"network _set() {{ _v = {text} }}"
    try:
        module = parse(src, "--set")
    except SpecError:
        raise SpecError(f"cannot read the value '{clip(text, 100)}'") from None
    body = module.items[0].body
    if len(body) != 1 or not isinstance(body[0], A.Assign):
        raise SpecError(f"cannot read the value '{clip(text, 100)}'")
    ev = _Elaborator(Spec(main="--set", text=src))
    value = ev.eval(body[0].value, Scope("network", "_set"))
    if isinstance(value, Tensor):  # pragma: no cover - no inputs exist here
        raise SpecError(f"cannot read the value '{clip(text, 100)}'")
    return value
