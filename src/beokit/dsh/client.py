"""``beo dsh`` and ``beo top``: ask a dshd, run a command on the best node, show the table.

The remote command runs through the launcher's remote-command backend
(:class:`beokit.launch.backends.Backend`: ``-R ssh`` by default, the real
OpenSSH client, with ``--ssh-args`` and ``--connect-timeout`` as in ``beo
run``; ``rsh``, ``exec`` or a template), in the same working directory, inside
a small POSIX sh wrapper that

1. registers the job for the node's dshd (``$BEO_DSH_JOBS/ADDR.PID``, counted
   while the process lives), and
2. tells the client its pid on stderr (one line starting with ``\\036``,
   removed by the client), so that SIGINT/SIGTERM/SIGHUP/SIGQUIT can be
   forwarded to the remote process group through a second ssh,

then ``exec``s the command (argv preserved: every word is quoted).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import NoReturn

from beokit.dsh import packet
from beokit.dsh.defaults import (
    DAEMON_ENV,
    DEFAULT_BEST_PORT,
    DEFAULT_JOBS_DIR,
    DEFAULT_STATUS_PORT,
    JOBS_ENV,
    SSH_ENV,
    read_secret,
)
from beokit.errors import EXIT_OK, BeokitError, UsageError
from beokit.launch.backends import Backend, make_backend
from beokit.proc import describe_exit

MARK = b"\036beo-dsh-pid "
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
MAX_REPLY = 16 << 20


class NoDaemon(BeokitError):
    """No dshd answered (refused, timed out, or spoke nonsense)."""


class Busy(NoDaemon):
    """The dshd said "busy", or closed or reset the connection without an answer.

    None of these says anything about its secret: the client tries again
    (within its timeout), then runs locally saying what happened."""


class Silent(Busy):
    """No answer within the client's timeout."""


RETRY_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8)  # seconds between tries of a busy daemon
LINE_MAX = 4096


def daemon_address(
    args: argparse.Namespace, default_port: int, port_opt: int | None
) -> tuple[str, int]:
    """HOST[:PORT] from -d or $BEO_DSH_DAEMON (default 127.0.0.1); -t/-r override the port."""
    text = args.daemon or os.environ.get(DAEMON_ENV) or "127.0.0.1"
    host, sep, port_text = text.rpartition(":") if text.count(":") == 1 else (text, "", "")
    if not sep:
        host = text
    if not host:
        raise UsageError(f"bad daemon address {text!r}")
    port = default_port
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise UsageError(f"bad daemon address {text!r}: bad port")
        port = int(port_text)
    return host, port_opt or port


def query(host: str, port: int, purpose: str, request: str, secret: bytes | None,
          timeout: float) -> str:  # fmt: skip
    """One TCP query to a dshd port, tried again while the daemon is busy; the answer.

    Raises :class:`Busy` if it stayed busy (or silent) for the whole ``timeout``,
    :class:`NoDaemon` for anything else that is not an answer.
    """
    where = f"{host}:{port}"
    deadline = time.monotonic() + timeout
    tries = 0
    for delay in (*RETRY_DELAYS, None):
        tries += 1
        try:
            return _query_once(host, port, purpose, request, secret, deadline)
        except Silent:
            raise Silent(f"dshd at {where} did not answer within {timeout:g} s") from None
        except Busy as e:
            left = deadline - time.monotonic()
            if delay is None or left < delay + 0.05:
                again = f" ({tries} tries in {timeout - left:.1f} s)" if tries > 1 else ""
                raise Busy(f"{e}{again}") from None
            time.sleep(delay)
    raise AssertionError(f"unreachable: {where}")


def _no_secret_answer(purpose: str, line: str) -> bool:
    """Does ``line`` start the answer of a daemon that has no secret (no challenge)?"""
    if purpose == "best":
        return line.startswith("best ")
    return line.startswith(("{", "# dshd "))


