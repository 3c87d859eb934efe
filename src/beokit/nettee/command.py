"""``-cmd COMMAND`` with ``-in socket`` / ``-out socket`` (driver).

The command runs under ``/bin/sh -c`` with one end of a Unix socket pair as
its stdout (``-in socket``: nettee reads what it writes) or its stdin
(``-out socket``: nettee writes the stream into it).  The socket buffers are
sized to ``-buf_size``, the man page's reason to prefer a socket to a pipe;
the relay splices to and from the socket like any other fd.
"""

from __future__ import annotations

import socket
import subprocess

from beokit.proc import describe_exit


class SocketCommand:
    def __init__(self, command: str, direction: str, buf_size: int) -> None:
        assert direction in ("in", "out")
        self.command = command
        self.direction = direction
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for s in (ours, theirs):
            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                try:
                    s.setsockopt(socket.SOL_SOCKET, opt, buf_size)
                except OSError:
                    pass
        self.sock = ours
        stdio = {"stdout": theirs} if direction == "in" else {"stdin": theirs}
        if direction == "in":
            stdio["stdin"] = subprocess.DEVNULL
        self.proc = subprocess.Popen(["/bin/sh", "-c", command], close_fds=True, **stdio)
        theirs.close()

    @property
    def fd(self) -> int:
        return self.sock.fileno()

    def end_input(self) -> None:
        """-out socket: no more data (the command sees end of file)."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def wait(self) -> str | None:
        """Wait for the command; None when it succeeded, else what went wrong."""
        status = self.proc.wait()
        self.sock.close()
        if status == 0:
            return None
        return describe_exit(status, f"-cmd {self.command!r}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

