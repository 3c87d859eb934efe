"""Fuzzing the beo boot parsers and logic with hypothesis: no exception escapes, no hang."""

from __future__ import annotations

import copy
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beokit.boot import config, dhcp, dns, tftp
from beokit.boot.leases import LeaseDB
from beokit.boot.loadgen import pxe_options, request

CFG = config.parse({
    "server": {"address": "10.0.0.1", "root": "/srv"},
    "network": {"subnet": "10.0.0.0/16", "pool": "10.0.200.0-10.0.200.15"},
    "nodes": {"base": "10.0.1.0", "count": 50, "admit": "auto"},
    "boot": {"ipxe_script": "boot.ipxe"},
}, Path("/"))  # fmt: skip
FAST = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def valid_dhcp() -> st.SearchStrategy[bytes]:
    """Well-formed requests with random options: exercises the logic, not just the parser."""
    opts = st.dictionaries(st.integers(1, 254), st.binary(max_size=40), max_size=6)
    return st.builds(
        lambda t, m, o, pxe: request(t, m, 1, "0.0.0.0", extra={**(pxe_options(7) if pxe else {}),
                                                                 **o}),
        st.integers(0, 10), st.binary(min_size=6, max_size=6), opts, st.booleans())  # fmt: skip


def mutated(data: bytes) -> st.SearchStrategy[bytes]:
    return st.builds(lambda i, b: data[:i] + bytes([b]) + data[i + 1 :],
                     st.integers(0, len(data) - 1), st.integers(0, 255))  # fmt: skip


@FAST
@given(st.one_of(st.binary(max_size=600), valid_dhcp(),
                 mutated(request(dhcp.REQUEST, b"\x01" * 6, 1, "0.0.0.0"))))  # fmt: skip
def test_dhcp_parser_and_logic_never_raise(data):
    try:
        p = dhcp.parse(data)
        p.encode()
        _ = (p.client_key, p.arch, p.is_ipxe, p.user_classes, p.msg_type)
    except dhcp.DhcpError:
        pass
    for proxy in (False, True):
        lg = dhcp.DhcpLogic(CFG, LeaseDB(CFG), proxy=proxy)
        r = lg.handle(data, ("10.0.0.5", 68), 1000.0)
        if r is not None:
            dhcp.parse(r.data)  # our replies always parse
        lg.handle(data, ("10.0.0.5", 68), 1000.0, port=dhcp.PXE_PORT)


@FAST
@given(st.one_of(st.binary(max_size=300),
                 st.builds(lambda n, o: tftp.build_rrq(n, "octet", o),
                           st.text("ab/.\\x", min_size=1, max_size=20),
                           st.dictionaries(st.sampled_from(["blksize", "tsize", "windowsize",
                                                            "timeout", "x"]),
                                           st.text("0123456789a", max_size=8), max_size=4))))  # fmt: skip
def test_tftp_parser_and_negotiation_never_raise(data):
    try:
        m = tftp.parse(data)
    except tftp.TftpError:
        return
    if isinstance(m, tftp.Request):
        got = tftp.negotiate(m.options, 10**6, tftp.Limits())
        tftp.Transfer(10**6, m.options, got, tftp.Limits(), 0.0)


@FAST
@given(st.integers(0, 200_000), st.sampled_from([8, 512, 1468]), st.integers(1, 16),
       st.lists(st.tuples(st.booleans(), st.integers(0, 0xFFFF)), max_size=300))  # fmt: skip
def test_transfer_any_ack_sequence_terminates(size, blksize, window, events):
    """Random ACKs and timeouts: state stays consistent; a good client still finishes."""
    acc = {"blksize": str(blksize), "windowsize": str(window)}
    x = tftp.Transfer(size, {}, acc, tftp.Limits(retries=1000), 0.0)
    now = 0.0
    for is_timer, block in events:
        while (b := x.ready()) is not None:
            x.sent(b, 0, now)
        if is_timer:
            now = max(now, x.deadline)
            x.on_timer(now)
        else:
            x.on_ack(block, now)
        assert x.acked <= x.nblocks and x.next <= x.nblocks + 1
    for _ in range(x.nblocks * 2 + 10):  # then a well-behaved client
        sent = None
        while (b := x.ready()) is not None:
            x.sent(b, 0, now)
            sent = b
        if x.done or x.failed:
            break
        if sent is None:
            now = x.deadline
            x.on_timer(now)
        else:
            x.on_ack(sent & 0xFFFF, now)
    assert x.done


