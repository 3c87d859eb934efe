"""Processes, the same way in every pillar.

* how a process's end is worded (:func:`describe_exit`): "exited with
  status 3", "killed by signal 9 (SIGKILL)", for reports, logs and errors;
* stopping processes (:func:`kill_group`, :func:`stop`) and running a user's
  shell command with a bounded wait (:class:`ShellCommand`);
* SIGINT/SIGTERM as an exception a command can clean up after
  (:class:`SignalGuard`, :class:`Interrupted`);
* forking a preloaded Python worker (:func:`fork_python`) and a fork server
  that forks one per request (:func:`start_fork_server`,
  :func:`request_fork`): a fork of an interpreter that has imported its
  program starts in ~1 ms, a fresh one costs ~50-200 ms of CPU, and on one
  box hundreds of them queue on the same cores.

Standard library only: the launcher ships this module to nodes where beokit
is not installed, and beo cast's receiver imports it there.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable

# subprocess, select and socket are imported where they are used: beo cast's
# receiver and the launcher's agent import this module first thing on every node
# (dataclasses alone, with inspect, was ~50 ms of a receiver's start-up).

SHELL = "/bin/sh"


# ------------------------------------------------------------ how it ended


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def describe_exit(returncode: int | None, what: str = "") -> str:
    """One wording for how a process ended, from a ``subprocess`` return code
    (negative: killed by that signal) or None (still running).

    >>> describe_exit(3, "tar")
    'tar exited with status 3'
    >>> describe_exit(-9)
    'killed by signal 9 (SIGKILL)'
    """
    prefix = f"{what} " if what else ""
    if returncode is None:
        return f"{prefix}is still running"
    if returncode < 0:
        return f"{prefix}killed by signal {-returncode} ({signal_name(-returncode)})"
    return f"{prefix}exited with status {returncode}"


def describe_wait_status(status: int, what: str = "") -> str:
    """:func:`describe_exit` for a raw ``os.waitpid`` status."""
    if os.WIFSIGNALED(status):
        return describe_exit(-os.WTERMSIG(status), what)
    return describe_exit(os.waitstatus_to_exitcode(status), what)


# ---------------------------------------------------------------- stopping


def kill_group(proc: Any, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to the process group ``proc`` leads (started with
    ``start_new_session``: it and whatever it started); gone already is fine."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop(proc: subprocess.Popen, grace: float = 5.0) -> int:
    """SIGTERM, then SIGKILL after ``grace`` seconds; reaped either way."""
    import subprocess

    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


# ----------------------------------------------------------- shell commands


def shell_argv(command: str) -> list[str]:
    """The argv that runs ``command`` as ``sh -c`` does (what every node runs)."""
    return [SHELL, "-c", command]


class Finished:
    """How a command ended: ``returncode`` None if it was stopped (``error`` says why)."""

    __slots__ = ("returncode", "out", "err", "error")

    def __init__(self, returncode: int | None, out: bytes, err: bytes,
                 error: str | None = None) -> None:  # fmt: skip
        self.returncode = returncode
        self.out = out
        self.err = err
        self.error = error

    def __repr__(self) -> str:
        return (f"Finished(returncode={self.returncode!r}, out={self.out!r}, err={self.err!r}, "
                f"error={self.error!r})")  # fmt: skip

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Finished) and all(
            getattr(self, k) == getattr(other, k) for k in self.__slots__)


class ShellCommand:
    """A user's shell command in its own session, stdout and stderr captured.

    ``input``: bytes for its stdin (None: /dev/null).  :meth:`finish` waits
    (bounded by ``timeout``), :meth:`kill` ends it and whatever it started.
    """

    def __init__(self, command: str, *, env: dict[str, str] | None = None,
                 input: bytes | None = None) -> None:  # fmt: skip
        import subprocess

        self.input = input
        self.proc = subprocess.Popen(
            shell_argv(command), stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
            start_new_session=True)  # fmt: skip

    def finish(self, timeout: float | None = None) -> Finished:
        """Feed the input, read both outputs to the end; kill it after ``timeout`` seconds."""
        import subprocess

        try:
            out, err = self.proc.communicate(self.input, timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(self.proc)
            out, err = self.proc.communicate()
            return Finished(None, out, err, f"command timed out after {timeout:g} s")
        return Finished(self.proc.returncode, out, err)

    def running(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            kill_group(self.proc)


# ------------------------------------------------------------------ signals


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; ``outcome`` is for the command to fill in
    (what had happened by then) before it reports."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal_name(signum)
        super().__init__(self.name)
        self.outcome: Any = None

    @property
    def exit_status(self) -> int:
        """128 + the signal's number, as a shell reports a process it ended."""
        return 128 + self.signum


