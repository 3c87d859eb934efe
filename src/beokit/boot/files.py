"""The files beo boot serves (TFTP and HTTP): shared snapshots, mappings, netascii copies.

:func:`open_served` turns a requested name into an :class:`OpenFile`: a virtual
file generated from the config (a node's ``nettee/<node>.conf``, the iPXE script
when the root has none) or a real file under the root (``paths.resolve``: the
root cannot be escaped).  :class:`FileTable` shares one read-only descriptor per
file version, keyed by (device, inode, mtime, size): a file replaced or
modified on disk gets a new key, so new requests see the new bytes while
transfers in flight finish the version they began.  Files up to
:data:`MEM_MAX` (while all snapshots stay under :data:`MEM_TOTAL`) are served
from a memory snapshot, bigger ones from a read-only mapping (``os.pread``
where a file cannot be mapped), so that ``sendmmsg`` gathers each block
straight from where the file lies (:attr:`OpenFile.addr`).

To serve a new kind of virtual file, add its case to :func:`open_served`
(both TFTP and HTTP then serve it); nothing else needs to know.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import stat
from pathlib import Path

from beokit import udp
from beokit.boot import paths, tftp
from beokit.boot.config import BootConfig

MEM_MAX = 64 << 20  # files up to this size are served from a memory snapshot...
MEM_TOTAL = 512 << 20  # ...while all snapshots together stay under this (else a mapping)
NETASCII_KEEP = 64 << 20  # netascii copies kept after their last transfer (oldest go first)


def read_all(fd: int, size: int) -> bytes:
    """The first ``size`` bytes of ``fd`` (from the page cache: milliseconds)."""
    chunks, off = [], 0
    while off < size:
        b = os.pread(fd, min(size - off, 8 << 20), off)
        if not b:
            break
        chunks.append(b)
        off += len(b)
    return b"".join(chunks).ljust(size, b"\0")


class OpenFile:
    """A file being served: one descriptor shared by its transfers.

    Its bytes are in memory, where ``sendmmsg`` can gather a block straight
    from (:attr:`addr`, the address of byte 0): a snapshot (``data``: a file
    rewritten in place cannot tear a transfer in flight) or a read-only
    mapping of the file (``mm``: big files, only the page cache holds them).
    ``addr`` is 0 when neither could be had (``os.pread`` then, per block).
    Whoever holds this object keeps the memory valid: the send queues hold
    the sessions, which hold their file, until their batch has gone.
    """

    def __init__(self, key: tuple, fd: int, size: int, data: bytes | None = None,
                 mm: mmap.mmap | None = None) -> None:  # fmt: skip
        self.key = key
        self.fd = fd
        self.size = size
        self.data = data
        self.mm = mm
        self.addr = 0
        self.view: memoryview | None = None
        if data is not None:
            self.view = memoryview(data)
            self.addr = udp.address_of(data)
        elif mm is not None:
            self.view = memoryview(mm)
            self.addr = ctypes.addressof(ctypes.c_char.from_buffer(mm))
        self.refs = 0
        self.counted = False  # a netascii copy: its size is in FileTable.mem_bytes

    def read(self, offset: int, n: int) -> bytes:
        if self.view is not None:
            return bytes(self.view[offset : offset + n])
        return os.pread(self.fd, n, offset)


def map_file(fd: int, size: int) -> mmap.mmap | None:
    """A private, never written mapping of a whole file (None: it cannot be mapped).

    ``ACCESS_COPY`` only so that ctypes will give its address; no page is ever
    copied.  The kernel gathers DATA blocks from it as from the page cache."""
    try:
        return mmap.mmap(fd, size, access=mmap.ACCESS_COPY)
    except (OSError, ValueError):
        return None


class NetasciiRefused(Exception):
    """A netascii request for a file too big to convert in memory (``str``: the reason)."""


class FileTable:
    """Shared read-only descriptors, keyed by (device, inode, mtime, size).

    A file replaced or modified on disk gets a new key, so new requests see
    the new bytes while transfers in flight finish the version they began.
    """

    def __init__(self) -> None:
        self.files: dict[tuple, OpenFile] = {}
        self.mem_bytes = 0  # bytes held in snapshots (and netascii copies)
        self.idle: dict[tuple, OpenFile] = {}  # netascii copies no transfer uses, oldest first
        self.idle_bytes = 0
        self.conversions = 0  # netascii copies made

    def open(self, path: Path) -> OpenFile:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise paths.PathRefused(f"{str(path)!r} is not a regular file")
            key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
            f = self.files.get(key)
            if f is not None:
                os.close(fd)
            else:
                data = mm = None
                if st.st_size <= MEM_MAX and self.mem_bytes + st.st_size <= MEM_TOTAL:
                    data = read_all(fd, st.st_size)  # a snapshot: no syscall per block, and
                    self.mem_bytes += st.st_size  # a file rewritten in place cannot tear it
                else:
                    mm = map_file(fd, st.st_size)
                f = self.files[key] = OpenFile(key, fd, st.st_size, data, mm)
                fd = -1
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
        f.refs += 1
        return f

    def virtual(self, data: bytes) -> OpenFile:
        f = OpenFile(("virtual", id(data)), -1, len(data), data)
        f.refs = 1
        return f

    def netascii(self, f: OpenFile) -> OpenFile:
        """The netascii form of ``f`` (``tftp.to_netascii``), in place of ``f`` (whose
        reference it takes over): one converted copy per file version, shared, counted
        with the snapshots. :class:`NetasciiRefused` when it would not fit."""
        try:
            if f.fd < 0:  # a virtual file (small, generated): converted for this transfer
                return self.virtual(tftp.to_netascii(f.read(0, f.size)))
            key = ("netascii", *f.key)
            n = self.files.get(key)
            if n is not None and self.idle.pop(key, None) is n:
                self.idle_bytes -= n.size  # (kept from an earlier transfer: in use again)
            if n is None:
                if self.mem_bytes + 2 * f.size > MEM_TOTAL:
                    self._trim_idle(0)
                if f.size > MEM_MAX or self.mem_bytes + 2 * f.size > MEM_TOTAL:
                    raise NetasciiRefused(f"netascii needs a converted copy in memory; this "
                                          f"file is over the limit ({MEM_MAX:,} bytes): use "
                                          "octet (binary) mode")  # fmt: skip
                raw = f.data if f.data is not None else read_all(f.fd, f.size)
                data = tftp.to_netascii(raw)
                n = self.files[key] = OpenFile(key, -1, len(data), data)
                n.counted = True
                self.mem_bytes += len(data)
                self.conversions += 1
            n.refs += 1
            return n
        finally:
            self.close(f)

    def close(self, f: OpenFile) -> None:
        """Drop a transfer's reference; the last one closes the descriptor.  The
        snapshot or mapping goes with the object, once no queued datagram needs it."""
        f.refs -= 1
        if f.refs > 0:
            return
        if f.counted and self.files.get(f.key) is f:  # a netascii copy: kept a while, so
            self.idle[f.key] = f  # that requests repeated (or forged) do not convert again
            self.idle_bytes += f.size
            self._trim_idle(NETASCII_KEEP)
            return
        if self.files.get(f.key) is f:
            del self.files[f.key]
        if f.fd >= 0:
            os.close(f.fd)
            f.fd = -1
            if f.data is not None:
                self.mem_bytes -= f.size
        elif f.counted:
            f.counted = False
            self.mem_bytes -= f.size

    def _trim_idle(self, keep: int) -> None:
        """Drop unused netascii copies, oldest first, until at most ``keep`` bytes stay."""
        while self.idle and self.idle_bytes > keep:
            key = next(iter(self.idle))
            g = self.idle.pop(key)
            self.idle_bytes -= g.size
            if self.files.get(key) is g:
                del self.files[key]
            if g.counted:
                g.counted = False
                self.mem_bytes -= g.size

    def close_all(self) -> None:
        for f in list(self.files.values()):
            if f.fd >= 0:
                os.close(f.fd)
                f.fd = -1
        self.files.clear()
        self.idle.clear()
        self.idle_bytes = 0
        self.mem_bytes = 0


def open_served(table: FileTable, cfg: BootConfig, name: str) -> OpenFile:
    """A file by its requested name: virtual files (nettee topology, generated iPXE
    script when the root has none), else a real file under the root.  Raises
    ``paths.PathRefused`` (outside the root, not a regular file), ``FileNotFoundError``
    or another ``OSError``."""
    nt = cfg.nettee
    if nt.order and "nettee/" in name and name.endswith(".conf"):
        # (by the name as the root rules read it: with or without a leading "/", as a
        # PXE ROM or an HTTP client spells it; a refused name is refused below)
        with contextlib.suppress(paths.PathRefused):
            parts = paths.clean_name(name).parts
            if len(parts) == 2 and parts[0] == "nettee":
                data = nt.file_for(parts[1][: -len(".conf")])
                if data is not None:
                    return table.virtual(data)
    try:
        return table.open(paths.resolve(cfg.root, name))
    except FileNotFoundError:
        if cfg.kernel and cfg.ipxe_script and name.lstrip("/") == cfg.ipxe_script.lstrip("/"):
            return table.virtual(cfg.ipxe_text(cfg.http_url))
        raise
