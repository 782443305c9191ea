"""A checked network: its spec, its graph, and what the pipeline makes of it.

    net = netspec.load("specs/lenet5.net", classes=10)
    print(net.summary(batch=32))        # the table; .macs, .training_bytes, ... per batch
    program = net.program()                  # the lowered Program, readable with .text()
    model = net.compile()                    # a callable Model (netspec/model.py)
    net.render("lenet5.svg")                 # netspec render's diagram
    net                                      # in Jupyter: its diagram (Network._repr_svg_)
"""

from __future__ import annotations


class Network:
    """A checked network: its spec, its graph, and views of it."""

    def __init__(self, spec, graph, params: dict | None = None, inputs: dict | None = None,
                 network_name: str | None = None):
        self.spec = spec
        self.graph = graph
        # how it was built (load's keywords), so that Model.save can build it again
        self.params = dict(params or {})
        self.inputs = dict(inputs or {})           # input name (None: the only one) -> shape
        self.network_name = network_name           # which network of the file, if chosen

    def set_flags(self) -> list[str]:
        """The parameters it was built with as --set items ("classes=10"), as a run's metadata
        stores them; a value the command line cannot write raises ValueError."""
        from .lang.elaborate import parse_value
        flags = []
        for name, value in self.params.items():
            text = _value_text(value)
            if text is None or not _same_value(parse_value(text), value):
                raise ValueError(f"parameter {name}={value!r} cannot be written as --set "
                                 f"{name}=VALUE (numbers, true/false, tuples and words can)")
            flags.append(f"{name}={text}")
        return flags

    def input_flag(self) -> str | None:
        """Its input_shape as --input writes it ("3@64x64", "image=3@64x64"), or None."""
        from .ops import format_shape
        if not self.inputs:
            return None
        if len(self.inputs) > 1:
            raise ValueError("a network built with several input shapes cannot be stored as one "
                             "--input; load it with one")
        (name, shape), = self.inputs.items()
        return (f"{name}=" if name else "") + format_shape(shape)

    def run_context(self) -> dict:
        """What a run's or saved model's metadata records of how this network was loaded (its
        `context`, training/metadata.py): the --set items, --input, --network; nothing frozen."""
        return {"sets": self.set_flags(), "input": self.input_flag(),
                "network": self.network_name, "freeze": []}

    @property
    def name(self) -> str:
        return self.graph.name

    def summary(self, batch: int = 1, optimizer: str | None = None):
        from .report.summary import summarize
        return summarize(self.graph, batch, optimizer)

    def render(self, path=None, *, depth: int | None = None, format: str | None = None,
               rankdir: str = "TB", edge_shapes: bool = False, fold_repeats: bool = True):
        """The diagram `netspec render` draws, by its code. With `path` (.svg, .png, .pdf or
        .dot; `format` adds the suffix to a path without one) the file is written atomically and
        its Path returned; without, the graphviz.Digraph (a notebook draws it; `format` sets
        its `.format`). depth: draw blocks nested deeper than it as one box each."""
        from pathlib import Path
        from .report.render import FORMATS, render, to_dot
        if format is not None and format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
        if path is None:
            dot = to_dot(self.graph, depth, rankdir, edge_shapes, fold_repeats)
            if format is not None:
                dot.format = format
            return dot
        path = Path(path)
        if format is not None and not path.suffix:
            path = path.with_suffix(f".{format}")
        elif format is not None and path.suffix.lstrip(".").lower() != format:
            raise ValueError(f"format {format!r} disagrees with the file name {path.name}")
        return render(self.graph, path, depth, rankdir, edge_shapes, fold_repeats)

    def program(self, training: bool = True, dtype: str = "float32", loss: str | None = None,
                input_grads: bool = False, passes=None, sync_batchnorm: bool = False):
        """The lowered Program (readable with `.text()`), without compiling kernels.
        passes: graph pass names (netspec.passes; None: the default ones, [] for none).
        sync_batchnorm: as compile's."""
        from . import pipeline
        return pipeline.program(self.graph, training, dtype, loss, input_grads, passes, sync_batchnorm)

    def compile(self, target: str = "cpu", training: bool = True, dtype: str = "float32",
                loss: str | None = None, input_grads: bool = False, seed: int = 0,
                warmup: bool = True, passes=None, plan_memory: bool = True, kernel_dir=None,
                batch: int = 1, progress: bool = False, sync_batchnorm: bool = False):
        """Lower to a Program and compile its kernels for `target`: a callable Model.

        target: a name in netspec.runtime.targets.TARGETS (an unknown one raises
        netspec.runtime.targets.UnknownTarget, a ValueError).

        training=True adds the training step (loss_and_grads); loss defaults to the
        spec's train section, else cross-entropy after a softmax, else MSE. Parameters
        are drawn from their initialisers with `seed`. warmup compiles every kernel
        now (a batch-1 run that changes nothing) rather than on first use; progress=True shows
        a progress bar over its instructions (a cold kernel cache takes a while).
        plan_memory=False gives every tensor its own buffer instead of one planned
        arena per phase and batch size (for debugging). kernel_dir: where the target writes
        and compiles its generated kernels (default: a folder in netspec's cache).
        batch: the batch size the model will run at. Before anything is allocated, the memory
        it needs there (`model.memory_needed`) is checked against the memory available: a
        network that cannot fit raises netspec.resources.ResourceError with the sizes.
        sync_batchnorm: the training step computes each batch norm's batch sums (forward) and
        gradient sums (backward) in instructions of their own, which a data-parallel run adds up
        over its ranks in between (training/distributed.py); alone, the step computes what it
        computes without.
        """
        from .model import Model, check_memory
        from .runtime.targets import get_target
        get_target(target)          # an unknown name fails here, before any work
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        program = self.program(training, dtype, loss, input_grads, passes, sync_batchnorm)
        check_memory(self, program, batch, target, plan_memory)
        return Model(self, program, target, seed, warmup, plan_memory, kernel_dir, progress)

    def svg(self, depth: int | None = None) -> str | None:
        """The diagram as SVG text (`netspec render`'s), blocks nested deeper than `depth`
        folded; None when Graphviz cannot draw it (`dot` missing, too many boxes)."""
        from .report.render import svg_or_source
        fmt, text, _ = svg_or_source(self.graph, depth)
        return text if fmt == "svg" else None

    def _repr_svg_(self) -> str | None:
        """Jupyter's picture of the network: folded to fit a page (report.render.page_depth).
        None (Jupyter then shows the text repr) when Graphviz cannot draw it."""
        from .report.render import page_depth
        return self.svg(page_depth(self.graph))

    def __repr__(self) -> str:
        t, n = self.graph.total_params()
        return f"<Network {self.name}: {len(self.graph)} layers, {t + n:,} params>"


