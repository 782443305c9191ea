"""Segmentation: a softmax cross-entropy on a map classifies each pixel (against PyTorch's
F.cross_entropy on (N, C, H, W) logits), per-pixel accuracy and mean IoU (against a NumPy
count of each class's pixels), the generated `shapes` data set, and a narrow U-Net
(specs/unet.net) that learns it.

The loss kernels on maps run on every target, against central differences and PyTorch, in
softmax's cases (tests/test_op_cases.py); here they are part of whole networks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import netspec
from netspec.cli import main
from netspec.errors import SpecError
from netspec.lower.build import default_loss
from netspec.model import InputError
from netspec.testing.torch_ref import TorchGraph, loss as torch_loss
from netspec.training import config as C
from netspec.training import metrics as M
from netspec.training import shapes
from netspec.training.data import DataError, load_data
from netspec.training.run import train
from netspec.training.trainer import TrainingError

ROOT = Path(__file__).resolve().parents[1]

# a tiny segmenter: every layer keeps the input's size, the classes at each pixel
SEGMENTER = """
network seg(classes=3) {
    input image: 2@4x5
    image -> conv(4, 3, pad=1, act=tanh) -> conv(classes, 1) -> softmax -> out
}
"""


def rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - b) / max(np.linalg.norm(b), 1e-300))


# ---------------------------------------------------------------- the loss


@pytest.mark.parametrize("loss", ["sparse_categorical_crossentropy", "categorical_crossentropy"])
def test_pixel_cross_entropy_and_gradients_match_torch(loss):
    """The mean over every pixel of every sample, as F.cross_entropy on (N, C, H, W) logits with
    (N, H, W) labels (or (N, C, H, W) probabilities); every parameter's and the input's
    gradient."""
    rng = np.random.default_rng(16)
    net = netspec.loads(SEGMENTER)
    model = net.compile(target="cpu", dtype="float64", training=True, loss=loss, input_grads=True)
    params = {k: rng.standard_normal(v.shape) for k, v in model.params.items()}
    for k, v in params.items():
        model.params[k][...] = v
    x = rng.standard_normal((3, 2, 4, 5))
    if loss == "sparse_categorical_crossentropy":
        targets = rng.integers(0, 3, (3, 4, 5))
    else:
        targets = np.moveaxis(rng.dirichlet(np.ones(3), (3, 4, 5)), -1, 1)
    value, grads = model.loss_and_grads(x, targets)

    oracle = TorchGraph(net.graph, dtype=torch.float64, params=params)
    tx = torch.tensor(x, requires_grad=True)
    outs = oracle.train()({"image": tx})
    want = torch_loss(net.graph, outs, torch.as_tensor(targets), loss)
    want.backward()
    assert value == pytest.approx(want.item(), rel=1e-12)
    want_grads = {**oracle.grads(), "image": tx.grad.numpy()}
    assert set(grads) == set(want_grads)
    for name, g in want_grads.items():
        assert rel(grads[name], g) < 1e-10, name


def test_pixel_labels_must_have_the_maps_shape():
    model = netspec.loads(SEGMENTER).compile(target="cpu", training=True)
    x = np.zeros((2, 2, 4, 5), np.float32)
    with pytest.raises(InputError, match=r"labels must be integers of shape \(2, 4, 5\)"):
        model.loss_and_grads(x, np.zeros(2, np.int64))
    with pytest.raises(InputError, match="labels must lie in 0..2"):
        model.loss_and_grads(x, np.full((2, 4, 5), 3))


# ---------------------------------------------------------------- the metrics


def numpy_mean_iou(labels: np.ndarray, predicted: np.ndarray, classes: int) -> float:
    """For each class, the pixels in both sets over the pixels in either, over the whole set;
    the mean over the classes some pixel is labelled or predicted as."""
    ious = []
    for c in range(classes):
        truth, guess = labels == c, predicted == c
        union = np.logical_or(truth, guess).sum()
        if union:
            ious.append(np.logical_and(truth, guess).sum() / union)
    return float(np.mean(ious))


def one_hot_scores(predicted: np.ndarray, classes: int) -> np.ndarray:
    """Outputs (N, C, H, W) whose argmax over the classes is `predicted` (N, H, W)."""
    return np.moveaxis(np.eye(classes)[predicted], -1, 1)


def test_mean_iou_by_hand():
    # class 0: labelled 4, predicted 3, both 3 -> 3/4; class 1: labelled 4, predicted 4, both 3
    # -> 3/5; class 2 nowhere (left out); class 3 predicted once, never labelled -> 0
    labels = np.array([[[0, 0, 0, 0], [1, 1, 1, 1]]])
    predicted = np.array([[[0, 0, 0, 1], [1, 1, 1, 3]]])
    counts = M.confusion_matrix(labels, predicted, 4)
    assert M.mean_iou(counts) == pytest.approx((3 / 4 + 3 / 5 + 0) / 3)
    iou = M.intersection_over_union(counts)
    assert np.isnan(iou[2]) and iou[3] == 0


def test_mean_iou_and_pixel_accuracy_match_numpy_on_random_masks():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 4, (6, 7, 9))
    labels[labels == 2] = 0                 # a class nobody labels ...
    predicted = np.where(rng.random(labels.shape) < 0.7, labels, rng.integers(0, 4, labels.shape))
    outputs = one_hot_scores(predicted, 5)  # ... and one with no pixel at all
    rows, flat = M.class_rows(outputs, labels)
    counts = M.confusion_matrix(flat, M.predicted_classes(rows), 5)
    assert M.mean_iou(counts) == pytest.approx(numpy_mean_iou(labels, predicted, 5), rel=1e-12)
    assert M.accuracy(outputs, labels) == pytest.approx((predicted == labels).mean(), rel=1e-12)
    # over the whole set, not a mean of per-image values
    per_image = np.mean([numpy_mean_iou(labels[i], predicted[i], 5) for i in range(len(labels))])
    assert M.mean_iou(counts) != pytest.approx(per_image, rel=1e-6)


def test_map_losses_match_torch():
    rng = np.random.default_rng(9)
    logits = rng.standard_normal((3, 4, 5, 6)) * 3
    labels = rng.integers(0, 4, (3, 5, 6))
    want = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)).item()
    assert M.loss_value("sparse_categorical_crossentropy", logits, labels, False) == pytest.approx(want, rel=1e-12)
    probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
    assert M.loss_value("sparse_categorical_crossentropy", probs, labels, True) == pytest.approx(want, rel=1e-9)
    dense = np.moveaxis(rng.dirichlet(np.ones(4), (3, 5, 6)), -1, 1)
    want = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(dense)).item()
    assert M.loss_value("categorical_crossentropy", logits, dense, False) == pytest.approx(want, rel=1e-12)


# ---------------------------------------------------------------- the data set


def test_shapes_are_deterministic_and_well_formed():
    x, y = shapes.generate(20, 12, 16, kinds=True, seed=3)
    again_x, again_y = shapes.generate(20, 12, 16, kinds=True, seed=3)
    assert np.array_equal(x, again_x) and np.array_equal(y, again_y)
    other_x, _ = shapes.generate(20, 12, 16, kinds=True, seed=4)
    assert not np.array_equal(x, other_x)
    assert x.shape == y.shape == (20, 12, 16)
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert 0 <= x.min() and x.max() <= 1
    assert set(np.unique(y)) == {0, 1, 2, 3}          # background and every kind
    for image, mask in zip(x, y):
        assert (mask > 0).any()                       # every image shows a shape ...
        assert image[mask > 0].mean() > image[mask == 0].mean() + 0.2    # ... brighter than its ground
    _, fg = shapes.generate(20, 12, 16, kinds=False, seed=3)
    assert np.array_equal(fg, (y > 0).astype(np.int64))   # the same images, classes merged


def test_load_data_names_shapes_and_its_options():
    data = load_data("shapes(count=50, seed=2)", (3, 16, 16), 2)
    assert data.source == "shapes (generated from seed 2, 50 images 16x16 -> 3@16x16)"
    assert (len(data.train), len(data.val), len(data.test)) == (36, 4, 10)
    assert data.train.x.shape == (36, 3, 16, 16) and data.train.y.shape == (36, 16, 16)
    assert data.class_names == ["background", "shape"]
    assert load_data("shapes", (1, 8, 8), 4).class_names == ["background", "disc", "rectangle", "triangle"]
    again = load_data("shapes(count=50, seed=2)", (3, 16, 16), 2)
    assert np.array_equal(again.test.y, data.test.y)
    for source, words in [("shapes(size=3)", "shapes takes count, seed"),
                          ("shapes(count=0)", "count must be an integer from 1")]:
        with pytest.raises(DataError, match=words):
            load_data(source, (1, 8, 8), 2)
    with pytest.raises(DataError, match="set classes=2 or classes=4"):
        load_data("shapes", (1, 8, 8), 3)
    with pytest.raises(DataError, match="give it an image input"):
        load_data("shapes", (64,), 2)


def test_the_train_section_takes_shapes_with_options():
    text = "network n() {{\n input x: 1@8x8\n x -> conv(2, 1) -> softmax -> out\n train {{ {} }}\n}}\n"
    assert netspec.loads(text.format("data = shapes")).graph.train["data"] == "shapes"
    graph = netspec.loads(text.format("data = shapes(count=200)")).graph
    assert graph.train["data"] == "shapes(count=200)"
    with pytest.raises(SpecError) as info:
        netspec.loads(text.format("data = shapes(count=-1)"), file="<spec>")
    assert "shapes count must be an integer >= 1" in info.value.message
    assert info.value.pos.line == 4
    with pytest.raises(SpecError, match="no argument 'size'"):
        netspec.loads(text.format("data = shapes(size=3)"))


# ---------------------------------------------------------------- training


def run(spec, out, sets=None, **flags):
    net = netspec.load(spec, **(sets or {}))
    cfg = C.resolve(net.graph.train, loss=default_loss(net.graph), **flags)
    context = {"sets": [f"{k}={v}" for k, v in (sets or {}).items()]}
    return train(net, net.spec.text, context, cfg, out,
                 echo=lambda *a: None)


def test_labels_must_fit_what_the_output_classifies(tmp_path):
    unet = ROOT / "specs/unet.net"
    small = {"width": 2, "size": 16}
    with pytest.raises(TrainingError, match="needs a class per pixel"):
        run(unet, tmp_path / "a", {**small, "classes": 10}, data="digits", epochs=1)
    with pytest.raises(TrainingError, match="does not classify pixels"):
        run(ROOT / "specs/lenet5.net", tmp_path / "b", data="shapes(count=20)", epochs=1)
    with pytest.raises(TrainingError, match="moves the pixels of the images but not of their masks"):
        run(unet, tmp_path / "c", small, data="shapes(count=20)", epochs=1, augment={"flip": {}})


def test_a_narrow_unet_learns_the_shapes(tmp_path, capsys):
    """specs/unet.net at width 4 on 16x16 shapes: test mean IoU over 0.9 (0.95 measured) after 3
    epochs of 216 images, and `netspec eval` scores the weights as the run's test did."""
    out = tmp_path / "unet"
    sets = {"width": 4, "size": 16}
    metrics = run(ROOT / "specs/unet.net", out, sets, data="shapes(count=300)", epochs=3, lr=0.01)
    assert metrics["test_mean_iou"] > 0.9
    assert metrics["test_accuracy"] > 0.95
    rows = json.loads((out / "history.json").read_text())
    assert {"accuracy", "mean_iou", "val_accuracy", "val_mean_iou"} <= set(rows[-1])
    assert rows[-1]["val_mean_iou"] > rows[0]["val_mean_iou"]
    capsys.readouterr()
    assert main(["eval", str(ROOT / "specs/unet.net"), "--weights", str(out / "weights.safetensors"),
                 "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["mean_iou"] == pytest.approx(metrics["test_mean_iou"], rel=1e-6)
    assert result["accuracy"] == pytest.approx(metrics["test_accuracy"], rel=1e-6)
    assert result["pixels"] == result["samples"] * 16 * 16
    assert result["per_class"][1]["iou"] > 0.8
