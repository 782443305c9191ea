"""`netspec gradcheck`: a network's, a block's or a layer's gradients against central
differences (netspec/gradcheck.py): ResNet-34's residual blocks pass, a deliberately wrong
backward kernel fails naming its tensor, and what names nothing is a usage error."""

from __future__ import annotations

from pathlib import Path

import pytest

from netspec.cli import main
from netspec.runtime.cpu.table import TABLE

ROOT = Path(__file__).resolve().parent.parent
RESNET = str(ROOT / "specs" / "resnet34.net")
SMALL = ("--input", "3@32x32")     # ResNet-34 on 32x32 images: the same blocks, at 8x8 and less


def run(capsys, *argv):
    rc = main(["gradcheck", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


@pytest.mark.slow
def test_resnet34_residual_blocks_pass(capsys):
    rc, out, err = run(capsys, RESNET, "--block", "residual", *SMALL)
    assert rc == 0, out + err
    # the first instance of each distinct argument list, the projections' among them
    for instance in ("residual1 = residual(filters=64)", "residual4 = residual(filters=128, stride=2)",
                     "residual15 = residual(filters=512)"):
        assert instance in out
    assert "residual4/skip/conv1.weight" in out and "maxpool1" in out    # a parameter, the input
    assert "FAIL" not in out and "all 58 gradients match" in out


def off_by_one_percent(monkeypatch, kernel):
    """Replace a CPU kernel with one whose first output is 1% too large."""
    right = TABLE.kernels[kernel]

    def wrong(ins, outs, attrs, ctx):
        right(ins, outs, attrs, ctx)
        outs[0] *= 1.01
    monkeypatch.setitem(TABLE.kernels, kernel, wrong)


def test_a_wrong_weight_gradient_fails_naming_its_tensor(capsys, monkeypatch):
    off_by_one_percent(monkeypatch, "conv2d_bwd_weight")
    rc, out, err = run(capsys, RESNET, "--block", "residual3", *SMALL)
    assert rc == 1
    assert "FAIL" in out
    assert "residual3/main/conv1.weight" in err and "differ from central differences" in err
    assert "maxpool1" not in err     # the input's gradient does not go through the kernel


def test_a_wrong_activation_gradient_fails_the_layer_before_it(capsys, monkeypatch):
    off_by_one_percent(monkeypatch, "relu_bwd")
    rc, out, err = run(capsys, RESNET, "--node", "residual2/main/relu1", *SMALL)
    assert rc == 1
    assert "residual2/main/batchnorm1" in err      # the relu's input, fed free


@pytest.mark.parametrize("flags, words", [
    (("--block", "residul"), "did you mean 'residual'?"),
    (("--block", "residual99"), "no block or block instance 'residual99'"),
    (("--node", "conv99"), "no layer 'conv99'"),
    (("--node", "conv1", "--block", "residual"), "give one"),
])
def test_what_names_nothing_is_a_usage_error(capsys, flags, words):
    rc, out, err = run(capsys, RESNET, *flags, *SMALL)
    assert rc == 2 and words in err, err


def test_a_whole_network_at_a_small_batch(capsys):
    spec = ROOT / "specs" / "lenet5.net"
    rc, out, err = run(capsys, str(spec))
    assert rc == 0, out + err
    assert "gradients match" in out
