"""Text that reaches a terminal or a log line (pure logic).

Node names and reasons come from the command line, the environment and,
above all, from peers over the network; none of them may move the cursor,
recolour the terminal, forge a line of the root's report or fill a screen.
"""

from __future__ import annotations

NAME_MAX = 127  # a node name, as the man page bounds -name
SHOWN_MAX = 80  # a bad value quoted in a usage error


def printable(value: object, limit: int = NAME_MAX) -> str:
    """``value`` as text that is safe on a terminal or in a log line.

    Control and format characters (ESC, newline, bidi overrides, ...) are
    written as escapes (``\\x1b``, ``\\n``, ``\\u202e``), and the result has at
    most ``limit`` characters: a longer one is cut and ends in ``...``.
    A clean, short text is returned unchanged.
    """
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit and text.isprintable():
        return text
    out: list[str] = []
    used = 0
    for c in text:
        piece = c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
        if used + len(piece) > limit:
            while out and used + 3 > limit:
                used -= len(out.pop())
            return "".join(out) + "..."[:limit]
        out.append(piece)
        used += len(piece)
    return "".join(out)


def escaped(text: str) -> str:
    """``text`` with every unprintable character escaped, nothing cut (a log line)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)  # fmt: skip


def shown(value: str, limit: int = SHOWN_MAX) -> str:
    """A bad value as a usage error quotes it: ``repr`` (so control characters are
    escaped), the first ``limit`` characters of a longer one and its length."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"
