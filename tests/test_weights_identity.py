"""Weights and checkpoints carry their network's graph hash and layout: loading one into a
different network is refused saying what differs; --force / force=True loads what matches;
files without them (older netspec, other tools) still load, checked by their tensors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

import netspec
from netspec.cli import main
from netspec.fingerprint import differences, fingerprint, fingerprint_hash
from netspec.model import WeightsWarning
from netspec.runtime.checkpoint import WeightsError, load_arrays, save_arrays
from netspec.training.metadata import MetadataError, read_metadata
from netspec.training.trainer import TrainingError

ROOT = Path(__file__).resolve().parents[1]
LENET = (ROOT / "specs/lenet5.net").read_text()
# LeNet-5 with one layer changed: F6 84 -> 80 units, C5's tanh a relu
MODIFIED = LENET.replace("dense(84, act=tanh)", "dense(80, act=tanh)").replace(
    "c5: conv(120, 5, act=tanh)", "c5: conv(120, 5, act=relu)")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """LeNet-5's weights (Model.save_weights) and the model they came from."""
    folder = tmp_path_factory.mktemp("identity")
    model = netspec.load(ROOT / "specs/lenet5.net").compile(training=False, warmup=False, seed=1)
    model.save_weights(folder / "lenet5.safetensors")
    (folder / "lenet5b.net").write_text(MODIFIED)
    return folder, model


def test_the_metadata_holds_the_hash_of_the_layout(saved):
    folder, model = saved
    _, raw = load_arrays(folder / "lenet5.safetensors")
    layout = json.loads(raw["layout"])
    assert raw["graph_hash"] == fingerprint_hash(layout) == fingerprint_hash(fingerprint(model.network.graph))
    assert layout["tensors"]["f6.weight"] == [[84, 120], "float32", "param"]
    assert ["s2", "avgpool", ["c1_tanh"]] in layout["nodes"]


def test_a_different_width_is_refused_naming_the_layer_and_forced_loads_the_rest(saved):
    folder, original = saved
    other = netspec.load(ROOT / "specs/lenet5.net", classes=12).compile(training=False, warmup=False)
    before = other.state_dict()
    with pytest.raises(WeightsError, match=r"saved from a different network than lenet5: dense output: "
                       r"bias 10 in the file, 12 here; weight 10x84 in the file, 12x84 here \(force=True"):
        other.load_weights(folder / "lenet5.safetensors")
    for k, v in other.state_dict().items():          # a refusal changes nothing
        np.testing.assert_array_equal(v, before[k])
    with pytest.warns(WeightsWarning, match=r"loaded 8 of 10 tensors; output.bias \(shape \(10,\), "
                      r"here \(12,\)\); output.weight"):
        loaded = other.load_weights(folder / "lenet5.safetensors", force=True)
    assert loaded == sorted(set(original.params) - {"output.weight", "output.bias"})
    for name in loaded:
        np.testing.assert_array_equal(other.params[name], original.params[name])
    np.testing.assert_array_equal(other.params["output.weight"], before["output.weight"])


def test_a_changed_layer_and_activation_are_named():
    a = fingerprint(netspec.loads(LENET).graph)
    b = fingerprint(netspec.loads(MODIFIED).graph)
    assert differences(a, b) == [
        "tanh c5_tanh missing here", "relu c5_relu not in the file",
        "flatten flatten1 reads c5_tanh in the file, c5_relu here",
        "dense f6: bias 84 in the file, 80 here; weight 84x120 in the file, 80x120 here",
        "dense output: weight 10x84 in the file, 10x80 here"]
    assert differences(a, a) == []


def test_the_same_network_in_float64_loads_a_float32_file(saved):
    folder, original = saved
    model = netspec.load(ROOT / "specs/lenet5.net").compile(training=False, warmup=False,
                                                            dtype="float64")
    assert model.load_weights(folder / "lenet5.safetensors") == sorted(original.params)
    np.testing.assert_array_equal(model.params["c1.weight"], original.params["c1.weight"])


