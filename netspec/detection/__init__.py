"""Detection post-processing: a detector's raw head outputs turned into boxes.

A detector spec ends in its raw head tensors and says how to read them in a
`detect { decoder = yolo(...)  score = 0.25  iou = 0.45  max_detections = 100 }` section. The
decoder (DECODERS: one module per family, each with a `decode` function) turns the network's
outputs into a box and the class probabilities at every anchor; `postprocess` keeps the
(anchor, class) pairs that score at least `score`, suppresses, class by class, each box that
overlaps a better one of its class by more than `iou`, and keeps the `max_detections` best.
NumPy only: it runs on the host after whichever target ran the network.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass

import numpy as np

# decoder name -> the module whose `decode(outputs, input_hw, **options)` it is
DECODERS = {"yolo": "netspec.detection.yolo", "ssd": "netspec.detection.ssd"}
# the detect section's settings besides `decoder`, with their defaults
SETTINGS = {"score": 0.25, "iou": 0.45, "max_detections": 100}
# the most (anchor, class) pairs that reach suppression per image, best first: suppression is
# quadratic in them, and a threshold of 0 would otherwise send every anchor of every class
CANDIDATES = 10_000


def decoder(name: str):
    """The `decode` function of a decoder named in DECODERS."""
    return importlib.import_module(DECODERS[name]).decode


def decoder_options(name: str) -> dict:
    """A decoder's options and their defaults: `decode`'s keyword-only parameters."""
    params = inspect.signature(decoder(name)).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def first_class(name: str) -> int:
    """The network's class index of a decoder's first score column: 1 where the decoder drops
    a background class 0 (its module's FIRST_CLASS), else 0."""
    return getattr(importlib.import_module(DECODERS[name]), "FIRST_CLASS", 0)


def check_options(name: str, options: dict) -> str | None:
    """What is wrong with a decoder's options (its module's `check_options`), or None."""
    check = getattr(importlib.import_module(DECODERS[name]), "check_options", None)
    return check(options) if check else None


@dataclass(frozen=True)
class Detections:
    """One image's detections, best first: boxes (K, 4) as x1, y1, x2, y2 in input pixels, their
    scores (K,) and class indices (K,)."""
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one x1, y1, x2, y2 box with each of `boxes` (0 where both are
    empty)."""
    w = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = w * h
    area = lambda b: np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)
    union = area(box) + area(boxes) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy non-maximum suppression: the indices of the boxes kept, best score first (ties:
    the earlier box first). A box is dropped when it overlaps a kept one by more than `iou`."""
    order = np.argsort(-scores, kind="stable")
    kept = []
    while order.size:
        best, order = order[0], order[1:]
        kept.append(best)
        order = order[box_iou(boxes[best], boxes[order]) <= iou]
    return np.asarray(kept, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float) -> np.ndarray:
    """Suppression within each class only: each class's boxes are moved apart from every other
    class's by more than the span of all boxes, so that one pass never compares two classes."""
    if boxes.size == 0:
        return np.zeros(0, np.int64)
    span = float(boxes.max() - min(boxes.min(), 0.0)) + 1.0
    return nms(boxes + (classes * span)[:, None], scores, iou)


def postprocess(boxes: np.ndarray, scores: np.ndarray, score: float = SETTINGS["score"],
                iou: float = SETTINGS["iou"], max_detections: int = SETTINGS["max_detections"],
                first_class: int = 0) -> list[Detections]:
    """A decoder's boxes (N, A, 4) and class probabilities (N, A, C) -> each image's Detections,
    their classes numbered from `first_class` (the network's index of the first column)."""
    out = []
    for image_boxes, image_scores in zip(boxes, scores):
        anchor, cls = np.nonzero(image_scores >= score)
        s = image_scores[anchor, cls]
        if s.size > CANDIDATES:
            best = np.argsort(-s, kind="stable")[:CANDIDATES]
            anchor, cls, s = anchor[best], cls[best], s[best]
        keep = batched_nms(image_boxes[anchor].astype(np.float64), s, cls, iou)[:max_detections]
        out.append(Detections(image_boxes[anchor[keep]], s[keep], cls[keep] + first_class))
    return out


def detect(outputs: list[np.ndarray], input_hw: tuple[int, int],
           settings: dict) -> tuple[list[Detections], int]:
    """A network's outputs -> (each image's Detections, the network's class count), as its
    validated detect section says. A ValueError: the outputs are not what the decoder reads."""
    options = dict(settings["decoder"])
    name = options.pop("name")
    boxes, scores = decoder(name)(outputs, input_hw, **options)
    first = first_class(name)       # SSD's scores leave out the background, class 0
    found = postprocess(boxes, scores, settings["score"], settings["iou"],
                        settings["max_detections"], first)
    return found, scores.shape[-1] + first
