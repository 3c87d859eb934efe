"""The callback channel of beo cast: receivers prove the secret to the root and back.

Real sockets and a real receiver process (``python -m beokit.cast.receiver``):
wrong MACs, strangers, replays and second connections for a host are refused,
and a receiver refuses a root that cannot prove the secret.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from beokit.cast import channel
from beokit.cast.hub import Hub, Receiver

SECRET = os.urandom(32).hex()


def _lines(conn: socket.socket):  # type: ignore[no-untyped-def]
    f = conn.makefile("rb")
    while line := f.readline():
        yield json.loads(line)


def _hub(*hosts: str) -> tuple[Hub, dict[str, Receiver]]:
    receivers = {h: Receiver(h) for h in hosts}
    return Hub(SECRET, receivers, "127.0.0.1"), receivers


def _connect(hub: Hub) -> tuple[socket.socket, dict]:
    host, port = hub.address.rsplit(":", 1)
    conn = socket.create_connection((host, int(port)), timeout=5)
    challenge = json.loads(conn.makefile("rb").readline())
    return conn, challenge


def _closed(conn: socket.socket) -> bool:
    conn.settimeout(5)
    try:
        return conn.recv(1) == b""
    except ConnectionResetError:
        return True


def test_macs_bind_role_nonces_and_host() -> None:
    m = channel.channel_mac(SECRET, "node", "a", "b", "n1")
    assert channel.mac_ok(SECRET, m, "node", "a", "b", "n1")
    for args in (("root", "a", "b", "n1"), ("node", "b", "a", "n1"), ("node", "a", "b", "n2")):
        assert not channel.mac_ok(SECRET, m, *args)
    assert not channel.mac_ok("0" * 64, m, "node", "a", "b", "n1")
    assert not channel.mac_ok(SECRET, None, "node", "a", "b", "n1")


def test_hub_admits_a_receiver_that_proves_the_secret() -> None:
    hub, receivers = _hub("n1", "n2")
    try:
        conn, ch = _connect(hub)
        assert ch["t"] == "challenge"
        mine = os.urandom(16).hex()
        hi = {"t": "hi", "host": "n1", "nonce": mine,
              "mac": channel.channel_mac(SECRET, "node", ch["nonce"], mine, "n1")}  # fmt: skip
        conn.sendall((json.dumps(hi) + "\n").encode())
        msgs = _lines(conn)
        ok = next(msgs)
        assert ok["t"] == "ok" and channel.mac_ok(SECRET, ok["mac"], "root", mine, ch["nonce"], "n1")
        conn.sendall(b'{"t": "up", "host": "n1"}\n')
        assert receivers["n1"].answered.wait(5) and receivers["n1"].hello["t"] == "up"
        assert receivers["n1"].send({"t": "go", "args": []})
        assert next(msgs) == {"t": "go", "args": []}
        # a second connection for n1, even with a valid MAC, is refused
        conn2, ch2 = _connect(hub)
        hi2 = dict(hi, mac=channel.channel_mac(SECRET, "node", ch2["nonce"], mine, "n1"))
        conn2.sendall((json.dumps(hi2) + "\n").encode())
        assert _closed(conn2)
        conn.shutdown(socket.SHUT_RDWR)  # the receiver goes away: the root sees the end
        conn.close()
        assert receivers["n1"].finished.wait(5)
    finally:
        hub.close()
    assert hub.refused == 1


@pytest.mark.parametrize("case", ["wrong secret", "replay", "stranger host", "garbage",
                                  "silent"])  # fmt: skip
def test_hub_refuses_without_a_word(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Hub, "HELLO_TIMEOUT", 1.0)
    hub, receivers = _hub("n1")
    try:
        conn, ch = _connect(hub)
        mine = os.urandom(16).hex()
        nonce, secret, host = ch["nonce"], SECRET, "n1"
        if case == "wrong secret":
            secret = os.urandom(32).hex()
        elif case == "replay":
            nonce = os.urandom(16).hex()  # a MAC made for another challenge
        elif case == "stranger host":
            host = "n9"
        hi = {"t": "hi", "host": host, "nonce": mine,
              "mac": channel.channel_mac(secret, "node", nonce, mine, host)}  # fmt: skip
        if case == "garbage":
            conn.sendall(b"\x00\xff not json\n")
        elif case != "silent":
            conn.sendall((json.dumps(hi) + "\n").encode())
        t0 = time.monotonic()
        assert _closed(conn)
        assert time.monotonic() - t0 < 3
        assert not receivers["n1"].answered.is_set()
    finally:
        hub.close()
    assert hub.refused == 1


def _receiver(callback: str, host: str = "n1", bind_local: bool = False) -> subprocess.Popen:
    spec = channel.receiver_spec(secret=SECRET, callback=callback, dest="/proc/beokit-none/x",
                              kind="file", digest=None, fsync=False, progress=False,
                              bind_local=bind_local)  # fmt: skip
    p = subprocess.Popen([sys.executable, "-m", "beokit.cast.receiver"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=dict(os.environ, BEO_HOST=host))  # fmt: skip
    assert p.stdin is not None
    p.stdin.write(json.dumps(spec).encode())
    p.stdin.close()
    p.stdin = None  # written and closed: communicate() has nothing more to send
    return p


def test_receiver_refuses_a_root_that_cannot_prove_the_secret() -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    got: list[dict] = []

    def fake_root() -> None:
        conn, _ = srv.accept()
        conn.sendall(b'{"t": "challenge", "nonce": "abc"}\n')
        msgs = _lines(conn)
        got.append(next(msgs))
        conn.sendall(b'{"t": "ok", "mac": "' + b"0" * 64 + b'"}\n')
        got.extend(msgs)  # anything more the receiver says (it must say nothing)
        conn.close()

    t = threading.Thread(target=fake_root, daemon=True)
    t.start()
    p = _receiver(f"127.0.0.1:{srv.getsockname()[1]}")
    out, err = p.communicate(timeout=20)
    t.join(5)
    srv.close()
    assert p.returncode == 1
    assert "did not prove the secret" in err.decode()
    assert [m["t"] for m in got] == ["hi"]  # it never said up, nor its checks


def test_receiver_with_a_real_hub_reports_its_check() -> None:
    hub, receivers = _hub("n1")
    try:
        p = _receiver(hub.address)
        assert receivers["n1"].answered.wait(20)
        hello = receivers["n1"].hello
        assert hello is not None and hello["t"] == "fail" and hello["code"] == "LWF"
        assert "/proc/beokit-none" in hello["why"]
        assert p.wait(20) == 1
    finally:
        hub.close()


def test_receiver_without_a_root_says_so_and_ends() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens there once closed
    p = _receiver(f"127.0.0.1:{port}")
    _, err = p.communicate(timeout=20)
    assert p.returncode == 1
    assert f"cannot reach the cast root at 127.0.0.1:{port}" in err.decode()


def test_receiver_without_a_spec() -> None:
    p = subprocess.run([sys.executable, "-m", "beokit.cast.receiver"], input=b"",
                       capture_output=True, timeout=20)  # fmt: skip
    assert p.returncode == 2 and b"no valid spec on stdin" in p.stderr


def test_hub_sheds_a_flood_without_threads_and_admits_a_receiver() -> None:
    """300 silent connections from one address: the hub keeps at most PER_SOURCE of
    them (the oldest go first), starts no thread for any, and a receiver from another
    address is admitted at once."""
    hub, receivers = _hub("n1")
    threads = threading.active_count()  # the hub's own thread runs already
    host, port = hub.address.rsplit(":", 1)
    flood: list[socket.socket] = []
    try:
        for _ in range(300):
            s = socket.socket()
            s.bind(("127.0.9.1", 0))
            s.connect((host, int(port)))
            flood.append(s)
        deadline = time.monotonic() + 20
        while hub.refused < 300 - Hub.PER_SOURCE and time.monotonic() < deadline:
            time.sleep(0.05)
        assert hub.refused == 300 - Hub.PER_SOURCE
        assert hub.peak_pending == Hub.PER_SOURCE
        assert threading.active_count() == threads
        p = _receiver(hub.address)
        assert receivers["n1"].answered.wait(20)
        assert receivers["n1"].hello is not None and receivers["n1"].hello["code"] == "LWF"
        assert p.wait(20) == 1
    finally:
        for s in flood:
            s.close()
        hub.close()


def test_a_nodes_own_address_comes_in_the_roots_ok() -> None:
    """The spec is the same for every node (no --resolve map in it, which at ~7,000
    entries filled the 256 KiB a receiver reads); a node's bind address comes to it
    alone in the handshake's ok: the receiver checks that address (here one that is
    not on this machine, so its check says so)."""
    hub, receivers = _hub("n1")
    receivers["n1"].node["bind"] = "192.0.2.77"  # TEST-NET-1: not an address here
    try:
        p = _receiver(hub.address, bind_local=True)
        assert receivers["n1"].answered.wait(20)
        hello = receivers["n1"].hello
        assert hello is not None and hello["t"] == "fail" and hello["code"] == "DOWN", hello
        assert hello["why"].startswith("cannot listen on 192.0.2.77"), hello
        assert p.wait(20) == 1
    finally:
        hub.close()


def test_the_spec_does_not_grow_with_a_10000_entry_resolve_map() -> None:
    """10,000 nodes, each with its own --resolve address (issue 24: beo cast refused
    more than ~7,000): the receivers' spec is as long as for one node."""
    from beokit.cast.driver import _Cast
    from beokit.cast.job import Job
    from beokit.cast.plan import Chain
    from beokit.launch.backends import make_backend

    def payload(n: int) -> tuple[bytes, _Cast]:
        hosts = [f"node{i:05d}" for i in range(n)]
        binds = {h: f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}" for i, h in enumerate(hosts)}
        job = Job(source="/x", source_kind="file", hosts=hosts, chains=[Chain("c0", hosts)],
                  dest="/tmp/x", backend=make_backend("exec"), resolve=binds,
                  bind_local=True)  # fmt: skip
        cast = _Cast(job, hosts, job.chains, 1, None, None)
        return cast._spec_payload(SECRET, "127.0.0.1:5000", binds), cast

    one, _ = payload(1)
    many, cast = payload(10_000)
    assert len(many) == len(one) < 1024
    assert cast.receivers["node09999"].node == {"bind": "10.0.39.15"}
