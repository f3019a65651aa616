"""Earliest-deadline-first admission in front of the upstream calls (Sponge's EDF reordering).

Requests carry their own remaining budget (the deadline header, Sponge's dynamic SLOs). When more
calls want to go upstream than the configured concurrency allows, the waiting ones are released in
order of their absolute deadline, not their arrival, so a request with 20 ms left overtakes one
with 900 ms left. The waiting room is bounded: a request that finds it full is refused at once
with :class:`~.errors.QueueFull` (backpressure), and one whose deadline passes while it waits is
failed with :class:`~.errors.DeadlineExceeded` -- never dropped silently.

A waiter may be ordered by a ``key`` other than its deadline: the pipeline runner queues an agent
workflow's calls by their *latest start* (the request's deadline minus the planned critical path still
ahead of the call, least slack first, as Kairos, LAMaS and Teola schedule), or by arrival (FIFO, the
baseline); the deadline still decides when a waiter has run out of time.

:class:`EdfQueue` is the pure data structure (a binary heap with lazy deletion, tested with an
explicit ``now``); :class:`EdfAdmission` adds the asyncio waiting and the concurrency count, with
an injected clock (``reap()`` fails expired waiters against that clock, so tests need no sleeps).
:class:`ActiveDeadlines` tracks the deadlines of the requests being served, for the
``paretoserve_router_min_deadline_remaining_ms`` gauge the operator reads.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

from paretoserve.workers.router.errors import DeadlineExceeded, QueueFull

Clock = Callable[[], float]
"""Monotonic seconds (``time.monotonic`` in production, a fake in tests)."""

T = TypeVar("T")


class _Entry(Generic[T]):
    __slots__ = ("key", "seq", "deadline", "item", "live")

    def __init__(self, key: float, seq: int, deadline: float, item: T) -> None:
        self.key = key
        self.seq = seq
        self.deadline = deadline
        self.item = item
        self.live = True

    def __lt__(self, other: _Entry[T]) -> bool:
        return (self.key, self.seq) < (other.key, other.seq)


class EdfQueue(Generic[T]):
    """A bounded priority queue by (key, arrival), the key defaulting to the deadline; ``discard`` is O(1)
    (lazy deletion)."""

    def __init__(self, max_size: int) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        self._max_size = max_size
        self._heap: list[_Entry[T]] = []
        self._live = 0
        self._seq = itertools.count()
        self._keyed = False
        """Whether some entry's key differs from its deadline (then expiry scans instead of popping)."""

    def __len__(self) -> int:
        return self._live

    @property
    def max_size(self) -> int:
        return self._max_size

    def push(self, deadline: float, item: T, key: float | None = None) -> _Entry[T]:
        """Queue ``item`` (ordered by ``key``, default its deadline); raises :class:`QueueFull` when ``max_size``
        items already wait."""
        if self._live >= self._max_size:
            raise QueueFull(f"the router queue is full ({self._max_size} requests waiting); retry later")
        if key is None:
            key = deadline
        elif key != deadline:
            self._keyed = True
        entry = _Entry(key, next(self._seq), deadline, item)
        heapq.heappush(self._heap, entry)
        self._live += 1
        return entry

    def discard(self, entry: _Entry[T]) -> None:
        """Remove ``entry`` if still queued (idempotent)."""
        if entry.live:
            entry.live = False
            self._live -= 1

    def _drop_dead(self) -> None:
        while self._heap and not self._heap[0].live:
            heapq.heappop(self._heap)

    def peek_deadline(self) -> float | None:
        """The earliest deadline waiting, or ``None`` when empty."""
        self._drop_dead()
        if not self._heap:
            return None
        if not self._keyed:
            return self._heap[0].deadline
        return min(entry.deadline for entry in self._heap if entry.live)

    def pop(self) -> tuple[float, T] | None:
        """Remove and return the first ``(deadline, item)`` by key, or ``None`` when empty."""
        self._drop_dead()
        if not self._heap:
            return None
        entry = heapq.heappop(self._heap)
        entry.live = False
        self._live -= 1
        return entry.deadline, entry.item

    def expire(self, now: float) -> list[T]:
        """Remove and return every item whose deadline is at or before ``now`` (earliest first)."""
        if not self._keyed:
            expired: list[T] = []
            while (deadline := self.peek_deadline()) is not None and deadline <= now:
                popped = self.pop()
                if popped is not None:
                    expired.append(popped[1])
            return expired
        due = sorted((entry for entry in self._heap if entry.live and entry.deadline <= now),
                     key=lambda entry: (entry.deadline, entry.seq))
        for entry in due:
            self.discard(entry)
        return [entry.item for entry in due]


