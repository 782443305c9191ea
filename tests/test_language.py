"""Language semantics: what a spec means, checked on the graph it elaborates to."""

import re

import numpy as np
import pytest

import netspec
from netspec import SpecError
from netspec.cli import main
from netspec.errors import OverrideError
from netspec.lang.parser import parse
from netspec.lang.printer import to_text


def names(net):
    return [n.name for n in net.graph.nodes()]


def test_node_names_are_paths_of_blocks_values_labels_and_counters():
    net = netspec.loads("""
    block unit(f) {
        in x
        main = x -> conv(f, 3, pad=same) -> relu
        out main + x
    }
    network n() {
        input image: 4@8x8
        image -> c1: conv(4, 1) -> unit(4) -> u: unit(4) -> conv(4, 1, act=relu) -> out
    }""")
    assert names(net) == ["image", "c1", "unit1/main/conv1", "unit1/main/relu1", "unit1/add1",
                          "u/main/conv1", "u/main/relu1", "u/add1", "conv1", "conv1_relu"]


def test_repeat_unrolls_fresh_instances_and_zero_is_identity():
    net = netspec.loads("""
    network n(k=3) {
        input x: 2@4x4
        x -> (conv(2, 1) -> relu) * k -> r: relu * 2 -> dropout(0.1) * 0 -> out
    }""")
    assert [n.op for n in net.graph.nodes()] == ["input"] + ["conv", "relu"] * 3 + ["relu"] * 2
    assert "r_1" in names(net) and "r_2" in names(net)


def test_only_the_chosen_branch_of_a_condition_is_built():
    text = """
    block maybe_project(f) {
        in x
        out x -> conv(f, 1) if x.channels != f else x
    }
    network n(f=%d) {
        input x: 8@4x4
        x -> maybe_project(f) -> flatten -> out
    }"""
    same = netspec.loads(text % 8)
    other = netspec.loads(text % 16)
    assert [n.op for n in same.graph.nodes()] == ["input", "flatten"]
    assert [n.op for n in other.graph.nodes()] == ["input", "conv", "flatten"]


def test_sum_of_several_tensors_is_one_add_and_concat_joins_channels():
    net = netspec.loads("""
    network n() {
        input x: 3@8x8
        a = x -> conv(4, 1)
        b = x -> conv(4, 3, pad=same)
        c = x -> conv(4, 5, pad=same)
        concat(a + b + c, x) -> out
    }""")
    adds = [n for n in net.graph.nodes() if n.op == "add"]
    assert len(adds) == 1 and len(adds[0].inputs) == 3
    assert net.graph.node(net.graph.outputs[0]).shape == (7, 8, 8)


def test_tensor_arguments_join_the_chain_input():
    net = netspec.loads("""
    network n() {
        input x: 2@4x4
        y = x -> relu
        x -> add(y) -> out
    }""")
    add = next(n for n in net.graph.nodes() if n.op == "add")
    assert add.inputs == ["x", "y/relu1"]


def test_shape_queries_arithmetic_and_builtins():
    net = netspec.loads("""
    network n(alpha=0.5) {
        input x: 6@10x12
        x -> conv(int(x.channels * alpha) * 2, (x.height // 5, x.width % 5), pad=valid)
          -> conv(max(3, min(1, 2)), 1) -> out
    }""")
    convs = [n for n in net.graph.nodes() if n.op == "conv"]
    assert convs[0].attrs.filters == 6 and convs[0].attrs.kernel == (2, 2)
    assert convs[1].attrs.filters == 3


def test_reassigning_a_value_that_reads_itself():
    net = netspec.loads("""
    network n() {
        input x: 4
        y = x -> dense(3)
        y = y -> relu
        y -> out
    }""")
    assert names(net) == ["x", "y/dense1", "y/relu1"]


def test_act_none_keyword_means_no_activation():
    net = netspec.loads("""
    network n() {
        input x: 4
        x -> dense(3, act=none) -> out
    }""")
    assert [n.op for n in net.graph.nodes()] == ["input", "dense"]


def test_a_layer_used_only_for_its_shape_is_refused():
    # a shape query is answered while the graph is built: it keeps no layer in the network
    with pytest.raises(SpecError, match="never reaches an output") as e:
        netspec.loads("""
        network n() {
            input x: 4@4x4
            y = x -> conv(5, 1)
            x -> conv(y.channels, 1) -> out
        }""", file="dead.net")
    assert (e.value.pos.line, e.value.pos.col) == (4, 22)
    assert "compute the size from its input" in e.value.hint


def test_an_input_used_only_for_its_shape_is_refused():
    with pytest.raises(SpecError, match="input 'meta' never reaches an output") as e:
        netspec.loads("""
        network n() {
            input x: 4@4x4
            input meta: 8
            x -> conv(meta.channels, 1) -> out
        }""")
    assert (e.value.pos.line, e.value.pos.col) == (4, 19)


