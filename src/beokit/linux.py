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


# ----------------------------------------------------- network namespaces

NETNS_DIR = "/run/netns"  # where ``ip netns add`` pins named namespaces
CLONE_NEWNS, CLONE_NEWNET = 0x00020000, 0x40000000
MS_REC, MS_SLAVE, MS_BIND, MNT_DETACH = 0x4000, 1 << 19, 0x1000, 2
SETNS = libc_function("setns", _INT, _INT, _INT)
UNSHARE = libc_function("unshare", _INT, _INT)
MOUNT = libc_function("mount", _INT, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                      ctypes.c_ulong, _VOIDP)  # fmt: skip
UMOUNT2 = libc_function("umount2", _INT, ctypes.c_char_p, _INT)


def _mount(source: str, target: str, fstype: str | None, flags: int) -> None:
    if MOUNT(source.encode(), target.encode(), fstype.encode() if fstype else None,
             flags, None) != 0:  # fmt: skip
        raise_errno()


def enter_netns(name: str) -> None:
    """Move this (single-threaded) process into the named network namespace the way
    ``ip netns exec NAME`` does: join the network namespace pinned at
    /run/netns/NAME, take a private mount namespace (mounts of the host still
    propagate in), mount that namespace's own /sys, and bind every file of
    /etc/netns/NAME over its namesake in /etc (the namespace's hosts, resolv.conf).
    OSError (ENOENT: no such namespace; EPERM: not root) on failure."""
    if SETNS is None or UNSHARE is None or MOUNT is None or UMOUNT2 is None:
        raise OSError(38, "network namespaces need Linux's setns(2)")  # ENOSYS
    if not name or "/" in name or name in (".", ".."):
        raise OSError(22, f"bad network namespace name {name!r}")  # EINVAL
    fd = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if SETNS(fd, CLONE_NEWNET) != 0:
            raise_errno()
    finally:
        os.close(fd)
    if UNSHARE(CLONE_NEWNS) != 0:
        raise_errno()
    _mount("", "/", None, MS_SLAVE | MS_REC)  # our mounts stay ours
    if UMOUNT2(b"/sys", MNT_DETACH) == 0:  # this namespace's devices in /sys/class/net
        try:
            _mount(name, "/sys", "sysfs", 0)
        except OSError:
            pass  # best effort, as ip does: nothing of beokit reads /sys/class/net
    etc = os.path.join("/etc/netns", name)
    try:
        entries = os.listdir(etc)
    except OSError:
        entries = []
    for entry in entries:
        target = os.path.join("/etc", entry)
        if os.path.exists(target):
            _mount(os.path.join(etc, entry), target, None, MS_BIND)


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
