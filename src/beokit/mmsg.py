"""``sendmmsg(2)``/``recvmmsg(2)`` through ctypes: many datagrams per system call.

Shared by the servers that move many small UDP datagrams (dshd's gossip,
beo boot's TFTP).  The structures are Linux's (``<sys/socket.h>``,
``<bits/uio.h>``); :data:`SENDMMSG`/:data:`RECVMMSG` are None where the
calls are missing (another OS, another libc): callers fall back to
``sendto``/``recvfrom`` then.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any


class IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class MsgHdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.c_void_p), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]  # fmt: skip


class MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", MsgHdr), ("len", ctypes.c_uint)]


def libc_function(name: str, *argtypes: Any) -> Any:
    """A libc function returning int, through ctypes, or None (not Linux, no such symbol)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        f = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    f.argtypes = list(argtypes)
    f.restype = ctypes.c_int
    return f


_VOIDP, _INT, _UINT = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint
SENDMMSG = libc_function("sendmmsg", _INT, _VOIDP, _UINT, _INT)
RECVMMSG = libc_function("recvmmsg", _INT, _VOIDP, _UINT, _INT, _VOIDP)
