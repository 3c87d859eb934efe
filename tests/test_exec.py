"""beo exec's results up a -stm chain: which command failed on which node, -stm_wait,
and beo exec --nodes (real processes on 127.0.0.x, no mocks)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import NETTEE, child_env, wait_all

from beokit.nettee.localchain import free_port
from beokit.nettee.messages import Await, decode
from beokit.nettee.policy import Action, Decision, Failure, Options, Who, decide
from beokit.nettee.protocol import Code, ProtocolError

BEO = [__import__("sys").executable, "-m", "beokit.cli"]
ADDRS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]


def _chain(tmp: Path, env: dict, *extra: str) -> tuple[int, list[subprocess.Popen]]:
    """A beo exec on each of ADDRS, chained in that order; (port, processes)."""
    port = free_port(ADDRS)
    nodes = []
    for i, a in enumerate(ADDRS):
        args = BEO + ["exec", "--bind", a, "--port", str(port), "--name", a, *extra]
        if i + 1 < len(ADDRS):
            args += ["--next", ADDRS[i + 1]]
        nodes.append(subprocess.Popen(args, env=env, stderr=open(tmp / f"{a}.err", "w"),
                                      cwd=tmp))  # fmt: skip
    return port, nodes


def _root(port: int, script: str, env: dict, *extra: str) -> subprocess.CompletedProcess:
    # the root retries a child that is not listening yet: no sleep needed before it
    return subprocess.run(NETTEE + ["-root", "-port", str(port), "-next", ADDRS[0], "-stm", "EOS",
                                    *extra], input=script.encode(), env=env,
                          capture_output=True, timeout=60)  # fmt: skip


def test_a_failing_command_is_named_at_the_root_with_its_node_and_status(tmp_path: Path) -> None:
    env = child_env(NETTEE_SECRET="exec-secret")
    port, nodes = _chain(tmp_path, env, "--report-output", "100")
    script = ("echo one on $BEO_EXEC_NODE\n"
              "test $BEO_EXEC_NODE != 127.0.0.3 || { echo bad node >&2; exit 3; }\n"
              "test $BEO_EXEC_NODE != 127.0.0.4 || kill -9 $$\n"
              "EOS\n")  # fmt: skip
    report = tmp_path / "r.json"
    root = _root(port, script, env, "-stm_wait", "0", "-report", str(report))
    err = root.stderr.decode()
    assert root.returncode == 1, err
    assert wait_all(nodes, timeout=30) == [1, 1, 1]  # a node exits 1 for a failure below it too
    assert "Failures detected in chain: CMDF" in err
    assert ("node 127.0.0.3: command 2 'test $BEO_EXEC_NODE != 127.0.0.3 || { echo bad node >&2; "
            "exit 3; }': exit status 3") in err  # fmt: skip
    assert "node 127.0.0.3: | bad node" in err  # its output came up with it
    assert ("node 127.0.0.4: command 3 'test $BEO_EXEC_NODE != 127.0.0.4 || kill -9 $$': killed "
            "by signal 9 (SIGKILL)") in err  # fmt: skip
    assert "commands: 3 ended on each of 3 node(s), failed on 2 node(s): 127.0.0.3, 127.0.0.4" in err
    doc = json.loads(report.read_text())
    assert doc["status"] == "failed"
    assert doc["commands"] == {"nodes": 3, "complete": True, "failed": 2, "failed_nodes": 2}
    by_name = {n["name"]: n for n in doc["nodes"]}
    assert by_name["127.0.0.2"]["codes"] == [] and by_name["127.0.0.3"]["codes"] == ["CMDF"]
    n3 = by_name["127.0.0.3"]["cmds"]
    assert (n3["received"], n3["done"], n3["failed"], n3["ended"]) == (3, 3, 1, True)
    assert [(c["seq"], c["status"]) for c in n3["listed"]] == [(1, 0), (2, 3)]
    assert n3["listed"][0]["out"] == "one on 127.0.0.3\n"
    assert by_name["127.0.0.4"]["cmds"]["listed"][-1]["status"] == -9


def test_stm_wait_waits_for_a_slow_command(tmp_path: Path) -> None:
    env = child_env(NETTEE_SECRET="exec-secret")
    port, nodes = _chain(tmp_path, env)
    root = _root(port, "sleep 3; touch done-$BEO_EXEC_NODE\nEOS\n", env, "-stm_wait", "0", "-v", "5")
    done = sorted(p.name for p in tmp_path.glob("done-*"))  # as the root ended
    err = root.stderr.decode()
    assert root.returncode == 0, err
    assert done == [f"done-{a}" for a in ADDRS]  # the root reported after every node's command
    assert "commands: 1 ended on each of 3 node(s), none failed" in err
    assert "Failures detected in chain: NONE" in err
    assert wait_all(nodes, timeout=30) == [0, 0, 0]


# a command that ends only once the test creates the file 'go' (at most 60 s)
HELD = "for i in $(seq 600); do test -e go && break; sleep 0.1; done"


def test_without_stm_wait_the_root_says_delivered_not_yet_completed(tmp_path: Path) -> None:
    env = child_env(NETTEE_SECRET="exec-secret")
    port, nodes = _chain(tmp_path, env)
    root = _root(port, f"true\n{HELD}; touch done-$BEO_EXEC_NODE\nEOS\n", env)
    err = root.stderr.decode()
    finished = list(tmp_path.glob("done-*"))
    (tmp_path / "go").touch()
    assert root.returncode == 0, err  # delivered, and no failure heard of
    assert not finished  # the root did not wait
    assert "commands: delivered to 3 node(s), not yet completed on 3: " in err
    assert "still running: the root did not wait for them (-stm_wait)" in err
    assert "commands: 2 ended" not in err
    assert wait_all(nodes, timeout=30) == [0, 0, 0]  # the nodes still ran it
    assert len(list(tmp_path.glob("done-*"))) == 3


def test_stm_wait_running_out_is_cmdf_naming_what_still_runs(tmp_path: Path) -> None:
    env = child_env(NETTEE_SECRET="exec-secret")
    port, nodes = _chain(tmp_path, env)
    try:
        root = _root(port, f"true\n{HELD}\nEOS\n", env, "-stm_wait", "0.5")
        (tmp_path / "go").touch()
        err = root.stderr.decode()
        assert root.returncode == 1, err
        assert "Failures detected in chain: CMDF" in err
        for a in ADDRS:
            assert f"node {a}: CMDF (1 of 2 command(s) had not ended when -stm_wait ran out)" in err
            assert f"node {a}: command 2 '{HELD}': not completed" in err
        assert "; -stm_wait ran out" in err
    finally:
        (tmp_path / "go").touch()
        assert wait_all(nodes, timeout=30) == [1, 1, 1]  # reported CMDF, then ended


def test_stm_wait_and_stm_results_are_checked() -> None:
    from conftest import run_nettee

    r = run_nettee("-root", "-next", "n1", "-stm_wait", "1")
    assert r.returncode == 2 and "-stm_wait is for the root of a -stm chain" in r.stderr.decode()
    r = run_nettee("-root", "-next", "n1", "-stm", "EOS", "-stm_wait", "soon")
    assert r.returncode == 2 and "bad -stm_wait 'soon'" in r.stderr.decode()
    r = run_nettee("-stm", "EOS", "-root", "-next", "n1", "-stm_results", "5")
    assert r.returncode == 2 and "-stm_results is for a receiver" in r.stderr.decode()


def test_await_message_and_command_policy() -> None:
    assert decode({"t": "await", "seconds": 2}) == Await(2.0)
    for bad in (-1, "2", True, float("nan")):
        with pytest.raises(ProtocolError, match="await with a bad seconds"):
            decode({"t": "await", "seconds": bad})
    for o in (Options(), Options(colwf=True, conwf=True, conrf=True)):
        assert decide(Failure(Who.COMMAND), o) == Decision(Action.CARRY_ON, Code.CMDF, fatal=True)


# ---------------------------------------------------------------- beo exec --nodes


def test_beo_exec_nodes_runs_a_command_on_every_node_and_names_the_failure(tmp_path: Path) -> None:
    port = free_port(ADDRS)
    report = tmp_path / "r.json"
    r = subprocess.run(BEO + ["exec", "--nodes", "127.0.0.[2-4]", "-R", "exec", "--port",
                              str(port), "--report-output", "200", "--report", str(report), "--",
                              "echo hi from $BEO_EXEC_NODE; test $BEO_EXEC_NODE != 127.0.0.3"],
                       env=child_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert r.stdout.splitlines() == [f"{a}: hi from {a}" for a in ADDRS]
    assert ("nettee: node 127.0.0.3: command 1 'echo hi from $BEO_EXEC_NODE; test $BEO_EXEC_NODE "
            "!= 127.0.0.3': exit status 1") in r.stderr  # fmt: skip
    assert "beo exec: 3 of 3 node(s) reported, every command ended, 1 failed on 1 node(s)" in r.stderr
    doc = json.loads(report.read_text())
    assert [n["name"] for n in doc["nodes"]] == ["root", *ADDRS]


def test_beo_exec_nodes_keeps_the_secret_off_every_command_line(tmp_path: Path) -> None:
    port = free_port(ADDRS[:2])
    secret = "do-not-show-" + os.urandom(8).hex()
    proc = subprocess.Popen(BEO + ["exec", "--nodes", "127.0.0.[2-3]", "-R", "exec", "--port",
                                   str(port), "--", "sleep 2"],
                            env=child_env(NETTEE_SECRET=secret), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    seen = []
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if secret.encode() in cmdline:
                    seen.append(cmdline)
        time.sleep(0.1)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "every command ended, none failed" in err
    assert seen == []


def test_beo_exec_nodes_names_a_node_that_did_not_start() -> None:
    port = free_port(["127.0.0.2"])
    r = subprocess.run(BEO + ["exec", "--nodes", "127.0.0.2,192.0.2.77", "-R", "exec", "--port",
                              str(port), "--", "true"],
                       env=child_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 1
    assert ("beo exec: 192.0.2.77: did not start: nettee: 192.0.2.77: network read failure (NRF): "
            "cannot listen on 192.0.2.77") in r.stderr  # fmt: skip
    assert "the chain did not start" in r.stderr


@pytest.mark.parametrize("argv, words", [
    (["--", "echo", "hi"], "a command is given with --nodes NODESET"),
    (["--report-output", "5000", "--nodes", "n1", "--", "true"], "bad --report-output 5000"),
    (["--nodes", "127.0.0.2", "--port", "70000", "--", "true"], "bad --port 70000"),
    (["--nodes", "127.0.0.2", "--", "EOS"], "bad command 'EOS'"),
])  # fmt: skip
def test_beo_exec_bad_input_is_one_line_and_status_2(argv: list[str], words: str) -> None:
    r = subprocess.run(BEO + ["exec", *argv], env=child_env(), capture_output=True, text=True,
                       timeout=30)  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert words in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_docs_code_table_names_every_code() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "nettee.md").read_text()
    for code in Code:
        assert f"| `{code.value}` | " in doc, code


def test_sigterm_stops_the_chain_and_its_commands(tmp_path: Path) -> None:
    import signal

    port = free_port(ADDRS[:2])
    marker = "marker-" + os.urandom(6).hex()
    proc = subprocess.Popen(BEO + ["exec", "--nodes", "127.0.0.[2-3]", "-R", "exec", "--port",
                                   str(port), "--", f"sleep 60; echo {marker}"],
                            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip

    def running() -> list[str]:
        found = []
        for pid in os.listdir("/proc"):
            try:
                if (pid.isdigit() and pid != str(proc.pid)  # beo exec's own argv has it
                        and marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()):
                    found.append(pid)
            except OSError:
                pass
        return found

    deadline = time.monotonic() + 60
    while len(running()) < 2 and time.monotonic() < deadline:  # both nodes run the command
        time.sleep(0.1)
    assert len(running()) >= 2
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "beo exec: interrupted by SIGTERM: the chain and its commands were stopped" in err
    deadline = time.monotonic() + 10
    while running() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert running() == []
