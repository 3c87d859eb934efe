"""beokit.linux: the ctypes system calls, for real."""

from __future__ import annotations

import os
import sys

import pytest

from beokit import linux

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux calls")


@linux_only
def test_tee_duplicates_without_consuming() -> None:
    r1, w1, cap = linux.make_pipe(1 << 20)
    r2, w2, _ = linux.make_pipe(1 << 20)
    try:
        assert cap >= 65536
        os.write(w1, b"hello, tee")
        assert linux.tee(r1, w2, 100) == 10
        assert os.read(r2, 100) == b"hello, tee"
        assert os.read(r1, 100) == b"hello, tee"  # still there
        with pytest.raises(OSError):
            linux.tee(r1, r1, 10)  # EINVAL: the same pipe
    finally:
        for fd in (r1, w1, r2, w2):
            os.close(fd)


@linux_only
def test_syncfs_on_a_directory(tmp_path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        linux.syncfs(fd)
    finally:
        os.close(fd)
    with pytest.raises(OSError):
        linux.syncfs(999_999)  # EBADF


@linux_only
def test_batch_calls_and_layout() -> None:
    import ctypes

    assert linux.SENDMMSG is not None and linux.RECVMMSG is not None
    assert ctypes.sizeof(linux.MMsgHdr) == 64 and linux.MMsgHdr.len.offset == 56
    assert linux.zero_copy_available() or os.environ.get("BEOKIT_NO_SPLICE") == "1"
