"""dsh pure layers: the gossip packet, the cluster file, the table, scoring, the bump."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beokit.dsh import packet, state
from beokit.dsh.admission import Admission
from beokit.dsh.measure import parse_load_file

SECRET = b"s3cret"

names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1,
                max_size=60).filter(lambda n: 0 < len(n.encode()) <= 255)  # fmt: skip
loads = st.floats(0, 1e4, allow_nan=False, width=32)
reports = st.builds(
    packet.Report, name=names, seq=st.integers(0, 2**32 - 1), sent_ms=st.integers(0, 2**63),
    load1=loads, load5=loads, load15=loads, cpus=st.integers(0, 0xFFFF),
    jobs=st.integers(0, 0xFFFF), mem_total_kb=st.integers(0, 2**64 - 1),
    mem_free_kb=st.integers(0, 2**64 - 1), period_ms=st.integers(0, 2**32 - 1),
)  # fmt: skip


# ------------------------------------------------------------------ packet


@settings(deadline=None)  # no timed assertions: the box is shared
@given(reports, st.sampled_from([None, SECRET]))
def test_packet_roundtrip(r: packet.Report, secret: bytes | None) -> None:
    data = packet.encode(r, secret)
    assert len(data) <= packet.MAX_PACKET
    assert packet.decode(data, secret) == r
    assert packet.decode(data, None) == r  # a daemon without a secret ignores the MAC


@settings(deadline=None, max_examples=60)
@given(reports, st.integers(0, 10_000), st.integers(1, 255))
def test_any_flipped_byte_fails_the_mac(r: packet.Report, pos: int, xor: int) -> None:
    data = bytearray(packet.encode(r, SECRET))
    data[pos % len(data)] ^= xor
    with pytest.raises(packet.PacketError):
        packet.decode(bytes(data), SECRET)


def test_secret_required_and_wrong_secret() -> None:
    r = packet.Report("n1", 1, 1000, 0.5)
    with pytest.raises(packet.PacketError, match="unauthenticated"):
        packet.decode(packet.encode(r), SECRET)
    with pytest.raises(packet.PacketError, match="bad MAC"):
        packet.decode(packet.encode(r, b"other"), SECRET)


@settings(deadline=None)  # no timed assertions: the box is shared
@given(st.binary(max_size=400))
def test_decode_garbage_raises_only_packet_error(data: bytes) -> None:
    try:
        packet.decode(data, SECRET)
    except packet.PacketError:
        pass
    try:
        packet.decode(packet.MAGIC + data, None)
    except packet.PacketError:
        pass


def test_bad_names_and_values() -> None:
    with pytest.raises(packet.PacketError, match="bad node name"):
        packet.encode(packet.Report(""))
    with pytest.raises(packet.PacketError, match="bad node name"):
        packet.encode(packet.Report("x" * 256))
    # negative or infinite loads go out as 0
    r = packet.decode(packet.encode(packet.Report("n", load1=-1.0, load5=float("inf"))))
    assert r.load1 == 0.0 and r.load5 == 0.0


def test_mac_is_keyed_blake2s_as_documented() -> None:
    import hashlib

    data = packet.encode(packet.Report("n1", 3, 1234, 0.5), SECRET)
    body, tag = data[: -packet.MAC_LEN], data[-packet.MAC_LEN :]
    assert data[4] == packet.VERSION == 2
    want = hashlib.blake2s(body, key=SECRET, digest_size=16, person=packet.MAC_PERSON).digest()
    assert tag == want
    # a secret longer than a BLAKE2s key is hashed first (as HMAC does)
    long = b"k" * 100
    assert packet.mac_key(long) == hashlib.sha256(long).digest()
    r = packet.Report("n1", 1, 1, 1.0)
    assert packet.decode(packet.encode(r, long), long) == r
    with pytest.raises(packet.PacketError, match="bad MAC"):
        packet.decode(packet.encode(r, long), long + b"x")


@settings(deadline=None, max_examples=80)
@given(reports, st.sampled_from([None, SECRET]), st.data())
def test_truncated_or_extended_packets_are_rejected(r: packet.Report, secret: bytes | None,
                                                    data: st.DataObject) -> None:  # fmt: skip
    wire = packet.encode(r, secret)
    cut = data.draw(st.integers(0, len(wire) - 1))
    with pytest.raises(packet.PacketError):
        packet.decode(wire[:cut], secret)
    with pytest.raises(packet.PacketError):
        packet.decode(wire + data.draw(st.binary(min_size=1, max_size=40)), secret)


@settings(deadline=None)  # no timed assertions: the box is shared
@given(reports, st.integers(0, 255).filter(lambda v: v != packet.VERSION))
def test_other_versions_are_rejected_even_with_a_good_mac(r: packet.Report, version: int) -> None:
    body = bytearray(packet.encode(r, SECRET)[: -packet.MAC_LEN])
    body[4] = version
    signed = bytes(body) + packet._mac(SECRET, bytes(body))
    for secret in (SECRET, None):
        with pytest.raises(packet.PacketError, match="unsupported version"):
            packet.decode(signed, secret)


def test_version_1_packets_hmac_sha256_are_refused() -> None:
    import hmac

    body = bytearray(packet.encode(packet.Report("n1", 1, 1000, 0.5)))
    body[4], body[5] = 1, packet.FLAG_MAC
    v1 = bytes(body) + hmac.digest(SECRET, bytes(body), "sha256")[:16]
    with pytest.raises(packet.PacketError, match="unsupported version 1"):
        packet.decode(v1, SECRET)


def test_query_handshake_and_best_line() -> None:
    mac = packet.query_mac(SECRET, "best", "abc")
    assert packet.check_query(SECRET, "best", "abc", f"{mac} json\n") == (True, "json")
    assert packet.check_query(SECRET, "status", "abc", f"{mac}\n")[0] is False  # other purpose
    assert packet.check_query(SECRET, "best", "abd", mac)[0] is False  # other nonce
    assert packet.check_query(SECRET, "best", "abc", "")[0] is False
    line = packet.format_best("n3", "10.0.0.3", 1.25, False)
    assert line == "best n3 10.0.0.3 1.250 other\n"
    assert packet.parse_best(line) == ("n3", "10.0.0.3", 1.25, False)
    for bad in ("", "error x", "best a b c d", "best a b x self",
                "best -oProxyCommand=x 1.2.3.4 0.1 other", "best a;b 1.2.3.4 0.1 other",
                "best a\x1bb 1.2.3.4 0.1 other"):  # fmt: skip
        with pytest.raises(packet.PacketError):
            packet.parse_best(bad)
    for good in ("n01", "node-7.cluster.example", "10.1.2.3", "user@n1", "N_1"):
        assert packet.check_node_name(good) == good


@settings(deadline=None, max_examples=100)
@given(st.binary(max_size=300), st.sampled_from(["best", "status"]))
def test_signed_answers(answer: bytes, purpose: str) -> None:
    """The daemon's answer MAC: checks for this query only, any change fails."""
    data = packet.sign_answer(SECRET, purpose, "n0nce", "c0ffee", answer)
    body = packet.check_answer(SECRET, purpose, "n0nce", "c0ffee", data)
    assert body == (answer if answer.endswith(b"\n") else answer + b"\n")
    for args in ((b"other", purpose, "n0nce", "c0ffee"), (SECRET, purpose, "n0nce", "c0ffef"),
                 (SECRET, purpose, "nonce2", "c0ffee")):  # fmt: skip
        with pytest.raises(packet.PacketError):
            packet.check_answer(*args, data)
    with pytest.raises(packet.PacketError, match="not signed"):
        packet.check_answer(SECRET, purpose, "n0nce", "c0ffee", b"best n1 10.0.0.1 1.000 self\n")
    assert packet.query_cnonce(f"{'ab' * 32} best c0ffee\n") == "c0ffee"
    assert packet.query_cnonce("mac best") is None and packet.query_cnonce("m b C0FFEE") is None


