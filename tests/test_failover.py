"""Chain formation with failover lists (-connf) and the continue-on-failure options."""

from __future__ import annotations

import json
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import child_env, sha256, spawn, wait_all

from beokit.nettee.localchain import free_port


def test_failover_list_routes_around_a_node_that_never_starts(tmp_path: Path,
                                                              source: Path) -> None:  # fmt: skip
    """-next [127.0.0.9,127.0.0.3] -connf 1: .9 never joins, .3 is used instead."""
    port = free_port(["127.0.0.2", "127.0.0.3", "127.0.0.9"])
    tip = spawn("-bind", "127.0.0.3", "-port", str(port), "-out", str(tmp_path / "c"), "-name",
                "c", env=child_env())  # fmt: skip
    mid = spawn("-bind", "127.0.0.2", "-port", str(port), "-next", "[127.0.0.9,127.0.0.3]",
                "-connf", "1", "-out", str(tmp_path / "b"), "-name", "b", env=child_env())  # fmt: skip
    t0 = time.monotonic()
    root = spawn("-root", "-port", str(port), "-next", "127.0.0.2", "-in", str(source),
                 "-report", str(tmp_path / "r.json"), env=child_env())  # fmt: skip
    assert wait_all([root, mid, tip], timeout=30) == [0, 0, 0]
    assert 1.0 <= time.monotonic() - t0 < 10
    assert sha256(tmp_path / "c") == sha256(source)
    names = [n["name"] for n in json.loads((tmp_path / "r.json").read_text())["nodes"]]
    assert names[1:] == ["b", "c"]


def test_no_candidate_joins_drops_the_branch_with_nnf(tmp_path: Path, source: Path) -> None:
    """Two branches; one has no live host: it is dropped (NNF), the other completes."""
    port = free_port(["127.0.0.2", "127.0.0.8", "127.0.0.9"])
    good = spawn("-bind", "127.0.0.2", "-port", str(port), "-out", str(tmp_path / "g"), "-name",
                 "good", env=child_env())  # fmt: skip
    root = spawn("-root", "-port", str(port), "-next", "127.0.0.2,[127.0.0.8,127.0.0.9]",
                 "-connf", "0.5", "-in", str(source), "-report", str(tmp_path / "r.json"),
                 env=child_env(), stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert wait_all([root, good], timeout=30) == [0, 0]  # handled: -connf allows a truncated tree
    err = root.stderr.read()
    assert "Failures detected in child 1 [127.0.0.8]: NNF" in err
    assert "Failures detected in chain: NNF" in err
    assert sha256(tmp_path / "g") == sha256(source)


def _slow_feeder(total_chunks: int = 400) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c",
                             "import sys,time\n"
                             f"for i in range({total_chunks}):\n"
                             "    sys.stdout.buffer.write(bytes([i % 251]) * 65536)\n"
                             "    sys.stdout.flush(); time.sleep(0.005)"],
                            stdout=subprocess.PIPE)  # fmt: skip


def _expected(total_chunks: int = 400) -> bytes:
    return b"".join(bytes([i % 251]) * 65536 for i in range(total_chunks))


def _wait_size(path: Path, size: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.stat().st_size >= size):
        assert time.monotonic() < deadline, f"{path} never reached {size} bytes"
        time.sleep(0.02)


def test_conwf_carries_on_past_a_dead_child(tmp_path: Path) -> None:
    """root -> [b, c]; c is killed mid-stream; with -conwf the root finishes b and names c."""
    port = free_port(["127.0.0.2", "127.0.0.3"])
    b = spawn("-bind", "127.0.0.2", "-port", str(port), "-out", str(tmp_path / "b"), "-name", "b",
              env=child_env())  # fmt: skip
    c = spawn("-bind", "127.0.0.3", "-port", str(port), "-out", str(tmp_path / "c"), "-name", "c",
              env=child_env())  # fmt: skip
    feeder = _slow_feeder()
    root = spawn("-root", "-conwf", "-port", str(port), "-next", "127.0.0.2,127.0.0.3", "-in", "-",
                 "-report", str(tmp_path / "r.json"), stdin=feeder.stdout, env=child_env(),
                 stderr=subprocess.PIPE, text=True)  # fmt: skip
    feeder.stdout.close()
    _wait_size(tmp_path / "c", 2 << 20)
    c.send_signal(signal.SIGKILL)
    codes = wait_all([root, b], timeout=60)
    c.wait()
    feeder.wait()
    assert codes == [0, 0]
    assert (tmp_path / "b").read_bytes() == _expected()
    report = json.loads((tmp_path / "r.json").read_text())
    by = {n["name"]: n for n in report["nodes"]}
    assert by["c"]["codes"] == ["NWF"] and by["b"]["codes"] == []
    assert "Failures detected in child 1 [c]: NWF" in root.stderr.read()


