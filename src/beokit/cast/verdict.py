"""The verdict of ``beo cast``: one :class:`Row` per node, and the exit status.

Pure: no I/O.  The driver feeds in what it observed: each receiver's answer
to its start-up check, the root nettee's ``-report``, each receiver's own
result after its fsync, the source's digest, what SOURCE looked like before
and after the stream, and each node's answer to the root's last word
(commit, discard or abort).  A node is OK only if every check passed;
otherwise its row names the codes (nettee's, and :data:`CAST_CODES`) and why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from beokit.cast.plan import Chain, chain_of
from beokit.proc import describe_exit

# Codes of beo cast on top of nettee's (nettee -herrors).
CAST_CODES = {
    "DOWN": "the receiver could not be started on the node (launch failed, unknown host)",
    "LWF": "local write failure (DEST not writable, disk full, device error)",
    "SYNC": "fsync of DEST failed after the stream",
    "BDG": "digest of what the node wrote differs from the source's",
    "SHORT": "the node wrote fewer (or more) bytes than the stream had",
    "LOST": "the receiver ended without a result (killed, connection lost)",
    "CHANGED": "SOURCE changed during the stream (truncated, grown, rewritten or replaced)",
    "SIG": "beo cast was stopped by SIGINT/SIGTERM before this node's copy was in place",
}

# What a node's DEST holds at the end (Row.dest): this cast's verified copy,
# what it held before the cast, an incomplete copy written in place, or not known.
DEST_STATES = ("new", "unchanged", "partial", "unknown")


@dataclass
class Row:
    """One node's line of the final table."""

    host: str
    chain: str = ""
    bytes: int = 0
    digest: str = "-"  # ok | MISMATCH | - (not checked) | n/a
    seconds: float = 0.0
    status: str = "OK"  # OK or the codes, space-separated
    codes: list[str] = field(default_factory=list)
    detail: str = ""
    attempt: int = 1
    dest: str = ""  # new | unchanged | partial | unknown (DEST_STATES); "" not settled

    @property
    def ok(self) -> bool:
        return not self.codes

    @property
    def rate(self) -> float:
        """MB/s (10^6 bytes per second)."""
        return self.bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        d["mb_per_s"] = round(self.rate, 2)
        return d


def _add(row: Row, code: str, why: str) -> None:
    if code not in row.codes:
        row.codes.append(code)
    if why and why not in row.detail:
        row.detail = f"{row.detail}; {why}" if row.detail else why


def collapse_reason(report: dict[str, Any] | None) -> str:
    """Why the root's stream did not end ``ok``, from its -report: its status and
    the first failed node's detail ("" when it ended ok, or wrote no report)."""
    if not report or report.get("status") in ("ok", None):
        return ""
    why = f"the chain {report.get('status')}"
    for n in report.get("nodes") or []:
        if isinstance(n, dict) and (n.get("fatal") or n.get("codes")) and n.get("detail"):
            hint = "; --resolve names the nodes' data addresses" \
                if "cannot resolve" in str(n["detail"]) else ""  # fmt: skip
            return f"{why} at {n.get('name')}: {n['detail']}{hint}"
    return why


