"""Sequences of tokens: specs/vit_b_16.net against torchvision's VisionTransformer written
out in PyTorch (tests/zoo/vit.py, nn.MultiheadAttention and nn.LayerNorm as they are): on a
tiny configuration the forward pass, the loss and every parameter's gradient, in float64 and
float32, with the reference's own weights loaded by renaming alone. The MLP's activation is
the exact GELU on both sides (the spec's default, torchvision's nn.GELU()). The published
count and a parity run at full width are test_zoo's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import netspec
from zoo import vit

SPEC = "specs/vit_b_16.net"
TINY = dict(classes=5, size=8, patch=4, layers=2, hidden=8, mlp_dim=12, heads=2)


def _tiny_reference():
    return vit.vit_b_16(num_classes=TINY["classes"], image_size=TINY["size"], activation=nn.GELU,
                        patch_size=TINY["patch"], num_layers=TINY["layers"],
                        num_heads=TINY["heads"], hidden_dim=TINY["hidden"],
                        mlp_dim=TINY["mlp_dim"])


def _rel(a, b) -> float:
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(b), 1e-30))


def _loaded(dtype):
    """The tiny spec compiled, and the reference with random weights loaded into it."""
    torch.manual_seed(0)
    ref = _tiny_reference().double()
    with torch.no_grad():          # away from the initial zeros and ones
        for p in ref.parameters():
            p.add_(0.2 * torch.randn_like(p))
    network = netspec.load(SPEC, **TINY)
    model = network.compile(dtype=dtype)
    state = ref.state_dict()
    renamed = vit.names(list(model.state_dict()))
    assert sorted(renamed.values()) == sorted(state), "the renaming is not one to one"
    model.set_weights({n: state[t].numpy() for n, t in renamed.items()})
    return network, model, ref, renamed


@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-9), ("float32", 1e-4)])
def test_vit_matches_torchvision_with_its_weights_renamed(dtype, tolerance):
    network, model, ref, renamed = _loaded(dtype)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 3, TINY["size"], TINY["size"]))
    y = rng.integers(0, TINY["classes"], 3)
    with torch.no_grad():
        expected = F.softmax(ref(torch.as_tensor(x)), dim=1).numpy()
    assert _rel(model(x.astype(dtype)), expected) < tolerance
    ref_loss = F.cross_entropy(ref(torch.as_tensor(x)), torch.as_tensor(y))
    ref_loss.backward()
    loss, grads = model.loss_and_grads(x.astype(dtype), y)
    assert abs(loss - ref_loss.item()) < tolerance * max(1.0, abs(ref_loss.item()))
    ref_params = dict(ref.named_parameters())
    assert sorted(renamed[n] for n in grads) == sorted(ref_params)
    for n, g in grads.items():
        assert _rel(g, ref_params[renamed[n]].grad) < 10 * tolerance, f"gradient of {n}"


def test_the_mlp_activation_is_the_exact_gelu():
    """torchvision's MLPBlock takes nn.GELU(): the erf form, not the tanh approximation."""
    gelus = [n for n in netspec.load(SPEC, **TINY).graph.nodes() if n.op == "gelu"]
    assert len(gelus) == TINY["layers"] and all(n.attrs.approximate == "none" for n in gelus)
