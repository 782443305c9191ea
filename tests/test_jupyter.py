"""What Jupyter shows: a Network's diagram (image/svg+xml), a Summary's table (text/html), a
SpecError's report instead of a traceback. Checked through IPython's own display formatter and
InteractiveShell, the machinery a notebook runs (tests/test_notebook.py runs a real one)."""

import contextlib
import io
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

IPython = pytest.importorskip("IPython")     # the test extra installs it (with ipykernel)
from IPython.core.formatters import DisplayFormatter  # noqa: E402
from IPython.core.interactiveshell import InteractiveShell  # noqa: E402

import netspec  # noqa: E402
from netspec.report.render import PAGE_BOXES, DiagramError, page_depth, to_dot  # noqa: E402

SVG = "{http://www.w3.org/2000/svg}"


def mime_bundle(obj) -> dict:
    data, _ = DisplayFormatter().format(obj)
    return data


def box_titles(svg: str) -> set[str]:
    root = ET.fromstring(svg)
    return {g.find(f"{SVG}title").text for g in root.iter(f"{SVG}g")
            if g.get("class") == "node" and g.find(f"{SVG}title").text != "legend"}


# ------------------------------------------------------------------ Network: its diagram

def test_a_network_without_blocks_shows_every_layer():
    net = netspec.load("specs/lenet5.net")
    svg = mime_bundle(net)["image/svg+xml"]
    # every layer is a box, or an activation drawn inside the box of the layer before it
    assert {"image", "c1", "s2", "c3", "s4", "c5", "f6", "output"} <= box_titles(svg)
    assert box_titles(svg) <= {node.name for node in net.graph.nodes()}


def test_a_deep_network_is_folded_to_fit_a_page():
    net = netspec.load("specs/resnet34.net")
    svg = mime_bundle(net)["image/svg+xml"]
    titles = box_titles(svg)
    assert len(titles) <= PAGE_BOXES
    # the residual units folded into runs, as `netspec render --depth 0` draws them
    assert any("residual(64) x3" in (t.text or "") for t in ET.fromstring(svg).iter(f"{SVG}text"))
    assert len(box_titles(net.svg(depth=None))) > PAGE_BOXES     # every layer would not fit


@pytest.mark.parametrize("spec", ["resnet50", "googlenet", "efficientnet_b0", "unet"])
def test_page_depth_is_the_deepest_view_that_fits(spec):
    graph = netspec.load(f"specs/{spec}.net").graph
    depth = page_depth(graph)
    to_dot(graph, depth, max_boxes=PAGE_BOXES)          # fits
    if depth is not None:                               # and one level deeper does not
        deeper = None if depth == max(len(graph.enclosing_blocks(p + "/_")) for p in graph.blocks) - 1 \
            else depth + 1
        with pytest.raises(DiagramError):
            to_dot(graph, deeper, max_boxes=PAGE_BOXES)


def test_without_graphviz_the_network_shows_as_text(monkeypatch):
    net = netspec.load("specs/lenet5.net")
    monkeypatch.setenv("PATH", "")                      # no `dot` to run
    data = mime_bundle(net)
    assert "image/svg+xml" not in data
    assert data["text/plain"] == repr(net) and "61,706 params" in repr(net)


# ------------------------------------------------------------------ Summary: an HTML table

class Table(HTMLParser):
    """The text of each <th>/<td> cell, row by row, per section (caption, thead, tbody, tfoot)."""

    def __init__(self):
        super().__init__()
        self.sections: dict[str, list[list[str]]] = {}
        self.section = None
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag in ("thead", "tbody", "tfoot", "caption"):
            self.section = tag
            self.sections[tag] = [[]] if tag == "caption" else []
            if tag == "caption":
                self.cell = []
        elif tag == "tr":
            self.sections[self.section].append([])
        elif tag in ("th", "td"):
            self.cell = []

    def handle_endtag(self, tag):
        if tag in ("th", "td", "caption") and self.cell is not None:
            self.sections[self.section][-1].append("".join(self.cell))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def parse_table(html: str) -> dict:
    parser = Table()
    parser.feed(html)
    return parser.sections


def test_the_summary_html_holds_every_row_and_the_totals():
    summary = netspec.load("specs/resnet34.net").summary(batch=4)
    data = mime_bundle(summary)
    table = parse_table(data["text/html"])
    assert table["thead"] == [["Layer", "Op", "Output", "Trainable", "Non-train.", "MACs", "Memory",
                               "RF", "Jump"]]
    layers = summary.to_json()["layers"]
    assert len(table["tbody"]) == len(layers)
    for cells, layer in zip(table["tbody"], layers):
        assert cells[0].rstrip("/") == layer["name"].split("/")[-1]
        assert cells[2] == layer["shape_text"]
        assert cells[3] == f"{layer['trainable']:,}" and cells[4] == f"{layer['non_trainable']:,}"
    totals = {label: value for label, value in table["tfoot"]}
    json_totals = summary.to_json()["totals"]
    assert totals["Total params"].startswith(f"{json_totals['params']:,} ")
    assert totals["Trainable params"] == f"{json_totals['trainable']:,}"
    assert totals["Non-trainable params"] == f"{json_totals['non_trainable']:,}"
    assert f"({json_totals['macs']:,} at batch 4)" in totals["MACs"]
    assert set(totals) >= {"Inference memory", "Training memory"}
    # the text view beside it (IPython shows the repr, the table)
    assert data["text/plain"] == summary.table()


def test_the_summary_html_escapes_what_it_shows():
    summary = netspec.load("specs/lenet5.net").summary()
    summary.network = 'a<b>&"c'
    summary.rows[1].name = "<i>x&amp;y"       # the last part of a path is shown: no '/' in it
    html = summary._repr_html_()
    assert "<i>" not in html and "<b>" not in html
    table = parse_table(html)
    assert table["caption"] == [['Network "a<b>&"c"  (batch 1)']]
    assert table["tbody"][1][0] == "<i>x&amp;y"


# ------------------------------------------------------------------ SpecError: the report

TYPO = ("block down(stride=2) {\n    in x\n    out x -> conv(8, 3, stride=strid)\n}\n"
        "network n() {\n    input x: 3@16x16\n    x -> down -> out\n}\n")


def run_in_ipython(code: str):
    shell = InteractiveShell.instance()
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        result = shell.run_cell(code)
    return result, out.getvalue()


def test_a_spec_error_in_a_cell_shows_the_report_not_a_traceback():
    with pytest.raises(netspec.SpecError) as caught:
        netspec.loads(TYPO, file="typo.net")
    report = caught.value.format()
    result, shown = run_in_ipython(f"import netspec\nnetspec.loads({TYPO!r}, file='typo.net')")
    assert isinstance(result.error_in_exec, netspec.SpecError)
    assert shown.strip() == report
    assert "Traceback" not in shown and "File " not in shown
    lines = shown.splitlines()
    assert lines[0] == str(caught.value)
    assert lines[0].startswith("typo.net:3:25: error: ")
    assert lines[1:3] == [" 3 |     out x -> conv(8, 3, stride=strid)",
                          "   |                         ^~~~~~"]
    assert "did you mean 'stride'?" in lines[3] and lines[3].startswith("hint: ")
    assert lines[4].startswith("typo.net:7:10: note: in block 'down'")

def test_other_errors_keep_their_traceback():
    _, shown = run_in_ipython("raise ValueError('plain')")
    shown = re.sub(r"\x1b\[[0-9;]*m", "", shown)      # IPython's colours
    assert "Traceback (most recent call last)" in shown and "ValueError: plain" in shown