def rows(hosts: list[str], chains: list[Chain], *, launch: dict[str, dict[str, Any]],
         report: dict[str, Any] | None, results: dict[str, dict[str, Any]],
         source_digest: str | None, stream_bytes: int | None,
         kind: str, attempt: int = 1) -> list[Row]:  # fmt: skip
    """The verdict for every host of the run, in ``hosts`` order.

    ``launch``: host -> the receiver's answer to the start-up check
    (``{"t": "up"}`` or ``{"t": "fail", "code", "why"}``); ``report``: the
    root nettee's -report JSON (None if it wrote none); ``results``: host ->
    the receiver's final result (``rc``, ``bytes``, ``fsync``, ``digest``,
    ``seconds``, ``why``); ``source_digest``: the digest of the stream the
    root sent; ``stream_bytes``: its length (None when the root failed).
    A node is OK only if every check passed.
    """
    where = chain_of(chains)
    by_name: dict[str, dict[str, Any]] = {}
    root_digest = None
    if report:
        nodes = report.get("nodes") or []
        for n in nodes:
            if isinstance(n, dict) and "name" in n:
                by_name[str(n["name"])] = n
        if nodes and isinstance(nodes[0], dict):
            root_digest = nodes[0].get("digest")
    want_digest = root_digest or source_digest
    missing = ": ".join(w for w in ("not in the root's report", collapse_reason(report)) if w)
    out: list[Row] = []
    for h in hosts:
        row = Row(h, chain=where.get(h, "-"), attempt=attempt)
        up = launch.get(h)
        if not up or up.get("t") != "up":
            why = (up or {}).get("why") or "no answer from the receiver"
            _add(row, (up or {}).get("code") or "DOWN", why)
            row.digest = "n/a"
            row.status = " ".join(row.codes)
            out.append(row)
            continue
        node = by_name.get(h)
        res = results.get(h)
        if node is not None:
            row.bytes = int(node.get("bytes_out") or node.get("bytes_in") or 0)
            row.seconds = float(node.get("seconds") or 0.0)
            for code in node.get("codes") or []:
                _add(row, str(code), str(node.get("detail") or ""))
        elif report is not None:
            _add(row, "BSTAT", missing)
        if res is None:
            _add(row, "LOST", "the receiver ended without a result")
        else:
            if res.get("bytes") is not None:
                row.bytes = int(res["bytes"])
            if not row.seconds:
                row.seconds = float(res.get("seconds") or 0.0)
            rc = res.get("rc")
            if isinstance(rc, int) and rc < 0:
                _add(row, "LOST", describe_exit(rc, "nettee"))
            elif rc not in (0, None) and not row.codes:
                _add(row, "NRF", res.get("why") or describe_exit(rc, "nettee"))
            if res.get("fsync") not in (None, "ok", "skipped"):
                _add(row, "SYNC", str(res["fsync"]))
        known = (res is not None and res.get("bytes") is not None) or row.bytes > 0
        short = stream_bytes is not None and kind == "file" and known and row.bytes != stream_bytes
        if short:
            _add(row, "SHORT", f"wrote {row.bytes} of {stream_bytes} bytes")
        got = (node or {}).get("digest") or (res or {}).get("digest")
        if got and want_digest and not short:
            if str(got).lower() == str(want_digest).lower():
                row.digest = "ok"
            else:
                row.digest = "MISMATCH"
                _add(row, "BDG", "digest differs from the source's")
        elif row.codes:
            row.digest = "-"
        else:
            row.digest = "n/a"
        row.status = " ".join(row.codes) if row.codes else "OK"
        out.append(row)
    return out


def _status(row: Row) -> None:
    row.status = " ".join(row.codes) if row.codes else "OK"


def _started(row: Row) -> bool:
    """Did the node take part in the stream?  (:func:`rows` marks the ones that
    failed their start-up check, or never answered, with digest ``n/a`` and a code.)"""
    return row.digest != "n/a" or not row.codes


def source_change(before: dict[str, int] | None, after: dict[str, int] | None,
                  sent: int | None) -> str:  # fmt: skip
    """Why SOURCE is known to have changed during the stream ("" if it is not).

    ``before``/``after``: SOURCE looked at when the stream started and when it
    ended (``ino dev size`` and, for a regular file, ``mtime_ns ctime_ns``;
    ``{"missing": 1}`` if it could not be); ``sent``: the bytes the stream
    carried, when it completed.  A file that shrank, grew, was rewritten in
    place or replaced by another under its name, a device whose size changed,
    or a stream whose length is not SOURCE's size at the start all count.
    """
    if before is None or before.get("missing"):
        return ""  # nothing known to compare with (stdin; a directory: tar's own check)
    head = "SOURCE changed during the stream: "
    if after is None or after.get("missing"):
        return head + "it can no longer be read (removed?)"
    if (after["ino"], after["dev"]) != (before["ino"], before["dev"]):
        return head + "another file has its name now (replaced)"
    if after["size"] != before["size"]:
        return head + f"its size went from {before['size']:,} to {after['size']:,} bytes"
    if sent is not None and sent != before["size"]:
        return head + f"{sent:,} bytes were sent; it had {before['size']:,} when the stream started"
    if any(after.get(k) != before.get(k) for k in ("mtime_ns", "ctime_ns")):
        return head + "it was written to (its modification time changed)"
    return ""


