"""What ``beo cast`` shows: the live progress bar and the per-node table."""

from __future__ import annotations

import json
import threading
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.progress import Progress
    from rich.table import Table

    from beokit.cast.verdict import Row

# rich is imported only to draw (~0.1 s of CPU): not for --json, and for the table
# while the stream runs (preload_table), not after it, inside the command's time.


def preload_table() -> None:
    """Import what the table needs, in a thread, while the cast runs."""

    def load() -> None:
        import rich.console  # noqa: F401
        import rich.table  # noqa: F401

    threading.Thread(target=load, name="preload-rich", daemon=True).start()


class LiveProgress:
    """A progress bar at the root (rate, ETA) and, on request, one per node."""

    def __init__(self, total: int | None, hosts: list[str], per_node: bool,
                 enabled: bool) -> None:  # fmt: skip
        self.enabled = enabled
        self.total = total
        self.bar: Progress | None = None
        self.main: Any = None
        self.nodes: dict[str, Any] = {}
        self.stage_text = ""
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                            TransferSpeedColumn(), TimeRemainingColumn(),
                            console=Console(stderr=True), transient=True)  # fmt: skip
        self.main = self.bar.add_task("starting", total=total)
        if per_node:
            for h in hosts:
                self.nodes[h] = self.bar.add_task(f"  {h}", total=total)
        self.bar.start()

    def stage(self, text: str) -> None:
        self.stage_text = text
        if self.bar is not None:
            self.bar.update(self.main, description=text)

    def update(self, sent: int, per_node: dict[str, int]) -> None:
        if self.bar is None:
            return
        self.bar.update(self.main, completed=sent, description="sent")
        for h, task in self.nodes.items():
            if h in per_node:
                self.bar.update(task, completed=per_node[h])

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def table(rows: list[Row], title: str) -> Table:
    from rich.table import Table

    t = Table(title=title)
    failed = any(not r.ok for r in rows)
    retried = any(r.attempt > 1 for r in rows)
    cols = ["node", "chain", "bytes", "digest", "seconds", "MB/s", "status"]
    if retried:
        cols.insert(-1, "try")
    if failed:
        cols += ["DEST", "detail"]
    for c in cols:
        t.add_column(c, justify="right" if c in ("bytes", "seconds", "MB/s", "try") else "left",
                     overflow="fold")  # fmt: skip
    for r in rows:
        status = "[green]OK[/]" if r.ok else f"[red]{r.status}[/]"
        digest = {"ok": "[green]ok[/]", "MISMATCH": "[red]MISMATCH[/]"}.get(r.digest, r.digest)
        cells = [r.host, r.chain, f"{r.bytes:,}", digest, f"{r.seconds:.2f}",
                 f"{r.rate:.1f}" if r.seconds else "-", status]  # fmt: skip
        if retried:
            cells.insert(-1, str(r.attempt))
        if failed:
            cells += [r.dest or "-", r.detail]
        t.add_row(*cells)
    return t


def print_table(rows: list[Row], title: str, out: IO[str]) -> None:
    from rich.console import Console

    console = Console(file=out, width=None if out.isatty() else 160)
    console.print(table(rows, title))


def print_json(doc: dict[str, Any], out: IO[str]) -> None:
    json.dump(doc, out, indent=1)
    out.write("\n")
