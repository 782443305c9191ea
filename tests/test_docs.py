"""docs/LANGUAGE.md stays true: every ```net example checks, every shown command output matches.

Markers on the line before a fence (HTML comments, invisible when rendered):
  <!-- file: PATH -->   the next ```net block is a file of the scratch project, at PATH
  <!-- fragment -->     the next ```net block is wrapped in `network example() { ... }`
  <!-- error -->        the next ```net block must be refused (exit 1)
  <!-- run: CMD -->     the next ```text block is what `netspec ...` CMD prints (commands
                        with shell pipes are run by a shell, when jq/fmt/tail are present)
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from netspec.cli import main

DOC = Path(__file__).resolve().parent.parent / "docs" / "LANGUAGE.md"
MARK = re.compile(r"\s*<!-- (\w+)(?::\s*(.*?))? -->\s*$")
FENCE = re.compile(r"```(\w*)\s*$")


def blocks():
    """(line, lang, body, marks) for every fenced block of the doc, in order."""
    lines = DOC.read_text().split("\n")
    marks, i, out = {}, 0, []
    while i < len(lines):
        m = MARK.match(lines[i])
        if m:
            marks[m.group(1)] = m.group(2)
            i += 1
            continue
        f = FENCE.match(lines[i])
        if f:
            j = i + 1
            while not lines[j].startswith("```"):
                j += 1
            out.append((i + 1, f.group(1), "\n".join(lines[i + 1:j]) + "\n", marks))
            marks, i = {}, j + 1
            continue
        if lines[i].strip():
            marks = {}
        i += 1
    return out


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("docproj")
    (root / "netspec.toml").write_text("")
    return root


def test_every_net_example_checks_and_every_output_matches(project, capsys, monkeypatch):
    monkeypatch.chdir(project)
    checked = compared = 0
    for line, lang, body, marks in blocks():
        if lang == "net":
            name = marks.get("file") or "example.net"
            text = f"network example() {{\n{body}}}\n" if "fragment" in marks else body
            path = project / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            for net in re.findall(r"^\s*network\s+(\w+)", text, re.M):
                code = main(["check", name, "--network", net])
                err = capsys.readouterr().err
                want = 1 if "error" in marks else 0
                assert code == want, f"LANGUAGE.md line {line}: network {net} exit {code}\n{err}"
                checked += 1
        if lang == "text" and "run" in marks:
            run_line, cmd = line, marks["run"]
            if "|" in cmd or ">" in cmd:
                missing = [t for t in ("jq", "fmt", "tail", "head") if not shutil.which(t)]
                assert not missing, (f"LANGUAGE.md line {run_line} pipes through {', '.join(missing)}: "
                                     "install it (tools/install-test-deps.sh does)")
                # this interpreter's netspec, whether or not a `netspec` is on PATH
                here = f"{shlex.quote(sys.executable)} -m netspec.cli "
                shown = subprocess.run(re.sub(r"(^|&&\s*|\|\s*)netspec ", lambda m: m[1] + here, cmd),
                                       shell=True, cwd=project, capture_output=True, text=True)
                got = shown.stdout + shown.stderr
            else:
                argv = shlex.split(cmd)
                assert argv[0] == "netspec", cmd
                main(argv[1:])
                captured = capsys.readouterr()
                got = captured.out + captured.err
            assert got.rstrip() == body.rstrip(), f"LANGUAGE.md line {run_line}: `{cmd}` prints\n{got}"
            compared += 1
    assert checked >= 20 and compared >= 5


PYTHON_DOC = DOC.parent / "PYTHON.md"


def test_every_python_example_of_the_python_api_page_runs(monkeypatch):
    """docs/PYTHON.md's ```python blocks, run in order in one namespace from the repository's
    root, as a reader would paste them (its examples assert what they show)."""
    text = PYTHON_DOC.read_text()
    examples = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    assert len(examples) >= 5
    monkeypatch.chdir(DOC.parent.parent)
    namespace: dict = {}
    for i, code in enumerate(examples):
        try:
            exec(compile(code, f"PYTHON.md example {i + 1}", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"PYTHON.md example {i + 1} fails: {type(e).__name__}: {e}\n{code}") from e
    assert namespace["same"].input_norm == namespace["model"].input_norm
