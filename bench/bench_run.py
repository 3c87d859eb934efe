#!/usr/bin/env python3
"""Benchmark beo run: sequential vs flat vs k-ary trees (the scaleboot table).

Part 1 uses the exec backend with a simulated per-launch cost
(``--launch-delay``, default 0.1 s) for N = 16, 32, 147 (and 1000 with
``--big``).  Part 2 runs real OpenSSH on loopback (a private sshd on
127.0.0.2-...) and, in the same run, interleaved, clush, pdsh and TakTuk on
the same ssh setup.

    python bench/bench_run.py [--delay 0.1] [--big] [--ssh-hosts 64] [--rounds 2] [--no-ssh]
    python bench/bench_run.py --sizes 1000 --no-ssh       # the issue's 1000-host row
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
        # sshd listens on at most 16 sockets: past that, every address (loopback's
        # whole 127.0.0.0/8 answers; nothing is sent anywhere else)
        ("".join(f"ListenAddress {a}:{port}\n" for a in addrs) if len(addrs) <= 16
         else f"ListenAddress 0.0.0.0:{port}\n")
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
    deadline = time.monotonic() + 60  # a loaded box: an ssh session can take seconds
    why = ""
    while time.monotonic() < deadline and proc.poll() is None:
        cp = subprocess.run(["ssh", *args, "s1", "true"], capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip
        if cp.returncode == 0:
            return proc, args
        why = cp.stderr.strip()[-200:]
        time.sleep(0.2)
    proc.kill()
    print(f"(ssh part skipped: the private sshd does not answer: {why or proc.returncode})")
    return None


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float | str:
    """Wall seconds of ``cmd`` (a float), or why it failed (a string)."""
    t0 = time.monotonic()
    cp = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env,
                        stdin=subprocess.DEVNULL)  # fmt: skip
    wall = time.monotonic() - t0
    if cp.returncode != 0:
        return f"failed ({cp.stderr.strip()[-80:]})"
    return wall


def ssh_launchers(n: int, args: list[str], tmp: Path) -> list[tuple[str, list[str], dict | None]]:
    """(label, argv, env) of every launcher run on the same ``n`` ssh hosts."""
    hosts = f"s[1-{n}]"
    common = ["-R", "ssh", "--ssh-args", " ".join(args), "--listen", "127.0.0.1",
              "--remote-python", sys.executable]  # fmt: skip
    rows: list[tuple[str, list[str], dict | None]] = [
        ("beo run (default: --auto)", [*BEO, *common, hosts, "--", "true"], None),
        ("beo run --flat -k 32", [*BEO, *common, "--flat", "-k", "32", hosts, "--", "true"], None),
        ("beo run --tree -k 4", [*BEO, *common, "--tree", "-k", "4", hosts, "--", "true"], None),
        (WARM, [*BEO, *common, "--ssh-persist", "120", hosts, "--", "true"], None),
    ]
    if shutil.which("clush"):
        rows.append(("clush -b (fanout 64)",
                     ["clush", "-b", "-o", " ".join(args), "-w", hosts, "true"], None))  # fmt: skip
    if shutil.which("pdsh"):
        env = dict(os.environ, PDSH_RCMD_TYPE="ssh", PDSH_SSH_ARGS=f"{args[0]} {args[1]} %h")
        rows.append(("pdsh -R ssh (fanout 32)", ["pdsh", "-w", hosts, "true"], env))
    if shutil.which("taktuk"):
        (tmp / "machines").write_text("".join(f"s{i}\n" for i in range(1, n + 1)))
        rows.append(("taktuk -s (self-propagating tree)",
                     ["taktuk", "-s", "-c", f"ssh {' '.join(args)}", "-f", str(tmp / "machines"),
                      "broadcast", "exec", "[", "true", "]"], None))  # fmt: skip
    return rows


WARM = "beo run --ssh-persist 120 (warm: every host's master from a run before)"


def close_masters(n: int, args: list[str]) -> None:
    """End the ControlMaster connections --ssh-persist left (bounded)."""
    for i in range(1, n + 1):
        subprocess.run(["ssh", *args, "-o", "ControlPath=~/.ssh/beokit-%C", "-O", "exit",
                        f"s{i}"], capture_output=True, timeout=20)  # fmt: skip


def ssh_table(n: int, rounds: int = 2) -> None:
    addrs = [f"127.0.0.{i}" for i in range(2, n + 2)]
    with tempfile.TemporaryDirectory() as tmp:
        started = start_sshd(Path(tmp), addrs)
        if started is None:
            return
        proc, args = started
        load = os.getloadavg()[0]
        try:
            launchers = ssh_launchers(n, args, Path(tmp))
            got: dict[str, list[float | str]] = {label: [] for label, _, _ in launchers}
            warm = next(cmd for label, cmd, _ in launchers if label == WARM)
            timed(warm)  # the masters come up (a cold run of it, not counted)
            for _ in range(rounds):  # interleaved: every launcher sees the same load
                for label, cmd, env in launchers:
                    got[label].append(timed(cmd, env))
        finally:
            close_masters(n, args)
            proc.terminate()
            proc.wait(5)
    print(f"## real OpenSSH on loopback, {n} hosts (127.0.0.2-{n + 1}), command `true`\n")
    print(f"load average {load:.2f} -> {os.getloadavg()[0]:.2f}; {rounds} interleaved rounds, "
          "wall seconds each (best first), and the best against clush's best\n")  # fmt: skip
    clush = [t for t in got.get("clush -b (fanout 64)", []) if isinstance(t, float)]
    print("| launcher | seconds | best / clush's best |\n|---|---|---|")
    for label, times in got.items():
        ok = sorted(t for t in times if isinstance(t, float))
        bad = [t for t in times if isinstance(t, str)]
        cells = ", ".join(f"{t:.2f}" for t in ok) + (f" {bad[0]}" if bad else "")
        ratio = f"{ok[0] / min(clush):.2f}" if ok and clush else "-"
        print(f"| {label} | {cells} | {ratio} |")
    print()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--delay", type=float, default=0.1)
    p.add_argument("--sizes", default="16,32,147")
    p.add_argument("--big", action="store_true", help="also N=1000 (no sequential)")
    p.add_argument("--ssh-hosts", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the ssh part")
    p.add_argument("--no-ssh", action="store_true")
    a = p.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")] + ([1000] if a.big else [])
    print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}\n")
    exec_table(sizes, a.delay, seq_max=200)
    if not a.no_ssh:
        ssh_table(a.ssh_hosts, a.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
