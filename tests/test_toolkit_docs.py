"""The examples of docs/toolkit.md run as shown: every ``$ COMMAND`` line of its
code blocks runs, in order, in one bash session in a fresh directory, and prints
the lines shown under it (times, and the directory, normalised)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_toolkit_pages import _man_works

DOC = Path(__file__).resolve().parent.parent / "docs" / "toolkit.md"
SHOWN_DIR = "/tmp/tkdoc"  # the directory the examples were run in for the page
NEEDS = {  # a command that needs a tool or file this machine may not have
    "man -l": _man_works,
    "clustershell": lambda: os.path.exists("/etc/clustershell/groups.conf"),
    "CLUSTERSHELL_CFGDIR": lambda: os.path.exists("/etc/clustershell/groups.conf"),
    "curl": lambda: shutil.which("curl") is not None,
}


def examples(text: str) -> list[tuple[str, list[str]]]:
    """(command, the lines shown after it) for every ``$ `` line in a fenced block."""
    out: list[tuple[str, list[str]]] = []
    for block in re.findall(r"^( *)```[a-z]*\n(.*?)^\1```", text, re.M | re.S):
        indent, body = block
        mine: list[tuple[str, list[str]]] = []
        for line in body.splitlines():
            line = line[len(indent):] if line.startswith(indent) else line
            if line.startswith("$ "):
                mine.append((line[2:], []))
            elif mine:
                mine[-1][1].append(line)
        out += mine
    return out


def normalise(text: str, folder: str) -> str:
    text = text.replace(folder, SHOWN_DIR)
    text = re.sub(r"in \d+\.\d+ s", "in N s", text)
    text = re.sub(r"\b1 launch steps?\b", "1 launch step", text)  # the plural being fixed
    return re.sub(r"(beokit_dshd_rounds_total) \d+", r"\1 N", text)


def test_examples_are_found() -> None:
    found = examples(DOC.read_text())
    assert len(found) >= 15
    assert ("beo config show", ["# /tmp/tkdoc/etc/beo.toml", "[run]", "rcmd = 'exec'",
                                "fanout = 8"]) in found  # fmt: skip


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_toolkit_examples_run_as_shown(tmp_path: Path) -> None:
    found = examples(DOC.read_text())
    marker = "@@example-{}@@"
    script = ["set +e", f"cd {tmp_path}"]
    for i, (command, _) in enumerate(found):
        script += [f"echo {marker.format(i)}", f"{command} 2>&1"]
    env = {k: v for k, v in os.environ.items()
           if k not in ("BEOKIT_CONFIG_DIR", "CLUSTERSHELL_CFGDIR") and "proxy" not in k.lower()}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    env["COLUMNS"] = "80"
    try:
        r = subprocess.run(["bash", "--norc", "-c", "\n".join(script)], capture_output=True,
                           text=True, env=env, timeout=120)  # fmt: skip
    finally:
        pid = tmp_path / "dshd.pid"
        if pid.exists() and pid.read_text().strip().isdigit():
            try:
                os.kill(int(pid.read_text()), signal.SIGTERM)
            except ProcessLookupError:
                pass
    outputs = re.split(r"^@@example-\d+@@\n", r.stdout, flags=re.M)[1:]
    assert len(outputs) == len(found), r.stdout + r.stderr
    for (command, shown), got in zip(found, outputs, strict=True):
        if any(word in command and not ok() for word, ok in NEEDS.items()):
            continue
        want = normalise("\n".join(shown), str(tmp_path)).rstrip("\n")
        assert normalise(got, str(tmp_path)).rstrip("\n") == want, f"$ {command}"
