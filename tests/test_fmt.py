"""`netspec fmt`: the canonical layout, comments kept in place, idempotent, the same syntax tree;
--check and --diff write nothing; a spec that does not parse is reported and left as it is."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from netspec.cli import main
from netspec.lang.formatter import format_text
from netspec.lang.parser import parse

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "specs").rglob("*.net"))

# Every place a comment can be, blank lines in runs, settings sharing a line, a float written
# `1e-4`, a chain and a call over several lines, untidy spaces.
MESSY = """\
# header line one
# header line two


import   "lib/blocks.net"   # trailing an import
# before a block
block unit(filters,stride=1){   # after the block's brace
  in x


  # before a statement
  y = x->conv(filters,3,stride=stride,pad=same)   # the conv
      -> batchnorm(0.9,1e-4)->relu   # the norm
    # between two stages
      -> conv(filters,
   3)
  skip = x if stride==1 else x -> conv(filters, 1, stride=stride)
  out relu(y+skip)   # out
  # before the closing brace
}  # after the closing brace
network net(classes=10) {
    input image: 3@32x32
    image -> unit(16) -> global_avgpool -> dense(classes) -> softmax -> out
    train {   # the section
        # before a setting
        batch = 64   epochs = 2.50   # two settings on a line
        optimizer = sgd(lr=1e-3,
                  momentum=0.9)
    }
}


# at the end of the file
"""

CANONICAL = """\
# header line one
# header line two

import "lib/blocks.net"  # trailing an import

# before a block
block unit(filters, stride=1) {  # after the block's brace
    in x

    # before a statement
    y = x -> conv(filters, 3, stride=stride, pad=same)  # the conv
          -> batchnorm(0.9, 1e-4) -> relu               # the norm
          # between two stages
          -> conv(filters,
                  3)
    skip = x if stride == 1 else x -> conv(filters, 1, stride=stride)
    out relu(y + skip)  # out
    # before the closing brace
}  # after the closing brace

network net(classes=10) {
    input image: 3@32x32
    image -> unit(16) -> global_avgpool -> dense(classes) -> softmax -> out
    train {  # the section
        # before a setting
        batch = 64
        epochs = 2.50  # two settings on a line
        optimizer = sgd(lr=1e-3,
                        momentum=0.9)
    }
}

# at the end of the file
"""


def comments(text: str) -> list[str]:
    """The comments of a spec's text, in order: `#` to the end of the line, outside strings
    (which hold no newline and no escape), found without the parser."""
    found = re.finditer(r'"[^"\n]*"|#[^\n]*', text)
    return [m.group().rstrip() for m in found if m.group().startswith("#")]


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


def test_the_canonical_layout_keeps_every_comment_in_its_place():
    assert format_text(MESSY) == CANONICAL


def test_formatting_keeps_the_syntax_tree_and_the_comments_and_is_idempotent():
    for path in [*SHIPPED, None]:
        text = path.read_text() if path else MESSY
        formatted = format_text(text, str(path))
        assert parse(formatted) == parse(text), path
        assert comments(formatted) == comments(text), path
        assert format_text(formatted, str(path)) == formatted, path


def test_a_ternary_keeps_its_if_on_its_own_line_and_floats_keep_their_spelling():
    text = ("block b(s=1) {\n    in x\n    y = x -> conv(8, 3) -> batchnorm\n"
            "        if s > 1 else x\n    out y -> dropout(.5) -> layer_norm(1E-6)\n}\n")
    assert format_text(text) == ("block b(s=1) {\n    in x\n    y = x -> conv(8, 3) -> batchnorm\n"
                                 "          if s > 1 else x\n"
                                 "    out y -> dropout(.5) -> layer_norm(1E-6)\n}\n")


def test_the_shipped_specs_are_formatted(capsys):
    rc, out, err = run(capsys, "fmt", "--check", str(ROOT / "specs"))
    assert (rc, out) == (0, ""), err


@pytest.fixture
def project(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "blocks.net").write_text("block noop() {\n    in x\n    out x\n}\n")
    (tmp_path / "messy.net").write_text(MESSY)
    (tmp_path / "lib" / "deep.net").write_text(MESSY.replace("unit", "unit2"))
    (tmp_path / "notes.txt").write_text("not a spec {")
    return tmp_path


def test_a_folder_is_formatted_file_by_file_below_it(capsys, project):
    rc, out, err = run(capsys, "fmt", str(project))
    assert rc == 0, err
    assert out.splitlines() == [f"formatted {project / 'lib' / 'deep.net'}",
                                f"formatted {project / 'messy.net'}"]
    assert (project / "messy.net").read_text() == CANONICAL
    assert (project / "lib" / "deep.net").read_text() == CANONICAL.replace("unit", "unit2")
    assert (project / "notes.txt").read_text() == "not a spec {"
    assert run(capsys, "fmt", "--check", str(project))[:2] == (0, "")


def test_check_lists_what_would_change_and_writes_nothing(capsys, project):
    rc, out, err = run(capsys, "fmt", "--check", str(project))
    assert rc == 1
    assert out.splitlines() == [str(project / "lib" / "deep.net"), str(project / "messy.net")]
    assert "error: 2 of 3 specs not formatted" in err
    assert (project / "messy.net").read_text() == MESSY


def test_diff_prints_a_unified_diff_and_writes_nothing(capsys, project):
    rc, out, err = run(capsys, "fmt", "--diff", str(project / "messy.net"))
    assert rc == 0, err
    assert out.startswith(f"--- {project / 'messy.net'}\n+++ {project / 'messy.net'} (formatted)\n")
    assert "-        batch = 64   epochs = 2.50   # two settings on a line\n" in out
    assert "+        epochs = 2.50  # two settings on a line\n" in out
    assert (project / "messy.net").read_text() == MESSY


def test_a_spec_that_does_not_parse_is_reported_and_left_untouched(capsys, project):
    bad = "network n() {\n    input x: 8\n    x -> dense(4 -> out\n}\n"
    (project / "bad.net").write_text(bad)
    rc, out, err = run(capsys, "fmt", str(project))
    assert rc == 1
    assert f"{project / 'bad.net'}:4:1: error: unexpected '}}'" in err
    assert "error: 1 of 4 specs could not be read or parsed (left as they are)" in err
    assert (project / "bad.net").read_text() == bad
    assert (project / "messy.net").read_text() == CANONICAL     # the others are formatted


def test_missing_files_and_empty_folders_are_errors(capsys, tmp_path):
    rc, _, err = run(capsys, "fmt", str(tmp_path / "nope.net"))
    assert rc == 1 and f"error: no such file: '{tmp_path / 'nope.net'}'" in err
    rc, _, err = run(capsys, "fmt", str(tmp_path))
    assert rc == 1 and "error: no .net files in" in err
    assert run(capsys, "fmt")[0] == 2


def test_a_write_killed_half_way_leaves_the_old_file(project):
    env = {**os.environ, "NETSPEC_FAULT": "write_atomic:partial"}
    done = subprocess.run([sys.executable, "-m", "netspec.cli", "fmt", str(project / "messy.net")],
                          env=env, capture_output=True, timeout=120)
    assert done.returncode == -9
    assert (project / "messy.net").read_text() == MESSY
