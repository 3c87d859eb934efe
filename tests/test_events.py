"""NETTEE_EVENT_FD: the structured events a program driving nettee reads (events.py).

Real nettee processes write to a pipe the test holds: "formed" once the tree
below a node has joined, "healed" after a -heal adoption, "end" just before
exit.  A reader that is gone, or a descriptor that is not one, never
disturbs the stream.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import child_env, sha256, spawn, wait_all

from beokit.nettee.events import Events
from beokit.nettee.localchain import free_port

MIB = 1 << 20


def _events(fd: int) -> list[dict]:
    with os.fdopen(fd, "rb") as fh:
        return [json.loads(line) for line in fh.read().splitlines()]


def _with_events(*args: str, **kw) -> tuple[subprocess.Popen, int]:
    """A nettee process writing its events into a pipe; returns it and the read end."""
    r, w = os.pipe()
    p = spawn(*args, env=child_env(NETTEE_EVENT_FD=str(w)), pass_fds=[w], **kw)
    os.close(w)
    return p, r


def test_formed_and_end_at_the_root_and_the_tip(tmp_path: Path, source: Path) -> None:
    port = free_port(["127.0.0.2", "127.0.0.3"])
    tip, tip_r = _with_events("-bind", "127.0.0.3", "-port", str(port), "-out",
                              str(tmp_path / "o3"))  # fmt: skip
    mid = spawn("-bind", "127.0.0.2", "-port", str(port), "-next", "127.0.0.3", "-out",
                str(tmp_path / "o2"), env=child_env())  # fmt: skip
    root, root_r = _with_events("-root", "-port", str(port), "-next", "127.0.0.2", "-in",
                                str(source))  # fmt: skip
    assert wait_all([root, mid, tip]) == [0, 0, 0]
    size = source.stat().st_size
    root_ev, tip_ev = _events(root_r), _events(tip_r)
    assert [e["event"] for e in root_ev] == ["formed", "end"]
    formed, end = root_ev
    assert formed["children"] == 1 and formed["nodes"] == 3  # the root, n2, n3
    assert end["status"] == "NONE" and end["bytes"] == size and end["exit"] == 0
    assert 0 <= formed["t"] <= end["t"]
    assert [e["event"] for e in tip_ev] == ["formed", "end"]
    assert tip_ev[0]["children"] == 0 and tip_ev[0]["nodes"] == 1
    assert tip_ev[1]["bytes"] == size and tip_ev[1]["status"] == "NONE"
    assert sha256(tmp_path / "o3") == sha256(source)


def test_end_says_when_the_stream_came_ended_and_was_relayed(tmp_path: Path,
                                                             source: Path) -> None:  # fmt: skip
    """The end event places the stream on the node's time line (first byte, end of
    input, every output written) and gives the node's start on the machine's
    monotonic clock, so that the nodes of one machine share one time line."""
    port = free_port(["127.0.0.2"])
    before = time.monotonic()
    tip, tip_r = _with_events("-bind", "127.0.0.2", "-port", str(port), "-out",
                              str(tmp_path / "o2"))  # fmt: skip
    root, root_r = _with_events("-root", "-port", str(port), "-next", "127.0.0.2", "-in",
                                str(source))  # fmt: skip
    assert wait_all([root, tip]) == [0, 0]
    after = time.monotonic()
    for end in (_events(root_r)[-1], _events(tip_r)[-1]):
        assert end["event"] == "end"
        assert before <= end["start"] <= end["start"] + end["t"] <= after
        assert 0 <= end["first"] <= end["eof"] <= end["relayed"] <= end["t"]


def test_end_carries_the_nodes_digest(tmp_path: Path, source: Path) -> None:
    """With -digest the end event gives this node's digest of what it wrote (the
    provisioning node compares it with the round's pinned one); without, ""."""
    import xxhash

    port = free_port(["127.0.0.2"])
    tip, tip_r = _with_events("-bind", "127.0.0.2", "-port", str(port), "-digest", "-out",
                              str(tmp_path / "o2"))  # fmt: skip
    root, root_r = _with_events("-root", "-port", str(port), "-next", "127.0.0.2", "-digest",
                                "-in", str(source))  # fmt: skip
    assert wait_all([root, tip]) == [0, 0]
    want = "xxh3_128:" + xxhash.xxh3_128(source.read_bytes()).hexdigest()
    assert _events(tip_r)[-1]["digest"] == want
    assert _events(root_r)[-1]["digest"] == want
    port = free_port(["127.0.0.2"])
    tip, tip_r = _with_events("-bind", "127.0.0.2", "-port", str(port), "-out",
                              str(tmp_path / "o3"))  # fmt: skip
    root = spawn("-root", "-port", str(port), "-next", "127.0.0.2", "-in", str(source),
                 env=child_env())  # fmt: skip
    assert wait_all([root, tip]) == [0, 0]
    assert _events(tip_r)[-1]["digest"] == ""


