"""beokit.udp.UdpBatch: batched UDP with recvmmsg/sendmmsg, and the same answers
without them (use_mmsg=False: one system call per datagram). Real sockets on loopback."""

from __future__ import annotations

import socket
import time

import pytest

from beokit import udp

PATHS = [pytest.param(True, id="mmsg"), pytest.param(False, id="each")]


def _sock(bind: str = "127.0.0.1") -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((bind, 0))
    return s


def _recv_all(b: udp.UdpBatch, want: int) -> list:
    got: list = []
    deadline = time.monotonic() + 5
    while len(got) < want and time.monotonic() < deadline:
        n = b.recv()
        got += b.received(n)
        if not n:
            time.sleep(0.01)
    return got


@pytest.mark.parametrize("mmsg", PATHS)
def test_a_batch_from_several_senders_with_sources_lengths_and_cuts(mmsg):
    s = _sock()
    s.setblocking(False)
    b = udp.UdpBatch(s, batch=8, size=100, use_mmsg=mmsg)
    senders = [_sock(f"127.0.0.{k + 2}") for k in range(3)]
    try:
        assert b.batched == (mmsg and udp.CALLS is not None)
        assert b.recv() == 0  # nothing waiting: 0, no error
        dest = s.getsockname()
        datagrams = [b"", b"x" * 100, b"y" * 101, b"hello"] + [bytes([k]) * k for k in range(8)]
        for k, d in enumerate(datagrams):
            senders[k % 3].sendto(d, dest)
        time.sleep(0.2)
        n = b.recv()
        assert n == 8  # one batch at most
        assert [b.source(i) for i in range(n)] == [senders[i % 3].getsockname() for i in range(n)]
        assert [b.truncated(i) for i in range(n)] == [i == 2 for i in range(n)]
        assert b.payload(2) == b"y" * 100 and b.length(2) == 100  # cut at size
        assert b.datagram(3) == (senders[0].getsockname(), b"hello")
        assert [(d, src) for d, src, _ in b.received(n)] == \
            [(b.payload(i), b.source(i)) for i in range(n)]  # fmt: skip
        assert all(stamp is None for *_, stamp in b.received(n))
        rest = _recv_all(b, len(datagrams) - 8)
        assert [d for d, _, _ in rest] == datagrams[8:]
    finally:
        b.close()
        for x in senders:
            x.close()


@pytest.mark.parametrize("mmsg", PATHS)
def test_arrival_times_from_the_kernel(mmsg):
    s = _sock()
    s.setblocking(False)
    b = udp.UdpBatch(s, batch=4, timestamps=True, use_mmsg=mmsg)
    c = _sock()
    try:
        before = time.time()
        for k in range(6):  # two batches: the control buffers are given back in between
            c.sendto(bytes([k]), s.getsockname())
        got = _recv_all(b, 6)
        assert [d for d, _, _ in got] == [bytes([k]) for k in range(6)]
        assert all(before - 1 <= stamp <= time.time() + 1 for _, _, stamp in got), got
    finally:
        b.close()
        c.close()


@pytest.mark.parametrize("mmsg", PATHS)
def test_queue_and_flush_send_each_datagram_to_its_own_destination(mmsg):
    s = _sock()
    b = udp.UdpBatch(s, batch=3, iovs=2, use_mmsg=mmsg)
    dests = [_sock() for _ in range(4)]
    try:
        for d in dests:
            d.settimeout(5)
        for k, d in enumerate(dests[:3]):
            b.queue(("owner", k), udp.sockaddr_in(*d.getsockname()), b"datagram %d" % k)
        assert b.full and b.n == 3
        with pytest.raises(BufferError):
            b.queue("x", udp.sockaddr_in(*dests[3].getsockname()), b"no room")
        assert b.flush() == [] and b.n == 0
        with pytest.raises(TypeError):
            b.queue("x", "not a sockaddr", b"")  # type: ignore[arg-type]
        for k, d in enumerate(dests[:3]):
            assert d.recvfrom(100) == (b"datagram %d" % k, s.getsockname())
        # a hot path's message written in place: two iovecs gathered into one datagram
        head, body = b"HEAD", b"and the body"
        name = udp.sockaddr_in(*dests[3].getsockname())
        b.sq[0] = udp.address_of(name)
        b.iq[0], b.iq[1] = udp.address_of(head), len(head)
        b.iq[2], b.iq[3] = udp.address_of(body), len(body)
        b.keep.append("hot")
        b.n = 1
        assert b.flush() == []
        assert dests[3].recv(100) == head + body
    finally:
        b.close()
        for d in dests:
            d.close()


@pytest.mark.parametrize("mmsg", PATHS)
def test_a_failed_datagram_is_reported_with_its_owner_and_the_rest_goes(mmsg):
    s = _sock()
    b = udp.UdpBatch(s, batch=4, use_mmsg=mmsg)
    ok = _sock()
    try:
        ok.settimeout(5)
        b.queue("first", udp.sockaddr_in(*ok.getsockname()), b"one")
        b.queue("bad", udp.sockaddr_in("127.0.0.1", 9), b"x" * 70000)  # too long: EMSGSIZE
        b.queue("last", udp.sockaddr_in(*ok.getsockname()), b"two")
        failed = b.flush()
        assert [(owner, left, type(err)) for owner, left, err in failed] == [("bad", 1, OSError)]
        assert [ok.recv(100), ok.recv(100)] == [b"one", b"two"]
    finally:
        b.close()
        ok.close()


@pytest.mark.parametrize("mmsg", PATHS)
def test_the_same_datagram_to_every_destination(mmsg):
    s = _sock()
    b = udp.UdpBatch(s, use_mmsg=mmsg)
    dests = [_sock(f"127.0.0.{k + 2}") for k in range(5)]
    try:
        for d in dests:
            d.settimeout(5)
        b.set_destinations([d.getsockname() for d in dests])
        assert b.send_all(b"report 1") == 0
        assert b.send_all(b"report 2, longer") == 0
        for d in dests:
            assert [d.recv(100), d.recv(100)] == [b"report 1", b"report 2, longer"]
        b.set_destinations([("127.0.0.1", 9), dests[0].getsockname()])
        assert b.send_all(b"z" * 70000) == 2 and isinstance(b.last_error, OSError)
        # not an address literal (Python's name for 255.255.255.255, refused without
        # SO_BROADCAST): sendto for each, the others still get it
        b.set_destinations([("<broadcast>", 9), dests[0].getsockname()])
        assert b.send_all(b"still") == 1
        assert dests[0].recv(100) == b"still"
    finally:
        b.close()
        for d in dests:
            d.close()
