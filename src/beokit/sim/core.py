"""A small discrete-event core: a clock, an event heap, a seeded RNG and CPU pools.

Pure Python, no I/O.  Events run in time order; events at the same time run
in the order they were scheduled (a sequence number breaks ties), so a run
is a function of its inputs and its seed alone::

    sim = Simulator(seed=1)
    sim.after(0.5, print, "half a second")
    sim.run()            # -> 0.5 (the clock when the heap ran dry)

:class:`CpuPool` shares a number of cores among the jobs submitted to it
(processor sharing, like the kernel's fair scheduler): n jobs on c cores
each run at min(1, c/n) of a core.  ``cores=None`` is a pool that never
runs short (every job at full speed): a cluster node's own CPU when what
runs on it is the only thing that matters.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable
from typing import Any


class Event(list):
    """One scheduled call: ``[time, seq, fn, args]`` (a list, so that the heap compares
    it natively: time, then the sequence number); :meth:`Simulator.cancel` clears fn."""

    __slots__ = ()

    @property
    def time(self) -> float:
        return self[0]

    @property
    def cancelled(self) -> bool:
        return self[2] is None

    def __repr__(self) -> str:
        name = getattr(self[2], "__qualname__", repr(self[2]))
        return f"Event({self[0]:.6f}, #{self[1]}, {name})"


class SimulationError(RuntimeError):
    """The model scheduled something impossible (in the past, not a number) or ran away."""


class Simulator:
    """The clock and the event heap.  ``rng`` is the only source of randomness."""

    def __init__(self, seed: int = 0) -> None:
        self.now = 0.0
        self.rng = random.Random(seed)
        self.processed = 0
        self._heap: list[Event] = []
        self._seq = itertools.count()

    def at(self, time: float, fn: Callable[..., Any], *args: Any) -> Event:
        """Call ``fn(*args)`` at absolute ``time`` (not before now)."""
        if not time >= self.now:  # also refuses nan
            raise SimulationError(f"event at {time!r} is before now ({self.now!r})")
        ev = Event((float(time), next(self._seq), fn, args))
        heapq.heappush(self._heap, ev)
        return ev

    def after(self, delay: float, fn: Callable[..., Any], *args: Any) -> Event:
        """Call ``fn(*args)`` ``delay`` seconds from now."""
        if not delay >= 0:
            raise SimulationError(f"negative or unknown delay {delay!r}")
        return self.at(self.now + delay, fn, *args)

    @staticmethod
    def cancel(event: Event | None) -> None:
        if event is not None:
            event[2] = None

    @property
    def pending(self) -> int:
        return sum(1 for ev in self._heap if ev[2] is not None)

    def run(self, until: float = math.inf, max_events: int = 20_000_000) -> float:
        """Run events up to time ``until``; returns the clock.

        The clock stops at the last event run (or at ``until`` if events are
        left beyond it).  More than ``max_events`` events is a runaway model.
        """
        heap, pop = self._heap, heapq.heappop
        while heap:
            ev = heap[0]
            if ev[0] > until:
                self.now = until
                return until
            pop(heap)
            fn = ev[2]
            if fn is None:
                continue
            self.now = ev[0]
            self.processed += 1
            if self.processed > max_events:
                raise SimulationError(f"more than {max_events} events: a runaway model?")
            fn(*ev[3])
        return self.now


class CpuPool:
    """Processor sharing: ``cores`` cores shared by every job running now.

    ``submit(work, done, group)`` runs ``work`` CPU-seconds and then calls
    ``done()``.  A job is one thread: it never gets more than one core.  Jobs
    of the same ``group`` (one Python process: its GIL) get at most one core
    between them; jobs without a group are processes of their own.  The
    cores are shared out by water-filling: every job gets the same rate,
    except where its group's cap holds it lower, and what a capped group
    cannot use goes to the others.  ``background`` cores are taken off the
    top (threads that wake now and then, not modelled one by one); other
    programs compete as threads of their own (:meth:`set_competition`).
    ``cores=None``: no contention between groups (every group at up to one
    core).  ``busy`` accumulates the CPU-seconds done.
    """

    def __init__(self, sim: Simulator, cores: float | None, speed: float = 1.0) -> None:
        if cores is not None and not cores > 0:
            raise ValueError(f"a CPU pool needs cores > 0, not {cores!r}")
        if not speed > 0:
            raise ValueError(f"a CPU pool needs speed > 0, not {speed!r}")
        self.sim = sim
        self.cores = cores
        self.speed = speed
        self.busy = 0.0
        self.background = 0.0
        self.others: list[float] = []  # caps of other programs' threads competing (fair share)
        # jobs of one class (no group: None; else their group) all run at the same rate,
        # so each class keeps the service one of its jobs has had since it began
        # (``served``) and a heap of (service at which a job ends, seq, done)
        self._served: dict[object, float] = {}
        self._heaps: dict[object, list[tuple[float, int, Callable[[], Any]]]] = {}
        self._rates: dict[object, float] = {}  # per job of the class
        self._ids = itertools.count()
        self._last = 0.0
        self._next: Event | None = None

    @property
    def running(self) -> int:
        return sum(len(h) for h in self._heaps.values())

    def _share(self) -> dict[object, float]:
        """Each class's per-job rate by water-filling under the caps (GIL: a group's
        jobs share one core; a job alone: one core)."""
        caps = {c: (1.0 if c is None else 1.0 / len(h)) for c, h in self._heaps.items()}
        if self.cores is None:
            return {c: cap * self.speed for c, cap in caps.items()}
        left = max(self.cores - self.background, 0.05 * self.cores)
        jobs = sum(len(h) for h in self._heaps.values()) + len(self.others)
        rates: dict[object, float] = {}
        # water-filling: the lowest caps first, every job the fair share of what is left
        classes = [(cap, c, len(self._heaps[c])) for c, cap in caps.items()]
        classes += [(cap, None, -1) for cap in self.others]  # n = -1: not ours
        for cap, c, n in sorted(classes, key=lambda x: x[0]):
            rate = min(cap, left / jobs)
            left -= rate * abs(n)
            jobs -= abs(n)
            if n > 0:
                rates[c] = rate
        return {c: r * self.speed for c, r in rates.items()}

    def _advance(self) -> None:
        dt = self.sim.now - self._last
        self._last = self.sim.now
        if dt > 0:
            for c, rate in self._rates.items():
                self._served[c] += dt * rate
                self.busy += dt * rate * len(self._heaps[c])
            self.busy += dt * self.background * self.speed

    def _reschedule(self) -> None:
        Simulator.cancel(self._next)
        self._next = None
        self._rates = self._share()
        if self._heaps:
            left = min(max(h[0][0] - self._served[c], 0.0) / self._rates[c]
                       for c, h in self._heaps.items())  # fmt: skip
            self._next = self.sim.after(left, self._complete)

    def set_competition(self, cores: float) -> None:
        """Other programs wanting ``cores`` of CPU: as ceil(cores) threads that always run
        and take their fair share (less when this pool's jobs crowd the cores)."""
        self._advance()
        k = math.ceil(max(0.0, cores) - 1e-9)
        self.others = [cores / k] * k if k else []
        self._reschedule()

    def set_background(self, cores: float) -> None:
        """Cores used by work not modelled job by job (never more than the pool has)."""
        self._advance()
        self.background = max(0.0, cores)
        self._reschedule()

    def submit(self, work: float, done: Callable[[], Any], group: object = None) -> None:
        if not work >= 0:
            raise SimulationError(f"negative or unknown CPU work {work!r}")
        self._advance()
        if group not in self._heaps:
            self._heaps[group] = []
            self._served[group] = 0.0
        heapq.heappush(self._heaps[group], (self._served[group] + work, next(self._ids), done))
        self._reschedule()

    def _complete(self) -> None:
        self._next = None
        self._advance()
        finished = []
        for c in list(self._heaps):
            heap, served = self._heaps[c], self._served[c]
            while heap and heap[0][0] - served <= 1e-9:
                finished.append(heapq.heappop(heap)[1:])
            if not heap:
                del self._heaps[c], self._served[c]
        self._reschedule()
        for _, done in sorted(finished, key=lambda f: f[0]):  # in submission order
            done()
