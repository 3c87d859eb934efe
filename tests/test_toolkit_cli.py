"""One command line (issue 25): beo run's options anywhere before ``--`` and its
node sets, the canonical long options of run and cast (``--hostfile``,
``--fanout``, ``--dolly``) with the old spellings deprecated, plurals in the
summaries, and the option names of dsh/dshd/top."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from conftest import child_env, python

from beokit import cli, cliargs


@pytest.fixture(autouse=True)
def no_site_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BEOKIT_CONFIG_DIR", str(tmp_path_factory.mktemp("etc-beokit")))


def beo(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "beokit.cli", *args], capture_output=True, text=True,
                          env=child_env(COLUMNS="200"), timeout=60, cwd=cwd)  # fmt: skip


def summary(stderr: str) -> str:
    return [line for line in stderr.splitlines() if " ok, " in line][-1]


# -- beo run: options anywhere before --, several node sets ----------------------------
@pytest.mark.parametrize(("argv", "gather", "rest"), [
    (["-R", "exec", "n[1-2]", "-b", "--", "echo", "hi"], True, ["n[1-2]", "--", "echo", "hi"]),
    (["n1", "-b", "n2", "--timeout", "5", "--", "echo", "-b"], True,
     ["n1", "n2", "--", "echo", "-b"]),
    (["n1", "echo", "-b"], False, ["n1", "echo", "-b"]),  # no --: the command as before
])  # fmt: skip
def test_run_parses_options_before_the_dashes(argv: list[str], gather: bool,
                                              rest: list[str]) -> None:  # fmt: skip
    args = cli.build_parser("run").parse_args(["run", *argv])
    assert (args.gather, args.rest) == (gather, rest)


def test_run_gathers_with_b_after_the_nodeset() -> None:
    """Before: `-b -- echo hi` was the command (/bin/sh: 0: Illegal option -)."""
    r = beo("run", "-R", "exec", "127.0.0.[2-3]", "-b", "--", "echo", "hi")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "-" * 15 + "\n127.0.0.[2-3] (2)\n" + "-" * 15 + "\nhi\n"


def test_run_hostfile_and_nodesets_are_joined(tmp_path: Path) -> None:
    """Before: `-f hosts.txt 127.0.0.9 -- echo hi` ran `127.0.0.9 -- echo hi`."""
    (tmp_path / "hosts.txt").write_text("127.0.0.4\n")
    r = beo("run", "-R", "exec", "--hostfile", "hosts.txt", "127.0.0.9", "-b", "127.0.0.5",
            "--", "echo", "hi", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "127.0.0.[4-5,9] (3)\n" in r.stdout and r.stdout.endswith("\nhi\n")
    assert "deprecated" not in r.stderr


def test_run_f_still_works_with_a_deprecation_note(tmp_path: Path) -> None:
    (tmp_path / "hosts.txt").write_text("127.0.0.4\n")
    r = beo("run", "-R", "exec", "-f", "hosts.txt", "--", "echo", "hi", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "127.0.0.4: hi\n"
    assert r.stderr.startswith("beo run: -f is deprecated: say --hostfile FILE"), r.stderr
    r = beo("run", "-R", "exec", "-f", "hosts.txt", "--timeout", "nan", "--", "true",
            cwd=tmp_path)  # bad input: still one line, the note not among it  # fmt: skip
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr


def test_run_option_after_the_nodeset_without_dashes_is_refused() -> None:
    """`beo run n1 -b echo hi` would run `-b echo hi`: one line naming -b, status 2."""
    r = beo("run", "-R", "exec", "127.0.0.2", "-b", "echo", "hi")
    assert r.returncode == 2 and r.stdout == "", r.stdout
    assert r.stderr.count("\n") == 1 and "bad command '-b'" in r.stderr, r.stderr
    assert r.stderr.startswith("beo run: ")


def test_run_unknown_option_after_the_nodeset_names_the_subcommand() -> None:
    r = beo("run", "-R", "exec", "127.0.0.2", "--bogus", "--", "true")
    assert r.returncode == 2 and r.stderr == "beo run: unrecognized arguments: --bogus\n"


def test_run_summary_plurals() -> None:
    r = beo("run", "-R", "exec", "127.0.0.2", "--", "true")
    assert r.returncode == 0, r.stderr
    line = summary(r.stderr)
    assert line.startswith("beo run: 1 host, 1 ok, 0 failed in "), line
    assert line.endswith("1 launch step)"), line
    r = beo("run", "-R", "exec", "127.0.0.[2-3]", "--", "true")
    assert summary(r.stderr).startswith("beo run: 2 hosts, 2 ok"), r.stderr


def test_run_dry_run_plurals() -> None:
    r = beo("run", "--dry-run", "-R", "exec", "127.0.0.2", "--", "true")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == ("beo run --dry-run: 1 host, flat, k=32, 1 launch step, "
                                        "-R exec")  # fmt: skip
    r = beo("run", "--dry-run", "-R", "exec", "--tree", "-k", "2", "127.0.0.2", "--", "true")
    assert "root launches 1 group," in r.stdout and "0 agents, 1 leaf " in r.stdout, r.stdout
    r = beo("run", "--dry-run", "-R", "exec", "--tree", "-k", "2", "127.0.0.[2-6]", "--", "true")
    assert "root launches 4 groups" in r.stdout and "1 agent, 4 leaves" in r.stdout, r.stdout


def test_run_help_says_where_options_go() -> None:
    text = " ".join(beo("run", "--help").stdout.split())
    assert "options go anywhere before it" in text
    assert "-f FILE is deprecated" in text


# -- beo cast: --dolly, -f deprecated, -k/--fanout ------------------------------------
def dolly_conf(tmp: Path) -> Path:
    src = tmp / "img"
    src.write_bytes(b"x" * 4096)
    conf = tmp / "dolly.conf"
    conf.write_text(f"infile {src}\noutfile {tmp}/out/{{host}}\nserver localhost\n"
                    "firstclient 127.0.3.2\nlastclient 127.0.3.3\nclients 2\n"
                    "127.0.3.2\n127.0.3.3\nendconfig\n")  # fmt: skip
    return conf


def test_cast_k_is_the_fanout_as_in_run() -> None:
    args = cli.build_parser("cast").parse_args(["cast", "-k", "4", "img", "n1", "--to", "/x"])
    assert args.fanout == 4
    r = beo("cast", "--dry-run", "-R", "exec", "-k", "3", "/etc/hostname", "127.0.3.[2-9]",
            "--to", "/tmp/x")  # fmt: skip
    assert r.returncode == 0 and "a tree of fanout 3" in r.stdout, r.stderr


def test_cast_dolly_long_and_f_deprecated(tmp_path: Path) -> None:
    conf = dolly_conf(tmp_path)
    r = beo("cast", "--dry-run", "-R", "exec", "--dolly", str(conf))
    assert r.returncode == 0 and "on 2 node(s)" in r.stdout, r.stderr
    assert r.stderr == ""
    r = beo("cast", "--dry-run", "-R", "exec", "-f", str(conf))
    assert r.returncode == 0 and "on 2 node(s)" in r.stdout, r.stderr
    assert r.stderr == ("beo cast: -f is deprecated: say --dolly FILE (-f is a host file in beo "
                        "run, the fanout in clush and pdsh)\n")  # fmt: skip
    r = beo("cast", "-f", str(tmp_path / "nosuch.conf"))  # bad input: one line
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "nosuch.conf" in r.stderr


def test_cast_help_names_dolly_and_the_deprecation() -> None:
    text = " ".join(beo("cast", "--help").stdout.split())
    assert "-f FILE, --dolly FILE" in text and "-f FILE still works, deprecated" in text
    assert "-k K, --fanout K" in text and "--hostfile FILE" in text
    assert "beo cast --dolly dolly.conf" in text


# -- the same long option for the same thing --------------------------------------------
def long_options(command: str) -> set[str]:
    parser = cliargs.subparsers_of(cli.build_parser(command)).choices[command]
    return {o for a in parser._actions for o in a.option_strings if o.startswith("--")}


@pytest.mark.parametrize(("command", "want"), [
    ("run", {"--hostfile", "--fanout", "--timeout", "--connect-timeout", "--json"}),
    ("cast", {"--hostfile", "--fanout", "--connect-timeout", "--json", "--port"}),
    ("dsh", {"--secret-file", "--timeout", "--json", "--status-port", "--best-port"}),
    ("top", {"--secret-file", "--timeout", "--json", "--status-port", "--best-port"}),
    ("dshd", {"--secret-file", "--fanout", "--metrics-port", "--status-port", "--best-port"}),
    ("exec", {"--secret-file", "--timeout", "--port"}),
    ("boot", {"--metrics-port", "--verbose"}),
])  # fmt: skip
def test_the_long_options_of_the_convention(command: str, want: set[str]) -> None:
    have = long_options(command)
    assert want <= have, want - have
    assert have & set(cliargs.OPTIONS) >= want & set(cliargs.OPTIONS)


@pytest.mark.parametrize(("command", "note"), [
    ("dshd", "-t is deprecated"), ("dsh", "-t is deprecated"), ("top", "-t is deprecated"),
    ("dsh", "HOST:PORT is deprecated"), ("top", "HOST:PORT is deprecated"),
])  # fmt: skip
def test_old_short_options_are_marked_deprecated(command: str, note: str) -> None:
    text = " ".join(beo(command, "--help").stdout.split())
    assert note in text, text


def test_short_options_mean_one_thing() -> None:
    """-k is the fanout, -b gathers (run) or backgrounds (dshd: its 1998 letter), -v
    is verbose, -t is a timeout where it is not deprecated."""
    meaning: dict[str, set[str]] = {}
    for command in ("run", "cast", "exec", "boot"):
        parser = cliargs.subparsers_of(cli.build_parser(command)).choices[command]
        for a in parser._actions:
            shorts = [o for o in a.option_strings if re.fullmatch(r"-\w", o)]
            longs = [o for o in a.option_strings if o.startswith("--")]
            for s in shorts:
                meaning.setdefault(s, set()).add(longs[0] if longs else "")
    assert meaning["-k"] == {"--fanout"}
    assert meaning["-t"] == {"--timeout"}
    assert meaning["-v"] == {"--verbose"}


def test_run_site_hostfile_is_the_hosts_only_when_the_line_names_none(tmp_path: Path) -> None:
    """[run] hostfile in beo.toml: the hosts of `beo run -- CMD`; a NODESET on the line
    replaces it (before: `beo run n1 -- CMD` ran `n1 -- CMD` on the file's hosts)."""
    import os

    (tmp_path / "hosts.txt").write_text("127.0.0.4\n")
    etc = Path(os.environ["BEOKIT_CONFIG_DIR"])
    (etc / "beo.toml").write_text(f'[run]\nrcmd = "exec"\nhostfile = "{tmp_path}/hosts.txt"\n')
    try:
        r = beo("run", "127.0.0.7", "--", "echo", "hi")
        assert (r.returncode, r.stdout) == (0, "127.0.0.7: hi\n"), r.stderr
        r = beo("run", "--", "echo", "hi")
        assert (r.returncode, r.stdout) == (0, "127.0.0.4: hi\n"), r.stderr
        r = beo("run", "--hostfile", str(tmp_path / "hosts.txt"), "127.0.0.7", "--", "echo", "hi")
        assert (r.returncode, r.stdout) == (0, "127.0.0.4: hi\n127.0.0.7: hi\n"), r.stderr
    finally:
        (etc / "beo.toml").unlink()
