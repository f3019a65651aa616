"""EDF queue and admission with an injected clock; the error tree and its HTTP mapping."""

from __future__ import annotations

import asyncio
import math
import time

import httpx
import pytest

from paretoserve.workers.router.edf import ActiveDeadlines, EdfAdmission, EdfQueue
from paretoserve.workers.router.errors import (
    BadRequest,
    ConfigError,
    DeadlineExceeded,
    NotFound,
    QueueFull,
    RouterError,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    is_backend_failure,
)
from paretoserve.workers.router.upstream import map_transport_errors, status_error


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_queue_pops_earliest_deadline_then_arrival() -> None:
    queue: EdfQueue[str] = EdfQueue(10)
    for deadline, item in [(5.0, "e"), (1.0, "a"), (3.0, "c"), (1.0, "b"), (math.inf, "none")]:
        queue.push(deadline, item)

    popped = [queue.pop() for _ in range(5)]

    assert [item for _, item in popped if _ is not None] == ["a", "b", "c", "e", "none"]  # type: ignore[misc]
    assert queue.pop() is None and len(queue) == 0


def test_queue_is_bounded_and_discard_frees_room() -> None:
    queue: EdfQueue[int] = EdfQueue(2)
    first = queue.push(2.0, 1)
    queue.push(1.0, 2)

    with pytest.raises(QueueFull) as raised:
        queue.push(0.5, 3)
    assert raised.value.status == 429

    queue.discard(first)
    queue.discard(first)  # idempotent
    queue.push(3.0, 4)
    assert len(queue) == 2
    assert [queue.pop(), queue.pop()] == [(1.0, 2), (3.0, 4)]


def test_queue_expires_items_at_or_before_now() -> None:
    queue: EdfQueue[str] = EdfQueue(10)
    for deadline in (4.0, 1.0, 2.0, 9.0):
        queue.push(deadline, f"d{deadline:g}")

    assert queue.expire(now=2.0) == ["d1", "d2"]
    assert queue.peek_deadline() == 4.0 and len(queue) == 2


async def test_admission_serves_waiters_in_deadline_order() -> None:
    clock = FakeClock()
    admission = EdfAdmission(concurrency=1, max_size=10, clock=clock)
    order: list[str] = []
    await admission.acquire(math.inf)  # hold the only slot

    async def request(name: str, budget_s: float) -> None:
        await admission.acquire(clock.now + budget_s)
        order.append(name)
        admission.release()

    tasks = [asyncio.create_task(request(name, budget)) for name, budget in
             [("slack", 50.0), ("tight", 5.0), ("medium", 20.0), ("no-deadline", math.inf), ("tighter", 1.0)]]
    while admission.queue_length < len(tasks):
        await asyncio.sleep(0)
    admission.release()
    await asyncio.gather(*tasks)

    assert order == ["tighter", "tight", "medium", "slack", "no-deadline"]
    assert admission.in_flight == 0 and admission.queue_length == 0


async def test_expired_waiters_get_deadline_exceeded_by_the_injected_clock() -> None:
    clock = FakeClock()
    admission = EdfAdmission(concurrency=1, max_size=10, clock=clock)
    await admission.acquire(math.inf)
    soon = asyncio.create_task(admission.acquire(clock.now + 1.0))
    later = asyncio.create_task(admission.acquire(clock.now + 100.0))
    while admission.queue_length < 2:
        await asyncio.sleep(0)

    clock.now += 2.0
    assert admission.reap() == 1
    with pytest.raises(DeadlineExceeded, match="while the request was queued"):
        await soon
    admission.release()
    await later  # still in time: gets the slot
    assert admission.in_flight == 1


async def test_release_skips_waiters_whose_deadline_passed() -> None:
    clock = FakeClock()
    admission = EdfAdmission(concurrency=1, max_size=10, clock=clock)
    await admission.acquire(math.inf)
    stale = asyncio.create_task(admission.acquire(clock.now + 1.0))
    fresh = asyncio.create_task(admission.acquire(clock.now + 10.0))
    while admission.queue_length < 2:
        await asyncio.sleep(0)
    clock.now += 5.0

    admission.release()

    with pytest.raises(DeadlineExceeded):
        await stale
    await fresh
    assert admission.in_flight == 1


