"""The lease journal on disk: restored at start, appended as leases change, compacted.

The format is :mod:`beokit.boot.lease_journal`'s (one checksummed line per
lease event).  Here, the driver:

* **Appending costs O(1) per change, off the loop's critical path.**  The
  lease database (``LeaseDB.events``) keeps each change as a tuple; within
  :data:`GROUP` seconds of a change the loop hands the new tuples to one
  writer thread (:meth:`LeaseFile.soon`) as one encoded block; the thread
  appends it with one ``write`` and makes it durable with one ``fdatasync`` —
  whatever arrived while the previous ``fdatasync`` ran goes in the next one
  (group commit).
  Replies are not held for the disk: a crash loses at most the records of
  the write in flight (the clients keep their addresses: a renewal finds the
  same free pool address by its hash, or its node number).
* **Compaction in the background** (Kea's LFC): when the file holds more than
  :data:`COMPACT_RATIO` records per live one (and at least
  :data:`COMPACT_MIN`), the loop takes a snapshot of the tables (a copy of
  two dicts: leases are never changed in place) and the writer thread writes
  it to a temporary file, fsyncs it and renames it over the journal; records
  of later changes are appended to the new file.  A crash at any moment
  leaves the old journal or the new one, whole.
* **Restored at start**: records are replayed until the first one that is
  not whole and correct.  An unfinished last line (a crash while appending)
  is cut off; a bad record with records after it is corruption: the server
  starts with every record before it, says which byte it stopped at, keeps
  the whole file beside the journal (``NAME.corrupt-YYYYmmddTHHMMSS``) and
  writes the restored state as a new journal.  A lease file of the previous
  version (``beokit-boot-leases/1``, JSON) is read once, kept as
  ``NAME.v1.json`` and converted.
* **A journal that cannot be written** (disk full, read-only, I/O error): the
  server goes on answering from memory; the error is logged at once, then
  once a minute while it lasts; ``beo boot status`` shows ``"state":
  "failing"``; every :data:`RETRY` seconds a compaction tries to write the
  whole state anew (which succeeds once there is room again).  The file is
  never cut below what was written whole, and only replaced by a complete
  new journal: nothing already on disk is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from pathlib import Path

from beokit.boot import lease_journal
from beokit.boot.config import BootConfigError
from beokit.boot.leases import LeaseDB

log = logging.getLogger("beokit.boot")
COMPACT_MIN = 8192  # records in the journal before a compaction is considered
COMPACT_RATIO = 2  # ...and records per live lease or admitted node
GROUP = 0.01  # seconds of changes handed to the writer at once (at most: one tick hands off too)
RETRY = 5.0  # seconds between attempts to write a failing journal anew
LOG_EVERY = 60.0  # seconds between log lines about a journal that keeps failing
CLOSE_WAIT = 20.0  # seconds the stop waits for the writer thread


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old or the new file, whole.

    The temporary file has a name of its own (``.NAME.XXXXXXXX.tmp`` beside it), so
    that two writers never share one; it is removed if anything fails."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            os.fchmod(fd, 0o644)
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read_into(db: LeaseDB, path: Path, now: float) -> str:
    """Fill ``db`` from the file at ``path`` (a journal, or a lease file of the previous
    version) without changing it, for the commands that read it while a server may
    write it; ``OSError``/``ValueError`` if it cannot be read or is not ours.  Returns
    why the replay stopped early when records were lost ("" otherwise: an unfinished
    last record is a write in progress, not a loss)."""
    data = path.read_bytes()
    if data.lstrip()[:1] == b"{":
        db.load_json(data.decode(), now)
        return ""
    st = lease_journal.replay(data, now)
    db.restore(st.admitted, st.leases)
    return st.problem if st.corrupt else ""


class LeaseFile:
    """The journal of ``db`` at ``path`` (None: leases are kept in memory only).

    The loop thread calls :meth:`load` (once, before serving), :meth:`soon` after
    changes, :meth:`tick` every tick, :meth:`move` when the config names another
    file, and :meth:`close`; the writer thread does every write."""

    def __init__(self, path: Path | None, db: LeaseDB) -> None:
        self.path = path
        self.db = db
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self.fd = -1
        self.size = 0  # bytes of the journal written whole (never cut below this)
        self.records = 0  # records in the journal
        self.error = ""  # why the journal cannot be written ("" = it can)
        self.failing_since = 0.0
        self.unwritten = 0  # changes kept in memory only since the journal failed
        self.logged = 0.0  # when a failure was last logged
        self.compacting = False  # a compaction is queued or running
        self.compactions = 0
        self.last_try = 0.0
        self.scheduled = False
        self.closing = False

    # -- start ---------------------------------------------------------------------------
    def load(self) -> None:
        """Restore the leases, open the journal for appending, start the writer thread.
        A file that is not a lease journal (nor a lease file of the previous version) is a
        usage error naming it."""
        p = self.path
        if p is None:
            return
        data = b""
        with contextlib.suppress(FileNotFoundError):
            data = p.read_bytes()
        try:
            if data.lstrip()[:1] == b"{":
                self._migrate(p, data)
            elif data:
                self._replay(p, data)
            else:
                write_atomic(p, lease_journal.HEADER)
                self.size, self.records = len(lease_journal.HEADER), 1
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise BootConfigError(f"bad lease file {str(p)!r}: {e}") from None
        self.fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self.thread = threading.Thread(target=self._writer, name="lease-journal", daemon=True)
        self.thread.start()

    def _replay(self, p: Path, data: bytes) -> None:
        st = lease_journal.replay(data, time.time())
        self.db.restore(st.admitted, st.leases)
        self.size, self.records = st.end, st.records
        if st.end == 0:  # (an unfinished header: the file was being created)
            self._rewrite(p)
        elif st.corrupt:
            aside = p.with_name(f"{p.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
            shutil.copyfile(p, aside)
            self._rewrite(p)
            log.error("lease journal %s: %s; started with the %d records before it (%d leases, "
                      "%d admitted nodes); the whole file is kept as %s", p, st.problem,
                      st.records, len(st.leases), len(st.admitted), aside)  # fmt: skip
        elif st.torn:
            os.truncate(p, st.end)
            log.warning("lease journal %s: %s (a crash while writing): cut off %d bytes",
                        p, st.problem, len(data) - st.end)  # fmt: skip
        log.info("restored %d leases and %d admitted nodes from %s (%d records, %d expired "
                 "leases left out)", len(st.leases), len(st.admitted), p, st.records,
                 st.dropped)  # fmt: skip

    def _migrate(self, p: Path, data: bytes) -> None:
        """A lease file of the previous version: read, kept aside, written as a journal."""
        self.db.load_json(data.decode(), time.time())
        old = p.with_name(p.name + ".v1.json")
        write_atomic(old, data)
        self._rewrite(p)
        log.warning("lease file %s was of the previous version (JSON): converted to a journal "
                    "(%d leases, %d admitted nodes); the old file is kept as %s", p,
                    len(self.db.leases), len(self.db.admitted), old)  # fmt: skip

    def _rewrite(self, p: Path) -> None:
        data = lease_journal.snapshot(self.db.admitted, self.db.leases.values(), time.time())
        write_atomic(p, data)
        self.size, self.records = len(data), data.count(b"\n")

    # -- the loop thread ---------------------------------------------------------------------
    def soon(self) -> None:
        """The database changed: hand its new records to the writer within
        :data:`GROUP` seconds (one hand-off, one write, one fdatasync for all the changes
        of that time, however many batches of datagrams made them)."""
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_later(GROUP, self.handoff)

    def handoff(self) -> None:
        """Give the writer thread the records of the changes so far."""
        self.scheduled = False
        events = self.db.events
        if not events:
            return
        self.db.events = []
        if self.thread is not None and not self.closing:  # (encoded here: the writer thread
            self.jobs.put(("append", lease_journal.encode_all(events), len(events)))  # then
            # holds the GIL only to call write and fdatasync)

    def tick(self, now: float) -> None:
        """Every tick: hand off; compact a journal grown past its bound; retry a failing
        one every :data:`RETRY` seconds."""
        self.handoff()
        if self.thread is None or self.compacting or self.closing:
            return
        live = len(self.db.leases) + len(self.db.admitted)
        if self.error:
            if now - self.last_try >= RETRY:
                self.compact()
        elif self.records > max(COMPACT_MIN, COMPACT_RATIO * live):
            self.compact()

    def compact(self, path: Path | None = None) -> None:
        """Queue a compaction: the state now, written anew (to ``path``, then the journal)."""
        self.handoff()
        self.compacting = True
        self.last_try = time.monotonic()
        snap = (dict(self.db.admitted), list(self.db.leases.values()))
        self.jobs.put(("compact", snap, path or self.path))

    def move(self, path: Path | None) -> None:
        """The config names another journal: the whole state goes there (SIGHUP)."""
        if path == self.path:
            return
        if path is None or self.thread is None:
            log.warning("SIGHUP: server.lease_file changed from %s to %s: takes effect at the "
                        "next start", self.path, path)  # fmt: skip
            return
        self.compact(path)

    def status(self) -> dict:
        """For ``beo boot status``: the journal's state."""
        if self.path is None:
            return {"state": "off"}
        out = {"path": str(self.path), "state": "failing" if self.error else "ok",
               "records": self.records, "bytes": self.size, "compactions": self.compactions}  # fmt: skip
        if self.error:
            out.update(error=self.error, unwritten=self.unwritten,
                       failing_for=round(time.monotonic() - self.failing_since, 1))  # fmt: skip
        return out

    async def close(self) -> None:
        """Write what is left (a failing journal: one last try to write it whole), stop the
        writer thread (waiting at most :data:`CLOSE_WAIT` seconds), close the file."""
        if self.thread is None:
            return
        self.handoff()
        if self.error:
            self.compact()
        self.closing = True
        self.jobs.put(("stop",))
        await asyncio.to_thread(self.thread.join, CLOSE_WAIT)
        if self.thread.is_alive():
            log.error("lease journal %s: the writer did not finish within %.0f s", self.path,
                      CLOSE_WAIT)  # fmt: skip
            return
        self.thread = None
        os.close(self.fd)
        self.fd = -1

    # -- the writer thread -------------------------------------------------------------------
    def _writer(self) -> None:
        """Take the jobs in order; consecutive appends become one write and one fdatasync.
        A bug here must not stop the journal silently: it is logged and the journal is
        failing (a compaction then tries to write the whole state anew)."""
        stop = False
        while not stop:
            jobs = [self.jobs.get()]
            with contextlib.suppress(queue.Empty):
                while True:
                    jobs.append(self.jobs.get_nowait())
            try:
                stop = self._run_jobs(jobs)
            except Exception as e:  # noqa: BLE001 (logged, and the journal is failing)
                log.exception("lease journal %s: writer error", self.path)
                self.compacting = False
                self._fail(OSError(f"writer error: {e!r}"), 0)
                stop = any(job[0] == "stop" for job in jobs)

    def _run_jobs(self, jobs: list[tuple]) -> bool:
        """Do the jobs in order; True once the stop job was among them."""
        pending: list[bytes] = []
        count = 0
        stop = False
        for job in jobs:
            if job[0] == "append":
                pending.append(job[1])
                count += job[2]
                continue
            self._append(b"".join(pending), count)
            pending, count = [], 0
            if job[0] == "compact":
                self._compact(job[1], job[2])
            else:
                stop = True
        self._append(b"".join(pending), count)
        return stop

    def _append(self, data: bytes, count: int) -> None:
        if not count:
            return
        if self.error:  # in memory only until a compaction writes the whole state
            self.unwritten += count
            self._log_failure()
            return
        try:
            _write_all(self.fd, data)
            os.fdatasync(self.fd)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, self.size)  # no unfinished record left behind
            self._fail(e, count)
            return
        self.size += len(data)
        self.records += count

    def _compact(self, snap: tuple, path: Path) -> None:
        admitted, leases = snap
        try:
            data = lease_journal.snapshot(admitted, leases, time.time())
            write_atomic(path, data)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except OSError as e:
            if self.error:
                self._fail(e, 0)
            else:
                log.error("lease journal %s: compaction failed (%s); appending goes on", path, e)
            self.compacting = False
            return
        os.close(self.fd)
        self.fd, self.path = fd, path
        self.size, self.records = len(data), data.count(b"\n")
        self.compactions += 1
        if self.error:
            log.warning("lease journal %s: written again (%d leases, %d admitted nodes; %d "
                        "changes had been kept in memory only for %.0f s)", path, len(leases),
                        len(admitted), self.unwritten,
                        time.monotonic() - self.failing_since)  # fmt: skip
            self.error, self.unwritten = "", 0
        self.compacting = False

    def _fail(self, e: OSError, lost: int) -> None:
        if not self.error:
            self.failing_since = time.monotonic()
            self.logged = 0.0
        self.error = f"{e.strerror or e}"
        self.unwritten += lost
        self._log_failure()

    def _log_failure(self) -> None:
        now = time.monotonic()
        if now - self.logged < LOG_EVERY:
            return
        self.logged = now
        log.error("lease journal %s cannot be written (%s): serving from memory, %d changes "
                  "not on disk; retrying every %.0f s", self.path, self.error, self.unwritten,
                  RETRY)  # fmt: skip
