"""dolly's configuration file ("dollytab"), read by ``beo cast -f``.  Pure.

dolly (openSUSE) reads words in a fixed order::

    [compressed] infile FILE        the source (``split`` files are refused)
    outfile FILE                    DEST on every node
    [segsize N] [add N] [server NAME] [hyphennormal|hyphennr] [fanout N]
    firstclient NAME
    lastclient NAME
    clients N
    NAME ...                        N host names
    endconfig

Tokens may be split over lines any way; ``#`` starts a comment.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from beokit.errors import UsageError


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


class _Words:
    """dolly's words, read in order; every error names the entry."""

    def __init__(self, text: str) -> None:
        self.words = [w for line in text.splitlines() for w in line.split("#", 1)[0].split()]
        self.pos = 0

    def peek(self) -> str | None:
        return self.words[self.pos] if self.pos < len(self.words) else None

    def take(self, what: str) -> str:
        if self.pos >= len(self.words):
            raise UsageError(f"dolly config: missing {what} (file ended early)")
        self.pos += 1
        return self.words[self.pos - 1]

    def skip(self, word: str) -> bool:
        """Take ``word`` if it comes next."""
        if self.peek() == word:
            self.pos += 1
            return True
        return False

    def expect(self, keyword: str) -> str:
        """``KEYWORD VALUE``: the value."""
        got = self.take(keyword)
        if got != keyword:
            raise UsageError(f"dolly config: expected {keyword!r}, found {got!r}")
        return self.take(f"the value of {keyword}")

    @staticmethod
    def number(keyword: str, text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise UsageError(f"dolly config: bad {keyword} {text!r}: not a number") from None
        if n < 1:
            raise UsageError(f"dolly config: bad {keyword} {text!r}: must be >= 1")
        return n


def _options(words: _Words, cfg: DollyConfig) -> None:
    """The optional entries between ``outfile`` and ``firstclient``."""
    while words.peek() not in (None, "firstclient"):
        kw = words.take("an entry")
        if kw == "segsize":
            cfg.ignored.append(f"segsize {words.number(kw, words.take('segsize'))}")
        elif kw == "add":
            raise UsageError("dolly config: 'add' (extra NICs) is not supported; "
                             "use a --topology file with via=TEMPLATE per rail")  # fmt: skip
        elif kw == "server":
            cfg.server = words.take("the server name")
        elif kw in ("hyphennormal", "hyphennr"):
            cfg.ignored.append(kw)
        elif kw == "fanout":
            cfg.fanout = words.number(kw, words.take("fanout"))
        else:
            raise UsageError(f"dolly config: unknown entry {kw!r}")


def _clients(words: _Words) -> list[str]:
    """``firstclient``, ``lastclient``, ``clients N``, N names, ``endconfig``: the names."""
    first = words.expect("firstclient")
    last = words.expect("lastclient")
    n = words.number("clients", words.expect("clients"))
    hosts = [words.take(f"client {i + 1} of {n}") for i in range(n)]
    if "endconfig" in hosts:
        raise UsageError(f"dolly config: clients {n}, but only {hosts.index('endconfig')} "
                         "host(s) before endconfig")  # fmt: skip
    end = words.take("endconfig")
    if end != "endconfig":
        raise UsageError(f"dolly config: expected 'endconfig' after {n} clients, found {end!r}")
    if hosts[0] != first:
        raise UsageError(f"dolly config: firstclient {first!r} is not the first client "
                         f"({hosts[0]!r})")  # fmt: skip
    if hosts[-1] != last:
        raise UsageError(f"dolly config: lastclient {last!r} is not the last client "
                         f"({hosts[-1]!r})")  # fmt: skip
    if len(set(hosts)) != len(hosts):
        dup = next(h for h in hosts if hosts.count(h) > 1)
        raise UsageError(f"dolly config: client {dup!r} is listed twice")
    return hosts


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
    words = _Words(text)
    compressed = words.skip("compressed")
    infile = words.expect("infile")
    if words.peek() == "split":
        raise UsageError("dolly config: 'split' input files are not supported; cat them into -")
    cfg = DollyConfig(infile, words.expect("outfile"), [], compressed)
    _options(words, cfg)
    cfg.hosts = _clients(words)
    return cfg


def dolly_dest(cfg: DollyConfig) -> str:
    """The --to DEST of a dolly config: ``outfile``, gunzipped first if compressed."""
    if cfg.compressed:
        return f"|gunzip -c > {shlex.quote(cfg.outfile)}"
    return cfg.outfile
