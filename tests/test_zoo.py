"""The architecture zoo against references written directly in PyTorch (tests/zoo/), as
torchvision (ultralytics for YOLOv8) builds each network: the published parameter count, and,
at a small input size, the forward pass, the loss, every parameter's gradient and the updated
batch-norm statistics with the reference's own weights loaded into netspec by renaming alone.
A classifier is compared by its softmax and cross-entropy; a network of several outputs (a
detector's raw head maps) by every output and a loss over all of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import netspec
from zoo import classic, convnext, deeplab, mobile, regnet, resnet, ssd, unet, vit, yolo


@dataclass(frozen=True)
class Network:
    spec: str
    trainable: int                  # the published count (torchvision's), at published_classes
    reference: Callable             # num_classes -> the PyTorch module
    names: Callable[[list], dict]   # netspec's parameter names -> the reference's
    small: dict = field(default_factory=dict)   # netspec.load keywords of the parity run
    reference_args: dict = field(default_factory=dict)   # the reference's, to match them
    batch: int = 2
    classes: int = 10               # the parity run's classes
    published_classes: int = 1000
    fixed: int = 0                  # published parameters that never train (requires_grad False)
    # a network of several outputs: (reference, x) -> the reference's values of the spec's
    # outputs, in their order; None: one output, the classes' logits
    outputs: Callable | None = None


ZOO = {
    "resnext50": Network("specs/resnext50.net", 25_028_904, resnet.resnext50_32x4d, resnet.resnet_names,
                         {"input_shape": (3, 64, 64)}),
    "regnet_y_400mf": Network("specs/regnet_y_400mf.net", 4_344_144, regnet.regnet_y_400mf, regnet.names,
                              {"input_shape": (3, 64, 64)}),
    "mobilenet_v3_large": Network("specs/mobilenet_v3_large.net", 5_483_032, mobile.mobilenet_v3_large,
                                  mobile.mobilenet_v3_large_names, {"input_shape": (3, 64, 64), "dropout": 0},
                                  reference_args={"dropout": 0}),
    "efficientnet_b0": Network("specs/efficientnet_b0.net", 5_288_548, mobile.efficientnet_b0,
                               mobile.efficientnet_b0_names,
                               {"input_shape": (3, 64, 64), "dropout": 0, "drop_path_rate": 0},
                               reference_args={"dropout": 0}),
    "vgg19": Network("specs/vgg19.net", 143_667_240, classic.vgg19, classic.vgg19_names,
                     {"input_shape": (3, 32, 32), "dropout": 0, "hidden": 64},
                     reference_args={"dropout": 0, "hidden": 64}, batch=1),
    "squeezenet1_1": Network("specs/squeezenet1_1.net", 1_235_496, classic.squeezenet1_1,
                             classic.squeezenet1_1_names, {"input_shape": (3, 67, 67), "dropout": 0},
                             reference_args={"dropout": 0}),
    "shufflenet_v2": Network("specs/shufflenet_v2.net", 2_278_604, mobile.shufflenet_v2_x1_0,
                             mobile.shufflenet_v2_names, {"input_shape": (3, 64, 64)}),
    "deeplabv3_resnet50": Network("specs/deeplabv3_resnet50.net", 39_638_869, deeplab.deeplabv3_resnet50,
                                  deeplab.names, {"size": 48, "dropout": 0}, reference_args={"dropout": 0},
                                  classes=3, published_classes=21),
    "unet": Network("specs/unet.net", 31_030_658, unet.unet, unet.names, {"size": 32}, classes=2,
                    published_classes=2),
    # 32 px in patches of 16: 4 tokens and the class token, through 2 encoder layers at full width
    "vit_b_16": Network("specs/vit_b_16.net", 86_567_656, vit.vit_b_16, vit.names,
                        {"size": 32, "layers": 2}, reference_args={"image_size": 32, "num_layers": 2},
                        batch=1),
    # ultralytics' summary: 3,157,200 parameters, 3,157,184 gradients (the DFL's 16 are fixed)
    "yolov8n": Network("specs/yolov8n.net", 3_157_184, yolo.yolov8n, yolo.names, {"size": 64},
                       published_classes=80, fixed=16, outputs=yolo.outputs),
    # 32 px (the last stage at 1x1, its 7x7 depthwise convs reading padding around one pixel),
    # all 18 blocks at a sixth of the width
    "convnext_tiny": Network("specs/convnext_tiny.net", 28_589_128, convnext.convnext_tiny, convnext.names,
                             {"input_shape": (3, 32, 32), "drop_path_rate": 0, "width": 16},
                             reference_args={"stochastic_depth_prob": 0, "width": 16}),
    # 64 px: the six maps are 4, 2, 1, 1, 1 and 1 wide (144 anchors)
    "ssdlite320": Network("specs/ssdlite320.net", 3_440_060, ssd.ssdlite320_mobilenet_v3_large, ssd.names,
                          {"size": 64}, published_classes=91, outputs=ssd.outputs),
}


def _trainable(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_summary_counts_the_published_parameters(name):
    net = ZOO[name]
    graph = netspec.load(net.spec).graph
    params = [(p, node.trainable) for node in graph.nodes() for p in node.params]
    trainable = sum(p.size for p, node_trainable in params if p.trainable and node_trainable)
    assert trainable == net.trainable
    # the non-trainable parameters that are PyTorch's too (batch-norm statistics are buffers)
    fixed = sum(p.size for p, node_trainable in params
                if not (p.trainable and node_trainable) and not p.name.startswith("running_"))
    assert fixed == net.fixed
    with torch.device("meta"):     # the reference agrees without allocating its weights
        ref = net.reference(net.published_classes)
        assert _trainable(ref) == net.trainable
        assert sum(p.numel() for p in ref.parameters() if not p.requires_grad) == net.fixed


def _randomise(module, seed):
    """Weights from PyTorch's own initialisers, then batch-norm affine parameters and running
    statistics away from their identity defaults, and layer scales (ConvNeXt's, 1e-6 at first,
    which would hide the residual branches) near 1, so that every term is exercised."""
    torch.manual_seed(seed)
    for name, p in module.named_parameters():
        if name.endswith("layer_scale"):
            with torch.no_grad():
                p.uniform_(0.5, 1.5)
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)


def _rel(a, b) -> float:
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(b), 1e-30))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ZOO))
def test_forward_and_gradients_match_the_reference(name):
    net = ZOO[name]
    network = netspec.load(net.spec, classes=net.classes, **net.small)
    model = network.compile(dtype="float64")
    ref = net.reference(net.classes, **net.reference_args).double()
    _randomise(ref, seed=0)
    ref_state = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}

    ours = list(model.state_dict())
    renamed = net.names(ours)
    assert sorted(renamed.values()) == sorted(ref_state), "the renaming is not one to one"
    model.set_weights({n: ref_state[t].numpy() for n, t in renamed.items()})

    rng = np.random.default_rng(1)
    x = rng.standard_normal((net.batch, *network.graph.node(network.graph.inputs[0]).shape))
    if net.outputs is None:
        out_shape = network.graph.node(network.graph.outputs[0]).shape
        y = rng.integers(0, net.classes, (net.batch, *out_shape[1:]))   # a class per sample (per pixel)

        ref.eval()
        with torch.no_grad():
            expected = F.softmax(ref(torch.as_tensor(x)), dim=1).numpy()
        assert _rel(model(x), expected) < 1e-9

        ref.train()
        ref_loss = F.cross_entropy(ref(torch.as_tensor(x)), torch.as_tensor(y))
        ref_loss.backward()
        loss, grads = model.loss_and_grads(x, y)
    else:
        loss, grads, ref_loss = _every_output(net, network, model, ref, x, rng)
    assert abs(loss - ref_loss.item()) < 1e-9 * max(1.0, abs(ref_loss.item()))
    ref_params = {k: p for k, p in ref.named_parameters() if p.requires_grad}
    assert sorted(renamed[n] for n in grads) == sorted(ref_params)
    # a gradient that is zero in exact arithmetic (a bias right before a batch norm in
    # training mode) is rounding noise on both sides: it is measured against the largest one
    floor = 1e-6 * max(float(p.grad.norm()) for p in ref_params.values())
    for n, g in grads.items():
        expected = ref_params[renamed[n]].grad.numpy()
        error = np.linalg.norm(g - expected) / max(np.linalg.norm(expected), floor)
        assert error < 1e-8, f"gradient of {n} ({renamed[n]}): relative error {error:.1e}"
    state = model.state_dict()
    for n, t in renamed.items():   # the running statistics after the training pass
        if "running" in n:
            assert _rel(state[n], ref.state_dict()[t]) < 1e-9, n


def _every_output(net, network, model, ref, x, rng):
    """A network of several outputs: each output against the reference's in inference, then
    the loss summed over the outputs, the mean squared error of each against a fixed random
    target. netspec's loss reads the network's first output, so each output is put first in
    turn in a model of its own, with the same weights; their losses and gradients add up.
    `model` itself takes the first output (its running statistics are then those of one
    training pass, as the reference's). Returns (loss, gradients) of the sum, and the
    reference's loss after its backward pass."""
    outputs = list(network.graph.outputs)
    ref.eval()
    with torch.no_grad():
        expected = [t.numpy() for t in net.outputs(ref, torch.as_tensor(x))]
    ours = model(x)
    ours = ours if isinstance(ours, dict) else {outputs[0]: ours}
    for name, want in zip(outputs, expected, strict=True):
        assert _rel(ours[name], want) < 1e-9, name
    targets = [rng.standard_normal(want.shape) for want in expected]

    weights = model.state_dict()
    loss, grads = 0.0, {}
    for k, name in enumerate(outputs):
        first = netspec.load(net.spec, classes=net.classes, **net.small)
        first.graph.outputs = [name] + [o for o in outputs if o != name]
        step = first.compile(dtype="float64", loss="mse", warmup=False) if k else model
        step.set_weights(weights)
        part, part_grads = step.loss_and_grads(x, targets[k])
        loss += part
        for n, g in part_grads.items():       # a parameter no path to this output reads: none
            grads[n] = grads.get(n, 0) + g
    ref.train()
    ref_loss = sum(F.mse_loss(y, torch.as_tensor(t))
                   for y, t in zip(net.outputs(ref, torch.as_tensor(x)), targets))
    ref_loss.backward()
    return loss, grads, ref_loss
