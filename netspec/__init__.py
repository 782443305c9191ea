"""netspec: a declarative network-graph compiler.

    net = netspec.load("specs/lenet5.net", classes=10)
    print(net.summary(batch=32))        # the table; .macs, .training_bytes, ... per batch
    model = net.compile()
    history = model.fit("digits", epochs=2)
    model.save("lenet5.model.safetensors")    # netspec.load_model reads it back
    graph = net.graph            # the checked networkx-based IR

The Python API in full: docs/PYTHON.md.

The stages behind these (load -> elaborate -> verify -> passes -> lower -> autodiff -> plan)
are assembled once, in netspec/pipeline.py.
"""

from __future__ import annotations

from .errors import SpecError, StopTraining
from .network import Network, input_shapes, load_model

__version__ = "0.1.0"
__all__ = ["load", "loads", "load_model", "Network", "SpecError", "StopTraining", "__version__"]


def load(path, network: str | None = None, input_shape=None, **params) -> Network:
    """Load and check a spec file: the checked Network.

    network: which network of the file (needed when it defines several), as --network.
    input_shape: replaces the spec's input shape, as --input: "3@64x64", (3, 64, 64), 784,
    or {input name: shape} for a network with several inputs.
    params: network parameters by name, as --set (`classes=100`, `kernel=(1, 5)`,
    `mode="fast"`). A name or shape the spec does not have raises
    netspec.errors.OverrideError, a SpecError.
    """
    from . import pipeline
    inputs = input_shapes(input_shape)
    return Network(*pipeline.load(path, network, params, inputs), params, inputs, network)


def loads(text: str, file: str = "<spec>", network: str | None = None, input_shape=None,
          **params) -> Network:
    """Like load, from spec text (shown as `file` in error messages)."""
    from . import pipeline
    inputs = input_shapes(input_shape)
    return Network(*pipeline.loads(text, file, network, params, inputs), params, inputs, network)
