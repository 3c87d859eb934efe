"""The Linux system calls beokit reaches through ctypes, in one place.

Python's ``os`` has ``splice``, ``sendfile`` and ``fsync`` but not ``tee(2)``,
``syncfs(2)``, ``sendmmsg(2)`` or ``recvmmsg(2)``; this module binds those from
libc once, with the structures they take (Linux's ``<sys/socket.h>`` and
``<bits/uio.h>``), and says where they are missing (another OS, another libc):
each binding is None then, and its caller falls back (a copy loop instead of
``tee``, ``fsync`` per file instead of ``syncfs``, one ``sendto``/``recvfrom``
per datagram instead of the batch calls).

Pipes for the splice relay (:func:`make_pipe`) live here too: the pipe size is
a Linux ``fcntl``.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import sys
from typing import Any

# ----------------------------------------------------------------- libc


def libc_function(name: str, restype: Any, *argtypes: Any) -> Any:
    """A libc function through ctypes (errno kept), or None (not Linux, no such symbol)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        f = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    f.argtypes = list(argtypes)
    f.restype = restype
    return f


def raise_errno() -> None:
    """Raise the OSError of the errno the last ctypes call left."""
    e = ctypes.get_errno()
    raise OSError(e, os.strerror(e))


_VOIDP, _INT, _UINT, _SIZE = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint, ctypes.c_size_t

# ------------------------------------------------------ pipes, splice, tee

F_SETPIPE_SZ = 1031
F_GETPIPE_SZ = 1032
SPLICE_F_MOVE = 1
SPLICE_F_NONBLOCK = 2
SPLICE_F_MORE = 4

TEE = libc_function("tee", ctypes.c_ssize_t, _INT, _INT, _SIZE, _UINT)


def zero_copy_available() -> bool:
    """True when splice/tee can carry a stream (Linux, not disabled by
    ``BEOKIT_NO_SPLICE=1``)."""
    return hasattr(os, "splice") and TEE is not None and os.environ.get("BEOKIT_NO_SPLICE") != "1"


def tee(fd_in: int, fd_out: int, length: int, flags: int = 0) -> int:
    """``tee(2)``: duplicate up to ``length`` bytes of pipe ``fd_in`` into pipe
    ``fd_out`` without consuming them; OSError on failure."""
    assert TEE is not None, "tee(2) is not available: check zero_copy_available()"
    n = TEE(fd_in, fd_out, length, flags)
    if n < 0:
        raise_errno()
    return int(n)


def make_pipe(size: int) -> tuple[int, int, int]:
    """A close-on-exec pipe of (up to) ``size`` bytes: (read fd, write fd, capacity).

    Above ``/proc/sys/fs/pipe-max-size`` the kernel refuses the size (EPERM):
    the pipe keeps what it has.
    """
    r, w = os.pipe2(os.O_CLOEXEC) if hasattr(os, "pipe2") else os.pipe()
    cap = 65536
    if sys.platform.startswith("linux"):
        try:
            fcntl.fcntl(w, F_SETPIPE_SZ, size)
        except OSError:
            pass  # above the limit: keep what we have
        try:
            cap = fcntl.fcntl(w, F_GETPIPE_SZ)
        except OSError:
            pass
    return r, w, cap


# ---------------------------------------------------------------- syncfs

SYNCFS = libc_function("syncfs", _INT, _INT)


def syncfs(fd: int) -> None:
    """``syncfs(2)``: flush the whole file system holding ``fd``; where the call
    is missing, ``fsync(fd)`` (the file or directory itself).  OSError on failure."""
    if SYNCFS is None:
        os.fsync(fd)
        return
    if SYNCFS(fd) != 0:
        raise_errno()


# ------------------------------------------------- sendmmsg / recvmmsg


class IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class MsgHdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.c_void_p), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]  # fmt: skip


class MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", MsgHdr), ("len", ctypes.c_uint)]


SENDMMSG = libc_function("sendmmsg", _INT, _INT, _VOIDP, _UINT, _INT)
RECVMMSG = libc_function("recvmmsg", _INT, _INT, _VOIDP, _UINT, _INT, _VOIDP)
MSG_DONTWAIT = 0x40
