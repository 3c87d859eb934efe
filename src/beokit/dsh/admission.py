"""Which TCP queries a dshd keeps when more arrive than it holds at once (pure).

A connection is *pending* from its accept until it has proved the shared
secret (with a secret) or until it ends (without one): that is the phase an
unauthenticated peer can hold. A connection that has proved the secret is
*serving* and is never shed. For a new connection from SOURCE, in order:

1. SOURCE already holds ``per_source`` pending connections: its own oldest
   pending connection is shed (one address cannot hold more than that).
2. The table holds ``capacity`` connections: the oldest pending connection
   of the source that holds the most pending connections is shed (ties:
   the source whose oldest one is oldest). A client with one connection
   in flight is therefore shed only when every source holds at most one,
   and then only after every older pending connection.
3. If every connection is serving (only holders of the secret get there),
   the new one is refused: the daemon answers it ``error busy``.

Nothing here touches a socket: keys are numbers, sources are strings; the
daemon carries out what :meth:`Admission.admit` decides.
"""

from __future__ import annotations


class Admission:
    """The connection table of one daemon: at most ``capacity`` connections."""

    def __init__(self, capacity: int, per_source: int) -> None:
        if not 1 <= per_source <= capacity:
            raise ValueError(f"bad per_source {per_source} for capacity {capacity}")
        self.capacity, self.per_source = capacity, per_source
        self._pending: dict[str, dict[int, None]] = {}  # source -> its keys, oldest first
        self._source: dict[int, str] = {}  # pending key -> source
        self._serving: set[int] = set()
        self._next = 0

    def __len__(self) -> int:
        return len(self._source) + len(self._serving)

    def pending(self, source: str | None = None) -> int:
        """Pending connections (of ``source``, or of all sources)."""
        if source is None:
            return len(self._source)
        return len(self._pending.get(source, ()))

    def admit(self, source: str) -> tuple[int | None, list[int]]:
        """A new connection from ``source``: its key (None: refused) and the keys to shed.

        The shed connections are no longer in the table when this returns.
        """
        shed: list[int] = []
        if self.pending(source) >= self.per_source:
            shed.append(self._drop_oldest(source))
        elif len(self) >= self.capacity:
            victim = self._largest_source()
            if victim is None:  # every connection is serving: refuse the new one
                return None, shed
            shed.append(self._drop_oldest(victim))
        key = self._next
        self._next += 1
        self._pending.setdefault(source, {})[key] = None
        self._source[key] = source
        return key, shed

    def serving(self, key: int) -> None:
        """``key`` proved the secret: it is never shed from now on."""
        if self._forget_pending(key):
            self._serving.add(key)

    def done(self, key: int) -> None:
        """``key`` ended (or was shed already: then nothing happens)."""
        self._serving.discard(key)
        self._forget_pending(key)

    def _forget_pending(self, key: int) -> bool:
        source = self._source.pop(key, None)
        if source is None:
            return False
        keys = self._pending[source]
        del keys[key]
        if not keys:
            del self._pending[source]
        return True

    def _drop_oldest(self, source: str) -> int:
        key = next(iter(self._pending[source]))
        self._forget_pending(key)
        return key

    def _largest_source(self) -> str | None:
        best: tuple[int, int] | None = None
        victim = None
        for source, keys in self._pending.items():
            rank = (len(keys), -next(iter(keys)))  # most pending, then oldest first
            if best is None or rank > best:
                best, victim = rank, source
        return victim