# ------------------------------------------------------------- cluster file


def test_cluster_file_forms() -> None:
    text = """# the seed's example, one per line and all on one line
newton.foo.bar 1.0 1.0
galileo.foo.bar 2.0 2.0   # slower
kepler.foo.bar 2.0
n[1-3] 1.5
a 1 b 3 4 c
"""
    specs = {s.name: s for s in state.parse_cluster(text)}
    assert specs["newton.foo.bar"] == state.MemberSpec("newton.foo.bar", 1.0, 1.0)
    assert specs["galileo.foo.bar"] == state.MemberSpec("galileo.foo.bar", 2.0, 2.0)
    assert specs["kepler.foo.bar"] == state.MemberSpec("kepler.foo.bar", 2.0, 1.0)
    assert [specs[f"n{i}"].load_weight for i in (1, 2, 3)] == [1.5] * 3
    assert specs["a"].load_weight == 1 and specs["b"] == state.MemberSpec("b", 3, 4)
    assert specs["c"] == state.MemberSpec("c")
    assert [s.name for s in state.parse_cluster("127.0.1.1\n127.0.1.2 2")] == [
        "127.0.1.1", "127.0.1.2"]  # fmt: skip


@pytest.mark.parametrize("text, message", [
    ("", "no members"),
    ("# only a comment\n", "no members"),
    ("n1 0", "bad load weight '0'"),
    ("n1 1 -2", "bad memory weight '-2'"),
    ("n[1-", "bad node set"),
    ("3.5", "bad member name '3.5'"),
])  # fmt: skip
def test_cluster_file_errors(text: str, message: str) -> None:
    with pytest.raises(state.ClusterFileError, match=message.replace("[", r"\[")):
        state.parse_cluster(text, "f")


