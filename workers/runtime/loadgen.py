"""Open-loop load against the router: send at the trace's times, whatever the server's pace.

A closed loop (send the next request when the last returns) hides overload: a slow server slows the
client down. The seed systems replay traces open-loop, and so does `paretoserve load`: every request is
sent at its scheduled time as its own asyncio task, and latency is measured from that time. What a request
is comes from a `Requests` kind: `DigitsRequests` sends held-out digits to ``/v2/pipelines/{p}/infer`` and
reads one ``LABEL`` (`replay`), `paretoserve.workers.runtime.completions.CompletionRequests` streams OpenAI
completions of held-out arithmetic prompts; either way every answer is checked against the held-out truth,
so the run reports accuracy. The run is bounded: at most ``max_requests`` requests, at most
``max_in_flight`` outstanding (beyond that a request is counted as an ``overload`` error instead of sent),
every request has a timeout, and stragglers are cancelled ``drain_timeout_s`` after the last send. A request
counts as served only when its whole answer arrived with status 200; anything else is an error of a named kind.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

import httpx
import numpy as np
import numpy.typing as npt

INPUT_NAME = "IMAGE"
LABEL_OUTPUT = "LABEL"


@dataclass(frozen=True)
class RequestRecord:
    """One request of a replay."""

    offset_s: float
    """Scheduled send time, seconds from the start of the replay."""
    sent_at: float
    """Wall-clock time it was scheduled for (``time.time()`` base), for timelines."""
    latency_ms: float | None
    error: str | None
    """``None`` when it succeeded; else ``http_<status>``, ``timeout``, ``connect``, ``overload``, …"""
    label: int | str
    """The held-out truth: a digit's label, or an arithmetic problem's answer text."""
    predicted: int | str | None = None
    """What was served: the ``LABEL``, or the completion's text."""
    retried: bool = False
    """Sent twice: the first attempt's kept-alive connection was closed under it (see `replay`)."""
    nodes: Mapping[str, tuple[float, float]] | None = None
    """A multi-stage pipeline's per-stage [start, end] in ms since the router received the request (its
    ``parameters.nodes``), when it answered them."""
    variant: str | None = None
    """The model that served a generation request (the router's ``x-paretoserve-variant``)."""
    ttft_ms: float | None = None
    """A streamed answer's first token, ms after the request's scheduled time (received by the client)."""
    gaps_ms: tuple[float, ...] | None = None
    """A streamed answer's gaps between consecutive tokens as the client received them (0 when several came in
    one read)."""
    prompt: str | None = None


@dataclass(frozen=True)
class LoadSettings:
    url: str
    """The router's base URL, e.g. ``http://127.0.0.1:8080``."""
    pipeline: str
    deadline_header: str | None = None
    deadline_ms: float | None = None
    """Sent in ``deadline_header`` with every request (the pipeline's SLO)."""
    request_timeout_s: float = 10.0
    max_in_flight: int = 256
    max_requests: int = 200_000
    drain_timeout_s: float = 30.0


@dataclass(frozen=True)
class Outcome:
    """What one answer said (a `Requests` kind reads it); the replay adds the timing and the truth."""

    error: str | None
    predicted: int | str | None = None
    nodes: Mapping[str, tuple[float, float]] | None = None
    variant: str | None = None
    ttft_ms: float | None = None
    gaps_ms: tuple[float, ...] | None = None


class Requests(Protocol):
    """One kind of request a replay sends: where, what (the i-th of the replay) and how its answer is read."""

    def url(self, settings: LoadSettings) -> str: ...

    def label(self, i: int) -> int | str:
        """The held-out truth of the i-th request."""
        ...

    def prompt(self, i: int) -> str | None: ...

    async def send(self, client: httpx.AsyncClient, url: str, i: int, headers: Mapping[str, str],
                   started: float) -> Outcome:
        """Send the i-th request, read its answer. ``started`` is its scheduled time on the event loop's clock.
        A transport error before the answer started propagates (the replay maps it to a kind, or retries a
        kept-alive connection closed under it); once the answer started, failures are an `Outcome` error."""
        ...


def infer_body(image: npt.NDArray[np.float32]) -> dict[str, Any]:
    """KServe v2 JSON body with one ``IMAGE`` of shape ``[1, 8, 8]``."""
    return {"inputs": [{"name": INPUT_NAME, "shape": [1, *image.shape], "datatype": "FP32",
                        "data": [round(float(x), 6) for x in image.ravel()]}]}


