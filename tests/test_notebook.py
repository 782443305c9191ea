"""docs/notebooks/quickstart.ipynb runs, and shows what a notebook user should see.

The notebook is executed once (module fixture) in a real Jupyter kernel, ipykernel on the
Python running the tests, and each test reads the MIME bundles its cells produced: the diagram
(image/svg+xml), the summary (text/html, with the totals the test computes itself), the learning
curves (image/png), the evaluation, and the error cell's report (not a Python traceback).
nbclient stops at any cell that fails unless it is tagged `raises-exception`, so executing the
notebook also proves that every other cell runs.
"""

from __future__ import annotations

import ast
import base64
import io
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")      # the test extra installs these three
nbclient = pytest.importorskip("nbclient")
ipykernel_spec = pytest.importorskip("ipykernel.kernelspec")
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402
from jupyter_client.manager import KernelManager  # noqa: E402

import netspec  # noqa: E402

NOTEBOOK = Path(__file__).resolve().parent.parent / "docs" / "notebooks" / "quickstart.ipynb"
SPECS = NOTEBOOK.parent.parent.parent / "specs"
CELL_TIMEOUT_S = 600        # the first compile of a network's kernels takes a while on a cold cache
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    """The notebook's code cells after running it, by their source."""
    kernels = tmp_path_factory.mktemp("kernels")
    # a kernel spec of this Python (not whichever `python3` kernel the machine has installed)
    ipykernel_spec.write_kernel_spec(kernels / "netspec-tests")
    km = KernelManager(kernel_name="netspec-tests",
                       kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S,
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    return {cell.source: cell for cell in nb.cells if cell.cell_type == "code"}


def cell(cells, starts: str):
    found = [c for source, c in cells.items() if source.startswith(starts)]
    assert len(found) == 1, f"one code cell starting {starts!r}, found {len(found)}"
    return found[0]


def result(c) -> dict:
    """The MIME bundle of a cell's result (its Out[n])."""
    out = [o for o in c.outputs if o.output_type == "execute_result"]
    assert len(out) == 1, c.outputs
    return out[0].data


def box_titles(svg: str) -> set[str]:
    return {g.find(f"{SVG}title").text for g in ET.fromstring(svg).iter(f"{SVG}g")
            if g.get("class") == "node"}


@pytest.mark.parametrize("starts, spec, layers", [
    ('net = netspec.load("../../specs/lenet5.net")', "lenet5", {"c1", "s2", "c3", "s4", "c5", "f6"}),
    ('mlp = netspec.load("../../specs/mlp.net")', "mlp", {"image"}),
])
def test_a_network_shows_its_diagram(cells, starts, spec, layers):
    bundle = result(cell(cells, starts))
    titles = box_titles(bundle["image/svg+xml"])
    names = {node.name for node in netspec.load(SPECS / f"{spec}.net").graph.nodes()}
    assert layers <= titles and titles - {"legend"} <= names
    assert bundle["text/plain"].startswith(f"<Network {spec}:")


def html_totals(html: str) -> dict[str, str]:
    return dict(re.findall(r"<tr><th[^>]*>([^<]*)</th><td[^>]*>([^<]*)</td></tr>", html))


@pytest.mark.parametrize("starts, spec, batch, params", [
    ("net.summary(batch=64)", "lenet5", 64, 61_706),        # the lecture's figures
    ("mlp.summary(batch=32)", "mlp", 32, 266_610),
])
def test_a_summary_shows_as_an_html_table_with_the_totals(cells, starts, spec, batch, params):
    html = result(cell(cells, starts))["text/html"]
    summary = netspec.load(SPECS / f"{spec}.net").summary(batch=batch)
    assert summary.params == params
    totals = html_totals(html)
    assert totals["Total params"].startswith(f"{params:,} (")
    assert totals["Trainable params"] == f"{summary.trainable:,}"
    assert totals["Non-trainable params"] == "0"
    assert totals["MACs"].endswith(f"({summary.macs:,} at batch {batch})")
    assert totals["Inference memory"] and totals["Training memory"]
    # a row per layer, each with its output shape
    assert html.count("<tr>") == 1 + len(summary.rows) + len(totals)
    for row in summary.rows:
        assert f">{row.shape_text}</td>" in html


@pytest.mark.parametrize("starts", ['model = net.compile()', 'mlp_model = mlp.compile()'])
def test_a_history_shows_its_learning_curves(cells, starts):
    from PIL import Image
    png = base64.b64decode(result(cell(cells, starts))["image/png"])
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.width >= 300 and image.height >= 200


def test_the_history_holds_each_epoch(cells):
    history = ast.literal_eval(result(cell(cells, "history.history"))["text/plain"])
    assert len(history["loss"]) == 5 and all(v > 0 for v in history["loss"])
    assert history["loss"][-1] < history["loss"][0]


@pytest.mark.parametrize("starts, least", [('model.evaluate("digits")', 0.9),
                                           ('mlp_model.evaluate("digits")', 0.9)])
def test_the_trained_networks_recognise_digits(cells, starts, least):
    metrics = ast.literal_eval(result(cell(cells, starts))["text/plain"])
    assert least < metrics["accuracy"] <= 1


def test_a_spec_error_shows_the_report_not_a_traceback(cells):
    errors = [o for o in cell(cells, "netspec.loads(").outputs if o.output_type == "error"]
    assert len(errors) == 1 and errors[0].ename == "SpecError"
    shown = "\n".join(errors[0].traceback)
    lines = shown.splitlines()
    assert lines[0].startswith("typo.net:4:36: error: dense: bad value for 'act': ")
    assert lines[0].endswith(", got 'rleu'")
    assert lines[1:] == [" 4 |     image -> flatten -> dense(100, act=rleu) -> dense(10) -> softmax -> out",
                         "   |                                    ^~~",
                         "hint: did you mean 'relu'?"]
    assert "Traceback" not in shown
