"""Safe file names under a served root, shared by the TFTP and HTTP servers.

A client's file name is untrusted. :func:`resolve` refuses, with a reason
that the server logs: absolute paths (after stripping the leading ``/`` that
many PXE ROMs send), any ``..`` component, NUL bytes, backslashes used as
separators, and anything whose real path (symlinks followed) leaves the root.
Only regular files are served.
"""

from __future__ import annotations

import os
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


def resolve(root: str | os.PathLike[str], name: str) -> Path:
    """The real path of ``name`` under ``root``, or :class:`PathRefused`.

    Symlinks inside the root are followed only when their target is inside
    the root too. Raises ``FileNotFoundError`` when the name is safe but does
    not exist.
    """
    rel = clean_name(name)
    base = Path(root).resolve()
    candidate = base.joinpath(*rel.parts)
    real = Path(os.path.realpath(candidate))
    if real != base and base not in real.parents:
        raise PathRefused(f"{name!r} leads outside the root (to {str(real)!r})")
    if not real.exists():
        raise FileNotFoundError(name)
    if not real.is_file():
        raise PathRefused(f"{name!r} is not a regular file")
    return real
