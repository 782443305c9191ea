"""Every error a user can make in a spec: exit code 1, exact position, clear message.

Each case writes a small spec to tmp_path, runs `netspec check` through `cli.main`
and checks the report: `path:line:col: error: message`, the quoted source line with
a caret under the exact column, a hint where one helps, notes (the block call or
import that led there), and never a Python traceback.
"""

from __future__ import annotations

import pytest

from netspec.cli import main

NET = "network n() {\n    input x: 3@32x32\n"       # lines 1-2 of most cases


def write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")


def check_error(tmp_path, capsys, text, line, col, words=(), *, hint=None, files=None,
                name="net.net", at=None, excerpt=True, notes=()):
    """Run `netspec check` on `text` and assert the report; returns stderr.

    words: must all appear in the error line; hint: words that must appear in the
    `hint:` line; at: the file the error is in (default: the main spec); notes:
    (file, line, col, word) for each `note:` line expected.
    """
    for rel, content in (files or {}).items():
        write(tmp_path / rel, content)
    path = tmp_path / name
    write(path, text)
    rc = main(["check", str(path)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    assert rc == 1, (rc, out, err)
    at = path if at is None else at
    lines = err.splitlines()
    header = lines[0]
    assert header.startswith(f"{at}:{line}:{col}: error:"), err
    for w in words:
        assert w in header, (w, err)
    if excerpt:
        # lines end at "\n" only (as for the parser); control characters are shown as spaces
        source = at.read_bytes().decode("utf-8", errors="replace").split("\n")[line - 1]
        source = "".join(" " if ord(c) < 32 or c == "\x7f" else c
                         for c in source.removesuffix("\r").expandtabs(1))
        quoted = f" {line} | {source}"
        assert quoted in lines, (quoted, err)
        caret = lines[lines.index(quoted) + 1]
        bar = caret.index("|")
        assert caret[:bar].strip() == "", err
        assert caret.index("^") == bar + 2 + col - 1, err    # the caret is under column `col`
    if hint is not None:
        hints = [l for l in lines if l.startswith("hint: ")]
        assert hints, err
        for w in ([hint] if isinstance(hint, str) else hint):
            assert w in hints[0], (w, err)
    for nfile, nline, ncol, word in notes:
        prefix = f"{nfile}:{nline}:{ncol}: note:"
        found = [l for l in lines if l.startswith(prefix)]
        assert found and word in found[0], (prefix, word, err)
    return err


# ------------------------------------------------------------------ ops and arguments

def test_unknown_op_did_you_mean(tmp_path, capsys):
    check_error(tmp_path, capsys, NET + "    x -> conv2(64, 3) -> out\n}\n", 3, 10,
                ["unknown op 'conv2'"], hint="did you mean 'conv'?")


def test_too_many_positional_args_points_at_the_first_extra(tmp_path, capsys):
    check_error(tmp_path, capsys,
                NET + "    x -> conv(64, 3, 1, same, 1, 1, true, relu, 5) -> out\n}\n", 3, 49,
                ["conv takes at most 8 positional arguments, got 9"],
                hint="conv(filters, kernel, stride=1")


def test_block_called_with_too_many_args(tmp_path, capsys):
    text = ("block unit(f, s=1) {\n    in x\n    out x -> conv(f, 3, stride=s)\n}\n"
            + NET + "    x -> unit(8, 1, 2) -> out\n}\n")
    check_error(tmp_path, capsys, text, 7, 21, ["block 'unit' takes 2 arguments, got 3"],
                hint="unit(f, s)")


def test_block_called_without_its_required_arg(tmp_path, capsys):
    text = ("block unit(f, s=1) {\n    in x\n    out x -> conv(f, 3, stride=s)\n}\n"
            + NET + "    x -> unit(s=2) -> out\n}\n")
    check_error(tmp_path, capsys, text, 7, 10, ["block 'unit' needs 'f'"], hint="unit(f, s)")


def test_block_given_the_wrong_number_of_inputs(tmp_path, capsys):
    text = ("block pair() {\n    in a, b\n    out a + b\n}\n"
            + NET + "    x -> pair -> out\n}\n")
    check_error(tmp_path, capsys, text, 7, 10, ["block 'pair' expects 2 inputs, got 1"],
                hint="in a, b")


def test_wrong_argument_type_string_for_kernel(tmp_path, capsys):
    check_error(tmp_path, capsys, NET + '    x -> conv(64, "3") -> out\n}\n', 3, 19,
                ["conv", "'kernel'", "positive integer"], hint="without quotes")


def test_bad_padding_value_did_you_mean(tmp_path, capsys):
    check_error(tmp_path, capsys, NET + "    x -> conv(64, 3, pad=sam) -> out\n}\n", 3, 22,
                ["'pad'", "'sam'"], hint="did you mean 'same'?")


def test_rate_out_of_range(tmp_path, capsys):
    check_error(tmp_path, capsys, NET + "    x -> dropout(rate=1.5) -> out\n}\n", 3, 18,
                ["dropout", "'rate'", "[0, 1)", "1.5"])


def test_negative_filters(tmp_path, capsys):
    check_error(tmp_path, capsys, NET + "    x -> conv(-64, 3) -> out\n}\n", 3, 15,
                ["'filters'", "positive integer", "-64"])


def test_zero_stride(tmp_path, capsys):
    check_error(tmp_path, capsys, NET + "    x -> conv(64, 3, stride=0) -> out\n}\n", 3, 22,
                ["'stride'", "positive integer"])


def test_unknown_keyword_attribute_did_you_mean(tmp_path, capsys):
    check_error(tmp_path, capsys, NET + "    x -> conv(64, 3, strde=2) -> out\n}\n", 3, 22,
                ["conv has no attribute 'strde'"], hint="did you mean 'stride'?")


def test_misspelt_activation_did_you_mean(tmp_path, capsys):
    check_error(tmp_path, capsys, NET + "    x -> conv(8, 3, act=rleu) -> out\n}\n", 3, 21,
                ["'act'", "'rleu'"], hint="did you mean 'relu'?")


# ------------------------------------------------------------------ names and values

def test_undefined_name_typo_in_chain_head(tmp_path, capsys):
    text = "network n() {\n    input image: 3@32x32\n    imgae -> relu -> out\n}\n"
    check_error(tmp_path, capsys, text, 3, 5, ["undefined name 'imgae'"],
                hint="did you mean 'image'?")


def test_undefined_param_in_block_hints_the_param(tmp_path, capsys):
    text = ("block down(stride=2) {\n    in x\n    out x -> conv(8, 3, stride=strid)\n}\n"
            + NET + "    x -> down -> out\n}\n")
    check_error(tmp_path, capsys, text, 3, 25, ["'stride'", "'strid'"],
                hint=["'strid' is not defined", "did you mean 'stride'?"],
                notes=[(tmp_path / "net.net", 7, 10, "in block 'down'")])


def test_unused_assigned_value(tmp_path, capsys):
    text = NET + "    y = x -> relu\n    x -> conv(8, 3) -> out\n}\n"
    check_error(tmp_path, capsys, text, 3, 5, ["unused value 'y'"], hint="reach an output")


def test_unused_block_input(tmp_path, capsys):
    text = ("block first() {\n    in a, b\n    out a -> relu\n}\n"
            + NET + "    first(x, x) -> out\n}\n")
    check_error(tmp_path, capsys, text, 2, 11, ["unused input 'b'"],
                notes=[(tmp_path / "net.net", 7, 5, "in block 'first'")])


def test_chain_not_ending_in_out(tmp_path, capsys):
    text = NET + "    x -> relu -> out\n    x -> conv(8, 3)\n}\n"
    check_error(tmp_path, capsys, text, 4, 5, ["never used"], hint="-> out")


def test_keyword_assigned_as_a_name(tmp_path, capsys):
    # `if` at the start of a statement parses as a name; the elaborator refuses it
    text = NET + "    if = x -> relu\n    x -> out\n}\n"
    check_error(tmp_path, capsys, text, 3, 5, ["'if' is a keyword"], hint="choose another name")


# ------------------------------------------------------------------ shapes

def test_add_shape_mismatch_names_both_sides(tmp_path, capsys):
    text = (NET + "    a = x -> conv(64, 3, pad=same)\n"
            "    b = x -> conv(128, 3, stride=2, pad=same)\n    a + b -> out\n}\n")
    check_error(tmp_path, capsys, text, 5, 7,
                ["add needs equal shapes", "64@32x32 from a/conv1", "128@16x16 from b/conv1"],
                hint="1x1 conv")


def test_add_mismatch_inside_block_names_producers_and_call(tmp_path, capsys):
    text = ("block bad(f) {\n    in x\n    main = x -> conv(f, 3, stride=2, pad=same)\n"
            "    out main + x\n}\n"
            "network n() {\n    input x: 64@56x56\n    x -> bad(128) -> out\n}\n")
    check_error(tmp_path, capsys, text, 4, 14,
                ["128@28x28 from bad1/main/conv1", "64@56x56 from x"],
                notes=[(tmp_path / "net.net", 8, 10, "in block 'bad' (bad1)")])


def test_concat_height_width_mismatch(tmp_path, capsys):
    text = (NET + "    a = x -> conv(64, 3, pad=same)\n"
            "    b = x -> conv(128, 3, stride=2, pad=same)\n    concat(a, b) -> out\n}\n")
    check_error(tmp_path, capsys, text, 5, 5,
                ["height and width must match", "64@32x32 from a/conv1", "128@16x16 from b/conv1"],
                hint="pad=same")


def test_split_into_parts_that_do_not_divide_the_channels(tmp_path, capsys):
    check_error(tmp_path, capsys, NET + "    x -> split(2) -> concat -> out\n}\n", 3, 10,
                ["split cannot cut 3@32x32 from x into 2 equal parts",
                 "its 3 channels are not a multiple of 2"],
                hint=["a count that divides 3", "split((2, 1))"])


def test_split_widths_that_do_not_add_up_to_the_channels(tmp_path, capsys):
    text = NET + "    a, b = split(x, (1, 3))\n    concat(a, b) -> out\n}\n"
    check_error(tmp_path, capsys, text, 3, 12,
                ["split's widths (1, 3) add up to 4, but 3@32x32 from x has 3 channels"],
                hint="add up to its 3 channels")


def test_split_of_one_part_points_at_the_argument(tmp_path, capsys):
    check_error(tmp_path, capsys, NET + "    x -> split(1) -> out\n}\n", 3, 16,
                ["split: bad value for 'parts'", "2 or more", "got 1"])


def test_unpacking_into_too_few_names(tmp_path, capsys):
    text = NET + "    a, b = x -> split(3)\n    concat(a, b) -> out\n}\n"
    check_error(tmp_path, capsys, text, 3, 5, ["3 values cannot be unpacked into 2 names"],
                hint="`_` takes one")


def test_unpacking_a_single_tensor(tmp_path, capsys):
    text = NET + "    a, b = x -> relu\n    concat(a, b) -> out\n}\n"
    check_error(tmp_path, capsys, text, 3, 5, ["cannot unpack a tensor 3@32x32 into 2 names"],
                hint="a, b = split(x, 2)")


def test_unpacking_into_one_name_twice(tmp_path, capsys):
    text = NET + "    a, a = x -> split(3)\n    a -> out\n}\n"
    check_error(tmp_path, capsys, text, 3, 8, ["name 'a' is declared twice"],
                notes=[(tmp_path / "net.net", 3, 5, "first declared here")])


def test_kernel_larger_than_input(tmp_path, capsys):
    text = "network n() {\n    input x: 3@4x4\n    x -> conv(8, 7) -> out\n}\n"
    check_error(tmp_path, capsys, text, 3, 10, ["window 7x7 is larger than its input", "3@4x4"],
                hint="smaller kernel")


def test_valid_convs_shrink_to_nothing(tmp_path, capsys):
    text = ("network n() {\n    input x: 3@8x8\n"
            "    x -> conv(8, 3) -> conv(8, 3) -> conv(8, 3) -> conv(8, 3) -> out\n}\n")
    check_error(tmp_path, capsys, text, 3, 52, ["larger than its input", "8@2x2 from conv3"])


def test_transposed_conv_negative_output(tmp_path, capsys):
    text = "network n() {\n    input x: 3@2x2\n    x -> conv_transpose(8, 3, pad=5) -> out\n}\n"
    check_error(tmp_path, capsys, text, 3, 10, ["conv_transpose", "would be -6", "3@2x2 from x"],
                hint="smaller padding")


def test_dense_on_a_feature_map(tmp_path, capsys):
    check_error(tmp_path, capsys, NET + "    x -> dense(10) -> out\n}\n", 3, 10,
                ["dense expects a flat vector", "3@32x32 from x"], hint="flatten")


def test_zero_sized_input_shape(tmp_path, capsys):
    text = "network n() {\n    input x: 3@0x32\n    x -> relu -> out\n}\n"
    check_error(tmp_path, capsys, text, 2, 14, ["bad shape", "3@0x32"], hint="at least 1")


# ------------------------------------------------------------------ imports

def test_import_not_found(tmp_path, capsys):
    text = 'import "blocks.net"\n' + NET + "    x -> relu -> out\n}\n"
    check_error(tmp_path, capsys, text, 1, 1, ["cannot import 'blocks.net'", "no such file"],
                hint=str(tmp_path / "blocks.net"))


def test_import_cycle(tmp_path, capsys):
    files = {"a.net": 'import "b.net"\n', "b.net": '# b\nimport "a.net"\n'}
    text = 'import "a.net"\n' + NET + "    x -> relu -> out\n}\n"
    check_error(tmp_path, capsys, text, 2, 1,
                ["import cycle", f"{tmp_path / 'a.net'} -> {tmp_path / 'b.net'} -> "
                                 f"{tmp_path / 'a.net'}"],
                files=files, at=tmp_path / "b.net")


def test_import_escaping_the_project(tmp_path, capsys):
    files = {"proj/pyproject.toml": "[project]\nname = 'p'\n",
             "shared.net": "block b() {\n    in x\n    out x\n}\n"}
    text = 'import "../shared.net"\n' + NET + "    x -> b -> out\n}\n"
    check_error(tmp_path, capsys, text, 1, 1, ["'../shared.net'", "outside the project folder"],
                hint=str(tmp_path / "proj"), files=files, name="proj/net.net")


def test_syntax_error_in_imported_file(tmp_path, capsys):
    files = {"blocks.net": "block b() {\n    in x\n    out x -> relu(\n}\n"}
    text = 'import "blocks.net"\n' + NET + "    x -> b -> out\n}\n"
    check_error(tmp_path, capsys, text, 4, 1, ["unexpected '}'"], files=files,
                at=tmp_path / "blocks.net",
                notes=[(tmp_path / "blocks.net", 3, 18, "'(' opened here is not closed"),
                       (tmp_path / "net.net", 1, 1, "imported here")])


def test_non_utf8_in_imported_file_notes_the_import(tmp_path, capsys):
    files = {"lib/b.net": b"block blk() {\n    in x\n    out x -> \xe9relu\n}\n"}
    text = 'import "lib/b.net"\n' + NET + "    x -> blk -> out\n}\n"
    check_error(tmp_path, capsys, text, 3, 14, ["not valid UTF-8", "0xe9"], files=files,
                at=tmp_path / "lib" / "b.net", notes=[(tmp_path / "net.net", 1, 1, "imported here")])


def test_nested_imports_name_files_like_the_user_did(tmp_path, capsys, monkeypatch):
    # the main spec given as a relative path: imported files are named relative to it too,
    # and an error two blocks deep shows both call sites, innermost first
    write(tmp_path / "lib" / "b.net",
          'import "../c.net"\nblock blk() {\n    in x\n    out x -> c\n}\n')
    write(tmp_path / "c.net", "block c() {\n  in y\n  out y -> conv(1, 99)\n}\n")
    write(tmp_path / "net.net", 'import "lib/b.net"\n' + NET + "    x -> blk -> out\n}\n")
    monkeypatch.chdir(tmp_path)
    assert main(["check", "net.net"]) == 1
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines[0].startswith("c.net:3:12: error: conv window 99x99 is larger than its input")
    assert lines[1:3] == [" 3 |   out y -> conv(1, 99)", "   |            ^~~~"]
    assert lines[-2] == "lib/b.net:4:14: note: in block 'c' (blk1/c1) called here"
    assert lines[-1] == "net.net:4:10: note: in block 'blk' (blk1) called here"


# ------------------------------------------------------------------ blocks and limits

def test_block_calls_itself(tmp_path, capsys):
    text = "block loop() {\n    in x\n    out x -> loop\n}\n" + NET + "    x -> loop -> out\n}\n"
    check_error(tmp_path, capsys, text, 3, 14, ["block 'loop' calls itself", "loop -> loop"],
                hint="not be recursive",
                notes=[(tmp_path / "net.net", 7, 10, "in block 'loop' (loop1) called here")])


def test_blocks_call_each_other(tmp_path, capsys):
    text = ("block ping() {\n    in x\n    out x -> pong\n}\n"
            "block pong() {\n    in x\n    out x -> ping\n}\n"
            + NET + "    x -> relu -> ping -> out\n}\n")
    check_error(tmp_path, capsys, text, 7, 14, ["block 'ping' calls itself", "ping -> pong -> ping"],
                notes=[(tmp_path / "net.net", 3, 14, "in block 'pong'"),
                       (tmp_path / "net.net", 11, 18, "in block 'ping' (ping1) called here")])


def test_repeat_count_absurdly_large(tmp_path, capsys):
    check_error(tmp_path, capsys, NET + "    x -> relu * 1000000 -> out\n}\n", 3, 17,
                ["repeat count 1,000,000 is too large", "10,000"])


def test_network_too_large_for_any_machine(tmp_path, capsys):
    text = ("network huge() {\n    input x: 3@100000x100000\n"
            "    x -> conv(4096, 3, pad=same) -> out\n}\n")
    err = check_error(tmp_path, capsys, text, 3, 10, ["too large for any machine", "TB"],
                      hint="input size")
    assert "164.0 TB" in err


def test_duplicate_label(tmp_path, capsys):
    text = NET + "    x -> c1: conv(8, 3) -> c1: conv(8, 3) -> out\n}\n"
    check_error(tmp_path, capsys, text, 3, 32, ["label 'c1' is used twice"])


def test_duplicate_label_on_a_group(tmp_path, capsys):
    text = NET + "    x -> g: (conv(8, 3) -> relu) -> g: (relu) -> out\n}\n"
    check_error(tmp_path, capsys, text, 3, 40, ["label 'g' is used twice"])


def test_duplicate_network_parameter_at_the_second(tmp_path, capsys):
    text = "network p(a=8, a=16) {\n    input x: 4\n    x -> dense(a) -> out\n}\n"
    check_error(tmp_path, capsys, text, 1, 16, ["parameter 'a' is declared twice"],
                hint="different names", notes=[(tmp_path / "net.net", 1, 11, "first declared here")])


def test_duplicate_block_parameter_even_in_a_block_never_called(tmp_path, capsys):
    text = "block b(f, f=3) {\n    in x\n    out x -> dense(f)\n}\n" + NET + "    x -> out\n}\n"
    check_error(tmp_path, capsys, text, 1, 12, ["parameter 'f' is declared twice"],
                hint="different names", notes=[(tmp_path / "net.net", 1, 9, "first declared here")])


def test_duplicate_block_input_across_in_statements(tmp_path, capsys):
    text = ("block b() {\n    in x, y\n    in z, y\n    out x + y + z\n}\n"
            + NET + "    x -> b(x, x) -> out\n}\n")
    check_error(tmp_path, capsys, text, 3, 11, ["input 'y' is declared twice"],
                notes=[(tmp_path / "net.net", 2, 11, "first declared here")])


def test_network_without_output(tmp_path, capsys):
    text = NET + "    y = x -> conv(8, 3) -> relu\n}\n"
    check_error(tmp_path, capsys, text, 1, 9, ["network 'n' has no output"], hint="out y")


def test_block_without_out(tmp_path, capsys):
    text = ("block body() {\n    in x\n    y = x -> relu\n}\n"
            + NET + "    x -> body -> out\n}\n")
    check_error(tmp_path, capsys, text, 1, 7, ["block 'body' has no output"], hint="out y",
                notes=[(tmp_path / "net.net", 7, 10, "in block 'body'")])


def test_unknown_op_inside_block_notes_the_call_site(tmp_path, capsys):
    text = ("block stem(f) {\n    in x\n    out x -> conv(f, 3) -> batchnrom\n}\n"
            "network n() {\n    input image: 3@32x32\n    image -> stem(16) -> out\n}\n")
    check_error(tmp_path, capsys, text, 3, 28, ["unknown op 'batchnrom'"],
                hint="did you mean 'batchnorm'?",
                notes=[(tmp_path / "net.net", 7, 14, "in block 'stem' (stem1) called here")])


# ------------------------------------------------------------------ train section

TRAIN = NET + "    x -> relu -> out\n    train {\n"


def test_train_unknown_setting(tmp_path, capsys):
    check_error(tmp_path, capsys, TRAIN + "        epocs = 10\n    }\n}\n", 5, 9,
                ["unknown setting 'epocs'"], hint="did you mean 'epochs'?")


def test_train_unknown_optimizer(tmp_path, capsys):
    check_error(tmp_path, capsys, TRAIN + "        optimizer = adamw(lr=0.1)\n    }\n}\n", 5, 9,
                ["unknown optimizer 'adamw'"], hint="did you mean 'adam'?")


def test_train_negative_batch(tmp_path, capsys):
    check_error(tmp_path, capsys, TRAIN + "        batch = -32\n    }\n}\n", 5, 9,
                ["batch", "integer >= 1", "-32"])


def test_two_train_sections(tmp_path, capsys):
    text = NET + "    x -> relu -> out\n    train { batch = 8 }\n    train { epochs = 2 }\n}\n"
    check_error(tmp_path, capsys, text, 5, 5, ["one train section"],
                notes=[(tmp_path / "net.net", 4, 5, "first")])


# ------------------------------------------------------------------ files

def test_non_utf8_bytes_in_line_3(tmp_path, capsys):
    data = NET.encode() + b"    x -> \xff\xfe relu -> out\n}\n"
    check_error(tmp_path, capsys, data, 3, 10, ["not valid UTF-8", "0xff"], hint="UTF-8")


def test_non_utf8_column_counts_characters(tmp_path, capsys):
    # two 2-byte characters before the bad byte: column 13 in characters, not 15 in bytes
    data = NET.encode() + "    x -> é\xe9 ".encode() + b"\x80 relu -> out\n}\n"
    check_error(tmp_path, capsys, data, 3, 13, ["not valid UTF-8", "0x80"])


def test_utf16_file(tmp_path, capsys):
    data = (NET + "    x -> relu -> out\n}\n").encode("utf-16")
    check_error(tmp_path, capsys, data, 1, 1, ["UTF-16"], hint="UTF-8", excerpt=False)


def test_binary_file(tmp_path, capsys):
    err = check_error(tmp_path, capsys, b"\x7fELF\x02\x01\x01\x00\x00\x00\x00", 1, 8,
                      ["binary file", "NUL"], hint="UTF-8 text", excerpt=False)
    assert "\x00" not in err and "ELF" not in err     # no garbage quoted to the terminal


def test_empty_file(tmp_path, capsys):
    check_error(tmp_path, capsys, "", 1, 1, ["empty spec"], hint="network", excerpt=False)


def test_only_comments(tmp_path, capsys):
    check_error(tmp_path, capsys, "# a comment\n\n   # another one\n", 1, 1, ["empty spec"],
                hint="network")


def test_file_of_blocks_only(tmp_path, capsys):
    check_error(tmp_path, capsys, "block b() {\n    in x\n    out x\n}\n", 1, 1,
                ["defines no network"], hint="imported")


def test_lines_are_counted_at_newlines_only(tmp_path, capsys):
    # a form feed and a lone \r (in a file of \n lines) do not end lines for the parser, so not
    # for the excerpt either
    text = "network n() {\n  \x0c  input x: 3@32x32 # old\rmac\n    x -> conv2(64, 3) -> out\n}\n"
    err = check_error(tmp_path, capsys, text, 3, 10, ["unknown op 'conv2'"])
    assert " 3 |     x -> conv2(64, 3) -> out" in err.splitlines()


def test_crlf_and_tabs_keep_positions_and_carets(tmp_path, capsys):
    text = "network n() {\r\n\tinput x: 3@32x32\r\n\tx -> conv2(64, 3) -> out\r\n}\r\n"
    err = check_error(tmp_path, capsys, text, 3, 7, ["unknown op 'conv2'"], hint="'conv'")
    assert "\r" not in err


def test_comment_with_lone_carriage_return_is_still_a_comment(tmp_path, capsys):
    check_error(tmp_path, capsys, "# a comment\r network n() {}\n", 1, 1, ["empty spec"])


def test_file_of_old_mac_line_endings_reads_as_lines(tmp_path, capsys):
    # no \n at all: \r ends the lines (as editors detect it), not one long comment
    text = "# old Mac\rnetwork n() {\r    input x: 3@32x32\r    x -> conv2(64, 3) -> out\r}\r"
    err = check_error(tmp_path, capsys, text, 4, 10, ["unknown op 'conv2'"], excerpt=False)
    assert err.splitlines()[1:3] == [" 4 |     x -> conv2(64, 3) -> out", "   |          ^~~~~"]


def test_utf8_byte_order_mark_is_skipped_and_columns_stay(tmp_path, capsys):
    data = b"\xef\xbb\xbf" + (NET + "    x -> conv2(64, 3) -> out\n}\n").encode()
    check_error(tmp_path, capsys, data, 3, 10, ["unknown op 'conv2'"])
    data = b"\xef\xbb\xbfnetwork n() { input x: 3@8x8  x -> conv2(4, 3) -> out }\n"
    err = check_error(tmp_path, capsys, data, 1, 36, ["unknown op 'conv2'"], excerpt=False)
    assert err.splitlines()[1:3] == [
        " 1 | network n() { input x: 3@8x8  x -> conv2(4, 3) -> out }",
        "   |                                    ^~~~~"]


@pytest.mark.parametrize("col,quoted,caret", [
    # near the start: no cut on the left; in the middle: both; near the end: on the left only
    (5, "0123" + "x" * 96 + "...", "    ^~~"),
    (5000, "..." + "x" * 100 + "...", " " * 36 + "^~~"),
    (9998, "..." + "x" * 97 + "999", " " * 100 + "^~~"),
])
def test_excerpt_of_a_long_line_is_a_window_around_the_caret(col, quoted, caret):
    from netspec.errors import Pos, SpecError
    line = "0123" + "x" * 9993 + "999"                     # 10,000 columns
    e = SpecError("boom", Pos("f.net", 2, col, col + 3))
    lines = e.format({"f.net": "first line\n" + line + "\n"}).splitlines()
    assert lines[1:] == [" 2 | " + quoted, "   | " + caret]
    assert (" 2 | " + quoted)[len("   | ") + caret.index("^")] == line[col - 1]


def test_excerpt_span_wider_than_the_window_is_cut_at_its_edge():
    from netspec.errors import Pos, SpecError
    e = SpecError("boom", Pos("f.net", 1, 1, 5001))
    lines = e.format({"f.net": "n" * 5000 + " = 1\n"}).splitlines()
    assert lines[2] == "   | ^" + "~" * 99


def test_long_messages_are_clipped_in_the_middle():
    from netspec.errors import MAX_MESSAGE, SpecError
    text = SpecError("unknown op '" + "a" * 100_000 + "'").format({})
    assert len(text) <= MAX_MESSAGE and " ... " in text and text.endswith("aaa'")


def test_import_of_a_named_pipe_is_refused_at_the_import(tmp_path, capsys):
    import os
    os.mkfifo(tmp_path / "pipe.net")
    check_error(tmp_path, capsys, 'import "pipe.net"\n' + NET + "    x -> out\n}\n", 1, 1,
                ["cannot import 'pipe.net': not a regular file (it is a named pipe (FIFO))"])


def test_import_of_a_folder_is_refused_at_the_import(tmp_path, capsys):
    (tmp_path / "lib").mkdir()
    check_error(tmp_path, capsys, 'import "lib"\n' + NET + "    x -> out\n}\n", 1, 1,
                ["cannot import 'lib': it is a folder, not a file"])


# ------------------------------------------------------------------ syntax

def test_syntax_missing_close_paren(tmp_path, capsys):
    # `3 -> out` is a valid argument, so the parser finds out at the `}`
    text = NET + "    x -> conv(64, 3 -> out\n}\n"
    check_error(tmp_path, capsys, text, 4, 1, ["unexpected '}'"], hint="')'",
                notes=[(tmp_path / "net.net", 3, 14, "'(' opened here is not closed")])


def test_syntax_label_on_a_functional_call(tmp_path, capsys):
    # the network's `{` is closed: no note may claim otherwise
    text = ("block b(f) {\n    in x\n    out x -> conv(f, 1)\n}\n"
            + NET + "    y = u: b(x, 4)\n    y -> out\n}\n")
    err = check_error(tmp_path, capsys, text, 7, 9, ["label ('u:') can only name a stage of a chain"],
                      hint="x -> u: layer(...)")
    assert "not closed" not in err


@pytest.mark.parametrize("line, col, words, hint", [
    ("    out r: relu(x)", 9, ["label ('r:')"], "in a chain"),
    ("    x -> conv(8, 1, act: relu) -> out", 24, ["unexpected ':'"], "`act=value`"),
    ("    train { lr: 0.1 }\n    x -> out", 15, ["unexpected ':'"], "`lr=value`"),
])
def test_syntax_colon_after_a_name(tmp_path, capsys, line, col, words, hint):
    err = check_error(tmp_path, capsys, NET + line + "\n}\n", 3, col, words, hint=hint)
    assert "not closed" not in err


def test_syntax_shape_on_a_block_input(tmp_path, capsys):
    text = "block b() {\n    in x: 3@8x8\n    out x\n}\n" + NET + "    x -> b -> out\n}\n"
    check_error(tmp_path, capsys, text, 2, 9, ["a block's inputs take no shape"], hint="`in x`")


def test_syntax_stray_character(tmp_path, capsys):
    check_error(tmp_path, capsys, NET + "    x -> relu $ -> out\n}\n", 3, 15,
                ["unexpected character '$'"])


def test_syntax_single_quoted_string(tmp_path, capsys):
    check_error(tmp_path, capsys, NET + "    x -> conv(8, 3, pad='same') -> out\n}\n", 3, 25,
                ["unexpected character"], hint="double quotes")


def test_syntax_unterminated_string(tmp_path, capsys):
    check_error(tmp_path, capsys, NET + '    x -> conv(8, 3, pad="same) -> out\n}\n', 3, 25,
                ["unterminated string"], hint="same line")


def test_syntax_keyword_used_as_a_name(tmp_path, capsys):
    text = NET + "    in = x -> relu\n    in -> out\n}\n"
    check_error(tmp_path, capsys, text, 3, 5, ["'in' is a keyword and cannot be used as a name"],
                hint="choose another name")


def test_syntax_unexpected_end_of_file(tmp_path, capsys):
    text = NET + "    x -> relu -> out\n\n"
    check_error(tmp_path, capsys, text, 3, 21, ["unexpected end of file"],
                hint="expected '}' to close the '{' on line 1",
                notes=[(tmp_path / "net.net", 1, 13, "'{' opened here is not closed")])


def test_syntax_end_of_file_inside_call(tmp_path, capsys):
    text = NET + "    x -> conv(64, "
    check_error(tmp_path, capsys, text, 3, 18, ["unexpected end of file"],
                hint="expected ')' to close the '('",
                notes=[(tmp_path / "net.net", 3, 14, "'(' opened here")])


@pytest.mark.parametrize("argv", [["summary"], ["compile", "-o", "IGNORED"]])
def test_other_commands_report_spec_errors_the_same_way(tmp_path, capsys, argv):
    path = tmp_path / "net.net"
    write(path, NET + "    x -> conv2(64, 3) -> out\n}\n")
    argv = [str(tmp_path / "build") if a == "IGNORED" else a for a in argv]
    assert main([*argv, str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{path}:3:10: error: unknown op 'conv2'")
    assert "Traceback" not in err
    assert not (tmp_path / "build").exists()