class SignalGuard:
    """SIGINT and SIGTERM raise :class:`Interrupted` (once) while this is entered.

    A second signal during the clean-up that follows (bounded: a few seconds)
    is noted and otherwise ignored, so that the clean-up finishes.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.fired: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> SignalGuard:
        for sig in self.SIGNALS:
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.fired is None:
            self.fired = signum
            raise Interrupted(signum)


# ----------------------------------------------------------------- forking


def _child(main: Callable[[], int | None], name: str, fds: tuple[int | None, int | None, int | None],
           env: dict[str, str] | None, argv: list[str] | None,
           pass_fds: tuple[int, ...] = ()) -> None:  # fmt: skip
    """In a forked child: become the worker, run ``main``, never return."""
    rc = 1
    try:
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # a fork server ignores it
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):  # not the parent's handlers
            signal.signal(sig, signal.SIG_DFL)
        stdin, stdout, stderr = fds
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null if stdin is None else stdin, 0)
        os.dup2(null if stdout is None else stdout, 1)
        if stderr is not None:
            os.dup2(stderr, 2)
        low = 3  # the parent's sockets and pipes are not ours (but those passed on)
        for fd in sorted(f for f in pass_fds if f >= 3):
            os.set_inheritable(fd, True)
            os.closerange(low, fd)
            low = fd + 1
        os.closerange(low, 1 << 16)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        if env:
            os.environ.update(env)
        if argv is not None:
            sys.argv = list(argv)
        if name:  # what ps -e, top and pkill see
            try:
                with open("/proc/self/comm", "w") as fh:
                    fh.write(name[:15])
            except OSError:
                pass
        rc = main() or 0
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:  # noqa: BLE001 - report it, never return into the parent's code
        print(f"{name or 'worker'}: {exc!r}", file=sys.stderr)
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(rc)


def fork_python(main: Callable[[], int | None], *, name: str = "", stderr: int | None = None,
                env: dict[str, str] | None = None, argv: list[str] | None = None,
                stdin: int | None = None, stdout: int | None = None,
                pass_fds: tuple[int, ...] = ()) -> int:  # fmt: skip
    """Fork this (preloaded) interpreter into a worker that runs ``main()``; its pid.

    The worker has its own session, ``stdin`` and ``stdout`` (descriptors;
    None: /dev/null) on fds 0 and 1, ``stderr`` (None: ours) on fd 2 and no
    other descriptor of ours but ``pass_fds`` (kept at their numbers), and the
    default handlers of SIGTERM, SIGHUP and
    SIGINT; it is called ``name`` in ``/proc/PID/comm``; ``env`` is added to
    its environment and ``argv`` becomes its ``sys.argv``.  It exits with
    ``main``'s return value (``SystemExit``'s code; 1 after any other
    exception, printed), without the interpreter's clean-up (``os._exit``).
    """
    pid = os.fork()
    if pid == 0:
        _child(main, name, (stdin, stdout, stderr), env, argv, pass_fds)
    return pid


class ForkedCommand:
    """A Python function run like a shell command, in a fork of this interpreter.

    What :class:`ShellCommand` does for ``sh -c``, for ``module:function``
    (imported here, before the fork): ``input`` on its stdin, stdout and
    stderr captured, its own session, ``env`` added to its environment; the
    function's return value is the exit status.  A process that imported the
    program once (an agent of the launch tree) starts it in a millisecond
    instead of the 50-200 ms of CPU a fresh interpreter and its imports cost.
    """

    def __init__(self, entry: str, *, env: dict[str, str] | None = None,
                 input: bytes | None = None, name: str = "") -> None:  # fmt: skip
        target = _target(entry)
        stdin, self._in = os.pipe()
        self._out, stdout = os.pipe()
        self._err, stderr = os.pipe()
        try:
            self.pid = fork_python(lambda: target(), name=name, env=env, stdin=stdin,
                                   stdout=stdout, stderr=stderr)  # fmt: skip
        except OSError:
            for fd in (self._in, self._out, self._err):
                os.close(fd)
            raise
        finally:
            for fd in (stdin, stdout, stderr):  # the child's ends
                os.close(fd)
        self.child = ForkedChild(self.pid)
        self.input = input or b""

    def running(self) -> bool:
        return self.child.poll() is None

    def kill(self) -> None:
        if self.child.poll() is None:
            kill_group(self.child)

    def finish(self, timeout: float | None = None) -> Finished:
        """Feed the input, read both outputs to the end; kill it after ``timeout`` seconds."""
        import selectors

        deadline = None if timeout is None else time.monotonic() + timeout
        bufs = {self._out: bytearray(), self._err: bytearray()}
        pending = memoryview(self.input)
        with selectors.DefaultSelector() as sel:
            for fd in bufs:
                sel.register(fd, selectors.EVENT_READ)
            if pending:
                os.set_blocking(self._in, False)
                sel.register(self._in, selectors.EVENT_WRITE)
            else:
                os.close(self._in)
            error = None
            while len(sel.get_map()) > 0:
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    kill_group(self.child)
                    error = f"command timed out after {timeout:g} s"
                    deadline = None
                    continue
                for key, _ in sel.select(wait):
                    fd = key.fd
                    if fd == self._in:
                        try:
                            pending = pending[os.write(fd, pending[: 1 << 16]):]
                        except (BrokenPipeError, BlockingIOError) as exc:
                            if isinstance(exc, BlockingIOError):
                                continue
                            pending = pending[:0]
                        if not pending:
                            sel.unregister(fd)
                            os.close(fd)
                        continue
                    data = os.read(fd, 1 << 16)
                    if data:
                        bufs[fd] += data
                    else:
                        sel.unregister(fd)
                        os.close(fd)
        rc = self.child.wait()
        return Finished(None if error else rc, bytes(bufs[self._out]), bytes(bufs[self._err]),
                        error)  # fmt: skip


class ForkedChild:
    """A worker of :func:`fork_python` started by this process, read like a Popen."""

    def __init__(self, pid: int, stderr: Any = None) -> None:
        self.pid = pid
        self.stderr = stderr
        self.returncode: int | None = None
        self._lock = threading.Lock()

    def _reap(self, flags: int) -> int | None:
        with self._lock:
            if self.returncode is None:
                try:
                    got, status = os.waitpid(self.pid, flags)
                except ChildProcessError:
                    return self.returncode
                if got:
                    self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode

    def poll(self) -> int | None:
        return self._reap(os.WNOHANG)

    def wait(self) -> int:
        rc = self._reap(0)
        assert rc is not None
        return rc


class Watched:
    """A process that is not our child (a fork server's worker), watched through a
    pidfd; the part of Popen's API a launcher uses.  Its exit code is not ours to
    read: it counts as 0 once it has gone."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.stdin = None
        self.stdout: Any = None  # a launcher may give it the read end of its stderr
        self.status_known = False  # its exit code is the server's to read, not ours
        try:
            self._fd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:
            self._fd, self.returncode = None, 0  # gone already
        except (OSError, AttributeError):
            self._fd = None

    def _ended(self, timeout: float | None) -> bool:
        if self.returncode is not None:
            return True
        if self._fd is None:  # no pidfd (old kernel): poll the pid (the server reaps it)
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
        import select

        if select.select([self._fd], [], [], timeout)[0]:
            os.close(self._fd)
            self._fd, self.returncode = None, 0
            return True
        return False

    def poll(self) -> int | None:
        self._ended(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended(timeout):
            import subprocess

            raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0)
        return self.returncode or 0


# -------------------------------------------------------------- fork server
#
# A small single-threaded server that has imported a worker's program once
# and forks a worker per request (as multiprocessing's forkserver does): the
# request is one line, handed to the program's entry point ``f(line) -> int``.


def _target(spec: str) -> Callable[..., int | None]:
    import importlib

    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def _preload() -> None:
    """What every worker shares: resolved once, and kept from the collector."""
    import gc
    import socket

    # getaddrinfo loads glibc's NSS modules: ~2-3 ms in every worker otherwise
    for name in ("127.0.0.1", "localhost"):
        try:
            socket.getaddrinfo(name, 1, 0, socket.SOCK_STREAM)
        except OSError:
            pass
    # what is imported now is shared by every worker: keep the collector off it,
    # so forked workers do not copy those pages (copy-on-write) by touching them
    gc.collect()
    gc.freeze()


def _read_request(conn: Any, limit: int) -> tuple[bytes, list[int]]:
    """The request line, and the descriptors that came with its first bytes (the
    worker's stderr, :func:`request_fork`)."""
    import socket

    line, fds, _flags, _addr = socket.recv_fds(conn, 1 << 16, 1)
    if not line:
        return b"", fds
    while not line.endswith(b"\n") and len(line) < limit:
        data = conn.recv(1 << 16)
        if not data:
            break
        line += data
    return line, fds


def serve_forks(path: str, target: str, max_request: int = 1 << 20, name: str = "",
                preload: tuple[str, ...] = ()) -> None:  # fmt: skip
    """The fork server on UNIX socket ``path``: a worker running ``target``
    (``"module:function"``, imported now, with every module of ``preload``) per
    request line; the reply is its pid.  Returns when our parent is gone."""
    import importlib
    import socket

    entry = _target(target)
    for module in preload:
        importlib.import_module(module)
    parent = os.getppid()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the workers
    _preload()
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path + ".new")
    srv.listen(4096)
    os.rename(path + ".new", path)  # the path appears listening: no refused first request
    srv.settimeout(1)
    while os.getppid() == parent:
        try:
            conn, _ = srv.accept()
        except TimeoutError:
            continue
        conn.settimeout(5)
        fds: list[int] = []
        try:
            line, fds = _read_request(conn, max_request)
            pid = fork_python(lambda line=line: entry(line), name=name,
                              stderr=fds[0] if fds else None)  # fmt: skip
            conn.sendall(b"%d\n" % pid)
        except OSError:
            pass
        finally:
            for fd in fds:
                os.close(fd)
            conn.close()


