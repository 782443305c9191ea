"""An independent PyTorch interpreter of a netspec graph: the test oracle and benchmark peer.

It reads only the checked graph (`net.graph`: nodes, ops, attributes, parameter
shapes) and runs each node through its op's PyTorch rule (`Op.torch`, written next to
the op in netspec/ops/ with torch.nn.functional alone), so it shares no code with the
compiler's lowering or the runtimes: agreeing with it means something.

    from netspec.testing.torch_ref import TorchGraph, torch_params, loss
    model = TorchGraph(net.graph)                 # float64, random weights (seed 0)
    model.load(params)                            # {"c1.weight": array, ...}, PyTorch layouts
    outs = model(x_nchw)                          # {node name: output}, every node
    loss(net.graph, outs, y, "sparse_categorical_crossentropy").backward()
    model.grads(); model.state()                  # {netspec name: ndarray}

Conventions it implements (see the ops' docstrings):
- pad=same is TensorFlow's: out = ceil(H / s), total = max((out-1)*s + d*(k-1)+1 - H, 0),
  top = total // 2, bottom = the rest; explicit padding is symmetric; valid is none;
- maxpool padding is -inf; avgpool include_pad=false divides by the real pixels in each window;
- conv_transpose pad=same gives H*s: the adjoint of a same-padded conv of an H*s input;
- batchnorm momentum is Keras's decay (torch momentum = 1 - it); eps is added to the variance;
- lrn is PyTorch's LocalResponseNorm; softmax is over the channels (axis 1);
- flatten and reshape are channel-major (NCHW order).

torch is a test dependency only: nothing in netspec imports this module (the ops' PyTorch
rules import torch inside the rule, and pad with ops/reference/common.py's torch_padded).
"""

from __future__ import annotations

import math
import re
import zlib

import numpy as np
import torch
import torch.nn.functional as F

from ..ops.cases import Run

__all__ = ["TorchGraph", "torch_params", "loss", "CROSS_ENTROPY"]

CROSS_ENTROPY = ("sparse_categorical_crossentropy", "categorical_crossentropy")


# ---------------------------------------------------------------- padding (for the ops' rules)

# ---------------------------------------------------------------- parameters

def torch_params(graph, seed: int = 0, dtype=torch.float64,
                 calibrate: bool = True) -> dict[str, torch.Tensor]:
    """Random parameters for every node, named f"{node}.{param}", in PyTorch layouts.

    Weights are He-normal (std sqrt(2 / fan_in)); biases small; batchnorm weight near 1,
    bias near 0; prelu slopes near 0.25. Each tensor depends only on (seed, its name).

    Batchnorm running statistics: with `calibrate` (the default) they are set from one
    forward pass of a random normal batch (the batch's mean and variance, perturbed a
    little), so that inference-mode activations keep a sane scale even in deep residual
    networks (uncalibrated, ResNet-152's logits reach ~1e10); without it, running_mean
    is near 0 and running_var in [0.5, 1.5].
    """
    out = {}
    for node in graph.nodes():
        for p in node.params:
            name = f"{node.name}.{p.name}"
            rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
            value = node.opdef.torch_param(node.attrs, p, rng)
            out[name] = torch.as_tensor(np.asarray(value, dtype=np.float64), dtype=dtype)
    if calibrate and any(_keeps_statistics(n) for n in graph.nodes()):
        model = TorchGraph(graph, dtype=dtype, params=out)
        model.calibrate(seed=seed)
        out = {name: torch.as_tensor(v) for name, v in model.state().items()}
    return out


# ---------------------------------------------------------------- the interpreter

def _keeps_statistics(node) -> bool:
    """Whether a node has running statistics (parameters it does not train): a batch norm."""
    return any(not p.trainable for p in node.params)


def _legal(name: str) -> str:
    return re.sub(r"\W", "_", name)