def test_load_file_forms() -> None:
    assert parse_load_file("2.5\n") == {"load1": 2.5, "load5": 2.5, "load15": 2.5}
    assert parse_load_file("1 2 3") == {"load1": 1, "load5": 2, "load15": 3}
    assert parse_load_file('{"load1": 4, "cpus": 8, "x": 1}') == {"load1": 4, "cpus": 8}
    for bad in ("", "x", "1 2 3 4", "-1", '{"load1": -1}', "[1]"):
        with pytest.raises(ValueError):
            parse_load_file(bad)


# ------------------------------------------------------------------- table


def mk_table(n: int = 3, **kw) -> state.Table:  # type: ignore[no-untyped-def]
    specs = [state.MemberSpec(f"n{i}") for i in range(1, n + 1)]
    t = state.Table(specs, "n1", period=1.0, expire_periods=3, **kw)
    t.set_members(specs, {f"n{i}": f"10.0.0.{i}" for i in range(1, n + 1)})
    return t


def rep(name: str, load: float = 0.0, t_ms: int = 1000, seq: int = 1, **kw) -> packet.Report:  # type: ignore[no-untyped-def]
    return packet.Report(name, seq, t_ms, load, load, load, kw.pop("cpus", 1), **kw)


def test_members_only_from_their_address_and_never_self() -> None:
    t = mk_table()
    t.set_self(rep("n1"), 0.0)
    assert t.receive(rep("n2"), "10.0.0.2", 0.1) == [state.MemberEvent("up", "n2")]
    (e,) = t.receive(rep("n9"), "10.0.0.9", 0.2)
    assert e.kind == "reject" and "not a member" in e.detail
    (e,) = t.receive(rep("n3"), "10.0.0.66", 0.2)  # spoofed source
    assert e.kind == "reject" and "not its address" in e.detail
    (e,) = t.receive(rep("n1", t_ms=5000), "10.0.0.1", 0.2)
    assert e.kind == "reject" and "this node" in e.detail
    assert {m.name for m in t.members.values() if m.up} == {"n1", "n2"}


def test_replayed_or_old_reports_are_ignored() -> None:
    t = mk_table()
    t.set_self(rep("n1"), 0.0)
    t.receive(rep("n2", 5.0, t_ms=2000, seq=7), "10.0.0.2", 0.0)
    (e,) = t.receive(rep("n2", 0.0, t_ms=2000, seq=7), "10.0.0.2", 0.1)
    assert e.kind == "reject" and "replayed" in e.detail
    (e,) = t.receive(rep("n2", 0.0, t_ms=1999, seq=8), "10.0.0.2", 0.1)
    assert e.kind == "reject"
    assert t.members["n2"].report.load1 == 5.0  # type: ignore[union-attr]
    assert t.receive(rep("n2", 1.0, t_ms=2000, seq=8), "10.0.0.2", 0.2) == []
    assert t.members["n2"].report.load1 == 1.0  # type: ignore[union-attr]


