"""An independent PyTorch interpreter of a netspec graph: the test oracle and benchmark peer.

It reads only the checked graph (`net.graph`: nodes, ops, attributes, parameter
shapes) and the ops' documented semantics (`netspec/ops/*.py`), and shares no
code with the compiler or the runtimes, so agreeing with it means something.

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

torch is a test dependency only: nothing in netspec imports this module.
"""

from __future__ import annotations

import math
import re
import zlib

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["TorchGraph", "torch_params", "loss", "same_pads", "CROSS_ENTROPY"]

CROSS_ENTROPY = ("sparse_categorical_crossentropy", "categorical_crossentropy")


# ---------------------------------------------------------------- padding

def same_pads(size: int, k: int, s: int, d: int = 1) -> tuple[int, int]:
    """TensorFlow 'same' padding (before, after) along one axis: the odd pixel goes after."""
    span = d * (k - 1) + 1
    out = -(-size // s)
    total = max((out - 1) * s + span - size, 0)
    return total // 2, total - total // 2


def _pads(attrs, h: int, w: int, dilation=(1, 1)) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) for a windowed op's pad attribute."""
    pad = attrs["pad"]
    if pad == "valid":
        return 0, 0, 0, 0
    if pad == "same":
        kh, kw = attrs["kernel"]
        sh, sw = attrs["stride"]
        t, b = same_pads(h, kh, sh, dilation[0])
        l, r = same_pads(w, kw, sw, dilation[1])
        return t, b, l, r
    ph, pw = pad
    return ph, ph, pw, pw


def _pad(x: torch.Tensor, pads, value: float = 0.0) -> torch.Tensor:
    t, b, l, r = pads
    if not (t or b or l or r):
        return x
    return F.pad(x, (l, r, t, b), value=value)


# ---------------------------------------------------------------- parameters

def _fan_in(node, p) -> float:
    """Inputs feeding one output of the op (for a variance-keeping random scale)."""
    shape = p.shape
    if node.op == "dense":
        return shape[1]
    if node.op == "conv_transpose":
        a = node.attrs
        # each output pixel sees ~ Cin/groups * kh*kw / (sh*sw) inputs
        return max(1.0, shape[0] / a["groups"] * shape[2] * shape[3]
                   / (a["stride"][0] * a["stride"][1]))
    return math.prod(shape[1:])          # conv OIHW, depthwise (Cm,1,kh,kw), pointwise (F,Cm,1,1)


def _random(node, p, rng: np.random.Generator) -> np.ndarray:
    shape = p.shape
    if node.op == "batchnorm":
        if p.name == "weight":
            return 1.0 + 0.1 * rng.standard_normal(shape)
        if p.name == "running_var":
            return rng.uniform(0.5, 1.5, shape)
        return 0.1 * rng.standard_normal(shape)              # bias, running_mean
    if node.op == "prelu":
        return 0.25 + 0.05 * rng.standard_normal(shape)
    if p.name == "bias":
        return 0.05 * rng.standard_normal(shape)
    if "weight" in p.name:                                    # weight, depthwise_/pointwise_weight
        return rng.standard_normal(shape) * math.sqrt(2.0 / _fan_in(node, p))
    # an op this module does not know: follow the initialiser's name
    if p.init == "ones":
        return 1.0 + 0.1 * rng.standard_normal(shape)
    if p.init.startswith("constant:"):
        return float(p.init.split(":", 1)[1]) + 0.05 * rng.standard_normal(shape)
    return 0.1 * rng.standard_normal(shape)


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
            out[name] = torch.as_tensor(np.asarray(_random(node, p, rng), dtype=np.float64),
                                        dtype=dtype)
    if calibrate and any(n.op == "batchnorm" for n in graph.nodes()):
        model = TorchGraph(graph, dtype=dtype, params=out)
        model.calibrate(seed=seed)
        out = {name: torch.as_tensor(v) for name, v in model.state().items()}
    return out


