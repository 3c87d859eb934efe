"""One toolkit (issue 25): the umbrella's help and errors, options anywhere before
``--``, nettee's --help/--version, plurals."""

from __future__ import annotations

import re
import subprocess

import pytest
from conftest import child_env, python, run_nettee
from vcluster_fixture import needs_vcluster, vcluster  # noqa: F401

from beokit import cli, cliargs
from beokit.vcluster import cli as vcluster_cli


@pytest.fixture(autouse=True)
def no_site_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No /etc/beokit/beo.toml of the machine running the tests changes a default."""
    monkeypatch.setenv("BEOKIT_CONFIG_DIR", str(tmp_path_factory.mktemp("etc-beokit")))


def beo(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    env = env or child_env(COLUMNS="80")
    return subprocess.run([python, "-m", "beokit.cli", *args], capture_output=True, text=True,
                          env=env, timeout=60, **kw)  # fmt: skip


def fails_with(capsys: pytest.CaptureFixture, *argv: str) -> str:
    """``beo ARGV`` in this process: exit 2 and one line on stderr, returned."""
    with pytest.raises(SystemExit) as exc:
        cli.main(list(argv))
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert err.count("\n") == 1, err
    return err


def test_help_lists_the_commands_in_the_stated_order() -> None:
    r = beo("--help")
    assert r.returncode == 0, r.stderr
    listed = re.findall(r"^    (\w+)", r.stdout, re.M)
    known = [c for c in cliargs.COMMAND_ORDER if c in listed]
    assert listed[: len(known)] == known  # then any command not in the stated order
    assert {"boot", "run", "cast", "dsh", "dshd", "vcluster", "config", "man"} <= set(listed)


@pytest.mark.parametrize("command", ["dsh", "dshd", "top", "vcluster", "config", "man"])
def test_help_is_wrapped(command: str) -> None:
    """Descriptions used to be single lines of 300+ characters (dsh, dshd)."""
    r = beo(command, "--help")
    assert r.returncode == 0, r.stderr
    long = [line for line in r.stdout.splitlines() if len(line) > 80]
    assert not long, long


@pytest.mark.parametrize("action", ["status", "link", "kill", "slow", "exec", "up", "down"])
def test_every_vcluster_action_has_a_description(action: str) -> None:
    sub = cliargs.subparsers_of(cli.build_parser("vcluster"))
    vc = sub.choices["vcluster"]
    parser = cliargs.subparsers_of(vc).choices[action]
    assert parser.description and len(parser.description) > 40


@pytest.mark.parametrize(("argv", "prefix"), [
    (["vcluster", "exec", "host1", "--bogus", "--", "true"], "beo vcluster exec: "),
    (["dsh", "--bogus", "true"], "beo dsh: "),
    (["dshd", "--bogus"], "beo dshd: "),
    (["vcluster", "status", "extra"], "beo vcluster status: "),
    (["config", "example", "nosuch"], "beo config example: "),
])  # fmt: skip
def test_errors_name_the_subcommand(capsys: pytest.CaptureFixture, argv: list[str],
                                    prefix: str) -> None:  # fmt: skip
    err = fails_with(capsys, *argv)
    assert err.startswith(prefix), err
    assert not err.startswith("beo: ")


def test_vcluster_exec_takes_options_before_the_dashes() -> None:
    args = cli.build_parser("vcluster").parse_args(
        ["vcluster", "exec", "host1", "--name", "nc", "--", "echo", "--name", "hi"])
    assert (args.host, args.name, args.cmd) == ("host1", "nc", ["echo", "--name", "hi"])


def test_vcluster_exec_uses_the_named_cluster(capsys: pytest.CaptureFixture, tmp_path) -> None:
    """The --name after HOST is honoured: the error names the cluster asked for."""
    status = cli.main(["vcluster", "exec", "host1", "--name", "nozz", "--", "true"])
    err = capsys.readouterr().err
    assert status != 0 and "'nozz'" in err, err


@needs_vcluster
def test_vcluster_exec_runs_in_the_cluster_named_after_host(vcluster) -> None:  # noqa: F811
    vc = vcluster(n=1, prefix="bktk")
    r = beo("vcluster", "exec", "host1", "--name", "bktk", "--", "ip", "-br", "addr", "show",
            "eth0")  # fmt: skip
    assert r.returncode == 0 and vc.addr(1) in r.stdout, r.stderr


def test_vcluster_up_follow_up_keeps_the_name() -> None:
    line = vcluster_cli.follow_up("nc")
    assert "exec --name nc host1 -- CMD" in line and "down --name nc" in line
    assert "--name" not in vcluster_cli.follow_up("bk")


@pytest.mark.parametrize(("argv", "want"), [
    (["gcc", "-c", "foo.c"], {"cmd": ["gcc", "-c", "foo.c"], "verbose": False}),
    (["gcc", "-v", "--", "-c", "foo.c"], {"cmd": ["gcc", "-c", "foo.c"], "verbose": True}),
    (["-n", "--", "ls", "--", "-x"], {"cmd": ["ls", "--", "-x"], "no_stdin": True}),
    (["ls", "-n", "-v", "--"], {"cmd": ["ls"], "no_stdin": True, "verbose": True}),
])  # fmt: skip
def test_dsh_options_anywhere_before_the_dashes(argv: list[str], want: dict) -> None:
    args = cli.build_parser("dsh").parse_args(["dsh", *argv])
    assert {k: getattr(args, k) for k in want} == want


def test_options_before_dashes_needs_a_command_positional() -> None:
    parser = cli.build_parser("demo")
    with pytest.raises(ValueError):
        cliargs.options_before_dashes(parser)


def test_plural() -> None:
    assert cliargs.plural(1, "host") == "1 host"
    assert cliargs.plural(0, "host") == "0 hosts"
    assert cliargs.plural(2, "switch", "switches") == "2 switches"


@pytest.mark.parametrize(("opt", "text"), [("--help", "usage: nettee"),
                                           ("--version", "nettee (beokit)")])  # fmt: skip
def test_nettee_long_help_and_version(opt: str, text: str) -> None:
    r = run_nettee(opt, env=child_env())
    assert r.returncode == 0, r.stderr
    assert text in r.stdout.decode()


def test_nettee_long_alias_is_not_taken_from_a_value() -> None:
    """``-name --help`` names the node --help; the single-dash interface is unchanged."""
    from beokit.nettee.cli import long_aliases

    assert long_aliases(["-name", "--help", "--version"]) == ["-name", "--help", "-i"]
    assert long_aliases(["-p", "9", "--help"]) == ["-p", "9", "-h"]
    r = run_nettee("--next", "a", env=child_env())
    assert r.returncode == 2 and "one dash" in r.stderr.decode()


def test_beo_version() -> None:
    r = beo("--version")
    assert r.returncode == 0 and r.stdout.startswith("beokit ")


def test_keep_dashes_for_a_nodeset_then_command_remainder() -> None:
    """The shape of ``beo run NODESET -- COMMAND`` (one REMAINDER): options after
    the node set are options, the ``--`` stays to split node set from command."""
    import argparse

    from beokit.errors import OneLineParser

    parser = OneLineParser(prog="beo x")
    parser.add_argument("-b", action="store_true")
    parser.add_argument("-f")
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    cliargs.options_before_dashes(parser, keep_dashes=True)
    args = parser.parse_args(["n[1-2]", "-b", "--", "echo", "-b"])
    assert (args.b, args.rest) == (True, ["n[1-2]", "--", "echo", "-b"])
    args = parser.parse_args(["-f", "hosts", "127.0.0.9", "--", "echo"])
    assert (args.f, args.rest) == ("hosts", ["127.0.0.9", "--", "echo"])
    assert parser.parse_args(["n1", "echo", "-b"]).rest == ["n1", "echo", "-b"]
