"""The registry of targets, by name: where `compile(target=...)` and the CLI find one.

A target is a folder under runtime/ whose package exports `TARGET` (a `target.Target`); it
joins the registry by being named in `PACKAGES`. The CPU's kernels are imported with this
module (Numba, about 0.3 s); another target's when a program first asks for it, so that a
missing optional package (numba-cuda) costs nothing until then and says how to get it.
"""

from __future__ import annotations

import importlib

from . import cpu
from .target import Target, TargetUnavailable

# target name -> (its package under runtime/, the pip extra that brings what it imports)
PACKAGES = {"cpu": ("cpu", None), "cuda": ("cuda", "cuda")}

TARGETS: dict[str, Target] = {"cpu": cpu.TARGET}


class UnknownTarget(ValueError):
    """A target name that no registered target has."""


def get_target(name: str) -> Target:
    """The registered target `name`; UnknownTarget for a name not registered, TargetUnavailable
    for one whose packages are not installed."""
    if name in TARGETS:
        return TARGETS[name]
    if name not in PACKAGES:
        raise UnknownTarget(f"unknown target '{name}': this build has "
                            f"{', '.join(sorted(set(PACKAGES) | set(TARGETS)))}")
    package, extra = PACKAGES[name]
    try:
        module = importlib.import_module(f"{__package__}.{package}")
    except ImportError as e:
        raise TargetUnavailable(f"the {name} target needs a package that is not installed "
                                f"({e.name or e}): pip install 'netspec[{extra}]'") from None
    TARGETS[name] = module.TARGET
    return module.TARGET


def all_targets() -> dict[str, Target]:
    """Every registered target, imported (the tests run each op's cases on each)."""
    return {name: get_target(name) for name in PACKAGES}