# ---------------------------------------------------------------- the interpreter

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
                pixels = min((math.prod(n.shape[1:]) for n in self.nodes if n.op == "batchnorm"),
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
        """Every node's output, {name: tensor} (NCHW maps, (N, F) vectors).

        `x`: the input (N, C, H, W) or (N, F), or {input name: array} for several inputs.
        `dropout_masks`: {dropout node: mask}, the mask already scaled by 1 / (1 - rate);
        used in training mode instead of F.dropout's own random draw.
        `keep`: if given, only these nodes' outputs are returned, and every other output is
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
            left = {n.name: 0 for n in self.nodes}
            for n in self.nodes:
                for i in set(n.inputs):
                    left[i] += 1
        for node in self.nodes:
            if node.op == "input":
                v = x[node.name]
                v = v.to(self.dtype) if torch.is_tensor(v) else torch.as_tensor(
                    np.asarray(v), dtype=self.dtype)
                vals[node.name] = v
                continue
            ins = [vals[i] for i in node.inputs]
            fn = getattr(self, "_op_" + node.op, None)
            if fn is None:
                raise NotImplementedError(f"torch_ref: no rule for op {node.op} ({node.name})")
            y = fn(node, node.attrs, ins, dropout_masks)
            expected = tuple(node.shape)
            if tuple(y.shape[1:]) != expected:
                raise AssertionError(f"torch_ref: {node.name} ({node.op}) gave "
                                     f"{tuple(y.shape[1:])}, the graph says {expected}")
            vals[node.name] = y
            if keep is not None:
                for i in set(node.inputs):
                    left[i] -= 1
                    if not left[i] and i not in keep:
                        del vals[i]
        if keep is not None:
            return {name: v for name, v in vals.items() if name in keep}
        return vals

    # -- ops: (node, attrs, inputs, dropout_masks) -> output
    def _op_conv(self, node, a, ins, masks):
        x = ins[0]
        x = _pad(x, _pads(a, x.shape[2], x.shape[3], a["dilation"]))
        return F.conv2d(x, self._p(node, "weight"), self._p(node, "bias"), a["stride"], 0,
                        a["dilation"], a["groups"])

    def _op_depthwise_conv(self, node, a, ins, masks):
        x = ins[0]
        c = x.shape[1]
        x = _pad(x, _pads(a, x.shape[2], x.shape[3], a["dilation"]))
        return F.conv2d(x, self._p(node, "weight"), self._p(node, "bias"), a["stride"], 0,
                        a["dilation"], c)

    def _op_separable_conv(self, node, a, ins, masks):
        x = ins[0]
        c = x.shape[1]
        x = _pad(x, _pads(a, x.shape[2], x.shape[3], a["dilation"]))
        h = F.conv2d(x, self._p(node, "depthwise_weight"), None, a["stride"], 0, a["dilation"], c)
        return F.conv2d(h, self._p(node, "pointwise_weight"), self._p(node, "bias"))

    def _op_conv_transpose(self, node, a, ins, masks):
        x = ins[0]
        w, b = self._p(node, "weight"), self._p(node, "bias")
        if a["pad"] != "same":
            p = (0, 0) if a["pad"] == "valid" else a["pad"]
            return F.conv_transpose2d(x, w, b, a["stride"], p, a["output_padding"], a["groups"],
                                      a["dilation"])
        # The adjoint of a same-padded conv whose input is H*s: the full transposed output
        # lands in that conv's padded input (length H*s + total), from which the padding is cut.
        y = F.conv_transpose2d(x, w, None, a["stride"], 0, 0, a["groups"], a["dilation"])
        for axis in (0, 1):
            size, k, s, d = x.shape[2 + axis], a["kernel"][axis], a["stride"][axis], \
                a["dilation"][axis]
            target = size * s
            before, after = same_pads(target, k, s, d)
            full = y.shape[2 + axis]
            # padded length = target + before + after >= full; the tail the conv never read
            # (when d*(k-1)+1 < s) is zeros
            extra = target + before + after - full
            if extra > 0:
                y = F.pad(y, (0, extra, 0, 0) if axis else (0, 0, 0, extra))
            y = y.narrow(2 + axis, before, target)
        if b is not None:
            y = y + b.view(1, -1, 1, 1)
        return y

    def _op_maxpool(self, node, a, ins, masks):
        x = ins[0]
        x = _pad(x, _pads(a, x.shape[2], x.shape[3]), value=-math.inf)
        return F.max_pool2d(x, a["kernel"], a["stride"])

    def _op_avgpool(self, node, a, ins, masks):
        x = ins[0]
        pads = _pads(a, x.shape[2], x.shape[3])
        y = F.avg_pool2d(_pad(x, pads), a["kernel"], a["stride"])      # divisor kh*kw
        if a["include_pad"] or not any(pads):
            return y
        ones = _pad(torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype), pads)
        frac = F.avg_pool2d(ones, a["kernel"], a["stride"])             # real pixels / (kh*kw)
        return y / frac

    def _op_global_avgpool(self, node, a, ins, masks):
        return ins[0].mean(dim=(2, 3))

    def _op_global_maxpool(self, node, a, ins, masks):
        return ins[0].flatten(2).max(dim=2).values

    def _op_dense(self, node, a, ins, masks):
        return F.linear(ins[0], self._p(node, "weight"), self._p(node, "bias"))

    def _op_flatten(self, node, a, ins, masks):
        return ins[0].reshape(ins[0].shape[0], -1)

    def _op_reshape(self, node, a, ins, masks):
        return ins[0].reshape(ins[0].shape[0], *node.shape)

    def _op_batchnorm(self, node, a, ins, masks):
        if self._calibrate_rng is not None:
            x = ins[0]
            dims = [d for d in range(x.dim()) if d != 1]
            mean, var = x.mean(dim=dims), x.var(dim=dims, unbiased=False)
            c = mean.shape[0]
            rng = self._calibrate_rng
            noise = torch.as_tensor(rng.standard_normal(c), dtype=x.dtype)
            scale = torch.as_tensor(rng.uniform(0.8, 1.25, c), dtype=x.dtype)
            self._p(node, "running_mean").copy_(mean + 0.1 * var.sqrt() * noise)
            self._p(node, "running_var").copy_(var * scale + 1e-3)
        x = ins[0]
        if self.training and x.numel() == x.shape[1]:
            # one value per channel (batch 1, a vector): torch refuses; netspec's batch variance
            # is then 0 (the biased one), so y = bias and the running stats move toward (x, 0)
            mom = 1.0 - a["momentum"]
            rm, rv = self._p(node, "running_mean"), self._p(node, "running_var")
            with torch.no_grad():
                rm.mul_(1 - mom).add_(mom * x.detach().reshape(-1))
                rv.mul_(1 - mom)
            y = (x - x) * (1.0 / math.sqrt(a["epsilon"]))
            w, b = self._p(node, "weight"), self._p(node, "bias")
            shape = (1, -1) + (1,) * (x.dim() - 2)
            if w is not None:
                y = y * w.view(shape)
            return y + b.view(shape) if b is not None else y
        return F.batch_norm(ins[0], self._p(node, "running_mean"), self._p(node, "running_var"),
                            self._p(node, "weight"), self._p(node, "bias"),
                            training=self.training, momentum=1.0 - a["momentum"],
                            eps=a["epsilon"])

    def _op_lrn(self, node, a, ins, masks):
        return F.local_response_norm(ins[0], a["size"], a["alpha"], a["beta"], a["k"])

    def _op_dropout(self, node, a, ins, masks):
        x = ins[0]
        if not self.training or a["rate"] == 0:
            return x
        if masks is not None and node.name in masks:
            m = masks[node.name]
            m = m.to(x.dtype) if torch.is_tensor(m) else torch.as_tensor(np.asarray(m),
                                                                         dtype=x.dtype)
            return x * m
        return F.dropout(x, a["rate"], training=True)

    def _op_relu(self, node, a, ins, masks):
        return F.relu(ins[0])

    def _op_relu6(self, node, a, ins, masks):
        return F.relu6(ins[0])

    def _op_leaky_relu(self, node, a, ins, masks):
        return F.leaky_relu(ins[0], a["alpha"])

    def _op_prelu(self, node, a, ins, masks):
        return F.prelu(ins[0], self._p(node, "weight"))

    def _op_elu(self, node, a, ins, masks):
        return F.elu(ins[0], a["alpha"])

    def _op_selu(self, node, a, ins, masks):
        return F.selu(ins[0])

    def _op_tanh(self, node, a, ins, masks):
        return torch.tanh(ins[0])

    def _op_sigmoid(self, node, a, ins, masks):
        return torch.sigmoid(ins[0])

    def _op_softmax(self, node, a, ins, masks):
        return F.softmax(ins[0], dim=1)

    def _op_identity(self, node, a, ins, masks):
        return ins[0]

    def _op_add(self, node, a, ins, masks):
        y = ins[0]
        for t in ins[1:]:
            y = y + t
        return y

    def _op_concat(self, node, a, ins, masks):
        return torch.cat(ins, dim=1)


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
    node = graph.node(name)
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
