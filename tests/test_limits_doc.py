"""docs/LIMITS.md stays true: every constant a table row names exists in the module it names,
and the row's limit cell states the constant's value."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "LIMITS.md"
ROW = re.compile(r"^\|(?P<what>[^|]*)\|(?P<limit>[^|]*)\|(?P<where>[^|]*)\|")
CONSTANT = re.compile(r"`([A-Z][A-Z0-9_]+)`")
MODULE = re.compile(r"\(((?:netspec|runtime)/[\w/]+)\.py")
# 4,000,000 / 0.5 / 10^18 / 2^62 / 10^-12
NUMBER = re.compile(r"(?<![\w.])(\d[\d,]*(?:\.\d+)?)(?:\^(-?\d+))?")


def numbers(text: str) -> set[float]:
    found = set()
    for base, power in NUMBER.findall(text):
        value = float(base.replace(",", ""))
        found.add(value ** int(power) if power else value)
    return found


def rows():
    out = []
    for number, line in enumerate(DOC.read_text().splitlines(), 1):
        m = ROW.match(line)
        if not m or not CONSTANT.search(m["where"]):
            continue
        module = MODULE.search(m["where"])
        assert module, f"LIMITS.md:{number}: a constant without its module: {line}"
        name = module.group(1).replace("/", ".")
        name = "netspec." + name if name.startswith("runtime.") else name
        for constant in CONSTANT.findall(m["where"]):
            out.append(pytest.param(name, constant, m["limit"], id=f"{constant}@{number}"))
    return out


@pytest.mark.parametrize("module, constant, limit", rows())
def test_each_named_constant_has_the_value_the_page_gives(module, constant, limit):
    value = getattr(importlib.import_module(module), constant)
    assert float(value) in numbers(limit), f"{module}.{constant} = {value}, the page says: {limit}"


def test_the_page_names_the_constants_it_is_about():
    names = {p.values[1] for p in rows()}
    assert {"MAX_FILE_BYTES", "MAX_NESTING", "MAX_WORK", "MAX_REPEAT", "MAX_NODES", "MAX_BYTES",
            "DEFLATE_MAX_RATIO", "IMAGE_PIXELS_FLOOR", "DIVERGENCE_FACTOR", "MAX_COUNT",
            "MAX_MEMORY_BYTES", "MAX_DIAGRAM_BOXES", "MAX_PLAN_BYTES"} <= names
