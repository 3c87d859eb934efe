"""Moved to :mod:`beokit.linux` (one module for every ctypes binding).

Kept only until dshd imports from :mod:`beokit.linux` directly; nothing new
should import this module.
"""

from beokit.linux import RECVMMSG, SENDMMSG, IOVec, MMsgHdr, MsgHdr

__all__ = ["RECVMMSG", "SENDMMSG", "IOVec", "MMsgHdr", "MsgHdr"]
