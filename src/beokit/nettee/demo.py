"""``beo demo``: a real distribution through a local nettee chain (driver + display)."""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from beokit.nettee.localchain import start_chain


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


def run_demo(nodes: int, size: int, keep: str | None, console: Console) -> int:
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="beokit-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    src = work / "image.bin"
    console.print(f"[bold]beokit demo[/]: {size / 1e6:.0f} MB through a chain of {nodes} "
                  f"receivers on 127.0.0.2-{nodes + 1} (authenticated, zero-copy)")  # fmt: skip
    digest = make_source(src, size)
    t0 = time.monotonic()
    chain = start_chain(src, nodes, work, secret=secrets.token_hex(16))
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), console=console, transient=True) as bar:  # fmt: skip
        task = bar.add_task(f"tip {chain.addrs[-1]}", total=size)
        while chain.root.poll() is None and time.monotonic() - t0 < 300:
            try:
                bar.update(task, completed=os.path.getsize(chain.outputs[-1]))
            except OSError:
                pass
            time.sleep(0.05)
    codes = chain.wait(timeout=60)
    elapsed = time.monotonic() - t0
    report = chain.report() or {"nodes": []}
    by_name = {n["name"]: n for n in report.get("nodes", [])}
    table = Table(title=f"per-node result ({elapsed:.2f} s end to end)")
    for col in ("node", "bytes", "sha256", "seconds", "MB/s", "status"):
        table.add_column(col, justify="right" if col in ("bytes", "seconds", "MB/s") else "left")
    ok_all = codes[0] == 0
    for addr, out, code in zip(chain.addrs, chain.outputs, codes[1:], strict=True):
        n = by_name.get(addr, {})
        try:
            got = sha256_file(out)
            nbytes = out.stat().st_size
        except OSError:
            got, nbytes = "missing", 0
        same = got == digest
        ok = same and code == 0 and not n.get("codes")
        ok_all &= ok
        secs = float(n.get("seconds", 0.0))
        table.add_row(addr, f"{nbytes:,}", "identical" if same else "DIFFERENT", f"{secs:.2f}",
                      f"{nbytes / secs / 1e6:.0f}" if secs else "-",
                      "[green]OK[/]" if ok else f"[red]{' '.join(n.get('codes', [])) or f'exit {code}'}[/]")  # fmt: skip
    console.print(table)
    console.print("[green]all nodes byte-identical[/]" if ok_all else "[red]distribution failed[/]")
    if not keep:
        for p in work.iterdir():
            p.unlink()
        work.rmdir()
    else:
        console.print(f"files kept in {work}")
    return 0 if ok_all else 1
