"""How a provisioned node checks its target against the round's pinned digest.

A regular file on a memory filesystem (a tmpfs root) is checked by nettee's own
-digest, which hashed the file as it was written; any other target, or a stream
digest that does not match, is read back and decides."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import xxhash

from beokit.provision.node import filesystem_type, verify

SHM = Path("/dev/shm")
needs_tmpfs = pytest.mark.skipif(not SHM.is_dir() or filesystem_type(str(SHM)) != "tmpfs",
                                 reason="/dev/shm is not a tmpfs here")  # fmt: skip


def pins(data: bytes) -> tuple[str, str]:
    return hashlib.sha256(data).hexdigest(), xxhash.xxh3_128(data).hexdigest()


@pytest.fixture
def shm_file():
    path = SHM / f"beokit-verify-{os.getpid()}.bin"
    yield path
    path.unlink(missing_ok=True)


def test_filesystem_type_from_mountinfo() -> None:
    assert filesystem_type("/proc/self") == "proc"
    assert filesystem_type("/proc/nonexistent/below") == "proc"
    assert filesystem_type("/") != ""


@needs_tmpfs
def test_on_tmpfs_the_stream_digest_is_the_check(shm_file: Path) -> None:
    data = os.urandom(1 << 20)
    shm_file.write_bytes(data)
    sha, xxh = pins(data)
    ok, why = verify(str(shm_file), len(data), sha, xxh, f"xxh3_128:{xxh}")
    assert ok and "as nettee wrote it (tmpfs)" in why, why
    ok, why = verify(str(shm_file), len(data), sha, xxh, f"xxh3_128:{xxh}", read_back=True)
    assert ok and "read back" in why, why


@needs_tmpfs
def test_on_tmpfs_a_differing_stream_digest_falls_back_to_the_read_back(shm_file: Path) -> None:
    data = os.urandom(1 << 20)
    sha, xxh = pins(data)
    shm_file.write_bytes(data)
    ok, why = verify(str(shm_file), len(data), sha, xxh, "xxh3_128:" + "0" * 32)
    assert ok and "read back" in why, why  # the file is right: the read-back decides
    shm_file.write_bytes(b"x" + data[1:])
    ok, why = verify(str(shm_file), len(data), sha, xxh, "xxh3_128:" + "0" * 32)
    assert not ok and "the image's" in why, why
    ok, why = verify(str(shm_file), len(data), sha, xxh, "")  # no -digest from nettee
    assert not ok, why


def test_on_a_disk_the_target_is_read_back(tmp_path: Path) -> None:
    if filesystem_type(str(tmp_path)) in ("tmpfs", "ramfs"):
        pytest.skip(f"{tmp_path} is on a memory filesystem here")
    data = os.urandom(1 << 20)
    sha, xxh = pins(data)
    target = tmp_path / "disk.img"
    target.write_bytes(b"x" + data[1:])  # differs from the image, nettee's digest says not
    ok, why = verify(str(target), len(data), sha, xxh, f"xxh3_128:{xxh}")
    assert not ok and "the image's" in why, why
    target.write_bytes(data)
    ok, why = verify(str(target), len(data), sha, xxh, f"xxh3_128:{xxh}")
    assert ok and "read back" in why, why


def test_a_device_is_read_back(tmp_path: Path) -> None:
    # /dev/zero: not a regular file, so never taken on nettee's word
    zeros = bytes(4096)
    sha, xxh = pins(zeros)
    ok, why = verify("/dev/zero", 4096, sha, xxh, f"xxh3_128:{xxh}")
    assert ok and "read back from /dev/zero" in why, why
