#!/usr/bin/env python3
"""Benchmark beo run: sequential vs flat vs k-ary trees (the scaleboot table).

Part 1 uses the exec backend with a simulated per-launch cost
(``--launch-delay``, default 0.1 s) for N = 16, 32, 147 (and 1000 with
``--big``).  Part 2 runs real OpenSSH on loopback (a private sshd on
127.0.0.2-...) and, in the same run, pdsh and clush on the same ssh setup.

    python bench/bench_run.py [--delay 0.1] [--big] [--ssh-hosts 8] [--no-ssh]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from beokit.launch.plan import depth

BEO = [sys.executable, "-m", "beokit.cli", "run"]
TREES = [("binary", 2), ("ternary", 3), ("quad", 4)]


STARTUP: list[float] = []  # wall time minus launch time: the root's own start-up


def beo(args: list[str], timeout: float = 600) -> float:
    """Seconds from the root's first launch to the last result (its JSON "elapsed")."""
    t0 = time.monotonic()
    cp = subprocess.run([*BEO, "--json", *args], capture_output=True, text=True,
                        timeout=timeout, stdin=subprocess.DEVNULL)  # fmt: skip
    wall = time.monotonic() - t0
    if cp.returncode != 0:
        raise RuntimeError(f"beo run {' '.join(args)} failed: {cp.stderr[-500:]}")
    doc = json.loads(cp.stdout)
    assert doc["failed"] == 0
    STARTUP.append(wall - doc["elapsed"])
    return float(doc["elapsed"])


def exec_table(sizes: list[int], delay: float, seq_max: int) -> None:
    print(f"## exec backend, {delay:g} s per launch (seconds from first launch to last "
          "result)\n")  # fmt: skip
    cols = ["sequential", "flat k=32"] + [f"{n} k={k}" for n, k in TREES]
    print("| N | " + " | ".join(cols) + " | depth x delay (k=2/3/4) | tree / depth x delay "
          "(k=2/3/4) | sequential / best tree |")  # fmt: skip
    print("|---" * (len(cols) + 4) + "|")
    for n in sizes:
        hosts = f"n[1-{n}]"
        base = ["-R", "exec", "--launch-delay", str(delay)]
        seq = beo([*base, "--sequential", hosts, "--", "true"]) if n <= seq_max else None
        flat = beo([*base, "--flat", "-k", "32", hosts, "--", "true"])
        trees = [beo([*base, "--tree", "-k", str(k), hosts, "--", "true"]) for _, k in TREES]
        theory = [depth("tree", n, k) * delay for _, k in TREES]
        best = min(trees)
        cells = [f"{seq:.2f}" if seq else "-", f"{flat:.2f}"] + [f"{t:.2f}" for t in trees]
        print(f"| {n} | " + " | ".join(cells)
              + f" | {'/'.join(f'{t:.1f}' for t in theory)} | "
              + "/".join(f"{t / th:.2f}" for t, th in zip(trees, theory, strict=True))
              + f" | {f'{seq / best:.1f}x' if seq else '-'} |", flush=True)  # fmt: skip
    print(f"\n(the root's own start-up, not counted above: {min(STARTUP):.2f}-"
          f"{max(STARTUP):.2f} s per run)\n")  # fmt: skip


def start_sshd(d: Path, addrs: list[str]) -> tuple[subprocess.Popen, list[str]] | None:
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(sshd) or os.geteuid() != 0:
        print("(ssh part skipped: needs root and openssh-server)")
        return None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
                       check=True)  # fmt: skip
    (d / "authorized_keys").write_text((d / "user_key.pub").read_text())
    (d / "sshd_config").write_text(
        "".join(f"ListenAddress {a}:{port}\n" for a in addrs)
        + f"HostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\nPidFile {d}/pid\n"
        "StrictModes no\nUsePAM no\nPasswordAuthentication no\nMaxStartups 200\n"
        "LogLevel ERROR\n")  # fmt: skip
    (d / "ssh_config").write_text(
        "".join(f"Host s{i}\n  HostName {a}\n" for i, a in enumerate(addrs, 1))
        + f"Host *\n  Port {port}\n  User root\n  IdentityFile {d}/user_key\n"
        "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  BatchMode yes\n"
        "  LogLevel ERROR\n")  # fmt: skip
    os.makedirs("/run/sshd", exist_ok=True)
    proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(d / "sshd_config")],
                            stderr=subprocess.DEVNULL)  # fmt: skip
    args = ["-F", str(d / "ssh_config")]
    for _ in range(50):
        if subprocess.run(["ssh", *args, "s1", "true"], capture_output=True).returncode == 0:
            return proc, args
        time.sleep(0.1)
    proc.kill()
    print("(ssh part skipped: the private sshd does not answer)")
    return None


def timed(cmd: list[str], env: dict[str, str] | None = None) -> str:
    t0 = time.monotonic()
    cp = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env,
                        stdin=subprocess.DEVNULL)  # fmt: skip
    wall = time.monotonic() - t0
    if cp.returncode != 0:
        return f"failed ({cp.stderr.strip()[-80:]})"
    return f"{wall:.2f}"


def ssh_table(n: int) -> None:
    addrs = [f"127.0.0.{i}" for i in range(2, n + 2)]
    with tempfile.TemporaryDirectory() as tmp:
        started = start_sshd(Path(tmp), addrs)
        if started is None:
            return
        proc, args = started
        try:
            hosts = f"s[1-{n}]"
            common = ["-R", "ssh", "--ssh-args", " ".join(args), "--listen", "127.0.0.1"]
            rows: list[tuple[str, str]] = []
            for label, extra in (("beo run tree k=2 (beokit installed)",
                                  ["--remote-python", sys.executable, "-k", "2"]),
                                 ("beo run tree k=2 (self-shipped zipapp)",
                                  ["--remote-python", "python3 -I -S", "-k", "2"]),
                                 ("beo run --flat -k 32", ["--remote-python", sys.executable,
                                                           "--flat", "-k", "32"])):  # fmt: skip
                rows.append((label, timed([*BEO, *common, *extra, hosts, "--", "true"])))
            if shutil.which("pdsh"):
                env = dict(os.environ, PDSH_RCMD_TYPE="ssh", PDSH_SSH_ARGS=f"{args[0]} {args[1]} %h")
                rows.append(("pdsh -R ssh (fanout 32)", timed(["pdsh", "-w", hosts, "true"], env)))
            else:
                rows.append(("pdsh", "skipped: not installed (apt-get install pdsh)"))
            if shutil.which("clush"):
                rows.append(("clush -b (fanout 64)", timed(
                    ["clush", "-b", "-o", " ".join(args), "-w", hosts, "true"])))
            else:
                rows.append(("clush", "skipped: not installed (apt-get install clustershell)"))
        finally:
            proc.terminate()
            proc.wait(5)
    print(f"## real OpenSSH on loopback, {n} hosts (127.0.0.2-{n + 1}), command `true`\n")
    print("| launcher | seconds |\n|---|---|")
    for label, t in rows:
        print(f"| {label} | {t} |")
    print()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--delay", type=float, default=0.1)
    p.add_argument("--sizes", default="16,32,147")
    p.add_argument("--big", action="store_true", help="also N=1000 (no sequential)")
    p.add_argument("--ssh-hosts", type=int, default=8)
    p.add_argument("--no-ssh", action="store_true")
    a = p.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")] + ([1000] if a.big else [])
    print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}\n")
    exec_table(sizes, a.delay, seq_max=200)
    if not a.no_ssh:
        ssh_table(a.ssh_hosts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
