"""beo run with real processes: the exec backend, and OpenSSH against a private sshd."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sshd_fixture import SSH_HOSTS, sshd  # noqa: F401

BEO = [sys.executable, "-m", "beokit.cli"]
FAKE = ("sh -c 'case $0 in down*) echo \"connect to host $0: Connection refused\" >&2; "
        "exit 255;; hang*) exec sleep 60;; esac; exec sh -c \"$1\"' {host} {cmd}")


def beo_run(*args: str, timeout: float = 40) -> subprocess.CompletedProcess:
    return subprocess.run([*BEO, "run", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)  # fmt: skip


def as_json(cp: subprocess.CompletedProcess) -> dict:
    return json.loads(cp.stdout)


# ------------------------------------------------------------------ exec


def test_tree_runs_everywhere_and_reports_json() -> None:
    cp = beo_run("-R", "exec", "-k", "3", "--json", "n[1-20]", "--", "echo hi from $BEO_HOST")
    assert cp.returncode == 0, cp.stderr
    doc = as_json(cp)
    assert doc["hosts"] == 20 and doc["failed"] == 0 and doc["depth"] == 3
    assert {h: r["stdout"] for h, r in doc["results"].items()} == {
        f"n{i}": f"hi from n{i}\n" for i in range(1, 21)}
    assert all(r["rc"] == 0 and r["error"] is None for r in doc["results"].values())


def test_gathering_and_exit_codes() -> None:
    cmd = "case $BEO_HOST in n3|n7) echo other; echo oops >&2; exit 3;; *) echo same;; esac"
    cp = beo_run("-R", "exec", "-b", "-k", "2", "n[1-9]", "--", cmd)
    assert cp.returncode == 1
    assert cp.stdout == ("---------------\nn[1-2,4-6,8-9] (7)\n---------------\nsame\n"
                         "---------------\nn[3,7] (2)\n---------------\nother\n")  # fmt: skip
    assert "n3: oops" in cp.stderr and "n[3,7]: exited with exit code 3" in cp.stderr
    assert "9 hosts, 7 ok, 2 failed" in cp.stderr


def test_not_gathered_output_is_prefixed_per_host() -> None:
    cp = beo_run("-R", "exec", "n[1-3]", "--", "printf 'a\\nb\\n'")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.splitlines() == ["n1: a", "n1: b", "n2: a", "n2: b", "n3: a", "n3: b"]


@pytest.mark.parametrize("mode", ["--flat", "--sequential", "--ring", "--tree"])
def test_every_mode_reaches_every_host(mode: str) -> None:
    cp = beo_run("-R", "exec", mode, "--json", "n[1-7]", "--", "echo $BEO_HOST")
    assert cp.returncode == 0, cp.stderr
    assert sorted(r["stdout"] for r in as_json(cp)["results"].values()) == sorted(
        f"n{i}\n" for i in range(1, 8))


def test_down_and_hanging_heads_are_reparented_and_named() -> None:
    # k=2: down1 and hang1 head the two subtrees; their hosts must still run.
    hosts = "down1,n[1-5],hang1,n[6-9]"
    t0 = time.monotonic()
    cp = beo_run("-R", FAKE, "--listen", "127.0.0.1", "--connect-timeout", "2", "-k", "2",
                 "--json", hosts, "--", "echo ok")  # fmt: skip
    elapsed = time.monotonic() - t0
    assert cp.returncode == 1
    res = as_json(cp)["results"]
    assert "Connection refused" in res["down1"]["error"]
    assert res["hang1"]["error"] == "no contact within 2 s"
    assert {h for h, r in res.items() if r["stdout"] == "ok\n"} == {f"n{i}" for i in range(1, 10)}
    assert elapsed < 15


def test_stealing_launches_a_late_heads_share_beside_it(tmp_path: Path) -> None:
    # busy tree, k=2, 12 hosts: the root's first group is slow1 + n1..n3.  slow1's
    # launch does not come up until n1..n3 have run their commands, which only
    # happens if the root takes slow1's share back and launches it itself (stealing);
    # without, slow1 gives up after 15 s and fails.  Not timed: the order proves it.
    from beokit.launch import plan

    hosts = ["slow1"] + [f"n{i}" for i in range(1, 12)]
    assert plan.busy_groups(hosts, 2)[0][0] == ["slow1", "n1", "n2", "n3"]
    (tmp_path / "hosts").write_text("slow1\nn[1-11]\n")
    wait = " && ".join(f"[ -e {tmp_path}/ran.n{i} ]" for i in (1, 2, 3))
    template = (f"sh -c 'case $0 in slow*) i=0; until {wait}; do i=$((i+1)); "
                f"[ $i -gt 300 ] && exit 1; sleep 0.05; done;; esac; exec sh -c \"$1\"' "
                "{host} {cmd}")  # fmt: skip
    cp = beo_run("-R", template, "--listen", "127.0.0.1", "--remote-python", sys.executable,
                 "--connect-timeout", "30", "-k", "2", "--json", "-f", str(tmp_path / "hosts"),
                 "--", f"touch {tmp_path}/ran.$BEO_HOST", timeout=60)  # fmt: skip
    assert cp.returncode == 0, cp.stderr
    doc = as_json(cp)
    assert doc["failed"] == 0 and doc["mode"] == "tree"
    assert sorted(p.name for p in tmp_path.glob("ran.*")) == sorted(f"ran.{h}" for h in hosts)


@pytest.mark.parametrize("mode", ["--ring", "--flat"])
def test_down_and_hanging_hosts_in_other_modes(mode: str) -> None:
    cp = beo_run("-R", FAKE, "--listen", "127.0.0.1", "--connect-timeout", "2", mode, "-b",
                 "n[1-3],down1,n[4-5],hang1,n6", "--", "echo ok")  # fmt: skip
    assert cp.returncode == 1
    assert cp.stdout == "---------------\nn[1-6] (6)\n---------------\nok\n"
    assert "down1: launch failed (exit 255)" in cp.stderr
    assert "hang1: no contact within 2 s" in cp.stderr


def test_leaves_run_without_agent_and_report_failures() -> None:
    # k=2, pack: [n1 n2 n3] [n4 hang1 down1]: n2, n3, hang1, down1 are leaves, run
    # through the backend directly (marker line, then the command)
    cmd = "echo out $BEO_HOST; echo err $BEO_HOST >&2; [ $BEO_HOST = n3 ] && exit 4; true"
    t0 = time.monotonic()
    cp = beo_run("-R", FAKE, "--listen", "127.0.0.1", "--connect-timeout", "2", "-k", "2",
                 "--json", "n[1-4],hang1,down1", "--", cmd)  # fmt: skip
    assert time.monotonic() - t0 < 15
    assert cp.returncode == 1
    res = as_json(cp)["results"]
    for i in range(1, 5):
        assert res[f"n{i}"]["stdout"] == f"out n{i}\n" and res[f"n{i}"]["stderr"] == f"err n{i}\n"
        assert res[f"n{i}"]["rc"] == (4 if i == 3 else 0) and res[f"n{i}"]["error"] is None
    assert res["hang1"]["error"] == "no contact within 2 s"
    assert res["down1"]["error"].startswith("launch failed (exit 255): connect to host down1")


def test_leaf_timeout_and_leaf_agents_option() -> None:
    cmd = "[ $BEO_HOST = n4 ] && sleep 30; echo done $BEO_HOST"
    for extra in ([], ["--leaf-agents"]):
        cp = beo_run("-R", FAKE, "--listen", "127.0.0.1", "--timeout", "1", "-k", "2", *extra,
                     "--json", "n[1-5]", "--", cmd)  # fmt: skip
        assert cp.returncode == 1, extra
        res = as_json(cp)["results"]
        assert res["n4"]["error"] == "command timed out after 1 s" and res["n4"]["rc"] is None
        assert all(res[f"n{i}"]["stdout"] == f"done n{i}\n" for i in (1, 2, 3, 5)), extra


@pytest.mark.parametrize("backend", ["exec", FAKE])
def test_barrier_starts_every_command_at_once(backend: str) -> None:
    # k=2, 0.3 s per launch: 3 launch steps, hosts come up over >= 0.6 s; with the
    # barrier every command starts after the last one is up (hang1 given up after 1 s)
    cmd = "date +%s.%N"
    cp = beo_run("-R", backend, "--listen", "127.0.0.1", "--connect-timeout", "1",
                 "--launch-delay", "0.3", "--barrier", "-k", "2", "--json",
                 "n[1-5],hang1,n[6-9]", "--", cmd)  # fmt: skip
    assert cp.returncode == (1 if backend == FAKE else 0), cp.stderr
    res = as_json(cp)["results"]
    starts = [float(r["stdout"]) for h, r in res.items() if h != "hang1"]
    assert len(starts) == 9 and all(res[f"n{i}"]["rc"] == 0 for i in range(1, 10))
    assert max(starts) - min(starts) < 0.25, starts


def test_agent_killed_mid_run_never_hangs() -> None:
    # n1 heads a subtree and dies (SIGKILL from its own command) as soon as it runs.
    cmd = "if [ $BEO_HOST = n1 ]; then kill -9 $PPID; sleep 5; fi; echo ok"
    t0 = time.monotonic()
    cp = beo_run("-R", "exec", "--launch-delay", "0.3", "-k", "2", "--json", "n[1-9]", "--", cmd)
    assert time.monotonic() - t0 < 20
    assert cp.returncode == 1
    res = as_json(cp)["results"]
    assert set(res) == {f"n{i}" for i in range(1, 10)}
    assert res["n1"]["error"] and "n1" in res["n1"]["error"]
    assert all(r["stdout"] == "ok\n" for h, r in res.items() if r["error"] is None)
    assert res["n9"]["stdout"] == "ok\n"  # other subtree unaffected


def test_command_timeout() -> None:
    cp = beo_run("-R", "exec", "--timeout", "1", "--json", "n[1-2]", "--",
                 "[ $BEO_HOST = n2 ] && sleep 30; echo done")  # fmt: skip
    assert cp.returncode == 1
    res = as_json(cp)["results"]
    assert res["n1"]["rc"] == 0 and res["n2"]["error"] == "command timed out after 1 s"


def _running(tag: str) -> list[int]:
    """Pids of the processes ``sleep TAG``."""
    out = []
    for entry in os.scandir("/proc"):
        try:
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
            if entry.name.isdigit() and argv[:2] == [b"sleep", tag.encode()]:
                out.append(int(entry.name))
        except OSError:
            continue
    return out


@pytest.mark.parametrize("sig, extra", [(signal.SIGTERM, []), (signal.SIGINT, ["--leaf-agents"]),
                                        (signal.SIGTERM, ["--json", "--leaf-agents"])],
                         ids=["TERM", "INT-agents", "TERM-json"])  # fmt: skip
def test_stopped_run_kills_every_command_and_names_the_unfinished(
        tmp_path: Path, sig: int, extra: list[str]) -> None:  # fmt: skip
    """SIGTERM (as SIGINT): every command of the tree is killed, under agents too,
    the hosts that had not finished are named, exit status 128 + the signal."""
    tag = f"{300 + random.random():.9f}"  # sleep's argument: our commands, no one else's
    cmd = f"touch {tmp_path}/$BEO_HOST; exec sleep {tag}"
    p = subprocess.Popen([*BEO, "run", "-R", "exec", "-k", "2", *extra, "n[1-6]", "--", cmd],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         stdin=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        # each command touches its file, then execs sleep: wait for the six sleeps
        while len(_running(tag)) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(list(tmp_path.iterdir())) == 6
        assert len(_running(tag)) == 6
        p.send_signal(sig)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    name = signal.Signals(sig).name
    assert p.returncode == 128 + sig, err
    assert f"beo run: interrupted by {name}: n[1-6] had not finished (commands killed)" in err
    assert "Traceback" not in err
    if "--json" in extra:
        doc = json.loads(out)
        assert doc["interrupted"] == name and doc["failed"] == 6
        assert doc["results"]["n4"]["error"] == f"not finished: beo run was stopped by {name}"
    else:
        assert f"n[1-6]: not finished: beo run was stopped by {name}" in err
    deadline = time.monotonic() + 10  # SIGKILLed already; gone once reaped
    while _running(tag) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _running(tag) == []


def test_tree_is_faster_than_sequential_with_launch_cost() -> None:
    cp = beo_run("-R", "exec", "--launch-delay", "0.3", "-k", "3", "--json", "n[1-12]", "--",
                 "true")  # fmt: skip
    assert cp.returncode == 0, cp.stderr
    doc = as_json(cp)
    assert doc["depth"] == 2
    assert doc["elapsed"] < 0.5 * 12 * 0.3  # sequential would take 3.6 s at least


def test_dry_run_prints_the_plan_and_the_models_prediction(tmp_path: Path) -> None:
    from beokit.launch import cli, plan
    from beokit.launch.backends import make_backend
    from beokit.sim.predict import predict_run

    marker = tmp_path / "ran"
    cp = beo_run("-R", "exec", "--launch-delay", "0.1", "-k", "4", "--dry-run", "n[1-147]",
                 "--", f"touch {marker}")  # fmt: skip
    assert cp.returncode == 0, cp.stderr
    assert not marker.exists()  # nothing was launched
    out = cp.stdout
    assert "147 hosts, tree, k=4, 4 launch steps, -R exec" in out
    assert ("root launches 16 groups, 4 at a time, of 28, 28, 28, 27, 6, 6, 6, 6, 2, 2, 2, 2, "
            "1, 1, 1, 1 hosts (head + its share); 20 agents, 127 leaves") in out  # fmt: skip
    hosts = [f"n{i}" for i in range(1, 148)]
    expected = predict_run(147, 4, 0.1, steal=True, shared_cores=float(os.cpu_count() or 1))
    assert f"predicted: {expected.explain()}" in out
    # ssh: a cluster, every launch an ssh session; flat: the root's window
    text = cli.dry_run("flat", hosts, 32, plan.root_plan("flat", hosts, 32), make_backend("ssh"))
    assert "every host itself, 32 at a time" in text
    assert predict_run(147, 32, None, mode="flat", steal=True).explain() in text
    text = cli.dry_run("tree", hosts * 30, 8, plan.root_plan("tree", hosts * 30, 8),
                       make_backend("exec"))  # fmt: skip
    assert "predicted: not here" in text  # too many processes for the shared-core model


@pytest.mark.parametrize("args, message", [
    (["-R", "bogus", "n1", "--", "true"], "bad -R"),
    (["-R", "exec", "n1"], "no command"),
    (["-R", "exec", "n[1-", "--", "true"], "bad node set"),
    (["-R", "exec", "-k", "0", "n1", "--", "true"], "bad fanout"),
    (["-R", "exec", "--", "true"], "no hosts"),
    (["-R", "exec", "--timeout", "nan", "n1", "--", "true"], "bad timeout 'nan'"),
    (["-R", "exec", "--launch-delay", "-1", "n1", "--", "true"], "bad delay '-1'"),
    (["-R", "exec", "--connect-timeout", "inf", "n1", "--", "true"], "bad timeout 'inf'"),
    (["-R", "exec", "--listen", "999.1.1.1", "n1", "--", "true"], "bad address '999.1.1.1'"),
])  # fmt: skip
def test_usage_errors(args: list[str], message: str) -> None:
    cp = beo_run(*args)
    assert cp.returncode == 2 and message in cp.stderr and cp.stdout == ""


def test_hostfile(tmp_path: Path) -> None:
    f = tmp_path / "hosts"
    f.write_text("n1\nn[2-3]  # comment\n\nn4\n")
    cp = beo_run("-R", "exec", "-f", str(f), "--json", "--", "echo x")
    assert cp.returncode == 0 and len(as_json(cp)["results"]) == 4


# ----------------------------------------------------------------- --input


def _argv_of_every_process() -> list[bytes]:
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    out.append(fh.read())
            except OSError:
                pass
    return out


@pytest.mark.parametrize("extra", [[], ["--leaf-agents"], ["--barrier"], ["--flat"]])
def test_input_reaches_every_command_and_never_argv(tmp_path: Path, extra: list[str]) -> None:
    # 200 KiB: more than a pipe holds, read late by the command (after a sleep), through
    # agents (k=2, 9 hosts: depth 3) and leaves
    secret = os.urandom(16).hex()
    data = (secret + "\n").encode() + os.urandom(200 << 10)
    (tmp_path / "in").write_bytes(data)
    want = __import__("hashlib").sha256(data).hexdigest()
    proc = subprocess.Popen([*BEO, "run", "-R", "exec", "-k", "2", "--json", "--input",
                             str(tmp_path / "in"), *extra, "n[1-9]", "--",
                             "sleep 0.5; sha256sum | cut -d' ' -f1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(0.4)
    seen = [a for a in _argv_of_every_process() if secret.encode() in a]
    out, err = proc.communicate(timeout=40)
    assert seen == []
    assert proc.returncode == 0, err
    res = json.loads(out)["results"]
    assert {h: r["stdout"] for h, r in res.items()} == {f"n{i}": want + "\n" for i in range(1, 10)}


def test_input_from_stdin_and_limits(tmp_path: Path) -> None:
    cp = subprocess.run([*BEO, "run", "-R", "exec", "-b", "--input", "-", "n[1-3]", "--", "cat"],
                        input="hello\n", capture_output=True, text=True, timeout=30)  # fmt: skip
    assert cp.returncode == 0 and cp.stdout.endswith("\nhello\n"), cp.stderr
    big = tmp_path / "big"
    big.write_bytes(b"x" * ((256 << 10) + 1))
    cp = beo_run("-R", "exec", "--input", str(big), "n1", "--", "cat")
    assert cp.returncode == 2
    assert cp.stderr.strip() == f"beo run: --input {big} is larger than 256 KiB"
    cp = beo_run("-R", "exec", "--input", str(tmp_path / "none"), "n1", "--", "cat")
    assert cp.returncode == 2 and "cannot read --input" in cp.stderr and cp.stdout == ""


# ------------------------------------------------------------------- ssh


def test_ssh_tree_with_installed_beokit(sshd: list[str]) -> None:  # noqa: F811
    cp = beo_run("-R", "ssh", "--ssh-args", " ".join(sshd), "--listen", "127.0.0.1",
                 "--remote-python", sys.executable, "-k", "2", "--json", "n[1-4]", "--",
                 "echo $BEO_HOST; echo $SSH_CONNECTION | cut -d' ' -f3")  # fmt: skip
    assert cp.returncode == 0, cp.stderr
    res = as_json(cp)["results"]
    # every host ran over its own sshd address: n1 on 127.0.0.2, ...
    assert {h: r["stdout"] for h, r in res.items()} == {
        h: f"{h}\n{a}\n" for h, a in SSH_HOSTS.items()}


def test_ssh_persist_reuses_one_master_connection_per_host(sshd: list[str]) -> None:  # noqa: F811
    from beokit.launch.backends import make_backend

    argv = make_backend("ssh", persist=30).argv("n1", "true")
    assert argv[argv.index("-o", 4):][:6] == ["-o", "ControlMaster=auto", "-o",
                                               "ControlPath=~/.ssh/beokit-%C", "-o",
                                               "ControlPersist=30"]  # fmt: skip
    assert "ControlMaster=auto" not in make_backend("ssh").argv("n1", "true")
    run = ["-R", "ssh", "--ssh-args", " ".join(sshd), "--listen", "127.0.0.1", "--ssh-persist",
           "20", "--flat", "--json", "n[1-2]", "--", "echo $BEO_HOST"]  # fmt: skip
    try:
        for _ in range(2):  # the second run goes through the first one's masters
            cp = beo_run(*run)
            assert cp.returncode == 0, cp.stderr
            res = as_json(cp)["results"]
            assert {h: r["stdout"] for h, r in res.items()} == {"n1": "n1\n", "n2": "n2\n"}
            for host in ("n1", "n2"):
                check = subprocess.run(["ssh", *sshd, "-o", "ControlPath=~/.ssh/beokit-%C", "-O",
                                        "check", host], capture_output=True, text=True,
                                       timeout=20)  # fmt: skip
                assert check.returncode == 0, check.stderr  # "Master running"
    finally:
        for host in ("n1", "n2"):
            subprocess.run(["ssh", *sshd, "-o", "ControlPath=~/.ssh/beokit-%C", "-O", "exit",
                            host], capture_output=True, timeout=20)  # fmt: skip


def test_ssh_input_through_the_tree(sshd: list[str], tmp_path: Path) -> None:  # noqa: F811
    (tmp_path / "in").write_text("token-over-ssh\n")
    cp = beo_run("-R", "ssh", "--ssh-args", " ".join(sshd), "--listen", "127.0.0.1",
                 "--remote-python", sys.executable, "-k", "2", "--json", "--input",
                 str(tmp_path / "in"), "n[1-4]", "--", "cat")  # fmt: skip
    assert cp.returncode == 0, cp.stderr
    res = as_json(cp)["results"]
    assert {h: r["stdout"] for h, r in res.items()} == {h: "token-over-ssh\n" for h in SSH_HOSTS}


def test_ssh_self_ships_where_beokit_is_missing(sshd: list[str]) -> None:  # noqa: F811
    # "python3 -I -S": a clean python with no site-packages, so no beokit there
    probe = subprocess.run(["ssh", *sshd, "n1", "python3 -I -S -c 'import beokit'"],
                           capture_output=True, timeout=20)  # fmt: skip
    assert probe.returncode != 0, "beokit importable by the clean remote python?"
    cp = beo_run("-R", "ssh", "--ssh-args", " ".join(sshd), "--listen", "127.0.0.1",
                 "--remote-python", "python3 -I -S", "-k", "2", "-b", "n[1-4],down1", "--",
                 "python3 -I -S -c 'import sys; print(sys.flags.isolated)'")  # fmt: skip
    assert cp.returncode == 1  # down1
    assert cp.stdout == "---------------\nn[1-4] (4)\n---------------\n1\n", cp.stderr
    assert "down1: launch failed (exit 255)" in cp.stderr
    assert "5 hosts, 4 ok, 1 failed" in cp.stderr


def test_an_agent_that_cannot_listen_names_the_reason_for_its_share() -> None:
    """Its children were never launched: each says why (not 'lost: connection closed')."""
    from beokit.launch.agent import Agent
    from beokit.launch.backends import make_backend

    got: list[dict] = []
    cfg = {"command": "true", "fanout": 2, "connect_timeout": 2,
           "backend": make_backend("exec").spec()}  # fmt: skip
    Agent(None, [["a", "b"], ["c"]], 2, cfg, got.append, "192.0.2.7", "192.0.2.7").run()
    errors = {m["h"]: m["error"] for m in got if m["t"] == "res"}
    assert set(errors) == {"a", "b", "c"}
    assert all(e.startswith("not launched: cannot listen here on 192.0.2.7 for the launch "
                            "tree: Cannot assign requested address") for e in errors.values())


def test_netns_backend_spec() -> None:
    """-R netns / netns:PATTERN: the namespace of each host, the argv of ``ip netns
    exec`` where no agent is forked, this machine's python, and the spec round trip."""
    from beokit.launch.backends import Backend, make_backend

    plain = make_backend("netns")
    assert plain.local and plain.namespace("n1") == "n1"
    assert plain.argv("n1", "echo x") == ["ip", "netns", "exec", "n1", "/bin/sh", "-c",
                                          "echo x"]  # fmt: skip
    assert "-S" in plain.python  # this machine's python, as -R exec
    vc = Backend.from_spec(make_backend("netns:bk-{host}").spec())
    assert (vc.kind, vc.namespace("host3")) == ("netns", "bk-host3")
    assert not make_backend("ssh").local and make_backend("exec").local
    for bad in ("netns:", "netns:bk-host", "netns:../{host}"):
        with pytest.raises(ValueError, match="netns"):
            make_backend(bad)


def test_hosts_file_address(tmp_path) -> None:
    """-R netns: a host's address from its namespace's own hosts file."""
    from beokit.launch.backends import hosts_file_address

    f = tmp_path / "hosts"
    f.write_text("# c\n127.0.0.1 localhost\n198.18.0.2\thost2 host2-eth0  # x\n"
                 "198.18.0.3 host3\n")  # fmt: skip
    assert hosts_file_address(str(f), "host2") == "198.18.0.2"
    assert hosts_file_address(str(f), "host2-eth0") == "198.18.0.2"
    assert hosts_file_address(str(f), "host") is None
    assert hosts_file_address(str(tmp_path / "none"), "host2") is None
