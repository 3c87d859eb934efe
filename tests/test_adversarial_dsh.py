"""Issue 19, item 4 and the flood acceptance for dshd: an attacker on the network.

Real daemons on 127.0.1.x (tests/dsh_fixture.py), real TCP connections held
open from other loopback addresses, real datagrams from thousands of source
addresses. The bounds are read from /proc/PID/status (Threads, VmRSS) and
/proc/PID/fd, and stated in docs/dsh.md ("Threat model and floods").
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from dsh_fixture import BEO, Cluster, addr, cluster, wait_for

from beokit.dsh import packet
from beokit.dsh.client import query
from beokit.dsh.queries import ACCEPT_BATCH, MAX_CONNECTIONS, MAX_PER_SOURCE

SECRET = "flood-test-secret"
PERIOD = 0.3
# fds beyond MAX_CONNECTIONS: ACCEPT_BATCH (shed, not yet closed) and 2 for the files
# the daemon reads each period (/proc/loadavg, the load file) while it reads them
FD_SLACK = ACCEPT_BATCH + 2
ROUND = 0.2  # the holder reopens what the daemon closed this often
RSS_BOUND_KB = 4 * 1024  # growth allowed for a flood (measured: < 1.6 MiB)


def proc_counts(pid: int) -> tuple[int, int, int]:
    """(VmRSS in KiB, threads, open fds) of a process."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines())  # fmt: skip
    rss = int(fields["VmRSS"].split()[0])
    return rss, int(fields["Threads"]), len(os.listdir(f"/proc/{pid}/fd"))


def run_beo(*args: str, env: dict) -> tuple[int, str, str]:
    import subprocess

    cp = subprocess.run([*BEO, *args], capture_output=True, text=True, timeout=60, env=env,
                        stdin=subprocess.DEVNULL)  # fmt: skip
    return cp.returncode, cp.stdout, cp.stderr


# ------------------------------------------------------------ TCP holder


class Holder:
    """An attacker without the secret: keeps ``count`` TCP connections to ``dest``
    open from ``sources`` (round robin), never answering; every ROUND s it reopens
    those the daemon closed. At most ``max_total`` connections in all; it also
    samples the daemon's (RSS, threads, fds) every round."""

    def __init__(self, dest: tuple[str, int], sources: list[str], count: int, pid: int,
                 max_total: int = 6000) -> None:  # fmt: skip
        self.dest, self.sources, self.count, self.pid = dest, sources, count, pid
        self.max_total = max_total
        self.socks: dict[socket.socket, bytes] = {}  # open connection -> what it has read
        self.opened = 0
        self.closed_with: dict[str, int] = {}  # first line read by a closed connection
        self.samples: list[tuple[int, int, int]] = []
        self.greeted = 0  # open connections that have read a whole first line
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _open(self) -> None:
        s = socket.socket()
        s.bind((self.sources[self.opened % len(self.sources)], 0))
        s.setblocking(False)
        try:
            s.connect(self.dest)
        except BlockingIOError:
            pass
        self.opened += 1
        self.socks[s] = b""

    def _round(self) -> None:
        t0 = time.monotonic()
        while len(self.socks) < self.count and self.opened < self.max_total:
            self._open()
        ready, _, _ = select.select(list(self.socks), [], [], ROUND)
        for s in ready:
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if data:
                self.socks[s] += data
                continue
            kind = last_line_kind(self.socks.pop(s))
            self.closed_with[kind] = self.closed_with.get(kind, 0) + 1
            s.close()
        self.greeted = sum(1 for got in self.socks.values() if b"\n" in got)
        self.samples.append(proc_counts(self.pid))
        self.stop.wait(ROUND - (time.monotonic() - t0))  # a round every ROUND seconds

    def _run(self) -> None:
        while not self.stop.is_set():
            self._round()

    def __enter__(self) -> Holder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        for s in self.socks:
            s.close()


