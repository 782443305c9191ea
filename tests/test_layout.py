"""The layout stays as docs/ARCHITECTURE.md draws it: no import cycles among the modules of
netspec/ and runtime/ (imports inside functions count), one module that strings the stages
together, and a row of the architecture table for every module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "ARCHITECTURE.md"


def modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name (runtime/ as netspec.runtime, as installed) -> (file, is a package)."""
    out = {}
    for path in sorted([*ROOT.glob("netspec/**/*.py"), *ROOT.glob("runtime/**/*.py")]):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[0] == "runtime":
            parts.insert(0, "netspec")
        package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if package else parts)] = (path, package)
    return out


def imports(name: str, path: Path, package: bool, known) -> list[tuple[str, set[str]]]:
    """(module, names taken from it) for each import of a module in `known`, anywhere in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, set()) for a in node.names if a.name in known]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if package else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            names = {a.name for a in node.names}
            submodules = {n for n in names if f"{source}.{n}" in known}
            found += [(f"{source}.{n}", set()) for n in submodules]
            if names - submodules and source in known:
                found.append((source, names - submodules))
    return found


def test_no_module_imports_one_that_imports_it_back():
    known = modules()
    graph = nx.DiGraph()
    for name, (path, package) in known.items():
        graph.add_node(name)
        graph.add_edges_from((name, target) for target, _ in imports(name, path, package, known)
                             if target != name)
    cycles = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    assert not cycles, cycles


def test_the_compiler_and_the_runtime_never_import_the_test_support():
    """netspec.testing (the PyTorch oracle, the hostile-run harness) is for tests and tools:
    no other module of netspec/ or runtime/ imports it, inside functions included."""
    known = modules()
    offenders = [f"{path.relative_to(ROOT)} imports {source}"
                 for name, (path, package) in known.items() if not name.startswith("netspec.testing")
                 for source, _ in imports(name, path, package, known)
                 if source.startswith("netspec.testing")]
    assert not offenders, offenders


# the functions that run a stage, by the module that defines each
STAGES = {
    "netspec.lang.loader": {"load", "load_text"},
    "netspec.lang.elaborate": {"elaborate"},
    "netspec.graph.shapes": {"verify"},
    "netspec.passes.manager": {"optimize"},
    "netspec.lower.build": {"lower_optimised"},
    "netspec.runtime.memory": {"plan_memory"},
}
MAY_RUN_A_STAGE = {
    "netspec.pipeline": "it assembles them",
    "netspec.passes.manager": "verifies the graph after each pass",
    "netspec.runtime.program": "the executor plans the buffers it allocates",
}


def test_only_the_pipeline_strings_the_stages_together():
    known = modules()
    tools = {f"tools.{p.stem}": (p, False) for p in ROOT.glob("tools/*.py")}
    offenders = []
    for name, (path, package) in {**known, **tools}.items():
        if name in MAY_RUN_A_STAGE:
            continue
        for source, names in imports(name, path, package, known):
            if names & STAGES.get(source, set()):
                offenders.append(f"{path.relative_to(ROOT)}: {sorted(names & STAGES[source])} "
                                 f"from {source}")
    assert not offenders, offenders


def test_every_module_has_a_row_in_the_architecture_table_and_every_row_a_module():
    rows = set(re.findall(r"^\| `((?:netspec|runtime)/[\w/.]+)` \|", DOC.read_text(), re.M))
    files = {str(p.relative_to(ROOT)) for p, _ in modules().values()}
    files |= {str(p.relative_to(ROOT)) for p in ROOT.glob("netspec/**/*.lark")}
    # a package's __init__ that only carries its docstring needs no row of its own
    bare = {f for f in files if f.endswith("__init__.py")
            and not ast.parse((ROOT / f).read_text()).body[1:]}
    assert sorted(files - bare - rows) == [], "modules without a row"
    assert sorted(rows - files) == [], "rows naming no module"


def test_every_package_is_installed():
    """pyproject.toml lists every package folder (a non-editable install copies only those)."""
    import tomllib
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {name for name, (_, package) in modules().items() if package}
    assert sorted(packages - listed) == [] and sorted(listed - packages) == []
