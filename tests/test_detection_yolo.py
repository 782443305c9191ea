"""netspec/detection/yolo.py's decode on constructed head outputs: boxes and scores known by
hand, and ultralytics' formulas (make_anchors, DFL, dist2bbox, sigmoid) re-derived in float64
PyTorch on random outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from netspec.detection.yolo import decode


def test_a_box_known_by_hand():
    box = np.zeros((1, 4, 2, 2))
    box[0, :, 1, 0] = (1, 2, 3, 4)            # row 1, column 0: anchor (0.5, 1.5) in cells
    cls = np.zeros((1, 2, 2, 2))
    cls[0, 1, 1, 0] = np.log(3.0)             # sigmoid(log 3) = 3/4
    boxes, scores = decode([box, cls], (16, 16), strides=(8,))
    assert boxes.shape == (1, 4, 4) and scores.shape == (1, 4, 2)
    # cells in row order: (0, 0), (0, 1), (1, 0), (1, 1)
    np.testing.assert_allclose(boxes[0, 2], np.array([0.5 - 1, 1.5 - 2, 0.5 + 3, 1.5 + 4]) * 8)
    np.testing.assert_allclose(boxes[0, 1], [12, 4, 12, 4])      # zero distances: the centre
    np.testing.assert_allclose(scores[0, 2], [0.5, 0.75])


def test_bins_are_the_softmax_expectation():
    bins = np.full((1, 4, 16, 1, 1), -1e3)    # side-major: 4 sides of 16 bins
    bins[0, 0, 5] = 0.0                       # left: all on bin 5
    bins[0, 1, 2] = bins[0, 1, 3] = 0.0       # top: half on 2, half on 3
    bins[0, 2, :] = 0.0                       # right: uniform, mean 7.5
    bins[0, 3, 15] = 0.0                      # bottom: the last bin
    boxes, scores = decode([bins.reshape(1, 64, 1, 1), np.full((1, 3, 1, 1), -1e4)], (32, 32),
                           strides=(32,))
    np.testing.assert_allclose(boxes[0, 0], np.array([0.5 - 5, 0.5 - 2.5, 0.5 + 7.5, 0.5 + 15]) * 32)
    assert np.all(scores == 0) and np.all(np.isfinite(scores))   # no overflow


def _ultralytics(outputs, strides, reg_max=16):
    """Detect._inference in float64 PyTorch: the levels' (box bins, classes) joined per anchor,
    DFL, make_anchors (cell centres), dist2bbox (xyxy), times the strides, sigmoid."""
    feats = [torch.cat((torch.as_tensor(b), torch.as_tensor(c)), 1) for b, c in zip(outputs[0::2], outputs[1::2])]
    n, no = feats[0].shape[:2]
    x = torch.cat([f.view(n, no, -1) for f in feats], 2)
    box, cls = x.split((4 * reg_max, no - 4 * reg_max), 1)
    a = box.shape[2]
    dist = (box.view(n, 4, reg_max, a).transpose(2, 1).softmax(1)
            * torch.arange(reg_max, dtype=torch.float64).view(1, reg_max, 1, 1)).sum(1)
    points, stride = [], []
    for f, s in zip(feats, strides):
        h, w = f.shape[2:]
        sy, sx = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5,
                                torch.arange(w, dtype=torch.float64) + 0.5, indexing="ij")
        points.append(torch.stack((sx, sy), -1).view(-1, 2))
        stride.append(torch.full((h * w, 1), float(s), dtype=torch.float64))
    points, stride = torch.cat(points).T.unsqueeze(0), torch.cat(stride).T.unsqueeze(0)
    lt, rb = dist.chunk(2, 1)
    xyxy = torch.cat((points - lt, points + rb), 1) * stride
    return xyxy.transpose(1, 2).numpy(), cls.sigmoid().transpose(1, 2).numpy()


@pytest.mark.parametrize("size", [(64, 64), (70, 45)])
def test_matches_ultralytics_formulas(size):
    rng = np.random.default_rng(0)
    levels = [(-(-size[0] // s), -(-size[1] // s)) for s in (8, 16, 32)]
    outputs = []
    for h, w in levels:
        outputs += [3 * rng.standard_normal((2, 64, h, w)), 4 * rng.standard_normal((2, 5, h, w))]
    boxes, scores = decode(outputs, size)
    want_boxes, want_scores = _ultralytics(outputs, (8, 16, 32))
    np.testing.assert_allclose(boxes, want_boxes, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-12, atol=1e-15)

    # a network that applied the DFL itself (specs/yolov8n.net): the same boxes
    applied = list(outputs)
    for i in range(0, len(outputs), 2):
        n, _, h, w = outputs[i].shape
        bins = torch.as_tensor(outputs[i]).view(n, 4, 16, h, w).softmax(2)
        applied[i] = (bins * torch.arange(16, dtype=torch.float64).view(1, 1, 16, 1, 1)).sum(2).numpy()
    boxes_applied, _ = decode(applied, size)
    np.testing.assert_allclose(boxes_applied, boxes, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("outputs, size, options, words", [
    ([np.zeros((1, 4, 2, 2))], (16, 16), {}, "(box, classes) pairs"),
    ([np.zeros((1, 4, 2, 2)), np.zeros((1, 3, 2, 2))], (16, 16), {}, "1 levels of outputs but 3 strides"),
    ([np.zeros((1, 6, 2, 2)), np.zeros((1, 3, 2, 2))], (16, 16), {"strides": (8,)}, "not 6 channels"),
    ([np.zeros((1, 4, 2, 2)), np.zeros((1, 3, 2, 2))], (64, 64), {"strides": (8,)}, "does not fit stride 8"),
    ([np.zeros((1, 4, 2, 2)), np.zeros((1, 3, 1, 2))], (16, 16), {"strides": (8,)}, "of one size"),
])
def test_refuses_outputs_that_do_not_fit(outputs, size, options, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        decode(outputs, size, **options)
