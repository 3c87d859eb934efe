"""Tests for the nettee 0.2 command line (man page, section Options)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beokit.errors import EXIT_USAGE, UsageError
from beokit.nettee.hostlists import Endpoint
from beokit.nettee.options import (
    DEFAULT_BUF_MAXREAD,
    DEFAULT_BUF_MAXWRITE,
    DEFAULT_BUF_MINREAD,
    DEFAULT_BUF_MINWRITE,
    DEFAULT_BUF_SIZE,
    DEFAULT_PORT,
    FLAG_OPTIONS,
    VALUE_OPTIONS,
    Help,
    NetteeConfig,
    Role,
    parse_args,
    tokenize,
)

ROOT = ["-root", "-next", "n1"]  # a valid root (push): -in - by default
PULL = ["-flow", "pull", "-process", "merge"]


def usage_error(argv: list[str]) -> str:
    with pytest.raises(UsageError) as exc:
        parse_args(argv)
    assert exc.value.exit_status == EXIT_USAGE
    return str(exc.value)


# ---------------------------------------------------------------- defaults


def test_man_page_defaults():
    cfg = parse_args([])
    assert cfg.port == DEFAULT_PORT == 9997
    assert cfg.timeout == 0
    assert cfg.verbose == 1
    assert cfg.log == "-"
    assert cfg.flow == "push"
    assert cfg.connf == 0
    assert cfg.next == ()
    assert cfg.root is False
    assert cfg.wait_boot is False and cfg.quiet is False
    assert not (cfg.colrf or cfg.colwf or cfg.conrf or cfg.conwf)
    assert cfg.cmd is None and cfg.process is None and cfg.stm is None
    assert cfg.help is None
    assert cfg.name == ""


def test_man_page_buffer_defaults():
    cfg = parse_args([])
    assert cfg.buf_size == DEFAULT_BUF_SIZE == 1048576
    assert cfg.buf_minread == DEFAULT_BUF_MINREAD == 128
    assert cfg.buf_minwrite == DEFAULT_BUF_MINWRITE == 1
    assert cfg.buf_maxread == DEFAULT_BUF_MAXREAD == 65536
    assert cfg.buf_maxwrite == DEFAULT_BUF_MAXWRITE == 65536


def test_extension_defaults():
    cfg = parse_args([])
    assert cfg.bind == "0.0.0.0"
    assert cfg.secret_file is None
    assert cfg.stall == 5.0
    assert cfg.report is None


@pytest.mark.parametrize(
    "argv, role, inputs, out",
    [
        # -flow push: root -in - -out none; internal and tip -in none -out -
        (ROOT, Role.ROOT, ("-",), "none"),
        (["-next", "n1"], Role.INTERNAL, (), "-"),
        ([], Role.TIP, (), "-"),
        (["-next", "."], Role.TIP, (), "-"),
        (["-flow", "push"], Role.TIP, (), "-"),
        # -flow pull: root -in none -out -; internal -in none -out -; tip -in - -out none
        (PULL + ROOT, Role.ROOT, (), "-"),
        (PULL + ["-next", "n1"], Role.INTERNAL, (), "-"),
        (PULL, Role.TIP, ("-",), "none"),
        (PULL + ["-next", "_EOC_"], Role.TIP, ("-",), "none"),
    ],
)
def test_in_out_defaults_per_flow_and_role(argv, role, inputs, out):
    cfg = parse_args(argv)
    assert cfg.role is role
    assert cfg.inputs == inputs
    assert cfg.out == out


def test_explicit_in_out_override_defaults():
    cfg = parse_args(ROOT + ["-in", "data.bin", "-out", "copy.bin"])
    assert cfg.inputs == ("data.bin",)
    assert cfg.out == "copy.bin"
    cfg = parse_args(["-out", "none"])
    assert cfg.out == "none" and cfg.inputs == ()
    cfg = parse_args(["-in", "none", "-out", "/tmp/x"])
    assert cfg.inputs == () and cfg.out == "/tmp/x"


# ---------------------------------------------------------------- NetteeConfig.role


def test_role_property():
    assert NetteeConfig().role is Role.TIP
    assert NetteeConfig(next=((Endpoint("a"),),)).role is Role.INTERNAL
    assert NetteeConfig(root=True, next=((Endpoint("a"),),)).role is Role.ROOT
    assert NetteeConfig(root=True).role is Role.ROOT


# ---------------------------------------------------------------- every option as spelled


@pytest.mark.parametrize(
    "argv, attr, value",
    [
        (["-next", "a,[b,c]"], "next", ((Endpoint("a"),), (Endpoint("b"), Endpoint("c")))),
        (ROOT, "root", True),
        (ROOT + ["-in", "file.dat"], "inputs", ("file.dat",)),
        (ROOT + ["-in", "-"], "inputs", ("-",)),
        (["-in", "none"], "inputs", ()),
        (["-out", "out.dat"], "out", "out.dat"),
        (["-out", "-"], "out", "-"),
        (["-out", "none"], "out", "none"),
        (["-flow", "push"], "flow", "push"),
        (PULL, "flow", "pull"),
        (["-p", "4000"], "port", 4000),
        (["-port", "4000"], "port", 4000),
        (["-port", "1"], "port", 1),
        (["-port", "65534"], "port", 65534),
        (["-t", "30"], "timeout", 30.0),
        (["-t", "0"], "timeout", 0.0),
        (["-t", "2.5"], "timeout", 2.5),
        (["-w"], "wait_boot", True),
        (["-v", "0"], "verbose", 0),
        (["-v", "5"], "verbose", 5),
        (["-v", "31"], "verbose", 31),
        (["-log", "nettee.log"], "log", "nettee.log"),
        (["-log", "-"], "log", "-"),
        (["-name", "node34"], "name", "node34"),
        (["-name", "x" * 127], "name", "x" * 127),
        (["-q"], "quiet", True),
        (["-buf_size", "4096"], "buf_size", 4096),
        (["-buf_size", "8388608"], "buf_size", 8388608),
        (["-buf_minread", "1"], "buf_minread", 1),
        (["-buf_minwrite", "64"], "buf_minwrite", 64),
        (["-buf_maxread", "1024"], "buf_maxread", 1024),
        (["-buf_maxwrite", "2048"], "buf_maxwrite", 2048),
        (["-connf", "10"], "connf", 10.0),
        (["-connf", "0"], "connf", 0.0),
        (["-colrf"], "colrf", True),
        (["-conlrf"], "colrf", True),  # the man page's spelling slip for -colrf
        (["-colwf"], "colwf", True),
        (["-conrf"], "conrf", True),
        (["-conwf"], "conwf", True),
        (ROOT + ["-in", "socket", "-cmd", "tar cf - /data"], "cmd", "tar cf - /data"),
        (["-out", "socket", "-cmd", "tar xf -"], "cmd", "tar xf -"),
        (["-process", "sort -m"], "process", "sort -m"),
        (["-stm", "EOS"], "stm", "EOS"),
        # extensions
        (["-bind", "10.0.0.5"], "bind", "10.0.0.5"),
        (["-secret_file", "/etc/nettee.key"], "secret_file", "/etc/nettee.key"),
        (["-stall", "0"], "stall", 0.0),
        (["-stall", "12.5"], "stall", 12.5),
        (["-report", "report.json"], "report", "report.json"),
    ],
)
def test_every_option_parses_as_spelled(argv, attr, value):
    cfg = parse_args(argv)
    assert getattr(cfg, attr) == value
    assert cfg.help is None


@pytest.mark.parametrize(
    "opt, help_",
    [
        ("-h", Help.MAIN),
        ("-hexamples", Help.EXAMPLES),
        ("-herrors", Help.ERRORS),
        ("-hprocess", Help.PROCESS),
        ("-i", Help.VERSION),
    ],
)
def test_help_options(opt, help_):
    assert parse_args([opt]).help is help_
    # help wins over an otherwise incomplete command line (-root without -next)
    assert parse_args(["-root", opt]).help is help_


def test_all_man_page_options_are_known():
    man_page = {
        "-next", "-root", "-in", "-out", "-flow", "-port", "-t", "-w", "-v", "-log",
        "-name", "-q", "-buf_size", "-buf_minread", "-buf_minwrite", "-buf_maxread",
        "-buf_maxwrite", "-connf", "-colrf", "-colwf", "-conrf", "-conwf", "-cmd",
        "-process", "-stm", "-h", "-hexamples", "-herrors", "-hprocess", "-i",
    }  # fmt: skip
    extensions = {"-bind", "-secret_file", "-stall", "-report", "-heal", "-digest", "-window",
                  "-fsync", "-stm_wait", "-stm_results"}
    assert man_page | extensions == VALUE_OPTIONS | FLAG_OPTIONS
    assert not VALUE_OPTIONS & FLAG_OPTIONS


def test_many_options_together():
    cfg = parse_args(
        ["-root", "-next", "node1,[node2,node3]", "-in", "big.img", "-out", "none",
         "-p", "7000", "-t", "60", "-w", "-v", "21", "-log", "-", "-name", "head",
         "-q", "-connf", "5", "-colrf", "-colwf", "-conrf", "-conwf",
         "-buf_size", "65536", "-bind", "127.0.0.1", "-stall", "3", "-report", "r.json"]
    )  # fmt: skip
    assert cfg.role is Role.ROOT
    assert cfg.inputs == ("big.img",) and cfg.out == "none"
    assert cfg.port == 7000 and cfg.timeout == 60 and cfg.verbose == 21
    assert cfg.colrf and cfg.colwf and cfg.conrf and cfg.conwf and cfg.quiet and cfg.wait_boot
    assert cfg.given["-port"] == "7000"
    assert len(cfg.next) == 2


def test_tokenize_canonicalises_aliases():
    assert tokenize(["-p", "5", "-w"]) == {"-port": "5", "-w": ""}
    assert tokenize(["-conlrf"]) == {"-colrf": ""}
    assert tokenize([]) == {}


def test_option_values_may_look_like_options():
    # the value is taken verbatim, even when it starts with a dash
    assert parse_args(["-name", "-root"]).name == "-root"
    assert parse_args(["-log", "-"]).log == "-"


# ---------------------------------------------------------------- restrictions


def test_cmd_with_process():
    msg = usage_error(ROOT + ["-in", "socket", "-cmd", "tar", "-process", "sort"])
    assert "-cmd" in msg and "-process" in msg


def test_socket_on_both_in_and_out():
    msg = usage_error(ROOT + ["-in", "socket", "-out", "socket", "-cmd", "tar"])
    assert "socket" in msg and "-in" in msg and "-out" in msg


def test_in_socket_without_cmd():
    msg = usage_error(ROOT + ["-in", "socket"])
    assert "-in socket" in msg and "-cmd" in msg


def test_out_socket_without_cmd():
    msg = usage_error(["-out", "socket"])
    assert "-out socket" in msg and "-cmd" in msg


def test_cmd_without_socket():
    msg = usage_error(ROOT + ["-cmd", "tar"])
    assert "-cmd" in msg and "socket" in msg


def test_multiple_in_without_process():
    msg = usage_error(ROOT + ["-in", "a,b"])
    assert "'a,b'" in msg and "-process" in msg


def test_multiple_in_with_process():
    cfg = parse_args(ROOT + ["-in", "a, -,b", "-process", "merge"])
    assert cfg.inputs == ("a", "-", "b")


def test_two_stdin_sources():
    msg = usage_error(ROOT + ["-in", "-,a,-", "-process", "merge"])
    assert "'-,a,-'" in msg and "stdin" in msg


@pytest.mark.parametrize("src", ["none", "socket"])
def test_none_or_socket_among_several_sources(src):
    value = f"a,{src}"
    msg = usage_error(ROOT + ["-in", value, "-process", "merge"])
    assert repr(value) in msg and src in msg


@pytest.mark.parametrize("value", ["a,,b", ",a", "a,", ""])
def test_empty_in_source(value):
    assert repr(value) in usage_error(ROOT + ["-in", value, "-process", "merge"])


def test_flow_pull_without_process():
    msg = usage_error(["-flow", "pull"])
    assert "pull" in msg and "-process" in msg


@pytest.mark.parametrize("flow", ["sideways", "PUSH", "", "push "])
def test_bad_flow(flow):
    assert repr(flow) in usage_error(["-flow", flow])


@pytest.mark.parametrize("argv", [["-root"], ["-root", "-next", "."], ["-root", "-next", "_EOC_"]])
def test_root_without_next(argv):
    msg = usage_error(argv)
    assert "-root" in msg and "-next" in msg


@pytest.mark.parametrize(
    "argv",
    [
        ["-next", "n2", "-in", "file.dat"],  # internal
        ["-in", "file.dat"],  # tip
        ["-next", "n2", "-in", "-"],
    ],
)
def test_non_root_local_input_in_push_needs_process(argv):
    value = argv[argv.index("-in") + 1]
    msg = usage_error(argv)
    assert repr(value) in msg and "-process" in msg


@pytest.mark.parametrize("argv", [["-next", "n2", "-in", "f"], ["-in", "f"]])
def test_non_root_local_input_in_push_with_process(argv):
    assert parse_args(argv + ["-process", "merge"]).inputs == ("f",)


def test_pull_internal_node_local_input_with_process():
    assert parse_args(PULL + ["-next", "n2", "-in", "f"]).inputs == ("f",)


def test_push_root_needs_an_input():
    assert "-in" in usage_error(ROOT + ["-in", "none"])


@pytest.mark.parametrize("port", ["0", "65535", "70000", "abc", "-1", "", "1e3"])
@pytest.mark.parametrize("opt", ["-p", "-port"])
def test_port_out_of_range(opt, port):
    msg = usage_error([opt, port])
    assert repr(port) in msg and "-port" in msg


def test_port_superscript_digit_is_usage_error():
    usage_error(["-port", "²"])


@pytest.mark.parametrize("v", ["32", "-1", "100", "x", "", "1.5", "0x1f"])
def test_verbose_out_of_range(v):
    assert repr(v) in usage_error(["-v", v])


@pytest.mark.parametrize("opt", ["-t", "-connf", "-stall"])
@pytest.mark.parametrize("value", ["-1", "-0.5", "x", "", "nan", "inf", "-inf"])
def test_bad_seconds(opt, value):
    msg = usage_error([opt, value])
    assert repr(value) in msg and opt in msg


@pytest.mark.parametrize(
    "opt, value",
    [
        ("-buf_size", "4095"),
        ("-buf_size", "0"),
        ("-buf_size", "big"),
        ("-buf_minread", "0"),
        ("-buf_minwrite", "0"),
        ("-buf_maxread", "0"),
        ("-buf_maxwrite", "-5"),
        ("-buf_maxwrite", str((1 << 30) + 1)),
    ],
)
def test_bad_buffer_sizes(opt, value):
    msg = usage_error([opt, value])
    assert repr(value) in msg and opt in msg


def test_buf_minread_larger_than_buf_size():
    msg = usage_error(["-buf_size", "4096", "-buf_minread", "4097"])
    assert "4097" in msg and "-buf_minread" in msg


def test_buf_minwrite_larger_than_buf_size():
    msg = usage_error(["-buf_size", "4096", "-buf_minwrite", "5000"])
    assert "5000" in msg and "-buf_minwrite" in msg


@pytest.mark.parametrize("name", ["", "x" * 128, "a\nb", "a\0b", "a\rb", "a\x1b[31mb", "a\u202eb"])
def test_bad_name(name):
    msg = usage_error(["-name", name])
    assert "-name" in msg and msg.isprintable()
    if len(name) <= 80:
        assert repr(name) in msg


def test_bad_name_is_shown_escaped_and_cut():
    """Issue 19: ESC was accepted; a 100 KB name was echoed whole."""
    msg = usage_error(["-name", "evil\x1b]0;title\x07"])
    assert "unprintable character \\x1b at position 5" in msg and "\x1b" not in msg
    msg = usage_error(["-name", "x" * 100_000])
    assert len(msg) < 200 and "100000 characters" in msg and "longer than 127" in msg


@pytest.mark.parametrize(
    "argv, opt",
    [
        (["-log", ""], "-log"),
        (["-out", ""], "-out"),
        (["-bind", ""], "-bind"),
        (["-process", ""], "-process"),
        (["-out", "socket", "-cmd", ""], "-cmd"),
        (["-stm", ""], "-stm"),
    ],
)
def test_empty_values(argv, opt):
    assert opt in usage_error(argv)


def test_bad_next_value_is_reported():
    assert "'[a,b'" in usage_error(["-next", "[a,b"])


@pytest.mark.parametrize("opt", ["-bogus", "-nxt", "next", "file.txt", "-", "-P", "-H", "-help"])
def test_unknown_options(opt):
    msg = usage_error([opt])
    assert repr(opt) in msg and "unknown" in msg


@pytest.mark.parametrize("opt", ["--next", "--root", "--p", "--port", "--h", "--conlrf"])
def test_double_dash_spelling(opt):
    msg = usage_error([opt, "x"])
    assert repr(opt) in msg and "one dash" in msg and opt[1:] in msg


def test_double_dash_unknown_option_is_plain_unknown():
    msg = usage_error(["--bogus"])
    assert "'--bogus'" in msg and "unknown" in msg


@pytest.mark.parametrize("opt", sorted(VALUE_OPTIONS) + ["-p"])
def test_missing_value(opt):
    msg = usage_error(["-w", opt])
    assert opt in msg and "needs a value" in msg


# Repeated options: src/beokit/nettee/options.py now lets the last one win, "as with
# getopt" (it used to raise "option X given twice").  These tests pin that behaviour.
@pytest.mark.parametrize(
    "argv, attr, value",
    [
        (["-w", "-w"], "wait_boot", True),
        (["-port", "1", "-port", "2"], "port", 2),
        (["-p", "1", "-port", "2"], "port", 2),
        (["-port", "1", "-p", "3"], "port", 3),
        (["-colrf", "-conlrf"], "colrf", True),
        (["-next", "a", "-next", "b"], "next", ((Endpoint("b"),),)),
        (["-v", "0", "-v", "7"], "verbose", 7),
        (ROOT + ["-in", "a", "-in", "b"], "inputs", ("b",)),
    ],
)
def test_repeated_options_last_one_wins(argv, attr, value):
    assert getattr(parse_args(argv), attr) == value


def test_repeated_option_bad_earlier_value_is_overridden():
    assert parse_args(["-port", "0", "-port", "9000"]).port == 9000


def test_repeated_option_bad_last_value_fails():
    assert "'0'" in usage_error(["-port", "9000", "-p", "0"])


def test_repeated_help_flag():
    assert parse_args(["-h", "-h"]).help is Help.MAIN


# ---------------------------------------------------------------- properties


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(sorted(VALUE_OPTIONS | FLAG_OPTIONS) + ["-p", "-conlrf"])
                | st.text(max_size=12), max_size=8))  # fmt: skip
def test_parse_args_only_raises_usage_error(argv):
    try:
        cfg = parse_args(argv)
    except UsageError:
        return
    assert isinstance(cfg, NetteeConfig)
    if cfg.help is None:
        assert 1 <= cfg.port <= 65534
        assert 0 <= cfg.verbose <= 31
        assert cfg.timeout >= 0
        assert not (cfg.root and not cfg.next)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 65534), st.integers(0, 31), st.floats(0, 1e6, allow_nan=False))
def test_numeric_values_round_trip(port, verbose, seconds):
    cfg = parse_args(["-port", str(port), "-v", str(verbose), "-t", repr(seconds)])
    assert (cfg.port, cfg.verbose, cfg.timeout) == (port, verbose, seconds)
