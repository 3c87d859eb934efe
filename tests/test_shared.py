"""The small shared modules: beokit.auth, beokit.proc, beokit.errors."""

from __future__ import annotations

import subprocess

from hypothesis import given
from hypothesis import strategies as st

from beokit import auth, proc
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
