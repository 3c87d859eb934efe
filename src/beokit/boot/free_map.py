"""Which slots of a range are taken, and the first free one from a start: no I/O.

The lease table asks, for every DISCOVER of a new client, for the first pool
address at or after the client's hash (wrapping round) that no lease, offer,
decline or fixed host holds, and for auto-admission the lowest free node
number.  Probing address after address in Python made a DISCOVER cost
O(pool size) once the pool filled up (65 ms for a full /16).  Here each
slot has a count of holders in a ``bytearray`` (one byte per slot), and the
slots are grouped in blocks of :data:`BLOCK` with a byte per block saying
whether it is full; the search is ``bytearray.find`` (``memchr``, in C) in
the start's block, then over the block bytes for the next block with room,
then in that block: at most 2 x 4 KiB + size / 4 KiB bytes scanned, a few
microseconds for 65,536 slots, whatever the pool's state.  Taking and giving
back a slot is O(1).
"""

from __future__ import annotations

BLOCK = 4096  # slots per block


class FreeMap:
    """``size`` slots, each held by 0-255 holders; :meth:`first_free` finds one held
    by none."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.counts = bytearray(size)
        nblocks = (size + BLOCK - 1) // BLOCK
        self.used = [0] * nblocks  # slots held in each block
        self.full = bytearray(nblocks)  # 1: no free slot in this block
        self.taken = 0  # slots held by anyone

    def _block_size(self, b: int) -> int:
        return min(BLOCK, self.size - b * BLOCK)

    def take(self, i: int) -> None:
        """One more holder of slot ``i``."""
        c = self.counts[i]
        if c == 255:
            raise OverflowError(f"slot {i} has 255 holders")
        self.counts[i] = c + 1
        if c == 0:
            self.taken += 1
            b = i // BLOCK
            self.used[b] += 1
            if self.used[b] == self._block_size(b):
                self.full[b] = 1

    def give(self, i: int) -> None:
        """One holder less of slot ``i`` (nothing if it had none)."""
        c = self.counts[i]
        if c == 0:
            return
        self.counts[i] = c - 1
        if c == 1:
            self.taken -= 1
            b = i // BLOCK
            self.used[b] -= 1
            self.full[b] = 0

    def is_free(self, i: int) -> bool:
        return self.counts[i] == 0

    def first_free(self, start: int) -> int | None:
        """The first free slot at or after ``start``, wrapping round; None when all are
        held."""
        size, counts, full = self.size, self.counts, self.full
        if not size or self.taken >= size:
            return None
        b = start // BLOCK
        i = counts.find(0, start, min((b + 1) * BLOCK, size))
        if i >= 0:
            return i
        nb = full.find(0, b + 1)
        if nb < 0:
            nb = full.find(0, 0, b + 1)
        if nb < 0:
            return None
        lo = nb * BLOCK
        i = counts.find(0, lo, min(lo + BLOCK, size))
        return i if i >= 0 else None
