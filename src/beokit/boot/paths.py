"""Safe file names under a served root, shared by the TFTP and HTTP servers.

A client's file name is untrusted. :func:`resolve` refuses, with a reason
that the server logs: absolute paths (after stripping the leading ``/`` that
many PXE ROMs send), any ``..`` component, NUL bytes, backslashes used as
separators, and anything whose real path (symlinks followed) leaves the root.
Only regular files are served.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path, PurePosixPath


class PathRefused(Exception):
    """The requested name is refused; ``str(e)`` says why (for the log)."""


def clean_name(name: str) -> PurePosixPath:
    """Validate the *text* of a requested name; return it relative to the root.

    One leading ``/`` is accepted (PXE ROMs often send ``/pxelinux.0``) and
    means "from the root", never the host's ``/``.
    """
    if not name or "\x00" in name:
        raise PathRefused(f"bad file name {name!r}")
    if "\\" in name:
        raise PathRefused(f"backslash in file name {name!r}")
    text = name[1:] if name.startswith("/") and not name.startswith("//") else name
    p = PurePosixPath(text)
    if p.is_absolute():
        raise PathRefused(f"absolute path {name!r}")
    if any(part == ".." for part in p.parts):
        raise PathRefused(f"'..' in file name {name!r}")
    if not p.parts or p == PurePosixPath("."):
        raise PathRefused(f"empty file name {name!r}")
    return p


_ROOTS: dict[str, tuple[str, float]] = {}  # root -> (its real path, when found)
ROOT_TTL = 1.0  # seconds: a root re-pointed (a symlink changed) is seen within this


def _real_root(root: str) -> str:
    now = time.monotonic()
    hit = _ROOTS.get(root)
    if hit is not None and now - hit[1] < ROOT_TTL:
        return hit[0]
    if len(_ROOTS) > 16:
        _ROOTS.clear()
    real = _ROOTS[root] = (os.path.realpath(root), now)
    return real[0]


def resolve(root: str | os.PathLike[str], name: str) -> Path:
    """The real path of ``name`` under ``root``, or :class:`PathRefused`.

    Symlinks inside the root are followed only when their target is inside
    the root too. Raises ``FileNotFoundError`` when the name is safe but does
    not exist.
    """
    rel = clean_name(name)
    # (os.path rather than pathlib: this runs for every request, forged ones included)
    base = _real_root(os.fspath(root))
    real = os.path.realpath(os.path.join(base, *rel.parts))
    if real != base and not real.startswith(base.rstrip("/") + "/"):
        raise PathRefused(f"{name!r} leads outside the root (to {real!r})")
    try:
        st = os.stat(real)
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(name) from None
    if not stat.S_ISREG(st.st_mode):
        raise PathRefused(f"{name!r} is not a regular file")
    return Path(real)
