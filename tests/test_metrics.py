"""Training metrics and default initialisers, against PyTorch and hand-computed values."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import netspec
from netspec.lower.init import initial_value
from netspec.training import metrics as M


@pytest.fixture
def scores():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((50, 7)) * 3
    labels = rng.integers(0, 7, 50)
    return logits, labels


def test_sparse_cross_entropy_from_logits_and_probabilities(scores):
    logits, labels = scores
    ref = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)).item()
    assert M.loss_value("sparse_categorical_crossentropy", logits, labels, False) == pytest.approx(ref, rel=1e-12)
    probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
    assert M.loss_value("sparse_categorical_crossentropy", probs, labels, True) == pytest.approx(ref, rel=1e-9)


def test_categorical_bce_and_mse(scores):
    logits, labels = scores
    onehot = np.eye(7)[labels]
    ref = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(onehot)).item()
    assert M.loss_value("categorical_crossentropy", logits, onehot, False) == pytest.approx(ref, rel=1e-12)
    t = (np.random.default_rng(1).random((50, 7)) > 0.5).astype(float)
    ref = F.binary_cross_entropy_with_logits(torch.from_numpy(logits), torch.from_numpy(t)).item()
    assert M.loss_value("binary_crossentropy", logits, t, False) == pytest.approx(ref, rel=1e-12)
    p = 1 / (1 + np.exp(-logits))
    assert M.loss_value("binary_crossentropy", p, t, True) == pytest.approx(ref, rel=1e-5)
    ref = F.mse_loss(torch.from_numpy(logits), torch.from_numpy(t)).item()
    assert M.loss_value("mse", logits, t, False) == pytest.approx(ref, rel=1e-12)


def test_confident_wrong_probability_is_clipped_not_infinite():
    probs = np.array([[1.0, 0.0]])
    assert M.loss_value("sparse_categorical_crossentropy", probs, np.array([1]), True) == pytest.approx(-math.log(1e-7))


def test_accuracy_and_top_k_against_torch(scores):
    logits, labels = scores
    t = torch.from_numpy(logits)
    assert M.accuracy(logits, labels) == pytest.approx((t.argmax(1).numpy() == labels).mean())
    for k in (1, 3, 7):
        top = t.topk(k, 1).indices.numpy()
        assert M.top_k_accuracy(logits, labels, k) == pytest.approx((top == labels[:, None]).any(1).mean())


def test_confusion_matrix_and_per_class_scores_by_hand():
    y = np.array([0, 0, 0, 1, 1, 2])
    p = np.array([0, 1, 0, 1, 2, 2])
    counts = M.confusion_matrix(y, p, 3)
    assert counts.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    s = M.per_class_scores(counts)
    assert s["precision"] == pytest.approx([1.0, 0.5, 0.5])
    assert s["recall"] == pytest.approx([2 / 3, 0.5, 1.0])
    assert s["f1"] == pytest.approx([0.8, 0.5, 2 / 3])
    assert s["support"].tolist() == [3, 2, 1]


def test_one_sigmoid_unit_predicts_by_threshold():
    assert M.predicted_classes(np.array([[0.2], [0.7]])).tolist() == [0, 1]


SPEC = """
network inits() {
    input x: 1@8x8
    x -> conv(8, 3, pad=same) -> batchnorm -> relu -> flatten
      -> dense(64, act=selu) -> dense(32, act=tanh) -> dense(10) -> softmax -> out
}
"""


def test_weights_default_to_the_initialiser_of_their_activation():
    prog = netspec.loads(SPEC).program()
    init = {t.name: t.init for t in prog.tensors.values() if t.name.endswith("weight") and t.init}
    assert init["conv1.weight"] == "he_normal"        # through the batch norm to the relu
    assert init["dense1.weight"] == "lecun_normal"    # selu
    assert init["dense2.weight"] == "glorot_uniform"  # tanh
    assert init["dense3.weight"] == "glorot_uniform"  # softmax
    assert init["batchnorm1.weight"] == "ones"


@pytest.mark.parametrize("init, var", [("he_normal", 2 / 400), ("lecun_normal", 1 / 400),
                                       ("glorot_uniform", 2 / 800)])
def test_initialisers_draw_the_variance_they_promise(init, var):
    w = initial_value(init, (400, 400), np.random.default_rng(0))
    assert w.var() == pytest.approx(var, rel=0.02)
