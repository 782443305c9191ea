"""Diagrams: the SVG Graphviz produces is XML, so its structure can be checked."""

import shutil
import xml.etree.ElementTree as ET

import pytest

import netspec
from netspec.cli import main
from netspec.report.render import render, to_dot

SVG = "{http://www.w3.org/2000/svg}"


def svg_tree(tmp_path, spec, name="out.svg", **kw):
    net = netspec.load(spec)
    path = render(net.graph, tmp_path / name, **kw)
    return net, ET.parse(path).getroot()


def groups(root, cls):
    return [g for g in root.iter(f"{SVG}g") if g.get("class") == cls]


def title(g):
    return g.find(f"{SVG}title").text


def texts(g):
    return [t.text or "" for t in g.iter(f"{SVG}text")]


def drawn_nodes(root):
    return [g for g in groups(root, "node") if title(g) != "legend"]


def test_googlenet_has_one_cluster_per_inception_module(tmp_path):
    _, root = svg_tree(tmp_path, "specs/googlenet.net")
    clusters = [title(g) for g in groups(root, "cluster")]
    inception = [c for c in clusters if c.startswith("cluster_inception")]
    assert sorted(inception) == sorted(f"cluster_inception{m}" for m in
                                       ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b"))
    labels = [" ".join(texts(g)) for g in groups(root, "cluster")]
    assert any("inception3a: inception(64, 96, 128, 16, 32, 32)" in l for l in labels)


def test_node_labels_carry_op_attributes_and_shapes(tmp_path):
    net, root = svg_tree(tmp_path, "specs/lenet5.net")
    labels = {title(g): texts(g) for g in drawn_nodes(root)}
    c1 = labels["c1"]
    assert any("conv 5x5, 6" in t for t in c1) and "6@28x28" in c1
    # every drawn box ends with its output shape
    for name, lines in labels.items():
        shape = netspec.ops.format_shape(net.graph.node(name).shape)
        assert lines[-1] == shape, name


def test_the_legend_names_the_families_drawn(tmp_path):
    _, root = svg_tree(tmp_path, "specs/resnet34.net")
    legend = [g for g in groups(root, "node") if title(g) == "legend"]
    assert len(legend) == 1
    words = texts(legend[0])
    for family in ("input", "convolution", "normalisation", "pooling", "merge", "dense"):
        assert family in words


def expected_boxes(graph, depth):
    """Boxes drawn, counted independently of render.py: layers outside folded blocks, minus
    activations drawn inside their producer's box, plus one box per folded block."""
    folded = set()
    count = 0
    for node in graph.nodes():
        blocks = graph.enclosing_blocks(node.name)
        if depth is not None and len(blocks) > depth:
            folded.add(blocks[depth])
            continue
        src = graph.producer(node.inputs[0]) if len(node.inputs) == 1 else None
        merged = (netspec.ops.OPS[node.op].kind.value == "activation" and src is not None
                  and src.op != "input" and not src.parts   # a split's box shows its parts only
                  and len(graph.consumers(node.inputs[0])) == 1
                  and graph.enclosing_blocks(src.name) == blocks
                  and not (depth is not None and len(graph.enclosing_blocks(src.name)) > depth))
        count += not merged
    return count + len(folded)


@pytest.mark.parametrize("spec", ["specs/resnet34.net", "specs/googlenet.net", "specs/resnet152.net",
                                  "specs/xception.net"])
@pytest.mark.parametrize("depth", [None, 0, 1])
def test_node_count_at_each_depth(tmp_path, spec, depth):
    net, root = svg_tree(tmp_path, spec, depth=depth, fold_repeats=False)
    assert len(drawn_nodes(root)) == expected_boxes(net.graph, depth)


def test_resnet34_at_depth_zero_by_hand(tmp_path):
    # image, conv, batchnorm+relu, maxpool, 16 residual units, global_avgpool, dense+softmax
    _, root = svg_tree(tmp_path, "specs/resnet34.net", depth=0, fold_repeats=False)
    assert len(drawn_nodes(root)) == 6 + 16
    # folding runs of identical units: 64 x3 | 128/2, 128 x3 | 256/2, 256 x5 | 512/2, 512 x2
    _, root = svg_tree(tmp_path, "specs/resnet34.net", name="f.svg", depth=0)
    labels = [" ".join(texts(g)) for g in drawn_nodes(root)]
    assert len(labels) == 6 + 7
    assert any(l.startswith("residual(64) x3") for l in labels)
    assert any(l.startswith("residual(256) x5") for l in labels)
    assert any("residual4: residual(128, 2)" in l for l in labels)


def test_folded_block_boxes_show_name_args_shape_and_params(tmp_path):
    net, root = svg_tree(tmp_path, "specs/resnet34.net", depth=0, fold_repeats=False)
    box = next(g for g in drawn_nodes(root) if title(g) == "residual4")
    text = " ".join(texts(box))
    params = sum(n.param_count for n in net.graph.nodes() if n.name.startswith("residual4/"))
    assert "residual4: residual(128, 2)" in text
    assert "128@28x28" in text and f"{params:,} params" in text


def test_skip_edges_weigh_less_than_the_main_path():
    net = netspec.load("specs/resnet34.net")
    src = to_dot(net.graph).source
    add_edges = [l for l in src.splitlines() if '-> "residual1/add1"' in l]
    weights = sorted(l.split("weight=")[1].split()[0].strip("]") for l in add_edges)
    assert weights == ["1", "10"]


def test_resnet152_depth_one_fits_a_page(tmp_path):
    _, root = svg_tree(tmp_path, "specs/resnet152.net", depth=1)
    assert len(drawn_nodes(root)) <= 20
    height = float(root.get("height").rstrip("pt"))
    width = float(root.get("width").rstrip("pt"))
    assert height < 1400 and width < 900   # points; one screen / one printed page at 100%


def test_activations_after_a_layer_are_drawn_in_its_box_with_runs_counted():
    net = netspec.loads("network n() {\n input x: 4\n x -> dense(4) -> relu -> relu -> sigmoid"
                        " -> dense(3) -> out\n}\n", "n.net")
    src = to_dot(net.graph).source
    assert 'dense1 [label="dense 4 + relu x2 + sigmoid\n4"' in src
    assert 'dense2 [label="dense 3\n3"' in src


SHUFFLE = """
block shuffle_unit(f) {
    in x
    a, b = split(x, 2)
    y = b -> conv(f, 1, act=relu) -> depthwise_conv(3, pad=same) -> conv(f, 1, act=relu)
    out concat(a, y)
}
network shuffle() {
    input image: 8@8x8
    x1, x2 = image -> shuffle_unit(4) -> split((2, 6))
    concat(x2, x1 -> relu) -> global_avgpool -> dense(3) -> out
}
"""


@pytest.mark.parametrize("depth", [None, 0])
def test_a_split_is_one_box_showing_its_parts_with_an_edge_per_reader(depth):
    net = netspec.loads(SHUFFLE, "shuffle.net")
    src = to_dot(net.graph, depth=depth, edge_shapes=True).source
    assert '"x1_x2/split1" [label="split (2, 6)\n2@8x8, 6@8x8"' in src
    assert 'relu1 [label="relu\n2@8x8"' in src     # an activation of a part: a box of its own
    assert '"x1_x2/split1" -> relu1 [label=" 2@8x8"' in src
    assert '"x1_x2/split1" -> concat1 [label=" 6@8x8"' in src
    if depth is None:
        assert '"x1_x2/shuffle_unit1/a_b/split1" [label="split 2 parts\n4@8x8, 4@8x8"' in src
    boxes = [line for line in src.splitlines()
             if "[label=" in line and "->" not in line and "legend" not in line]
    assert len(boxes) == expected_boxes(net.graph, depth)


def test_long_names_become_short_ids_and_clipped_labels():
    from netspec.report.render import MAX_LINE_CHARS, _clip, _dot_id
    name = "b" * 5000
    assert _dot_id("relu1") == "relu1"
    assert _dot_id(name) == _dot_id(name) != _dot_id(name + "c")
    assert len(_dot_id(name)) == 40 + 1 + 16
    assert _clip(f"{name}\n3@4x4") == "b" * (MAX_LINE_CHARS - 1) + "…\n3@4x4"


def test_dot_output_needs_no_graphviz_binary(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "")
    net = netspec.load("specs/lenet5.net")
    path = render(net.graph, tmp_path / "lenet.dot")
    assert path.read_text().startswith("digraph")


def test_missing_dot_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", "")
    code = main(["render", "specs/lenet5.net", "-o", str(tmp_path / "x.svg")])
    err = capsys.readouterr().err
    assert code == 1
    assert "Graphviz's `dot` program was not found" in err and "apt-get install graphviz" in err
    assert "Traceback" not in err and not (tmp_path / "x.svg").exists()


@pytest.mark.parametrize("fmt", ["svg", "png", "pdf", "dot"])
def test_cli_render_formats(tmp_path, fmt, capsys):
    out = tmp_path / f"net.{fmt}"
    assert main(["render", "specs/lenet5.net", "-o", str(out), "--rankdir", "LR"]) == 0
    data = out.read_bytes()
    magic = {"svg": b"<?xml", "png": b"\x89PNG", "pdf": b"%PDF", "dot": b"digraph"}[fmt]
    assert data.startswith(magic)


def _png_size(path) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk (bytes 16-24, big-endian)."""
    data = path.read_bytes()
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_render_dpi_scales_a_png_and_is_larger_than_graphvizs_by_default(tmp_path, capsys):
    sizes = {}
    for dpi in (None, "96", "288"):
        out = tmp_path / f"net{dpi}.png"
        assert main(["render", "specs/lenet5.net", "-o", str(out), *(["--dpi", dpi] if dpi else [])]) == 0
        sizes[dpi] = _png_size(out)
    assert sizes[None][0] >= 1.9 * sizes["96"][0]                    # default 192 dpi
    assert sizes["288"][0] == pytest.approx(3 * sizes["96"][0], rel=0.02)
    assert sizes["288"][1] == pytest.approx(3 * sizes["96"][1], rel=0.02)
    assert main(["render", "specs/lenet5.net", "-o", str(tmp_path / "x.png"), "--dpi", "5000"]) == 2
    assert "--dpi" in capsys.readouterr().err and not (tmp_path / "x.png").exists()


def test_cli_render_rejects_unknown_format(tmp_path, capsys):
    assert main(["render", "specs/lenet5.net", "-o", str(tmp_path / "x.jpg")]) == 2
    assert not (tmp_path / "x.jpg").exists()


def test_compile_puts_the_diagrams_in_the_build_folder(tmp_path):
    out = tmp_path / "build"
    assert main(["compile", "specs/googlenet.net", "-o", str(out)]) == 0
    full = ET.parse(out / "diagram.svg").getroot()
    folded = ET.parse(out / "diagram_blocks.svg").getroot()
    assert len(drawn_nodes(folded)) < len(drawn_nodes(full))


assert shutil.which("dot"), "Graphviz's dot is needed for the render tests (.ci/run installs it)"


def test_a_run_of_one_block_with_other_arguments_folds_where_shapes_and_params_agree():
    """ConvNeXt's blocks differ only in their drop-path rate: one 'cnblock(…) x3' box; a
    block whose parameters differ from the run's (a wider one) starts a box of its own."""
    net = netspec.loads("""block unit(rate, width=4) {
    in x
    y = x -> conv(width, 3, pad=same) -> conv(x.channels, 1)
    out (y -> drop_path(rate) if rate > 0 else y) + x
}
network n() {
    input image: 4@8x8
    image -> unit(0.0) -> unit(0.1) -> unit(0.2) -> unit(0.2, width=8) -> global_avgpool -> out
}
""", "units.net")
    src = to_dot(net.graph, depth=0).source
    per_unit = 4 * 4 * 9 + 4 + 4 * 4 + 4
    assert f'unit(…) x3\n4@8x8 · {3 * per_unit:,} params' in src
    assert "unit4: unit(0.2, 8)" in src


ZOO = ("vgg19", "resnext50", "shufflenet_v2", "squeezenet1_1", "efficientnet_b0", "regnet_y_400mf",
       "mobilenet_v3_large", "convnext_tiny", "vit_b_16", "unet", "deeplabv3_resnet50", "yolov8n",
       "ssdlite320")


@pytest.mark.parametrize("name", ZOO)
def test_the_zoo_at_depth_one_draws_a_page(tmp_path, name):
    """At --depth 1 each zoo network fits a page: at most 60 boxes (a network of many like
    units at the open level, ConvNeXt's 18 blocks, shows each block's first instance open and
    folds the rest; SSDlite's twelve head branches stay apart), no taller than three screens."""
    _, root = svg_tree(tmp_path, f"specs/{name}.net", depth=1)
    assert len(drawn_nodes(root)) <= 60
    assert float(root.get("height").rstrip("pt")) < 2400 and float(root.get("width").rstrip("pt")) < 1200


def test_folding_the_open_level_keeps_each_blocks_first_instance_open(tmp_path):
    _, root = svg_tree(tmp_path, "specs/convnext_tiny.net", depth=1)
    clusters = [title(g) for g in groups(root, "cluster")]
    assert clusters == ["cluster_cnblock1", "cluster_downsample1"]
    labels = [" ".join(texts(g)) for g in drawn_nodes(root)]
    assert any(label.startswith("cnblock(…) x2") for label in labels)     # the rest of stage 1
    assert any(label.startswith("cnblock(…) x9") for label in labels)     # stage 3


def test_each_op_family_has_a_colour_of_its_own():
    """The legend names a family by its colour: two families never share one."""
    from netspec.ops import OpKind
    from netspec.report.render import BLOCK_COLOUR, FAMILY_COLOURS
    assert set(FAMILY_COLOURS) == set(OpKind) - {OpKind.FUSED}     # fused ops are drawn as their parts
    colours = list(FAMILY_COLOURS.values()) + [BLOCK_COLOUR]
    assert len(set(colours)) == len(colours)


def _cielab(hex_colour: str) -> tuple[float, float, float]:
    """sRGB (D65) to CIELAB, from the standard's formulas."""
    srgb = [int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in srgb]
    xyz = [sum(m * c for m, c in zip(row, linear)) for row in
           ((0.4124, 0.3576, 0.1805), (0.2126, 0.7152, 0.0722), (0.0193, 0.1192, 0.9505))]
    f = [t ** (1 / 3) if t > (6 / 29) ** 3 else t / (3 * (6 / 29) ** 2) + 4 / 29
         for t in (xyz[0] / 0.95047, xyz[1] / 1.0, xyz[2] / 1.08883)]
    return 116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])


def test_any_two_family_colours_are_told_apart_at_a_glance():
    """Distinct is not enough: reshape's grey was input's to the eye (CIE76 difference 2.5, about
    one just-noticeable difference). Every pair, the folded blocks' colour included, differs by 10."""
    import itertools
    import math
    from netspec.ops import OpKind
    from netspec.report.render import BLOCK_COLOUR, FAMILY_COLOURS
    colours = {kind.name: c for kind, c in FAMILY_COLOURS.items()} | {"block": BLOCK_COLOUR}
    close = [(a, b, round(math.dist(_cielab(colours[a]), _cielab(colours[b])), 1))
             for a, b in itertools.combinations(colours, 2)
             if math.dist(_cielab(colours[a]), _cielab(colours[b])) < 10]
    assert close == []
    assert FAMILY_COLOURS[OpKind.REGULARIZE] != FAMILY_COLOURS[OpKind.RESHAPE]   # dropout, reshape
