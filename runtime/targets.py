"""The registry of targets, by name: where `compile(target=...)` and the CLI find one.

A target is a folder under runtime/ whose package exports `TARGET` (a `target.Target`); it
joins the registry by being imported and listed here. Importing this module imports every
target's kernels (Numba, about 0.3 s for the CPU's).
"""

from __future__ import annotations

from . import cpu
from .target import Target

TARGETS: dict[str, Target] = {t.name: t for t in (cpu.TARGET,)}


class UnknownTarget(ValueError):
    """A target name that no registered target has."""


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise UnknownTarget(f"unknown target '{name}': this build has "
                            f"{', '.join(sorted(TARGETS))}") from None
