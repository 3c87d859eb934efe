"""beo dshd / dsh / top with real daemons on 127.0.1.x, real UDP, a real sshd."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dsh_fixture import (
    BEO,
    Cluster,
    addr,
    cluster,
    free_ports,
    start_sshd,
    stop,
    tcp_query,
    wait_for,
)

from beokit.dsh import packet

PERIOD = 0.3


def beo(
    *args: str, env: dict | None = None, timeout: float = 30, **kw
) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    kw.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run([*BEO, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, **kw)  # fmt: skip


def all_up(c: Cluster, nodes: list[int], expect: int) -> bool:
    return all(len(c.up(i)) == expect for i in nodes)


# ------------------------------------------------------------ membership


def test_convergence_expiry_and_return(tmp_path: Path) -> None:
    with cluster(tmp_path, 4, period=PERIOD, expire=3) as c:
        t0 = time.monotonic()
        wait_for(lambda: all_up(c, [1, 2, 3, 4], 4), 10, "all four daemons to see all four")
        converged = time.monotonic() - t0
        # every daemon has every other's reported load (set_load before start: 0)
        doc = c.status_json(2)
        assert {m["name"] for m in doc["members"] if m["up"]} == set(c.addrs)
        assert all(m["load1"] == 0.0 and m["cpus"] == 1 for m in doc["members"])
        # SIGSTOP: node 3 falls silent; the others drop it after 3 periods
        c.procs[3].send_signal(signal.SIGSTOP)
        try:
            t1 = time.monotonic()
            # how long ago node 1 heard from node 3 (its last report may be up to a
            # period older than the SIGSTOP): the silence is counted from there
            (age,) = [m["age"] for m in c.status_json(1)["members"] if m["name"] == addr(3)]
            wait_for(lambda: all(addr(3) not in c.up(i) for i in (1, 2, 4)), 10,
                     "node 3 dropped")  # fmt: skip
            dropped = time.monotonic() - t1
        finally:
            c.procs[3].send_signal(signal.SIGCONT)
        assert age + dropped >= 3 * PERIOD - 0.01  # not before 3 periods of silence
        assert c.best_node(1) != addr(3)
        wait_for(lambda: all(addr(3) in c.up(i) for i in (1, 2, 4)), 10, "node 3 back")
        # killed and restarted: back again
        c.stop(4)
        wait_for(lambda: addr(4) not in c.up(1), 10, "node 4 dropped")
        c.start(4)
        wait_for(lambda: all_up(c, [1, 2, 3, 4], 4), 10, "node 4 back")
    log = c.log(1).read_text()
    assert f"member {addr(3)} is down: not heard from" in log
    assert log.count(f"member {addr(4)} is up") == 2
    print(f"converged in {converged:.2f} s, dropped in {dropped:.2f} s")


def test_best_follows_load_and_extra_load_bump(tmp_path: Path) -> None:
    # a long hold so that the bumps stay while we look at them
    with cluster(tmp_path, 3, period=PERIOD, extra=["--extra-load", "1.0"]) as c:
        wait_for(lambda: all_up(c, [1], 3), 10, "convergence")
        c.settle({1: 3.0, 2: 1.0, 3: 2.0})
        assert c.best_node() == addr(2)
        c.settle({2: 5.0})
        assert c.best_node() == addr(3)  # node 3 best after node 2 got busy
        # the bump: three idle nodes, three queries in a row go to three nodes
        c.settle({1: 0.0, 2: 0.0, 3: 0.0})
        picks = [c.best_node() for _ in range(3)]
        assert sorted(picks) == c.addrs, picks
        doc = c.status_json()
        assert sorted(m["extra"] for m in doc["members"]) == [1.0, 1.0, 1.0]
        # the next reports (a period later) clear the bumps
        wait_for(lambda: all(m["extra"] == 0 for m in c.status_json()["members"]), 5,
                 "bumps cleared")  # fmt: skip
        # other daemons never saw those bumps: they are local
        assert all(m["extra"] == 0 for m in c.status_json(2)["members"])


def test_weights_from_the_cluster_file_and_sighup(tmp_path: Path) -> None:
    text = f"{addr(1)} 3.0\n{addr(2)} 1.0\n"
    with cluster(tmp_path, 2, period=PERIOD, cluster_text=text) as c:
        wait_for(lambda: all_up(c, [1, 2], 2), 10, "convergence")
        assert c.best_node() == addr(2)  # node 1 is three times slower
        c.settle({})
        # SIGHUP: node 1 becomes the fast one, and a third member appears
        c.cluster.write_text(f"{addr(1)} 0.5\n{addr(2)} 1.0\n{addr(3)}\n")
        c.procs[1].send_signal(signal.SIGHUP)
        wait_for(lambda: len(c.status_json()["members"]) == 3, 5, "reload")
        assert c.best_node() == addr(1)
        # a broken file keeps the old configuration
        c.cluster.write_text("n[1-\n")
        c.procs[1].send_signal(signal.SIGHUP)
        c.procs[1].send_signal(signal.SIGUSR1)
        wait_for(lambda: "state dump (SIGUSR1)" in c.log(1).read_text(), 5, "dump")
        assert len(c.status_json()["members"]) == 3
        assert c.procs[1].poll() is None
    log = c.log(1).read_text()
    assert "SIGHUP: 3 members" in log and "SIGHUP: keeping the old configuration" in log
    dump = log[log.index("state dump (SIGUSR1)") :]
    assert '"sent":' in dump and f"{addr(2)}  " in dump


# --------------------------------------------------------------- spoofing


def forged(name: str, load: float, secret: bytes | None, t_ms: int | None = None) -> bytes:
    t = int(time.time() * 1000) + 10_000 if t_ms is None else t_ms
    return packet.encode(packet.Report(name, 1, t, load, load, load, 1), secret)


def send_from(source: str, dest: tuple[str, int], data: bytes, count: int = 20) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        for _ in range(count):
            s.sendto(data, dest)


def test_spoofed_packets_are_ignored(tmp_path: Path) -> None:
    secret = "shared-secret-of-the-test"
    with cluster(tmp_path, 3, period=PERIOD, secret=secret) as c:
        wait_for(lambda: all_up(c, [1], 3), 10, "convergence")
        c.settle({1: 3.0, 2: 4.0, 3: 2.0})
        dest = (addr(1), c.gossip)
        before = c.status_json()["stats"]["rejected"]
        # 1. node 2 claims load 0 with a wrong secret, from its own address
        send_from(addr(2), dest, forged(addr(2), 0.0, b"wrong"))
        # 2. ... without any MAC
        send_from(addr(2), dest, forged(addr(2), 0.0, None))
        # 3. a non-member with the right secret (a leaked key still needs a member address)
        send_from(addr(9), dest, forged(addr(9), 0.0, secret.encode()))
        # 4. the right secret and name, but from another address
        send_from(addr(9), dest, forged(addr(2), 0.0, secret.encode()))
        # 5. garbage
        send_from(addr(2), dest, os.urandom(60))
        wait_for(lambda: c.status_json()["stats"]["rejected"] >= before + 100, 5, "rejections")
        doc = c.status_json()
        assert addr(9) not in {m["name"] for m in doc["members"]}
        node2 = next(m for m in doc["members"] if m["name"] == addr(2))
        assert node2["load1"] == 4.0
        c.settle({})
        assert c.best_node() == addr(3)
        assert c.procs[1].poll() is None
    assert "ignored packet" in c.log(1).read_text()


def test_non_members_ignored_without_secret_too(tmp_path: Path) -> None:
    with cluster(tmp_path, 2, period=PERIOD) as c:
        wait_for(lambda: all_up(c, [1], 2), 10, "convergence")
        c.settle({1: 2.0, 2: 2.0})
        send_from(addr(7), (addr(1), c.gossip), forged(addr(2), 0.0, None))
        send_from(addr(7), (addr(1), c.gossip), forged(addr(7), 0.0, None))
        time.sleep(PERIOD)
        doc = c.status_json()
        assert [m["load1"] for m in doc["members"]] == [2.0, 2.0]
        assert doc["stats"]["rejected"] >= 40


def gossip_from(sender: str, dest: str, records: list[tuple[int, packet.Report]], secret: bytes,
                key: bytes | None = None, seq: int = 1) -> bytes:  # fmt: skip
    """A version-3 datagram as member ``sender`` would send it (reports signed with
    ``key``, default the secret; the hop MAC with the secret)."""
    signed = [(age, packet.encode(r, key or secret)) for age, r in records]
    return packet.encode_gossip(sender, dest, seq, int(time.time() * 1000), signed, secret)


def member(m: list[dict], name: str) -> dict:
    return next(r for r in m if r["name"] == name)


def test_gossip_wire_path_relays_and_refuses_replays(tmp_path: Path) -> None:
    """Issue 24 over real UDP: a member's datagram carrying another member's report
    (signed at its origin) makes that member up with its load, and the daemon
    relays it to the next daemon; the same datagram again, the datagram sent to
    another daemon, a wrong hop MAC or a report signed with another key are
    refused. Members 3 and 4 are sockets of the test, 1 and 2 real daemons."""
    secret = "wire-path-secret"
    text = "".join(f"{addr(i)}\n" for i in range(1, 5))
    with cluster(tmp_path, 2, period=PERIOD, secret=secret, cluster_text=text) as c:
        c.set_load(1, 3.0)
        c.set_load(2, 3.0)
        wait_for(lambda: all(member(c.status_json(1)["members"], addr(i)).get("load1") == 3.0
                             for i in (1, 2)), 10, "convergence")  # fmt: skip
        k = secret.encode()
        now_ms = int(time.time() * 1000)
        idle = packet.Report(addr(4), 1, now_ms - 100, 0.0, 0.0, 0.0, 1)
        data = gossip_from(addr(3), addr(1), [(0, packet.Report(addr(3), 1, now_ms, 5.0, cpus=1)),
                                              (100, idle)], k)  # fmt: skip
        send_from(addr(3), (addr(1), c.gossip), data, count=1)
        doc = wait_for(lambda: (d := c.status_json(1)) and member(d["members"], addr(4))["up"]
                       and d, 5, "member 4 up through member 3")  # fmt: skip
        row = member(doc["members"], addr(4))
        assert row["load1"] == 0.0 and row["age"] >= 0.1  # made 0.1 s before it was sent
        assert c.best_node(1) == addr(4)
        # daemon 1 relays it (a candidate) to daemon 2, which never heard from 3 or 4
        wait_for(lambda: addr(4) in c.up(2), 5, "member 4 up at daemon 2, relayed by 1")
        assert member(c.status_json(2)["members"], addr(4))["age"] >= 0.1
        stats = c.status_json(1)["stats"]
        assert stats["records"] >= 2
        rejected = stats["rejected"]
        # refused: the same datagram again, to daemon 1 and to daemon 2; a wrong hop MAC
        send_from(addr(3), (addr(1), c.gossip), data, count=1)
        send_from(addr(3), (addr(2), c.gossip), data, count=1)
        send_from(addr(3), (addr(1), c.gossip), gossip_from(
            addr(3), addr(1), [(0, packet.Report(addr(3), 2, now_ms + 1, 0.0))], b"wrong"), count=1)
        # a report changed by a relay (signed with another key, hop MAC right): refused
        busy = packet.Report(addr(4), 2, now_ms + 50, 9.0, 9.0, 9.0, 1)
        send_from(addr(3), (addr(1), c.gossip), gossip_from(
            addr(3), addr(1), [(0, packet.Report(addr(3), 3, now_ms + 60, 5.0)), (0, busy)], k,
            key=b"not-the-secret", seq=5), count=1)  # fmt: skip
        wait_for(lambda: c.status_json(1)["stats"]["rejected"] >= rejected + 3, 5,
                 "rejections")  # fmt: skip
        assert c.status_json(2)["stats"]["rejected"] >= 1
        assert member(c.status_json(1)["members"], addr(4))["load1"] == 0.0
        # nobody sends member 4's report again: it leaves both tables, never older than
        # the expiry while up (its age is counted from when it was made, not received)
        ages = []

        def gone() -> bool:
            rows = [member(c.status_json(i)["members"], addr(4)) for i in (1, 2)]
            ages.extend(r["age"] for r in rows if r["up"])
            return not any(r["up"] for r in rows)

        wait_for(gone, 10, "member 4 expired at both daemons")
        assert max(ages) <= 3 * PERIOD
    log = c.log(1).read_text()
    assert "old or replayed datagram" in log or "bad MAC" in log


def test_ten_thousand_members_partial_view(tmp_path: Path) -> None:
    """No ceiling below 10,000 members: a daemon in a cluster file of 10,000 (the
    others not running: it gossips to them all the same, 4 datagrams a round)
    answers; the status JSON of every member (a few MB, one line) is read whole by
    beo top --json, and beo top --once lists the members up in this partial view
    and says how many it leaves out."""
    text = "".join(f"{addr(i)}\n" for i in (1, 2)) + "".join(
        f"127.4.{i // 250}.{i % 250 + 1}\n" for i in range(9998))  # fmt: skip
    with cluster(tmp_path, 1, period=PERIOD, cluster_text=text) as c:
        c.settle_some({1: 0.5})
        assert c.best_node(1) == addr(1)
        cp = beo("top", "--json", "-d", addr(1), "-t", str(c.status), "--timeout", "10")
        assert cp.returncode == 0, cp.stderr
        doc = json.loads(cp.stdout)
        assert doc["members_total"] == len(doc["members"]) == 10_000 and doc["up"] == 1
        assert doc["view"] == "partial" and doc["gossip"]["fanout"] == 4
        assert len(cp.stdout) > 1_000_000
        cp = beo("top", "--once", "-d", addr(1), "-t", str(c.status), "--timeout", "10")
        assert cp.returncode == 0, cp.stderr
        assert "1/10000 up (partial view: 9999 members" in " ".join(cp.stdout.split())
        assert addr(1) in cp.stdout and "127.4.0.1 " not in cp.stdout
        st = c.status_json(1)["stats"]
        assert 0 < st["sent"] + st["send_errors"] <= 4 * (st["rounds"] + 1)


def test_ports_ask_for_the_secret(tmp_path: Path) -> None:
    secret = "s3"
    with cluster(tmp_path, 2, period=PERIOD, secret=secret) as c:
        wait_for(lambda: port_answers(c), 5, "status port")
        # a client without the secret is refused, and told so
        env = dict(c.env)
        env.pop("BEO_DSH_SECRET")
        cp = beo("top", "--once", "-d", addr(1), "-t", str(c.status), env=env)
        assert cp.returncode == 1 and "asks for the shared secret" in cp.stderr
        # a wrong answer to the challenge
        with socket.create_connection((addr(1), c.best), timeout=5) as s:
            f = s.makefile("rwb")
            assert f.readline().startswith(b"auth ")
            f.write(b"00" * 32 + b"\n")
            f.flush()
            assert f.read() == b"error authentication failed\n"
        # with the secret (from a file, as root would keep it)
        (tmp_path / "secret").write_text(secret + "\n")
        cp = beo("top", "--json", "-d", addr(1), "-t", str(c.status), "--secret-file",
                 str(tmp_path / "secret"), env=env)  # fmt: skip
        assert cp.returncode == 0, cp.stderr
        assert json.loads(cp.stdout)["node"] == addr(1)
        assert c.status_json()["stats"]["refused"] >= 2  # the clients above


def port_answers(c: Cluster) -> bool:
    return tcp_query(addr(1), c.status, b"").startswith("auth ")


# ------------------------------------------------------------ status, top


def test_status_text_json_top_and_dsh_status(tmp_path: Path) -> None:
    with cluster(tmp_path, 2, period=PERIOD) as c:
        wait_for(lambda: all_up(c, [2], 2), 10, "convergence")
        text = tcp_query(addr(2), c.status, b"")  # telnet-style: text after a short wait
        assert text.startswith(f"# dshd {addr(2)}: 2/2 up") and addr(1) in text
        cp = beo("top", "--once", "-d", f"{addr(2)}:{c.status}")
        assert cp.returncode == 0, cp.stderr
        assert "2/2 up" in cp.stdout and addr(1) in cp.stdout and "mem free/total" in cp.stdout
        cp = beo("dsh", "--status", "--json", "-d", addr(1), "-t", str(c.status))
        assert cp.returncode == 0 and json.loads(cp.stdout)["up"] == 2
    cp = beo("top", "--once", "-d", addr(1), "-t", str(c.status), "--timeout", "1")
    assert cp.returncode == 1 and "no dshd at" in cp.stderr


@pytest.mark.slow
def test_top_refreshes(tmp_path: Path) -> None:
    with cluster(tmp_path, 2, period=PERIOD) as c:
        wait_for(lambda: all_up(c, [1], 2), 10, "convergence")
        # live (not a terminal: a table per interval, like top -b), then SIGINT
        out = tmp_path / "top.out"
        with out.open("wb") as f:
            p = subprocess.Popen([*BEO, "top", "-i", "0.2", "-d", addr(1), "-t", str(c.status)],
                                 stdout=f, stderr=subprocess.PIPE)  # fmt: skip
            try:
                wait_for(lambda: out.read_text().count(addr(2)) >= 2, 20, "two tables")
            finally:
                p.send_signal(signal.SIGINT)
                p.communicate(timeout=10)


@pytest.mark.parametrize("args, message", [
    (["-f", "/nonexistent/cluster"], "bad cluster file '/nonexistent/cluster'"),
    (["--bind", "300.1.1.1"], "bad --bind address '300.1.1.1'"),
    (["-t", "0"], "bad port '0'"),
    (["--period", "-1"], "bad period '-1'"),
    (["--expire", "0"], "bad period count '0'"),
    (["--fanout", "0"], "bad fanout '0'"),
    (["--score", "fastest"], "bad score 'fastest'"),
    (["--name", "nobody-here"], "bad --name 'nobody-here'"),
    (["--bind", "127.0.1.200"], "is not in"),
    (["--send-to", "everyone"], "bad --send-to address 'everyone'"),
    (["--secret-file", "/nonexistent/s"], "bad secret file '/nonexistent/s'"),
    (["-t", "8181", "-r", "8181"], "same as the status port"),
    (["--user", "no-such-user-bkd"], "bad --user 'no-such-user-bkd'"),
])  # fmt: skip
def test_dshd_usage_errors(
    tmp_path: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "cluster"
    f.write_text(f"{addr(1)}\n{addr(2)}\n")
    base = ["-f", str(f), "--bind", addr(1), "-g", "1", "-t", "2", "-r", "3"]
    if args[0] == "-t" and len(args) > 2:
        base = base[:6]
    assert beo_in_process("dshd", *base, *args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1, err


def beo_in_process(*args: str) -> int:
    """The umbrella's main() in this process (usage errors exit before anything starts)."""
    from beokit.cli import main

    try:
        return main(list(args))
    except SystemExit as e:
        return int(e.code or 0)


