"""The launcher ships itself: a zipapp of the agent's modules, for nodes without beokit.

The remote bootstrap (:data:`beokit.launch.backends.BOOTSTRAP`) asks its
parent for this zip when ``from beokit.launch import agent`` fails there, and
imports the agent from it; a shipped agent ships the same bytes on to its own
children.  :data:`AGENT_MODULES` is every module an agent imports (the test
of the ssh backend runs an agent where beokit is missing).

Standard library only.
"""

from __future__ import annotations

import os

AGENT_MODULES = ("__init__.py", "errors.py", "framing.py", "net.py", "proc.py",
                 "launch/__init__.py", "launch/plan.py", "launch/backends.py",
                 "launch/listen.py", "launch/leaf.py", "launch/agent.py",
                 "launch/ship.py")  # fmt: skip

_ZIP: bytes | None = None


def shipped(path: str) -> None:
    """Called by the bootstrap when it ran us from a shipped zipapp at ``path``:
    keep its bytes (to ship on) and remove the file (every module the agent
    needs is imported already)."""
    global _ZIP
    with open(path, "rb") as fh:
        _ZIP = fh.read()
    os.unlink(path)


def zipapp_bytes() -> bytes:
    """A zip of the agent's modules, importable from ``sys.path`` (cached)."""
    global _ZIP
    if _ZIP is None:
        import io
        import zipfile

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../beokit
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for rel in AGENT_MODULES:
                with open(os.path.join(root, rel), "rb") as fh:
                    zf.writestr(f"beokit/{rel}", fh.read())
        _ZIP = buf.getvalue()
    return _ZIP
