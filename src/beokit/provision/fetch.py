"""Getting a small file from the boot server: TFTP (RFC 1350, octet) or HTTP.

The node command's first fetch (its topology file, ``nettee/<name>.conf``):
a lock-step TFTP read with bounded retries, the way a PXE ROM reads, so that
nothing but Python's standard library is needed in the initramfs.
"""

from __future__ import annotations

import socket
import struct
import time
import urllib.request

RRQ, DATA, ACK, ERROR = 1, 3, 4, 5
BLOCK = 512
MAX_BYTES = 1 << 20


class FetchError(OSError):
    """The file could not be fetched (names the server and the file)."""


def _ask(sock: socket.socket, server: tuple[str, int], path: str, tries: int,
         timeout: float) -> tuple[bytes, tuple[str, int]]:  # fmt: skip
    req = struct.pack("!H", RRQ) + path.encode() + b"\0octet\0"
    for _ in range(tries):
        sock.sendto(req, server)
        sock.settimeout(timeout)
        try:
            return sock.recvfrom(BLOCK + 4)
        except TimeoutError:
            continue
    raise FetchError(f"tftp://{server[0]}:{server[1]}/{path}: no answer after {tries} tries")


def tftp_get(host: str, path: str, port: int = 69, tries: int = 5, timeout: float = 1.0) -> bytes:
    """A whole file by TFTP, lock-step, 512-byte blocks."""
    where = f"tftp://{host}:{port}/{path}"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        data, peer = _ask(sock, (host, port), path, tries, timeout)
        out, expect, misses = bytearray(), 1, 0
        while True:
            op, num = struct.unpack("!HH", data[:4]) if len(data) >= 4 else (0, 0)
            if op == ERROR:
                why = data[4:].rstrip(b"\0").decode(errors="replace")
                raise FetchError(f"{where}: {why}")
            if op == DATA and num == expect & 0xFFFF:
                out += data[4:]
                sock.sendto(struct.pack("!HH", ACK, num), peer)
                if len(data) - 4 < BLOCK:
                    return bytes(out)
                if len(out) > MAX_BYTES:
                    raise FetchError(f"{where}: larger than {MAX_BYTES} bytes")
                expect, misses = expect + 1, 0
            try:
                data, _ = sock.recvfrom(BLOCK + 4)
            except TimeoutError:
                misses += 1
                if misses >= tries:
                    raise FetchError(f"{where}: transfer stalled at block {expect}") from None
                sock.sendto(struct.pack("!HH", ACK, (expect - 1) & 0xFFFF), peer)


def http_get(url: str, timeout: float = 10.0) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (the boot server)
            return r.read(MAX_BYTES + 1)[:MAX_BYTES]
    except OSError as e:
        raise FetchError(f"{url}: {e}") from None


def fetch(host: str, path: str, *, tftp_port: int = 69, http_base: str = "",
          wait: float = 30.0) -> bytes:  # fmt: skip
    """The file over HTTP when ``http_base`` is given, else TFTP; retried for ``wait`` s
    (the server may still be starting while the node boots)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            if http_base:
                return http_get(http_base.rstrip("/") + "/" + path.lstrip("/"))
            return tftp_get(host, path, tftp_port)
        except OSError as e:
            if time.monotonic() >= deadline:
                raise FetchError(str(e)) from None
            time.sleep(1.0)