def test_a_shape_query_on_a_value_that_reaches_an_output_adds_nothing():
    net = netspec.loads("""
    network n() {
        input x: 4@4x4
        y = x -> conv(5, 1)
        z = y -> conv(y.channels * 2, 1) if y.shape == (5, 4, 4) else y
        z -> out
    }""")
    assert names(net) == ["x", "y/conv1", "z/conv1"]
    assert net.graph.node("z/conv1").attrs.filters == 10


def test_a_label_on_a_group_names_the_scope_of_its_nodes():
    net = netspec.loads("""
    block unit() {
        in x
        out x -> relu
    }
    network n() {
        input x: 4@4x4
        y = x -> g: (conv(4, 1) -> relu) -> h: (c: conv(4, 1) -> unit) * 2
        y -> g: (relu -> (relu)) -> c: relu -> out
    }""")
    assert names(net) == ["x", "y/g/conv1", "y/g/relu1",
                          "y/h_1/c", "y/h_1/unit1/relu1", "y/h_2/c", "y/h_2/unit1/relu1",
                          "g/relu1", "g/relu2", "c"]


@pytest.mark.parametrize("chain", ["g: (relu) -> g: (relu)", "g: relu -> g: (relu)",
                                   "g: (relu) -> g: relu", "(g: (relu)) * 2"])
def test_a_group_label_is_unique_in_its_scope(chain):
    with pytest.raises(SpecError, match="label 'g' is used twice"):
        netspec.loads(f"""
        network n() {{
            input x: 4@4x4
            x -> {chain} -> out
        }}""")


def test_a_block_cannot_take_an_op_name():
    with pytest.raises(SpecError, match="name of a built-in op"):
        netspec.loads("""
        block conv(f) { in x  out x }
        network n() { input x: 4  x -> out }""")


def test_brackets_in_comments_and_strings_do_not_count_as_nesting():
    text = "# " + "(" * 300 + "\nnetwork n() {\n    input x: 4\n    x -> out\n}\n"
    assert netspec.loads(text).graph.outputs == ["x"]


def test_imports_are_read_once_and_blocks_shared(tmp_path):
    (tmp_path / "netspec.toml").write_text("")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "base.net").write_text("block act() { in x  out x -> relu }\n")
    (tmp_path / "lib" / "a.net").write_text('import "base.net"\nblock a() { in x  out x -> act }\n')
    (tmp_path / "lib" / "b.net").write_text('import "base.net"\nblock b() { in x  out x -> act }\n')
    main_spec = tmp_path / "net.net"
    main_spec.write_text('import "lib/a.net"\nimport "lib/b.net"\n'
                         "network n() { input x: 4  x -> a -> b -> out }\n")
    net = netspec.load(main_spec)
    assert [n.op for n in net.graph.nodes()] == ["input", "relu", "relu"]
    assert sum(f.endswith("base.net") for f in net.spec.files) == 1


def test_trainable_false_freezes_every_layer_of_a_block():
    net = netspec.loads("""
    block head(k) { in x  out x -> dense(k) -> batchnorm }
    network n() {
        input x: 8
        x -> dense(4) -> head(2, trainable=false) -> out
    }""")
    s = net.summary()
    assert s.trainable == 8 * 4 + 4
    assert s.non_trainable == (4 * 2 + 2) + 4 * 2


def test_network_parameters_and_input_override_from_python():
    net = netspec.load("specs/resnet34.net", classes=7, input_shape="3@64x64")
    assert net.graph.node(net.graph.outputs[0]).shape == (7,)
    assert net.graph.node("image").shape == (3, 64, 64)


@pytest.mark.parametrize("argv", [
    ["check", "specs/resnet34.net", "--input", "3@16"],          # wrong rank
    ["check", "specs/resnet34.net", "--input", "label=3@16x16"],  # no such input
    ["check", "specs/resnet34.net", "--network", "resnet35"],     # no such network
    ["check", "specs/resnet34.net", "--set", "clases=4"],         # no such parameter
])
def test_overrides_that_do_not_fit_the_spec_are_usage_errors(argv, capsys):
    assert main(argv) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_set_accepts_a_shape_value(tmp_path):
    spec = tmp_path / "s.net"
    spec.write_text("network n(shape=1@2x2) { input x: shape  x -> flatten -> out }\n")
    assert main(["check", str(spec), "--set", "shape=3@8x8"]) == 0
    assert netspec.load(spec).graph.node("x").shape == (1, 2, 2)


def test_override_error_is_a_spec_error_for_python_callers():
    with pytest.raises(OverrideError):
        netspec.load("specs/resnet34.net", clases=3)
    assert issubclass(OverrideError, SpecError)


