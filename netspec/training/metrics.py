"""Losses and metrics computed from a network's outputs, in float64 NumPy.

Training reads its loss from the Program's loss kernel; validation and test sets
run the inference phase (running statistics, no dropout), whose output is the
network's last layer: probabilities after a final softmax/sigmoid, else logits.
These functions score those outputs the way the training loss would.
"""

from __future__ import annotations

import numpy as np

# probabilities below this are clipped before the log (Keras' epsilon): a
# confident wrong answer costs -log(1e-7) = 16.1, not infinity
_EPS = 1e-7


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def loss_value(loss: str, outputs: np.ndarray, targets: np.ndarray, probabilities: bool) -> float:
    """Mean loss over the rows of `outputs` (N, ...) for `targets` shaped as the
    training loss takes them (int labels for sparse cross-entropy, arrays otherwise)."""
    out = np.asarray(outputs, np.float64).reshape(len(outputs), -1)
    if loss == "sparse_categorical_crossentropy":
        logp = np.log(np.clip(out, _EPS, 1.0)) if probabilities else _log_softmax(out)
        return float(-logp[np.arange(len(out)), np.asarray(targets, np.int64)].mean())
    t = np.asarray(targets, np.float64).reshape(len(out), -1)
    if loss == "categorical_crossentropy":
        logp = np.log(np.clip(out, _EPS, 1.0)) if probabilities else _log_softmax(out)
        return float(-(t * logp).sum(axis=1).mean())
    if loss == "binary_crossentropy":
        if probabilities:
            p = np.clip(out, _EPS, 1 - _EPS)
            terms = t * np.log(p) + (1 - t) * np.log(1 - p)
        else:  # log sigmoid, stably
            terms = -(np.maximum(out, 0) - out * t + np.log1p(np.exp(-np.abs(out))))
        return float(-terms.mean(axis=1).mean())
    if loss == "mse":
        return float(((out - t) ** 2).mean(axis=1).mean())
    raise ValueError(f"unknown loss {loss}")


def predicted_classes(outputs: np.ndarray) -> np.ndarray:
    out = np.asarray(outputs).reshape(len(outputs), -1)
    if out.shape[1] == 1:  # one sigmoid unit: class 1 above one half (or logit 0)
        return (out[:, 0] > (0.5 if out.min() >= 0 else 0.0)).astype(np.int64)
    return out.argmax(axis=1)


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    return float((predicted_classes(outputs) == np.asarray(labels)).mean())


def top_k_accuracy(outputs: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of rows whose label is among the k highest outputs (ties broken by index)."""
    out = np.asarray(outputs).reshape(len(outputs), -1)
    k = min(k, out.shape[1])
    top = np.argsort(-out, axis=1, kind="stable")[:, :k]
    return float((top == np.asarray(labels)[:, None]).any(axis=1).mean())


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """counts[i, j]: samples of true class i predicted as j."""
    counts = np.zeros((classes, classes), np.int64)
    np.add.at(counts, (np.asarray(labels, np.int64), np.asarray(predicted, np.int64)), 1)
    return counts


def per_class_scores(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class from a confusion matrix (0 where undefined)."""
    tp = np.diag(counts).astype(np.float64)
    predicted = counts.sum(axis=0)
    support = counts.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
        recall = np.where(support > 0, tp / np.maximum(support, 1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}
