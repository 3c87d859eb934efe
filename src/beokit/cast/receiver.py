"""The program ``beo cast`` starts on every node: ``python3 -m beokit.cast.receiver``.

It talks to the cast root over the launcher's channel (its stdin and
stdout: the ssh session, or a pipe with ``-R exec``), one JSON object a
line, and nothing of it is ever on a command line:

1. root -> node: ``{"secret", "host", "dest", "kind", "bind", "digest",
   "fsync", "progress"}``.  The node checks that it can do its part
   (the bind address exists, DEST can be created and written) and answers
   ``{"t": "up"}`` or ``{"t": "fail", "code", "why"}``.
2. root -> node: ``{"t": "go", "args": [...]}`` (nettee's arguments) or
   ``{"t": "cancel"}``.  The node runs nettee with the secret in its
   environment (``NETTEE_SECRET``), optionally sends
   ``{"t": "progress", "bytes"}`` twice a second.
3. When nettee ends: fsync DEST (file, device: ``fsync``; directory:
   ``syncfs``), then, if asked (nettee without ``-digest``), reread a file
   DEST and hash it; answer ``{"t": "result", "rc", "bytes", "fsync",
   "digest", "seconds", "why"}``.  Only then does the root count the node
   as done: data is on stable storage before a node reports success.

If the root goes away (stdin closes) the node stops nettee and exits, so
nothing is left running.
"""

from __future__ import annotations

import collections
import ctypes
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

PROGRESS_EVERY = 0.5
HASH_CHUNK = 1 << 20

_out_lock = threading.Lock()


def nettee_argv() -> tuple[list[str], dict[str, str]]:
    """nettee in this interpreter, without site (``-S``): no .pth processing.

    A python's site set-up costs ~100 ms of CPU; a cast starts one nettee per
    node, and on one box (``-R exec``) they all queue on the same cores.  nettee
    needs only the standard library and beokit, so this interpreter's
    ``sys.path`` in ``PYTHONPATH`` is all it needs.  Returns (argv, env additions).
    """
    boot = "import sys; from beokit.nettee.cli import main; sys.exit(main())"
    return [sys.executable, "-S", "-c", boot], {
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)
    }


def say(msg: dict[str, Any]) -> None:
    with _out_lock:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()


def hasher(name: str) -> Any:
    """A hash object by name: ``xxh3_128`` (xxhash) or a hashlib name."""
    if name == "xxh3_128":
        import xxhash

        return xxhash.xxh3_128()
    import hashlib

    return hashlib.new(name)


def check(spec: dict[str, Any]) -> tuple[str, str] | None:
    """Can this node do its part?  None, or (code, why)."""
    bind = spec.get("bind")
    if bind:
        try:
            info = socket.getaddrinfo(bind, None, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            return "DOWN", f"unknown host {bind!r}: {exc.strerror}"
        family, _, _, _, addr = info[0]
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.bind((addr[0], 0))
        except OSError as exc:
            return "DOWN", f"cannot listen on {addr[0]}: {exc.strerror}"
    dest, kind = spec["dest"], spec["kind"]
    try:
        if kind == "file":
            parent = os.path.dirname(dest)
            if parent:
                os.makedirs(parent, exist_ok=True)
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT, 0o644)
            os.close(fd)
        elif kind == "dir":
            os.makedirs(dest, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".beo-cast-", dir=dest)
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        return "LWF", f"cannot write {exc.filename or dest}: {exc.strerror}"
    return None


def sync(dest: str, kind: str) -> str:
    """Flush DEST to stable storage: 'ok', 'skipped' or the error."""
    if kind == "cmd":
        return "skipped"
    try:
        fd = os.open(dest, os.O_RDONLY | (os.O_DIRECTORY if kind == "dir" else 0))
    except OSError as exc:
        return f"cannot open {dest}: {exc.strerror}"
    try:
        if kind == "dir":
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.syncfs(fd) != 0:
                return f"syncfs {dest}: {os.strerror(ctypes.get_errno())}"
        else:
            os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (22, 30):  # EINVAL/EROFS: a pipe or a read-only special file
            return f"fsync {dest}: {exc.strerror}"
    finally:
        os.close(fd)
    return "ok"


