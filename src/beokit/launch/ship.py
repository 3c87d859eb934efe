"""The launcher ships itself: a zipapp of the agent's modules, for nodes without beokit.

The remote bootstrap (:data:`beokit.launch.backends.BOOTSTRAP`) asks its
parent for this zip when ``from beokit.launch import agent`` fails there, and
imports the agent from it; a shipped agent ships the same bytes on to its own
children.  :data:`AGENT_MODULES` is every module an agent imports (the test
of the ssh backend runs an agent where beokit is missing).  A run whose
command is a Python program run inside the agent (``beo cast``'s receiver,
with nettee) names the program's modules in its configuration (``ship``), and
they travel in the same zip.

Once the agent is imported, :func:`shipped` removes the zip file and serves
every later import of ``beokit.*`` from the bytes in memory
(:class:`MemoryFinder`): a node keeps no file of ours, and a program that
imports a module late (nettee, when its stream starts) still finds it.

Standard library only.
"""

from __future__ import annotations

import os
import sys
from typing import Any

AGENT_MODULES = ("__init__.py", "errors.py", "framing.py", "net.py", "proc.py",
                 "launch/__init__.py", "launch/plan.py", "launch/backends.py",
                 "launch/listen.py", "launch/leaf.py", "launch/agent.py", "launch/uplink.py",
                 "launch/window.py", "launch/ship.py")  # fmt: skip

_ZIPS: dict[tuple[str, ...], bytes] = {}
_SHIPPED: bytes | None = None  # the zip this agent was shipped (it ships it on as it is)


class MemoryFinder:
    """Imports ``beokit`` and its modules from the files of a zip held in memory."""

    def __init__(self, data: bytes) -> None:
        import io
        import zipfile

        self.zip = zipfile.ZipFile(io.BytesIO(data))  # read as modules are imported
        self.names = set(self.zip.namelist())

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "beokit" and not fullname.startswith("beokit."):
            return None
        import importlib.util

        base = fullname.replace(".", "/")
        for name, package in ((f"{base}/__init__.py", True), (f"{base}.py", False)):
            if name in self.names:
                return importlib.util.spec_from_loader(fullname, self, origin=f"shipped:{name}",
                                                       is_package=package)  # fmt: skip
        return None

    def create_module(self, spec: Any) -> None:
        return None  # the default module object

    def exec_module(self, module: Any) -> None:
        origin = module.__spec__.origin
        name = origin.removeprefix("shipped:")
        exec(self._code(name, origin), module.__dict__)  # noqa: S102 - our own modules

    def _code(self, name: str, origin: str) -> Any:
        """The code of ``name``: its byte code when it was compiled by a Python of ours
        (same magic number), else compiled from its source here."""
        import importlib.util
        import marshal

        if name + "c" in self.names:
            pyc = self.zip.read(name + "c")
            if pyc[:4] == importlib.util.MAGIC_NUMBER:
                return marshal.loads(pyc[16:])
        return compile(self.zip.read(name), origin, "exec")


def pyc_bytes(source: bytes, filename: str) -> bytes:
    """``source`` compiled by this Python, as a ``.pyc`` that zipimport and
    :class:`MemoryFinder` take without checking it against the source (PEP 552,
    unchecked hash-based): a node whose Python has another magic number compiles
    the ``.py`` beside it instead.  Compiling nettee's ~30 modules from source
    costs a node ~0.3 s of CPU."""
    import importlib.util
    import marshal

    code = compile(source, filename, "exec", dont_inherit=True)
    flags = (0b01).to_bytes(4, "little")  # hash-based, unchecked
    return importlib.util.MAGIC_NUMBER + flags + importlib.util.source_hash(source) + \
        marshal.dumps(code)


def shipped(path: str) -> None:
    """Called by the bootstrap when it ran us from a shipped zipapp at ``path``:
    keep its bytes (to ship on), remove the file, and import whatever else of
    beokit is needed later from memory (:class:`MemoryFinder`)."""
    global _SHIPPED
    with open(path, "rb") as fh:
        _SHIPPED = fh.read()
    os.unlink(path)
    sys.meta_path.insert(0, MemoryFinder(_SHIPPED))
    if path in sys.path:
        sys.path.remove(path)


def module_files(root: str, extra: tuple[str, ...]) -> list[str]:
    """The files of :data:`AGENT_MODULES` and ``extra`` (paths below ``beokit/``;
    ``name/`` is every ``.py`` file of that folder), each once, in order."""
    out = list(AGENT_MODULES)
    for rel in extra:
        if rel.endswith("/"):
            folder = os.path.join(root, rel)
            out += [rel + f for f in sorted(os.listdir(folder)) if f.endswith(".py")]
        else:
            out.append(rel)
    return list(dict.fromkeys(out))


def zipapp_bytes(extra: tuple[str, ...] | list[str] = ()) -> bytes:
    """A zip of the agent's modules and ``extra`` ones, importable from ``sys.path``
    (cached).  A shipped agent ships on the zip it was given."""
    if _SHIPPED is not None:
        return _SHIPPED
    key = tuple(extra)
    if key not in _ZIPS:
        import io
        import zipfile

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../beokit
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for rel in module_files(root, key):
                with open(os.path.join(root, rel), "rb") as fh:
                    source = fh.read()
                zf.writestr(f"beokit/{rel}", source)
                zf.writestr(f"beokit/{rel}c", pyc_bytes(source, f"beokit/{rel}"))
        _ZIPS[key] = buf.getvalue()
    return _ZIPS[key]