@pytest.mark.parametrize("setting,message", [
    ("schedule = piecewise(epochs=[1])", "needs 'lr'"),
    ("schedule = exponential(decay_steps=0)", "decay_steps must be a number > 0, got 0"),
    ("schedule = polynomial(decay_steps=-5)", "decay_steps must be a number > 0, got -5"),
    ("optimizer = adam(lr=-1)", "lr must be a number > 0"),
])
def test_train_section_validation(setting, message):
    with pytest.raises(SpecError, match=message):
        netspec.loads("network n() { input x: 4  x -> out  train { %s } }" % setting)


def test_stride_zero_reports_what_was_written():
    with pytest.raises(SpecError, match=r"got 0$"):
        netspec.loads("network n() { input x: 1@8x8  x -> conv(2, 3, stride=0) -> out }")


@pytest.mark.parametrize("schedule", ["power", "exponential(rate=0.5)", "polynomial(end_lr=0)"])
def test_decay_steps_left_out_means_the_whole_run(schedule):
    # as documented: the trainer then decays over all of the run's steps (schedule_lr)
    net = netspec.loads("network n() { input x: 4  x -> out  train { schedule = %s } }" % schedule)
    assert net.graph.train["schedule"]["decay_steps"] is None
    given = netspec.loads("network n() { input x: 4  x -> out  train { schedule = "
                          "exponential(decay_steps=500) } }")
    assert given.graph.train["schedule"] == {"name": "exponential", "decay_steps": 500, "rate": 0.1}


@pytest.mark.parametrize("shape", ["2@6x6", (2, 6, 6), [2, 6, 6], {"image": "2@6x6"},
                                   {"image": (2, 6, 6)}])
def test_load_input_shape_replaces_the_declared_shape(shape):
    net = netspec.loads("network n() {\n input image: 3@8x8\n image -> relu -> out\n}",
                        input_shape=shape)
    assert net.graph.node("image").shape == (2, 6, 6)


@pytest.mark.parametrize("shape, words", [
    ("0@3x3", "cannot read input_shape '0@3x3'"), ((2, 0, 6), "must be a shape"),
    (2.5, "must be a shape"), ({"image": "x"}, "input_shape['image']"),
    ({"label": (2, 6, 6)}, "no input named 'label'")])
def test_load_input_shape_that_does_not_fit_is_an_override_error(shape, words):
    with pytest.raises(OverrideError, match=re.escape(words)):
        netspec.loads("network n() {\n input image: 3@8x8\n image -> relu -> out\n}",
                      input_shape=shape)


# ---------------------------------------------------------------- sequences of tokens

def test_a_sequence_is_written_tokens_x_features():
    net = netspec.loads("""
    network n(tokens=5) {
        input t: 4x6
        input u: (tokens, 6)
        t -> dense(8) -> out
        u -> layer_norm -> out
    }""")
    assert net.graph.node("t").shape == (4, 6) and net.graph.node("u").shape == (5, 6)
    assert net.graph.node("dense1").shape == (4, 8)
    module = parse("network n() {\n input t: 4x6\n t -> out\n}")
    assert "input t: 4x6" in to_text(module) and parse(to_text(module)) == module


def test_shape_queries_on_a_sequence():
    net = netspec.loads("""
    network n() {
        input image: 6@4x2
        t = image -> to_tokens
        t -> dense(t.tokens * 10 + t.features) -> dense(t.rank) -> out
        t -> reshape(t.shape) -> dense(t.channels) -> out
    }""")
    dense = [n for n in net.graph.nodes() if n.op == "dense"]
    assert [d.attrs.units for d in dense] == [86, 2, 6]    # 8 tokens of 6 features, rank 2


@pytest.mark.parametrize("text, words", [
    ("input x: 3@8x8\n x -> dense(x.tokens) -> out", "'.tokens' needs a sequence TxF, got 3@8x8"),
    ("input x: 4x6\n x -> dense(x.height) -> out", "'.height' needs a feature map C@HxW, got 4x6"),
    ("input x: 3@224\n x -> out", "'3@224' has no width: a feature map is C@HxW"),
    ("input x: 0x6\n x -> out", "every dimension must be at least 1"),
    ("input x: (4, 6, 2, 2)\n x -> out", "an input shape is C@HxW, TxF or a length"),
])
def test_sequence_shapes_that_are_refused(text, words):
    with pytest.raises(SpecError, match=re.escape(words)):
        netspec.loads("network n() {\n %s\n}" % text)


def test_load_input_shape_takes_a_sequence():
    net = netspec.loads("network n() {\n input t: 4x6\n t -> layer_norm -> out\n}",
                        input_shape="9x6")
    assert net.graph.node("t").shape == (9, 6)


# ------------------------------------------------------------------ split: a node of several outputs