class TorchGraph(torch.nn.Module):
    """A netspec graph run op by op with torch.nn.functional.

    Trainable parameters are nn.Parameters (frozen ones, `trainable=false`, have
    requires_grad off); batchnorm running statistics are buffers. Attribute names
    are the netspec names made legal; `self.names` maps netspec name -> attribute.
    Without `params`, it starts from `torch_params(graph, seed, dtype, calibrate)`.
    """

    def __init__(self, graph, dtype=torch.float64, seed: int = 0, params=None,
                 calibrate: bool = True):
        super().__init__()
        self.graph = graph
        self.dtype = dtype
        self.nodes = list(graph.nodes())
        self.names: dict[str, str] = {}       # netspec name -> attribute name
        init = torch_params(graph, seed, dtype, calibrate) if params is None else None
        taken: set[str] = set()
        for node in self.nodes:
            for p in node.params:
                name = f"{node.name}.{p.name}"
                attr = base = "p_" + _legal(name)
                k = 1
                while attr in taken:
                    k += 1
                    attr = f"{base}_{k}"
                taken.add(attr)
                self.names[name] = attr
                value = init[name] if init is not None else torch.zeros(p.shape, dtype=dtype)
                if p.trainable:
                    self.register_parameter(
                        attr, torch.nn.Parameter(value.clone(),
                                                 requires_grad=bool(node.trainable)))
                else:
                    self.register_buffer(attr, value.clone())
        if params is not None:
            self.load(params)

    # -- parameters
    def tensor(self, name: str) -> torch.Tensor:
        """The parameter or buffer of netspec name `name` (e.g. 'c1.weight')."""
        return getattr(self, self.names[name])

    def _p(self, node, pname: str):
        attr = self.names.get(f"{node.name}.{pname}")
        return None if attr is None else getattr(self, attr)

    def load(self, params: dict, strict: bool = True) -> "TorchGraph":
        """Copy values in from {netspec name: ndarray or Tensor} (PyTorch layouts)."""
        unknown = set(params) - set(self.names)
        missing = set(self.names) - set(params)
        if strict and (unknown or missing):
            raise KeyError(f"load: unknown {sorted(unknown)[:5]}, missing {sorted(missing)[:5]}")
        with torch.no_grad():
            for name, value in params.items():
                if name not in self.names:
                    continue
                t = self.tensor(name)
                v = torch.as_tensor(np.asarray(value) if not torch.is_tensor(value) else value)
                if tuple(v.shape) != tuple(t.shape):
                    raise ValueError(f"load: {name} has shape {tuple(v.shape)}, "
                                     f"expected {tuple(t.shape)}")
                t.copy_(v.to(t.dtype))
        return self

    def grads(self) -> dict[str, np.ndarray]:
        """{netspec name: gradient} of the trainable parameters that have one (after backward)."""
        out = {}
        for name, attr in self.names.items():
            t = getattr(self, attr)
            if isinstance(t, torch.nn.Parameter) and t.grad is not None:
                out[name] = t.grad.detach().cpu().numpy().copy()
        return out

    def state(self) -> dict[str, np.ndarray]:
        """{netspec name: value} of every parameter and running statistic."""
        return {name: getattr(self, attr).detach().cpu().numpy().copy()
                for name, attr in self.names.items()}

    @torch.no_grad()
    def calibrate(self, x=None, seed: int = 0, batch: int | None = None) -> "TorchGraph":
        """Set every batchnorm's running statistics from a forward pass of `x`.

        Each batchnorm takes its input's batch mean (+ 0.1 * std * noise) and variance
        (x U(0.8, 1.25)) as running statistics, then normalises with them in inference
        mode, so the next batchnorm sees calibrated inputs. `x` defaults to a standard
        normal batch of `batch` samples; by default enough (2 to 32) for every batchnorm
        to see at least 32 values per channel.
        """
        rng = np.random.default_rng([seed, 7])
        if x is None:
            if batch is None:
                pixels = min((math.prod(n.shape[1:]) for n in self.nodes if _keeps_statistics(n)),
                             default=32)
                batch = min(max(-(-32 // pixels), 2), 32)
            x = {name: rng.standard_normal((batch, *self.graph.node(name).shape))
                 for name in self.graph.inputs}
        was_training = self.training
        self.eval()
        self._calibrate_rng = rng
        try:
            self.forward(x)
        finally:
            self._calibrate_rng = None
            self.train(was_training)
        return self

    _calibrate_rng = None

    # -- running
    def forward(self, x, dropout_masks: dict | None = None,
                keep=None) -> dict[str, torch.Tensor]:
        """Every value, {name: tensor} (NCHW maps, (N, F) vectors): each node's output, or
        each part of a node of several ('split1:0').

        `x`: the input (N, C, H, W) or (N, F), or {input name: array} for several inputs.
        `dropout_masks`: {random node (dropout, drop_path): mask}, the mask already scaled by
        1 / (1 - rate) (drop_path's: one value per sample); used in training mode instead of
        the op's own random draw.
        `keep`: if given, only these values are returned, and every other one is
        dropped as soon as its last consumer has run (as a framework frees activations;
        for benchmarking). Autograd keeps what backward needs either way.
        """
        if not isinstance(x, dict):
            if len(self.graph.inputs) != 1:
                raise ValueError(f"the graph has inputs {self.graph.inputs}: pass a dict")
            x = {self.graph.inputs[0]: x}
        vals: dict[str, torch.Tensor] = {}
        if keep is not None:
            keep = set(keep)
            left = {v: 0 for n in self.nodes for v in self.graph.values(n)}
            for n in self.nodes:
                for i in set(n.inputs):
                    left[i] += 1
        for node in self.nodes:
            if node.name in self.graph.inputs:
                vals[node.name] = _as_tensor(x[node.name], self.dtype)
                continue
            ins = [vals[i] for i in node.inputs]
            mask = (dropout_masks or {}).get(node.name)
            run = Run(self.training, node.trainable, tuple(node.shape),
                      None if mask is None else _as_tensor(mask, self.dtype), self._calibrate_rng)
            params = {p.name: self._p(node, p.name) for p in node.params}
            y = node.opdef.torch(node.attrs, ins, params, run)
            values = self.graph.values(node)
            for name, part in zip(values, y if node.parts else [y]):
                expected = tuple(self.graph.shape_of(name))
                if tuple(part.shape[1:]) != expected:
                    raise AssertionError(f"torch_ref: {name} ({node.op}) gave "
                                         f"{tuple(part.shape[1:])}, the graph says {expected}")
                vals[name] = part
            if keep is not None:
                for i in set(node.inputs):
                    left[i] -= 1
                    if not left[i] and i not in keep:
                        del vals[i]
        if keep is not None:
            return {name: v for name, v in vals.items() if name in keep}
        return vals


def _as_tensor(v, dtype) -> torch.Tensor:
    return v.to(dtype) if torch.is_tensor(v) else torch.as_tensor(np.asarray(v), dtype=dtype)


# ---------------------------------------------------------------- loss

def loss(graph, outputs: dict, targets, loss_name: str, output: str | None = None) -> torch.Tensor:
    """The training loss as netspec defines it, a 0-d tensor (mean over the batch).

    (sparse_)categorical_crossentropy: from the logits, the input of a final softmax
    (else the output itself), F.cross_entropy; targets int labels (N,) or
    probabilities (N, K). binary_crossentropy: from the logits of a final sigmoid
    (else the output itself), mean over all elements. mse: mean over all elements.
    `output`: which graph output (default the first).
    """
    name = output or graph.outputs[0]
    node = graph.producer(name)
    y = outputs[name]
    t = targets if torch.is_tensor(targets) else torch.as_tensor(np.asarray(targets))
    if loss_name in CROSS_ENTROPY:
        logits = outputs[node.inputs[0]] if node.op == "softmax" else y
        if loss_name == "sparse_categorical_crossentropy":
            return F.cross_entropy(logits, t.long())
        return F.cross_entropy(logits, t.to(logits.dtype))
    if loss_name == "binary_crossentropy":
        logits = outputs[node.inputs[0]] if node.op == "sigmoid" else y
        return F.binary_cross_entropy_with_logits(logits, t.to(logits.dtype))
    if loss_name == "mse":
        return F.mse_loss(y, t.to(y.dtype))
    raise ValueError(f"unknown loss {loss_name}")