class _RefTable:
    """The membership rules written plainly (the table's receive has a fast path)."""

    def __init__(self, names: list[str], self_name: str) -> None:
        self.self_name = self_name
        self.addr = {n: f"10.0.0.{n[1:]}" for n in names}
        self.report: dict[str, packet.Report] = {}
        self.up: set[str] = {self_name}
        self.accepted = dict.fromkeys(names, 0)
        self.rejected = dict.fromkeys(names, 0)

    def receive(self, r: packet.Report, source: str) -> str:
        if r.name not in self.addr:
            return "reject"
        if r.name == self.self_name or source != self.addr[r.name]:
            self.rejected[r.name] += 1
            return "reject"
        old = self.report.get(r.name)
        if r.name in self.up and old is not None and (r.sent_ms, r.seq) <= (old.sent_ms,
                                                                           old.seq):  # fmt: skip
            self.rejected[r.name] += 1
            return "reject"
        was_up = r.name in self.up
        self.report[r.name], self.accepted[r.name] = r, self.accepted[r.name] + 1
        self.up.add(r.name)
        return "ok" if was_up else "up"


@settings(deadline=None, max_examples=150)
@given(st.lists(st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(0, 4),
                          st.integers(0, 3), st.booleans()), max_size=40))  # fmt: skip
def test_receive_matches_the_plain_rules(steps: list[tuple[int, int, int, int, bool]]) -> None:
    t = mk_table(4)
    ref = _RefTable([f"n{i}" for i in range(1, 5)], "n1")
    t.set_self(rep("n1"), 0.0)
    now = 0.0
    for who, src, t_ms, seq, expire in steps:
        if expire:  # everyone but this node falls silent long enough to expire
            now += 10.0
            t.tick(now)
            ref.up = {"n1"}
            continue
        now += 0.01
        r = rep(f"n{who}", float(t_ms), t_ms=t_ms, seq=seq)
        events = t.receive(r, f"10.0.0.{src}", now)
        want = ref.receive(r, f"10.0.0.{src}")
        kinds = [e.kind for e in events]
        assert kinds == ([] if want == "ok" else [want])
    for n, m in t.members.items():
        assert m.up == (n in ref.up)
        assert m.accepted == ref.accepted[n] and m.rejected == ref.rejected[n]
        if n != "n1":
            assert m.report == ref.report.get(n)


def test_expiry_and_return() -> None:
    t = mk_table()
    t.set_self(rep("n1"), 0.0)
    t.receive(rep("n2"), "10.0.0.2", 0.0)
    assert t.tick(2.9) == []
    (e,) = t.tick(3.1)
    assert e == state.MemberEvent("down", "n2", "not heard from for 3.1 s")
    assert t.up_count() == 1 and t.best(3.1).name == "n1"  # type: ignore[union-attr]
    assert t.tick(10.0) == []  # reported once
    # it comes back (even with an older clock: a restarted node)
    assert t.receive(rep("n2", t_ms=10), "10.0.0.2", 11.0) == [state.MemberEvent("up", "n2")]
    assert t.up_count() == 2


def test_best_follows_load_and_weights() -> None:
    t = mk_table()
    t.set_self(rep("n1", 3.0), 0.0)
    t.receive(rep("n2", 1.0), "10.0.0.2", 0.0)
    t.receive(rep("n3", 2.0), "10.0.0.3", 0.0)
    assert t.best(0.0).name == "n2"  # type: ignore[union-attr]
    t.receive(rep("n2", 4.0, t_ms=2000), "10.0.0.2", 0.5)
    assert t.best(0.5).name == "n3"  # type: ignore[union-attr]
    # n3 twice as slow: (2+1)*2 = 6 > n1's 4
    t.set_members([state.MemberSpec("n1"), state.MemberSpec("n2"), state.MemberSpec("n3", 2.0)])
    assert t.best(0.5).name == "n1"  # type: ignore[union-attr]
    assert [n for _, n in t.scores(0.5)] == ["n1", "n2", "n3"]


def test_idle_cpus_are_equal_and_jobs_count_as_load() -> None:
    t = mk_table()
    t.set_self(rep("n1", 0.0, cpus=4), 0.0)
    t.receive(rep("n2", 2.0, cpus=4), "10.0.0.2", 0.0)  # 2 of 4 CPUs busy: still a free CPU
    t.receive(rep("n3", 0.1, cpus=1, jobs=2), "10.0.0.3", 0.0)  # load lags, jobs do not
    s = dict((n, sc) for sc, n in t.scores(0.0))
    assert s["n1"] == s["n2"] == 1.0 and s["n3"] == 3.0