def test_bad_cluster_file_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "cluster"
    f.write_text(f"{addr(1)}\n{addr(2)} 0.0\n")
    assert beo_in_process("dshd", "-f", str(f), "--bind", addr(1)) == 2
    assert capsys.readouterr().err == f"beo dshd: {f}:2: bad load weight '0.0': must be > 0\n"
    f.write_text(f"{addr(1)}\nno-such-host.invalid\n")
    assert beo_in_process("dshd", "-f", str(f), "--bind", addr(1)) == 2
    assert "cannot resolve member 'no-such-host.invalid'" in capsys.readouterr().err


@pytest.mark.root
def test_background_pid_and_unprivileged_user() -> None:
    if os.geteuid() != 0:
        pytest.skip("dropping privileges needs root")
    # nobody must be able to re-read the cluster file: not under pytest's 0700 tmp
    with tempfile.TemporaryDirectory(prefix="bkd-") as d:
        os.chmod(d, 0o755)
        background_as_nobody(Path(d))


def background_as_nobody(tmp_path: Path) -> None:
    g, s, b = free_ports([addr(1)], 3)
    (tmp_path / "cluster").write_text(f"{addr(1)}\n")
    (tmp_path / "cluster").chmod(0o644)
    cp = beo("dshd", "-b", "-p", "-f", str(tmp_path / "cluster"), "--bind", addr(1), "-g",
             str(g), "-t", str(s), "-r", str(b), "--log", str(tmp_path / "log"),
             "--period", "0.2", timeout=10)  # fmt: skip
    assert cp.returncode == 0, cp.stderr
    pid = int(cp.stdout.strip())
    try:
        wait_for(lambda: "1/1 up" in tcp_query(addr(1), s, b""), 5, "background daemon")
        status = Path(f"/proc/{pid}/status").read_text()
        uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
        import pwd

        assert int(uid) == pwd.getpwnam("nobody").pw_uid
        os.kill(pid, signal.SIGHUP)  # re-reads the file as nobody
        wait_for(lambda: "SIGHUP: 1 members" in (tmp_path / "log").read_text(), 5, "reload")
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 5, "daemon gone")


