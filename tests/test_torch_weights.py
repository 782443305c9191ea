"""`netspec weights`: PyTorch state dicts loaded into a spec by structure, no renaming rule.

The references are PyTorch modules written as torchvision defines them (ResNet-50 below, v1.5;
the architecture zoo's in tests/zoo/), their state dicts saved with safetensors' `save_file`,
which stores the keys sorted (`bn1` before `conv1`: the definition order is lost). The matcher
must find every layer by structure: the outputs of the loaded network are PyTorch's, and its
pairing of names is the one test_zoo writes out by hand for each network."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import save_file
from torch import nn

import netspec
from netspec.cli import main
from netspec.interop.torch_weights import MatchError, match_state_dict
from netspec.runtime.checkpoint import load_arrays
from test_zoo import ZOO, _randomise
from zoo import resnet as zoo_resnet

RESNET50 = "specs/resnet50.net"
SMALL_INPUT = "3@64x64"


# ------------------------------------------------------------------ torchvision's ResNet-50

def ResNet(layers=(3, 4, 6, 3), num_classes=1000):
    """torchvision.models.resnet.ResNet with Bottleneck units (the zoo's copy, tests/zoo/resnet.py):
    resnet50 is layers (3, 4, 6, 3)."""
    return zoo_resnet.ResNet(layers, num_classes)


@pytest.fixture(scope="module")
def resnet50(tmp_path_factory):
    """The reference in eval mode with random weights and batch-norm statistics, and its state
    dict as safetensors and .npz files."""
    folder = tmp_path_factory.mktemp("resnet50")
    ref = ResNet().eval()
    _randomise(ref, seed=0)
    with torch.no_grad():       # logits spread over a few units, not PyTorch's initial tenths
        ref.fc.weight.mul_(30)
    state = ref.state_dict()
    save_file(state, folder / "resnet50.safetensors")
    np.savez(folder / "resnet50.npz", **{k: v.numpy() for k, v in state.items()})
    return ref, folder


def _run(capsys, *argv):
    rc = main(["weights", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_resnet50_loads_by_structure_and_gives_pytorchs_outputs(resnet50, tmp_path, capsys):
    ref, folder = resnet50
    out_file = tmp_path / "w.safetensors"
    rc, out, err = _run(capsys, RESNET50, "--input", SMALL_INPUT, "--from",
                        folder / "resnet50.safetensors", "-o", out_file)
    assert rc == 0, err
    assert "stem1/{conv1,batchnorm1}" in out and "<- {conv1,bn1}" in out
    assert "stage1/bottleneck1/skip/{conv1,batchnorm1}" in out and "layer1.0.downsample.{0,1}" in out
    assert f"wrote {out_file}: 267 tensors of 107 layers" in out     # num_batches_tracked dropped

    model = netspec.load(RESNET50, input_shape=(3, 64, 64)).compile(training=False)
    model.load_weights(out_file)       # the file knows its network: its graph hash is checked
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        logits = ref(torch.from_numpy(x))
    expected = torch.log_softmax(logits.double(), 1).numpy()
    # netspec's network ends in softmax: its log is the logits less their log-sum-exp
    got = np.log(model.predict(x).astype(np.float64))
    # measured: largest difference 1.6e-5 (logits from -15 to 20)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert (got.argmax(1) == expected.argmax(1)).all()
    # the comparison sees a pairing mistake: two same-shaped batch norms (bn1, bn2) swapped
    bn1, bn2 = (f"stage2/bottleneck2/main/batchnorm{i}.running_var" for i in (1, 2))
    first = model.params[bn1].copy()
    model.params[bn1][...] = model.params[bn2]
    model.params[bn2][...] = first
    assert np.abs(np.log(model.predict(x).astype(np.float64)) - expected).max() > 1e-2


def test_npz_gives_the_same_weights(resnet50, tmp_path, capsys):
    _, folder = resnet50
    for source, out in (("resnet50.safetensors", "a.safetensors"), ("resnet50.npz", "b.npz")):
        rc, _, err = _run(capsys, RESNET50, "--from", folder / source, "-o", tmp_path / out)
        assert rc == 0, err
    a, _ = load_arrays(tmp_path / "a.safetensors")
    b, meta = load_arrays(tmp_path / "b.npz")
    assert sorted(a) == sorted(b) and len(a) == 267
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert meta["network"] == "resnet50" and meta["graph_hash"]


def test_reverse_round_trip_writes_pytorchs_names(resnet50, tmp_path, capsys):
    """netspec -> PyTorch names -> netspec gives identical arrays, and the PyTorch file loads
    into the reference (strict) holding its own weights."""
    ref, folder = resnet50
    template = folder / "resnet50.safetensors"
    ours, torch_file, again = (tmp_path / f"{n}.safetensors" for n in ("w", "t", "w2"))
    assert _run(capsys, RESNET50, "--from", template, "-o", ours)[0] == 0
    rc, out, err = _run(capsys, RESNET50, "--from", ours, "--to", torch_file, "--names", template)
    assert rc == 0, err
    assert f"wrote {torch_file}: 320 tensors of 107 layers" in out
    assert _run(capsys, RESNET50, "--from", torch_file, "-o", again)[0] == 0
    a, _ = load_arrays(ours)
    b, _ = load_arrays(again)
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    state, _ = load_arrays(torch_file)
    fresh = ResNet()
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    for k, v in ref.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(fresh.state_dict()[k], v), k


# ------------------------------------------------------------------ refusals

def test_partial_match_is_refused_naming_what_differs(resnet50, tmp_path, capsys):
    """classes=10 against torchvision's 1000-class fc: refused, nothing written; with
    --allow-partial the 106 layers that match are written, the head left out."""
    ref, folder = resnet50
    out_file = tmp_path / "w.safetensors"
    rc, out, err = _run(capsys, RESNET50, "--set", "classes=10", "--from",
                        folder / "resnet50.safetensors", "-o", out_file)
    assert rc == 1
    assert "differ in shape: dense1 (weight 10x2048, bias 10) vs fc (weight 1000x2048, bias 1000)" in err
    assert "--allow-partial writes the 106 layers that match (of the spec's 107)" in err
    assert "dense1" in out and "shapes differ" in out      # the table says it too
    assert not out_file.exists()
    rc, out, err = _run(capsys, RESNET50, "--set", "classes=10", "--from",
                        folder / "resnet50.safetensors", "-o", out_file, "--allow-partial")
    assert rc == 0, err
    written, _ = load_arrays(out_file)
    assert len(written) == 265 and not any(k.startswith("dense1.") for k in written)
    np.testing.assert_array_equal(written["stem1/conv1.weight"], ref.conv1.weight.detach().numpy())


def test_missing_and_extra_layers_are_named(resnet50, tmp_path, capsys):
    ref, folder = resnet50
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    headless = {k: v for k, v in state.items() if not k.startswith("fc.")}
    save_numpy(headless, tmp_path / "headless.safetensors")
    rc, _, err = _run(capsys, RESNET50, "--from", tmp_path / "headless.safetensors", "-o", tmp_path / "w.npz")
    assert rc == 1 and "1 layer(s) of the spec have no tensors in the file: dense dense1" in err
    extra = dict(state, **{"aux.fc.weight": np.ones((5, 7), np.float32)})
    save_numpy(extra, tmp_path / "extra.safetensors")
    rc, _, err = _run(capsys, RESNET50, "--from", tmp_path / "extra.safetensors", "-o", tmp_path / "w.npz")
    assert rc == 1 and "1 layer(s) of the file fit nowhere in the spec: aux.fc (weight 5x7)" in err
    assert not (tmp_path / "w.npz").exists()


def test_shape_mismatch_inside_the_network_is_named(resnet50, tmp_path, capsys):
    ref, folder = resnet50
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    state["layer2.0.conv2.weight"] = np.zeros((128, 128, 5, 5), np.float32)
    save_numpy(state, tmp_path / "odd.safetensors")
    rc, _, err = _run(capsys, RESNET50, "--from", tmp_path / "odd.safetensors", "-o", tmp_path / "w.npz")
    assert rc == 1
    assert ("stage2/bottleneck1/main/conv2 (weight 128x128x3x3) vs layer2.0.conv2 (weight 128x128x5x5)"
            in err), err


def test_values_are_checked(resnet50, tmp_path, capsys):
    ref, _ = resnet50
    state = {k: v.numpy().copy() for k, v in ref.state_dict().items()}
    state["layer3.1.bn2.running_var"][0] = np.nan
    save_numpy(state, tmp_path / "nan.safetensors")
    rc, _, err = _run(capsys, RESNET50, "--from", tmp_path / "nan.safetensors", "-o", tmp_path / "w.npz")
    assert rc == 1 and "stage3/bottleneck2/main/batchnorm2.running_var holds 1 NaN" in err


def test_pickled_files_are_refused_with_a_hint(resnet50, tmp_path, capsys):
    ref, _ = resnet50
    torch.save(ref.state_dict(), tmp_path / "resnet50.pth")
    rc, _, err = _run(capsys, RESNET50, "--from", tmp_path / "resnet50.pth", "-o", tmp_path / "w.npz")
    assert rc == 1
    assert "pickled PyTorch file" in err and "save_file(model.state_dict()" in err
    assert "Traceback" not in err and not (tmp_path / "w.npz").exists()


def test_usage(resnet50, tmp_path, capsys):
    _, folder = resnet50
    source = folder / "resnet50.safetensors"
    assert _run(capsys, RESNET50, "--from", source)[0] == 2                  # no -o, no --to
    assert _run(capsys, RESNET50, "--from", source, "-o", tmp_path / "a.npz",
                "--to", tmp_path / "b.npz", "--names", source)[0] == 2
    assert _run(capsys, RESNET50, "--from", source, "--to", tmp_path / "b.npz")[0] == 2   # no --names
    rc, _, err = _run(capsys, RESNET50, "--from", source, "-o", tmp_path / "w.pt")
    assert rc == 2 and "use .safetensors or .npz" in err


def test_reverse_refuses_weights_of_another_network(resnet50, tmp_path, capsys):
    _, folder = resnet50
    other = tmp_path / "other.safetensors"
    assert main(["weights", RESNET50, "--set", "classes=10", "--from", str(folder / "resnet50.safetensors"),
                 "-o", str(other), "--allow-partial"]) == 0
    capsys.readouterr()
    rc, _, err = _run(capsys, RESNET50, "--from", other, "--to", tmp_path / "t.npz",
                      "--names", folder / "resnet50.safetensors")
    assert rc == 1 and "different network" in err and "weight 10x2048 in the file, 1000x2048 here" in err


# ------------------------------------------------------------------ other naming styles

def test_squeezenet_features_and_classifier_names(tmp_path, capsys):
    """torchvision's `features.N` / `classifier.N` Sequential names, Fire modules' squeeze /
    expand1x1 / expand3x3: loaded by structure, PyTorch's outputs."""
    net = ZOO["squeezenet1_1"]
    ref = net.reference(10, dropout=0).eval()
    _randomise(ref, seed=1)
    save_file(ref.state_dict(), tmp_path / "squeezenet.safetensors")
    rc, out, err = _run(capsys, net.spec, "--set", "classes=10", "--set", "dropout=0", "--input", "3@67x67",
                        "--from", tmp_path / "squeezenet.safetensors", "-o", tmp_path / "w.safetensors")
    assert rc == 0, err
    assert "<- features.3.squeeze" in out and "<- features.3.{expand1x1,expand3x3}" in out
    assert "<- classifier.1" in out
    model = netspec.load(net.spec, classes=10, dropout=0, input_shape=(3, 67, 67)).compile(training=False)
    model.load_weights(tmp_path / "w.safetensors")
    x = np.random.default_rng(2).standard_normal((2, 3, 67, 67)).astype(np.float32)
    with torch.no_grad():
        expected = torch.softmax(ref(torch.from_numpy(x)).double(), 1).numpy()
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_the_zoo_matches_as_its_hand_written_renaming(name):
    """Every network of the zoo pairs each tensor exactly as test_zoo's renaming rules do
    (written by hand per network), from the shapes of the state dict alone (meta tensors: no
    weights allocated), its keys sorted as safetensors stores them. YOLOv8n's head holds each
    level's box and class branches in two lists (cv2, cv3) while the spec builds them level by
    level: matched with the lists zipped."""
    net = ZOO[name]
    graph = netspec.load(net.spec, classes=net.classes, **net.small).graph
    with torch.device("meta"):
        ref = net.reference(net.classes, **net.reference_args)
    state = dict(sorted(ref.state_dict().items()))
    match = match_state_dict(graph, state)
    assert match.complete, match.problems()
    ours = [f"{node.name}.{p.name}" for node in graph.nodes() for p in node.params]
    paired = {p.ours.keys[q]: p.theirs.keys[t] for p in match.pairs for q, t in p.renames.items()}
    assert paired == net.names(ours)


def test_a_missing_block_and_extra_layers_are_found_where_they_are():
    """The partial search pairs everything around what is missing or extra: a state dict
    without layer4's last unit leaves exactly stage4/bottleneck3's six layers unpaired; ten
    extra layers after a plain chain are the ones left, not the first."""
    graph = netspec.load(RESNET50).graph
    with torch.device("meta"):
        state = ResNet().state_dict()
    short = {k: v for k, v in state.items() if not k.startswith("layer4.2.")}
    match = match_state_dict(graph, short)
    assert [l.name for l in match.ours_unmatched] == [
        f"stage4/bottleneck3/main/{n}" for n in
        ("conv1", "batchnorm1", "conv2", "batchnorm2", "conv3", "batchnorm3")]
    assert not match.theirs_unmatched and not match.mismatched and len(match.exact) == 101
    chain = netspec.loads("network n() { input x: 4\n x -> " + " -> ".join(["dense(4, bias=false)"] * 20)
                          + " -> out }").graph
    flat = {f"{i}.weight": np.zeros((4, 4), np.float32) for i in range(30)}
    match = match_state_dict(chain, flat)
    assert [l.name for l in match.theirs_unmatched] == [str(i) for i in range(20, 30)]
    assert [p.theirs.name for p in match.exact] == [str(i) for i in range(20)]


def test_a_file_of_another_architecture_is_refused_quickly(tmp_path, capsys):
    with torch.device("meta"):
        state = ResNet((3, 8, 36, 3)).state_dict()      # ResNet-152
    with pytest.raises(MatchError, match="the file holds 311 layers and resnet50 107, which do not line up"):
        match_state_dict(netspec.load(RESNET50).graph, state)
