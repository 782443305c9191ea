"""netspec/detection/ssd.py, SSD's decoder, on head outputs built here: boxes worked out by hand,
and every anchor of whole outputs against a float64 PyTorch re-derivation written as torchvision
writes DefaultBoxGenerator, BoxCoder.decode_single, clip_boxes_to_image and the softmax."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import netspec
from netspec.detection import ssd

ROOT = Path(__file__).resolve().parents[1]


def head(anchors, classes=5, batch=1, seed=0):
    """Random raw outputs (N, anchors, 4 + classes): box codes then logits."""
    return np.random.default_rng(seed).standard_normal((batch, anchors, 4 + classes))


# ---------------------------------------------------------------- by hand

def test_a_zero_code_gives_the_default_box():
    """At 64x64 the first map is 4x4 (stride 16): its first cell's centre is (8, 8) and its first
    default box the square of scale min_ratio 0.2, 12.8 px wide."""
    raw = np.zeros((1, 144, 4 + 4))
    boxes, scores = ssd.decode([raw], (64, 64))
    np.testing.assert_allclose(boxes[0, 0], [1.6, 1.6, 14.4, 14.4], atol=1e-12)
    np.testing.assert_allclose(scores[0, 0], [0.25, 0.25, 0.25], atol=1e-12)   # 4 equal logits


def test_a_code_moves_and_scales_its_box():
    """dx = 10 * 0.5 moves the centre by half the box's width; dw = 5 * log 2 doubles it."""
    raw = np.zeros((1, 144, 4 + 3))
    raw[0, 0, :4] = [10 * 0.5, 0.0, 5 * math.log(2), 0.0]
    boxes, _ = ssd.decode([raw], (64, 64))
    np.testing.assert_allclose(boxes[0, 0], [14.4 - 12.8, 1.6, 14.4 + 12.8, 14.4], atol=1e-12)


def test_the_last_maps_wide_box_is_clipped_to_the_input():
    """The last map (1x1) has scale 0.95: its aspect-ratio-3 box, 0.95 sqrt(3) wide, is
    clipped to the whole width (DefaultBoxGenerator's clip) and 0.95 / sqrt(3) high."""
    raw = np.zeros((1, 144, 4 + 3))
    boxes, _ = ssd.decode([raw], (64, 64), clip_to_image=False)
    h = 0.95 / math.sqrt(3) * 64
    np.testing.assert_allclose(boxes[0, 143 - 1], [0.0, 32 - h / 2, 64.0, 32 + h / 2], atol=1e-12)


def test_dw_and_dh_are_clamped_before_the_exponential():
    raw = np.zeros((1, 144, 4 + 3))
    raw[0, 0, 2:4] = 5 * 100.0                      # exp(100) would be 2.7e43 times the anchor
    boxes, _ = ssd.decode([raw], (64, 64), clip_to_image=False)
    side = 12.8 * 1000 / 16                         # exp(log(1000 / 16)) times 12.8
    np.testing.assert_allclose(boxes[0, 0], [8 - side / 2, 8 - side / 2, 8 + side / 2, 8 + side / 2])
    clipped, _ = ssd.decode([raw], (64, 64))
    np.testing.assert_allclose(clipped[0, 0], [0, 0, 64, 64])


def test_the_background_column_is_dropped():
    raw = np.zeros((2, 144, 4 + 4))
    raw[0, 7, 4 + 2] = 50.0                         # class 2, column 1 of the scores
    raw[1, 7, 4 + 0] = 50.0                         # the background: nothing left
    _, scores = ssd.decode([raw], (64, 64))
    assert scores.shape == (2, 144, 3)
    assert scores[0, 7, 1] > 1 - 1e-12 and scores[1, 7].sum() < 1e-12


# ---------------------------------------------------------------- torchvision's formulas

def torchvision_default_boxes(grid_sizes, image_size, aspect_ratios, min_ratio, max_ratio):
    """DefaultBoxGenerator (steps None, clip True) in float64, x1 y1 x2 y2 in pixels."""
    m = len(aspect_ratios)
    scales = [min_ratio + (max_ratio - min_ratio) * k / (m - 1.0) for k in range(m)] + [1.0]
    out = []
    for k, f_k in enumerate(grid_sizes):
        wh = [[scales[k], scales[k]], [math.sqrt(scales[k] * scales[k + 1])] * 2]
        for ar in aspect_ratios[k]:
            wh.extend([[scales[k] * math.sqrt(ar), scales[k] / math.sqrt(ar)],
                       [scales[k] / math.sqrt(ar), scales[k] * math.sqrt(ar)]])
        wh = torch.as_tensor(wh, dtype=torch.float64).clamp(min=0, max=1)
        y_f_k, x_f_k = f_k
        shifts_x = (torch.arange(0, f_k[1], dtype=torch.float64) + 0.5) / x_f_k
        shifts_y = (torch.arange(0, f_k[0], dtype=torch.float64) + 0.5) / y_f_k
        shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
        shifts = torch.stack((shift_x.reshape(-1), shift_y.reshape(-1)) * len(wh), dim=-1).reshape(-1, 2)
        out.append(torch.cat((shifts, wh.repeat(f_k[0] * f_k[1], 1)), dim=1))
    boxes = torch.cat(out)
    boxes = torch.cat([boxes[:, :2] - 0.5 * boxes[:, 2:], boxes[:, :2] + 0.5 * boxes[:, 2:]], -1)
    boxes[:, 0::2] *= image_size[1]
    boxes[:, 1::2] *= image_size[0]
    return boxes


