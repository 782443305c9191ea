"""Checking an ONNX export against the PyTorch oracle: the helpers tests/test_onnx_export.py and
tools/onnx_export_table.py share. Test dependencies only (torch, onnxruntime)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import netspec
from ..interop.onnx_export import export
from .. import pipeline
from .specs import SMALL
from .torch_ref import TorchGraph, torch_params

SPECS_DIR = Path(__file__).resolve().parents[2] / "specs"


def small(name: str):
    """A shipped spec at the small size the tests load it at (testing/specs.py)."""
    return netspec.load(SPECS_DIR / f"{name}.net", **SMALL.get(name, {}))


def run_onnx(model, feeds: dict) -> list[np.ndarray]:
    """The model's outputs by onnxruntime on the CPU (one thread), inputs as float32."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {k: np.asarray(v, np.float32) for k, v in feeds.items()})


def oracle(graph, params, feeds) -> list[np.ndarray]:
    """The graph's outputs in float64 PyTorch, inference mode, with `params`."""
    model = TorchGraph(graph, params=params).eval()
    with torch.no_grad():
        values = model({k: np.asarray(v, np.float64) for k, v in feeds.items()})
    return [values[name].numpy() for name in graph.outputs]


def worst_error(got, want) -> float:
    """max |got - want| over the largest |want| (1 where all are smaller)."""
    return max(float(np.max(np.abs(g - w))) / max(float(np.max(np.abs(w))), 1.0)
               for g, w in zip(got, want))


def random_feeds(graph, batch: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal((batch, *graph.node(name).shape)).astype(np.float32)
            for name in graph.inputs}


def float_params(graph, seed: int = 0) -> dict[str, np.ndarray]:
    """Random parameters in PyTorch's layouts, batch norms' statistics calibrated (so that
    deep networks keep sane activations), rounded to float32: what both sides compute with."""
    from netspec.testing.torch_ref import torch_params
    return {k: v.numpy().astype(np.float32).astype(np.float64)
            for k, v in torch_params(graph, seed=seed).items()}


def check_exports(graph, params, batch=3, rtol=1e-4) -> dict[str, float]:
    """Export `graph` as written and after the default passes, run both; the worst error of
    each against the oracle, which must be under rtol."""
    feeds = random_feeds(graph, batch)
    want = oracle(graph, params, feeds)
    errors = {}
    for when, g in (("as written", graph), ("after the passes", pipeline.optimise(graph, training=False).infer)):
        got = run_onnx(export(g, params), feeds)
        assert [a.shape for a in got] == [w.shape for w in want]
        errors[when] = worst_error(got, want)
        assert errors[when] < rtol, f"{when}: worst error {errors[when]:.3g}"
    return errors


# ---------------------------------------------------------------- PyTorch's exporter, netspec's import

class _Outputs(torch.nn.Module):
    """The oracle of a graph as a module of the graph's inputs and outputs only."""

    def __init__(self, model: TorchGraph):
        super().__init__()
        self.model = model

    def forward(self, *xs):
        values = self.model(dict(zip(self.model.graph.inputs, xs)))
        outs = [values[name] for name in self.model.graph.outputs]
        return outs[0] if len(outs) == 1 else tuple(outs)


def torch_export(graph, path, seed: int = 0, batch: int = 2) -> None:
    """The PyTorch oracle of `graph` (float32, random parameters with calibrated batch norms,
    inference mode) exported by PyTorch's own exporter (torch.onnx.export, the dynamo one):
    an ONNX model no one here wrote."""
    import warnings
    model = TorchGraph(graph, dtype=torch.float32, seed=seed).eval()
    xs = tuple(torch.randn(batch, *graph.node(name).shape) for name in graph.inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Outputs(model), xs, str(path), dynamo=True, external_data=False,
                          input_names=list(graph.inputs), verbose=False)


def imported_error(path, seed: int = 0, batch: int = 2):
    """`netspec import` of the ONNX file at `path`, compiled (float32, CPU) and run on random
    inputs beside onnxruntime on the file: (the Imported, worst error of netspec against
    onnxruntime, the file's initializers' element count)."""
    import onnx
    from ..interop.onnx_export import parameter_count
    from ..interop.onnx_import import import_onnx
    imported = import_onnx(path)
    graph = imported.graph
    model = netspec.loads(imported.text).compile(training=False, warmup=False)
    model.set_weights(imported.weights)
    feeds = random_feeds(graph, batch, seed)
    proto = onnx.load(str(path))
    names = [i.name for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    want = run_onnx(proto, dict(zip(names, feeds.values())))
    got = model(feeds if len(feeds) > 1 else next(iter(feeds.values())))
    got = list(got.values()) if isinstance(got, dict) else [got]
    return imported, worst_error(got, want), parameter_count(proto)