def state(x: tftp.Transfer) -> dict:
    return {k: getattr(x, k) for k in tftp.Transfer.FIELDS}


def _bytes_of(x: tftp.Transfer, b: int) -> int:
    return x.oack_len if b == 0 else min(x.blksize, x.size - (b - 1) * x.blksize) + 4


@FAST
@given(st.integers(0, 100_000), st.sampled_from([8, 512, 1468]), st.integers(1, 16),
       st.booleans(), st.lists(st.tuples(st.integers(0, 5), st.integers(0, 0xFFFF)),
                               max_size=200))  # fmt: skip
def test_take_is_ready_and_sent_in_a_loop(size, blksize, window, oack, events):
    """The hot path's take()/ack_take()/unsend() keep the state on_ack() and the
    ready()/sent() loop keep."""
    acc = {"blksize": str(blksize), "windowsize": str(window)} if oack else {}
    a = tftp.Transfer(size, {}, acc, tftp.Limits(retries=1000), 0.0)
    b = tftp.Transfer(size, {}, acc, tftp.Limits(retries=1000), 0.0)
    now = 0.0
    for kind, block in events:
        now += 0.01
        got = []
        while (k := a.ready()) is not None:
            a.sent(k, _bytes_of(a, k), now)
            got.append(k)
        r = b.take(now)
        assert list(r) == got
        if kind == 3 and len(r) > 1:  # the socket refused the tail: rewind both
            cut = r.start + block % len(r)
            b.unsend(cut, r.stop)
            a.next = cut
            a.packets_sent -= r.stop - cut
            a.bytes_sent -= sum(_bytes_of(a, k) for k in range(cut, r.stop))
        elif kind >= 4:  # an ACK (the latest block sent, or any) then the window, fused
            w = (a.next - 1) & 0xFFFF if kind == 4 else block
            a.on_ack(w, now)
            got = []
            while (k := a.ready()) is not None:
                a.sent(k, _bytes_of(a, k), now)
                got.append(k)
            assert list(b.ack_take(w, now)) == got
        elif kind == 0:
            now = max(now, a.deadline, b.deadline)
            assert a.on_timer(now) == b.on_timer(now)
        else:
            w = (a.next - 1) & 0xFFFF if kind == 1 else block
            assert a.on_ack(w, now) == b.on_ack(w, now)
        assert state(a) == state(b)


@FAST
@given(st.integers(0, 100_000), st.sampled_from([8, 512, 1468]), st.integers(1, 3),
       st.booleans(), st.lists(st.tuples(st.integers(0, 4), st.integers(0, 0xFFFF)),
                               max_size=200))  # fmt: skip
def test_lockstep_step_is_ack_take_of_expect(size, blksize, window, oack, events):
    """Whenever ``expect`` is armed, ``step()`` is ``ack_take(expect)``: the same one
    block and the same state after; and it is armed for a lock-step client."""
    acc = {"blksize": str(blksize), "windowsize": str(window)} if oack else {}
    x = tftp.Transfer(size, {}, acc, tftp.Limits(retries=1000), 0.0)
    now, steps = 0.0, 0
    x.take(now)
    for kind, block in events:
        now += 0.01
        if x.expect >= 0:
            assert x.window == 1 and x.acked == x.next - 2 and x.next < x.nblocks
            c = copy.deepcopy(x)
            assert [c.step(now)] == list(x.ack_take(x.expect, now))
            assert state(c) == state(x)
            steps += 1
        elif kind == 0:
            now = max(now, x.deadline)
            x.on_timer(now)
            x.take(now)
        elif kind == 1:
            x.ack_take(block, now)  # any ACK
        elif kind == 2 and x.next > 1:
            x.unsend(x.next - 1, x.next)  # the socket refused the last one
            x.take(now)
        else:
            x.ack_take((x.next - 1) & 0xFFFF, now)  # a good client
    if window == 1 and all(k >= 3 for k, _ in events) and x.nblocks > len(events) + 3:
        assert steps >= len(events) - 1  # a good lock-step client: all but the OACK's ACK


@FAST
@given(st.binary(max_size=300))
def test_dns_never_raises(data):
    dns.answer(data, LeaseDB(CFG))
