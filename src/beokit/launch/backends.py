"""Remote-command backends: how a parent starts an agent on a host.

A backend turns ``(host, remote shell command)`` into the argv of a local
process, as pdsh's ``-R`` modules do: ``ssh`` (OpenSSH client, BatchMode and a
ConnectTimeout), ``rsh``, ``exec`` (run locally: every "host" is a name, for
tests and single-box demos; ``delay`` stands for the handshake cost), ``netns``
(every host a network namespace of this machine, as ``beo vcluster`` makes
them: what ``ip netns exec`` does, without its cost where agents are forked;
``netns:PATTERN`` names the namespace of ``{host}``, e.g. ``netns:bk-{host}``)
and a user template with ``{host}`` and ``{cmd}``.

Standard library only: this module is shipped to nodes with the agent
(:mod:`beokit.launch.ship`).
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import TYPE_CHECKING

from beokit.launch.plan import LEAF_MARKER, STATUS_MARKER
from beokit.net import parse_hosts_file

if TYPE_CHECKING:
    from typing import Any

BUILTIN = ("ssh", "rsh", "exec", "netns")
LOCAL = ("exec", "netns")  # processes of this machine: agents forked from one server

# The remote command: read the header line from stdin, import the agent, or,
# if beokit is not importable there, ask the parent for a zipapp of it on the
# same channel (marker line on stdout; length line and zip bytes on stdin; see
# beokit.launch.ship).
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
 from beokit.launch import ship
 ship.shipped(f.name)
sys.exit(agent.main(h))
"""


class Backend:
    """A remote-command method; ``spec`` travels to the agents in the work message."""

    FIELDS = ("kind", "template", "ssh_args", "connect_timeout", "delay", "python", "persist")

    def __init__(self, kind: str, template: str = "", ssh_args: list[str] | None = None,
                 connect_timeout: float = 10.0, delay: float = 0.0,
                 python: str = "python3", persist: float = 0.0) -> None:  # fmt: skip
        self.kind = kind  # ssh | rsh | exec | netns | template
        self.template = template  # template: the argv; netns: the namespace's name
        self.ssh_args = list(ssh_args or [])
        self.connect_timeout = connect_timeout
        self.delay = delay
        self.python = python
        # ssh: keep each host's connection open this many seconds after its last
        # session (OpenSSH ControlMaster/ControlPersist): the next run's sessions to
        # it skip the key exchange and authentication.  0: a connection per session
        self.persist = persist

    def argv(self, host: str, cmd: str) -> list[str]:
        """The local argv that runs shell command ``cmd`` on ``host``."""
        if self.kind == "exec":
            return ["/bin/sh", "-c", cmd]
        if self.kind == "ssh":
            t = max(1, round(self.connect_timeout))
            return ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={t}",
                    *self.reuse(), *self.ssh_args, host, cmd]  # fmt: skip
        if self.kind == "rsh":
            return ["rsh", host, cmd]
        if self.kind == "netns":
            return ["ip", "netns", "exec", self.namespace(host), "/bin/sh", "-c", cmd]
        return [w.replace("{host}", host).replace("{cmd}", cmd)
                for w in shlex.split(self.template)]  # fmt: skip

    @property
    def local(self) -> bool:
        """Processes of this machine (exec, netns): agents can be forked from one
        preloaded server, and a site-less python finds this source tree."""
        return self.kind in LOCAL

    def namespace(self, host: str) -> str:
        """netns: the network namespace ``host`` lives in."""
        return (self.template or "{host}").replace("{host}", host)

    def reuse(self) -> list[str]:
        """ssh options of ``persist``: a master connection per host, its socket in
        ~/.ssh (the user's own directory, created 0700 if missing; never a shared
        /tmp path another user could take first)."""
        if not self.persist:
            return []
        os.makedirs(os.path.expanduser("~/.ssh"), mode=0o700, exist_ok=True)
        return ["-o", "ControlMaster=auto", "-o", "ControlPath=~/.ssh/beokit-%C",
                "-o", f"ControlPersist={max(1, round(self.persist))}"]  # fmt: skip

    def agent_command(self) -> str:
        """The remote shell command that starts an agent (see BOOTSTRAP)."""
        path = ""
        if self.local:
            # local: point a site-less python straight at this source tree, and at
            # what this python finds (site-packages: xxhash for nettee -digest)
            src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            paths = [src] + [p for p in sys.path if p and p != src]
            path = f";sys.path[:0]={paths!r}"
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

    def hostname(self, host: str) -> str:
        """The name or address this backend reaches ``host`` at: with ssh, ssh's own
        answer (``ssh -G``: the ``HostName`` of an ssh_config alias, ``--ssh-args``
        included); with netns, the address the namespace's own hosts file
        (``/etc/netns/NAME/hosts``, what ``ip netns exec`` shows it as /etc/hosts)
        gives the name; the name itself otherwise."""
        if self.kind == "netns":
            return hosts_file_address(os.path.join("/etc/netns", self.namespace(host), "hosts"),
                                      host) or host  # fmt: skip
        if self.kind != "ssh":
            return host
        import subprocess

        try:
            out = subprocess.run(["ssh", "-G", *self.ssh_args, host], capture_output=True,
                                 text=True, timeout=10, stdin=subprocess.DEVNULL).stdout  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return host
        for line in out.splitlines():
            key, _, value = line.partition(" ")
            if key == "hostname" and value.strip():
                return value.strip()
        return host

    def spec(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.FIELDS}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Backend:
        return cls(**{k: spec[k] for k in cls.FIELDS if k in spec})


