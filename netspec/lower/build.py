"""Graph -> Program: ops lower themselves through a NodeContext, in schedule order.

The schedule is the graph's deterministic topological order. Each op's
`lower(node, ctx)` emits its forward instructions and each op's
`vjp(node, ctx, gy)` its backward ones (see autodiff.py); the context
hands out tensor names, declares parameters with their physical layout, and
records instructions. Memory is not the compiler's business: the runtime's
planner (runtime/memory.py) lays the Program's tensors out in one arena per
phase and batch size.

Lowering runs no graph pass: `lower_optimised` takes the graphs the passes left
(netspec/pipeline.py runs the passes, then this).
Layout: feature maps are channels-last on every target (ops/base.py `physical`).
"""

from __future__ import annotations

from .autodiff import backward
from ..errors import SpecError
from ..graph.graph import Graph, Node, part_ref, producer
from .init import default_init
from ..ops.base import physical
from ..runtime.isa import KERNELS as ISA
from .program import Instr, Phase, Program, TensorSpec


class Lowering:
    """Collects the tensors and instructions of one phase."""

    def __init__(self, graph: Graph, program: Program, phase: str, training: bool,
                 inits: dict[str, str] | None = None, sync_batchnorm: bool = False):
        self.graph = graph
        self.inits = inits or {}   # parameter -> initialiser, decided on the spec's own graph
        self.program = program
        self.training = training
        # batch norms' training statistics in steps that a data-parallel run's ranks sum between
        self.sync_batchnorm = sync_batchnorm
        self.phase = Phase(phase, [], {})
        self.needs: dict[str, bool] = {}

    # -- tensors
    def declare(self, name: str, shape, kind: str, dtype: str | None = None, batched=True,
                **extra) -> str:
        spec = TensorSpec(name, tuple(shape), dtype or self.program.dtype, kind, batched, **extra)
        old = self.program.tensors.get(name)
        if old is not None:
            if (old.shape, old.dtype, old.batched) != (spec.shape, spec.dtype, spec.batched):
                raise RuntimeError(f"tensor {name} declared twice with different shapes: "
                                   f"{old.describe()} vs {spec.describe()}")
            return name
        self.program.tensors[name] = spec
        return name

    def emit(self, kernel: str, inputs, outputs, node: str, /, **attrs) -> None:
        spec = ISA.get(kernel)
        if spec is None:
            raise RuntimeError(f"kernel {kernel} is not in the ISA")
        variadic = any(i.startswith("*") for i in spec.inputs)
        fixed = [i for i in spec.inputs if not i.startswith("*")]
        if len(inputs) < spec.required_inputs or (not variadic and len(inputs) > len(fixed)):
            raise RuntimeError(f"{kernel} takes inputs {spec.inputs}, got {inputs}")
        missing = set(spec.attrs) - set(attrs)
        if missing:
            raise RuntimeError(f"{kernel} needs attributes {sorted(missing)}")
        self.phase.instrs.append(Instr(kernel, list(inputs), list(outputs), attrs, node))

    def emit_prepare(self, kernel: str, inputs, outputs, node: str, /, **attrs) -> None:
        """An instruction of the program's `prepare` phase: computed from parameters only,
        run before inference whenever the parameters may have changed."""
        phase = self.program.phases.setdefault("prepare", Phase("prepare", [], {}))
        main, self.phase = self.phase, phase
        try:
            self.emit(kernel, inputs, outputs, node, **attrs)
        finally:
            self.phase = main

    def alias(self, name: str, source: str) -> None:
        while source in self.phase.aliases:
            source = self.phase.aliases[source]
        self.phase.aliases[name] = source

    def context(self, node: Node) -> "NodeContext":
        return NodeContext(self, node)


