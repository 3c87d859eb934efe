"""Did the root's input file change while it was streamed? (pure logic)

A file that shrinks, grows or is rewritten in place during the stream
leaves every node with bytes that match no version of it, and every byte
count still agrees.  The root therefore compares the file as it was when
the stream started with the file and the byte count at the end:

* the bytes read must equal the size at the start less the offset the
  stream started from (shrunk: fewer, or EOF early; grown: more);
* the size, the modification time and the change time (``st_ctime``,
  which also moves when a writer resets the modification time) must be
  unchanged.

A change of metadata alone (chmod, a new hard link) also moves the change
time and is reported the same way: from the inode alone it cannot be told
from a write.  A file renamed or replaced by another (a new inode under
the same path) is not a change: the stream read the open file, one
consistent version.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Snapshot:
    """What is known of a regular file at one moment."""

    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Snapshot:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def change(start: Snapshot, offset: int, end: Snapshot, read: int) -> str:
    """Why the stream is not the file (``""``: it is).

    ``offset``: where the stream started reading (0 for ``-in FILE``, the
    position of an inherited stdin otherwise); ``read``: bytes streamed.
    """
    want = max(start.size - offset, 0)
    if read < want:
        what = f"shrank to {end.size} bytes" if end.size < start.size else "ended early"
        return f"it {what}: {read} of {want} bytes read"
    if read > want:
        return f"it grew from {start.size} to {end.size} bytes: {read} bytes read, {want} expected"
    if end.size != start.size:
        return f"its size changed from {start.size} to {end.size} bytes"
    if (end.mtime_ns, end.ctime_ns) != (start.mtime_ns, start.ctime_ns):
        return "it was modified (its modification or change time moved)"
    return ""
