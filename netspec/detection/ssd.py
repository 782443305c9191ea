"""SSD's decoder: a detector's raw head outputs -> boxes in input pixels and class probabilities,
as torchvision's SSD (torchvision.models.detection.ssd) computes them before its per-class
non-maximum suppression: default boxes (anchor_utils.DefaultBoxGenerator), box codes decoded
against them (_utils.BoxCoder.decode_single, weights (10, 10, 5, 5)), boxes clipped to the image
(ops.boxes.clip_boxes_to_image), a softmax over the classes with the background (class 0) dropped.

The network's one output is anchors x (4 + classes): the box codes (dx, dy, dw, dh), then the
class logits, anchors ordered map by map, position by position (row-major), default box by
default box (specs/ssdlite320.net). The maps' sizes follow from the input's: the first has
`first_stride` (a power of two) and each next one is half the previous, rounded up, as every
stride-2 layer with `(kernel - 1) // 2` padding rounds (MobileNet's and SSDlite's extra blocks)."""

from __future__ import annotations

import math

import numpy as np

# BoxCoder's bbox_xform_clip: the largest dw, dh decoded, so exp() never overflows
BOX_CODE_CLIP = math.log(1000.0 / 16)
# ssdlite320_mobilenet_v3_large's DefaultBoxGenerator and BoxCoder
ASPECT_RATIOS = ((2, 3),) * 6
CODE_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
# the scores' first column is the network's class 1: class 0, the background, is dropped
FIRST_CLASS = 1


def map_sizes(input_hw: tuple[int, int], count: int, first_stride: int = 16) -> list[tuple[int, int]]:
    """The (height, width) of each of `count` maps: the first `first_stride` times smaller than
    the input, each next one half the previous; every halving rounds up."""
    halvings = int(first_stride).bit_length() - 1
    if first_stride < 1 or 2 ** halvings != first_stride:
        raise ValueError(f"ssd: first_stride must be a power of two, got {first_stride}")
    h, w = input_hw
    sizes = []
    for k in range(count):
        for _ in range(halvings if k == 0 else 1):
            h, w = -(-h // 2), -(-w // 2)
        sizes.append((h, w))
    return sizes


def box_shapes(aspect_ratios, min_ratio: float, max_ratio: float, clip: bool = True) -> list[np.ndarray]:
    """Each map's default boxes' (width, height), as fractions of the input (SSD, page 6): scale
    s_k from min_ratio to max_ratio linearly over the maps; a square of s_k, one of
    sqrt(s_k * s_k+1) (s after the last map: 1), and for each aspect ratio r a box
    s_k sqrt(r) x s_k / sqrt(r) and its transpose; clipped to [0, 1] with `clip`."""
    count = len(aspect_ratios)
    if count > 1:
        scales = [min_ratio + (max_ratio - min_ratio) * k / (count - 1.0) for k in range(count)] + [1.0]
    else:
        scales = [min_ratio, max_ratio]
    shapes = []
    for k, ratios in enumerate(aspect_ratios):
        s, s_next = scales[k], scales[k + 1]
        pairs = [(s, s), (math.sqrt(s * s_next),) * 2]
        for r in ratios:
            pairs += [(s * math.sqrt(r), s / math.sqrt(r)), (s / math.sqrt(r), s * math.sqrt(r))]
        pairs = np.array(pairs, np.float64)
        shapes.append(np.clip(pairs, 0.0, 1.0) if clip else pairs)
    return shapes


def default_boxes(input_hw, sizes, aspect_ratios=ASPECT_RATIOS, min_ratio: float = 0.2,
                  max_ratio: float = 0.95, clip: bool = True) -> np.ndarray:
    """(anchors, 4) default boxes x1, y1, x2, y2 in input pixels, in the head's order: map by
    map, position by position (row-major), box by box; centred on their cells."""
    height, width = input_hw
    boxes = []
    for (h, w), shapes in zip(sizes, box_shapes(aspect_ratios, min_ratio, max_ratio, clip)):
        cy, cx = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
        centres = np.repeat(np.stack([cx.ravel(), cy.ravel()], axis=1), len(shapes), axis=0)
        halves = 0.5 * np.tile(shapes, (h * w, 1))
        boxes.append(np.concatenate([centres - halves, centres + halves], axis=1))
    return np.concatenate(boxes) * np.array([width, height, width, height], np.float64)


def decode_boxes(codes: np.ndarray, anchors: np.ndarray, weights=CODE_WEIGHTS) -> np.ndarray:
    """BoxCoder.decode_single: codes (..., A, 4) against anchors (A, 4), both x1, y1, x2, y2:
    the centre moves by (dx / wx, dy / wy) anchor sizes, the size scales by exp(dw / ww),
    exp(dh / wh), with dw and dh at most BOX_CODE_CLIP."""
    codes = codes.astype(np.float64) / np.asarray(weights, np.float64)
    size = anchors[:, 2:] - anchors[:, :2]
    centre = anchors[:, :2] + 0.5 * size
    new_centre = codes[..., :2] * size + centre
    new_size = np.exp(np.minimum(codes[..., 2:], BOX_CODE_CLIP)) * size
    return np.concatenate([new_centre - 0.5 * new_size, new_centre + 0.5 * new_size], axis=-1)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def decode(outputs: list[np.ndarray], input_hw: tuple[int, int], *, aspect_ratios=ASPECT_RATIOS,
           min_ratio: float = 0.2, max_ratio: float = 0.95, clip: bool = True, weights=CODE_WEIGHTS,
           first_stride: int = 16, clip_to_image: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """outputs: the network's one output (N, anchors, 4 + classes), box codes then logits.
    Returns boxes (N, anchors, 4) x1, y1, x2, y2 in input pixels (clipped to the input with
    `clip_to_image`) and scores (N, anchors, classes - 1): each class's softmax probability,
    the background's column dropped. Options as torchvision's DefaultBoxGenerator (aspect
    ratios per map, min_ratio, max_ratio, clip) and BoxCoder (weights); first_stride: the
    input's size over the first map's (the maps after it halve)."""
    if len(outputs) != 1:
        raise ValueError(f"ssd: expected one output (N, anchors, 4 + classes), got {len(outputs)}")
    (raw,) = outputs
    if raw.ndim != 3 or raw.shape[2] < 6:
        raise ValueError(f"ssd: the output must be (N, anchors, 4 + classes) with at least 2 classes, "
                         f"got {tuple(raw.shape)}")
    sizes = map_sizes(input_hw, len(aspect_ratios), first_stride)
    expected = sum(h * w * (2 + 2 * len(r)) for (h, w), r in zip(sizes, aspect_ratios))
    if raw.shape[1] != expected:
        raise ValueError(f"ssd: {raw.shape[1]} anchors in the output, but an input of "
                         f"{input_hw[0]}x{input_hw[1]} has {expected} default boxes (maps "
                         f"{', '.join(f'{h}x{w}' for h, w in sizes)}, first_stride {first_stride})")
    anchors = default_boxes(input_hw, sizes, aspect_ratios, min_ratio, max_ratio, clip)
    boxes = decode_boxes(raw[..., :4], anchors, weights)
    if clip_to_image:
        height, width = input_hw
        boxes = np.clip(boxes, 0.0, np.array([width, height, width, height], np.float64))
    return boxes, _softmax(raw[..., 4:])[..., 1:]
