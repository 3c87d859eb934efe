"""Remote-command backends: how a parent starts an agent on a host.

A backend turns ``(host, remote shell command)`` into the argv of a local
process, as pdsh's ``-R`` modules do: ``ssh`` (OpenSSH client, BatchMode and a
ConnectTimeout), ``rsh``, ``exec`` (run locally: every "host" is a name, for
tests and single-box demos; ``delay`` stands for the handshake cost) and a
user template with ``{host}`` and ``{cmd}``.

Standard library only: this module is shipped to nodes with the agent.
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import TYPE_CHECKING

from beokit.launch.plan import LEAF_MARKER, STATUS_MARKER

if TYPE_CHECKING:
    from typing import Any

BUILTIN = ("ssh", "rsh", "exec")
AGENT_MODULES = ("__init__.py", "launch/__init__.py", "launch/plan.py",
                 "launch/agent.py", "launch/backends.py")  # fmt: skip

# The remote command: read the header line from stdin, import the agent, or,
# if beokit is not importable there, ask the parent for a zipapp of it on the
# same channel (marker line on stdout; length line and zip bytes on stdin).
BOOTSTRAP = """\
import sys{path}
h=sys.stdin.buffer.readline()
try:
 from beokit.launch import agent
except ImportError:
 import tempfile
 sys.stdout.buffer.write(b"BEOKIT-SHIP\\n");sys.stdout.flush()
 n=int(sys.stdin.buffer.readline());d=sys.stdin.buffer.read(n)
 f=tempfile.NamedTemporaryFile(prefix="beokit-",suffix=".zip",delete=False)
 f.write(d);f.close();sys.path.insert(0,f.name)
 from beokit.launch import agent
 agent.shipped(f.name)
sys.exit(agent.main(h))
"""


class Backend:
    """A remote-command method; ``spec`` travels to the agents in the work message."""

    FIELDS = ("kind", "template", "ssh_args", "connect_timeout", "delay", "python")

    def __init__(self, kind: str, template: str = "", ssh_args: list[str] | None = None,
                 connect_timeout: float = 10.0, delay: float = 0.0,
                 python: str = "python3") -> None:  # fmt: skip
        self.kind = kind  # ssh | rsh | exec | template
        self.template = template
        self.ssh_args = list(ssh_args or [])
        self.connect_timeout = connect_timeout
        self.delay = delay
        self.python = python

    def argv(self, host: str, cmd: str) -> list[str]:
        """The local argv that runs shell command ``cmd`` on ``host``."""
        if self.kind == "exec":
            return ["/bin/sh", "-c", cmd]
        if self.kind == "ssh":
            t = max(1, round(self.connect_timeout))
            return ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={t}",
                    *self.ssh_args, host, cmd]  # fmt: skip
        if self.kind == "rsh":
            return ["rsh", host, cmd]
        return [w.replace("{host}", host).replace("{cmd}", cmd)
                for w in shlex.split(self.template)]  # fmt: skip

    def agent_command(self) -> str:
        """The remote shell command that starts an agent (see BOOTSTRAP)."""
        path = ""
        if self.kind == "exec":
            # local: point a site-less python straight at this source tree
            src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            path = f";sys.path.insert(0,{src!r})"
        return f"{self.python} -c {shlex.quote(BOOTSTRAP.format(path=path))}"

    def leaf_command(self, host: str, command: str, barrier: bool = False,
                     stdin: bool = False) -> str:  # fmt: skip
        """The remote shell command that runs ``command`` on a leaf host, no agent.

        It prints the marker line first (the host is up: the parent's connect
        timeout ends there), then execs ``/bin/sh -c COMMAND`` with BEO_HOST set,
        as the agent would run it; its stdout, stderr and exit status are the
        command's.  ``stdin``: the command reads the rest of the session's stdin
        (``--input``); otherwise /dev/null.
        """
        marker = LEAF_MARKER.decode()
        wait = "read _go || exit 125; " if barrier else ""  # the parent's go line, stdin
        head = f"BEO_HOST={shlex.quote(host)}; export BEO_HOST; echo {marker}; {wait}"
        redirect = "" if stdin else " </dev/null"
        if self.kind == "rsh":  # rsh loses the exit status: print it as the last line
            return (f"{head}/bin/sh -c {shlex.quote(command)}{redirect}; "
                    f"printf '\\n{STATUS_MARKER.decode()}%d\\n' $?")  # fmt: skip
        return f"{head}exec /bin/sh -c {shlex.quote(command)}{redirect}"

    def spec(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.FIELDS}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Backend:
        return cls(**{k: spec[k] for k in cls.FIELDS if k in spec})


def make_backend(name: str, *, ssh_args: list[str] | None = None, delay: float = 0.0,
                 connect_timeout: float = 10.0, python: str | None = None) -> Backend:  # fmt: skip
    """The backend for ``-R NAME``; ``ValueError`` with a clear message if bad."""
    if name in BUILTIN:
        kind, template = name, ""
    else:
        kind, template = "template", name
        try:
            words = shlex.split(name)
        except ValueError as exc:
            raise ValueError(f"bad -R template {name!r}: {exc}") from None
        if not any("{cmd}" in w for w in words) or not any("{host}" in w for w in words):
            raise ValueError(f"bad -R {name!r}: use ssh, rsh, exec or a template "
                             "with {host} and {cmd}")  # fmt: skip
    if delay < 0:
        raise ValueError(f"bad --launch-delay {delay}: must be >= 0")
    if python is None:
        # exec: this python without site, with byte-code cached: agent start-up is
        # the launch cost on one box
        python = (f"PYTHONDONTWRITEBYTECODE= {shlex.quote(sys.executable)} -S "
                  f"-X pycache_prefix=/tmp/beokit-pycache-{os.getuid()}"
                  if kind == "exec" else "python3")  # fmt: skip
    return Backend(kind, template, list(ssh_args or []), connect_timeout, delay, python)


_ZIP: bytes | None = None


def set_shipped(data: bytes) -> None:
    """This process was shipped: its own zipapp is ``data`` (to ship on)."""
    global _ZIP
    _ZIP = data


def zipapp_bytes() -> bytes:
    """A zip of the agent's modules, importable from ``sys.path`` (cached)."""
    global _ZIP
    if _ZIP is None:
        import io
        import zipfile

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../beokit
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for rel in AGENT_MODULES:
                with open(os.path.join(root, rel), "rb") as fh:
                    zf.writestr(f"beokit/{rel}", fh.read())
        _ZIP = buf.getvalue()
    return _ZIP


