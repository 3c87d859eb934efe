"""Pure logic of ``beo cast``: topology, config files, command lines, verdicts.

No I/O here.  The driver (:mod:`beokit.cast.driver`) launches what this
module decides and feeds back what it observed; the tests read both.

* Topology: a linear chain by default, ``K`` balanced chains
  (:func:`plan_chains`), or one chain per line of a topology file
  (:func:`parse_topology`: one switch, rack or NIC rail per line).
  :func:`replan` drops the hosts that could not be started, keeping the
  shape.
* dolly's configuration file (``infile``/``outfile``/``server``/
  ``firstclient``/``lastclient``/``clients N``/hosts/``endconfig``):
  :func:`parse_dollytab`.
* The nettee command lines of the root and of every receiver
  (:func:`root_args`, :func:`receiver_args`), with the resilience flags
  chosen in one place (:data:`RESILIENCE_FLAGS`, :func:`resilience_args`).
* The verdict: one :class:`Row` per node from the root's ``-report``,
  each receiver's own result and the source's digest (:func:`rows`), and
  the exit status (:func:`exit_status`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import shlex
from dataclasses import asdict, dataclass, field
from typing import Any

from beokit.errors import UsageError

# What beo cast asks of every nettee by default: self-healing chain and
# end-to-end digests.  The single place where they are named; the driver
# passes only those the installed nettee supports (see resilience_args).
RESILIENCE_FLAGS: tuple[str, ...] = ("-heal", "-digest")
HEAL_FLAG = "-heal"
DIGEST_FLAG = "-digest"
# Without -heal, a failed node must not take the others down with it:
# parents carry on without a dead branch, children below it end cleanly
# (NRF) instead of hanging, and a local write failure only fails that node.
FALLBACK_FLAGS: tuple[str, ...] = ("-conwf", "-conrf")
ALWAYS_FLAGS: tuple[str, ...] = ("-colwf",)

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
class Chain:
    """One chain of the distribution: the root feeds ``hosts[0]``, each the next.

    ``via`` turns a host name into the name its parent connects to for data
    (``{host}-ib`` for a second rail, say); ``{host}`` is the host itself.
    """

    label: str
    hosts: list[str]
    via: str = "{host}"

    def data_name(self, host: str) -> str:
        return self.via.replace("{host}", host)


# --- topology -------------------------------------------------------------


def plan_chains(hosts: list[str], k: int = 1) -> list[Chain]:
    """``K`` contiguous chains of balanced length (sizes differ by at most one)."""
    if k < 1:
        raise UsageError(f"bad --chains {k}: must be >= 1")
    k = min(k, len(hosts)) or 1
    q, r = divmod(len(hosts), k)
    chains, start = [], 0
    for i in range(k):
        size = q + (1 if i < r else 0)
        if size:
            chains.append(Chain(f"chain{i}", hosts[start : start + size]))
        start += size
    return chains


_LABEL_RE = re.compile(r"^([A-Za-z0-9_.-]+):\s*(.*)$")


def parse_topology(text: str, hosts: list[str], expand: Any) -> list[Chain]:
    """One chain per line: ``[LABEL:] NODESET [via=TEMPLATE]``; ``#`` comments.

    The chains keep the order of NODESET within a line.  Hosts of the file
    that are not in ``hosts`` are left out; a host of ``hosts`` in no line
    or in two lines is a usage error naming it.  ``expand`` is the NodeSet
    expander (``beokit.hostlist.expand``).
    """
    wanted = set(hosts)
    seen: dict[str, str] = {}
    chains: list[Chain] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        label = f"chain{len(chains)}"
        m = _LABEL_RE.match(line)
        if m and "[" not in m.group(1):
            label, line = m.group(1), m.group(2).strip()
        via = "{host}"
        words = line.split()
        rest = []
        for w in words:
            if w.startswith("via="):
                via = w[4:]
                if "{host}" not in via:
                    raise UsageError(f"topology line {lineno}: bad {w!r}: needs {{host}}")
            else:
                rest.append(w)
        if not rest:
            raise UsageError(f"topology line {lineno}: no hosts in {raw.strip()!r}")
        members: list[str] = []
        for pattern in rest:
            for h in expand(pattern):
                if h in seen:
                    raise UsageError(f"topology: host {h} is in chain {seen[h]!r} and {label!r}")
                seen[h] = label
                if h in wanted:
                    members.append(h)
        if members:
            chains.append(Chain(label, members, via))
    missing = [h for h in hosts if h not in seen]
    if missing:
        raise UsageError(f"topology: host {missing[0]} is in no chain of the file"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))  # fmt: skip
    if not chains:
        raise UsageError("topology: no chain names a host of the node set")
    return chains


def replan(chains: list[Chain], alive: set[str]) -> list[Chain]:
    """The same chains without the hosts that are not ``alive``; empty chains dropped."""
    out = []
    for c in chains:
        hosts = [h for h in c.hosts if h in alive]
        if hosts:
            out.append(Chain(c.label, hosts, c.via))
    return out


def links(chains: list[Chain]) -> dict[str, str | None]:
    """Host -> the host after it in its chain (None at a chain's tip)."""
    nxt: dict[str, str | None] = {}
    for c in chains:
        for a, b in zip(c.hosts, c.hosts[1:] + [None], strict=True):
            nxt[a] = b
    return nxt


def chain_of(chains: list[Chain]) -> dict[str, str]:
    return {h: c.label for c in chains for h in c.hosts}


# --- dolly's configuration file ---------------------------------------------


@dataclass
class DollyConfig:
    """What beo cast takes from a dolly configuration file ("dollytab")."""

    infile: str
    outfile: str
    hosts: list[str]
    compressed: bool = False
    server: str = ""
    fanout: int = 1
    ignored: list[str] = field(default_factory=list)


def parse_dollytab(text: str) -> DollyConfig:
    """Parse dolly's configuration file format (entries in dolly's fixed order).

    ``[compressed] infile FILE [split]``, ``outfile FILE``, optional
    ``segsize N``, ``add N`` (refused: extra NICs go in a topology file),
    ``server NAME``, optional ``hyphennormal``/``hyphennr``/``fanout N``,
    ``firstclient NAME``, ``lastclient NAME``, ``clients N``, N host names,
    ``endconfig``.  Tokens may be split over lines any way (dolly reads
    words); ``#`` starts a comment.  A bad file is a :class:`UsageError`
    naming the entry.
    """
    words = [w for line in text.splitlines() for w in line.split("#", 1)[0].split()]
    pos = 0

    def take(what: str) -> str:
        nonlocal pos
        if pos >= len(words):
            raise UsageError(f"dolly config: missing {what} (file ended early)")
        pos += 1
        return words[pos - 1]

    def expect(keyword: str) -> str:
        got = take(keyword)
        if got != keyword:
            raise UsageError(f"dolly config: expected {keyword!r}, found {got!r}")
        return take(f"the value of {keyword}")

    def number(keyword: str, text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise UsageError(f"dolly config: bad {keyword} {text!r}: not a number") from None
        if n < 1:
            raise UsageError(f"dolly config: bad {keyword} {text!r}: must be >= 1")
        return n

    ignored: list[str] = []
    compressed = False
    if words[pos : pos + 1] == ["compressed"]:
        compressed, pos = True, pos + 1
    infile = expect("infile")
    if words[pos : pos + 1] == ["split"]:
        raise UsageError("dolly config: 'split' input files are not supported; cat them into -")
    outfile = expect("outfile")
    server = ""
    fanout = 1
    while pos < len(words) and words[pos] != "firstclient":
        kw = take("an entry")
        if kw == "segsize":
            ignored.append(f"segsize {number(kw, take('segsize'))}")
        elif kw == "add":
            raise UsageError("dolly config: 'add' (extra NICs) is not supported; "
                             "use a --topology file with via=TEMPLATE per rail")  # fmt: skip
        elif kw == "server":
            server = take("the server name")
        elif kw in ("hyphennormal", "hyphennr"):
            ignored.append(kw)
        elif kw == "fanout":
            fanout = number(kw, take("fanout"))
        else:
            raise UsageError(f"dolly config: unknown entry {kw!r}")
    first = expect("firstclient")
    last = expect("lastclient")
    n = number("clients", expect("clients"))
    hosts = [take(f"client {i + 1} of {n}") for i in range(n)]
    if "endconfig" in hosts:
        raise UsageError(f"dolly config: clients {n}, but only {hosts.index('endconfig')} "
                         "host(s) before endconfig")  # fmt: skip
    end = take("endconfig")
    if end != "endconfig":
        raise UsageError(f"dolly config: expected 'endconfig' after {n} clients, found {end!r}")
    if hosts[0] != first:
        raise UsageError(
            f"dolly config: firstclient {first!r} is not the first client ({hosts[0]!r})"
        )
    if hosts[-1] != last:
        raise UsageError(
            f"dolly config: lastclient {last!r} is not the last client ({hosts[-1]!r})"
        )
    if len(set(hosts)) != len(hosts):
        dup = next(h for h in hosts if hosts.count(h) > 1)
        raise UsageError(f"dolly config: client {dup!r} is listed twice")
    return DollyConfig(infile, outfile, hosts, compressed, server, fanout, ignored)


def dolly_dest(cfg: DollyConfig) -> str:
    """The --to DEST of a dolly config: ``outfile``, gunzipped first if compressed."""
    if cfg.compressed:
        return f"|gunzip -c > {shlex.quote(cfg.outfile)}"
    return cfg.outfile


# --- destinations and command lines ------------------------------------------


def expand_dest(dest: str, host: str) -> str:
    """``{host}`` in DEST becomes the node's name."""
    return dest.replace("{host}", host)


def dest_kind(dest: str, source_kind: str) -> str:
    """``cmd`` (``|command``), ``dir`` (a directory source unpacks there) or ``file``."""
    if dest.startswith("|"):
        if not dest[1:].strip():
            raise UsageError(f"bad --to {dest!r}: no command after '|'")
        return "cmd"
    if not dest:
        raise UsageError("bad --to '': empty destination")
    return "dir" if source_kind == "dir" else "file"


def tar_create(src: str, excludes: list[str]) -> list[str]:
    """tar on the root: the tree below SRC, sparse, numeric owners, exclusions."""
    argv = ["tar", "-C", src, "--create", "--file", "-", "--sparse", "--numeric-owner"]
    for pattern in excludes:
        argv.append(f"--exclude={pattern}")
    argv.append(".")
    return argv


def tar_extract(dest: str, as_root: bool) -> str:
    """tar on a node (a shell command): permissions, owners (as root), sparse files."""
    owner = " --same-owner" if as_root else " --no-same-owner"
    return (f"tar -C {shlex.quote(dest)} --extract --file - --preserve-permissions "
            f"--numeric-owner --sparse{owner}")  # fmt: skip


def resilience_args(heal: bool, supported: set[str]) -> list[str]:
    """The resilience flags every nettee of the run gets (root and receivers).

    ``-heal`` (unless ``heal`` is False) and ``-digest`` when the installed
    nettee knows them; without ``-heal`` the fallback keeps the healthy
    part of a chain going (:data:`FALLBACK_FLAGS`).
    """
    args = [f for f in RESILIENCE_FLAGS if f in supported and (heal or f != HEAL_FLAG)]
    if HEAL_FLAG not in args:
        args += FALLBACK_FLAGS
    return args + list(ALWAYS_FLAGS)


def next_arg(children: list[str], port: int) -> str:
    """nettee's -next: comma-separated children, each HOST:PORT (IPv6 bracketed)."""
    out = []
    for c in children:
        try:
            ip = ipaddress.ip_address(c)
            c = f"[{c}]" if ip.version == 6 else c
        except ValueError:
            pass
        out.append(f"{c}:{port}")
    return ",".join(out)


def receiver_args(*, host: str, port: int, dest: str, kind: str, child: str | None,
                  bind: str | None, extra: list[str], as_root: bool = True,
                  verbose: int = 5) -> list[str]:  # fmt: skip
    """nettee's arguments on a receiver (after the program name)."""
    args = ["-port", str(port), "-name", host, "-v", str(verbose)]
    if bind:
        args += ["-bind", bind]
    if child:
        args += ["-next", next_arg([child], port)]
    if kind == "file":
        args += ["-out", dest]
    elif kind == "dir":
        args += ["-out", "socket", "-cmd", tar_extract(dest, as_root)]
    else:
        args += ["-out", "socket", "-cmd", dest[1:].strip()]
    return args + extra


def root_args(*, children: list[str], port: int, report: str, extra: list[str],
              name: str = "root", verbose: int = 5, source: str = "-") -> list[str]:  # fmt: skip
    """nettee's arguments at the root: reads ``source`` (``-``: the driver feeds stdin)."""
    return ["-root", "-next", next_arg(children, port), "-port", str(port), "-in", source,
            "-name", name, "-report", report, "-v", str(verbose)] + extra  # fmt: skip


# --- verdict ------------------------------------------------------------------


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
            _add(row, "BSTAT", "not in the root's report")
        if res is None:
            _add(row, "LOST", "the receiver ended without a result")
        else:
            if res.get("bytes") is not None:
                row.bytes = int(res["bytes"])
            if not row.seconds:
                row.seconds = float(res.get("seconds") or 0.0)
            rc = res.get("rc")
            if isinstance(rc, int) and rc < 0:
                _add(row, "LOST", f"nettee killed by signal {-rc}")
            elif rc not in (0, None) and not row.codes:
                _add(row, "NRF", res.get("why") or f"nettee exited with status {rc}")
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


def eta(done: int, total: int | None, elapsed: float) -> float | None:
    """Seconds left at the mean rate so far (None when unknown)."""
    if not total or done <= 0 or elapsed <= 0:
        return None
    return max(0.0, (total - done) * elapsed / done)


def is_loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return False


def parse_hosts_file(text: str) -> dict[str, str]:
    """hosts(5) lines ``ADDRESS NAME [ALIAS...]`` -> name -> address (first wins)."""
    names: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        try:
            ipaddress.ip_address(words[0])
        except ValueError:
            raise UsageError(f"--resolve line {lineno}: bad address {words[0]!r}") from None
        for name in words[1:]:
            names.setdefault(name, words[0])
    return names


# ------------------------------------------------------ the callback channel
#
# Receivers are started through the tree launcher (beo run), which hands each
# the run's spec, with the fresh secret, on its stdin inside the ssh channel
# (``--input``).  Each receiver then calls the cast root back over TCP; both
# sides prove they hold the secret, over both nonces and the host name:
#
#   root -> node:  {"t": "challenge", "nonce": NR}
#   node -> root:  {"t": "hi", "host": H, "nonce": NN, "mac": channel_mac(S, "node", NR, NN, H)}
#   root -> node:  {"t": "ok", "mac": channel_mac(S, "root", NN, NR, H)}
#
# A replayed "hi" fails (fresh NR); a fake root cannot answer "ok" (fresh NN).

CHANNEL_VERSION = 1
MAX_SPEC = 256 << 10  # the spec a receiver reads on stdin (beo run --input's limit)


def channel_mac(secret: str, role: str, nonce_a: str, nonce_b: str, host: str) -> str:
    """HMAC-SHA256 (hex) binding ``role`` ("node"/"root"), both nonces and the host."""
    msg = f"beo-cast/{CHANNEL_VERSION} {role} {nonce_a} {nonce_b} {host}".encode()
    return hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()


def mac_ok(secret: str, mac: Any, role: str, nonce_a: str, nonce_b: str, host: str) -> bool:
    return isinstance(mac, str) and hmac.compare_digest(
        mac, channel_mac(secret, role, nonce_a, nonce_b, host)
    )


def receiver_spec(*, secret: str, callback: str, dest: str, kind: str, digest: str | None,
                  fsync: bool, progress: bool, bind_local: bool, resolve: dict[str, str],
                  in_place: bool = False, verdict_wait: float = 600.0) -> dict[str, Any]:  # fmt: skip
    """What every receiver reads on stdin (the same for all: per-host parts are derived).

    ``in_place``: a file DEST is written where it is instead of under a
    temporary name renamed into place; ``verdict_wait``: how long a receiver
    waits, after its result, for the root's commit or discard.
    """
    return {"v": CHANNEL_VERSION, "secret": secret, "callback": callback, "dest": dest,
            "kind": kind, "digest": digest, "fsync": fsync, "progress": progress,
            "bind_local": bind_local, "resolve": resolve, "in_place": in_place,
            "verdict_wait": verdict_wait}  # fmt: skip


def host_spec(spec: dict[str, Any], host: str) -> dict[str, Any]:
    """A receiver's own view of the spec: DEST with {host}, its bind address."""
    out = dict(spec, host=host, dest=expand_dest(str(spec["dest"]), host))
    out["bind"] = (spec.get("resolve") or {}).get(host, host) if spec.get("bind_local") else None
    return out
