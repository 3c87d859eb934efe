"""``-process CMD``: the node's stream is what CMD makes of its inputs (driver).

Interface between nettee and CMD (``nettee -hprocess`` prints it):

* CMD runs under ``/bin/sh -c``.  Each input of the node is a pipe CMD
  can open by path: ``{}`` in CMD is replaced by the paths
  (``/dev/fd/N /dev/fd/M ...``), which are also in ``$NETTEE_INPUTS``
  (``$NETTEE_NINPUTS`` counts them).  The first input is also CMD's stdin.
* Input order: the stream from the tree first (push: the parent's stream;
  pull: each child's stream, in -next order), then the local ``-in``
  sources in the order given.
* CMD's stdout is the node's stream: it goes to the children (push) or the
  parent (pull), and to the local ``-out``.
* CMD exiting non-zero is a local read failure (LRF) of that node.

So standard tools work unchanged: ``-process 'sort -m {}'`` merges sorted
streams, ``-process 'tr a-z A-Z'`` transforms the stream on every node.
Every input is fed by its own thread with splice into the pipe, and counted,
so byte counts are checked as in the plain tee.
"""

from __future__ import annotations

import os
import subprocess
import threading

from beokit.linux import make_pipe
from beokit.nettee.relay import Relay, RelayResult
from beokit.nettee.sinks import Sink


class Feeder:
    """One input of CMD: a socket or file, spliced (and counted) into a pipe."""

    def __init__(self, label: str, fd: int, *, buf_size: int, maxread: int, maxwrite: int,
                 idle_timeout: float = 0.0) -> None:  # fmt: skip
        self.label = label
        self.r, self.w, _ = make_pipe(buf_size)
        self.sink = Sink(label, self.w, "local", maxwrite=maxwrite)
        self.relay = Relay(fd, [self.sink], buf_size=buf_size, minread=1, minwrite=1,
                           maxread=maxread, maxwrite=maxwrite, idle_timeout=idle_timeout)  # fmt: skip
        self.result: RelayResult | None = None
        self._thread = threading.Thread(target=self._run, name=f"feed-{label}", daemon=True)

    @property
    def received(self) -> int:
        return self.relay.bytes_in

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            self.result = self.relay.run()
        finally:
            os.close(self.w)  # CMD sees the end of this input

    def join(self) -> RelayResult:
        self._thread.join()
        assert self.result is not None
        return self.result


def start_process(command: str, feeders: list[Feeder]) -> subprocess.Popen:
    paths = [f"/dev/fd/{f.r}" for f in feeders]
    expanded = command.replace("{}", " ".join(paths))
    env = dict(os.environ, NETTEE_INPUTS=" ".join(paths), NETTEE_NINPUTS=str(len(paths)))
    env.pop("NETTEE_SECRET", None)
    proc = subprocess.Popen(["/bin/sh", "-c", expanded], env=env, stdout=subprocess.PIPE,
                            stdin=feeders[0].r if feeders else subprocess.DEVNULL,
                            pass_fds=[f.r for f in feeders])  # fmt: skip
    for f in feeders:
        os.close(f.r)
    return proc
