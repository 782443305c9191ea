"""netspec: a declarative network-graph compiler.

    net = netspec.load("specs/lenet5.net", classes=10)
    print(net.summary(batch=32).table())
    graph = net.graph            # the checked networkx-based IR

The stages behind these (load -> elaborate -> verify -> passes -> lower -> autodiff -> plan)
are assembled once, in netspec/pipeline.py.
"""

from __future__ import annotations

from .errors import SpecError
from .network import Network

__version__ = "0.1.0"
__all__ = ["load", "loads", "Network", "SpecError", "__version__"]


def load(path, network: str | None = None, input_shape=None, **params) -> Network:
    """Load and check a spec file; keyword arguments override network parameters."""
    from . import pipeline
    return Network(*pipeline.load(path, network, params, _inputs(input_shape)))


def loads(text: str, file: str = "<spec>", network: str | None = None, input_shape=None,
          **params) -> Network:
    """Like load, from spec text."""
    from . import pipeline
    return Network(*pipeline.loads(text, file, network, params, _inputs(input_shape)))


def _inputs(shape):
    if shape is None:
        return {}
    if isinstance(shape, dict):
        return shape
    if isinstance(shape, str):
        from .lang.parser import parse_shape_text
        shape = parse_shape_text(shape)
    return {None: tuple(shape)}