def last_line_kind(data: bytes) -> str:
    """What a connection read before the daemon closed it: "zero bytes", "auth only"
    (the challenge, then nothing), or the first two words of its last line."""
    lines = data.split(b"\n")[:-1]
    if not lines:
        return "zero bytes" if not data else "cut line"
    words = lines[-1].decode(errors="replace").split()
    return "auth only" if words[:1] == ["auth"] else " ".join(words[:2])


@contextmanager
def held(c: Cluster, port: int, count: int = 200, n_sources: int = 8) -> Iterator[Holder]:
    """``count`` connections held to daemon 1's ``port`` from ``n_sources`` addresses."""
    sources = [f"127.0.3.{i}" for i in range(1, n_sources + 1)]
    with Holder((addr(1), port), sources, count, c.procs[1].pid) as h:
        # the daemon holds as many as it can (MAX_CONNECTIONS), each greeted
        wait_for(lambda: h.greeted >= MAX_CONNECTIONS * 3 // 4, 20, "the flood in place")
        yield h


def check_bounds(h: Holder, before: tuple[int, int, int], pid: int) -> str:
    """The daemon's threads and fds stayed bounded under the flood; its fds come back."""
    rss0, threads0, fds0 = before
    peak_fds = max(s[2] for s in h.samples)
    peak_threads = max(s[1] for s in h.samples)
    peak_rss = max(s[0] for s in h.samples)
    assert peak_threads == threads0, h.samples[-5:]  # one asyncio thread, never more
    assert peak_fds <= fds0 + MAX_CONNECTIONS + FD_SLACK, peak_fds
    assert peak_rss - rss0 <= RSS_BOUND_KB, (rss0, peak_rss)
    wait_for(lambda: proc_counts(pid)[2] <= fds0, 10, "the daemon's fds back to their number")
    return (f"{h.opened} connections, closed with {h.closed_with}; peak fds {peak_fds} "
            f"(idle {fds0}), threads {peak_threads}, RSS {rss0} -> {peak_rss} KiB")  # fmt: skip


def secret_env(c: Cluster) -> dict:
    return dict(c.env, BEO_DSH_SECRET=SECRET)


# ------------------------------------------------------------ item 4


def test_held_connections_to_the_best_port_leave_dsh_served(tmp_path: Path) -> None:
    """200 held unauthenticated connections (from 8 addresses) to the best port of a
    daemon with a secret: `beo dsh` is still answered, and never told to drop its
    secret (before: the 129th connection was closed with zero bytes and dsh said
    "dshd at ... has no secret, but we have one ...; running locally")."""
    with cluster(tmp_path, 2, period=PERIOD, secret=SECRET) as c:
        wait_for(lambda: len(c.up(1)) == 2, 10, "convergence")
        c.settle({1: 0.0, 2: 5.0})  # node 1 is best: dsh runs the command here, no ssh
        pid = c.procs[1].pid
        before = proc_counts(pid)
        env = dict(secret_env(c), BEO_DSH_DAEMON=f"{addr(1)}:{c.best}")
        with held(c, c.best) as h:
            results = [run_beo("dsh", "-v", "--timeout", "5", "sh", "-c", "echo ran", env=env)
                       for _ in range(3)]  # fmt: skip
        for rc, out, err in results:
            assert "has no secret" not in err and "running locally" not in err, err
            assert (rc, out) == (0, "ran\n"), err
            assert err.startswith(f"beo dsh: running on {addr(1)} (score "), err
        print(check_bounds(h, before, pid))
        # every connection the daemon closed was told why: busy, or too slow to answer
        assert set(h.closed_with) <= {"error busy", "error no"}, h.closed_with
        stats = c.status_json()["stats"]
        assert stats["shed"] + stats["handshake_timeouts"] > 0, stats
        assert c.procs[1].poll() is None
    assert "TCP connections full: closing unauthenticated ones" in c.log(1).read_text()


def test_held_connections_to_the_status_port_leave_top_served(tmp_path: Path) -> None:
    """The same flood on the status port: `beo top --json` with the secret gets the table."""
    with cluster(tmp_path, 2, period=PERIOD, secret=SECRET) as c:
        wait_for(lambda: len(c.up(1)) == 2, 10, "convergence")
        pid = c.procs[1].pid
        before = proc_counts(pid)
        with held(c, c.status, count=300, n_sources=3) as h:
            results = [run_beo("top", "--json", "--timeout", "5", "-d", addr(1), "-t",
                               str(c.status), env=secret_env(c)) for _ in range(3)]  # fmt: skip
        for rc, out, err in results:
            assert rc == 0 and '"node": "127.0.1.1"' in out, err
        print(check_bounds(h, before, pid))


def test_one_source_holds_at_most_its_share(tmp_path: Path) -> None:
    """One address alone: at most MAX_PER_SOURCE of its connections are held at once
    (its own oldest are shed with "error busy"); a client from another address is
    served at once, with no shedding needed."""
    with cluster(tmp_path, 1, period=PERIOD, secret=SECRET) as c:
        pid = c.procs[1].pid
        before = proc_counts(pid)
        with Holder((addr(1), c.best), ["127.0.3.9"], 100, pid) as h:
            wait_for(lambda: h.closed_with.get("error busy", 0) >= 50, 20, "shedding")
            held_now = []
            for _ in range(5):
                stats = c.status_json()["stats"]  # our own query is authenticated by now
                held_now.append(stats["unauthenticated"])
                text = query(addr(1), c.best, "best", "best", c.secret, 5.0)
                assert text.startswith(f"best {addr(1)} ")
        print(check_bounds(h, before, pid), "; held from the one address:", held_now)
        assert 0 < max(held_now) <= MAX_PER_SOURCE
        assert stats["shed"] >= 50 and stats["busy"] == 0


# --------------------------------------------------- the client's reading


@contextmanager
def fake_port(reply: bytes | None) -> Iterator[int]:
    """A TCP port on 127.0.1.250 standing for a dshd in trouble (or for an impostor):
    ``reply`` is sent to every connection, which is then closed (a first line
    ``auth ...`` is sent alone, and the peer's answer line read, before the rest);
    None: it accepts nothing (the kernel completes the handshake, nobody speaks)."""
    srv = socket.socket()
    srv.bind(("127.0.1.250", 0))
    srv.listen(64)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if not select.select([srv], [], [], 0.05)[0]:
                continue
            conn, _ = srv.accept()
            with conn:
                data = reply or b""
                if data.startswith(b"auth "):  # a challenge: wait for the answer line
                    head, data = data.split(b"\n", 1)
                    conn.sendall(head + b"\n")
                    conn.settimeout(5)
                    with contextlib.suppress(OSError):
                        got = b"x"
                        while got and b"\n" not in got:
                            got = conn.recv(4096)
                conn.sendall(data)

    t = threading.Thread(target=serve, daemon=True)
    if reply is not None:
        t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        if reply is not None:
            t.join(5)
        srv.close()


@pytest.mark.parametrize("reply, says", [
    (b"", "closed the connection without a word ("),
    (b"error busy\n", "is busy ("),
    (None, "did not answer within 1 s"),
])  # fmt: skip
def test_dsh_reads_busy_or_silence_as_busy_not_as_no_secret(
    tmp_path: Path, reply: bytes | None, says: str
) -> None:
    """With a secret, a daemon that closes without a word, says busy, or stays silent
    is tried again within --timeout, then the command runs here with a warning that
    says what happened (before: the first two gave "has no secret")."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BEO_DSH")}
    env["BEO_DSH_SECRET"] = SECRET
    with fake_port(reply) as port:
        rc, out, err = run_beo("dsh", "--timeout", "1", "-d", f"127.0.1.250:{port}",
                               "sh", "-c", "echo local", env=env)  # fmt: skip
    assert (rc, out) == (0, "local\n"), err
    assert err.startswith(f"beo dsh: dshd at 127.0.1.250:{port} ") and says in err, err
    assert err.endswith("; running locally\n") and len(err.splitlines()) == 1, err
    assert "secret" not in err


def test_only_an_answer_without_challenge_means_no_secret(tmp_path: Path) -> None:
    """The hint to drop the secret comes only from a daemon that answered without
    a challenge (a real dshd without a secret)."""
    with cluster(tmp_path, 1, period=PERIOD) as c:
        env = dict(c.env, BEO_DSH_SECRET=SECRET, BEO_DSH_DAEMON=f"{addr(1)}:{c.best}")
        rc, out, err = run_beo("dsh", "sh", "-c", "echo local", env=env)
        assert (rc, out) == (0, "local\n")
        assert err == (f"beo dsh: dshd at {addr(1)}:{c.best} has no secret, but we have one "
                       "(unset $BEO_DSH_SECRET or --secret-file); running locally\n")  # fmt: skip
        rc, out, err = run_beo("top", "--json", "-d", addr(1), "-t", str(c.status), env=env)
        assert rc == 1 and "has no secret" in err


# ------------------------------------------------------------ UDP gossip


def report_of(name: str, load: float, secret: bytes | None, t_ms: int, seq: int = 1) -> bytes:
    return packet.encode(packet.Report(name, seq, t_ms, load, load, load, 1), secret)


def send_flood(dest: tuple[str, int], member: str, secret: bytes, n: int = 10_000) -> int:
    """``n`` datagrams to ``dest``, a quarter of each kind, from up to 5,000 source
    addresses: garbage, ``member``'s report with a wrong MAC, non-members with the
    right MAC (a leaked key), and a captured report of ``member`` replayed (the real
    one, 30 s old). Returns how many were sent."""
    import random

    rng = random.Random(19)
    old_ms = int((time.time() - 30) * 1000)
    captured = report_of(member, 0.0, secret, old_ms, seq=3)
    sent = 0
    member_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    member_sock.bind((member, 0))  # the member's own address: only the MAC tells
    try:
        for k in range(n):
            kind = k % 4
            if kind == 1:
                data = report_of(member, 0.0, b"wrong-key", int(time.time() * 1000) + 10**6)
                member_sock.sendto(data, dest)
            elif kind == 3:
                member_sock.sendto(captured, dest)
            else:
                if kind == 0:
                    data = rng.randbytes(rng.randrange(0, 600))
                else:
                    data = report_of(f"intruder-{k}", 0.0, secret, int(time.time() * 1000))
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.bind((f"127.77.{(k // 2) // 250 % 250}.{(k // 2) % 250 + 1}", 0))
                    s.sendto(data, dest)
            sent += 1
            if k % 500 == 499:
                time.sleep(0.01)  # not faster than the socket buffer is drained
    finally:
        member_sock.close()
    return sent


def test_gossip_flood_leaves_the_table_and_memory_bounded(tmp_path: Path) -> None:
    """10,000 forged, replayed and garbage datagrams from 5,000 addresses: no member
    is created or changed, RSS, threads and fds stay bounded, and `beo dsh`'s query
    is answered within its default 2 s timeout throughout."""
    with cluster(tmp_path, 2, period=PERIOD, secret=SECRET) as c:
        wait_for(lambda: len(c.up(1)) == 2, 10, "convergence")
        c.settle({1: 3.0, 2: 1.0})
        pid = c.procs[1].pid
        for _ in range(50):  # warm up the query path
            c.best_node()
        c.settle({})
        before = proc_counts(pid)
        rejected0 = c.status_json()["stats"]["rejected"]
        flood = threading.Thread(target=send_flood, args=((addr(1), c.gossip), addr(2),
                                                          c.secret), daemon=True)  # fmt: skip
        flood.start()
        answers, samples = 0, []
        while flood.is_alive() or answers < 5:
            assert query(addr(1), c.best, "best", "best", c.secret, 2.0).startswith("best ")
            answers += 1
            samples.append(proc_counts(pid))
            time.sleep(0.05)
        flood.join(60)
        doc = c.status_json()
        rss, threads, fds = proc_counts(pid)
        print(f"{answers} answers during the flood; RSS {before[0]} -> "
              f"{max(s[0] for s in samples)} KiB, threads {threads}, fds {before[2]} -> "
              f"{max(s[2] for s in samples)}; rejected +{doc['stats']['rejected'] - rejected0}")
        assert sorted(m["name"] for m in doc["members"]) == [addr(1), addr(2)]
        node2 = next(m for m in doc["members"] if m["name"] == addr(2))
        assert node2["load1"] == 1.0 and node2["up"]  # neither the forgery nor the replay
        assert doc["stats"]["rejected"] - rejected0 >= 2000  # the flood did arrive
        assert max(s[1] for s in samples) == before[1]
        assert max(s[2] for s in samples) <= before[2] + 2  # a query's own connection
        assert max(s[0] for s in samples) - before[0] <= RSS_BOUND_KB


def test_replayed_report_does_not_bring_back_a_dead_member(tmp_path: Path) -> None:
    """With a secret, a member's report captured earlier and replayed after the member
    went down is refused (before: the member was up again, with the captured load,
    and best; dsh would send jobs to a dead node). Its real return is accepted."""
    with cluster(tmp_path, 2, period=PERIOD, secret=SECRET) as c:
        wait_for(lambda: len(c.up(1)) == 2, 10, "convergence")
        c.settle({1: 5.0, 2: 1.0})
        captured = report_of(addr(2), 0.0, c.secret, int((time.time() - 30) * 1000), seq=3)
        c.stop(2)
        wait_for(lambda: addr(2) not in c.up(1), 10, "node 2 down")
        before = c.status_json()["stats"]["rejected"]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((addr(2), 0))
            for _ in range(5):
                s.sendto(captured, (addr(1), c.gossip))
        wait_for(lambda: c.status_json()["stats"]["rejected"] >= before + 5, 5, "rejections")
        assert c.up(1) == {addr(1)} and c.best_node() == addr(1)
        c.start(2)
        wait_for(lambda: addr(2) in c.up(1), 10, "node 2 back")
        # a member whose clock went back while it was down: SIGHUP lets it in again
        c.stop(2)
        wait_for(lambda: addr(2) not in c.up(1), 10, "node 2 down again")
        c.procs[1].send_signal(signal.SIGHUP)
        wait_for(lambda: "SIGHUP: 2 members" in c.log(1).read_text(), 5, "reload")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((addr(2), 0))
            s.sendto(captured, (addr(1), c.gossip))
        wait_for(lambda: addr(2) in c.up(1), 5, "an old report accepted after SIGHUP")


# ------------------------------------------------ who answers for the daemon


@pytest.mark.parametrize("with_secret", [False, True], ids=["no-secret", "secret"])
def test_a_fake_daemon_cannot_choose_where_or_how_ssh_runs(tmp_path: Path,
                                                           with_secret: bool) -> None:  # fmt: skip
    """Something else answering on the best port (a local user's listener while dshd
    is down, a man in the middle): without a secret, a NAME that ssh would read as an
    option is refused (before: ``ssh -T -oProxyCommand=...``); with a secret, an
    answer not signed with it is refused (before: any answer after the challenge
    was taken). Either way the command runs here, and ssh is never started."""
    mark = tmp_path / "ssh-started"
    name = "-oProxyCommand=x" if not with_secret else "attacker.example"
    best = f"best {name} 10.9.9.9 0.100 other\n".encode()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BEO_DSH")}
    env["BEO_DSH_SSH"] = f"sh -c 'touch {mark}; exit 9' ssh"
    if with_secret:
        env["BEO_DSH_SECRET"] = SECRET
        best = b"auth 0123abcd\n" + best  # the challenge, then an answer of its own
    with fake_port(best) as port:
        rc, out, err = run_beo("dsh", "-d", f"127.0.1.250:{port}", "sh", "-c", "echo local",
                               env=env)  # fmt: skip
    assert (rc, out) == (0, "local\n"), err
    assert not mark.exists()
    why = "answer not signed" if with_secret else "bad node name '-oProxyCommand=x'"
    assert err == f"beo dsh: dshd at 127.0.1.250:{port}: {why}" + (
        " (a dshd without answer MACs, or not a dshd)" if with_secret else "") + \
        "; running locally\n"  # fmt: skip