def start_fork_server(path: str, target: str, max_request: int = 1 << 20, name: str = "",
                      preload: tuple[str, ...] = ()) -> subprocess.Popen:  # fmt: skip
    """Start :func:`serve_forks` in a site-less interpreter (this one's ``sys.path``, so
    that it finds what this one finds, without the site set-up); its Popen (the caller
    ends it)."""
    import subprocess

    src = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = [src] + [p for p in sys.path if p and p != src]
    code = (f"import sys; sys.path[:0] = {paths!r}; from beokit.proc import serve_forks; "
            f"serve_forks({path!r}, {target!r}, {max_request!r}, {name!r}, "
            f"{tuple(preload)!r})")  # fmt: skip
    server = subprocess.Popen([sys.executable, "-S", "-c", code], stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not os.path.exists(path):
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            server.wait()
            raise OSError("the fork server did not start")
        time.sleep(0.01)
    return server


def request_fork(path: str, line: bytes, timeout: float = 10,
                 stderr: int | None = None) -> Watched:  # fmt: skip
    """Ask the fork server at ``path`` for a worker that gets ``line``; ``stderr``: a
    descriptor (passed with SCM_RIGHTS) for the worker's fd 2 instead of the server's."""
    import socket

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
        if stderr is not None:
            sent = socket.send_fds(s, [line[:1 << 16]], [stderr])
            if sent < len(line):  # (sendall of b"" still sends: EPIPE once the server
                s.sendall(line[sent:])  # has answered and closed)
        else:
            s.sendall(line)
        reply = b""
        while not reply.endswith(b"\n"):
            data = s.recv(64)
            if not data:
                raise OSError("the fork server closed the connection")
            reply += data
    return Watched(int(reply))
