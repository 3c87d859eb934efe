"""The nettee command line as a user meets it: bad input, help, messages, names."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import child_env, run_nettee, spawn, wait_all

from beokit.net import free_port
from beokit.nettee.localchain import start_chain

BAD = [
    (["-root", "-next", "a,[b,c", "-in", "/etc/hostname"], "'a,[b,c'"),
    (["-root", "-next", "a,b,c,d,e,f,g,h,i", "-in", "/etc/hostname"], "9 hostlists"),
    (["-root", "-next", "a,_EOC_", "-in", "/etc/hostname"], "'_EOC_'"),
    (["-root", "-next", "a", "-cmd", "tar cf -", "-process", "sort", "-in", "socket"],
     "-cmd and -process"),
    (["-next", "a", "-in", "socket", "-out", "socket", "-cmd", "tar"], "both -in and -out"),
    (["-root", "-next", "a", "-port", "70000"], "'70000'"),
    (["-root", "-next", "a", "-port", "0"], "'0'"),
    (["-root", "-next", "a:99999"], "'99999'"),
    (["-root", "-next", "a", "-in", "/nonexistent/input"], "'/nonexistent/input'"),
    (["-next", "a", "-out", "/nonexistent/dir/out"], "'/nonexistent/dir/out'"),
    (["-root", "-next", "a", "-in", "/"], "is a directory"),
    (["-bogus"], "'-bogus'"),
    (["--next", "a"], "one dash"),
    (["-next"], "-next needs a value"),
    (["-v", "99"], "'99'"),
    (["-t", "-1"], "'-1'"),
    (["-buf_size", "12"], "'12'"),
    (["-flow", "sideways"], "'sideways'"),
    (["-root", "-in", "/etc/hostname"], "-root needs -next"),
    (["-next", "a", "-in", "/etc/hostname"], "non-root node takes local input only with -process"),
    (["-secret_file", "/nonexistent/secret"], "'/nonexistent/secret'"),
    (["-stm", "EOS", "-buf_minwrite", "2"], "-buf_minwrite 2"),
    (["-flow", "pull", "-next", "a"], "-flow pull may only be used with -process"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "names"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_clear_line_and_exit_2(args: list[str], names: str,
                                                tmp_path: Path) -> None:  # fmt: skip
    r = run_nettee("-bind", "127.0.0.2", *args, env=child_env(), timeout=10)
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert err.count("\n") == 1 and err.startswith("nettee: "), err
    assert names in err, err
    assert r.stdout == b""


def test_bad_input_starts_nothing(tmp_path: Path) -> None:
    """A bad -out on a receiver: no port is bound, no file is made."""
    port = free_port(["127.0.0.2"])  # (a fixed port was once held by another test's process)
    r = run_nettee("-bind", "127.0.0.2", "-port", str(port), "-out", str(tmp_path / "x" / "y"),
                   env=child_env())  # fmt: skip
    assert r.returncode == 2
    for p in (port, port + 1):
        with socket.socket() as s:
            s.bind(("127.0.0.2", p))  # still free
    assert not (tmp_path / "x").exists()


def test_empty_secret_is_refused() -> None:
    r = run_nettee("-root", "-next", "a", "-in", "/etc/hostname", env=child_env(NETTEE_SECRET=""))
    assert r.returncode == 2 and "NETTEE_SECRET is set but empty" in r.stderr.decode()


@pytest.mark.parametrize("opt", ["-h", "-hexamples", "-herrors", "-hprocess", "-i"])
def test_help_texts(opt: str) -> None:
    r = run_nettee(opt)
    out = r.stdout.decode()
    assert r.returncode == 0 and len(out) > 200
    if opt == "-h":
        for o in ("-next", "-connf", "-buf_maxwrite", "-colrf", "-stm", "-secret_file"):
            assert o in out
    if opt == "-herrors":
        for code in ("NONE", "NWF", "LWF", "NRF", "LRF", "BBC", "BSTAT", "NNF"):
            assert code in out


def test_beo_help_lists_commands() -> None:
    from conftest import python

    r = subprocess.run([python, "-m", "beokit.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "demo" in r.stdout


def test_verbose_bits_and_log_file(tmp_path: Path, source: Path) -> None:
    chain = start_chain(source, 1, tmp_path, root_args=["-v", str(2 | 4 | 16)], verbose=0,
                        env=child_env())  # fmt: skip
    assert chain.wait() == [0, 0]
    text = chain.log_paths[0].read_text()
    assert "role root" in text  # bit 2: settings
    assert "Failures detected in chain: NONE" in text  # bit 4: messages
    assert all(line.startswith("[127.0.0.1] nettee: ") for line in text.splitlines())  # bit 16
    assert chain.log_paths[1].read_text() == ""  # -v 0 on the receiver


def test_periodic_status_bit_8(tmp_path: Path) -> None:
    feeder = subprocess.Popen(["bash", "-c", "for i in $(seq 30); do head -c 100000 /dev/zero;"
                               " sleep 0.1; done"], stdout=subprocess.PIPE)  # fmt: skip
    chain = start_chain("-", 1, tmp_path, root_args=["-v", "9"], env=child_env(),
                        stdin=feeder.stdout)  # fmt: skip
    feeder.stdout.close()
    assert chain.wait() == [0, 0]
    feeder.wait()
    assert "MB/s" in chain.log_paths[0].read_text()


@pytest.mark.parametrize(
    ("env", "args", "want"),
    [({"MYHOSTNAME": "my", "HOSTNAME": "host"}, [], "my"),
     ({"HOSTNAME": "host"}, [], "host"),
     ({"MYHOSTNAME": "my"}, ["-name", "given"], "given")],
)  # fmt: skip
def test_name_order(env: dict, args: list[str], want: str, port: int, tmp_path: Path) -> None:
    base = child_env()
    base.pop("MYHOSTNAME", None)
    base.pop("HOSTNAME", None)
    base.update(env)
    # no -bind: with one, the address is the default name (test_name_defaults_to_the_bind_address)
    r = run_nettee("-port", str(port), "-t", "0.3", "-v", "17", *args, env=base)
    assert f"[{want}] nettee:" in r.stderr.decode()


def test_name_falls_back_to_gethostname(port: int) -> None:
    base = child_env()
    base.pop("MYHOSTNAME", None)
    base.pop("HOSTNAME", None)
    r = run_nettee("-port", str(port), "-t", "0.3", "-v", "17", env=base)
    assert f"[{socket.gethostname()}] nettee:" in r.stderr.decode()


@pytest.mark.parametrize("args, want", [([], "127.0.0.2"), (["-name", "given"], "given")])
def test_name_defaults_to_the_bind_address(args: list[str], want: str, port: int) -> None:
    """Several nodes on one machine: -bind without -name names the node by its address,
    whatever $MYHOSTNAME, $HOSTNAME and the host name say (issue 20)."""
    r = run_nettee("-bind", "127.0.0.2", "-port", str(port), "-t", "0.3", "-v", "17", *args,
                   env=child_env(MYHOSTNAME="my", HOSTNAME="host"))  # fmt: skip
    assert f"[{want}] nettee:" in r.stderr.decode()


def test_reports_name_nodes_on_one_machine_apart(tmp_path: Path, source: Path, port: int) -> None:
    """Three receivers on one machine without -name (the host name would call all three
    the same): the root's lines and -report name each by its -bind address, with "addr"
    beside the name; with -name the address is put beside it."""
    env = child_env(MYHOSTNAME="vm", HOSTNAME="vm")
    tips = [spawn("-bind", f"127.0.0.{i}", "-port", str(port), "-out", "none", "-t", "30",
                  *(["-name", "named"] if i == 4 else []), env=env) for i in (2, 3, 4)]  # fmt: skip
    root = spawn("-root", "-port", str(port), "-next", "127.0.0.2,127.0.0.3,127.0.0.4:" + str(port),
                 "-in", str(source), "-v", "5", "-name", "root", "-report",
                 str(tmp_path / "r.json"), env=env, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert wait_all([root, *tips]) == [0, 0, 0, 0]
    err = root.stderr.read()
    assert "Failures detected in child 0 [127.0.0.2]: NONE" in err
    assert "Failures detected in child 1 [127.0.0.3]: NONE" in err
    assert f"node named: {source.stat().st_size} bytes in" in err
    assert f"NONE at 127.0.0.4:{port}" in err
    assert "vm" not in err
    nodes = json.loads((tmp_path / "r.json").read_text())["nodes"]
    assert [(n["name"], n["addr"]) for n in nodes] == [
        ("root", ""), ("127.0.0.2", "127.0.0.2"), ("127.0.0.3", "127.0.0.3"),
        ("named", f"127.0.0.4:{port}")]  # fmt: skip


def test_second_parent_is_turned_away(tmp_path: Path, source: Path, port: int) -> None:
    """Once a node has its parent, another would-be parent waits (it is busy), never joins."""
    tip = spawn("-bind", "127.0.0.2", "-port", str(port), "-out", str(tmp_path / "o"),
                env=child_env())  # fmt: skip
    feeder = subprocess.Popen(["bash", "-c", "head -c 1000; sleep 3"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE)  # fmt: skip
    first = spawn("-root", "-port", str(port), "-next", "127.0.0.2", "-in", "-",
                  stdin=feeder.stdout, env=child_env())  # fmt: skip
    feeder.stdin.write(b"a" * 1000)
    feeder.stdin.close()
    import time

    time.sleep(1)
    second = spawn("-root", "-port", str(port), "-next", "127.0.0.2", "-in", str(source),
                   "-connf", "1", env=child_env(), stderr=subprocess.PIPE, text=True)  # fmt: skip
    codes = wait_all([first, tip, second], timeout=20)
    feeder.wait()
    assert codes[0] == 0 and codes[1] == 0
    assert codes[2] == 1  # -connf dropped its only branch: nothing was delivered
    err = second.stderr.read()
    assert "NNF" in err and "no child joined: nothing was delivered" in err
    assert (tmp_path / "o").read_bytes() == b"a" * 1000
    assert os.path.exists(tmp_path / "o")


def test_demo_runs_a_verified_cast(tmp_path: Path) -> None:
    """The README's first command: beo cast of a generated image, checked on its own."""
    r = subprocess.run([sys.executable, "-m", "beokit.cli", "demo", "--size", "8M", "-n", "3",
                        "--keep", str(tmp_path)], capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all 3 copies are byte-identical" in " ".join(r.stdout.split())
    outs = sorted(p.name for p in tmp_path.glob("*.out"))
    assert outs == ["127.0.0.2.out", "127.0.0.3.out", "127.0.0.4.out"]
    assert all(p.stat().st_size == 8 << 20 for p in tmp_path.glob("*.out"))
