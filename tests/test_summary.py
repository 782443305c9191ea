"""Summary figures against hand computations: receptive fields, memory, folding, budgets."""

import json

import pytest

import netspec
from netspec.report.summary import parse_memory

F32 = 4


def test_receptive_field_and_jump_by_hand():
    # RF_out = RF_in + (k - 1) * jump_in ; jump_out = jump_in * stride
    net = netspec.loads("""
    network rf() {
        input x: 1@64x64
        x -> a: conv(4, 3) -> b: conv(4, 3, stride=2) -> c: conv(4, 3) -> d: maxpool(2)
          -> e: conv(4, 3, dilation=2) -> flatten -> f: dense(3) -> out
    }""")
    rows = {r.name: r for r in net.summary().rows}
    assert (rows["a"].rf, rows["a"].jump) == ((3, 3), (1, 1))
    assert (rows["b"].rf, rows["b"].jump) == ((5, 5), (2, 2))
    assert (rows["c"].rf, rows["c"].jump) == ((9, 9), (2, 2))
    assert (rows["d"].rf, rows["d"].jump) == ((11, 11), (4, 4))
    # dilation 2: effective kernel 5 -> 11 + 4 * 4
    assert (rows["e"].rf, rows["e"].jump) == ((27, 27), (4, 4))
    assert rows["f"].rf == (-1, -1)  # dense sees the whole input


def test_sequences_of_tokens_shapes_macs_and_receptive_fields():
    """A patch embedding's tokens each see their patch until attention mixes them; a dense
    layer on a sequence is applied to each token (its RF is the token's, its MACs per
    token); attention's MACs are its projections and its two products."""
    net = netspec.loads("""
    network t() {
        input image: 3@8x12
        x = image -> p: conv(16, 4, stride=4) -> to_tokens -> class_token -> position_embedding
        x -> d: dense(8) -> a: attention(2) -> t: token(0) -> out
    }""")
    summary = net.summary(batch=2)
    rows = {r.name: r for r in summary.rows}
    assert rows["x/to_tokens1"].shape == (6, 16) and rows["x/class_token1"].shape == (7, 16)
    assert (rows["x/position_embedding1"].rf, rows["x/position_embedding1"].jump) == ((4, 4), (4, 4))
    assert rows["d"].rf == (4, 4) and rows["d"].macs_per_sample == 7 * 16 * 8
    assert rows["a"].rf == (-1, -1) and rows["a"].macs_per_sample == 4 * 7 * 8 * 8 + 2 * 7 * 7 * 8
    assert rows["a"].macs == 2 * rows["a"].macs_per_sample    # the table's: the whole batch
    assert rows["a"].trainable == 3 * 8 * 8 + 3 * 8 + 8 * 8 + 8
    assert rows["t"].shape == (8,)
    layers = {layer["name"]: layer for layer in summary.to_json()["layers"]}
    assert layers["x/class_token1"]["shape_text"] == "7x16"
    assert layers["x/class_token1"]["memory_bytes"] == 2 * 7 * 16 * F32
    table = summary.table()
    assert "7x16" in table and "attention 2 heads" in table and "token 0" in table


def test_receptive_field_through_dilated_ceil_and_adaptive_pools_and_padding():
    net = netspec.loads("""
    network rf() {
        input x: 1@28x28
        x -> a: maxpool(2, stride=1, dilation=3) -> b: pad(2, reflect)          # 25, then 29
          -> c: avgpool(3, stride=2, ceil=true) -> d: adaptive_avgpool(7)     # 14, then 7
          -> e: adaptive_avgpool((2, 3)) -> f: adaptive_avgpool(1) -> out
    }""")
    rows = {r.name: r for r in net.summary().rows}
    assert [rows[n].shape[1:] for n in "abcdef"] == [(25, 25), (29, 29), (14, 14), (7, 7),
                                                       (2, 3), (1, 1)]
    assert (rows["a"].rf, rows["a"].jump) == ((4, 4), (1, 1))    # taps 0 and 3
    assert (rows["b"].rf, rows["b"].jump) == ((4, 4), (1, 1))    # padding moves, sees one pixel
    assert (rows["c"].rf, rows["c"].jump) == ((6, 6), (2, 2))
    assert (rows["d"].rf, rows["d"].jump) == ((8, 8), (4, 4))    # 14 / 7: windows of 2, 2 apart
    # 7 rows into 2: windows [0, 4) and [3, 7), 4 rows 3 apart; 7 columns into 3: [0, 3), [2, 5),
    # [4, 7), 3 columns 2 apart
    assert (rows["e"].rf, rows["e"].jump) == ((8 + 3 * 4, 8 + 2 * 4), (12, 8))
    assert rows["f"].rf == (-1, -1)   # one window: the whole input
    assert [rows[n].detail for n in "abcdef"] == [
        "2x2, dilation 3", "2, reflect", "3x3/2, ceil", "7x7", "2x3", "1x1"]