class NodeContext:
    """What an op sees while lowering one node (forward) or its vjp (backward)."""

    def __init__(self, low: Lowering, node: Node):
        self.low = low
        self.node = node
        self.training = low.training
        self.sync_batchnorm = low.sync_batchnorm
        self.computed: set[str] = set()   # parameters whose gradient another instruction writes

    # -- forward
    @property
    def y(self) -> str:
        return self.node.name

    def x(self, i: int = 0) -> str:
        return self.node.inputs[i]

    def in_shape(self, i: int = 0) -> tuple[int, ...]:
        """The spec shape (C, H, W) or (F,) of input i, without the batch."""
        return self.low.graph.shape_of(self.node.inputs[i])

    def shape_of(self, tensor: str) -> tuple[int, ...]:
        """A declared tensor's physical shape (without the batch)."""
        return self.low.program.tensors[tensor].shape

    def param_name(self, pname: str) -> str:
        """The tensor name of this node's parameter `pname`: 'node.pname', unless a pass that
        rewrote the node kept its parameters' original names in Node.param_names
        ({pname: tensor name}; the separable pass: the depthwise part's `weight` is
        'sep.depthwise_weight'), so weight files, initialisers and optimizers still fit."""
        names = self.node.param_names or {}
        return names.get(pname) or f"{self.node.name}.{pname}"

    def param(self, pname: str, perm: tuple[int, ...] | None = None) -> str:
        """The tensor of this node's parameter `pname`, stored as user.transpose(perm)."""
        p = next(p for p in self.node.params if p.name == pname)
        return self._declare_param(self.node.name, p, self.node.trainable, perm)

    def _declare_param(self, owner: str, p, trainable: bool, perm=None) -> str:
        # this node's own parameters by param_name (a rewritten node's original names); a
        # folded batch norm's (owner: the batch norm) by their owner's name
        name = self.param_name(p.name) if owner == self.node.name else f"{owner}.{p.name}"
        shape = tuple(p.shape[i] for i in perm) if perm else p.shape
        kind = "param" if p.trainable else "state"
        init = self.low.inits.get(name) or default_init(self.low.graph, self.node, p)
        self.low.declare(name, shape, kind, batched=False, user_shape=p.shape, perm=perm,
                         init=init, trainable=p.trainable and trainable)
        self.low.program.params[name] = name
        return name

    def folded(self, weight: str, bias: str | None) -> tuple[str, str | None]:
        """The weight and bias this node computes with: its own, or, when the fold-batchnorm
        pass folded the batch norm after it into it, tensors the program's prepare phase
        derives from them and the batch norm's parameters (kept under the batch norm's
        names, so weight files still fit)."""
        fold = self.node.folded
        if fold is None:
            return weight, bias
        c = fold.channels
        bn = {p.name: self._declare_param(fold.node, p, fold.trainable) for p in fold.params}
        ins = [weight, bias, bn.get("weight") or self.const(1.0, (c,)),
               bn.get("bias") or self.const(0.0, (c,)), bn["running_mean"], bn["running_var"]]
        w_out = self.low.declare(f"{weight}:folded", self.shape_of(weight), "const", batched=False)
        b_out = self.low.declare(f"{self.node.name}.bias:folded", (c,), "const", batched=False)
        self.low.emit_prepare("bn_fold", ins, [w_out, b_out], self.node.name, epsilon=fold.epsilon)
        return w_out, b_out

    def const(self, value: float, shape: tuple[int, ...]) -> str:
        name = f"const:{value:g}x{'x'.join(map(str, shape))}"
        return self.low.declare(name, shape, "const", batched=False, value=float(value))

    def tmp(self, suffix: str, shape, dtype: str | None = None, batched: bool = True,
            kind: str = "act") -> str:
        """A new tensor named after this node: 'node:suffix'."""
        return self.low.declare(f"{self.node.name}:{suffix}", shape, kind, dtype, batched)

    def output(self, part: int | None = None) -> str:
        """Declare and return this node's output tensor; of a node of several outputs, that
        of part `part` (named as the value: 'split1:0')."""
        if part is None:
            return self.low.declare(self.node.name, physical(self.node.shape), "act")
        return self.low.declare(part_ref(self.node.name, part), physical(self.node.parts[part]), "act")

    def emit(self, kernel: str, inputs, outputs, /, **attrs) -> None:
        self.low.emit(kernel, inputs, outputs, self.node.name, **attrs)

    def alias(self, source: str, part: int | None = None) -> None:
        """This node's output (of a node of several outputs, part `part`) is `source`'s
        buffer, viewed with the output's shape."""
        self.low.alias(self.output(part), source)

    def view(self, source: str, suffix: str, shape, kind: str = "act") -> str:
        """A tensor 'node:suffix' (kind 'grad': 'd:node:suffix') that is `source`'s buffer
        viewed with another shape of as many elements (a row-wise kernel's rows)."""
        name = f"d:{self.node.name}:{suffix}" if kind == "grad" else f"{self.node.name}:{suffix}"
        self.low.declare(name, shape, kind)
        self.low.alias(name, source)
        return name

    # -- backward
    def needs_input_grad(self, i: int = 0) -> bool:
        return self.low.needs.get(producer(self.node.inputs[i]), False)

    def wants_param_grad(self, pname: str) -> bool:
        p = next(p for p in self.node.params if p.name == pname)
        return p.trainable and self.node.trainable and pname not in self.computed

    def param_grad(self, pname: str) -> str:
        """The gradient tensor of parameter `pname` (same layout as the parameter)."""
        pt = self.low.program.tensors[self.param_name(pname)]
        name = f"d:{pt.name}"
        self.low.declare(name, pt.shape, "grad", batched=False, user_shape=pt.user_shape,
                         perm=pt.perm)
        self.low.program.grads[pt.name] = name
        return name

    def grad(self, suffix: str, shape, batched: bool = True) -> str:
        """A new gradient tensor named 'd:node:suffix'."""
        return self.low.declare(f"d:{self.node.name}:{suffix}", shape, "grad", batched=batched)

    def input_grad(self, i: int = 0) -> str:
        """A tensor for the gradient flowing to input i."""
        return self.grad(f"in{i}", physical(self.in_shape(i)))

    # A kernel writes every output, so a gradient nobody needs still gets a (scratch) buffer.
    def input_grad_output(self, i: int = 0) -> str:
        """Where a kernel writes input i's gradient: the gradient, or scratch if unneeded."""
        if self.needs_input_grad(i):
            return self.input_grad(i)
        return self.low.declare(f"{self.node.name}:unused_dx{i}", physical(self.in_shape(i)), "act")

    def param_grad_output(self, pname: str) -> str:
        """Where a kernel writes parameter pname's gradient: the gradient, or scratch."""
        if self.wants_param_grad(pname):
            return self.param_grad(pname)
        p = next(p for p in self.node.params if p.name == pname)
        return self.low.declare(f"{self.node.name}:unused_d{pname}", p.shape, "act", batched=False)

    def emit_input_grad(self, kernel: str, inputs, /, **attrs) -> list[str | None]:
        """The vjp of an op whose one input's gradient one kernel computes from `inputs`:
        [that gradient], or [None], emitting nothing, where the input needs none."""
        if not self.needs_input_grad():
            return [None]
        gx = self.input_grad()
        self.emit(kernel, inputs, [gx], **attrs)
        return [gx]

    def needed(self, grads: list[str]) -> list[str | None]:
        """The input gradients a vjp returns: None where the input needs none."""
        return [g if self.needs_input_grad(i) else None for i, g in enumerate(grads)]


