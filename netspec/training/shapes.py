"""`shapes`: a segmentation data set netspec generates, so a segmentation network trains with
no download.

Each image is a noisy gray background with one to three filled shapes (discs, axis-aligned
rectangles, triangles) of random size, position and brightness, later shapes painted over
earlier ones; its mask gives each pixel the class of what is visible there. Two mask kinds:

- `foreground`: 0 background, 1 any shape (a network with 2 classes);
- `kinds`: 0 background, 1 disc, 2 rectangle, 3 triangle (4 classes).

Shapes are always brighter than the background, so the foreground is found by brightness
and local contrast; telling the kinds apart takes their outlines. Everything is drawn from
one generator seeded by `seed`, image after image, so a seed and a count give the same
images and masks on every machine (NumPy's PCG64 and its `random`/`integers` streams).
"""

from __future__ import annotations

import numpy as np

KINDS = ("disc", "rectangle", "triangle")
FOREGROUND_NAMES = ["background", "shape"]
KIND_NAMES = ["background", *KINDS]

MAX_SHAPES = 3                 # shapes per image: 1 to this
RADIUS = (0.12, 0.28)          # a shape's radius, as a fraction of the image's shorter side
MIN_RADIUS = 2.0               # pixels: so that a small image still shows each shape's outline
BACKGROUND = (0.0, 0.35)       # the background's level
BRIGHTNESS = (0.55, 1.0)       # a shape's level
NOISE = 0.06                   # the standard deviation of the pixel noise over everything


def generate(count: int, height: int, width: int, kinds: bool, seed: int = 0
             ) -> tuple[np.ndarray, np.ndarray]:
    """(images (count, height, width) float32 in [0, 1], masks (count, height, width) int64):
    masks 0/1 (foreground), or 0 and 1 + the index of the shape's kind in KINDS (kinds)."""
    rng = np.random.default_rng(seed)
    images = np.empty((count, height, width), np.float32)
    masks = np.zeros((count, height, width), np.int64)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5     # pixel centres
    for i in range(count):
        image = np.full((height, width), rng.uniform(*BACKGROUND))
        for _ in range(rng.integers(1, MAX_SHAPES + 1)):
            kind = int(rng.integers(len(KINDS)))
            inside = _draw(KINDS[kind], yy, xx, rng)
            image[inside] = rng.uniform(*BRIGHTNESS)
            masks[i][inside] = 1 + kind if kinds else 1
        image += rng.normal(0.0, NOISE, image.shape)
        images[i] = np.clip(image, 0.0, 1.0)
    return images, masks


def _draw(kind: str, yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The pixels of one shape of `kind`, placed and sized at random, wholly inside the image."""
    height, width = yy.shape
    r = max(MIN_RADIUS, rng.uniform(*RADIUS) * min(height, width))
    cy, cx = rng.uniform(r, height - r), rng.uniform(r, width - r)
    dy, dx = yy - cy, xx - cx
    if kind == "disc":
        return dy * dy + dx * dx <= r * r
    if kind == "rectangle":        # half sides from 0.5 to 1 radius: squares and oblongs
        half_h, half_w = rng.uniform(0.5, 1.0, 2) * r
        return (np.abs(dy) <= half_h) & (np.abs(dx) <= half_w)
    # a triangle: three corners on the circle of radius r, each angle jittered from equilateral
    angles = rng.uniform(0, 2 * np.pi) + np.arange(3) * 2 * np.pi / 3 + rng.uniform(-0.3, 0.3, 3)
    corners = np.stack([np.sin(angles), np.cos(angles)], axis=1) * r   # (y, x), counterclockwise
    inside = np.ones(yy.shape, bool)
    for k in range(3):
        (ay, ax), (by, bx) = corners[k], corners[(k + 1) % 3]
        # the pixel is on the inner side of edge a -> b: the cross product's sign
        inside &= (bx - ax) * (dy - ay) - (by - ay) * (dx - ax) >= 0
    return inside