def predicted_label(payload: Any) -> int | None:
    """The ``LABEL`` output of a KServe v2 response (None if absent or malformed)."""
    if not isinstance(payload, dict):
        return None
    for output in payload.get("outputs", []) or []:
        if isinstance(output, dict) and output.get("name") == LABEL_OUTPUT:
            data = output.get("data")
            while isinstance(data, list) and data:
                data = data[0]
            if isinstance(data, int | float):
                return int(data)
    return None


class ProgressBar:
    """A one-line progress bar on a terminal (a line every 10 s otherwise)."""

    def __init__(self, total_s: float, stream: TextIO = sys.stderr, width: int = 30) -> None:
        self._total_s = max(total_s, 1e-9)
        self._stream = stream
        self._width = width
        self._tty = stream.isatty()
        self._last_line = -1e9

    def update(self, elapsed_s: float, sent: int, ok: int, failed: int, in_flight: int, p99_ms: float | None) -> None:
        share = min(1.0, elapsed_s / self._total_s)
        filled = int(share * self._width)
        tail = f"p99 {p99_ms:.0f} ms" if p99_ms is not None else "p99 -"
        text = (f"[{'#' * filled}{'.' * (self._width - filled)}] {elapsed_s:5.0f}/{self._total_s:.0f}s "
                f"sent {sent} ok {ok} failed {failed} in-flight {in_flight} {tail}")
        if self._tty:
            self._stream.write("\r" + text + "\x1b[K")
            self._stream.flush()
        elif elapsed_s - self._last_line >= 10:
            self._stream.write(text + "\n")
            self._last_line = elapsed_s

    def close(self) -> None:
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()


def node_spans(payload: Any) -> dict[str, tuple[float, float]] | None:
    """The router's per-stage spans of a pipeline response (``parameters.nodes``, a JSON object of stage ->
    [start, end] ms); None when absent or malformed."""
    parameters = payload.get("parameters") if isinstance(payload, dict) else None
    text = parameters.get("nodes") if isinstance(parameters, dict) else None
    if not isinstance(text, str):
        return None
    try:
        raw = json.loads(text)
    except ValueError:
        return None
    if not isinstance(raw, dict):
        return None
    spans: dict[str, tuple[float, float]] = {}
    for stage, span in raw.items():
        if not (isinstance(span, list) and len(span) == 2 and all(isinstance(v, int | float) for v in span)):
            return None
        spans[str(stage)] = (float(span[0]), float(span[1]))
    return spans


class DigitsRequests:
    """Held-out digits to ``/v2/pipelines/{pipeline}/infer``, one ``LABEL`` read from each answer."""

    def __init__(self, images: npt.NDArray[np.float32], labels: npt.NDArray[np.int64], count: int) -> None:
        self._labels = labels
        self._bodies = [infer_body(images[i % len(images)]) for i in range(min(len(images), count))]

    def url(self, settings: LoadSettings) -> str:
        return f"{settings.url.rstrip('/')}/v2/pipelines/{settings.pipeline}/infer"

    def label(self, i: int) -> int:
        return int(self._labels[i % len(self._labels)])

    def prompt(self, i: int) -> None:
        return None

    async def send(self, client: httpx.AsyncClient, url: str, i: int, headers: Mapping[str, str],
                   started: float) -> Outcome:
        response = await client.post(url, json=self._bodies[i % len(self._bodies)], headers=dict(headers))
        if response.status_code != 200:
            return Outcome(f"http_{response.status_code}")
        payload = response.json()
        predicted = predicted_label(payload)
        return Outcome(None if predicted is not None else "bad_response", predicted, node_spans(payload))


async def replay(settings: LoadSettings, offsets: Sequence[float], images: npt.NDArray[np.float32],
                 labels: npt.NDArray[np.int64], *, progress: ProgressBar | None = None,
                 clock: Callable[[], float] = time.time,
                 transport: httpx.AsyncBaseTransport | None = None) -> list[RequestRecord]:
    """Send one digit per offset (seconds from now); return the records in send order."""
    requests = DigitsRequests(images, labels, min(len(offsets), settings.max_requests))
    return await replay_requests(settings, offsets, requests, progress=progress, clock=clock, transport=transport)


