"""beo boot's lease journal (issue 21): append-only records, a replay after a cut at any
byte gives a prefix of the history, a corrupt record stops the replay at its byte,
background compaction, the previous version's JSON file read once, and a journal that
cannot be written (a full or read-only file system, for real) while the server goes on
answering from memory."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import pytest
from boot_helpers import PORTS, SERVER, Server, write_config

from beokit.boot import config, lease_file, lease_journal, loadgen
from beokit.boot.config import BootConfigError
from beokit.boot.leases import Lease, LeaseDB

CONFIG = """
[server]
address = "127.0.2.1"
root = "."
[network]
subnet = "127.0.0.0/16"
pool = "127.0.16.0-127.0.31.255"
[nodes]
base = "127.0.8.0"
count = 1000
"""
FAR = 4e9  # an expiry far in the future (wall clock)


def db_of() -> LeaseDB:
    return LeaseDB(config.parse(tomllib.loads(CONFIG), Path(".")))


def history(n: int, seed: int) -> list[tuple]:
    """``n`` random lease events over a few dozen clients (leases, renewals, releases,
    admissions), as ``LeaseDB.events`` holds them."""
    rnd = random.Random(seed)
    out: list[tuple] = []
    for i in range(n):
        key = f"52:54:00:00:00:{rnd.randrange(40):02x}"
        r = rnd.random()
        if r < 0.6:
            out.append(("lease", key, f"127.0.16.{rnd.randrange(250)}", "", FAR + i,
                        "temporary", rnd.choice(["", "01ab"])))  # fmt: skip
        elif r < 0.85:
            out.append(("release", key))
        else:
            out.append(("admit", key, rnd.randrange(1, 1000)))
    return out


def states(events: list[tuple]) -> list[tuple[dict, dict]]:
    """The state after each prefix of ``events`` (0 to all)."""
    admitted: dict[str, int] = {}
    leases: dict[str, Lease] = {}
    out = [({}, {})]
    for e in events:
        if e[0] == "lease":
            leases[e[1]] = Lease(*e[1:])
        elif e[0] == "release":
            leases.pop(e[1], None)
        else:
            admitted[e[1]] = e[2]
        out.append((dict(admitted), dict(leases)))
    return out


# -- the format, pure ------------------------------------------------------------------------


def test_replay_after_a_cut_at_any_byte_is_a_prefix_of_the_history():
    events = history(300, seed=1)
    data = lease_journal.HEADER + lease_journal.encode_all(events)
    want = states(events)
    rnd = random.Random(2)
    cuts = set(range(0, len(lease_journal.HEADER) + 200)) | {len(data)}
    cuts |= {rnd.randrange(len(data)) for _ in range(400)}
    for cut in sorted(cuts):
        st = lease_journal.replay(data[:cut], 0.0)
        k = max(st.records - 1, 0)  # (the header is a record)
        assert (st.admitted, st.leases) == want[k], cut
        assert not st.corrupt  # a cut is never taken for corruption...
        assert st.torn == (cut != st.end)  # ...only an unfinished last line is cut off
        assert data[: st.end].count(b"\n") == st.records
    assert lease_journal.replay(data, 0.0).records == len(events) + 1


def test_a_corrupt_record_stops_the_replay_at_its_byte():
    events = history(50, seed=3)
    recs = [lease_journal.encode(e) for e in events]
    at = len(lease_journal.HEADER) + sum(len(r) for r in recs[:20])
    data = bytearray(lease_journal.HEADER + b"".join(recs))
    data[at + 15] ^= 0x01  # one bit of record 20
    st = lease_journal.replay(bytes(data), 0.0)
    assert st.corrupt and st.records == 21 and st.end == at
    assert st.problem == f"record at byte {at}: bad checksum"
    assert (st.admitted, st.leases) == states(events)[20]


def test_expired_leases_are_left_out_and_bad_files_refused():
    events = [("lease", "52:54:00:00:00:01", "127.0.16.1", "", 100.0, "temporary", ""),
              ("lease", "52:54:00:00:00:02", "127.0.16.2", "", 300.0, "temporary", "")]  # fmt: skip
    st = lease_journal.replay(lease_journal.HEADER + lease_journal.encode_all(events), 200.0)
    assert list(st.leases) == ["52:54:00:00:00:02"] and st.dropped == 1
    for bad in (b"hello\n", b'{"format": "x"}\n', lease_journal.encode(["format", "other/9"])):
        with pytest.raises(lease_journal.JournalError):
            lease_journal.replay(bad, 0.0)


# -- the driver: a real writer thread and real files ----------------------------------------------


def run_events(lf: lease_file.LeaseFile, events: list[tuple], per_batch: int = 7) -> None:
    """Make the changes to the database of a loaded LeaseFile and hand them off as the
    server's loop would, then close it."""
    db = lf.db

    async def main() -> None:
        for i in range(0, len(events), per_batch):
            for e in events[i : i + per_batch]:
                if e[0] == "lease":
                    db.leases[e[1]] = Lease(*e[1:])
                elif e[0] == "release":
                    db.leases.pop(e[1], None)
                else:
                    db.admitted[e[1]] = e[2]
                db.events.append(e)
            lf.soon()
            await asyncio.sleep(0.002)  # (the writer thread runs meanwhile)
            lf.tick(time.monotonic())
        await lf.close()

    asyncio.run(main())


