"""Manual pages (rendered by man -l), shell completion (loaded by bash), and the site
defaults of /etc/beokit/beo.toml (issue 25)."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from conftest import child_env, python

from beokit import cli, cliargs, completion, manpage, settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$BEOKIT_CONFIG_DIR: a private /etc/beokit for each test."""
    folder = tmp_path / "etc-beokit"
    folder.mkdir()
    monkeypatch.setenv("BEOKIT_CONFIG_DIR", str(folder))
    return folder


def beo(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "beokit.cli", *args], capture_output=True, text=True,
                          env=child_env(**env), timeout=60)  # fmt: skip


# ---- man pages


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("man1")
    written = manpage.write_pages(manpage.pages(cli.build_parser()), str(folder))
    return {Path(p).stem: Path(p) for p in written}


def test_one_page_per_command(pages: dict[str, Path]) -> None:
    sub = cliargs.subparsers_of(cli.build_parser())
    assert set(pages) == {"beo", "nettee", *(f"beo-{c}" for c in sub.choices)}


@pytest.mark.skipif(shutil.which("groff") is None, reason="needs groff")
def test_pages_have_no_roff_warnings(pages: dict[str, Path]) -> None:
    for name, path in pages.items():
        r = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(path)],
                           capture_output=True, text=True, timeout=30)  # fmt: skip
        assert r.returncode == 0 and r.stderr == "", f"{name}: {r.stderr}"