# ---------------------------------------------------------------- losses

LOSSES = ("sparse_categorical_crossentropy", "categorical_crossentropy", "binary_crossentropy", "mse")


def default_loss(graph: Graph) -> str:
    """The spec's train section's loss, else the one the output's op implies (its first
    `logit_losses`: softmax -> cross-entropy), else MSE."""
    if graph.train and graph.train.get("loss"):
        return graph.train["loss"]
    return (graph.producer(graph.outputs[0]).opdef.traits.logit_losses or ("mse",))[0]


def outputs_probabilities(graph: Graph) -> bool:
    """Whether the network's (first) output is probabilities: its op turns logits into them."""
    return bool(graph.producer(graph.outputs[0]).opdef.traits.logit_losses)


def lower_loss(graph: Graph, low: Lowering, loss: str) -> dict[str, str]:
    """Emit the loss of the first output; return the gradient seeds {tensor: gradient}.

    Cross-entropies are computed from logits, stably: a final softmax (sigmoid) is
    folded into the loss and its input is the logits; without one the output is the
    logits (PyTorch's CrossEntropyLoss convention). On a feature map classes@HxW the
    softmax cross-entropies classify each pixel: the mean is over every pixel of every
    sample (F.cross_entropy on (N, C, H, W) logits).
    """
    if loss not in LOSSES:
        raise SpecError(f"unknown loss '{loss}'", hint="one of " + ", ".join(LOSSES))
    prog = low.program
    out = graph.producer(graph.outputs[0])
    shape = physical(graph.shape_of(graph.outputs[0]))
    name = "loss"
    logits = graph.outputs[0]
    if loss in out.opdef.traits.logit_losses:
        logits = out.inputs[0]
    prog.loss = low.declare("loss", (), "loss", batched=False)
    prog.loss_name = loss
    if loss == "sparse_categorical_crossentropy":
        # one label per row of classes: per sample for a vector output, per pixel for a map
        # (classes@HxW, channels last: labels (N, H, W), the loss the mean over every pixel)
        prog.target = low.declare("labels", shape[:-1], "label", dtype="int32")
        kernel = "softmax_xent"
    elif loss == "categorical_crossentropy":
        prog.target = low.declare("targets", shape, "label")
        kernel = "softmax_xent_dense"
    elif loss == "binary_crossentropy":
        prog.target = low.declare("targets", shape, "label")
        kernel = "sigmoid_bce"
    else:
        prog.target = low.declare("targets", shape, "label")
        grad = low.declare(f"d:{logits}:loss", shape, "grad")
        low.emit("mse", [logits, prog.target], [prog.loss], name)
        low.emit("mse_bwd", [logits, prog.target], [grad], name)
        return {logits: grad}
    probs = low.declare(f"{name}:probs", shape, "act")
    grad = low.declare(f"d:{logits}:loss", shape, "grad")
    low.emit(kernel, [logits, prog.target], [prog.loss, probs], name)
    low.emit(kernel + "_bwd", [probs, prog.target], [grad], name)
    return {logits: grad}