def test_journal_written_by_the_writer_thread_restores_the_state(tmp_path):
    path = tmp_path / "leases.journal"
    events = history(500, seed=4)
    lf = lease_file.LeaseFile(path, db_of())
    lf.load()
    run_events(lf, events)
    db = db_of()
    lease_file.LeaseFile(path, db).load()
    assert (db.admitted, db.leases) == states(events)[-1]
    assert path.read_bytes().count(b"\n") == len(events) + 1  # one record per event


def test_a_cut_journal_restarts_with_a_prefix_and_appends_after_it(tmp_path, caplog):
    path = tmp_path / "leases.journal"
    events = history(200, seed=5)
    lf = lease_file.LeaseFile(path, db_of())
    lf.load()
    run_events(lf, events)
    whole = path.read_bytes()
    want = states(events)
    for cut in random.Random(6).sample(range(len(lease_journal.HEADER), len(whole)), 12):
        path.write_bytes(whole[:cut])
        lf = lease_file.LeaseFile(path, db := db_of())
        lf.load()  # (an unfinished last line is cut off)
        k = path.read_bytes().count(b"\n") - 1
        assert (db.admitted, db.leases) == want[k]
        more = [("admit", "52:54:00:00:01:00", 999)]
        run_events(lf, more)  # appending after the cut: a whole record, readable
        again = db_of()
        lease_file.LeaseFile(path, again).load()
        assert again.admitted == {**want[k][0], "52:54:00:00:01:00": 999}


