"""The small shared modules: beokit.auth, beokit.proc, beokit.framing, beokit.net, beokit.errors."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from beokit import auth, framing, net, proc
from beokit.errors import WireError


def test_mac_binds_label_parts_and_secret() -> None:
    n1, n2 = auth.nonce(), auth.nonce()
    proof = auth.mac(b"s3cret", "x-parent", n1, n2)
    assert auth.verify(b"s3cret", "x-parent", proof, n1, n2)
    assert auth.verify(b"s3cret", "x-parent", proof.hex(), n1, n2)
    assert not auth.verify(b"other", "x-parent", proof, n1, n2)
    assert not auth.verify(b"s3cret", "x-child", proof, n1, n2)  # reflected
    assert not auth.verify(b"s3cret", "x-parent", proof, n2, n1)
    assert not auth.verify(b"s3cret", "x-parent", "zz", n1, n2)
    assert not auth.verify(b"s3cret", "x-parent", None, n1, n2)


@given(st.lists(st.binary(max_size=8), max_size=4), st.lists(st.binary(max_size=8), max_size=4))
def test_different_part_lists_never_collide(a: list[bytes], b: list[bytes]) -> None:
    if a != b:
        assert auth.mac(b"k", "l", *a) != auth.mac(b"k", "l", *b)


def test_describe_exit_one_wording() -> None:
    assert proc.describe_exit(0) == "exited with status 0"
    assert proc.describe_exit(3, "tar") == "tar exited with status 3"
    assert proc.describe_exit(-9) == "killed by signal 9 (SIGKILL)"
    assert proc.describe_exit(None, "nettee") == "nettee is still running"
    p = subprocess.run(["sh", "-c", "kill -TERM $$"])
    assert proc.describe_exit(p.returncode) == "killed by signal 15 (SIGTERM)"


def test_wire_error_is_not_a_usage_error() -> None:
    from beokit.errors import BeokitError

    assert not issubclass(WireError, BeokitError)


# ------------------------------------------------------------------ framing

messages = st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=20),
                           max_size=4).map(lambda d: {**d, "t": "m"})  # fmt: skip


@given(st.lists(messages, max_size=6), st.integers(1, 40))
def test_framing_reassembles_any_chunking(msgs: list[dict], chunk: int) -> None:
    wire = b"".join(framing.encode(m) for m in msgs)
    dec = framing.LineDecoder()
    out = []
    for i in range(0, len(wire), chunk):
        out += dec.feed(wire[i : i + chunk])
    assert out == msgs


@given(st.binary(max_size=300))
def test_framing_garbage_is_a_wire_error_or_messages(data: bytes) -> None:
    try:
        for m in framing.LineDecoder(max_line=100).feed(data):
            assert isinstance(m["t"], str)
    except WireError:
        pass


def test_framing_refuses_what_is_not_a_message() -> None:
    for line in (b"[1]", b'{"t": 1}', b"{}", b"\xff", b"not json"):
        with pytest.raises(WireError):
            framing.decode(line)
    assert framing.decode(b'{"t":"x","a":1}\n') == {"t": "x", "a": 1}
    with pytest.raises(WireError, match="longer than 10"):
        framing.LineDecoder(max_line=10).feed(b"x" * 11)
    assert framing.LineBuffer(max_line=10).lines(b"x" * 30 + b"\n\n  \ny") == [b"x" * 30]


def test_read_message_ends_and_bounds() -> None:
    stream = io.BytesIO(framing.encode({"t": "a"}) + b"z" * 50)
    assert framing.read_message(stream, 40) == {"t": "a"}
    with pytest.raises(WireError, match="longer than 40"):
        framing.read_message(stream, 40)
    assert framing.read_message(io.BytesIO(b""), 40) is None


# ---------------------------------------------------------------------- net


def test_host_port_round_trip() -> None:
    for host in ("127.0.0.1", "::1", "node7"):
        assert net.split_host_port(net.host_port(host, 80)) == (host, 80)
    assert net.host_port("::1", 9) == net.host_port("[::1]", 9) == "[::1]:9"
    for bad in ("nohost", "a:", ":80", "a:b", "a:70000"):
        with pytest.raises(ValueError, match="bad address"):
            net.split_host_port(bad)


def test_free_port_pair_is_free() -> None:
    port = net.free_port(["127.0.0.1"])
    for p in (port, port + 1):
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback (::1) here")
def test_free_port_pair_ipv6_and_an_address_not_ours() -> None:
    # beo cast -R exec ... '::1' raised "no free port pair found" (an AF_INET socket for ::1)
    port = net.free_port(["::1", "127.0.0.2"])
    for p in (port, port + 1):
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", p))
    with pytest.raises(OSError, match="cannot listen on 192.0.2.7"):
        net.free_port(["192.0.2.7"])


def test_source_address_is_ours_on_the_route() -> None:
    assert net.source_address("127.0.0.5") == "127.0.0.1"
    assert net.source_address("no-such-host.invalid") is None
    addr, tried = net.reachable_address(["nosuch.invalid", "127.0.0.9"], lambda h: h)
    assert (addr, tried) == ("127.0.0.1", ["nosuch.invalid"])
    assert net.reachable_address(["a.invalid"], lambda h: h) == (None, ["a.invalid"])


# --------------------------------------------------------------------- proc


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def test_fork_python_runs_a_named_worker_in_its_own_session() -> None:
    r, w = os.pipe()

    def work() -> int:
        print(f"{os.getsid(0) == os.getpid()} {_comm(os.getpid())} {sys.argv}", file=sys.stderr)
        return 7

    pid = proc.fork_python(work, name="bk-worker", stderr=w, argv=["x", "y"])
    os.close(w)
    child = proc.ForkedChild(pid)
    with os.fdopen(r, "rb") as fh:
        assert fh.read() == b"True bk-worker ['x', 'y']\n"
    assert child.wait() == 7 and child.poll() == 7


def test_fork_python_exit_codes() -> None:
    def boom() -> int:
        raise RuntimeError("boom")

    def leave() -> int:
        raise SystemExit(4)

    def killed() -> int:
        os.kill(os.getpid(), signal.SIGKILL)
        return 0

    r, w = os.pipe()
    codes = [proc.ForkedChild(proc.fork_python(f, name="bk-t", stderr=w)).wait()
             for f in (boom, leave, killed)]  # fmt: skip
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        assert b"bk-t: RuntimeError('boom')" in fh.read()
    assert codes == [1, 4, -9]
    assert proc.describe_exit(codes[2], "worker") == "worker killed by signal 9 (SIGKILL)"


def test_fork_server_forks_a_worker_per_request(tmp_path: Path) -> None:
    path = str(tmp_path / "forks")
    server = proc.start_fork_server(path, "builtins:exec", name="bk-forked")
    try:
        out = tmp_path / "out"
        code = f"import os; open({str(out)!r}, 'w').write(open('/proc/self/comm').read())\n"
        worker = proc.request_fork(path, code.encode())
        assert worker.wait(timeout=20) == 0 and worker.poll() == 0
        assert out.read_text() == "bk-forked\n"
        sleeper = proc.request_fork(path, b"import time; time.sleep(60)\n")
        with pytest.raises(subprocess.TimeoutExpired):
            sleeper.wait(timeout=0.1)
        proc.kill_group(sleeper)
        assert sleeper.wait(timeout=20) == 0  # gone (its code is the server's to read)
    finally:
        server.kill()
        server.wait()


def test_fork_server_passes_a_workers_stderr(tmp_path: Path) -> None:
    """request_fork(stderr=FD): the worker's fd 2 is ours (SCM_RIGHTS), not the
    server's: a launcher reads why a forked agent failed.  200 requests in a row (a
    zero-length send after the line once failed 1 launch in 7 of a --ring run with
    EPIPE, when the server had answered and closed first; that race needs a loaded
    box to show, and this loop does not reliably show it)."""
    path = str(tmp_path / "forks")
    server = proc.start_fork_server(path, "builtins:exec", name="bk-forked")
    try:
        for i in range(200):
            r, w = os.pipe()
            try:
                worker = proc.request_fork(path, f"import sys; sys.stderr.write('e{i}')\n".encode(),
                                           stderr=w)  # fmt: skip
            finally:
                os.close(w)
            with os.fdopen(r, "rb") as f:
                assert f.read() == f"e{i}".encode()
            assert worker.wait(timeout=20) == 0
    finally:
        server.kill()
        server.wait()


def test_shell_command_output_status_and_timeout() -> None:
    cmd = proc.ShellCommand("cat; echo err >&2; exit 3", input=b"in\n")
    assert cmd.finish(timeout=20) == proc.Finished(3, b"in\n", b"err\n", None)
    slow = proc.ShellCommand("echo started; exec sleep 30")
    done = slow.finish(timeout=0.5)
    assert done.returncode is None and done.error == "command timed out after 0.5 s"
    assert done.out == b"started\n" and not slow.running()


def forked_echo() -> int:
    """A ForkedCommand's program (test_forked_command_...): stdin, env, both outputs."""
    data = sys.stdin.read()
    print(f"{data} {os.environ.get('BK_X')} {os.getsid(0) == os.getpid()}")
    print("to stderr", file=sys.stderr)
    if data == "sleep":
        time.sleep(30)
    return 5