def _man_works() -> bool:
    """A real man-db (a minimized image's /usr/bin/man is a stub that renders nothing)."""
    if shutil.which("man") is None:
        return False
    r = subprocess.run(["man", "-l", "-"], input=".TH PROBE 1\n.SH NAME\nprobe \\- a page\n",
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    return r.returncode == 0 and "probe" in r.stdout


@pytest.mark.skipif(not _man_works(), reason="needs man (apt-get install man-db)")
@pytest.mark.parametrize(("page", "wants"), [
    ("beo", ["BEO(1)", "NAME", "SYNOPSIS", "beo-run(1)", "/etc/beokit/beo.toml"]),
    ("nettee", ["NETTEE(1)", "-secret_file PATH", "--version", "EXIT STATUS", "-hprocess"]),
    ("beo-vcluster", ["beo vcluster up", "--name PREFIX", "beo vcluster slow"]),
    ("beo-dshd", ["--metrics-port PORT", "--cluster-file FILE"]),
])  # fmt: skip
def test_man_renders(pages: dict[str, Path], page: str, wants: list[str]) -> None:
    r = subprocess.run(["man", "-l", str(pages[page])], capture_output=True, text=True,
                       env=child_env(MANWIDTH="100", MAN_KEEP_FORMATTING="0"),
                       timeout=30)  # fmt: skip
    assert r.returncode == 0, r.stderr
    text = re.sub(r".\x08", "", r.stdout).replace("\u2010", "-").replace("\u2212", "-")
    for want in wants:
        assert want in text, (want, text[:2000])


def test_beo_man_prints_a_page_by_command_name() -> None:
    r = beo("man", "run")
    assert r.returncode == 0 and r.stdout.startswith(".TH BEO-RUN 1")
    r = beo("man", "nosuch")
    assert r.returncode == 2 and r.stderr.startswith("beo man: bad page 'nosuch'")


# ---- completion


def complete(script: Path, words: str, function: str = "_beo") -> list[str]:
    """What bash completes for the command line ``words`` (a trailing space: a new word)."""
    code = (f"source {script}\nCOMP_WORDS=({words})\n"
            + ("COMP_WORDS+=('')\n" if words.endswith(" ") else "")
            + f"COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1))\n{function}\n"
            'printf "%s\\n" "${COMPREPLY[@]}"\n')  # fmt: skip
    r = subprocess.run(["bash", "--norc", "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    return r.stdout.split()


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("completion") / "beo.bash"
    r = subprocess.run([python, "-m", "beokit.cli", "completion", "bash"], capture_output=True,
                       text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    path.write_text(r.stdout)
    return path


@pytest.mark.parametrize(("words", "want"), [
    ("beo vc", ["vcluster"]),
    ("beo d", ["dsh", "dshd", "demo"]),
    ("beo vcluster ", ["up", "down", "status", "exec", "link", "kill", "slow"]),
    ("beo vcluster up --mt", ["--mtu"]),
    ("beo dshd --metrics", ["--metrics-port"]),
    ("beo run -R ", ["ssh", "rsh", "exec", "netns"]),
    ("beo config example ", ["beo", "boot", "dsh-cluster"]),
    ("beo vcluster link ", ["up", "down"]),
])  # fmt: skip
def test_bash_completes(bash_script: Path, words: str, want: list[str]) -> None:
    assert sorted(complete(bash_script, words)) == sorted(want)


def test_bash_completes_nettee(bash_script: Path) -> None:
    assert complete(bash_script, "nettee -sec", "_nettee") == ["-secret_file"]
    assert complete(bash_script, "nettee --v", "_nettee") == ["--version"]


def test_bash_completes_groups_with_nodeset(bash_script: Path, tmp_path: Path) -> None:
    """``@`` completes the ClusterShell groups that ``nodeset -l`` lists."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nodeset").write_text("#!/bin/sh\necho @compute\necho @gpu\n")
    (fake / "nodeset").chmod(0o755)
    code = f"PATH={fake}:$PATH; source {bash_script}; COMP_WORDS=(beo run @c); COMP_CWORD=2; " \
           '_beo; echo "${COMPREPLY[@]}"'
    r = subprocess.run(["bash", "--norc", "-c", code], capture_output=True, text=True, timeout=30)
    assert r.stdout.split() == ["@compute"], r.stderr


@pytest.mark.skipif(shutil.which("zsh") is None, reason="needs zsh")
def test_zsh_script_loads(tmp_path: Path) -> None:
    path = tmp_path / "beo.zsh"
    path.write_text(completion.script(cli.build_parser(), "zsh"))
    r = subprocess.run(["zsh", "-f", "-c", f"source {path}"], capture_output=True, text=True,
                       timeout=30)  # fmt: skip
    assert r.returncode == 0 and r.stderr == "", r.stderr


# ---- site defaults


def parse(*argv: str) -> object:
    return cli._parse(list(argv))[1]


def test_defaults_from_beo_toml(site: Path) -> None:
    (site / "beo.toml").write_text('[beo]\nsecret-file = "/etc/s"\n[dshd]\nfanout = 8\n'
                                   'cluster-file = "/x/c"\n[vcluster.up]\nmtu = 9000\n')  # fmt: skip
    args = parse("dshd")
    assert (args.fanout, args.cluster_file, args.secret_file) == (8, "/x/c", "/etc/s")
    assert parse("dshd", "--fanout", "3").fanout == 3  # the command line wins
    assert parse("dsh", "true").secret_file == "/etc/s"
    assert parse("vcluster", "up", "-n", "2").mtu == 9000
    assert parse("vcluster", "down").name == "bk"


@pytest.mark.parametrize(("text", "names"), [
    ("[dshd]\nnosuch = 1\n", "nosuch in"),
    ("[dshd]\nfanout = 0\n", "fanout in"),
    ("[dshd]\nbackground = 'yes'\n", "true or false"),
    ("[dshd\n", "bad TOML"),
])  # fmt: skip
def test_bad_defaults_are_one_line_naming_the_file(site: Path, text: str, names: str) -> None:
    (site / "beo.toml").write_text(text)
    r = beo("dshd", "--help", BEOKIT_CONFIG_DIR=str(site))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("beo dshd: ") and names in r.stderr and "beo.toml" in r.stderr
    # another command is not stopped by a bad table it does not read
    if "TOML" not in names:
        assert beo("dsh", "--help", BEOKIT_CONFIG_DIR=str(site)).returncode == 0


def test_every_key_of_the_example_is_an_option(site: Path) -> None:
    """The shipped beo.toml, every commented key switched on, is a valid config."""
    text = re.sub(r"^# ([a-z-]+ = )", r"\1", settings.example("beo"), flags=re.M)
    data = tomllib.loads(text)
    (site / "beo.toml").write_text(text)
    parser = cli.build_parser()
    for command in data:
        if command == settings.COMMON_TABLE:
            continue
        path = [command, *(k for k, v in data[command].items() if isinstance(v, dict))]
        settings.apply(cliargs.command_path(parser, path), data, "beo.toml")


@pytest.mark.parametrize(("kind", "source"), [("boot", "contrib/boot.example.toml"),
                                               ("dsh-cluster", "contrib/dsh.cluster.example"),
                                               ("beo", "contrib/beo.example.toml")])  # fmt: skip
def test_config_example_prints_the_shipped_file(kind: str, source: str) -> None:
    r = beo("config", "example", kind)
    assert r.returncode == 0 and r.stdout == (ROOT / source).read_text()


def test_config_show(site: Path) -> None:
    (site / "beo.toml").write_text("[run]\nfanout = 4\n")
    r = beo("config", "show", BEOKIT_CONFIG_DIR=str(site))
    assert r.returncode == 0 and "[run]\nfanout = 4" in r.stdout and str(site) in r.stdout
