"""A checked network: its spec, its graph, and what the pipeline makes of it.

    net = netspec.load("specs/lenet5.net", classes=10)
    print(net.summary(batch=32).table())
    program = net.program()                  # the lowered Program, readable with .text()
    model = net.compile()                    # a callable Model (netspec/model.py)
"""

from __future__ import annotations


class Network:
    """A checked network: its spec, its graph, and views of it."""

    def __init__(self, spec, graph):
        self.spec = spec
        self.graph = graph

    @property
    def name(self) -> str:
        return self.graph.name

    def summary(self, batch: int = 1, optimizer: str | None = None):
        from .report.summary import summarize
        return summarize(self.graph, batch, optimizer)

    def program(self, training: bool = True, dtype: str = "float32", loss: str | None = None,
                input_grads: bool = False, passes=None):
        """The lowered Program (readable with `.text()`), without compiling kernels.
        passes: graph pass names (netspec.passes; None: the default ones, [] for none)."""
        from . import pipeline
        return pipeline.program(self.graph, training, dtype, loss, input_grads, passes)

    def compile(self, target: str = "cpu", training: bool = True, dtype: str = "float32",
                loss: str | None = None, input_grads: bool = False, seed: int = 0,
                warmup: bool = True, passes=None, plan_memory: bool = True, kernel_dir=None,
                batch: int = 1, progress: bool = False):
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
        """
        from .model import Model, check_memory
        from .runtime.targets import get_target
        get_target(target)          # an unknown name fails here, before any work
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        program = self.program(training, dtype, loss, input_grads, passes)
        check_memory(self, program, batch, target, plan_memory)
        return Model(self, program, target, seed, warmup, plan_memory, kernel_dir, progress)

    def __repr__(self) -> str:
        t, n = self.graph.total_params()
        return f"<Network {self.name}: {len(self.graph)} layers, {t + n:,} params>"