def test_end_names_the_code_of_a_collapse(tmp_path: Path, source: Path) -> None:
    """The tip cannot write (/dev/full): the tree collapses; the root's last event
    says LWF, exit 1."""
    port = free_port(["127.0.0.2"])
    tip = spawn("-bind", "127.0.0.2", "-port", str(port), "-out", "/dev/full", env=child_env())
    root, r = _with_events("-root", "-port", str(port), "-next", "127.0.0.2", "-in", str(source))
    assert wait_all([root, tip]) == [1, 1]
    events = _events(r)
    assert events[0]["event"] == "formed"
    assert events[-1]["event"] == "end" and events[-1]["status"] == "LWF"
    assert events[-1]["exit"] == 1


def test_healed_is_written_by_the_node_that_adopted(tmp_path: Path) -> None:
    """root -> n2 -> n3 -> n4 with -heal; n3 is killed mid-stream: n2 adopts n4 and says so."""
    port = free_port(["127.0.0.2", "127.0.0.3", "127.0.0.4"])
    data = os.urandom(24 * MIB)
    n4 = spawn("-bind", "127.0.0.4", "-port", str(port), "-out", str(tmp_path / "n4"), "-name",
               "n4", "-heal", "-t", "30", env=child_env())  # fmt: skip
    n3 = spawn("-bind", "127.0.0.3", "-port", str(port), "-next", "127.0.0.4", "-out",
               str(tmp_path / "n3"), "-name", "n3", "-heal", "-t", "30", env=child_env())  # fmt: skip
    n2, r = _with_events("-bind", "127.0.0.2", "-port", str(port), "-next", "127.0.0.3", "-out",
                         str(tmp_path / "n2"), "-name", "n2", "-heal", "-t", "30")  # fmt: skip
    root = spawn("-root", "-port", str(port), "-next", "127.0.0.2", "-in", "-", "-heal",
                 env=child_env(), stdin=subprocess.PIPE)  # fmt: skip
    assert root.stdin is not None
    root.stdin.write(data[: 8 * MIB])
    root.stdin.flush()
    deadline = time.monotonic() + 20
    while (not (tmp_path / "n4").exists() or (tmp_path / "n4").stat().st_size < 4 * MIB) and (
            time.monotonic() < deadline):  # fmt: skip
        time.sleep(0.01)
    n3.kill()
    root.stdin.write(data[8 * MIB :])
    root.stdin.close()
    assert wait_all([root, n2, n4]) == [0, 0, 0]
    n3.wait()
    events = _events(r)
    healed = [e for e in events if e["event"] == "healed"]
    assert len(healed) == 1, events
    assert healed[0]["lost"] == "n3" and healed[0]["adopted_by"] == "n2"
    assert healed[0]["adopted"] == ["n4"]
    assert [e["event"] for e in events] == ["formed", "healed", "end"]
    assert (tmp_path / "n4").read_bytes() == data


@pytest.mark.parametrize("value", ["closed", "999", "not a number", ""])
def test_a_reader_gone_or_a_bad_descriptor_never_disturbs_the_stream(
        tmp_path: Path, source: Path, value: str) -> None:  # fmt: skip
    port = free_port(["127.0.0.2"])
    tip = spawn("-bind", "127.0.0.2", "-port", str(port), "-out", str(tmp_path / "o"),
                env=child_env())  # fmt: skip
    args = ["-root", "-port", str(port), "-next", "127.0.0.2", "-in", str(source), "-v", "5"]
    if value == "closed":  # the reader has closed its end: every write is EPIPE
        r, w = os.pipe()
        os.close(r)
        root = spawn(*args, env=child_env(NETTEE_EVENT_FD=str(w)), pass_fds=[w],
                     stderr=subprocess.PIPE, text=True)  # fmt: skip
        os.close(w)
    else:
        root = spawn(*args, env=child_env(NETTEE_EVENT_FD=value), stderr=subprocess.PIPE,
                     text=True)  # fmt: skip
    assert wait_all([root, tip]) == [0, 0]
    assert "Failures detected in chain: NONE" in root.stderr.read()
    assert sha256(tmp_path / "o") == sha256(source)


def test_a_reader_that_reads_nothing_is_given_up_not_waited_for() -> None:
    """A full pipe: the event is dropped after WRITE_WAIT and nothing more is written."""
    r, w = os.pipe()
    try:
        os.set_blocking(w, False)
        try:
            while True:
                os.write(w, b"x" * 65536)
        except BlockingIOError:
            pass
        os.set_blocking(w, True)
        events = Events({"NETTEE_EVENT_FD": str(w)})
        assert events.fd == w
        events.emit("formed", children=1, nodes=2)
        assert events.fd == -1  # given up: later events are not even tried
        events.emit("end", status="NONE", bytes=0)
    finally:
        os.close(r)
        os.close(w)


def test_without_the_variable_nothing_is_written() -> None:
    assert Events({}).fd == -1
    assert Events({"NETTEE_EVENT_FD": "-1"}).fd == -1