def _first_line(f, where: str) -> str:  # type: ignore[no-untyped-def]
    """The daemon's first line; :class:`Busy` if it has none (zero bytes, reset, cut)."""
    return _first_raw(f, where).decode(errors="replace")


def _first_raw(f, where: str) -> bytes:  # type: ignore[no-untyped-def]
    """The daemon's first line (up to LINE_MAX bytes of it), as bytes (a JSON status
    is one long line: it must not be decoded in pieces); :class:`Busy` as above."""
    raw = f.readline(LINE_MAX)
    if not raw:
        raise Busy(f"dshd at {where} closed the connection without a word")
    if not raw.endswith(b"\n") and len(raw) < LINE_MAX:
        raise Busy(f"dshd at {where} closed the connection in mid-line")
    if raw.startswith(b"error busy"):
        raise Busy(f"dshd at {where} is busy")
    if raw.startswith(b"error no answer to the challenge"):  # we were too slow: again
        raise Busy(f"dshd at {where}: {raw[6:].decode(errors='replace').strip()}")
    return bytes(raw)


def _query_once(host: str, port: int, purpose: str, request: str, secret: bytes | None,
                deadline: float) -> str:  # fmt: skip
    where = f"{host}:{port}"
    timeout = max(0.05, deadline - time.monotonic())
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            f = s.makefile("rb")
            if secret is not None:
                first = _first_line(f, where)
                if _no_secret_answer(purpose, first):  # answered without a challenge
                    raise NoDaemon(f"dshd at {where} has no secret, but we have one "
                                   f"(unset ${'BEO_DSH_SECRET'} or --secret-file)")  # fmt: skip
                if not first.startswith("auth ") or len(first.split()) != 2:
                    raise NoDaemon(f"dshd at {where}: {_said(first)}")
                nonce, cnonce = first.split()[1], packet.new_nonce()
                mac = packet.query_mac(secret, purpose, nonce)
                s.sendall(f"{mac} {request or purpose} {cnonce}\n".encode())
                data = bytearray(_first_raw(f, where))
            else:
                if request:
                    s.sendall(f"{request}\n".encode())
                raw = _first_raw(f, where)
                if raw.startswith(b"auth "):
                    raise NoDaemon(f"dshd at {where} asks for the shared secret: set "
                                   "$BEO_DSH_SECRET or --secret-file")  # fmt: skip
                data = bytearray(raw)
            while len(data) < MAX_REPLY:  # a status of 10,000 members is a few MB
                s.settimeout(max(0.05, deadline - time.monotonic()))
                chunk = f.read1(1 << 20)
                if not chunk:
                    break
                data += chunk
    except TimeoutError:
        raise Silent(where) from None
    except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
        raise Busy(f"dshd at {where} reset the connection") from None
    except OSError as e:
        raise NoDaemon(f"no dshd at {where} ({e.strerror or e})") from None
    if data.startswith(b"error "):
        raise NoDaemon(f"dshd at {where}: {data[6:].decode(errors='replace').strip()}")
    if secret is not None:  # the answer must come from a holder of the secret
        try:
            data = bytearray(packet.check_answer(secret, purpose, nonce, cnonce, bytes(data)))
        except packet.PacketError as e:
            raise NoDaemon(f"dshd at {where}: {e}") from None
    return data.decode(errors="replace")


def _said(line: str) -> str:
    line = line.strip()
    return f"unexpected answer {line[:80]!r}" if not line.startswith("error ") else line[6:]


def ask_best(args: argparse.Namespace, secret: bytes | None) -> tuple[str, str, float, bool]:
    host, port = daemon_address(args, DEFAULT_BEST_PORT, args.best_port)
    # without a secret the best port answers at once and reads nothing: send nothing
    text = query(host, port, "best", "best" if secret else "", secret, args.timeout)
    try:
        return packet.parse_best(text.splitlines()[0] if text else "")
    except packet.PacketError as e:
        raise NoDaemon(f"dshd at {host}:{port}: {e}") from None