# -------------------------------------------------------------- soak test


def rss_and_fds(pid: int) -> tuple[int, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def fds_back(pid: int, fds0: int) -> int:
    """The fd count if it is back to ``fds0`` (a connection may still be closing), else 0."""
    fds = rss_and_fds(pid)[1]
    return fds if fds <= fds0 else 0


def hammer(c: Cluster, n: int) -> None:
    for k in range(n):
        port, req = ((c.status, b"json\n"), (c.best, b""), (c.status, b"text\n"))[k % 3]
        if k % 50 == 49:  # some clients go away without reading, or send junk
            with socket.create_connection((addr(1), port), timeout=5) as s:
                s.sendall(b"x" * 5000 if k % 100 == 99 else b"")
            continue
        tcp_query(addr(1), port, req)


def soak(tmp_path: Path, n: int) -> None:
    with cluster(tmp_path, 3, period=0.2) as c:
        wait_for(lambda: all_up(c, [1], 3), 10, "convergence")
        pid = c.procs[1].pid
        hammer(c, 300)  # warm up: caches, first allocations
        time.sleep(0.5)
        rss0, fds0 = rss_and_fds(pid)
        hammer(c, n)
        fds1 = wait_for(lambda: fds_back(pid, fds0), 5, "fds back to their number")
        rss1 = rss_and_fds(pid)[0]
        hammer(c, n)
        fds2 = wait_for(lambda: fds_back(pid, fds0), 5, "fds back to their number")
        rss2 = rss_and_fds(pid)[0]
        print(f"RSS {rss0} -> {rss1} -> {rss2} KiB, fds {fds0} -> {fds1} -> {fds2}")
        assert rss2 - rss1 < 1024 and rss2 - rss0 < 2048, (rss0, rss1, rss2)
        assert c.status_json()["stats"]["queries"] >= 2 * n


def test_soak_status_and_best_ports(tmp_path: Path) -> None:
    soak(tmp_path, 1500)


@pytest.mark.slow
def test_soak_long(tmp_path: Path) -> None:
    soak(tmp_path, 15000)


# ------------------------------------------------------------------- dsh


@pytest.fixture(scope="module")
def ssh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    d = tmp_path_factory.mktemp("sshd")
    proc, args = start_sshd(d, [addr(i) for i in (1, 2, 3)])
    try:
        yield args
    finally:
        stop(proc)


def dsh_env(c: Cluster, ssh: list[str]) -> dict:
    return dict(c.env, BEO_DSH_DAEMON=f"{addr(1)}:{c.best}", BEO_DSH_SSH=" ".join(ssh),
                BEO_DSH_JOBS=str(c.tmp / "jobs"))  # fmt: skip


def test_dsh_runs_on_least_loaded_node(tmp_path: Path, ssh: list[str]) -> None:
    with cluster(tmp_path, 3, period=PERIOD) as c:
        wait_for(lambda: all_up(c, [1], 3), 10, "convergence")
        c.settle({1: 3.0, 2: 2.0, 3: 0.0})
        work = tmp_path / "work dir"
        work.mkdir()
        cmd = ("echo $SSH_CONNECTION | cut -d' ' -f3; pwd; tr a-z A-Z; echo to-stderr >&2; "
               "exit 3")  # fmt: skip
        cp = beo("dsh", "-v", "sh", "-c", cmd, env=dsh_env(c, ssh), cwd=work,
                 input="hello stdin\n", stdin=None)  # fmt: skip
        assert cp.returncode == 3, cp.stderr
        assert cp.stdout == f"{addr(3)}\n{work}\nHELLO STDIN\n"
        assert cp.stderr == f"beo dsh: running on {addr(3)} (score 1.000)\nto-stderr\n"
        # argv survives: quoting, spaces, shell characters
        cp = beo("dsh", "printf", "[%s]", "a b", "$HOME", "'q'", ";", env=dsh_env(c, ssh),
                 cwd=work)  # fmt: skip
        assert cp.returncode == 0 and cp.stdout == "[a b][$HOME]['q'][;]", cp.stderr
        # a running job counts on its node (the load average would lag a minute)
        c.settle({})
        p = subprocess.Popen([*BEO, "dsh", "sleep", "20"], env=dsh_env(c, ssh),
                             stdin=subprocess.DEVNULL)  # fmt: skip
        try:
            wait_for(lambda: jobs_of(c, addr(3)) == 1, 15, "job counted on node 3")
        finally:
            p.terminate()  # forwarded: the remote sleep ends
            p.wait(15)
        wait_for(lambda: jobs_of(c, addr(3)) == 0, 10, "job gone")


def jobs_of(c: Cluster, name: str) -> int:
    return next(m["jobs"] for m in c.status_json()["members"] if m["name"] == name)


def test_dsh_local_when_best_or_no_daemon(tmp_path: Path, ssh: list[str]) -> None:
    with cluster(tmp_path, 2, period=PERIOD) as c:
        wait_for(lambda: all_up(c, [1], 2), 10, "convergence")
        c.settle({1: 0.0, 2: 5.0})
        cp = beo("dsh", "-v", "sh", "-c", "echo ${SSH_CONNECTION:-local}; exit 4",
                 env=dsh_env(c, ssh))  # fmt: skip
        assert cp.returncode == 4 and cp.stdout == "local\n"
        assert cp.stderr == f"beo dsh: running on {addr(1)} (score 1.000)\n"
        port = c.best
    env = dsh_env(c, ssh)
    cp = beo("dsh", "sh", "-c", "echo ran; exit 5", env=env)
    assert cp.returncode == 5 and cp.stdout == "ran\n"
    assert cp.stderr == (f"beo dsh: no dshd at {addr(1)}:{port} (Connection refused); "
                         "running locally\n")  # fmt: skip
    cp = beo("dsh", "no-such-command-bkd", env=env)
    assert cp.returncode == 127 and "no-such-command-bkd: command not found" in cp.stderr
    cp = beo("dsh", env=env)
    assert cp.returncode == 2 and cp.stderr == "beo dsh: no command (beo dsh [-v] COMMAND...)\n"
    cp = beo("dsh", "-d", "h:99999", "true", env=env)
    assert cp.returncode == 2 and "bad daemon address 'h:99999'" in cp.stderr


@pytest.mark.parametrize("sig, expect", [
    (signal.SIGINT, 7), pytest.param(signal.SIGTERM, 128 + 15, marks=pytest.mark.slow)])  # fmt: skip
def test_dsh_forwards_signals(tmp_path: Path, ssh: list[str], sig: int, expect: int) -> None:
    with cluster(tmp_path, 2, period=PERIOD) as c:
        wait_for(lambda: all_up(c, [1], 2), 10, "convergence")
        c.settle({1: 5.0, 2: 0.0})
        mark = tmp_path / "got"
        script = (f"trap 'echo INT > {mark}; kill $!; exit 7' INT; echo $$ > {mark}.pid; "
                  "echo ready; sleep 30 & wait")  # fmt: skip
        p = subprocess.Popen([*BEO, "dsh", "sh", "-c", script], env=dsh_env(c, ssh),
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)  # fmt: skip
        try:
            assert p.stdout is not None and p.stdout.readline() == b"ready\n"
            remote = int((tmp_path / "got.pid").read_text())
            t0 = time.monotonic()
            p.send_signal(sig)
            rc = p.wait(15)
        finally:
            if p.poll() is None:
                p.kill()
        assert rc == expect
        assert time.monotonic() - t0 < 10
        assert not os.path.exists(f"/proc/{remote}")  # the remote process is gone
        if sig == signal.SIGINT:
            assert mark.read_text() == "INT\n"


C_FILES = {
    "main.c": "#include <stdio.h>\nint f1(void); int f2(void); int f3(void); int f4(void);\n"
    "int f5(void); int f6(void);\n"
    'int main(void) { printf("sum %d\\n", f1()+f2()+f3()+f4()+f5()+f6()); return 0; }\n',
    **{f"f{i}.c": f"int f{i}(void) {{ return {i * 10}; }}\n" for i in range(1, 7)},
}
MAKEFILE = """OBJS = main.o f1.o f2.o f3.o f4.o f5.o f6.o
prog: $(OBJS)
\t$(CC) -o $@ $(OBJS)
%.o: %.c
\t$(CC) -c -o $@ $<
"""


def test_make_with_dsh_as_compiler(tmp_path: Path, ssh: list[str]) -> None:
    with cluster(tmp_path, 3, period=PERIOD) as c:
        wait_for(lambda: all_up(c, [1], 3), 10, "convergence")
        src = tmp_path / "proj"
        src.mkdir()
        for name, text in C_FILES.items():
            (src / name).write_text(text)
        (src / "Makefile").write_text(MAKEFILE)
        beo_cmd = " ".join(BEO)
        cp = subprocess.run(["make", "-j4", f"CC={beo_cmd} dsh -v gcc"], cwd=src,
                            env=dsh_env(c, ssh), capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=120)  # fmt: skip
        assert cp.returncode == 0, cp.stderr
        run = subprocess.run([str(src / "prog")], capture_output=True, text=True, timeout=10)
        assert run.stdout == "sum 210\n"
        hosts = [line.split()[4] for line in cp.stderr.splitlines() if "running on" in line]
        assert len(hosts) == 8 and len(set(hosts)) >= 2, cp.stderr  # spread over the nodes
        print("compiles per host:", {h: hosts.count(h) for h in sorted(set(hosts))})


def test_broadcast_mode(tmp_path: Path) -> None:
    # loopback has a broadcast address (127.255.255.255): one send per period reaches all
    with cluster(tmp_path, 3, period=PERIOD, extra=["--send-to", "127.255.255.255"],
                 secret="b") as c:  # fmt: skip
        wait_for(lambda: all_up(c, [1, 2, 3], 3), 10, "convergence by broadcast")
        c.settle({2: 3.0})
        st = c.status_json(1)["stats"]
        assert st["sent"] <= st["received"] / 2 + 2  # one datagram a period, two heard
        c.stop(2)
        wait_for(lambda: addr(2) not in c.up(3), 10, "node 2 dropped")


@pytest.mark.root
@pytest.mark.slow
def test_multicast_mode_in_a_namespace(tmp_path: Path) -> None:
    # the host's lo has no multicast route: build a namespace of our own whose lo has one
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2 (a network namespace)")
    ns = f"bkd-mc-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    procs: list[subprocess.Popen] = []
    try:
        for cmd in ("ip link set lo up", "ip link set lo multicast on",
                    "ip route add 224.0.0.0/4 dev lo"):  # fmt: skip
            subprocess.run(["ip", "netns", "exec", ns, *cmd.split()], check=True)
        (tmp_path / "cluster").write_text(f"{addr(1)}\n{addr(2)}\n")
        for i in (1, 2):
            procs.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, *BEO, "dshd", "-f", str(tmp_path / "cluster"),
                 "--bind", addr(i), "--send-to", "239.255.77.1", "--period", "0.3",
                 "--log", str(tmp_path / f"d{i}.log"), "--jobs-dir", str(tmp_path / "j")],
                stdin=subprocess.DEVNULL))  # fmt: skip

        def status(i: int) -> dict:
            cp = subprocess.run(["ip", "netns", "exec", ns, *BEO, "top", "--json", "-d",
                                 addr(i)], capture_output=True, text=True, timeout=20)  # fmt: skip
            return json.loads(cp.stdout) if cp.returncode == 0 else {}

        doc = wait_for(lambda: (d := status(2)).get("up") == 2 and d, 20, "multicast join")
        assert doc["stats"]["sent"] * 2 <= doc["stats"]["received"] + 4  # one send, two heard
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(["ip", "netns", "del", ns], check=False)