def test_extra_load_bump_until_next_report() -> None:
    t = mk_table(extra_load=1.0)
    t.set_self(rep("n1", 0.0), 0.0)
    t.receive(rep("n2", 0.0), "10.0.0.2", 0.0)
    t.receive(rep("n3", 0.0), "10.0.0.3", 0.0)
    picks = []
    for _ in range(6):
        m = t.best(0.1)
        assert m is not None
        t.bump(m, 0.1)
        picks.append(m.name)
    assert picks == ["n1", "n2", "n3", "n1", "n2", "n3"]  # spread, not piled on one node
    assert t.members["n2"].extra_load(1.0) == 2.0
    # a report right after the bump does not clear it (the job is not started yet)...
    t.receive(rep("n2", 0.0, t_ms=1100), "10.0.0.2", 0.5)
    assert t.members["n2"].extra_load(1.0) == 2.0
    # ... the first one a period later does
    t.receive(rep("n2", 2.0, t_ms=2200), "10.0.0.2", 1.2)
    assert t.members["n2"].extra_load(1.0) == 0.0
    # a node that stops reporting loses its bumps with its membership
    t.tick(5.0)
    assert t.members["n3"].extra == [] and not t.members["n3"].up


def test_zero_extra_load_never_bumps_and_ties_random() -> None:
    t = mk_table(extra_load=0.0)
    for i in (1, 2, 3):
        (t.set_self(rep("n1"), 0.0) if i == 1 else t.receive(rep(f"n{i}"), f"10.0.0.{i}", 0.0))
    assert {t.best(0.0).name for _ in range(5)} == {"n1"}  # type: ignore[union-attr]
    rng = random.Random(1)
    assert {t.best(0.0, rng).name for _ in range(50)} == {"n1", "n2", "n3"}  # type: ignore[union-attr]


def test_score_functions() -> None:
    t = mk_table()
    t.set_members([state.MemberSpec("n1"), state.MemberSpec("n2", 1.0, 2.0), state.MemberSpec("n3")],
                  {"n1": "10.0.0.1", "n2": "10.0.0.2", "n3": "10.0.0.3"})  # fmt: skip
    t.set_self(rep("n1", 0.0, mem_total_kb=1000, mem_free_kb=100), 0.0)
    t.receive(rep("n2", 0.0, mem_total_kb=1000, mem_free_kb=100), "10.0.0.2", 0.0)
    t.receive(rep("n3", 0.0, mem_total_kb=1000, mem_free_kb=900, jobs=1), "10.0.0.3", 0.0)
    t.score = state.score_function("loadmem")
    s = {n: sc for sc, n in t.scores(0.0)}
    assert s["n1"] == pytest.approx(1.9) and s["n2"] == pytest.approx(1.45)
    assert s["n3"] == pytest.approx(2.1)
    t.score = state.score_function("jobs")
    assert t.best(0.0).name == "n1"  # type: ignore[union-attr]
    t.score = state.score_function("test_dsh_pure:prefer_n3")
    assert t.best(0.0).name == "n3"  # type: ignore[union-attr]
    for bad in ("nope", "no.such.module:f", "beokit.dsh.state:missing", "beokit.dsh.state:log"):
        with pytest.raises(state.ClusterFileError, match="bad score"):
            state.score_function(bad)


def prefer_n3(m: state.Member, extra: float, now: float) -> float:
    """A plugged-in scoring function (used by test_score_functions)."""
    return 0.0 if m.name == "n3" else 1.0


def test_reload_keeps_state_and_requires_self() -> None:
    t = mk_table()
    t.set_self(rep("n1"), 0.0)
    t.receive(rep("n2", 2.0), "10.0.0.2", 0.0)
    t.set_members([state.MemberSpec("n1"), state.MemberSpec("n2", 3.0), state.MemberSpec("n4")],
                  {"n1": "10.0.0.1", "n2": "10.0.0.2", "n4": "10.0.0.4"})  # fmt: skip
    assert t.members["n2"].up and t.members["n2"].spec.load_weight == 3.0
    assert "n3" not in t.members and not t.members["n4"].up
    with pytest.raises(state.ClusterFileError, match="not a member"):
        t.set_members([state.MemberSpec("n2")])


def test_snapshot_and_text() -> None:
    t = mk_table()
    t.set_self(rep("n1", 0.5, mem_total_kb=2048 * 1024, mem_free_kb=1024 * 1024), 0.0)
    snap = t.snapshot(0.25)
    assert snap["node"] == "n1" and snap["up"] == 1 and len(snap["members"]) == 3
    text = state.format_status(snap)
    assert text.splitlines()[0] == "# dshd n1: 1/3 up, period 1 s"
    assert "n2                   down  (never heard from)" in text
    assert text.splitlines()[2].split() == ["n1", "up", "0.50", "0.50", "0.50", "1", "0",
                                            "0.0", "1024M", "1.500", "0.2"]  # fmt: skip