def get_status(args: argparse.Namespace, secret: bytes | None, request: str = "json") -> dict:
    """The status JSON: "json" lists every member; "top" only those up when the
    daemon has a partial view (a daemon before issue 24 answers "top" with its
    text: then "json" is asked)."""
    host, port = daemon_address(args, DEFAULT_STATUS_PORT, args.status_port)
    text = query(host, port, "status", request, secret, args.timeout)
    if request != "json" and text.startswith("# dshd "):
        text = query(host, port, "status", "json", secret, args.timeout)
    try:
        doc = json.loads(text)
    except ValueError:
        raise NoDaemon(f"dshd at {host}:{port}: not a JSON status") from None
    if not isinstance(doc, dict) or "members" not in doc:
        raise NoDaemon(f"dshd at {host}:{port}: not a status")
    return doc


# ------------------------------------------------------------------- dsh


def _warn(text: str) -> None:
    sys.stderr.write(f"beo dsh: {text}\n")
    sys.stderr.flush()


def _workdir() -> str:
    """The working directory as the shell spells it ($PWD if it is the same place)."""
    cwd = os.getcwd()
    pwd = os.environ.get("PWD")
    if pwd and os.path.isabs(pwd):
        with contextlib.suppress(OSError):
            if os.path.samefile(pwd, cwd):
                return pwd
    return cwd


def register_job(address: str, pid: int) -> None:
    """Mark a job running on this node (for this node's dshd); best effort."""
    d = os.environ.get(JOBS_ENV, DEFAULT_JOBS_DIR)
    with contextlib.suppress(OSError):
        old = os.umask(0)
        try:
            os.makedirs(d, mode=0o1777, exist_ok=True)
        finally:
            os.umask(old)
        with open(os.path.join(d, f"{address}.{pid}"), "w"):
            pass


def exec_local(cmd: list[str]) -> NoReturn:
    """Become the command (stdio, cwd, signals and exit status are its own)."""
    for sig in (signal.SIGPIPE, signal.SIGINT, *FORWARDED):
        signal.signal(sig, signal.SIG_DFL)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(cmd[0], cmd)
    except FileNotFoundError:
        _warn(f"{cmd[0]}: command not found")
        os._exit(127)
    except OSError as e:
        _warn(f"{cmd[0]}: {e.strerror}")
        os._exit(126)


def remote_script(cmd: list[str], cwd: str) -> str:
    """The sh wrapper run by ssh on the chosen node (see the module docstring)."""
    jobs = shlex.quote(os.environ.get(JOBS_ENV, DEFAULT_JOBS_DIR))
    return (
        f'd=${{{JOBS_ENV}:-{jobs}}}; (umask 0; mkdir -p -m 1777 "$d") 2>/dev/null; '
        'set -- $SSH_CONNECTION; : > "$d/${3:-local}.$$" 2>/dev/null; '
        "printf '\\036beo-dsh-pid %s\\n' $$ >&2; "
        f"cd -- {shlex.quote(cwd)} || exit 126; exec {shlex.join(cmd)}"
    )


def kill_script(pid: int, sig: int) -> str:
    """Signal the remote job's process group (sshd made it a session), else the pid."""
    return (f"g=$(cut -d' ' -f5 /proc/{pid}/stat 2>/dev/null); "
            f"[ -n \"$g\" ] && kill -{sig} -$g 2>/dev/null || kill -{sig} {pid}")  # fmt: skip


class RemoteShell:
    """How ``beo dsh`` reaches the chosen node: the launcher's :class:`Backend` (``-R``,
    ``--ssh-args``, ``--connect-timeout`` as in ``beo run``); with ``-R ssh`` the ssh
    client may be another program and its options (``--ssh``, ``$BEO_DSH_SSH``).
    ssh gets ``-T --`` before the host: a host name is never read as an option."""

    def __init__(self, backend: Backend, client: list[str] | None = None) -> None:
        self.backend, self.client = backend, client

    def argv(self, host: str, command: str) -> list[str]:
        """The local argv that runs shell command ``command`` on ``host``."""
        argv = self.backend.argv(host, command)
        if self.backend.kind == "ssh" and self.client:
            argv = [*self.client, *argv[1:]]
        return argv

    def name(self) -> str:
        """The program that connects, for messages ("ssh")."""
        return os.path.basename(self.argv("HOST", "true")[0])