def test_receptive_field_takes_the_deeper_branch_at_a_merge():
    net = netspec.loads("""
    network m() {
        input x: 2@16x16
        a = x -> conv(2, 5, pad=same)
        b = x -> conv(2, 1)
        (a + b) -> out
    }""")
    add = [r for r in net.summary().rows if r.op == "add"][0]
    assert add.rf == (5, 5)


def test_inference_peak_of_a_chain_is_the_largest_adjacent_pair():
    net = netspec.loads("""
    network chain() {
        input x: 1@10x10
        x -> conv(8, 3, pad=same) -> relu -> conv(2, 3, pad=same) -> out
    }""")
    s = net.summary(batch=3)
    sizes = [100, 800, 800, 200]
    pairs = max(a + b for a, b in zip(sizes, sizes[1:]))
    assert s.peak_activation_bytes_per_sample == pairs * F32
    assert s.activation_bytes_per_sample == sum(sizes) * F32
    weights = (8 * 9 + 8) + (2 * 8 * 9 + 2)
    assert s.weight_bytes == weights * F32
    assert s.inference_bytes == 3 * pairs * F32 + weights * F32


def test_inference_peak_keeps_the_skip_connection_alive():
    net = netspec.loads("""
    network res() {
        input x: 4@8x8
        y = x -> conv(4, 3, pad=same) -> relu -> conv(4, 3, pad=same)
        (x + y) -> out
    }""")
    # while the second conv runs: x (skip), relu output and conv output are live
    assert net.summary().peak_activation_bytes_per_sample == 3 * 256 * F32


def test_a_split_row_shows_its_parts_which_live_until_the_last_is_read():
    net = netspec.loads("""
    network n() {
        input x: 6@4x4
        a, b = split(x, (2, 4))
        concat(b, a -> relu) -> out
    }""")
    s = net.summary()
    row = next(r for r in s.rows if r.op == "split")
    assert row.shape_text == "2@4x4, 4@4x4" and row.activation_bytes == 6 * 16 * F32
    assert "a_b/split1" not in s.table() and "split1  split (2, 4)  2@4x4, 4@4x4" in s.table()
    layer = next(r for r in s.to_json()["layers"] if r["op"] == "split")
    assert layer["parts"] == [[2, 4, 4], [4, 4, 4]] and layer["shape_text"] == "2@4x4, 4@4x4"
    assert "parts" not in next(r for r in s.to_json()["layers"] if r["op"] == "concat")
    # x, then the split's 6@4x4 while x is still read, then relu and concat with the split:
    # its part b is read last, by the concat
    assert s.peak_activation_bytes_per_sample == (6 + 2 + 6) * 16 * F32


def test_training_memory_counts_gradients_and_optimizer_state():
    text = """
    network t() {
        input x: 10
        x -> dense(5) -> batchnorm -> out
        train { optimizer = %s }
    }"""
    trainable, non_trainable = 10 * 5 + 5 + 2 * 5, 2 * 5
    acts = (10 + 5 + 5) * F32
    for opt, slots in (("adam", 2), ("sgd", 0), ("sgd(lr=0.1, momentum=0.9)", 1), ("rmsprop", 1)):
        s = netspec.loads(text % opt).summary(batch=7)
        assert (s.trainable, s.non_trainable) == (trainable, non_trainable)
        expected = 7 * acts + (trainable + non_trainable) * F32 + trainable * F32 * (1 + slots)
        assert s.training_bytes == expected, opt


def test_largest_batch_fits_and_one_more_does_not():
    s = netspec.load("specs/resnet34.net").summary(batch=1)
    budget = parse_memory("2GB")
    inf, tr = s.max_batch(budget)
    assert inf > tr > 0
    assert s.inference_bytes_at(inf) <= budget < s.inference_bytes_at(inf + 1)
    assert s.training_bytes_at(tr) <= budget < s.training_bytes_at(tr + 1)


def test_a_budget_smaller_than_the_weights_fits_no_batch():
    s = netspec.load("specs/resnet34.net").summary()
    assert s.max_batch(parse_memory("10MB")) == (0, 0)


