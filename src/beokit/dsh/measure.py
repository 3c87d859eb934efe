"""This node's state for its report: /proc (or a load file) and the running dsh jobs.

:class:`LoadMeter` is what the daemon calls each round: it reads /proc (and
``--load-file``) once a period (the kernel's load averages move every 5 s)
and counts the dsh jobs every time, and makes the next
:class:`~beokit.dsh.packet.Report`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time

from beokit.dsh import packet

log = logging.getLogger("beokit.dshd")


def read_small(path: str) -> str:
    """The first 64 KiB of a small text file (/proc, the load file)."""
    with open(path, "rb") as f:  # utf-8 is built in: no codec import after dropping root
        return f.read(65536).decode(errors="replace")


def measure_proc() -> dict:
    """Load averages, CPUs and memory of this machine from /proc."""
    l1, l5, l15 = (float(x) for x in read_small("/proc/loadavg").split()[:3])
    mem = {}
    for line in read_small("/proc/meminfo").splitlines():
        k, _, v = line.partition(":")
        if k in ("MemTotal", "MemAvailable", "MemFree"):
            mem[k] = int(v.split()[0])
    try:
        cpus = len(os.sched_getaffinity(0))
    except OSError:
        cpus = os.cpu_count() or 1
    return {"load1": l1, "load5": l5, "load15": l15, "cpus": cpus,
            "mem_total_kb": mem.get("MemTotal", 0),
            "mem_free_kb": mem.get("MemAvailable", mem.get("MemFree", 0))}  # fmt: skip


def parse_load_file(text: str) -> dict:
    """A simulated load: ``LOAD1 [LOAD5 LOAD15]`` or a JSON object with any of
    load1, load5, load15, cpus, mem_total_kb, mem_free_kb, jobs."""
    text = text.strip()
    if text.startswith("{"):
        d = json.loads(text)
        if not isinstance(d, dict):
            raise ValueError("not an object")
        keys = ("load1", "load5", "load15", "cpus", "mem_total_kb", "mem_free_kb", "jobs")
        out = {k: d[k] for k in keys if k in d}
        for k, v in out.items():
            if not isinstance(v, int | float) or v < 0:
                raise ValueError(f"bad {k} {v!r}")
        return out
    nums = [float(x) for x in text.split()]
    if not 1 <= len(nums) <= 3 or any(not 0 <= x < 1e6 for x in nums):
        raise ValueError(f"bad load {text[:40]!r}")
    l1 = nums[0]
    return {"load1": l1, "load5": nums[1] if len(nums) > 1 else l1,
            "load15": nums[2] if len(nums) > 2 else l1}  # fmt: skip


def count_jobs(jobs_dir: str, own: set[str] | None) -> int:
    """dsh jobs running here: files ``ADDR.PID`` in ``jobs_dir`` whose process lives.

    ``own``: the addresses that mean this node (None: every file counts)."""
    try:
        names = os.listdir(jobs_dir)
    except OSError:
        return 0
    n = 0
    for fn in names:
        addr, _, pid = fn.rpartition(".")
        if not pid.isdigit() or (own is not None and addr not in own):
            continue
        if os.path.exists(f"/proc/{pid}"):
            n += 1
        else:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(jobs_dir, fn))
    return n


class LoadMeter:
    """This node's reports: numbered, dated by the wall clock, one a call."""

    def __init__(self, period: float, jobs_dir: str, load_file: str | None) -> None:
        self.period, self.jobs_dir, self.load_file = period, jobs_dir, load_file
        self.own_addrs: set[str] | None = None  # the job files' addresses that mean here
        self.seq = 0
        self.load_file_error: str | None = None
        self._proc: dict | None = None  # the last /proc (or load file) reading
        self._proc_at = 0.0

    def report(self, name: str, now: float) -> packet.Report:
        """This node's report: /proc (or the load file) read once a period (the
        kernel's load averages move every 5 s), the dsh jobs counted each round."""
        if self._proc is None or now - self._proc_at >= 0.9 * self.period:
            self._proc, self._proc_at = self._read_load(), now
        d = self._proc
        jobs = count_jobs(self.jobs_dir, self.own_addrs)
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        return packet.Report(
            name, self.seq, int(time.time() * 1000),
            float(d["load1"]), float(d["load5"]), float(d["load15"]), int(d["cpus"]),
            int(d.get("jobs", jobs)), int(d["mem_total_kb"]), int(d["mem_free_kb"]),
            int(self.period * 1000),
        )  # fmt: skip

    def _read_load(self) -> dict:
        d = measure_proc()
        if self.load_file:
            try:
                d.update(parse_load_file(read_small(self.load_file)))
                if self.load_file_error:
                    log.info("load file %s readable again", self.load_file)
                self.load_file_error = None
            except (OSError, ValueError) as e:
                if self.load_file_error is None:
                    log.warning("load file %s: %s; using /proc", self.load_file, e)
                self.load_file_error = str(e)
        return d
