"""YOLOv8's decoder (ultralytics' Detect._inference, make_anchors and dist2bbox): a network's
raw head outputs -> boxes in input pixels and class probabilities.

The outputs come in pairs, one pair per level from the finest: the box map, then the class
logits map (specs/yolov8n.net's box_p3, cls_p3, box_p4, ...). A box map holds each anchor's
distances to its box's left, top, right and bottom sides, in cells of its level: 4 channels
where the network applied the DFL (the `dfl` op), or 4 x bins logits (side-major) where it
did not, and the decoder takes each side's softmax expectation over 0 .. bins - 1 itself.
Anchors sit at the cell centres, (column + 0.5, row + 0.5); a box is the anchor minus the
left and top distances and plus the right and bottom ones, times the level's stride."""

from __future__ import annotations

import numpy as np

SIDES = 4


def expected_distances(box: np.ndarray) -> np.ndarray:
    """(N, 4 * bins, A) side-major bin logits -> (N, 4, A): each side's expectation of the
    bin index under the softmax of its logits (ultralytics' DFL with its weight 0 .. bins-1)."""
    n, c, a = box.shape
    logits = box.reshape(n, SIDES, c // SIDES, a)
    e = np.exp(logits - logits.max(axis=2, keepdims=True))
    probs = e / e.sum(axis=2, keepdims=True)
    return np.einsum("nsba,b->nsa", probs, np.arange(c // SIDES, dtype=np.float64))


def _anchors(h: int, w: int) -> np.ndarray:
    """(2, h * w): each cell's centre (x, y) in cells, row by row (make_anchors' order)."""
    ys, xs = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    return np.stack([xs.reshape(-1), ys.reshape(-1)])


def check_options(options: dict) -> str | None:
    """What is wrong with a detect section's yolo options (netspec/detection's hook), or None."""
    strides = options["strides"]
    if not isinstance(strides, (list, tuple)) or not strides or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in strides):
        return f"strides must be a list of integers >= 1, one per level, got {strides!r}"
    return None


def decode(outputs: list[np.ndarray], input_hw: tuple[int, int], *,
           strides=(8, 16, 32)) -> tuple[np.ndarray, np.ndarray]:
    """outputs: (box, classes) maps per level, finest first, each (N, C, H, W); input_hw: the
    network's input size, which each level's size must fit; strides: each level's stride in
    input pixels. Returns boxes (N, A, 4) as x1, y1, x2, y2 in input
    pixels and scores (N, A, classes), the classes' sigmoids; A the cells of every level,
    level by level, row by row."""
    if len(outputs) % 2 or not outputs:
        raise ValueError(f"the yolo decoder reads (box, classes) pairs, one per level: got "
                         f"{len(outputs)} outputs")
    levels = len(outputs) // 2
    if len(strides) != levels:
        raise ValueError(f"{levels} levels of outputs but {len(strides)} strides {tuple(strides)}")
    boxes, scores = [], []
    for (box, cls), stride in zip(zip(outputs[0::2], outputs[1::2]), strides):
        box, cls = np.asarray(box, np.float64), np.asarray(cls, np.float64)
        if box.ndim != 4 or cls.ndim != 4 or box.shape[0] != cls.shape[0] or box.shape[2:] != cls.shape[2:]:
            raise ValueError(f"a level's box and class maps must be (N, C, H, W) of one size, "
                             f"got {box.shape} and {cls.shape}")
        n, c, h, w = box.shape
        # a stride-2 conv (kernel 3, padding 1) halves a size rounding up: ceil(size / stride)
        fit = tuple(-(-size // stride) for size in input_hw)
        if (h, w) != fit:
            raise ValueError(f"a {h}x{w} level does not fit stride {stride} on a "
                             f"{input_hw[0]}x{input_hw[1]} input (expected {fit[0]}x{fit[1]}): "
                             f"check the decoder's strides")
        if c % SIDES:
            raise ValueError(f"a box map holds 4 distances or 4 x bins logits, not {c} channels")
        flat = box.reshape(n, c, h * w)
        dist = flat if c == SIDES else expected_distances(flat)          # (N, 4, A)
        centre = _anchors(h, w)[None]                                    # (1, 2, A)
        xyxy = np.concatenate([centre - dist[:, :2], centre + dist[:, 2:]], axis=1) * stride
        boxes.append(xyxy.transpose(0, 2, 1))
        sigmoid = 0.5 * (1.0 + np.tanh(0.5 * cls.reshape(n, -1, h * w)))    # no overflow
        scores.append(sigmoid.transpose(0, 2, 1))
    return np.concatenate(boxes, axis=1), np.concatenate(scores, axis=1)