async def test_passed_deadline_and_full_queue_fail_at_once() -> None:
    clock = FakeClock()
    admission = EdfAdmission(concurrency=1, max_size=1, clock=clock)
    with pytest.raises(DeadlineExceeded, match="before the request could be sent"):
        await admission.acquire(clock.now)
    await admission.acquire(math.inf)
    waiting = asyncio.create_task(admission.acquire(math.inf))
    while admission.queue_length < 1:
        await asyncio.sleep(0)

    with pytest.raises(QueueFull):
        await admission.acquire(math.inf)

    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert admission.queue_length == 0
    admission.release()
    assert admission.in_flight == 0


async def test_real_timer_expires_a_queued_request() -> None:
    admission = EdfAdmission(concurrency=1, max_size=4)  # the real monotonic clock
    await admission.acquire(math.inf)

    with pytest.raises(DeadlineExceeded, match="queued"):
        await admission.acquire(time.monotonic() + 0.01)
    assert admission.queue_length == 0


async def test_slot_context_releases_on_error() -> None:
    admission = EdfAdmission(concurrency=2, max_size=4, clock=FakeClock())
    with pytest.raises(RuntimeError):
        async with admission.slot(math.inf):
            assert admission.in_flight == 1
            raise RuntimeError("boom")
    assert admission.in_flight == 0


def test_active_deadlines_report_the_tightest_remaining_budget() -> None:
    clock = FakeClock(10.0)
    active = ActiveDeadlines(clock)
    assert active.min_remaining_ms() is None
    a = active.add(10.5)
    active.add(math.inf)
    active.add(12.0)

    assert active.min_remaining_ms() == pytest.approx(500.0)
    active.remove(a)
    clock.now = 11.0
    assert active.min_remaining_ms() == pytest.approx(1000.0)


@pytest.mark.parametrize(
    ("error", "status", "reason"),
    [
        (RouterError("x"), 500, "internal"),
        (BadRequest("x"), 400, "bad_request"),
        (ConfigError("a.b", "x"), 400, "bad_config"),
        (NotFound("x"), 404, "not_found"),
        (QueueFull("x"), 429, "queue_full"),
        (DeadlineExceeded("x"), 504, "deadline_exceeded"),
        (UpstreamError("x", model="m"), 502, "upstream_error"),
        (UpstreamTimeout("x", model="m"), 504, "upstream_timeout"),
        (UpstreamUnavailable("x", model="m"), 503, "upstream_unavailable"),
        (UpstreamRejected("x", model="m", status=422), 422, "upstream_rejected"),
    ],
)
def test_every_error_declares_its_status_and_body(error: RouterError, status: int, reason: str) -> None:
    error.at_stage("classify").at_stage("ignored")

    body = error.body()

    assert (error.status, error.reason) == (status, reason)
    assert body["status"] == status and body["reason"] == reason and body["stage"] == "classify"
    assert body["error"].endswith("x")


def test_only_backend_failures_allow_retry_and_fallback() -> None:
    assert is_backend_failure(UpstreamTimeout("x", model="m"))
    assert is_backend_failure(UpstreamUnavailable("x", model="m"))
    for error in (UpstreamRejected("x", model="m"), DeadlineExceeded("x"), QueueFull("x"), BadRequest("x")):
        assert not is_backend_failure(error)


@pytest.mark.parametrize(
    ("status", "kind"),
    [(500, UpstreamUnavailable), (503, UpstreamUnavailable), (404, UpstreamUnavailable),
     (429, UpstreamUnavailable), (504, UpstreamTimeout), (400, UpstreamRejected), (422, UpstreamRejected)],
)
def test_upstream_status_mapping(status: int, kind: type[UpstreamError]) -> None:
    error = status_error("cnn_large", "http://h:1", status, b'{"error":"model is not ready"}')

    assert type(error) is kind
    assert "model is not ready" in error.message and error.model == "cnn_large"
    assert error.status == (status if kind is UpstreamRejected else kind.default_status)


@pytest.mark.parametrize(
    ("raised", "kind"),
    [(httpx.ConnectError("refused"), UpstreamUnavailable), (httpx.ReadError("reset"), UpstreamUnavailable),
     (httpx.RemoteProtocolError("bad"), UpstreamUnavailable), (httpx.ConnectTimeout("slow"), UpstreamTimeout),
     (httpx.ReadTimeout("slow"), UpstreamTimeout), (httpx.PoolTimeout("busy"), UpstreamTimeout)],
)
def test_transport_errors_are_mapped_and_chained(raised: Exception, kind: type[UpstreamError]) -> None:
    with pytest.raises(kind) as caught, map_transport_errors("m", "http://h:1"):
        raise raised

    assert caught.value.__cause__ is raised
    assert caught.value.url == "http://h:1"
