"""The pipeline (netspec/pipeline.py): each stage returns what the next one takes, a caller may
stop after any, and together they give what the API and the commands give."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import netspec
from netspec import pipeline
from netspec.passes import DEFAULT
from netspec.passes.manager import graph_text
from netspec.runtime.memory import plan_memory
from netspec.runtime.targets import UnknownTarget, get_target

ROOT = Path(__file__).resolve().parents[1]
LENET = ROOT / "specs" / "lenet5.net"
# a batch norm to fold (a `prepare` phase) and a dropout the inference graph loses
SPEC = """
network small(width=4) {
    input x: 1@8x8
    x -> conv(width, 3, pad=same, bias=false) -> batchnorm -> relu -> dropout(0.5)
      -> flatten -> dense(3) -> softmax -> out
}
"""


def as_json(graph) -> str:
    return json.dumps(graph.to_json(), sort_keys=True)


def test_read_then_check_is_load_and_the_api_graph():
    spec = pipeline.read(LENET)
    graph = pipeline.check(spec, params={"classes": 7})
    loaded_spec, loaded = pipeline.load(LENET, params={"classes": 7})
    assert loaded_spec.text == spec.text == LENET.read_text()
    assert as_json(graph) == as_json(loaded) == as_json(netspec.load(LENET, classes=7).graph)
    assert graph.node(graph.outputs[0]).shape == (7,)


def test_loads_reads_text_with_its_inputs():
    spec, graph = pipeline.loads(SPEC, "small.net", params={"width": 6}, inputs={None: (1, 12, 12)})
    assert spec.main == "small.net"
    assert graph.node("x").shape == (1, 12, 12)
    assert graph.node("conv1").shape == (6, 12, 12)


def test_optimise_leaves_the_checked_graph_and_records_every_pass():
    graph = pipeline.loads(SPEC)[1]
    before = as_json(graph)
    optimised = pipeline.optimise(graph)
    assert as_json(graph) == before and optimised.checked is graph
    for phase in ("infer", "train"):
        assert [r.name for r in optimised.records[phase]] == list(DEFAULT)
    infer_ops = {n.op for n in optimised.infer.nodes()}
    train_ops = {n.op for n in optimised.train.nodes()}
    assert "dropout" not in infer_ops and "batchnorm" not in infer_ops   # removed, folded
    assert "dropout" in train_ops and "batchnorm" in train_ops           # training-safe only
    assert pipeline.optimise(graph, training=False).train is None


def test_the_dump_sees_the_inference_graph_after_each_pass():
    graph = pipeline.loads(SPEC)[1]
    seen = []
    optimised = pipeline.optimise(graph, dump=lambda name, g: seen.append((name, graph_text(g))))
    assert [name for name, _ in seen] == list(DEFAULT)
    assert seen[-1][1] == graph_text(optimised.infer)


def test_lower_gives_the_program_of_the_api_with_the_pass_records():
    net = netspec.loads(SPEC)
    optimised = pipeline.optimise(net.graph, passes=["dropout", "fold-batchnorm"])
    program = pipeline.lower(optimised, loss="categorical_crossentropy")
    assert program.pass_records == optimised.records
    assert list(program.phases) == ["prepare", "infer", "train"]
    same = net.program(passes=["dropout", "fold-batchnorm"], loss="categorical_crossentropy")
    assert program.text() == same.text()
    assert pipeline.program(net.graph, training=False).phases.keys() == {"prepare", "infer"}


def test_plan_is_the_planners_layout_of_each_phase_on_the_target():
    program = netspec.loads(SPEC).program()
    cpu = get_target("cpu")
    plans = pipeline.plan(program, 3)
    assert list(plans) == list(program.phases)
    for phase, plan in plans.items():
        assert plan.to_json() == plan_memory(program, phase, 3, cpu).to_json()
    asked = pipeline.plan(program, 3, phases=("train", "infer"))
    assert list(asked) == ["train", "infer"]
    plain = pipeline.plan(program, 3, phases=["train"], inplace=False)["train"]
    assert plain.to_json() == plan_memory(program, "train", 3, cpu, inplace=False).to_json()
    assert not any(plain.inplace.values()) and any(plans["train"].inplace.values())


def test_plan_refuses_an_unknown_target():
    program = netspec.loads(SPEC).program(training=False)
    with pytest.raises(UnknownTarget):
        pipeline.plan(program, 1, "tpu")
