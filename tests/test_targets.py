"""Every registered target against the instruction set (runtime/isa.py), and the target
registry as compile() uses it.

A target is a folder under runtime/ listed in runtime/targets.py; each one is checked here
the same way, so a new target (runtime/cuda/) is covered by being registered.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

import netspec
from netspec.runtime import isa
from netspec.runtime.target import Capabilities
from netspec.runtime.targets import TARGETS, UnknownTarget, all_targets, get_target

ROOT = Path(__file__).resolve().parent.parent
NAMES = sorted(all_targets())


@pytest.mark.parametrize("name", NAMES)
def test_every_instruction_has_a_kernel_and_every_kernel_an_instruction(name):
    kernels = set(get_target(name).kernels)
    assert sorted(set(isa.KERNELS) - kernels) == [], f"{name} lacks kernels for these instructions"
    assert sorted(kernels - set(isa.KERNELS)) == [], f"{name} has kernels the ISA does not define"


def _positions(names) -> int:
    """How many operand positions a list of ISA operands allows (None: unbounded, `*rest`)."""
    return None if any(n.startswith("*") for n in names) else len(names)


@pytest.mark.parametrize("name", NAMES)
def test_in_place_rules_name_real_instructions_and_operands(name):
    """Each rule names an instruction of the ISA, one of its outputs that is not state, and
    inputs of that instruction; an output is written over at most the listed inputs."""
    inplace = get_target(name).capabilities.inplace
    for kernel, rules in inplace.items():
        assert kernel in isa.KERNELS, f"{name}: in-place rule for {kernel}, not an instruction"
        spec = isa.KERNELS[kernel]
        n_out, n_in = _positions(spec.outputs), _positions(spec.inputs)
        assert rules, f"{name}: {kernel} has an empty in-place entry"
        for out, ins in rules:
            assert 0 <= out and (n_out is None or out < n_out), (kernel, out)
            assert spec.outputs[min(out, len(spec.outputs) - 1)].lstrip("*") not in spec.state, \
                f"{name}: {kernel} output {out} is state, updated in place already"
            assert ins and all(0 <= i and (n_in is None or i < n_in) for i in ins), (kernel, ins)


@pytest.mark.parametrize("name", NAMES)
def test_alignment_is_a_power_of_two(name):
    align = get_target(name).capabilities.align
    assert align > 0 and align & (align - 1) == 0


def test_the_isa_activations_are_its_instructions():
    """One list of activations (isa.ACTIVATIONS) gives the instructions and their attributes."""
    for act in isa.ACTIVATIONS.values():
        assert isa.KERNELS[act.name].attrs == isa.KERNELS[act.name + "_bwd"].attrs == act.attrs
        # the derivative from y, or from x where y does not determine it
        assert isa.KERNELS[act.name + "_bwd"].inputs == ("gy", act.grad_reads)
    assert set(isa.POINTWISE_ACTIVATIONS) == {n for n, a in isa.ACTIVATIONS.items() if a.pointwise}
    assert "softmax" in isa.ACTIVATIONS and "softmax" not in isa.POINTWISE_ACTIVATIONS
    assert isa.ACTIVATIONS["relu"].grad_reads == "y" and isa.ACTIVATIONS["silu"].grad_reads == "x"
    with pytest.raises(ValueError, match="grad_reads must be 'x' or 'y'"):
        isa.Activation("swish", grad_reads="gy")


# Per-instruction test coverage (every instruction of the ISA exercised by some test) belongs
# here, once the ops carry case tables (issue 14, item 2): it will check that each instruction
# of isa.KERNELS is emitted by some op case, run on every registered target.


# ---------------------------------------------------------------- the registry

def test_an_unknown_target_is_refused_by_name():
    with pytest.raises(UnknownTarget, match="unknown target 'tpu': this build has cpu"):
        get_target("tpu")
    net = netspec.load(ROOT / "specs" / "lenet5.net")
    with pytest.raises(ValueError, match="unknown target 'tpu'"):
        net.compile(target="tpu", warmup=False)


def test_the_executor_and_the_planner_read_the_target_they_are_given(monkeypatch):
    """A target registered under another name, with the CPU's kernels but no in-place rules
    and a coarser alignment: compile() finds it by name, the planner follows its
    capabilities, and the results are the CPU target's, bit for bit."""
    cpu = get_target("cpu")
    plain = dataclasses.replace(cpu, name="cpu-plain", capabilities=Capabilities({}, 4096))
    monkeypatch.setitem(TARGETS, "cpu-plain", plain)
    net = netspec.load(ROOT / "specs" / "lenet5.net")
    x = np.random.default_rng(0).standard_normal((4, 1, 32, 32)).astype(np.float32)
    y = np.arange(4) % 10
    results = {}
    for name in ("cpu", "cpu-plain"):
        model = net.compile(target=name, seed=3)
        assert model.executor.target is TARGETS[name]
        loss, grads = model.loss_and_grads(x, y)
        results[name] = (model.predict(x), loss, {k: g.copy() for k, g in grads.items()})
        plan = model.executor.memory_plan("train", 4)
        if name == "cpu-plain":
            assert plan.inplace == {} and plan.align == 4096
            assert all(t.offset % 4096 == 0 for t in plan.tensors.values())
        else:
            assert plan.inplace, "the CPU target writes some outputs in place in LeNet-5's step"
    (p0, l0, g0), (p1, l1, g1) = results["cpu"], results["cpu-plain"]
    assert np.array_equal(p0, p1) and l0 == l1
    assert g0.keys() == g1.keys() and all(np.array_equal(g0[k], g1[k]) for k in g0)


def test_a_target_that_lacks_a_kernel_is_refused_before_running(monkeypatch):
    cpu = get_target("cpu")
    partial = dataclasses.replace(cpu, name="partial",
                                  kernels={k: v for k, v in cpu.kernels.items() if k != "conv2d"})
    monkeypatch.setitem(TARGETS, "partial", partial)
    net = netspec.load(ROOT / "specs" / "lenet5.net")
    with pytest.raises(NotImplementedError, match="target partial lacks kernels: conv2d"):
        net.compile(target="partial", warmup=False)