def test_a_corrupt_record_starts_with_the_records_before_it(tmp_path, caplog):
    path = tmp_path / "leases.journal"
    events = history(100, seed=7)
    path.write_bytes(lease_journal.HEADER + lease_journal.encode_all(events))
    data = bytearray(path.read_bytes())
    at = data.index(b"\n", len(data) // 2) + 1  # a record in the middle
    data[at + 12] ^= 0x20
    path.write_bytes(bytes(data))
    k = data[:at].count(b"\n") - 1
    db = db_of()
    with caplog.at_level(logging.INFO, logger="beokit.boot"):
        lf = lease_file.LeaseFile(path, db)
        lf.load()
    assert (db.admitted, db.leases) == states(events)[k]
    line = next(r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    assert f"record at byte {at}: bad checksum" in line and f"the {k + 1} records before" in line
    kept = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert len(kept) == 1 and kept[0].read_bytes() == bytes(data) and kept[0].name in line
    run_events(lf, [])
    again = db_of()  # the journal was written anew: it reads whole now
    lease_file.LeaseFile(path, again).load()
    assert (again.admitted, again.leases) == states(events)[k]


def test_compaction_in_the_background_keeps_the_state(tmp_path, monkeypatch):
    monkeypatch.setattr(lease_file, "COMPACT_MIN", 100)
    path = tmp_path / "leases.journal"
    events = history(3000, seed=8)  # 40 clients: the journal is mostly dead records
    lf = lease_file.LeaseFile(path, db_of())
    lf.load()
    run_events(lf, events, per_batch=50)
    assert lf.compactions >= 5
    assert path.read_bytes().count(b"\n") < 400
    db = db_of()
    lease_file.LeaseFile(path, db).load()
    assert (db.admitted, db.leases) == states(events)[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["leases.journal"]  # no temporary


def test_the_previous_versions_json_file_is_read_once(tmp_path):
    old = db_of()
    old.admit("52:54:00:00:00:09", 9)
    old.leases["52:54:00:00:00:01"] = Lease("52:54:00:00:00:01", "127.0.16.1", "", FAR,
                                            "temporary")  # fmt: skip
    path = tmp_path / "leases.json"
    path.write_text(old.to_json())
    db = db_of()
    lease_file.LeaseFile(path, db).load()
    assert db.admitted == old.admitted and db.leases == old.leases
    assert (tmp_path / "leases.json.v1.json").read_text() == old.to_json()
    assert path.read_bytes().startswith(lease_journal.HEADER)  # a journal now
    again = db_of()
    lease_file.LeaseFile(path, again).load()
    assert again.leases == old.leases


def test_not_a_journal_is_a_usage_error(tmp_path):
    path = tmp_path / "leases.journal"
    path.write_text("some other file\n")
    with pytest.raises(BootConfigError, match="not a beokit boot lease journal"):
        lease_file.LeaseFile(path, db_of()).load()


def test_two_writers_never_share_a_temporary_file(tmp_path, monkeypatch):
    """Two atomic writes at once (a compaction and another): each has its own temporary
    file, both renames succeed, the file is one of the two, whole."""
    path = tmp_path / "leases.journal"
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

    def write(data: bytes) -> None:
        try:
            lease_file.write_atomic(path, data)
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    texts = [b'{"a": 1}', b'{"b": 2, "longer": true}']
    threads = [threading.Thread(target=write, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert errors == []
    assert path.read_bytes() in texts
    assert sorted(p.name for p in tmp_path.iterdir()) == ["leases.journal"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_nothing_is_handed_off_once_closed(tmp_path):
    path = tmp_path / "leases.journal"
    lf = lease_file.LeaseFile(path, db := db_of())
    lf.load()
    run_events(lf, history(20, seed=9))
    size = path.stat().st_size
    db.admit("52:54:00:00:00:aa", 5)
    lf.handoff()  # closed: no writer, nothing written
    assert path.stat().st_size == size and lf.thread is None


# -- a real server ------------------------------------------------------------------------------


def boot(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "beokit.cli", "boot", *args],
                          capture_output=True, text=True, timeout=60, cwd=cwd)  # fmt: skip


def dora(n: int, first: int = 0) -> loadgen.Result:
    res = loadgen.dora((SERVER, PORTS["dhcp"]), "127.0.2.2", n, first=first, timeout=30)
    assert len(res.bound) == n
    return res


@pytest.mark.slow
def test_a_server_with_20000_leases_restarts_answers_and_reports(tmp_path):
    """20,000 leases in the journal: the server restores them, answers a new client,
    `status` carries all of them, and --dump-leases exports them as JSON."""
    cfg = write_config(tmp_path)
    cfg.write_text(cfg.read_text().replace('pool = "127.0.16.0-127.0.31.255"',
                                           'pool = "127.0.64.0-127.0.159.255"'))  # fmt: skip
    leases = [Lease(f"52:54:02:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
                    f"127.0.{64 + i // 256}.{i % 256}", "", FAR, "temporary")
              for i in range(20000)]  # fmt: skip
    (tmp_path / "leases.json").write_bytes(lease_journal.snapshot({}, leases, 0.0))
    with Server(cfg) as srv:
        assert "restored 20000 leases and 0 admitted nodes" in srv.text()
        res = dora(5)  # new clients get addresses, none of the 20,000 taken
        assert not set(res.bound.values()) & {x.ip for x in leases}
        st = srv.status()
        assert st["lease_count"] == 20005 and len(st["leases"]) == 20005
        assert st["journal"]["state"] == "ok"
    out = boot("-c", str(cfg), "--dump-leases", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)["leases"]) == 20005


needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None,
                                reason="needs root to mount a small tmpfs")  # fmt: skip


@pytest.fixture
def small_fs(tmp_path):
    """A 256 KiB tmpfs at tmp_path/fs (unmounted at the end)."""
    where = tmp_path / "fs"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(where)],
                   check=True, timeout=30)  # fmt: skip
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], timeout=30)