# ------------------------------------------------- batched system calls


def _udp(address: str, port: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((address, port))
    s.setblocking(False)
    return s


@pytest.mark.parametrize("use_mmsg", [True, False], ids=["sendmmsg", "sendto"])
def test_multisender_reaches_every_destination_and_skips_failures(use_mmsg: bool) -> None:
    """dshd's broadcast send (beokit.udp.UdpBatch.send_all, as dsh/rounds.py uses it)."""
    from beokit.udp import UdpBatch

    sinks = [_udp(f"127.9.0.{i}") for i in range(1, 41)]
    src = _udp("127.9.1.1")
    try:
        dests = [s.getsockname() for s in sinks]
        # a broadcast address on a socket without SO_BROADCAST fails (EACCES) in the middle
        dests.insert(17, ("127.255.255.255", dests[0][1]))
        tx = UdpBatch(src, use_mmsg=use_mmsg)
        tx.set_destinations(dests)
        for k in range(3):
            data = packet.encode(packet.Report("127.9.1.1", k + 1, 1000 + k, 0.5), b"x")
            assert tx.send_all(data) == 1
            assert isinstance(tx.last_error, PermissionError)
            for s in sinks:
                got, frm = s.recvfrom(1024)
                assert got == data and frm == src.getsockname()
                with pytest.raises(BlockingIOError):
                    s.recvfrom(1024)  # exactly one copy each
    finally:
        for s in [*sinks, src]:
            s.close()


@pytest.mark.parametrize("use_mmsg", [True, False], ids=["recvmmsg", "recvmsg"])
def test_multireceiver_batches_sources_stamps_and_cut_datagrams(use_mmsg: bool) -> None:
    """dshd's receive batches (beokit.udp.UdpBatch as dsh/rounds.py makes them)."""
    from beokit.dsh.rounds import RX_SIZE
    from beokit.udp import UdpBatch, enable_timestamps

    rx = _udp("127.9.2.1")
    senders = [_udp(f"127.9.3.{i}") for i in range(1, 6)]
    try:
        assert enable_timestamps(rx)
        r = UdpBatch(rx, batch=8, size=RX_SIZE, timestamps=True, use_mmsg=use_mmsg)
        assert r.received(r.recv()) == []
        sent = []
        t0 = time.time()
        for k in range(20):
            s = senders[k % 5]
            data = f"datagram {k}".encode() * (k + 1)
            s.sendto(data, rx.getsockname())
            sent.append((data[:RX_SIZE], s.getsockname()[0]))
        big = b"B" * (RX_SIZE + 300)  # longer than a slot: cut, never decodes
        senders[0].sendto(big, rx.getsockname())
        sent.append((big[:RX_SIZE], "127.9.3.1"))
        t1 = time.time()
        got: list[tuple[bytes, str]] = []
        stamps = []
        sizes = []
        for _ in range(10):
            batch = r.received(r.recv())
            if not batch:
                break
            sizes.append(len(batch))
            got += [(data, src) for data, (src, _port), _ in batch]
            stamps += [stamp for _, _, stamp in batch]
        assert sizes == [8, 8, 5] and got == sent
        # each datagram has the kernel's arrival time (wall clock), in sending order
        assert all(s is not None and t0 - 0.01 <= s <= t1 + 0.01 for s in stamps), stamps
        assert stamps == sorted(stamps)
        with pytest.raises(packet.PacketError):
            packet.decode(got[-1][0], None)
        with pytest.raises(packet.PacketError):
            packet.decode_gossip(got[-1][0], None)
    finally:
        for s in [rx, *senders]:
            s.close()
