"""-cmd with -in socket / -out socket: a directory tree through tar on every node."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from conftest import child_env, spawn, wait_all

from beokit.nettee.localchain import free_port

SPARSE = 512 * 1024 * 1024  # apparent size of the sparse file


def make_tree(root: Path) -> None:
    (root / "etc" / "conf.d").mkdir(parents=True)
    (root / "etc" / "conf.d" / "a.conf").write_text("alpha\n")
    secret = root / "etc" / "shadow"
    secret.write_text("root:*:1:0\n")
    secret.chmod(0o600)
    tool = root / "bin-tool"
    tool.write_bytes(os.urandom(300_000))
    tool.chmod(0o755)
    (root / "etc" / "link").symlink_to("conf.d/a.conf")
    (root / "dangling").symlink_to("/nonexistent/target")
    (root / "empty-dir").mkdir()
    (root / "empty-dir").chmod(0o711)
    with open(root / "disk.img", "wb") as fh:  # sparse: data at both ends, a hole between
        fh.write(b"MBR" * 100)
        fh.seek(SPARSE - 300)
        fh.write(b"END" * 100)


def snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                with open(p, "rb") as fh:
                    data = fh.read() if st.st_size < (1 << 20) else None
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_size, data)
    return out


def test_directory_tree_through_tar_on_four_nodes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    addrs = [f"127.0.0.{i}" for i in range(2, 6)]
    port = free_port(addrs)
    dests = [tmp_path / f"dest{i}" for i in range(len(addrs))]
    procs = []
    for k in range(len(addrs) - 1, -1, -1):
        dests[k].mkdir()
        args = ["-bind", addrs[k], "-port", str(port), "-name", addrs[k], "-out", "socket",
                "-cmd", f"tar -C {dests[k]} -xpSf -"]  # fmt: skip
        if k + 1 < len(addrs):
            args += ["-next", addrs[k + 1]]
        procs.append(spawn(*args, env=child_env()))
    root = spawn("-root", "-port", str(port), "-next", addrs[0], "-in", "socket", "-cmd",
                 f"tar -C {src} -cSf - .", "-v", "5", env=child_env(),
                 stderr=subprocess.PIPE, text=True)  # fmt: skip
    codes = wait_all([root, *procs], timeout=120)
    err = root.stderr.read()
    assert codes == [0] * 5, err
    assert "Failures detected in chain: NONE" in err
    want = snapshot(src)
    for d in dests:
        assert snapshot(d) == want
        img = (d / "disk.img").stat()
        assert img.st_size == SPARSE and img.st_blocks * 512 < 1 << 20  # still sparse


def test_failing_receiver_command_is_lwf(tmp_path: Path, source: Path) -> None:
    """A -out socket command that fails: LWF at that node (collapse, or -colwf carries on)."""
    port = free_port(["127.0.0.2", "127.0.0.3"])
    for colwf in (False, True):
        extra = ["-colwf"] if colwf else []
        tip = spawn("-bind", "127.0.0.3", "-port", str(port), "-out", "socket", "-cmd",
                    "head -c 1000 >/dev/null; exit 3", "-name", "tip", *extra,
                    env=child_env())  # fmt: skip
        mid = spawn("-bind", "127.0.0.2", "-port", str(port), "-next", "127.0.0.3", "-out",
                    str(tmp_path / "mid"), "-name", "mid", env=child_env())  # fmt: skip
        root = spawn("-root", "-port", str(port), "-next", "127.0.0.2", "-in", str(source),
                     env=child_env(), stderr=subprocess.PIPE, text=True)  # fmt: skip
        codes = wait_all([root, mid, tip], timeout=60)
        err = root.stderr.read()
        assert "tip: " in err and "LWF" in err, err
        assert codes == ([0, 0, 0] if colwf else [1, 1, 1]), err


def test_failing_root_command_is_lrf(tmp_path: Path) -> None:
    port = free_port(["127.0.0.2"])
    tip = spawn("-bind", "127.0.0.2", "-port", str(port), "-out", str(tmp_path / "o"),
                env=child_env())  # fmt: skip
    root = spawn("-root", "-port", str(port), "-next", "127.0.0.2", "-in", "socket", "-cmd",
                 "echo partial; exit 2", env=child_env(), stderr=subprocess.PIPE,
                 text=True)  # fmt: skip
    codes = wait_all([root, tip], timeout=30)
    err = root.stderr.read()
    assert codes == [1, 1]
    assert "LRF" in err and "exited with status 2" in err, err