# --------------------------------------------------------------- admission


def test_admission_sheds_the_biggest_source_then_the_oldest() -> None:
    a = Admission(capacity=4, per_source=3)
    k1, _ = a.admit("evil")
    k2, _ = a.admit("evil")
    k3, _ = a.admit("other")
    k4, shed = a.admit("evil")
    assert shed == [] and len(a) == 4
    # full: the source with most pending loses its oldest
    k5, shed = a.admit("client")
    assert shed == [k1] and k5 is not None and a.pending("evil") == 2
    # a source at its share loses its own oldest, even with room elsewhere
    a.done(k3)
    k6, _ = a.admit("evil")
    assert a.pending("evil") == 3
    k7, shed = a.admit("evil")
    assert shed == [k2] and a.pending("evil") == 3
    # a proven connection is never shed; when all are proven, the new one is refused
    for k in (k4, k5, k6, k7):
        a.serving(k)
    assert a.admit("late") == (None, [])
    a.done(k5)
    assert a.admit("late")[0] is not None
    a.done(k1)  # shed earlier: nothing happens
    assert len(a) == 4
    with pytest.raises(ValueError):
        Admission(capacity=4, per_source=5)


@settings(deadline=None, max_examples=200)
@given(st.lists(st.tuples(st.sampled_from(["admit", "prove", "done"]), st.integers(0, 5),
                          st.integers(0, 40)), max_size=120))  # fmt: skip
def test_admission_invariants(ops: list[tuple[str, int, int]]) -> None:
    """Bounded table and per-source share; proven ones never shed; only a biggest
    source loses a connection, and its oldest; refused only when all are proven."""
    a = Admission(capacity=8, per_source=3)
    pending: dict[int, str] = {}  # key -> source, in admission order
    proven: set[int] = set()
    for op, src_i, pick in ops:
        src = f"s{src_i}"
        if op == "admit":
            counts = {s: list(pending.values()).count(s) for s in set(pending.values())}
            key, shed = a.admit(src)
            assert len(shed) <= 1 and not set(shed) & proven
            if key is None:
                assert not pending and len(proven) == 8 and shed == []
                continue
            if shed:
                victim = pending[shed[0]]
                if counts.get(src, 0) >= 3:
                    assert victim == src
                else:
                    assert counts[victim] == max(counts.values())
                assert shed[0] == min(k for k, s in pending.items() if s == victim)
                del pending[shed[0]]
            pending[key] = src
        elif pending or proven:
            keys = sorted([*pending, *proven])
            key = keys[pick % len(keys)]
            if op == "prove":
                a.serving(key)
                if pending.pop(key, None) is not None:
                    proven.add(key)
            else:
                a.done(key)
                pending.pop(key, None)
                proven.discard(key)
        assert len(a) == len(pending) + len(proven) <= 8
        assert all(a.pending(s) == list(pending.values()).count(s) <= 3
                   for s in set(pending.values()))  # fmt: skip


def test_replay_marks_kept_while_down_with_keep_marks() -> None:
    """With a secret (keep_marks), a down member's last report still refuses older
    ones: a captured report replayed after the member died does not bring it back.
    A newer report does; SIGHUP (forget_marks) lets an older one in once."""
    t = mk_table(keep_marks=True)
    t.set_self(rep("n1"), 0.0)
    t.receive(rep("n2", 1.0, t_ms=5000, seq=9), "10.0.0.2", 0.0)
    t.tick(10.0)
    assert not t.members["n2"].up
    (e,) = t.receive(rep("n2", 0.0, t_ms=4000, seq=3), "10.0.0.2", 11.0)
    assert e.kind == "reject" and "replayed" in e.detail and not t.members["n2"].up
    assert t.receive(rep("n2", 2.0, t_ms=6000), "10.0.0.2", 12.0) == [state.MemberEvent("up", "n2")]
    t.tick(20.0)
    t.forget_marks()
    assert t.receive(rep("n2", 0.5, t_ms=10), "10.0.0.2", 21.0) == [state.MemberEvent("up", "n2")]
    t.tick(30.0)
    (e,) = t.receive(rep("n2", 0.5, t_ms=5), "10.0.0.2", 31.0)  # once only
    assert e.kind == "reject"
