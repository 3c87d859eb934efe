"""Streams larger than 4 GiB: every count is 64-bit and exact."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import child_env, spawn, wait_all

SIZE = 4 * 1024**3 + 123_457  # past 2**32, odd


@pytest.mark.slow
def test_stream_over_4gib_through_three_nodes(tmp_path: Path, port: int) -> None:
    tip = spawn("-bind", "127.0.0.3", "-port", str(port), "-out", "-", "-name", "tip",
                stdout=subprocess.PIPE, env=child_env())  # fmt: skip
    wc = subprocess.Popen(["wc", "-c"], stdin=tip.stdout, stdout=subprocess.PIPE, text=True)
    tip.stdout.close()
    mid = spawn("-bind", "127.0.0.2", "-port", str(port), "-next", "127.0.0.3", "-out",
                "/dev/null", "-name", "mid", env=child_env())  # fmt: skip
    feeder = subprocess.Popen(["head", "-c", str(SIZE), "/dev/zero"], stdout=subprocess.PIPE)
    root = spawn("-root", "-port", str(port), "-next", "127.0.0.2", "-in", "-", "-report",
                 str(tmp_path / "r.json"), stdin=feeder.stdout, env=child_env())  # fmt: skip
    feeder.stdout.close()
    assert wait_all([root, mid, tip, feeder, wc], timeout=300) == [0] * 5
    assert int(wc.stdout.read().strip()) == SIZE  # counted independently at the tip's stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert [n["bytes_in"] for n in report["nodes"]] == [SIZE] * 3
    assert report["nodes"][1]["bytes_out"] == SIZE and report["nodes"][2]["bytes_out"] == SIZE
