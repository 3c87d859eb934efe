"""What one ``beo cast`` is given (:class:`Job`) and what a run gives back (:class:`CastOutcome`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from beokit.cast.plan import Chain
from beokit.cast.verdict import Row
from beokit.launch.backends import Backend


@dataclass
class Job:
    """Everything one cast needs; built by the command from its arguments."""

    source: str  # a path, or "-" for stdin
    source_kind: str  # file | stdin | dir
    hosts: list[str]
    chains: list[Chain]
    dest: str
    backend: Backend
    port: int | None = None
    heal: bool = True
    fsync: bool = True
    excludes: list[str] = field(default_factory=list)
    progress_nodes: bool = False
    connect_timeout: float = 10.0
    finish_timeout: float = 120.0
    resolve: dict[str, str] = field(default_factory=dict)
    fanout: int = 8  # the launch tree's k
    listen: str = ""  # --listen: where receivers call back
    callback: str = ""  # the address they call back to (launcher.callback_address)
    fork_server: bool = False  # -R exec without --remote-python: agents forked from one server
    bind_local: bool = False  # -R exec: each receiver listens on its host's address
    as_root: bool = True
    in_place: bool = False  # a file DEST is written in place, not renamed into place

    def address(self, name: str) -> str:
        """The address ``name`` has for data (``--resolve``; with ``-R netns`` the one
        its namespace's hosts file gives it), or the name itself."""
        if name in self.resolve:
            return self.resolve[name]
        return self.backend.hostname(name) if self.backend.kind == "netns" else name


@dataclass
class CastOutcome:
    """One run of a cast: a row per node and what the root saw."""

    rows: list[Row]
    bytes: int = 0
    seconds: float = 0.0  # the root nettee's life: start, chain forming, stream, reports
    stream_seconds: float = 0.0  # the stream alone, as the root nettee measured it
    launch_seconds: float = 0.0
    launch_depth: int = 0  # ssh hops in sequence of the launch tree
    refused: int = 0  # callback connections that failed the handshake
    digest: str | None = None
    algo: str | None = None
    flags: list[str] = field(default_factory=list)
    root_log: list[str] = field(default_factory=list)
    error: str = ""
    changed: str = ""  # why SOURCE is known to have changed during the stream
    collapsed: str = ""  # why the root's stream did not end ok (verdict.collapse_reason)
    interrupted: str = ""  # the signal's name when the cast was interrupted
    notes: list[str] = field(default_factory=list)  # said once on stderr (a flag left out...)
