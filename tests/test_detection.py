"""Detection post-processing (netspec/detection/): suppression against a brute-force reference,
the detect section's checks, and `netspec predict` on a detector whose outputs are constructed.

The decoder these tests use, `grid`, is defined here and registered for the test only: each cell
of a stride-`cell` map predicts a box centred on the cell, of the width and height its first two
channels give in pixels, and one sigmoid score per class from the rest."""

from __future__ import annotations

import csv
import io
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import netspec
from netspec import detection
from netspec.cli import main
from netspec.detection import Detections, batched_nms, nms, postprocess
from netspec.errors import SpecError


def decode(outputs, input_hw, *, cell=8):
    """The test decoder `grid` (see the module's docstring)."""
    (maps,) = outputs
    n, channels, h, w = maps.shape
    cy, cx = np.meshgrid((np.arange(h) + 0.5) * cell, (np.arange(w) + 0.5) * cell, indexing="ij")
    half_w, half_h = maps[:, 0] / 2, maps[:, 1] / 2
    boxes = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1).reshape(n, h * w, 4)
    scores = 1 / (1 + np.exp(-maps[:, 2:]))
    return boxes, scores.reshape(n, channels - 2, h * w).transpose(0, 2, 1)


def check_options(options):
    return None if options["cell"] >= 1 else f"cell must be >= 1, got {options['cell']}"


@pytest.fixture
def grid_decoder(monkeypatch):
    monkeypatch.setitem(detection.DECODERS, "grid", __name__)


# ------------------------------------------------------------------ suppression

def reference_nms(boxes, scores, iou):
    """Greedy suppression written plainly: visit the boxes best first, keep one unless it
    overlaps a kept box by more than iou."""
    def overlap(a, b):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
        return iw * ih / union if union > 0 else 0.0
    kept = []
    for i in sorted(range(len(scores)), key=lambda i: (-scores[i], i)):
        if all(overlap(boxes[i], boxes[k]) <= iou for k in kept):
            kept.append(i)
    return kept


def random_boxes(draw, n):
    corners = draw(st.lists(st.tuples(*[st.integers(0, 40)] * 2, *[st.integers(1, 30)] * 2),
                            min_size=n, max_size=n))
    return np.array([[x, y, x + w, y + h] for x, y, w, h in corners], np.float64)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(0, 25), iou=st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]))
def test_nms_keeps_what_plain_greedy_suppression_keeps(data, n, iou):
    boxes = random_boxes(data.draw, n)
    # few distinct scores, so that ties (broken by position) are exercised too
    scores = np.array(data.draw(st.lists(st.integers(0, 5), min_size=n, max_size=n)), np.float64)
    assert nms(boxes, scores, iou).tolist() == reference_nms(boxes, scores, iou)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), n=st.integers(0, 20))
def test_batched_nms_suppresses_within_each_class_only(data, n):
    boxes = random_boxes(data.draw, n)
    scores = np.array(data.draw(st.lists(st.floats(0, 1), min_size=n, max_size=n)), np.float64)
    classes = np.array(data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)), np.int64)
    expected = set()
    for c in range(3):
        members = np.flatnonzero(classes == c)
        expected |= {int(members[k]) for k in reference_nms(boxes[members], scores[members], 0.5)}
    kept = batched_nms(boxes, scores, classes, 0.5)
    assert set(kept.tolist()) == expected
    assert list(scores[kept]) == sorted(scores[kept], reverse=True)


def test_postprocess_thresholds_suppresses_and_caps():
    # one image, four anchors, two classes: anchors 0 and 1 overlap (IoU 0.81), 2 is apart,
    # 3 scores below the threshold
    boxes = np.array([[[0, 0, 10, 10], [0, 0, 9, 9], [20, 20, 30, 30], [40, 40, 50, 50]]], np.float64)
    scores = np.array([[[0.9, 0.1], [0.8, 0.7], [0.6, 0.3], [0.2, 0.1]]])
    (found,) = postprocess(boxes, scores, score=0.25, iou=0.5, max_detections=10)
    # class 0: anchor 1 suppressed by anchor 0; class 1: anchor 1 alone (0.7) and anchor 2 (0.3)
    assert [(int(c), float(s)) for c, s in zip(found.classes, found.scores)] == \
        [(0, 0.9), (1, 0.7), (0, 0.6), (1, 0.3)]
    np.testing.assert_array_equal(found.boxes[1], [0, 0, 9, 9])
    (capped,) = postprocess(boxes, scores, score=0.25, iou=0.5, max_detections=2)
    assert capped.scores.tolist() == [0.9, 0.7]
    (none,) = postprocess(boxes, scores, score=0.95)
    assert len(none) == 0 and none.boxes.shape == (0, 4)


# ------------------------------------------------------------------ the detect section

SPEC = """network tiny(classes=2) {{
    input image: 3@32x32
    image -> conv(2 + classes, 8, stride=8) -> out
    detect {{
        {settings}
    }}
}}
"""


def load(settings_text, **kwargs):
    return netspec.loads(SPEC.format(settings=settings_text), **kwargs)


def test_the_detect_section_fills_in_defaults(grid_decoder):
    graph = load("decoder = grid").graph
    assert graph.detect == {"decoder": {"name": "grid", "cell": 8}, **detection.SETTINGS}
    graph = load("decoder = grid(cell=4)  score = 0.5  iou = 0.6  max_detections = 3").graph
    assert graph.detect == {"decoder": {"name": "grid", "cell": 4}, "score": 0.5, "iou": 0.6,
                            "max_detections": 3}
    assert graph.to_json()["detect"] == graph.detect