def remote_shell(args: argparse.Namespace) -> RemoteShell:
    """The :class:`RemoteShell` of the options; :class:`UsageError` naming a bad one."""
    if args.ssh is not None:
        text, what = args.ssh, "--ssh"
        if args.rcmd not in ("ssh", None):
            raise UsageError(f"bad --ssh {text!r}: only with -R ssh (not -R {args.rcmd})")
    else:
        text, what = os.environ.get(SSH_ENV, ""), f"${SSH_ENV}"
    client = _words(text, what) if text else None
    if text and not client:
        raise UsageError(f"bad {what} {text!r}")
    ssh_args = _words(args.ssh_args, "--ssh-args")
    try:
        backend = make_backend(args.rcmd or "ssh", ssh_args=[*ssh_args, "-T", "--"],
                               connect_timeout=args.connect_timeout)  # fmt: skip
    except ValueError as e:
        raise UsageError(str(e)) from None
    return RemoteShell(backend, client)


def _words(text: str, what: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as e:
        raise UsageError(f"bad {what} {text!r}: {e}") from None


class Remote:
    """One command run on another node, with its stderr filtered and signals forwarded."""

    def __init__(self, shell: RemoteShell, host: str, cmd: list[str], cwd: str,
                 no_stdin: bool) -> None:  # fmt: skip
        self.shell, self.host = shell, host
        self.pid: int | None = None
        self.pid_seen = threading.Event()
        self.signals: list[int] = []
        self.killers: list[subprocess.Popen] = []
        argv = shell.argv(host, f"sh -c {shlex.quote(remote_script(cmd, cwd))}")
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL if no_stdin else None, stderr=subprocess.PIPE,
            start_new_session=True,  # terminal Ctrl-C reaches us only: we forward it
        )  # fmt: skip
        self.err_thread = threading.Thread(target=self._pump_stderr, daemon=True)
        self.err_thread.start()

    def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        out = sys.stderr.buffer
        pending = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            if self.pid is not None:
                out.write(chunk)
                out.flush()
                continue
            pending += chunk
            while self.pid is None and b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if line.startswith(MARK):
                    with contextlib.suppress(ValueError):
                        self.pid = int(line[len(MARK) :])
                    self.pid_seen.set()
                    for sig in self.signals:
                        self._send(sig)
                else:
                    out.write(line + b"\n")
            if self.pid is not None or len(pending) > 65536:
                out.write(pending)
                pending = b""
            out.flush()
        if pending:
            out.write(pending)
            out.flush()

    def _send(self, sig: int) -> None:
        if self.pid is None:
            return
        with contextlib.suppress(OSError):
            self.killers.append(subprocess.Popen(
                self.shell.argv(self.host, f"sh -c {shlex.quote(kill_script(self.pid, sig))}"),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,
            ))  # fmt: skip

    def forward(self, sig: int) -> None:
        """A signal for us: send it to the remote job (a second one of a kind ends ssh)."""
        if self.signals.count(sig) >= 1 and sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(OSError):
                self.proc.terminate()
        self.signals.append(sig)
        self._send(sig)

    def wait(self) -> int:
        rc = self.proc.wait()
        self.err_thread.join(5)
        for k in self.killers:
            try:
                k.wait(10)
            except subprocess.TimeoutExpired:
                k.kill()
                k.wait()
        if rc == 255 and self.signals:
            return 128 + self.signals[-1]
        if rc == 255 and self.pid is None:
            _warn(f"{describe_exit(rc, f'{self.shell.name()} to {self.host}')} before the "
                  "command started")  # fmt: skip
        return rc


