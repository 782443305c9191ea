"""Losses and metrics computed from a network's outputs, in float64 NumPy.

Training reads its loss from the Program's loss kernel; validation and test sets
run the inference phase (running statistics, no dropout), whose output is the
network's last layer: probabilities after a final softmax/sigmoid, else logits.
These functions score those outputs the way the training loss would.

A segmentation network's output is a map (N, C, H, W) with a label per pixel (N, H, W):
every pixel is then one example (`class_rows`), so accuracy is per-pixel accuracy and the
confusion matrix counts pixels; `mean_iou` reads that confusion matrix.
"""

from __future__ import annotations

import numpy as np

# probabilities below this are clipped before the log (Keras' epsilon): a
# confident wrong answer costs -log(1e-7) = 16.1, not infinity
_EPS = 1e-7


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def class_rows(outputs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows of class scores, a label per row): a classifier's outputs (N, ...) flattened to a
    row per sample; with a label per pixel (labels (N, H, W)), a segmenter's outputs
    (N, C, H, W) as a row of C per pixel."""
    out, labels = np.asarray(outputs), np.asarray(labels)
    if labels.ndim > 1:
        return np.moveaxis(out, 1, -1).reshape(-1, out.shape[1]), labels.reshape(-1)
    return out.reshape(len(out), -1), labels


def loss_value(loss: str, outputs: np.ndarray, targets: np.ndarray, probabilities: bool) -> float:
    """Mean loss over the rows of `outputs` (N, ...) for `targets` shaped as the
    training loss takes them (int labels for sparse cross-entropy, arrays otherwise); a
    cross-entropy of a map (N, C, H, W) is the mean over its pixels, as the training loss."""
    out = np.asarray(outputs, np.float64)
    if loss == "sparse_categorical_crossentropy":
        out, labels = class_rows(out, targets)
        logp = np.log(np.clip(out, _EPS, 1.0)) if probabilities else _log_softmax(out)
        return float(-logp[np.arange(len(out)), labels.astype(np.int64)].mean())
    if loss == "categorical_crossentropy":
        if out.ndim == 4:       # a distribution per pixel: rows of C
            out = np.moveaxis(out, 1, -1).reshape(-1, out.shape[1])
            t = np.moveaxis(np.asarray(targets, np.float64), 1, -1).reshape(out.shape)
        else:
            out = out.reshape(len(out), -1)
            t = np.asarray(targets, np.float64).reshape(out.shape)
        logp = np.log(np.clip(out, _EPS, 1.0)) if probabilities else _log_softmax(out)
        return float(-(t * logp).sum(axis=1).mean())
    out = out.reshape(len(out), -1)
    t = np.asarray(targets, np.float64).reshape(len(out), -1)
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
    """The class of each row (class_rows' rows: samples, or pixels)."""
    out = np.asarray(outputs).reshape(len(outputs), -1)
    if out.shape[1] == 1:  # one sigmoid unit: class 1 above one half (or logit 0)
        return (out[:, 0] > (0.5 if out.min() >= 0 else 0.0)).astype(np.int64)
    return out.argmax(axis=1)


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Share of samples (of pixels, for labels per pixel) whose class is predicted."""
    out, labels = class_rows(outputs, labels)
    return float((predicted_classes(out) == labels).mean())


def top_k_accuracy(outputs: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of rows whose label is among the k highest outputs (ties broken by index)."""
    out, labels = class_rows(outputs, labels)
    k = min(k, out.shape[1])
    top = np.argsort(-out, axis=1, kind="stable")[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """counts[i, j]: samples (or pixels) of true class i predicted as j."""
    pairs = np.asarray(labels, np.int64).reshape(-1) * classes + np.asarray(predicted, np.int64).reshape(-1)
    return np.bincount(pairs, minlength=classes * classes).reshape(classes, classes)


def intersection_over_union(counts: np.ndarray) -> np.ndarray:
    """Per class, from a confusion matrix over the whole evaluation set: pixels both labelled
    and predicted as the class over pixels labelled or predicted as it; NaN where neither."""
    tp = np.diag(counts).astype(np.float64)
    union = counts.sum(axis=0) + counts.sum(axis=1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def mean_iou(counts: np.ndarray) -> float:
    """The mean of intersection_over_union over the classes with a nonzero union (those
    labelled or predicted somewhere in the set)."""
    iou = intersection_over_union(counts)
    present = ~np.isnan(iou)
    return float(iou[present].mean()) if present.any() else 0.0


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