# ---------------------------------------------------------------- the whole program

def lower_forward(graph: Graph, low: Lowering) -> None:
    for node in graph.nodes():
        ctx = low.context(node)
        if node.op == "input":
            low.declare(node.name, physical(node.shape), "input")
            low.program.inputs[node.name] = node.name
            continue
        node.opdef.lower(node, ctx)


def lower_optimised(infer: Graph, train: Graph | None = None, *, inits: dict[str, str] | None = None,
                    dtype: str = "float32", loss: str | None = None,
                    input_grads: bool = False, sync_batchnorm: bool = False) -> Program:
    """The Program of graphs the passes already optimised (or of a checked graph as written):
    an `infer` phase from `infer` and, given `train`, a `train` phase from it (training-mode
    forward, the loss, and the backward pass from the ops' vjps). Both come from one spec.

    inits: parameter tensor -> initialiser, decided on the spec's own graph
    (init.initialisers), so passes that remove layers never change the initial weights; a
    parameter it lacks gets the initialiser decided on the graph being lowered.
    sync_batchnorm: the training phase's batch norms compute their statistics and gradient sums
    in separate instructions (isa.py's rank_sum), which a data-parallel run sums over its ranks."""
    prog = Program(infer.name, dtype)
    low = Lowering(infer, prog, "infer", training=False, inits=inits)
    lower_forward(infer, low)
    prog.outputs = {o: o for o in infer.outputs}
    low.phase.outputs = dict(prog.outputs)
    prog.phases["infer"] = low.phase
    if train is not None:
        low = Lowering(train, prog, "train", training=True, inits=inits, sync_batchnorm=sync_batchnorm)
        lower_forward(train, low)
        seeds = lower_loss(train, low, loss or default_loss(train))
        backward(train, low, seeds, wrt_inputs=input_grads)
        # the outputs too: training metrics (accuracy) read them from the same forward pass
        low.phase.outputs = {"loss": prog.loss, **{f"output:{k}": v for k, v in prog.outputs.items()},
                             **{f"grad:{k}": v for k, v in prog.grads.items()},
                             **{f"input_grad:{k}": v for k, v in prog.input_grads.items()}}
        prog.phases["train"] = low.phase
    return prog