@pytest.mark.parametrize("text, message", [
    ("decoder = gird", "unknown decoder 'gird'"),
    ("decoder = grid(size=4)", "decoder 'grid' has no argument 'size'"),
    ("decoder = grid(cell=0)", "decoder 'grid': cell must be >= 1"),
    ("decoder = grid  score = 1.5", "score must be a number >= 0 and <= 1"),
    ("decoder = grid  max_detections = 0", "max_detections must be an integer >= 1"),
    ("decoder = grid  iuo = 0.5", "unknown setting 'iuo'"),
    ("score = 0.5", "needs a decoder"),
    ("decoder = grid  decoder = grid", "'decoder' is set twice"),
])
def test_the_detect_section_refuses_bad_settings_at_their_line(grid_decoder, text, message):
    with pytest.raises(SpecError) as e:
        load(text)
    assert message in str(e.value)
    assert e.value.pos is not None and e.value.pos.line in (4, 5)


def test_a_detect_section_belongs_in_a_network_once(grid_decoder):
    with pytest.raises(SpecError, match="a network has one detect section"):
        netspec.loads(SPEC.format(settings="decoder = grid").replace("-> out", "-> out detect { decoder = grid }"))
    with pytest.raises(SpecError, match="belongs in a network"):
        netspec.loads("block b() { in x detect { decoder = grid } out x }\n"
                     "network n() { input i: 4 i -> b -> out }")


def test_detect_is_a_keyword():
    with pytest.raises(SpecError, match="keyword"):
        netspec.loads("network n() { input i: 4 detect = i -> relu i -> out }")


def test_the_printer_writes_a_detect_section_back(grid_decoder):
    from netspec.lang.parser import parse
    from netspec.lang.printer import to_text
    text = SPEC.format(settings="decoder = grid(cell=4)\n        score = 0.5")
    assert to_text(parse(to_text(parse(text, "a.net")), "b.net")) == to_text(parse(text, "a.net"))
    assert "detect {" in to_text(parse(text, "a.net"))


# ------------------------------------------------------------------ netspec predict

def test_predict_decodes_suppresses_writes_and_draws(grid_decoder, tmp_path, capsys):
    # zero kernels and chosen biases: every cell of the 4x4 map predicts a 6x4 box centred on
    # it, class 0 with probability sigmoid(2) and class 1 with sigmoid(-3) (under the score)
    (tmp_path / "tiny.net").write_text(SPEC.format(settings="decoder = grid  score = 0.3  max_detections = 10"))
    network = netspec.load(str(tmp_path / "tiny.net"))
    model = network.compile()
    weights = {k: np.zeros_like(v) for k, v in model.state_dict().items()}
    (bias,) = [k for k in weights if k.endswith("bias")]
    weights[bias] = np.array([6.0, 4.0, 2.0, -3.0], np.float32)
    model.set_weights(weights)
    model.save_weights(tmp_path / "w.safetensors")
    images = np.zeros((2, 32, 32, 3), np.uint8)
    np.save(tmp_path / "images.npy", images)

    rc = main(["predict", str(tmp_path / "tiny.net"), str(tmp_path / "images.npy"), "--weights",
               str(tmp_path / "w.safetensors"), "-o", str(tmp_path / "boxes.csv"), "--draw",
               str(tmp_path / "drawn")])
    assert rc == 0, capsys.readouterr().err
    rows = list(csv.DictReader(io.StringIO((tmp_path / "boxes.csv").read_text())))
    # ten of the sixteen cells per image (max_detections), every one class 0 at sigmoid(2), the
    # earlier cells first among equal scores; no box overlaps another
    assert len(rows) == 20
    assert {r["class"] for r in rows} == {"0"}
    assert all(abs(float(r["score"]) - 1 / (1 + np.exp(-2.0))) < 1e-6 for r in rows)
    first = rows[0]
    assert [float(first[k]) for k in ("x1", "y1", "x2", "y2")] == [1.0, 2.0, 7.0, 6.0]
    assert [r["input"] for r in rows[:10]] == [f"{tmp_path / 'images.npy'}[0]"] * 10
    drawn = sorted(p.name for p in (tmp_path / "drawn").iterdir())
    assert drawn == ["images_0.boxes.png", "images_1.boxes.png"]
    picture = np.asarray(Image.open(tmp_path / "drawn" / "images_0.boxes.png"))
    assert picture.shape == (32, 32, 3)
    # a kept box's top edge is drawn; the last row of cells (not kept) is left black
    assert picture[2, 1:8].any() and not picture[30:].any()


def test_predict_draw_is_for_detectors(tmp_path, capsys):
    spec = tmp_path / "c.net"
    spec.write_text("network c() { input x: 1@8x8 x -> flatten -> dense(2) -> softmax -> out }")
    model = netspec.load(str(spec)).compile()
    model.save_weights(tmp_path / "w.safetensors")
    np.save(tmp_path / "x.npy", np.zeros((1, 8, 8), np.uint8))
    rc = main(["predict", str(spec), str(tmp_path / "x.npy"), "--weights", str(tmp_path / "w.safetensors"),
               "--draw", str(tmp_path / "d")])
    assert rc == 2 and "no detect section" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
