"""A kernel is specialised by op and dtype, never by layer instance: compiling a deeper
network of the same ops compiles nothing new."""

from __future__ import annotations

import sys

import numba
import pytest

import netspec


def compiled_specialisations() -> int:
    """Every (jitted function, signature) pair compiled so far by the CPU target."""
    total = 0
    for name, module in list(sys.modules.items()):
        if not name.startswith("netspec.runtime.cpu"):
            continue
        for obj in vars(module).values():
            if isinstance(obj, numba.core.registry.CPUDispatcher):
                total += len(obj.signatures)
    return total


@pytest.mark.slow
def test_resnet152_compiles_no_more_kernels_than_resnet34():
    small = dict(classes=10, input_shape=(3, 32, 32))
    r34 = netspec.load("specs/resnet34.net", **small).compile(training=True)
    after34 = compiled_specialisations()
    r152 = netspec.load("specs/resnet152.net", **small).compile(training=True)
    after152 = compiled_specialisations()
    # resnet152 uses bottleneck units (1x1 convs) that resnet34 lacks; what it adds must
    # be a handful of specialisations, not one per layer (it has 3.4x the instructions)
    r34_instrs = sum(len(p.instrs) for p in r34.program.phases.values())
    r152_instrs = sum(len(p.instrs) for p in r152.program.phases.values())
    assert r152_instrs > 3 * r34_instrs
    assert after152 - after34 <= 4, (after34, after152)
    # and compiling resnet152 again adds nothing at all
    netspec.load("specs/resnet152.net", **small).compile(training=True)
    assert compiled_specialisations() == after152
