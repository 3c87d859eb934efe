"""A faulty network hop for tests: a TCP proxy that loses bytes of a stream.

    python dropper.py LISTEN_ADDR PORT TARGET_ADDR TARGET_PORT DROP_AT DROP_LEN [flip]

Forwards PORT+1 (nettee's control channel) faithfully and PORT (data)
faithfully except DROP_LEN bytes at stream offset DROP_AT, which vanish —
what a buggy middlebox or a broken relay would do.  With ``flip`` the
bytes are not dropped but inverted (a corruption that keeps the count, which
only a digest can see).  The data header (the first 32 bytes) is passed
through so the child accepts the connection.
"""

from __future__ import annotations

import socket
import sys
import threading


def pump(src: socket.socket, dst: socket.socket, drop_at: int = -1, drop_len: int = 0,
         flip: bool = False) -> None:  # fmt: skip
    pos = 0
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            start, pos = pos, pos + len(data)  # offsets in the stream as received
            if drop_at >= 0:
                lo, hi = drop_at - start, drop_at + drop_len - start
                if hi > 0 and lo < len(data):
                    a, b = max(lo, 0), max(hi, 0)
                    middle = bytes(x ^ 0xFF for x in data[a:b]) if flip else b""
                    data = data[:a] + middle + data[b:]
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def serve(listen: str, port: int, target: str, tport: int, drop_at: int, drop_len: int,
          flip: bool = False) -> None:  # fmt: skip
    lst = socket.create_server((listen, port))
    while True:
        conn, _ = lst.accept()
        up = socket.create_connection((target, tport))
        threading.Thread(target=pump, args=(conn, up, drop_at, drop_len, flip),
                         daemon=True).start()  # fmt: skip
        threading.Thread(target=pump, args=(up, conn), daemon=True).start()


def main() -> None:
    listen, port, target, tport, drop_at, drop_len = sys.argv[1:7]
    p, tp = int(port), int(tport)
    threading.Thread(target=serve, args=(listen, p + 1, target, tp + 1, -1, 0), daemon=True).start()
    serve(listen, p, target, tp, int(drop_at), int(drop_len), sys.argv[7:8] == ["flip"])


if __name__ == "__main__":
    main()
