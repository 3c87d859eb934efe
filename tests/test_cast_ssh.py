"""beo cast over real OpenSSH (a private sshd on 127.0.0.2-5, root only).

A node needs only python3 and sshd: where its Python cannot import beokit
the launch agent ships itself with the receiver and nettee (byte code and
source, imported from memory), and where it has no xxhash the chain runs
without nettee's -digest/-heal and every node rereads and hashes its copy.
"""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cast_helpers import by_host, cast
from sshd_fixture import SSH_HOSTS, sshd  # noqa: F401

pytestmark = [pytest.mark.root]


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A venv with the standard library only: no beokit, no xxhash, no pip."""
    d = tmp_path_factory.mktemp("venv") / "v"
    base = getattr(sys, "_base_executable", sys.executable)
    cp = subprocess.run([base, "-m", "venv", "--without-pip", str(d)], capture_output=True,
                        text=True, timeout=120)  # fmt: skip
    if cp.returncode != 0:
        pytest.skip(f"cannot make a venv: {cp.stderr.strip()[-200:]}")
    py = str(d / "bin" / "python3")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # as sshd starts it
    for module in ("beokit", "xxhash"):
        probe = subprocess.run([py, "-c", f"import {module}"], capture_output=True, env=env)
        assert probe.returncode != 0, f"{module} importable by the bare venv?"
    return py


def test_node_without_beokit_receives_through_a_shipped_receiver(
        sshd: list[str], bare_python: str, tmp_path: Path) -> None:  # noqa: F811  # fmt: skip
    """Before: every node DOWN, "No module named 'beokit'"."""
    src = tmp_path / "img"
    src.write_bytes(os.urandom(3 << 20))
    hosts = tmp_path / "hosts"  # each receiver binds its own loopback address
    hosts.write_text("".join(f"{a} {n}\n" for n, a in SSH_HOSTS.items()))
    out = tmp_path / "out"
    rc, doc, _, err = cast("--ssh-args", " ".join(sshd), "--remote-python", bare_python,
                           "--bind-each", "--resolve", str(hosts), "--fanout", "2",
                           str(src), "n[1-4]", "--to", f"{out}/{{host}}", timeout=120)  # fmt: skip
    assert rc == 0, err
    assert doc is not None and doc["launch"]["depth"] == 2  # shipped on by an agent too
    for h, n in by_host(doc).items():
        assert (n["status"], n["digest"]) == ("OK", "ok"), n
        assert filecmp.cmp(src, out / h, shallow=False)
    # no xxhash there: nettee without -digest/-heal, every copy reread and hashed
    assert "-digest" not in doc["nettee_flags"] and doc["digest_algorithm"] == "blake2b"
    assert "n[1-4]: no xxhash module there" in err
    assert "No module named" not in err
    left = list(tmp_path.glob("beokit-*.zip")) + list(Path("/tmp").glob("beokit-*.zip"))
    assert not [p for p in left if p.stat().st_uid == os.getuid()
                and p.stat().st_mtime > src.stat().st_mtime], left  # fmt: skip
