"""What goes into the root nettee: SOURCE, counted (and hashed), and looked at.

* :class:`SourceFeeder` copies SOURCE (a file, a device, stdin, or ``tar``
  of a directory) into the root nettee's stdin, counting and, when nettee
  has no ``-digest``, hashing it; with ``-digest`` it splices (zero-copy);
* :class:`FileProgress`: when the root nettee reads a regular file itself
  (:func:`direct_source`), its progress is the file's offset in /proc;
* :func:`source_size` for the progress bar and :func:`source_snapshot` to
  tell whether SOURCE changed during the stream.
"""

from __future__ import annotations

import collections
import os
import stat
import subprocess
import sys
import threading
from typing import Any

from beokit.cast import plan
from beokit.cast.channel import hasher
from beokit.cast.job import Job
from beokit.proc import describe_exit

CHUNK = 1 << 20


def direct_source(job: Job, algo: str | None) -> bool:
    """Can the root nettee read SOURCE itself (``-in FILE``)?

    Yes for a regular file when nettee computes the digest (-digest): no
    feeder copy, and with -heal the root replays a dead child's bytes from
    the file (sendfile) instead of keeping an in-memory window of the stream.
    """
    if job.source_kind != "file" or algo is not None:
        return False
    try:
        return stat.S_ISREG(os.stat(job.source).st_mode)
    except OSError:
        return False


class FileProgress:
    """Progress of a root nettee that reads SOURCE itself: its file offset."""

    def __init__(self, job: Job, proc: subprocess.Popen) -> None:
        self.path = os.path.realpath(job.source)
        self.pid = proc.pid
        self.fd: str | None = None
        self.last = 0
        self.digest: str | None = None
        self.error = ""

    def start(self) -> None:
        """Nothing to run: the root nettee reads the file."""

    def join(self, timeout: float) -> None:
        """Nothing to wait for."""

    @property
    def bytes(self) -> int:
        try:
            if self.fd is None:
                for fd in os.listdir(f"/proc/{self.pid}/fd"):
                    if os.readlink(f"/proc/{self.pid}/fd/{fd}") == self.path:
                        self.fd = fd
                        break
            if self.fd is not None:
                with open(f"/proc/{self.pid}/fdinfo/{self.fd}") as fh:
                    self.last = max(self.last, int(fh.readline().split()[1]))  # "pos: N"
        except (OSError, ValueError, IndexError):
            pass  # not open yet, or ended: the last value stands
        return self.last


class SourceFeeder:
    """Copies the source into the root nettee's stdin, counting (and hashing)."""

    def __init__(self, job: Job, sink: Any, algo: str | None) -> None:
        self.job = job
        self.sink = sink
        self.algo = algo
        self.bytes = 0
        self.digest: str | None = None
        self.error = ""
        self.changed = ""  # tar saw a file change as it read it
        self.tar: subprocess.Popen | None = None
        self.tar_log: collections.deque[str] = collections.deque(maxlen=20)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)

    def _open(self) -> int:
        if self.job.source_kind == "stdin":
            return sys.stdin.fileno()
        if self.job.source_kind == "dir":
            self.tar = subprocess.Popen(plan.tar_create(self.job.source, self.job.excludes),
                                        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)  # fmt: skip
            threading.Thread(target=self._tar_log, args=(self.tar,), daemon=True).start()
            assert self.tar.stdout is not None
            return self.tar.stdout.fileno()
        return os.open(self.job.source, os.O_RDONLY)

    def _run(self) -> None:
        fd = -1
        out = self.sink.fileno()
        try:
            fd = self._open()
            h = hasher(self.algo) if self.algo else None
            if h is None and hasattr(os, "splice"):
                self._splice(fd, out)
            else:
                buf = bytearray(CHUNK)
                view = memoryview(buf)
                while n := os.readv(fd, [buf]):
                    if h is not None:
                        h.update(view[:n])
                    done = 0
                    while done < n:
                        done += os.write(out, view[done:n])
                    self.bytes += n
                if h is not None:
                    self.digest = h.hexdigest()
        except BrokenPipeError:
            self.error = "the root nettee stopped reading"
        except OSError as exc:
            self.error = f"cannot read {self.job.source}: {exc.strerror}"
        finally:
            try:
                self.sink.close()
            except OSError:
                pass
            if fd >= 0 and self.job.source_kind == "file":
                os.close(fd)
            if self.tar is not None:
                self._end_tar()

    def _tar_log(self, tar: subprocess.Popen) -> None:
        """tar's messages: kept (the last 20) and passed on to our stderr."""
        assert tar.stderr is not None
        for raw in tar.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.tar_log.append(line)
            print(line, file=sys.stderr)

    def _end_tar(self) -> None:
        """GNU tar's exit status 1 ("some files differ"): a file changed as tar read it
        (it checks each file's size, mtime and ctime before and after reading it)."""
        assert self.tar is not None
        if self.error:
            self.tar.kill()
        rc = self.tar.wait()
        if rc == 1 and not self.error:
            said = [ln for ln in self.tar_log if ln.startswith("tar:")]
            self.changed = "a file changed while tar read it" + (f" ({said[-1]})" if said else "")
        elif rc != 0 and not self.error:
            self.error = f"{describe_exit(rc, 'tar')} reading {self.job.source}"

    def _splice(self, fd: int, out: int) -> None:
        """Zero-copy: nettee computes the digest itself (-digest)."""
        while True:
            try:
                n = os.splice(fd, out, CHUNK)
            except OSError as exc:
                if exc.errno == 22:  # EINVAL: this fd pair cannot splice; copy instead
                    while data := os.read(fd, CHUNK):
                        os.write(out, data)
                        self.bytes += len(data)
                    return
                raise
            if n == 0:
                return
            self.bytes += n


def source_size(job: Job) -> int | None:
    """Bytes the stream will carry, when known (a directory: an estimate)."""
    if job.source_kind == "stdin":
        return None
    if job.source_kind == "dir":
        total = 0
        for dirpath, _dirs, files in os.walk(job.source):
            for name in files:
                try:
                    st = os.lstat(os.path.join(dirpath, name))
                    total += min(st.st_size, st.st_blocks * 512) + 512
                except OSError:
                    pass
        return total
    st = os.stat(job.source)
    if stat.S_ISBLK(st.st_mode):
        fd = os.open(job.source, os.O_RDONLY)
        try:
            return os.lseek(fd, 0, os.SEEK_END)
        finally:
            os.close(fd)
    return st.st_size


def source_snapshot(job: Job) -> dict[str, int] | None:
    """What SOURCE looks like now (a file or a device), to compare after the stream.

    A regular file: size, mtime, ctime, inode and device; a block device: its
    size (a write to a device leaves its node's times alone).  None for stdin
    and a directory (tar checks every file it reads: :meth:`SourceFeeder._end_tar`)
    or when SOURCE cannot be looked at (the caller then has nothing to compare).
    """
    if job.source_kind != "file":
        return None
    try:
        st = os.stat(job.source)
        snap = {"ino": st.st_ino, "dev": st.st_dev, "size": st.st_size}
        if stat.S_ISBLK(st.st_mode):
            fd = os.open(job.source, os.O_RDONLY)
            try:
                snap["size"] = os.lseek(fd, 0, os.SEEK_END)
            finally:
                os.close(fd)
            snap["block"] = 1
        else:
            snap.update(mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns)
        return snap
    except OSError:
        return {"missing": 1}