def file_digest(dest: str, algo: str) -> str | None:
    try:
        h = hasher(algo)
    except (ImportError, ValueError):
        return None
    buf = bytearray(HASH_CHUNK)
    view = memoryview(buf)
    with open(dest, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def main() -> int:
    line = sys.stdin.readline()
    try:
        spec = json.loads(line)
        secret = str(spec["secret"])
    except (ValueError, KeyError, TypeError):
        say({"t": "fail", "code": "DOWN", "why": "bad start message from the cast root"})
        return 2
    host = str(spec.get("host", ""))
    problem = check(spec)
    if problem is not None:
        say({"t": "fail", "code": problem[0], "why": problem[1], "host": host})
        return 1
    say({"t": "up", "host": host, "pid": os.getpid()})
    line = sys.stdin.readline()
    try:
        go = json.loads(line) if line else {"t": "cancel"}
    except ValueError:
        go = {"t": "cancel"}
    if go.get("t") != "go":
        return 0
    env = dict(os.environ)
    env["NETTEE_SECRET"] = secret
    env["BEO_HOST"] = host
    argv, more = nettee_argv()
    env.update(more)
    dest, kind = spec["dest"], spec["kind"]
    start = time.monotonic()
    try:
        proc = subprocess.Popen(argv + [str(a) for a in go["args"]],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=env, start_new_session=True)  # fmt: skip
    except OSError as exc:
        say({"t": "result", "rc": 127, "why": f"cannot run nettee: {exc}", "host": host})
        return 1
    tail: collections.deque[str] = collections.deque(maxlen=20)
    done = threading.Event()

    def read_log() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            tail.append(raw.decode(errors="replace").rstrip())

    def watch_root() -> None:
        """The root went away (stdin closed): stop nettee, nothing is left behind."""
        sys.stdin.read()
        if not done.is_set() and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                time.sleep(1.0)
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def progress() -> None:
        while not done.wait(PROGRESS_EVERY):
            try:
                say({"t": "progress", "bytes": os.stat(dest).st_size})
            except OSError:
                pass

    logger = threading.Thread(target=read_log, daemon=True)
    logger.start()
    threading.Thread(target=watch_root, daemon=True).start()
    if spec.get("progress") and kind == "file":
        threading.Thread(target=progress, daemon=True).start()
    rc = proc.wait()
    done.set()
    logger.join(timeout=2)
    seconds = time.monotonic() - start
    res: dict[str, Any] = {"t": "result", "host": host, "rc": rc, "seconds": round(seconds, 3),
                           "bytes": None, "fsync": None, "digest": None}  # fmt: skip
    errors = [ln for ln in tail if "nettee" in ln and ("failure" in ln or "error" in ln.lower())]
    if rc != 0:
        res["why"] = (errors or list(tail) or [f"nettee exited with status {rc}"])[-1]
    regular = False
    if kind == "file":
        try:
            st = os.stat(dest)
            regular = stat.S_ISREG(st.st_mode)
            res["bytes"] = st.st_size if regular else None
        except OSError as exc:
            res["why"] = f"{dest}: {exc.strerror}"
    if spec.get("fsync", True):
        res["fsync"] = sync(dest, kind)
    else:
        res["fsync"] = "skipped"
    if rc == 0 and regular and spec.get("digest"):
        try:
            res["digest"] = file_digest(dest, str(spec["digest"]))
        except OSError as exc:
            res["why"] = f"cannot reread {dest}: {exc.strerror}"
    res["log"] = list(tail)[-5:]
    say(res)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:
        sys.exit(1)
