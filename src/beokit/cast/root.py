"""The root nettee of a cast: started early, given its arguments late, watched.

The root's nettee is started (and imports) while the receivers launch; its
arguments (the chain heads) follow on a pipe once every node has answered,
so the ~0.2 s of interpreter start-up is spent during the launch, not in
the stream's time.  It reports to beo cast through structured events
(``NETTEE_EVENT_FD``, see docs/nettee.md: ``formed`` when the whole tree
has joined, ``end`` before it exits); its stderr is kept as the root's log.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import threading
from typing import Any

from beokit import framing
from beokit.cast import plan
from beokit.errors import WireError
from beokit.proc import stop

EVENT_MAX = 64 << 10  # one event line


def site_free_path() -> str:
    """``PYTHONPATH`` for this interpreter run without site (``-S``): no .pth processing.

    A python's site set-up costs ~100 ms of CPU; a cast starts a receiver per
    node, and on one box (``-R exec``) they all queue on the same cores.  The
    receivers and nettee need only the standard library and beokit, so this
    interpreter's ``sys.path`` is all they need.
    """
    return os.pathsep.join(p for p in sys.path if p)


def nettee_flags() -> set[str]:
    """The resilience flags given to every nettee of a run (this beokit's nettee has both).

    ``BEOKIT_CAST_FLAGS`` (tests) runs as if nettee knew only the listed ones
    (``""``: none), to exercise the fallback used with ``--no-heal``.
    """
    forced = os.environ.get("BEOKIT_CAST_FLAGS")
    if forced is not None:
        return {f for f in forced.split(",") if f in plan.RESILIENCE_FLAGS}
    return set(plan.RESILIENCE_FLAGS)


def digest_algo() -> str:
    """The hash the feeder and the receivers use when nettee has no -digest."""
    try:
        import xxhash  # noqa: F401

        return "xxh3_128"
    except ImportError:
        return "blake2b"


class RootNettee:
    """The root's nettee process; :attr:`formed` is set when its tree has formed."""

    # os._exit at the end: no interpreter clean-up (tens of ms, in the cast's time)
    BOOT = ("import json, os, sys\nfrom beokit.nettee.cli import main\n"
            "with os.fdopen(int(sys.argv[1])) as f:\n    a = json.loads(f.readline() or 'null')\n"
            "rc = 0 if a is None else main(a)\nsys.stdout.flush()\nsys.stderr.flush()\n"
            "os._exit(rc)")  # fmt: skip

    def __init__(self, secret: str) -> None:
        r, self._args = os.pipe()
        self._events, events_w = os.pipe()
        env = dict(os.environ, NETTEE_SECRET=secret, PYTHONPATH=site_free_path(),
                   NETTEE_EVENT_FD=str(events_w))  # fmt: skip
        try:
            self.proc = subprocess.Popen([sys.executable, "-S", "-c", self.BOOT, str(r)],
                                         stdin=subprocess.PIPE,
                                         stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, env=env,
                                         pass_fds=(r, events_w), start_new_session=True)  # fmt: skip
        except BaseException:
            os.close(self._events)
            raise
        finally:
            os.close(r)
            os.close(events_w)
        self.formed = threading.Event()
        self.ended = threading.Event()  # its end event (its report is written) or its exit
        self.events: list[dict[str, Any]] = []
        self.log: collections.deque[str] = collections.deque(maxlen=200)
        self._readers = [threading.Thread(target=self._read_log, daemon=True),
                         threading.Thread(target=self._read_events, daemon=True)]  # fmt: skip

    def start(self, args: list[str]) -> None:
        """Its arguments: it starts the stream."""
        for t in self._readers:
            t.start()
        with os.fdopen(self._args, "w") as fh:
            fh.write(json.dumps(args) + "\n")

    def close_stdin(self) -> None:
        """It reads SOURCE itself (``-in FILE``): nothing comes on its stdin."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()

    def finish(self, grace: float) -> None:
        """It is ending: wait up to ``grace`` seconds for its exit, then stop it."""
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        stop(self.proc)

    def join(self, timeout: float) -> None:
        """Its log and events read to their end (it has exited), bounded."""
        for t in self._readers:
            if t.ident is not None:  # started
                t.join(timeout)

    def cancel(self) -> None:
        """Not needed after all: it reads no arguments and exits 0."""
        for fd in (self._args, self._events):
            try:
                os.close(fd)
            except OSError:
                pass
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def _read_log(self) -> None:
        """Its stderr, the last lines kept (the report's error, ``root_log``)."""
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.log.append(raw.decode(errors="replace").rstrip())

    def _read_events(self) -> None:
        """One JSON object a line; unknown keys and kinds are skipped (forward compatible)."""
        lines = framing.LineBuffer(EVENT_MAX)
        try:
            with os.fdopen(self._events, "rb", buffering=0) as fh:
                while data := fh.read(1 << 16):
                    try:
                        batch = lines.lines(data)
                    except WireError:  # a line too long to be an event: drop it, read on
                        lines = framing.LineBuffer(EVENT_MAX)
                        continue
                    for line in batch:
                        self._event(line)
        finally:
            self.ended.set()  # its exit closed the pipe: it ends now, if it had not said so

    def _event(self, line: bytes) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        self.events.append(event)
        if event.get("event") == "formed":
            self.formed.set()
        elif event.get("event") == "end":
            self.ended.set()