def test_split_gives_its_parts_as_a_tuple_that_unpacking_names():
    # ShuffleNet v2's unit of stride 1: half the channels pass, the other half is transformed
    net = netspec.loads("""
    network n() {
        input x: 8@4x4
        x1, x2 = split(x, 2)
        y = x2 -> conv(4, 1, act=relu)
        concat(x1, y) -> out
    }""")
    g = net.graph
    split = g.node("x1_x2/split1")            # named under the names it binds, joined
    assert split.shape == (8, 4, 4) and split.parts == ((4, 4, 4), (4, 4, 4))
    assert g.node("y/conv1").inputs == ["x1_x2/split1:1"]
    assert g.node("concat1").inputs == ["x1_x2/split1:0", "y/conv1_relu"]
    assert g.shape_of("x1_x2/split1:1") == (4, 4, 4)
    assert g.consumers("x1_x2/split1:0") == ["concat1"]
    assert sorted(g.consumers("x1_x2/split1")) == ["concat1", "y/conv1"]


def test_split_widths_and_shape_queries_on_the_parts():
    net = netspec.loads("""
    network n() {
        input x: 8
        a, b = x -> dense(12) -> split((4, 8))
        c = b -> dense(a.channels * b.rank)
        concat(a, c) -> out
    }""")
    assert net.graph.node("a_b/split1").parts == ((4,), (8,))
    assert net.graph.node("c/dense1").shape == (4,)


def test_a_split_flows_as_a_tuple_into_a_merge_and_out():
    net = netspec.loads("""
    network n() {
        input x: 6@2x2
        x -> split(3) -> concat -> out
    }""")
    x = np.arange(2 * 6 * 2 * 2, dtype=np.float32).reshape(2, 6, 2, 2)
    np.testing.assert_array_equal(net.compile(warmup=False).predict(x), x)   # the identity
    both = netspec.loads("""
    network n() {
        input x: 6
        out split(x, (2, 4))
    }""")
    assert both.graph.outputs == ["split1:0", "split1:1"]
    v = np.arange(12, dtype=np.float32).reshape(2, 6)
    parts = both.compile(warmup=False).predict(v)
    np.testing.assert_array_equal(parts["split1:0"], v[:, :2])
    np.testing.assert_array_equal(parts["split1:1"], v[:, 2:])


def test_unpacking_takes_a_blocks_outputs_and_plain_tuples():
    net = netspec.loads("""
    block halves(f) {
        in x
        out split(x -> conv(f, 1), 2)
    }
    network n() {
        input x: 4@4x4
        k, s = (3, 2)
        lo, hi = x -> halves(8)
        concat(hi, lo) -> conv(4, k, stride=s) -> out
    }""")
    assert net.graph.blocks["lo_hi/halves1"].output == "lo_hi/halves1/split1:0"
    assert net.graph.node("concat1").inputs == ["lo_hi/halves1/split1:1", "lo_hi/halves1/split1:0"]
    assert net.graph.node("conv1").attrs.kernel == (3, 3) and net.graph.node("conv1").shape == (4, 1, 1)


def test_an_underscore_discards_a_part_and_names_nothing():
    net = netspec.loads("""
    network n() {
        input x: 5@2x2
        first, _, _ = split(x, (2, 1, 2))
        first -> out
    }""")
    assert net.graph.outputs == ["first/split1:0"]
    with pytest.raises(SpecError, match="undefined name '_'"):
        netspec.loads("""
        network n() {
            input x: 4
            a, _ = split(x, 2)
            out a, _
        }""")


@pytest.mark.parametrize("body, words", [
    ("a, b = split(x, 2)\n a -> out", "unused value 'b'"),
    ("x, b = split(x, 2)\n b -> out", "'x' is already an input"),
    ("a, relu = split(x, 2)\n a -> out", "'relu' is an op or block name"),
    ("a, b = split(x, 2)\n a, c = split(b, 2)\n c -> out", "'a' is reassigned before its value is used"),
])
def test_unpacking_keeps_the_rules_of_assignment(body, words):
    with pytest.raises(SpecError, match=re.escape(words)):
        netspec.loads(f"network n() {{\n input x: 4\n {body}\n}}")


def test_graph_json_lists_a_splits_parts():
    net = netspec.loads("""
    network n() {
        input x: 6@2x2
        a, b = split(x, (2, 4))
        concat(b, a) -> out
    }""")
    split = next(n for n in net.graph.to_json()["nodes"] if n["op"] == "split")
    assert split["attrs"] == {"parts": [2, 4]} and split["shape_text"] == "6@2x2"
    assert split["parts"] == [[2, 2, 2], [4, 2, 2]] and split["parts_text"] == "2@2x2, 4@2x2"
    concat = next(n for n in net.graph.to_json()["nodes"] if n["op"] == "concat")
    assert concat["inputs"] == ["a_b/split1:1", "a_b/split1:0"]
