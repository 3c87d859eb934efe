"""One line framing: a message is a JSON object with a type ``"t"``, one a line.

The launcher's protocol (``beo run``: hello, work, st, res, hb, done, go)
and beo cast's callback channel (challenge, hi, ok, up, go, result, ...)
both travel this way: :func:`encode` a message, :func:`decode` a line, or
feed bytes as they arrive to a :class:`LineDecoder` (bounded: a line may
not grow past ``max_line`` bytes).  Anything that is not a message is a
:class:`~beokit.errors.WireError`.

Pure: no I/O; the drivers carry the bytes.  Standard library and
:mod:`beokit.errors` only (the launcher ships it to nodes).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import IO, Any

from beokit.errors import WireError

DEFAULT_MAX_LINE = 1 << 20


def encode(msg: Mapping[str, Any]) -> bytes:
    """One message as a compact JSON line."""
    return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """One line (without or with its newline) into a message; :class:`WireError` if it
    is not a JSON object with a string ``"t"``."""
    try:
        msg = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WireError(f"bad message: {exc}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("t"), str):
        raise WireError(f"bad message: {bytes(line[:80])!r}")
    return msg


class LineBuffer:
    """Bytes in as they arrive, whole lines out (blank lines skipped).

    :class:`WireError` once an unfinished line is longer than ``max_line``.
    """

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        self._buf = bytearray()
        self.max_line = max_line

    def lines(self, data: bytes) -> list[bytes]:
        self._buf += data
        out = []
        while (i := self._buf.find(b"\n")) >= 0:
            line = bytes(self._buf[:i])
            del self._buf[: i + 1]
            if line.strip():
                out.append(line)
        if len(self._buf) > self.max_line:
            raise WireError(f"message longer than {self.max_line} bytes")
        return out


class LineDecoder(LineBuffer):
    """A :class:`LineBuffer` that decodes every line (:class:`WireError` at the first bad one)."""

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        return [decode(line) for line in self.lines(data)]


def read_message(stream: IO[bytes], max_line: int = DEFAULT_MAX_LINE) -> dict[str, Any] | None:
    """The next message from a blocking binary stream; None at its end.

    :class:`WireError` if the line is longer than ``max_line`` or not a message.
    """
    line = stream.readline(max_line + 1)
    if not line:
        return None
    if not line.endswith(b"\n") and len(line) > max_line:
        raise WireError(f"message longer than {max_line} bytes")
    return decode(line)