def test_forked_command_is_a_shell_command_without_the_interpreter() -> None:
    cmd = proc.ForkedCommand("test_shared:forked_echo", env={"BK_X": "x1"}, input=b"hello",
                             name="bk-forked")  # fmt: skip
    assert cmd.finish(timeout=20) == proc.Finished(5, b"hello x1 True\n", b"to stderr\n", None)
    assert not cmd.running()
    big = b"y" * (1 << 20)  # more than a pipe holds: written while the outputs are read
    done = proc.ForkedCommand("test_shared:forked_echo", input=big).finish(timeout=20)
    assert done.returncode == 5 and done.out == big + b" None True\n"
    slow = proc.ForkedCommand("test_shared:forked_echo", input=b"sleep")
    done = slow.finish(timeout=0.5)
    assert done.returncode is None and done.error == "command timed out after 0.5 s"
    assert done.out == b"sleep None True\n" and not slow.running()
    with pytest.raises(ImportError):
        proc.ForkedCommand("test_shared_no_such_module:main")


def test_shipped_modules_import_from_memory_with_their_byte_code(tmp_path: Path) -> None:
    """A node without beokit: the zip the launcher ships, imported by a bare python
    (-I -S: no beokit on its path); once the file is gone, later imports of
    beokit.* come from memory, as byte code compiled by this Python."""
    from beokit.launch import ship

    extra = ("auth.py", "linux.py", "cast/__init__.py", "cast/channel.py", "cast/receiver.py",
             "nettee/")  # fmt: skip
    zpath = tmp_path / "b.zip"
    zpath.write_bytes(ship.zipapp_bytes(extra))
    code = (f"import sys; sys.path.insert(0, {str(zpath)!r})\n"
            "from beokit.launch import agent, ship\n"
            f"ship.shipped({str(zpath)!r})\n"
            "import os; assert not os.path.exists(sys.argv[1])\n"
            "import beokit.cast.receiver, beokit.nettee.cli\n"
            "print(beokit.nettee.cli.__spec__.origin, ship.zipapp_bytes() == open(sys.argv[2], 'rb').read())")  # fmt: skip
    copy = tmp_path / "copy.zip"
    copy.write_bytes(zpath.read_bytes())
    cp = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(zpath), str(copy)],
                        capture_output=True, text=True, timeout=60)  # fmt: skip
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout == "shipped:beokit/nettee/cli.py True\n"


def test_stop_terms_then_kills() -> None:
    stubborn = subprocess.Popen(["sh", "-c", "trap '' TERM; echo ready; sleep 30"],
                                stdout=subprocess.PIPE)  # fmt: skip
    assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"
    assert proc.stop(stubborn, grace=0.2) == -signal.SIGKILL
    assert proc.stop(subprocess.Popen(["sleep", "30"])) == -signal.SIGTERM


def test_signal_guard_raises_once() -> None:
    with proc.SignalGuard() as guard, pytest.raises(proc.Interrupted) as exc:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    assert exc.value.name == "SIGTERM" and exc.value.exit_status == 143
    assert guard.fired == signal.SIGTERM
    with proc.SignalGuard() as guard:
        guard.fired = signal.SIGINT  # fired already: a second signal is noted, not raised
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
