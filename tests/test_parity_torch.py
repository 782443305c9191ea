"""Whole networks against PyTorch: the same weights (through load_weights), the same
inputs; outputs, the loss, every parameter gradient and the updated running statistics.

The oracle is netspec.testing.torch_ref, which interprets the graph with
torch.nn.functional and shares no code with the compiler or the kernels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import netspec
from netspec.ops import Purity
from netspec.testing.torch_ref import TorchGraph, loss as torch_loss, torch_params

NETS = {
    # name: (spec, load keyword arguments, batch)
    "lenet5": ("specs/lenet5.net", {"classes": 10}, 4),
    "resnet34": ("specs/resnet34.net", {"classes": 10, "input_shape": (3, 64, 64)}, 2),
    "googlenet": ("specs/googlenet.net", {"classes": 10, "input_shape": (3, 224, 224)}, 1),
    "xception": ("specs/xception.net", {"classes": 10, "input_shape": (3, 71, 71)}, 2),
    "autoencoder": ("specs/autoencoder.net", {}, 3),
}


def _rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(b), 1e-30))


def _run_both(name, dtype, tmp_path, check=False):
    path, kw, batch = NETS[name]
    net = netspec.load(path, **kw)
    graph = net.graph
    model = net.compile(dtype=dtype)
    params = {k: v.numpy() for k, v in torch_params(graph, seed=1).items()}
    weights = tmp_path / "w.safetensors"
    from netspec.runtime.checkpoint import save_arrays
    save_arrays(weights, params)
    model.load_weights(weights)

    rng = np.random.default_rng(2)
    x = rng.standard_normal((batch, *graph.node(graph.inputs[0]).shape))
    loss_name = model.program.loss_name
    out_shape = graph.node(graph.outputs[0]).shape
    if loss_name == "sparse_categorical_crossentropy":
        y = rng.integers(0, out_shape[0], batch)
    else:
        y = rng.uniform(0, 1, (batch, *out_shape))

    ref = TorchGraph(graph, dtype=torch.float64, params=params)
    ref.eval()
    with torch.no_grad():
        ref_out = ref(torch.as_tensor(x))[graph.outputs[0]].numpy()
    ours_out = model(x.astype(dtype))

    # a random op's mask (dropout, drop_path) is read after the run: keep it (the memory plan
    # reuses a dead tensor's bytes)
    random = [n.name for n in graph.nodes() if n.opdef.traits.purity is Purity.RANDOM]
    model.executor.keep_alive(f"{name}:mask" for name in random)
    ours_loss, grads = model.loss_and_grads(x.astype(dtype), y if y.dtype.kind == "i" else y.astype(dtype),
                                            check=check)   # check: every output element written
    masks = {}
    buffers = model.executor.buffers("train", batch)
    for name in random:
        m = buffers.get(f"{name}:mask")
        if m is not None:         # a rate of 0 draws none
            masks[name] = torch.as_tensor(np.array(m.transpose(0, 3, 1, 2) if m.ndim == 4 else m,
                                                   np.float64))
    ref.train()
    outs = ref(torch.as_tensor(x), dropout_masks=masks)
    ref_loss = torch_loss(graph, outs, torch.as_tensor(y), loss_name)
    ref_loss.backward()
    return model, ours_out, ref_out, ours_loss, float(ref_loss.detach()), grads, ref.grads(), ref.state()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NETS))
def test_float64_matches_torch(name, tmp_path):
    model, out, ref_out, loss, ref_loss, grads, ref_grads, ref_state = _run_both(name, "float64", tmp_path)
    assert _rel(out, ref_out) < 1e-9, name
    assert abs(loss - ref_loss) <= 1e-9 * max(1, abs(ref_loss))
    assert set(grads) == set(ref_grads)
    for k in ref_grads:
        assert _rel(grads[k], ref_grads[k]) < 1e-8, f"{name}: gradient of {k}"
    for k, v in ref_state.items():   # running statistics after one training step
        assert _rel(model.params[k], v) < 1e-9, f"{name}: {k} after the step"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lenet5", "resnet34", "autoencoder"])
def test_float32_within_float32_tolerance(name, tmp_path):
    model, out, ref_out, loss, ref_loss, grads, ref_grads, _ = _run_both(name, "float32", tmp_path, check=True)
    assert out.dtype == np.float32
    assert _rel(out, ref_out) < 1e-4, name
    assert abs(loss - ref_loss) <= 1e-4 * max(1, abs(ref_loss))
    worst = max(_rel(grads[k], ref_grads[k]) for k in ref_grads)
    assert worst < 2e-3, f"{name}: worst gradient relative error {worst:.2e}"


# upsample (U-Net, DeepLab, YOLO), channel_shuffle (ShuffleNet), layer_scale and drop_path
# (ConvNeXt) in one small network: a residual branch with stochastic depth, the three ways of
# resizing (nearest x2, bilinear by a scale, to a size), an ASPP-like pooled branch, dropout
SEED_OPS = """
network seed_ops(classes=5) {
    input image: 3@8x8
    x = image -> conv(8, 3, pad=1) -> relu -> channel_shuffle(2)
    b = x -> depthwise_conv(3, pad=1) -> conv(8, 1) -> layer_scale(0.5) -> drop_path(0.4)
    y = x + b
    z = y -> maxpool(2) -> conv(8, 1) -> upsample -> conv(8, 3, pad=1)
    u = z -> upsample(1.3, mode=bilinear) -> upsample(size=(8, 8), mode=bilinear)
    p = y -> global_avgpool -> reshape((8, 1, 1))
          -> upsample(size=(8, 8), mode=bilinear, align_corners=true)
    concat(u, p) -> dropout(0.3) -> global_avgpool -> dense(classes) -> softmax -> out
}
"""


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-9), ("float32", 1e-4)])
def test_the_seed_architectures_ops_match_torch_in_one_network(dtype, tol, tmp_path, monkeypatch):
    spec = tmp_path / "seed_ops.net"
    spec.write_text(SEED_OPS)
    monkeypatch.setitem(NETS, "seed_ops", (str(spec), {}, 4))
    model, out, ref_out, loss, ref_loss, grads, ref_grads, _ = _run_both("seed_ops", dtype, tmp_path,
                                                                        check=True)
    assert _rel(out, ref_out) < tol
    assert abs(loss - ref_loss) <= tol * max(1, abs(ref_loss))
    assert set(grads) == set(ref_grads)
    for k in ref_grads:
        assert _rel(grads[k], ref_grads[k]) < tol * 10, f"gradient of {k}"