@pytest.mark.parametrize("text,expected", [
    ("16GB", 16 * 10**9), ("16GiB", 16 * 2**30), ("512MB", 512 * 10**6), ("1.5kB", 1500),
    ("1e9", 10**9), ("2 TB", 2 * 10**12), ("100", 100),
])
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("1EB", 10**18), ("1000PB", 10**18), ("0.1GB", 10**8), ("1e-400", 0), ("1.", 1), ("2KiB", 2048),
])
def test_parse_memory_reads_the_number_exactly(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["1e400", "1001PB", "2EB", "1e99999999999"])
def test_parse_memory_refuses_more_than_an_exabyte(text):
    with pytest.raises(ValueError, match=r"is too large \(the limit is 1 EB, 10\^18 bytes\)"):
        parse_memory(text)


@pytest.mark.parametrize("text", ["lots", "", "GB", "-1GB", "1XB", "nan", "inf", "1" * 200])
def test_parse_memory_rejects_nonsense(text):
    with pytest.raises(ValueError):
        parse_memory(text)


@pytest.mark.parametrize("spec", ["specs/resnet34.net", "specs/resnet152.net", "specs/googlenet.net"])
@pytest.mark.parametrize("depth", [0, 1, 2])
def test_folding_keeps_the_totals(spec, depth):
    s = netspec.load(spec).summary()
    rows = s.collapsed(depth)
    leaves = [r for r in rows if not r.is_block or r.folded]
    assert sum(r.trainable for r in leaves) == s.trainable
    assert sum(r.non_trainable for r in leaves) == s.non_trainable
    assert sum(r.macs for r in leaves) == s.macs
    assert len({r.name for r in rows}) == len(rows)  # no row twice


def test_depth_zero_shows_each_residual_unit_once_with_its_output_shape():
    s = netspec.load("specs/resnet34.net").summary()
    rows = s.collapsed(0)
    units = [r for r in rows if r.op == "residual"]
    assert [r.name for r in units] == [f"residual{i}" for i in range(1, 17)]
    assert units[3].shape == (128, 28, 28)          # the first stride-2 unit
    assert units[3].trainable == 230_144           # 2 3x3 convs + 1x1 projection + 3 BN
    assert len(rows) == 5 + 16 + 3


def test_block_header_rows_sum_their_layers():
    s = netspec.load("specs/resnet34.net").summary()
    header = next(r for r in s.rows if r.name == "residual4" and r.is_block)
    inside = [r for r in s.rows if r.name.startswith("residual4/") and not r.is_block]
    assert header.trainable == sum(r.trainable for r in inside)
    assert header.layers == len(inside) == 9


def test_json_matches_the_table_totals():
    s = netspec.load("specs/resnet34.net").summary(batch=16)
    data = json.loads(json.dumps(s.to_json(memory_budget=parse_memory("16GB"))))
    t = data["totals"]
    assert (t["params"], t["trainable"], t["non_trainable"]) == (21_306_826, 21_289_802, 17_024)
    assert t["macs"] == 16 * t["macs_per_sample"]
    assert t["training_bytes"] == s.training_bytes
    assert (t["max_batch_inference"], t["max_batch_training"]) == s.max_batch(16 * 10**9)
    assert len(data["layers"]) == len(s.rows)


def test_frozen_layers_count_as_non_trainable():
    net = netspec.loads("""
    network f() {
        input x: 8
        x -> dense(4, trainable=false) -> dense(2) -> out
    }""")
    s = net.summary()
    assert (s.trainable, s.non_trainable) == (4 * 2 + 2, 8 * 4 + 4)


def test_depth_one_opens_the_stages_of_resnet152_and_folds_their_units():
    s = netspec.load("specs/resnet152.net").summary()
    rows = s.collapsed(1)
    folded = [r for r in rows if r.folded]
    assert [r.op for r in folded].count("bottleneck") == 3 + 8 + 36 + 3
    assert all(r.name.count("/") == 1 for r in folded)       # stageK/bottleneckN
    headers = [r.name for r in rows if r.is_block and not r.folded]
    assert headers == ["stem1", "stage1", "stage2", "stage3", "stage4"]


def test_transposed_conv_shrinks_the_jump():
    net = netspec.loads("""
    network up() {
        input x: 1@32x32
        x -> a: conv(4, 3, stride=2) -> b: conv(4, 3, stride=2) -> c: conv_transpose(4, 3, stride=2)
          -> out
    }""")
    rows = {r.name: r for r in net.summary().rows}
    assert rows["b"].jump == (4, 4)
    assert rows["c"].jump == (2, 2)