async def replay_requests(settings: LoadSettings, offsets: Sequence[float], requests: Requests, *,
                          progress: ProgressBar | None = None, clock: Callable[[], float] = time.time,
                          transport: httpx.AsyncBaseTransport | None = None) -> list[RequestRecord]:
    """Send one request of ``requests`` per offset (seconds from now); return the records in send order."""
    offsets = list(offsets)[: settings.max_requests]
    url = requests.url(settings)
    headers = {}
    if settings.deadline_header and settings.deadline_ms is not None:
        headers[settings.deadline_header] = f"{settings.deadline_ms:g}"
    records: list[RequestRecord | None] = [None] * len(offsets)
    recent: list[float] = []
    counts = {"ok": 0, "failed": 0, "in_flight": 0}
    limits = httpx.Limits(max_connections=settings.max_in_flight, max_keepalive_connections=64)
    timeout = httpx.Timeout(settings.request_timeout_s, connect=min(settings.request_timeout_s, 2.0))
    loop = asyncio.get_running_loop()
    start_mono = loop.time()
    start_wall = clock()

    retried: set[int] = set()

    def record(i: int, latency: float | None, outcome: Outcome) -> RequestRecord:
        return RequestRecord(offsets[i], start_wall + offsets[i], latency, outcome.error, requests.label(i),
                             outcome.predicted, i in retried, outcome.nodes, outcome.variant, outcome.ttft_ms,
                             outcome.gaps_ms, requests.prompt(i))

    def finish(i: int, latency: float | None, outcome: Outcome) -> None:
        records[i] = record(i, latency, outcome)
        counts["failed" if outcome.error else "ok"] += 1
        if latency is not None:
            recent.append(latency)
            del recent[:-500]

    async def one(client: httpx.AsyncClient, i: int) -> None:
        scheduled = start_mono + offsets[i]
        try:
            try:
                outcome = await requests.send(client, url, i, headers, scheduled)
            except (httpx.RemoteProtocolError, httpx.ReadError):
                # the server closed a kept-alive connection as this request reused it (a pod shutting down):
                # like HTTP clients generally, send the request once more on a fresh connection (no answer had
                # started, so nothing was served twice); the record says so, and the latency counts from the first
                # attempt
                retried.add(i)
                outcome = await requests.send(client, url, i, headers, scheduled)
            finish(i, (loop.time() - scheduled) * 1e3, outcome)
        except httpx.TimeoutException:
            finish(i, None, Outcome("timeout"))
        except httpx.ConnectError:
            finish(i, None, Outcome("connect"))
        except (httpx.HTTPError, ValueError) as exc:
            finish(i, None, Outcome(type(exc).__name__))
        except asyncio.CancelledError:
            finish(i, None, Outcome("cancelled"))
            raise
        finally:
            counts["in_flight"] -= 1

    def report() -> None:
        if progress is not None:
            p99 = float(np.percentile(recent, 99)) if recent else None
            progress.update(loop.time() - start_mono, counts["ok"] + counts["failed"] + counts["in_flight"],
                            counts["ok"], counts["failed"], counts["in_flight"], p99)

    tasks: set[asyncio.Task[None]] = set()
    async with httpx.AsyncClient(limits=limits, timeout=timeout, transport=transport) as client:
        last_report = 0.0
        for i, offset in enumerate(offsets):
            delay = start_mono + offset - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if counts["in_flight"] >= settings.max_in_flight:
                finish(i, None, Outcome("overload"))
            else:  # counted as it is created: a loop behind schedule starts several before any of them runs
                counts["in_flight"] += 1
                task = asyncio.create_task(one(client, i))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if loop.time() - last_report >= 0.25:
                last_report = loop.time()
                report()
        drain_until = loop.time() + settings.drain_timeout_s
        while tasks and loop.time() < drain_until:
            await asyncio.wait(set(tasks), timeout=0.25)
            report()
        for task in list(tasks):
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
    report()
    if progress is not None:
        progress.close()
    return [r if r is not None else record(i, None, Outcome("cancelled")) for i, r in enumerate(records)]


def run_replay(settings: LoadSettings, offsets: Sequence[float], images: npt.NDArray[np.float32],
               labels: npt.NDArray[np.int64], *, progress: ProgressBar | None = None) -> list[RequestRecord]:
    """`replay` of digits in a fresh event loop (`run_requests`)."""
    requests = DigitsRequests(images, labels, min(len(offsets), settings.max_requests))
    return run_requests(settings, offsets, requests, progress=progress)


def run_requests(settings: LoadSettings, offsets: Sequence[float], requests: Requests, *,
                 progress: ProgressBar | None = None) -> list[RequestRecord]:
    """`replay_requests` in a fresh event loop (the blocking entry point for the CLI).

    Everything allocated so far (torch, sklearn, the planner) is moved out of the garbage collector's
    reach first: otherwise a full collection walks that heap every ~15 s and stalls the event loop for
    ~200 ms, which shows up as latency spikes that the served pipeline never caused.
    """
    gc.collect()
    gc.freeze()
    try:
        return asyncio.run(replay_requests(settings, offsets, requests, progress=progress))
    finally:
        gc.unfreeze()
