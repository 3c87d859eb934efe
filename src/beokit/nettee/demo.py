"""``beo demo``: beo cast of a generated image through a local chain, checked on its own."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from beokit.proc import describe_exit


def make_source(path: Path, size: int) -> str:
    """Write ``size`` pseudo-random bytes (an embedded default image); return its sha256."""
    h = hashlib.sha256()
    block = hashlib.sha256(b"beokit demo").digest() * 2048  # 64 KiB seed block
    counter = 0
    with open(path, "wb") as fh:
        left = size
        while left > 0:
            chunk = bytes(b ^ (counter & 0xFF) for b in block[:256]) + block[256 : min(left, len(block))]
            chunk = chunk[: min(left, len(block))]
            fh.write(chunk)
            h.update(chunk)
            left -= len(chunk)
            counter += 1
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def run_demo(nodes: int, size: int, keep: str | None, console: Console,
             beo: Callable[[list[str]], int]) -> int:  # fmt: skip
    """``beo cast -R exec`` of a generated image to ``nodes`` receivers on loopback.

    The whole of beo cast runs for real (``beo``: the umbrella command's
    entry point, given by :mod:`beokit.cli`): a receiver per node on
    127.0.0.2.., a fresh secret over each receiver's stdin, one nettee chain
    with -heal and -digest, fsync, the per-node table.  The demo then checks
    every copy against the image with sha256 on its own, independently of
    beo cast.
    """
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="beokit-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    src = work / "image.bin"
    hosts = f"127.0.0.[2-{nodes + 1}]"
    console.print(f"[bold]beokit demo[/]: {size / 1e6:.0f} MB to {nodes} receivers on {hosts}: "
                  f"beo cast -R exec {src} '{hosts}' --to '{work}/{{host}}.out'")  # fmt: skip
    digest = make_source(src, size)
    status = beo(["cast", "-R", "exec", str(src), hosts, "--to", f"{work}/{{host}}.out"])
    outputs = [work / f"127.0.0.{i}.out" for i in range(2, nodes + 2)]
    same = [p.is_file() and sha256_file(p) == digest for p in outputs]
    if status == 0 and all(same):
        console.print(f"[green]independent check: all {nodes} copies are byte-identical "
                      f"to the image (sha256 {digest[:16]}...)[/]")  # fmt: skip
    else:
        bad = [p.name for p, ok in zip(outputs, same, strict=True) if not ok]
        console.print(f"[red]distribution failed[/] ({describe_exit(status, 'beo cast')}; "
                      f"differing or missing: {', '.join(bad) or 'none'})")  # fmt: skip
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        console.print(f"files kept in {work}")
    return 0 if status == 0 and all(same) else 1
