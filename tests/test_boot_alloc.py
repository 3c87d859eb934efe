"""beo boot's allocation at 20,000 leases and more (issue 21): the free-slot map against
a plain model, the lease table's maps kept equal to its tables through random
operations, and per-packet questions that no longer probe the pool address by address
(counted, not timed)."""

from __future__ import annotations

import random
import zlib
from pathlib import Path

import pytest

from beokit.boot import config, dhcp, free_map
from beokit.boot.leases import LeaseDB
from beokit.boot.loadgen import mac_of, request


def naive_first_free(counts: list[int], start: int) -> int | None:
    n = len(counts)
    for k in range(n):
        i = (start + k) % n
        if counts[i] == 0:
            return i
    return None


@pytest.mark.parametrize("size", [1, 7, 4096, 4097, 3 * 4096 + 5, 20000])
def test_free_map_finds_what_a_plain_search_finds(size):
    rnd = random.Random(size)
    fm = free_map.FreeMap(size)
    model = [0] * size
    for step in range(3000):
        i = rnd.randrange(size)
        if model[i] == 0 or (model[i] < 4 and rnd.random() < 0.6):
            fm.take(i)
            model[i] += 1
        else:
            fm.give(i)
            model[i] -= 1
        if step % 7 == 0:
            start = rnd.randrange(size)
            assert fm.first_free(start) == naive_first_free(model, start)
    for i in range(size):  # full: nothing free; one given back: found from anywhere
        if model[i] == 0:
            fm.take(i)
            model[i] = 1
    assert fm.first_free(rnd.randrange(size)) is None
    j = rnd.randrange(size)
    for _ in range(model[j]):
        fm.give(j)
    assert fm.first_free(rnd.randrange(size)) == j
    assert fm.first_free(j) == j


def cfg_of(pool: str, admit: str = "manual", count: int = 100) -> config.BootConfig:
    return config.parse({
        "server": {"address": "10.0.0.1", "root": "/srv"},
        "network": {"subnet": "10.0.0.0/8", "pool": pool, "temporary_lease_time": 30},
        "nodes": {"base": "10.0.1.0", "count": count, "admit": admit},
        "hosts": [{"mac": "52:54:00:00:01:00", "ip": "10.1.0.5", "name": "fs"}],
    }, Path("/"))  # fmt: skip


def expected_counts(db: LeaseDB) -> list[int]:
    counts = [0] * db.cfg.pool_size
    lo = int(db.cfg.pool[0])
    for table in (db.by_ip, db.pool_offers, db.declined, {str(h.ip) for h in db.cfg.hosts}):
        for ip in table:
            i = int.from_bytes(bytes(map(int, ip.split("."))), "big") - lo
            if 0 <= i < len(counts):
                counts[i] += 1
    return counts


def test_the_maps_follow_the_tables_through_random_operations():
    """Offers, leases, renewals, releases, declines, expiry and admissions in random
    order: the pool and node maps always count exactly the holders in the tables, and
    a DISCOVER's address is the first one from its hash that no table holds."""
    c = cfg_of("10.1.0.0-10.1.0.199", admit="manual")
    db = LeaseDB(c)
    rnd = random.Random(11)
    now = 1000.0
    for step in range(4000):
        key = mac_of(rnd.randrange(300)).hex(":")
        r = rnd.random()
        now += rnd.random() * 0.5
        if r < 0.45:
            b = db.binding(key, now, reserve=True)
            if b is not None and rnd.random() < 0.7:
                db.commit(key, b, now)
        elif r < 0.6:
            lease = db.leases.get(key)
            if lease is not None:
                db.release(key, lease.ip)
        elif r < 0.7:
            lease = db.leases.get(key)
            if lease is not None:
                db.decline(key, lease.ip, now)
        elif r < 0.8:
            db.expire(now)
        elif r < 0.82:
            db.admit(key)
        else:
            db.forget_offer(key)
        if step % 50 == 0:
            assert list(db.pool_map.counts) == expected_counts(db), step
            assert set(db.offer_of.values()) == set(db.pool_offers)
            holds = [0] * db.node_map.size
            holds[0] += 1
            for n in db._node_owner:
                holds[n] += 1
            for n, _t in db.offers.values():
                holds[n] += 1
            assert list(db.node_map.counts) == holds
            fresh = mac_of(10_000 + step).hex(":")
            want = naive_first_free(expected_counts(db), zlib.crc32(fresh.encode()) % 200)
            got = db.binding(fresh, now)
            assert (got and int(got.ip) - int(c.pool[0])) == want


def test_a_discover_never_probes_the_pool_address_by_address(monkeypatch):
    """20,000 leases in a pool of 20,001 addresses: a new client's DISCOVER gets the one
    free address, and the lease table looks at a bounded number of addresses to find it
    (before: every address from the client's hash on, one by one); with the pool full,
    the answer 'none free' costs as little."""
    c = cfg_of("10.2.0.0-10.2.78.32")  # 20,001 addresses
    assert c.pool_size == 20001
    lg = dhcp.DhcpLogic(c, db := LeaseDB(c))
    for i in range(20000):
        key = mac_of(i).hex(":")
        b = db.binding(key, 1000.0, reserve=True)
        db.commit(key, b, 1000.0)
    assert len(db.leases) == 20000
    free = next(str(c.pool[0] + i) for i in range(20001) if db.pool_map.is_free(i))
    looked: list[str] = []
    real = LeaseDB._taken

    def taken(self, ip, key, now):  # noqa: ANN001
        looked.append(ip)
        return real(self, ip, key, now)

    monkeypatch.setattr(LeaseDB, "_taken", taken)
    newcomer = mac_of(999_999)
    r = lg.handle(request(dhcp.DISCOVER, newcomer, 7, "0.0.0.0"), ("0.0.0.0", 68), 1001.0)
    assert str(dhcp.parse(r.data).yiaddr) == free
    assert len(looked) <= 2
    r = lg.handle(request(dhcp.DISCOVER, mac_of(999_998), 8, "0.0.0.0"), ("0.0.0.0", 68),
                  1001.0)  # fmt: skip
    assert r is None and lg.counts["pool-exhausted"] == 1 and len(looked) <= 4


def test_auto_admission_takes_the_lowest_free_number_from_the_map():
    c = cfg_of("10.1.0.0-10.1.0.9", admit="auto", count=5000)
    db = LeaseDB(c)
    got = []
    for i in range(100):
        key = mac_of(i).hex(":")
        b = db.binding(key, 1000.0, reserve=True)
        got.append(b.node)
        if i % 2:
            db.commit(key, b, 1000.0)
    assert got == list(range(1, 101))
    assert db.node_map.first_free(1) == 101
    db.expire(1000.0 + 61)  # the uncommitted holds end: their numbers are free again
    assert db.node_map.first_free(1) == 1
    b = db.binding(mac_of(5000).hex(":"), 1062.0, reserve=True)
    assert b.node == 1
