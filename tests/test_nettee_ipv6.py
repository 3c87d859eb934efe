"""nettee over IPv6 (issue 22): ``-next ::1``, ``-next [::1]:PORT``, failover lists of
IPv6 addresses, and a real chain on the IPv6 loopback."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
from conftest import child_env, sha256, spawn, wait_all

from beokit.errors import UsageError
from beokit.net import free_port
from beokit.nettee.hostlists import Endpoint, format_next, parse_next


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback (::1)")


@pytest.mark.parametrize("text, want", [
    ("::1", ((Endpoint("::1"),),)),
    ("[::1]", ((Endpoint("::1"),),)),
    ("[::1]:7000", ((Endpoint("::1", 7000),),)),
    ("fe80::1%eth0", ((Endpoint("fe80::1%eth0"),),)),
    ("[2001:db8::5]:9", ((Endpoint("2001:db8::5", 9),),)),
    ("a,[::1]:7000 b", ((Endpoint("a"),), (Endpoint("::1", 7000),), (Endpoint("b"),))),
    ("[::1,::2]", ((Endpoint("::1"), Endpoint("::2")),)),
    ("[[::1]:7000,[::2]:7001],c:3",
     ((Endpoint("::1", 7000), Endpoint("::2", 7001)), (Endpoint("c", 3),))),
])  # fmt: skip
def test_ipv6_addresses_in_next(text: str, want: tuple) -> None:
    assert parse_next(text) == want
    assert parse_next(format_next(want)) == want


def test_ipv6_endpoint_formats_with_brackets_only_with_a_port() -> None:
    assert str(Endpoint("::1", 7000)) == "[::1]:7000"
    assert str(Endpoint("::1")) == "::1"
    assert format_next(((Endpoint("::1", 7), Endpoint("b")),)) == "[[::1]:7,b]"


@pytest.mark.parametrize("text, why", [
    ("[::1]x", "after ']'"),
    ("[::1]:", "not a number"),
    ("[::1]:70000", "must be 1-65534"),
    ("::1::2", "bad host"),
    (":::", "bad host"),
    ("[::g]:5", "after ']'"),
    ("[a,[b]]", "nest"),
])  # fmt: skip
def test_bad_ipv6_next_values_say_what_is_wrong(text: str, why: str) -> None:
    with pytest.raises(UsageError) as exc:
        parse_next(text)
    assert why in str(exc.value)


@needs_ipv6
@pytest.mark.parametrize("style", ["bracketed", "bare"])
def test_chain_on_the_ipv6_loopback(tmp_path: Path, source: Path, style: str) -> None:
    """root -> [::1]:P -> [::1]:Q -> [::1]:R (one address, three ports), -digest -heal;
    "bare": the root's child is given as ``::1`` with ``-port``."""
    ports = [free_port(["::1"]) for _ in range(3)]
    while len(set(ports)) < 3 or any(abs(a - b) < 2 for a in ports for b in ports if a != b):
        ports = [free_port(["::1"]) for _ in range(3)]
    outs = [tmp_path / f"n{i}" for i in range(3)]
    kids = []
    for i in range(2, -1, -1):
        args = ["-bind", "::1", "-port", str(ports[i]), "-name", f"n{i}", "-out", str(outs[i]),
                "-digest", "-heal"]  # fmt: skip
        if i < 2:
            args += ["-next", f"[::1]:{ports[i + 1]}"]
        kids.insert(0, spawn(*args, env=child_env()))
    head = ["-next", "::1", "-port", str(ports[0])] if style == "bare" else \
        ["-next", f"[::1]:{ports[0]}"]  # fmt: skip
    root = spawn("-root", *head, "-in", str(source), "-digest", "-heal", "-v", "5",
                 env=child_env(), stderr=subprocess.PIPE, text=True)  # fmt: skip
    codes = wait_all([root, *kids])
    err = root.stderr.read()
    assert codes == [0, 0, 0, 0], err
    assert f"child 0 [n0] joined at {head[1]}" in err
    assert "Failures detected in chain: NONE" in err
    want = sha256(source)
    assert all(sha256(o) == want for o in outs)