def test_a_file_without_a_hash_still_loads_checked_by_its_tensors(saved, tmp_path):
    _, original = saved
    save_arrays(tmp_path / "old.npz", original.state_dict(),
                {"format": "netspec-weights-1", "network": "lenet5"})    # as netspec wrote before
    model = netspec.load(ROOT / "specs/lenet5.net").compile(training=False, warmup=False)
    assert model.load_weights(tmp_path / "old.npz") == sorted(original.params)
    wider = netspec.loads(MODIFIED).compile(training=False, warmup=False)
    with pytest.raises(WeightsError, match=r"f6.bias has shape \(84\), the network expects \(80\)"):
        wider.load_weights(tmp_path / "old.npz")
    with pytest.warns(WeightsWarning):
        assert "c1.weight" in wider.load_weights(tmp_path / "old.npz", force=True)


def test_a_layout_that_does_not_hash_to_its_graph_hash_is_refused(saved):
    folder, _ = saved
    _, raw = load_arrays(folder / "lenet5.safetensors")
    layout = json.loads(raw["layout"])
    layout["tensors"]["f6.weight"][0] = [80, 120]
    with pytest.raises(MetadataError, match="'graph_hash': not the hash of the stored layout"):
        read_metadata({**raw, "layout": json.dumps(layout)}, "w.safetensors")
    with pytest.raises(MetadataError, match="'graph_hash' must be 64 hexadecimal digits"):
        read_metadata({**raw, "graph_hash": "xyz"}, "w.safetensors")
    with pytest.raises(MetadataError, match="'layout': missing"):
        read_metadata({"graph_hash": raw["graph_hash"]}, "w.safetensors")
    layout["nodes"][0] = "c1"
    with pytest.raises(MetadataError, match=r"'layout.nodes\[0\]' must be \[name, op, \[inputs\]\]"):
        read_metadata({**raw, "layout": json.dumps(layout)}, "w.safetensors")


def test_eval_refuses_another_network_and_force_loads_what_matches(saved, capsys):
    folder, _ = saved
    spec, weights = str(folder / "lenet5b.net"), str(folder / "lenet5.safetensors")
    assert main(["eval", spec, "--weights", weights]) == 1
    err = capsys.readouterr().err
    assert ("lenet5.safetensors was saved from a different network than lenet5: tanh c5_tanh "
            "missing here; relu c5_relu not in the file;") in err
    assert "dense f6: bias 84 in the file, 80 here" in err and "(--force loads" in err
    assert main(["eval", spec, "--weights", weights, "--force", "--format", "json"]) == 0
    printed = capsys.readouterr()
    assert "note: --force: loaded 7 of 10 tensors" in printed.err
    assert "f6.weight (shape (84, 120), here (80, 120))" in printed.err
    assert 0.0 <= json.loads(printed.out)["accuracy"] <= 1.0


def test_resume_of_a_lenet5_checkpoint_into_a_modified_lenet5_is_refused(tmp_path):
    from netspec.lower.build import default_loss
    from netspec.training import config as C
    from netspec.training.run import train
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "tiny.npz", x=rng.random((40, 1, 32, 32), np.float32),
             y=np.arange(40) % 10)

    def run(text, resume):
        net = netspec.loads(text)
        cfg = C.resolve(net.graph.train, loss=default_loss(net.graph), epochs=1 + resume,
                        data=str(tmp_path / "tiny.npz"), batch=20)
        return train(net, text, {"sets": [], "freeze": []}, cfg, tmp_path / "run", resume=resume,
                     echo=lambda *a: None, epochs_override=1 + resume)
    run(LENET, False)
    with pytest.raises(TrainingError, match=r"checkpoint.safetensors was saved from a different network "
                       r"than lenet5: tanh c5_tanh missing here; .*dense f6: bias 84 in the file, "
                       r"80 here.*\(--init-from starts a new run from the tensors that match\)"):
        run(MODIFIED, True)
    # what the checkpoint holds still loads into LeNet-5 by the API, and partly into the other
    assert netspec.loads(LENET).compile(training=False, warmup=False).load_weights(
        tmp_path / "run" / "checkpoint.safetensors")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = netspec.loads(MODIFIED).compile(training=False, warmup=False).load_weights(
            tmp_path / "run" / "checkpoint.safetensors", force=True)
    assert "c1.weight" in loaded and "f6.weight" not in loaded and caught