def test_conrf_finishes_locally_below_a_dead_parent(tmp_path: Path) -> None:
    """root -> b -> c -> d; b dies; c and d (with -conrf) end cleanly with what arrived."""
    port = free_port(["127.0.0.2", "127.0.0.3", "127.0.0.4"])
    d = spawn("-bind", "127.0.0.4", "-port", str(port), "-out", str(tmp_path / "d"), "-conrf",
              "-name", "d", env=child_env())  # fmt: skip
    c = spawn("-bind", "127.0.0.3", "-port", str(port), "-next", "127.0.0.4", "-out",
              str(tmp_path / "c"), "-conrf", "-name", "c", env=child_env(),
              stderr=subprocess.PIPE, text=True)  # fmt: skip
    b = spawn("-bind", "127.0.0.2", "-port", str(port), "-next", "127.0.0.3", "-out",
              str(tmp_path / "b"), "-name", "b", env=child_env())  # fmt: skip
    feeder = _slow_feeder()
    root = spawn("-root", "-port", str(port), "-next", "127.0.0.2", "-in", "-", "-report",
                 str(tmp_path / "r.json"), stdin=feeder.stdout, env=child_env(),
                 stderr=subprocess.PIPE, text=True)  # fmt: skip
    feeder.stdout.close()
    _wait_size(tmp_path / "d", 2 << 20)
    b.send_signal(signal.SIGKILL)
    codes = wait_all([root, c, d], timeout=30)
    b.wait()
    feeder.kill()
    feeder.wait()
    assert codes[0] == 1  # the root lost its only child and had no -conwf: collapse
    assert "b" in root.stderr.read()
    assert codes[1:] == [0, 0]  # handled: -conrf
    assert "-conrf: finishing locally" in c.stderr.read()
    # c and d hold the same prefix of the stream, and know it is a prefix
    got_c, got_d = (tmp_path / "c").read_bytes(), (tmp_path / "d").read_bytes()
    assert got_c == got_d and _expected().startswith(got_c) and len(got_c) < len(_expected())


def test_colrf_ends_the_stream_at_a_read_failure(tmp_path: Path) -> None:
    """The root's input is a TCP socket reset mid-stream: LRF; with -colrf the chain ends cleanly."""
    for colrf in (False, True):
        port = free_port(["127.0.0.2"])
        lst = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(lst.getsockname())
        server, _ = lst.accept()
        lst.close()
        out = tmp_path / f"b{int(colrf)}"
        b = spawn("-bind", "127.0.0.2", "-port", str(port), "-out", str(out), "-name", "b",
                  env=child_env())  # fmt: skip
        args = ["-root", "-port", str(port), "-next", "127.0.0.2", "-in", "-", "-report",
                str(tmp_path / "r.json")] + (["-colrf"] if colrf else [])  # fmt: skip
        root = spawn(*args, stdin=server.fileno(), env=child_env(), stderr=subprocess.PIPE,
                     text=True)  # fmt: skip
        server.close()

        def feed(client: socket.socket = client, out: Path = out) -> None:
            client.sendall(b"z" * (1 << 20))
            # the reset must come after the root read it all (a RST discards what is unread)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not (out.exists()
                                                       and out.stat().st_size >= 1 << 20):  # fmt: skip
                time.sleep(0.02)
            linger_zero = struct.pack("ii", 1, 0)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger_zero)
            client.close()  # RST: the root's next read fails with ECONNRESET

        t = threading.Thread(target=feed)
        t.start()
        codes = wait_all([root, b], timeout=30)
        t.join()
        err = root.stderr.read()
        assert "LRF" in err, err
        if colrf:
            assert codes == [0, 0]
            assert out.read_bytes() == b"z" * (1 << 20)
            report = json.loads((tmp_path / "r.json").read_text())
            assert report["nodes"][0]["codes"] == ["LRF"]
        else:
            assert codes == [1, 1]


def test_t_bounds_the_wait_for_a_child(tmp_path: Path) -> None:
    """A node with -t whose child never starts gives up (NNF) and the tree collapses."""
    port = free_port(["127.0.0.2", "127.0.0.3"])
    mid = spawn("-bind", "127.0.0.2", "-port", str(port), "-next", "127.0.0.3", "-t", "1",
                "-out", "none", "-name", "mid", env=child_env())  # fmt: skip
    t0 = time.monotonic()
    root = spawn("-root", "-port", str(port), "-next", "127.0.0.2", "-in", "/etc/services",
                 env=child_env(), stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert wait_all([root, mid], timeout=20) == [1, 1]
    assert time.monotonic() - t0 < 8
    err = root.stderr.read()
    assert "127.0.0.3" in err and "NNF" in err and "did not join within 1 s (-t)" in err


def test_conrf_below_a_dead_node_names_the_cut(tmp_path: Path) -> None:
    """root -> b -> c -> d, b dies: c (-conrf) ends the stream below it marked as cut;
    d learns its data is short (NRF) and c's failure report names both."""
    port = free_port(["127.0.0.2", "127.0.0.3", "127.0.0.4"])
    d = spawn("-bind", "127.0.0.4", "-port", str(port), "-out", str(tmp_path / "d"),
              "-name", "d", env=child_env(), stderr=subprocess.PIPE, text=True)  # fmt: skip
    c = spawn("-bind", "127.0.0.3", "-port", str(port), "-next", "127.0.0.4", "-out",
              str(tmp_path / "c"), "-conrf", "-name", "c", env=child_env(),
              stderr=subprocess.PIPE, text=True)  # fmt: skip
    b = spawn("-bind", "127.0.0.2", "-port", str(port), "-next", "127.0.0.3", "-out",
              str(tmp_path / "b"), "-name", "b", env=child_env())  # fmt: skip
    feeder = _slow_feeder()
    root = spawn("-root", "-port", str(port), "-next", "127.0.0.2", "-in", "-",
                 stdin=feeder.stdout, env=child_env(), stderr=subprocess.DEVNULL)  # fmt: skip
    feeder.stdout.close()
    _wait_size(tmp_path / "d", 2 << 20)
    b.send_signal(signal.SIGKILL)
    codes = wait_all([root, c, d], timeout=30)
    b.wait()
    feeder.kill()
    feeder.wait()
    # d did not ask to carry on: its short file is an unhandled failure (exit 1), and c,
    # which sums up the tree below it, exits 1 for it too; nothing ends silently short
    assert codes == [1, 1, 1]
    c_err, d_err = c.stderr.read(), d.stderr.read()
    assert "the stream was cut upstream" in d_err
    assert "Failures detected in child 0 [d]: NRF" in c_err
    assert "node d: NRF (stream cut upstream" in c_err
