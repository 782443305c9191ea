"""netspec: a declarative network-graph compiler.

    net = netspec.load("specs/lenet5.net", classes=10)
    print(net.summary(batch=32))        # the table; .macs, .training_bytes, ... per batch
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
    """Load and check a spec file: the checked Network.

    network: which network of the file (needed when it defines several), as --network.
    input_shape: replaces the spec's input shape, as --input: "3@64x64", (3, 64, 64), 784,
    or {input name: shape} for a network with several inputs.
    params: network parameters by name, as --set (`classes=100`, `kernel=(1, 5)`,
    `mode="fast"`). A name or shape the spec does not have raises
    netspec.errors.OverrideError, a SpecError.
    """
    from . import pipeline
    return Network(*pipeline.load(path, network, params, _inputs(input_shape)))


def loads(text: str, file: str = "<spec>", network: str | None = None, input_shape=None,
          **params) -> Network:
    """Like load, from spec text (shown as `file` in error messages)."""
    from . import pipeline
    return Network(*pipeline.loads(text, file, network, params, _inputs(input_shape)))


def _inputs(shape) -> dict:
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