def fail_all(table: list[Row], error: str, changed: str) -> None:
    """A failure of the whole stream: every node that took part is failed with it.

    ``error`` (the root could not read SOURCE, wrote no report): ``LRF`` on the
    nodes that were OK; ``changed`` (:func:`source_change`): ``CHANGED`` on
    every node that was started, OK or not: none holds a copy of one version.
    """
    for row in table:
        started = _started(row)
        if error and row.ok:
            _add(row, "LRF", error)
        if changed and started:
            _add(row, "CHANGED", changed)
        _status(row)


def settle(table: list[Row], finals: dict[str, dict[str, Any]]) -> None:
    """The nodes' answers to the root's last word (commit or discard) into the rows.

    A node told to commit that could not (rename failed) is ``LWF``; one that
    did not answer is ``LOST`` (what its DEST holds is not known).  Every row
    gets ``dest``: what DEST holds now (:data:`DEST_STATES`).
    """
    for row in table:
        final = finals.get(row.host)
        if final is None:
            row.dest = "unknown" if _started(row) else "unchanged"
            if row.ok:
                _add(row, "LOST", "no answer to the commit: DEST not known to be in place")
        else:
            state = str(final.get("dest") or "unknown")
            row.dest = state if state in DEST_STATES else "unknown"
            if final.get("t") == "committed" and not final.get("ok"):
                _add(row, "LWF", str(final.get("why") or "the copy could not be moved into place"))
            elif row.ok and row.dest != "new":
                _add(row, "LOST", f"told to commit, the node answered {final.get('t')!r}")
        _status(row)


_DEST_WORDS = {
    "unchanged": "DEST unchanged",
    "partial": "DEST holds a partial copy",
    "unknown": "no answer: DEST may hold a partial copy",
}


def interrupted_rows(hosts: list[str], chains: list[Chain], *, launch: dict[str, dict[str, Any]],
                     finals: dict[str, dict[str, Any]], results: dict[str, dict[str, Any]],
                     signame: str, attempt: int = 1) -> list[Row]:  # fmt: skip
    """The rows of a cast stopped by a signal: what every node's DEST holds.

    ``finals``: each node's answer to the root's ``abort`` (``dest``:
    :data:`DEST_STATES`, ``bytes`` of a partial file); a node that had
    committed its verified copy before the signal stays OK (``new``).
    """
    where = chain_of(chains)
    out = []
    for h in hosts:
        row = Row(h, chain=where.get(h, "-"), digest="-", attempt=attempt)
        up, final, res = launch.get(h) or {}, finals.get(h), results.get(h) or {}
        if isinstance(res.get("bytes"), int):
            row.bytes, row.seconds = res["bytes"], float(res.get("seconds") or 0.0)
        if up.get("t") == "fail":
            _add(row, str(up.get("code") or "DOWN"), str(up.get("why") or ""))
            row.dest = "unchanged"
        elif final is not None and final.get("dest") == "new":
            row.dest = "new"
        else:
            state = str((final or {}).get("dest") or ("unknown" if up else "unchanged"))
            row.dest = state if state in DEST_STATES else "unknown"
            words = _DEST_WORDS.get(row.dest, "DEST unchanged")
            if not up:
                words = "not started: DEST unchanged"
            size, removed = (final or {}).get("bytes"), (final or {}).get("removed")
            if row.dest == "partial" and isinstance(size, int):
                words += f" ({size:,} bytes, written in place)"
                row.bytes = size
            elif row.dest == "unchanged" and isinstance(removed, int) and removed:
                words += f" (its partial copy, {removed:,} bytes, removed)"
                row.bytes = removed
            _add(row, "SIG", f"beo cast stopped by {signame}: {words}")
        _status(row)
        out.append(row)
    return out


def exit_status(table: list[Row]) -> int:
    """0 when every node is OK, 1 otherwise."""
    return 0 if table and all(r.ok for r in table) else 1


def retry_hosts(table: list[Row]) -> list[str]:
    """Hosts to send to again: failed, but started (a DOWN host stays down)."""
    return [r.host for r in table if not r.ok and "DOWN" not in r.codes]


def merge(first: list[Row], again: list[Row]) -> list[Row]:
    """Rows of a retry replace those of the first run, host by host."""
    newer = {r.host: r for r in again}
    return [newer.get(r.host, r) for r in first]
