"""beokit.hostlist: NodeSet expansion with a guard against absurd ranges."""

from __future__ import annotations

import pytest

from beokit.errors import UsageError
from beokit.hostlist import expand, fold, read_hostfile, upper_bound


@pytest.mark.parametrize("pattern,bound", [
    ("n[1-5],m[1-3]", 8), ("a[1-10]b[1-10]", 100), ("n[1-99/2]", 50),
    ("n[01-10,20]", 11), ("host1", 1), ("n[1-1000000000]", 1_000_000_000),
    ("n[a-b]", None),
])  # fmt: skip
def test_upper_bound_from_the_ranges_alone(pattern: str, bound: int | None) -> None:
    assert upper_bound(pattern) == bound


@pytest.mark.parametrize("pattern", ["n[1-1000000000]", "n[1-10000000]", "a[1-1000]b[1-1000]"])
def test_absurd_node_sets_are_refused_before_expanding(pattern: str) -> None:
    """Was: an AssertionError traceback ('range too large') or 20 s and 1.7 GB."""
    with pytest.raises(UsageError, match="names about .* hosts: at most 100,000"):
        expand(pattern)


def test_expand_and_fold() -> None:
    assert expand("n[1-3],m1") == ["m1", "n1", "n2", "n3"]
    assert fold(["n1", "n2", "n3"]) == "n[1-3]"
    with pytest.raises(UsageError, match="bad node set"):
        expand("n[1-")


def test_a_hostfile_that_is_not_text(tmp_path) -> None:
    p = tmp_path / "hosts"
    p.write_bytes(b"\xff\xfe\x00n1\n")
    with pytest.raises(UsageError, match="not text"):
        read_hostfile(str(p))