def input_shapes(shape) -> dict:
    """input_shape as the elaborator takes it: {input name (None: the only one): shape tuple}."""
    if shape is None:
        return {}
    if isinstance(shape, dict):
        return {name: _shape(s, name) for name, s in shape.items()}
    return {None: _shape(shape, None)}


def _shape(shape, name) -> tuple:
    from .errors import OverrideError
    from .lang.parser import MAX_INT, parse_shape_text
    what = "input_shape" if name is None else f"input_shape['{name}']"
    if isinstance(shape, str):
        try:
            return parse_shape_text(shape)
        except ValueError as e:
            raise OverrideError(f"cannot read {what} '{shape}': {e}",
                                hint="write C@HxW, e.g. 3@224x224, TxF, e.g. 197x768, "
                                     "or a length such as 784") from None
    dims = (shape,) if isinstance(shape, int) else shape
    if not isinstance(dims, (tuple, list)) or not all(
            isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= MAX_INT for d in dims):
        raise OverrideError(f"{what} must be a shape such as (3, 224, 224), 784 or \"3@224x224\", "
                            f"got {shape!r}")
    return tuple(dims)


def load_model(path, target: str = "cpu", training: bool = True):
    """The Model that Model.save wrote to `path`: its spec built with the stored settings,
    compiled for `target`, with its weights, input normalisation and class names."""
    from . import pipeline
    from .runtime.checkpoint import WeightsError, load_arrays
    from .training.metadata import check_fits, read_metadata, stored_flags
    arrays, raw = load_arrays(path)
    meta = read_metadata(raw, path)
    if meta.spec is None:
        raise WeightsError(f"{path} holds no spec text, only weights (Model.save_weights writes "
                           "those): load its spec, compile it and use model.load_weights")
    sets, input_shape = stored_flags(meta)
    from .lang.elaborate import parse_value
    params = {k: parse_value(v) for k, v in (item.split("=", 1) for item in sets)}
    name = (meta.context or {}).get("network")
    inputs = {}
    if input_shape:
        input_name, _, shape = input_shape.rpartition("=")
        inputs = input_shapes({input_name or None: shape})
    network = Network(*pipeline.loads(meta.spec, str(path), name, params, inputs), params,
                      inputs, name)
    check_fits(meta, network.graph, arrays, path, context_used=True)
    model = network.compile(target=target, training=training, loss=meta.loss if training else None)
    model.set_weights(arrays, strict=True, source=str(path), error=WeightsError)
    model.input_norm, model.class_names = meta.norm, meta.class_names
    return model


def _value_text(value) -> str | None:
    """A parameter's value as a --set value reads it, or None."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value + '"' if '"' not in value else None
    if isinstance(value, tuple):
        parts = [_value_text(v) for v in value]
        return None if None in parts else "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"
    name = getattr(value, "name", None)     # a bare word (a Symbol), as --set reads one
    return name if isinstance(name, str) and name.isidentifier() else None


def _same_value(read, value) -> bool:
    return read == value or getattr(read, "name", None) == getattr(value, "name", object())