def torchvision_decode(rel_codes, boxes, weights=(10.0, 10.0, 5.0, 5.0), clip=math.log(1000.0 / 16)):
    """BoxCoder.decode_single."""
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    ctr_x, ctr_y = boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx, dy = rel_codes[:, 0::4] / wx, rel_codes[:, 1::4] / wy
    dw = torch.clamp(rel_codes[:, 2::4] / ww, max=clip)
    dh = torch.clamp(rel_codes[:, 3::4] / wh, max=clip)
    pred_ctr_x, pred_ctr_y = dx * widths[:, None] + ctr_x[:, None], dy * heights[:, None] + ctr_y[:, None]
    pred_w, pred_h = torch.exp(dw) * widths[:, None], torch.exp(dh) * heights[:, None]
    return torch.stack((pred_ctr_x - 0.5 * pred_w, pred_ctr_y - 0.5 * pred_h,
                        pred_ctr_x + 0.5 * pred_w, pred_ctr_y + 0.5 * pred_h), dim=2).flatten(1)


@pytest.mark.parametrize("input_hw, grids", [
    ((64, 64), [(4, 4), (2, 2), (1, 1), (1, 1), (1, 1), (1, 1)]),
    ((320, 320), [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]),   # torchvision's size
    ((100, 72), [(7, 5), (4, 3), (2, 2), (1, 1), (1, 1), (1, 1)]),        # each halving rounds up
])
def test_every_anchor_matches_torchvisions_formulas(input_hw, grids):
    aspect_ratios = [[2, 3]] * 6
    anchors = sum(h * w * 6 for h, w in grids)
    raw = head(anchors, classes=7, batch=2, seed=len(grids) + input_hw[1]) * 3
    raw[0, :5, 2:4] = 40.0                          # past the clamp
    boxes, scores = ssd.decode([raw.astype(np.float32)], input_hw)

    default = torchvision_default_boxes(grids, input_hw, aspect_ratios, 0.2, 0.95)
    codes = torch.as_tensor(raw.astype(np.float32), dtype=torch.float64)
    for n in range(2):
        expected = torchvision_decode(codes[n, :, :4], default)
        expected[:, 0::2] = expected[:, 0::2].clamp(min=0, max=input_hw[1])   # clip_boxes_to_image
        expected[:, 1::2] = expected[:, 1::2].clamp(min=0, max=input_hw[0])
        np.testing.assert_allclose(boxes[n], expected.numpy(), rtol=1e-12, atol=1e-9)
        probabilities = torch.softmax(codes[n, :, 4:], dim=-1)[:, 1:]
        np.testing.assert_allclose(scores[n], probabilities.numpy(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("size", [64, 320, 200])
def test_the_decoder_reads_the_specs_output_at_any_size(size):
    """The spec's anchors (its output's shape) and the decoder's default boxes agree."""
    graph = netspec.load(ROOT / "specs" / "ssdlite320.net", size=size).graph
    anchors, columns = graph.shape_of(graph.outputs[0])
    boxes, scores = ssd.decode([head(anchors, classes=columns - 4)], (size, size))
    assert boxes.shape == (1, anchors, 4) and scores.shape == (1, anchors, 90)


# ---------------------------------------------------------------- refused

@pytest.mark.parametrize("outputs, hw, options, message", [
    ([np.zeros((1, 143, 8))], (64, 64), {}, r"143 anchors in the output, but an input of 64x64 has 144"),
    ([np.zeros((1, 144, 8))] * 2, (64, 64), {}, r"expected one output"),
    ([np.zeros((1, 144))], (64, 64), {}, r"must be \(N, anchors, 4 \+ classes\)"),
    ([np.zeros((1, 144, 8))], (64, 64), {"first_stride": 12}, r"power of two"),
])
def test_outputs_that_do_not_fit_are_refused(outputs, hw, options, message):
    with pytest.raises(ValueError, match=message):
        ssd.decode(outputs, hw, **options)
