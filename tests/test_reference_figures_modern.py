"""Published parameter counts of modern CNNs, reproduced exactly by the specs in specs/.

Figures (1000 classes):
  ResNet-50, torchvision (v1.5)        25,557,032 trainable
  ResNet-152, torchvision (v1.5)       60,192,808 trainable
  Xception, keras.applications         22,910,480 total, 22,855,952 trainable, 54,528 non-trainable
  MobileNet v1 1.0, keras.applications  4,253,864 total,  4,231,976 trainable, 21,888 non-trainable
The ResNets' non-trainable counts (batch-norm running mean + variance) are derived
by hand below; the autoencoder's count is worked out layer by layer.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

import netspec
from netspec.cli import cli

SPECS = Path(__file__).resolve().parent.parent / "specs"


def load(name: str, **params) -> netspec.Network:
    return netspec.load(SPECS / name, **params)


def counts(net: netspec.Network) -> tuple[int, int, int]:
    s = net.summary()
    return s.trainable + s.non_trainable, s.trainable, s.non_trainable


def blocks_named(net: netspec.Network, block: str) -> list[str]:
    """Paths of the instances of `block`, in creation order."""
    return [b.path for b in net.graph.blocks.values() if b.block == block]


# ---------------------------------------------------------------- ResNet (torchvision)

def resnet_bn_channels(units: list[int]) -> int:
    """Batch-norm channels of a bottleneck ResNet: stem 64; per unit of width w, BNs of
    w + w + 4w; one 4w projection BN on the first unit of each stage."""
    total = 64
    for w, n in zip((64, 128, 256, 512), units):
        total += 6 * w * n + 4 * w
    return total


@pytest.fixture(scope="module")
def resnet50():
    return load("resnet50.net", classes=1000)


@pytest.fixture(scope="module")
def resnet152():
    return load("resnet152.net", classes=1000)


def test_resnet50_parameters(resnet50):
    total, trainable, non_trainable = counts(resnet50)
    assert trainable == 25_557_032
    assert non_trainable == 2 * resnet_bn_channels([3, 4, 6, 3]) == 53_120
    assert total == 25_610_152
    assert resnet50.graph.node(resnet50.graph.outputs[0]).shape == (1000,)


def test_resnet152_parameters(resnet152):
    total, trainable, non_trainable = counts(resnet152)
    assert trainable == 60_192_808
    assert non_trainable == 2 * resnet_bn_channels([3, 8, 36, 3]) == 151_424
    assert total == 60_344_232


@pytest.mark.parametrize("fixture, units", [("resnet50", [3, 4, 6, 3]),
                                            ("resnet152", [3, 8, 36, 3])])
def test_resnet_bottleneck_units_per_stage(fixture, units, request):
    net = request.getfixturevalue(fixture)
    paths = blocks_named(net, "bottleneck")
    assert len(paths) == sum(units)
    per_stage = Counter(p.split("/")[0] for p in paths)
    assert [per_stage[f"stage{i}"] for i in range(1, 5)] == units
    # a projection shortcut (1x1 conv + BN) on the first unit of each stage only
    g = net.graph
    projected = sorted({n.name.rsplit("/skip/", 1)[0] for n in g.nodes() if "/skip/" in n.name})
    assert projected == [f"stage{i}/bottleneck1" for i in range(1, 5)]
    # v1.5: the stride sits in the 3x3 conv of the first unit of stages 2-4
    for i in range(2, 5):
        main = [n for n in g.nodes() if n.name.startswith(f"stage{i}/bottleneck1/main/")
                and n.op == "conv"]
        assert [tuple(n.attrs["kernel"]) for n in main] == [(1, 1), (3, 3), (1, 1)]
        assert [tuple(n.attrs["stride"]) for n in main] == [(1, 1), (2, 2), (1, 1)]
    # every conv is bias-free; the classifier has a bias
    assert all(not n.attrs["bias"] for n in g.nodes() if n.op == "conv")
    assert g.node("dense1").param_count == 2048 * 1000 + 1000


def test_resnet_specs_share_the_block_file(resnet50, resnet152):
    for net in (resnet50, resnet152):
        assert any(Path(f).name == "resnet_blocks.net" for f in net.spec.files)


# ---------------------------------------------------------------- Xception (Keras)

@pytest.fixture(scope="module")
def xception():
    return load("xception.net", classes=1000)


def test_xception_parameters(xception):
    assert counts(xception) == (22_910_480, 22_855_952, 54_528)


def test_xception_flows(xception):
    g = xception.graph
    middle = blocks_named(xception, "middle_unit")
    assert len(middle) == 8
    assert all(p.startswith("middle_flow1/") for p in middle)
    for flow in ("entry_flow", "middle_flow", "exit_flow"):
        assert len(blocks_named(xception, flow)) == 1
    # 3 separable convs per middle unit; 2 per entry/exit module (4 modules); 2 more at the exit
    assert sum(n.op == "separable_conv" for n in g.nodes()) == 8 * 3 + 4 * 2 + 2
    shapes = {b.path: g.node(b.output).shape for b in g.blocks.values()
              if b.block.endswith("_flow")}
    assert shapes == {"entry_flow1": (728, 19, 19), "middle_flow1": (728, 19, 19),
                      "exit_flow1": (2048, 10, 10)}


# ---------------------------------------------------------------- MobileNet v1 (Keras)

@pytest.fixture(scope="module")
def mobilenet():
    return load("mobilenet.net", classes=1000)


def test_mobilenet_parameters(mobilenet):
    assert counts(mobilenet) == (4_253_864, 4_231_976, 21_888)


def test_mobilenet_depthwise_units(mobilenet):
    g = mobilenet.graph
    units = blocks_named(mobilenet, "dw_unit")
    assert len(units) == 13
    dws = [n for n in g.nodes() if n.op == "depthwise_conv"]
    assert len(dws) == 13
    assert [tuple(n.attrs["stride"])[0] for n in dws] == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
    assert all(not n.attrs["bias"] for n in dws)
    assert [g.node(g.blocks[p].output).shape[0] for p in units] == \
        [64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]
    assert g.node(g.blocks[units[-1]].output).shape == (1024, 7, 7)


def test_mobilenet_width_multiplier():
    # alpha = 0.5: every width int(c * 0.5); 1,342,536 (1,331,592 trainable), as counted on
    # the same architecture built layer by layer in PyTorch (the paper rounds it to 1.3M)
    net = load("mobilenet.net", classes=1000, alpha=0.5)
    assert counts(net) == (1_342_536, 1_331_592, 10_944)


# ---------------------------------------------------------------- conv autoencoder

def test_autoencoder_round_trips_its_shape():
    net = load("autoencoder.net")
    g = net.graph
    (inp,), (out,) = g.inputs, g.outputs
    assert g.node(inp).shape == (1, 28, 28)
    assert g.node(out).shape == g.node(inp).shape
    bottleneck = [n for n in g.nodes() if n.op == "maxpool"][-1]
    assert bottleneck.shape == (64, 3, 3)
    assert [n.shape for n in g.nodes() if n.op == "conv_transpose"] == \
        [(32, 7, 7), (16, 14, 14), (1, 28, 28)]
    assert g.node(out).op == "sigmoid"
    # conv: k*k*cin*cout + cout; transposed conv: k*k*cin*cout + cout
    encoder = (9 * 1 * 16 + 16) + (9 * 16 * 32 + 32) + (9 * 32 * 64 + 64)
    decoder = (9 * 64 * 32 + 32) + (9 * 32 * 16 + 16) + (9 * 16 * 1 + 1)
    assert counts(net) == (encoder + decoder, encoder + decoder, 0) == (46_529, 46_529, 0)
    assert g.train["loss"] == "mse"


# ---------------------------------------------------------------- classes changes only the head

HEADS = [
    # spec, head node, expected drop in trainable parameters from 1000 to 5 classes
    ("resnet50.net", "dense1", (2048 + 1) * (1000 - 5)),      # 2,038,755
    ("resnet152.net", "dense1", (2048 + 1) * (1000 - 5)),     # 2,038,755
    ("xception.net", "dense1", (2048 + 1) * (1000 - 5)),      # 2,038,755
    ("mobilenet.net", "conv1", (1024 + 1) * (1000 - 5)),      # 1,019,875: the 1x1 conv head
]


def _cli_totals(spec: Path, *sets: str) -> dict:
    args = ["summary", str(spec), "--format", "json"]
    for s in sets:
        args += ["--set", s]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)["totals"]


@pytest.mark.parametrize("spec, head, drop", HEADS)
def test_set_classes_changes_only_the_head(spec, head, drop):
    big = _cli_totals(SPECS / spec, "classes=1000")
    small = _cli_totals(SPECS / spec, "classes=5")
    assert big["trainable"] - small["trainable"] == drop
    assert big["non_trainable"] == small["non_trainable"]
    # node by node: only the head's parameters differ
    g1 = load(spec, classes=1000).graph
    g5 = load(spec, classes=5).graph
    assert [n.name for n in g1.nodes()] == [n.name for n in g5.nodes()]
    changed = [n.name for n in g1.nodes() if n.param_count != g5.node(n.name).param_count]
    assert changed == [head]
    assert g1.node(head).param_count - g5.node(head).param_count == drop
    assert g5.node(g5.outputs[0]).shape == (5,)
