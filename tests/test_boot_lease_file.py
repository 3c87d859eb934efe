"""beo boot's lease file: atomic writes that never share a temporary file, and no
write started once the server stops (the DHCP benchmark saw "cannot write the lease
file ... No such file or directory: '.leases.json.16558.tmp'" at shutdown)."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import tomllib
from pathlib import Path

from beokit.boot import config, lease_file
from beokit.boot.leases import LeaseDB

CONFIG = """
[server]
address = "127.0.2.1"
root = "."
[network]
subnet = "127.0.0.0/16"
pool = "127.0.16.0-127.0.16.255"
"""


def test_two_writers_never_share_a_temporary_file(tmp_path, monkeypatch):
    """Two writes at once (the worker thread's and shutdown's): each has its own
    temporary file, both renames succeed, the file is one of the two texts, whole."""
    path = tmp_path / "leases.json"
    barrier = threading.Barrier(2, timeout=10)
    first = threading.local()
    real_fsync = os.fsync

    def fsync(fd: int) -> None:  # both writers have written their temporary file
        if not getattr(first, "done", False):
            first.done = True
            barrier.wait()
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    errors: list[BaseException] = []

    def write(text: str) -> None:
        try:
            lease_file.write_atomic(path, text)
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    texts = ['{"a": 1}', '{"b": 2, "longer": true}']
    threads = [threading.Thread(target=write, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert errors == []
    assert path.read_text() in texts
    assert sorted(p.name for p in tmp_path.iterdir()) == ["leases.json"]  # no temporary left
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_no_write_starts_once_closing_began(tmp_path, monkeypatch):
    """A write in flight at shutdown: its end starts no other, the final write comes
    after it (never beside it), and has the last state."""
    cfg = config.parse(tomllib.loads(CONFIG), tmp_path)
    db = LeaseDB(cfg)
    path = tmp_path / "leases.json"
    writes: list[tuple[float, float, str]] = []
    real = lease_file.write_atomic

    def slow(p: Path, text: str) -> None:
        t0 = time.monotonic()
        time.sleep(0.3)
        real(p, text)
        writes.append((t0, time.monotonic(), text))

    monkeypatch.setattr(lease_file, "write_atomic", slow)
    lf = lease_file.LeaseFile(path, db)

    async def main() -> None:
        db.changed = True
        lf.schedule()  # a write in flight...
        assert lf.writing is not None
        db.admitted["52:54:00:00:00:01"] = 7  # ...and a change it does not have
        db.changed = True
        await lf.close()
        lf.schedule()  # closed: nothing starts
        assert lf.writing is None
        await asyncio.sleep(0.5)  # (a write started behind close's back would end here)

    asyncio.run(main())
    assert len(writes) == 2, writes
    (s1, e1, _), (s2, _e2, last) = sorted(writes)
    assert e1 <= s2  # one after the other
    assert json.loads(last)["admitted"] == {"52:54:00:00:00:01": 7}
    assert json.loads(path.read_text())["admitted"] == {"52:54:00:00:00:01": 7}