class EdfAdmission:
    """At most ``concurrency`` holders at once; the others wait in EDF order, bounded by ``max_size``."""

    def __init__(self, *, concurrency: int, max_size: int, clock: Clock = time.monotonic) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self._concurrency = concurrency
        self._queue: EdfQueue[asyncio.Future[None]] = EdfQueue(max_size)
        self._clock = clock
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def queue_length(self) -> int:
        return len(self._queue)

    def earliest_queued_deadline(self) -> float | None:
        return self._queue.peek_deadline()

    async def acquire(self, deadline: float, key: float | None = None) -> None:
        """Wait for a slot in order of ``key`` (default: EDF, the deadline); raises :class:`DeadlineExceeded`
        or :class:`QueueFull`."""
        now = self._clock()
        if deadline <= now:
            raise DeadlineExceeded("the deadline passed before the request could be sent upstream")
        if self._in_flight < self._concurrency and not self._queue:
            self._in_flight += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = self._queue.push(deadline, waiter, key)
        try:
            if math.isinf(deadline):
                await waiter
            else:
                async with asyncio.timeout(deadline - now):
                    await waiter
        except TimeoutError:
            self._queue.discard(entry)
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release()  # granted a slot at the very moment the deadline passed
            raise DeadlineExceeded("the deadline passed while the request was queued") from None
        except asyncio.CancelledError:
            self._queue.discard(entry)
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release()
            raise

    def release(self) -> None:
        """Give a slot back and hand it to the earliest-deadline waiter still in time."""
        self._in_flight -= 1
        now = self._clock()
        while self._in_flight < self._concurrency:
            popped = self._queue.pop()
            if popped is None:
                return
            deadline, waiter = popped
            if waiter.done():
                continue
            if deadline <= now:
                waiter.set_exception(DeadlineExceeded("the deadline passed while the request was queued"))
                continue
            self._in_flight += 1
            waiter.set_result(None)

    def reap(self) -> int:
        """Fail every waiter whose deadline has passed by the clock; returns how many."""
        expired = self._queue.expire(self._clock())
        for waiter in expired:
            if not waiter.done():
                waiter.set_exception(DeadlineExceeded("the deadline passed while the request was queued"))
        return len(expired)

    @asynccontextmanager
    async def slot(self, deadline: float) -> AsyncIterator[None]:
        """``async with admission.slot(deadline):`` holds one slot for the block."""
        await self.acquire(deadline)
        try:
            yield
        finally:
            self.release()


class ActiveDeadlines:
    """Absolute deadlines of the requests being served (queued or in flight), by token."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._deadlines: dict[int, float] = {}
        self._tokens = itertools.count()

    def __len__(self) -> int:
        return len(self._deadlines)

    def add(self, deadline: float) -> int:
        token = next(self._tokens)
        self._deadlines[token] = deadline
        return token

    def remove(self, token: int) -> None:
        self._deadlines.pop(token, None)

    def min_remaining_ms(self) -> float | None:
        """Milliseconds left to the tightest finite deadline (negative once passed), ``None`` if none."""
        finite = [deadline for deadline in self._deadlines.values() if not math.isinf(deadline)]
        if not finite:
            return None
        return (min(finite) - self._clock()) * 1000.0