def hosts_file_address(path: str, name: str) -> str | None:
    """The address hosts file ``path`` gives ``name`` (None: no such name, or no
    readable, well-formed file)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse_hosts_file(f.read()).get(name)
    except (OSError, ValueError):
        return None


def make_backend(name: str, *, ssh_args: list[str] | None = None, delay: float = 0.0,
                 connect_timeout: float = 10.0, python: str | None = None,
                 persist: float = 0.0) -> Backend:  # fmt: skip
    """The backend for ``-R NAME``; ``ValueError`` with a clear message if bad."""
    if name in BUILTIN:
        kind, template = name, ""
    elif name.startswith("netns:"):
        kind, template = "netns", name[len("netns:"):]
        if "{host}" not in template or "/" in template or not template.strip():
            raise ValueError(f"bad -R {name!r}: netns:PATTERN names each host's network "
                             "namespace with {host}, e.g. netns:bk-{host}")  # fmt: skip
    else:
        kind, template = "template", name
        try:
            words = shlex.split(name)
        except ValueError as exc:
            raise ValueError(f"bad -R template {name!r}: {exc}") from None
        if not any("{cmd}" in w for w in words) or not any("{host}" in w for w in words):
            raise ValueError(f"bad -R {name!r}: use ssh, rsh, exec, netns[:PATTERN] or a "
                             "template with {host} and {cmd}")  # fmt: skip
    if delay < 0:
        raise ValueError(f"bad --launch-delay {delay}: must be >= 0")
    if python is None:
        # exec: this python without site, with byte-code cached: agent start-up is
        # the launch cost on one box
        python = (f"PYTHONDONTWRITEBYTECODE= {shlex.quote(sys.executable)} -S "
                  f"-X pycache_prefix=/tmp/beokit-pycache-{os.getuid()}"
                  if kind in LOCAL else "python3")  # fmt: skip
    return Backend(kind, template, list(ssh_args or []), connect_timeout, delay, python,
                   persist if kind == "ssh" else 0.0)  # fmt: skip


def environ(host: str) -> dict[str, str]:
    """The environment of the user's command on ``host``."""
    env = dict(os.environ)
    env["BEO_HOST"] = host
    return env
