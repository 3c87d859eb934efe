#!/usr/bin/env python3
"""Which digest costs least on nettee's byte path: xxh3-128, xxh3-64, BLAKE2b, BLAKE3, SHA-256.

    python3 bench/bench_digest.py [--size 1G] [--runs 3]

Each algorithm runs the way ``-digest`` runs it: a writer splices a source
file from /dev/shm into a pipe (as the relay's tee does), the tap reads
each chunk from the pipe into a 16 MiB ring with ``readv`` (the one copy)
and updates the hash over the ring in place.  "copy only" is the tap with
no hash: what keeping the replay window alone costs.  The rate is bytes
per CPU-second of the tap's thread (``thread_time``, so a busy machine
does not skew it); ``--step`` sets how much the tap reads and hashes at a
time.  BLAKE3 is measured when
the ``blake3`` package is installed (it is not a beokit dependency).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable

from beokit.cli import parse_size
from beokit.linux import make_pipe
from beokit.nettee.sinks import TAP_STEP, Ring

CHUNK = 1 << 20
STEP = 1 << 20  # bytes the tap reads at a time (relay.TAP_STEP)


def algorithms() -> dict[str, Callable[[], object] | None]:
    import xxhash

    algos: dict[str, Callable[[], object] | None] = {
        "copy only (no hash)": None,
        "xxh3_128 (beokit)": xxhash.xxh3_128,
        "xxh3_64": xxhash.xxh3_64,
        "blake2b": hashlib.blake2b,
        "sha256": hashlib.sha256,
    }
    try:
        import blake3  # type: ignore[import-not-found]

        algos["blake3"] = blake3.blake3
    except ImportError:
        pass
    return algos


def one(src: str, size: int, make: Callable[[], object] | None) -> float:
    r, w, _ = make_pipe(CHUNK)
    ring = Ring(16 << 20)
    h = make() if make else None

    def writer() -> None:
        fd = os.open(src, os.O_RDONLY)
        try:
            left = size
            while left:
                left -= os.splice(fd, w, min(CHUNK, left))
        finally:
            os.close(fd)
            os.close(w)

    t = threading.Thread(target=writer)
    t0 = time.thread_time()  # CPU of this (the tap's) thread: robust on a busy machine
    t.start()
    got = 0
    while True:
        n = os.readv(r, ring.free(STEP))
        if not n:
            break
        if h is not None:
            for seg in ring.free(n):
                h.update(seg)  # type: ignore[attr-defined]
        ring.end += n
        got += n
    secs = time.thread_time() - t0
    t.join()
    os.close(r)
    if got != size:
        raise RuntimeError(f"moved {got} of {size} bytes")
    return size / secs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=parse_size, default=parse_size("1G"), help="default 1G")
    ap.add_argument("--runs", type=int, default=3, help="default 3 (median)")
    ap.add_argument("--step", type=parse_size, help="tap read size (default relay.TAP_STEP)")
    args = ap.parse_args(argv)
    global STEP
    STEP = args.step or TAP_STEP
    src = f"/dev/shm/beokit-digest-{os.getpid()}.bin"
    with open(src, "wb") as fh:
        left = args.size
        while left:
            n = min(16 << 20, left)
            fh.write(os.urandom(n))
            left -= n
    try:
        one(src, args.size, None)  # warm-up: page cache, pipe pages, ring
        rows = []
        for name, make in algorithms().items():
            rates = [one(src, args.size, make) for _ in range(args.runs)]
            rows.append((name, statistics.median(rates)))
            print(f"{name:<22} {rows[-1][1] / 1e9:6.2f} GB/s", flush=True)
    finally:
        os.unlink(src)
    base = rows[0][1]
    print()
    print(f"tap path (pipe -> ring -> hash), {args.size >> 20} MiB, {STEP >> 10} KiB steps, "
          f"median of {args.runs}, "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    print("| algorithm | GB per CPU-second | CPU per GB vs copy only |")
    print("|---|---|---|")
    for name, rate in rows:
        print(f"| {name} | {rate / 1e9:.2f} | {base / rate:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