@needs_root
@pytest.mark.root
@pytest.mark.slow
def test_a_full_disk_keeps_the_server_answering(tmp_path, small_fs):
    """The file system of the journal fills up while the server runs: it keeps answering
    from memory, logs the failure once, `status` shows it; when there is room again the
    whole state is written; nothing was lost.  (A file system turned read-only under an
    open journal fails its writes the same way; it cannot be staged here: a remount
    read-only is refused while a file is open for writing.)"""
    cfg = write_config(tmp_path)
    cfg.write_text(cfg.read_text().replace('lease_file = "leases.json"',
                                           f'lease_file = "{small_fs}/leases.journal"'))  # fmt: skip
    with Server(cfg) as srv:
        first = dora(50)
        journal = small_fs / "leases.journal"
        on_disk = journal.read_bytes()
        filler = small_fs / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
        with pytest.raises(OSError, match="No space left"):
            while True:
                os.write(fd, b"\0" * 4096)
        os.close(fd)
        second = dora(300, first=50)  # answered from memory
        srv.wait_log("cannot be written")
        st = srv.status()["journal"]
        assert st["state"] == "failing" and st["unwritten"] > 0, st
        assert journal.read_bytes().startswith(on_disk)  # nothing on disk lost
        time.sleep(1)
        assert srv.text().count("cannot be written") == 1  # once (then once a minute)
        filler.unlink()
        srv.wait_log("written again", timeout=lease_file.RETRY + 10)
        assert srv.status()["journal"]["state"] == "ok"
    with Server(cfg) as srv:
        assert "restored 350 leases" in srv.text()
        again = dora(350)
        assert again.bound == {**first.bound, **second.bound}


def test_fast_lease_encoding_is_the_json_encoders():
    """encode_all formats plain lease records directly: the same bytes as encode (the JSON
    encoder) for every record, whatever its strings and numbers."""
    odd = ["", "a\"b", "back\\slash", "é", "tab\tx", "\x7f", "n\nl", "{}"]
    records: list[tuple] = [("lease", "52:54:00:00:00:01", "127.0.16.1", "node1", 1.7e9 + 0.25,
                             "node", "")]  # fmt: skip
    for i, s in enumerate(odd):
        records.append(("lease", s, "127.0.16.2", s, 1e9 + i / 7, "temporary", s))
    records += [("lease", "k", "127.0.16.3", "", float("inf"), "host", ""),
                ("lease", "k", "127.0.16.3", None, 5.0, "host", ""),
                ("lease", "k", "127.0.16.3", "", 5, "host", ""),
                ("admit", "52:54:00:00:00:02", 7), ("release", "k")]
    for rec in records:
        assert lease_journal.encode_all([rec]) == lease_journal.encode(rec), rec
    assert lease_journal.encode_all(records) == b"".join(map(lease_journal.encode, records))