def environ(host: str) -> dict[str, str]:
    """The environment of the user's command on ``host``."""
    env = dict(os.environ)
    env["BEO_HOST"] = host
    return env


# ------------------------------------------------------------ fork server
#
# On one box, starting a fresh interpreter for every simulated host costs
# ~45 ms of CPU, and hundreds of them queue on a few cores: the benchmark
# would measure the box, not the tree.  On a cluster that start-up runs on
# each node's own CPU, in parallel.  So ``-R exec`` forks agents from a small
# single-threaded server that has imported the agent once (as multiprocessing's
# forkserver does); the agents then speak the same protocol as over ssh.


class ForkedAgent:
    """An agent forked by the fork server, with the part of Popen's API we use."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.stdin = self.stdout = None
        try:
            self._fd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:
            self._fd, self.returncode = None, 0  # gone already
        except (OSError, AttributeError):
            self._fd = None

    def _ended(self, timeout: float | None) -> bool:
        import select
        import time

        if self.returncode is not None:
            return True
        if self._fd is None:  # no pidfd (old kernel): poll the pid (no zombies: see serve)
            deadline = time.monotonic() + (timeout or 0)
            while True:
                try:
                    os.kill(self.pid, 0)
                except ProcessLookupError:
                    self.returncode = 0
                    return True
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.01)
        if select.select([self._fd], [], [], timeout)[0]:
            os.close(self._fd)
            self._fd, self.returncode = None, 0  # the server reaps it: code unknown
            return True
        return False

    def poll(self) -> int | None:
        self._ended(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended(timeout):
            import subprocess

            raise subprocess.TimeoutExpired(f"agent {self.pid}", timeout or 0)
        return self.returncode or 0


def fork_agent(path: str, header_line: bytes, timeout: float = 10) -> ForkedAgent:
    """Ask the fork server at ``path`` for an agent that gets ``header_line``."""
    import socket
    import time

    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        while True:  # a full backlog says EAGAIN: the server is busy forking, retry
            try:
                s.connect(path)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
        s.sendall(header_line)
        reply = b""
        while not reply.endswith(b"\n"):
            data = s.recv(64)
            if not data:
                raise OSError("fork server closed the connection")
            reply += data
    return ForkedAgent(int(reply))


def serve_forks(path: str) -> None:
    """The fork server: fork an agent per request; exit when our parent is gone."""
    import gc
    import signal
    import socket

    from beokit.launch import agent, plan

    parent = os.getppid()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the agents
    # what is imported now is shared by every agent: keep the collector off it, so
    # forked agents do not copy those pages (copy-on-write) by touching them
    # ... and resolve once: getaddrinfo loads glibc's NSS modules, ~2-3 ms in
    # every agent otherwise
    for name in ("127.0.0.1", "localhost"):
        try:
            socket.getaddrinfo(name, 1, 0, socket.SOCK_STREAM)
        except OSError:
            pass
    gc.collect()
    gc.freeze()
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(4096)
    srv.settimeout(1)
    while os.getppid() == parent:
        try:
            conn, _ = srv.accept()
        except TimeoutError:
            continue
        conn.settimeout(5)
        try:
            line = b""
            while not line.endswith(b"\n") and len(line) < plan.MAX_HEADER:
                data = conn.recv(1 << 16)
                if not data:
                    break
                line += data
            pid = os.fork()
            if pid == 0:
                rc = 1
                try:
                    srv.close()
                    conn.close()
                    os.setsid()
                    try:  # "beo-agent" in ps/top rather than "python"
                        with open("/proc/self/comm", "w") as fh:
                            fh.write("beo-agent")
                    except OSError:
                        pass
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    null = os.open(os.devnull, os.O_RDWR)
                    os.dup2(null, 0)
                    os.dup2(null, 1)
                    rc = agent.main(line)
                finally:
                    sys.stderr.flush()
                    os._exit(rc)
            conn.sendall(b"%d\n" % pid)
        except OSError:
            pass
        finally:
            conn.close()


def start_fork_server(path: str) -> Any:
    """Start :func:`serve_forks` on ``path``; returns its Popen (the caller ends it)."""
    import subprocess
    import time

    src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = (f"import sys; sys.path.insert(0, {src!r}); "
            f"from beokit.launch.backends import serve_forks; serve_forks({path!r})")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-S", "-c", code], stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise OSError("the exec backend's fork server did not start")
        time.sleep(0.01)
    return proc