def dsh_main(args: argparse.Namespace) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise UsageError("no command (beo dsh [-v] COMMAND...)")
    shell = remote_shell(args)
    daemon_address(args, DEFAULT_BEST_PORT, args.best_port)  # check it before anything
    secret = read_secret(args.secret_file)
    try:
        name, address, score, local = ask_best(args, secret)
    except NoDaemon as e:
        _warn(f"{e}; running locally")
        exec_local(cmd)
    if args.verbose:
        _warn(f"running on {name} (score {score:.3f})")
    if local:
        register_job(address, os.getpid())
        exec_local(cmd)
    remote = Remote(shell, name, cmd, _workdir(), args.no_stdin)

    def on_signal(sig: int, _frame: object) -> None:
        remote.forward(sig)

    for sig in FORWARDED:
        signal.signal(sig, on_signal)
    try:
        return remote.wait()
    finally:
        for sig in FORWARDED:
            signal.signal(sig, signal.SIG_DFL)


# -------------------------------------------------------------------- top


def status_table(doc: dict):  # type: ignore[no-untyped-def]
    from rich.table import Table

    total = doc.get("members_total", len(doc["members"]))
    title = f"dshd {doc.get('node')}: {doc.get('up')}/{total} up"
    if len(doc["members"]) < total:
        title += (f" (partial view: {total - len(doc['members'])} members without a fresh "
                  "report here are not listed)")
    t = Table(title=title, title_justify="left")
    for col, just in (("node", "left"), ("state", "left"), ("load 1 5 15", "right"),
                      ("cpus", "right"), ("jobs", "right"), ("extra", "right"),
                      ("mem free/total", "right"), ("score", "right"),
                      ("age s", "right")):  # fmt: skip
        t.add_column(col, justify=just, no_wrap=True)  # type: ignore[arg-type]
    for r in doc["members"]:
        name = r["name"] + (" *" if r.get("self") else "")
        if "load1" not in r:
            t.add_row(name, "[red]down[/]" if not r["up"] else "up", *["-"] * 7)
            continue
        state = "[green]up[/]" if r["up"] else "[red]down[/]"
        score = "-" if r.get("score") is None else f"{r['score']:.3f}"
        age = "-" if r.get("age") is None else f"{r['age']:.1f}"
        gib = 1024 * 1024
        t.add_row(
            name, state, f"{r['load1']:.2f} {r['load5']:.2f} {r['load15']:.2f}",
            str(r["cpus"]), str(r["jobs"]), f"{r['extra']:.1f}",
            f"{r['mem_free_kb'] / gib:.1f}/{r['mem_total_kb'] / gib:.1f} GiB", score, age,
        )  # fmt: skip
    return t


def top_main(args: argparse.Namespace, once: bool) -> int:
    from rich.console import Console

    secret = read_secret(args.secret_file)
    daemon_address(args, DEFAULT_STATUS_PORT, args.status_port)
    if getattr(args, "json", False):
        print(json.dumps(get_status(args, secret), indent=1))
        return EXIT_OK
    console = Console() if sys.stdout.isatty() else Console(width=120)
    if once:
        console.print(status_table(get_status(args, secret, "top")))
        return EXIT_OK
    from rich.live import Live
    from rich.text import Text

    interval = getattr(args, "interval", 1.5)
    if not console.is_terminal:  # like top -b: one table per interval
        while True:
            try:
                console.print(status_table(get_status(args, secret, "top")))
            except NoDaemon as e:
                console.print(f"beo top: {e}")
            sys.stdout.flush()
            time.sleep(interval)
    with Live(console=console, auto_refresh=False) as live:
        while True:
            try:
                live.update(status_table(get_status(args, secret, "top")), refresh=True)
            except NoDaemon as e:
                live.update(Text(f"beo top: {e}", style="red"), refresh=True)
            time.sleep(interval)
