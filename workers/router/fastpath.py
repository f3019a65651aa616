"""The router's compiled front (``native/fastpath``): the plain model proxy at proxy speed, driven from here.

Why it exists: a proxied model's ``POST /v2/models/{m}/infer`` goes through uvicorn, Starlette and the
router's checks for ~0.4 ms of CPU per request; issue 13 asks for <= 1 ms added p99 at 1,000 requests/s and
>= 10,000 requests/s per router core, which no Python per-request path reaches. ``paretoserve router
--fastpath BIN`` puts the Rust binary ``paretoserve-fastpath`` on the data port: it serves that one path
itself (deadline header, body limit, EDF admission, replica rotation with retries, the same error JSON) and
passes every other request (pipelines, metadata, token streams, health) to the Python data listener, which
then listens on a loopback port behind it.

What stays defined once, here in Python: the configuration. The fast path holds no config of its own; it
serves from a *table* (:func:`fastpath_table`, a pure rendering of the validated :class:`RouterConfig` and
:class:`RequestLimits`) that :class:`FastPathFront` publishes over a Unix socket (0600, in a private
directory) at start and, on every live update, *before* the Python side swaps the new config in, so the
two sides never serve different upstreams. Its counters are pulled at scrape time and folded into
:class:`~.metrics.RouterMetrics` (:func:`stats_delta`), so ``/metrics`` keeps one set of series whichever
side served a request; its queue and deadlines join the two gauges.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from paretoserve.workers.router.config import RouterConfig
from paretoserve.workers.router.limits import RequestLimits

logger = logging.getLogger(__name__)

BINARY_NAME = "paretoserve-fastpath"
_REPO_BUILD = Path(__file__).resolve().parents[2] / "native" / "fastpath" / "target" / "release" / BINARY_NAME


class FastPathError(RuntimeError):
    """The fast path could not be found, started or updated."""


def find_binary(explicit: str | None = None) -> Path:
    """``explicit`` if it is an executable file, else ``paretoserve-fastpath`` on PATH, else the repository's
    release build; :class:`FastPathError` naming where it looked."""
    candidates = [Path(explicit)] if explicit else []
    on_path = shutil.which(BINARY_NAME)
    if not explicit:
        candidates += [Path(on_path)] if on_path else []
        candidates.append(_REPO_BUILD)
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    looked = ", ".join(str(candidate) for candidate in candidates) or BINARY_NAME
    raise FastPathError(f"no executable {BINARY_NAME} (looked at {looked}; build it with "
                        f"`cargo build --release --manifest-path native/fastpath/Cargo.toml`)")


def fastpath_table(config: RouterConfig, limits: RequestLimits) -> dict[str, Any]:
    """The table the fast path serves from: every model the router proxies over plain HTTP (the pipeline's
    own name is served by Python), with the limits, deadline rule, queue and timeouts the Python side
    applies to the same requests."""
    models = {model: list(urls) for model, urls in config.upstreams.items()
              if model != config.pipeline and urls and all(url.startswith("http://") for url in urls)}
    timeouts = config.timeouts
    return {
        "pipeline": config.pipeline,
        "models": models,
        "deadline_header": config.deadline_header.lower(),
        "default_deadline_ms": timeouts.default_deadline_ms,
        "max_deadline_ms": config.slo_ms or limits.max_deadline_ms,
        "max_body_bytes": limits.max_body_bytes,
        "max_upstream_bytes": limits.max_upstream_bytes,
        "max_header_bytes": limits.max_header_bytes,
        "read_timeout_s": limits.read_timeout_s,
        "keep_alive_s": limits.keep_alive_s,
        "max_requests_per_connection": limits.max_requests_per_connection,
        "limit_concurrency": limits.limit_concurrency,
        "queue_concurrency": config.queue.concurrency,
        "queue_max_size": config.queue.max_size,
        "connect_ms": timeouts.connect_ms,
        "read_ms": timeouts.read_ms,
        "write_ms": timeouts.write_ms,
        "pool_ms": timeouts.pool_ms,
        "max_keepalive_connections": config.limits.max_keepalive_connections,
        "keepalive_expiry_s": config.limits.keepalive_expiry_s,
    }


@dataclass(frozen=True)
class ModelFigures:
    """One proxied model's cumulative figures on the fast path."""

    rows: int = 0
    buckets: tuple[int, ...] = ()
    """Observations per latency bucket (not cumulative), in :data:`~.metrics.LATENCY_BUCKETS` order."""
    seconds: float = 0.0


@dataclass(frozen=True)
class FastPathStats:
    """A snapshot of the fast path's counters (cumulative since it started) and its two gauges."""

    proxied: Mapping[str, ModelFigures] = field(default_factory=dict)
    errors: Mapping[str, int] = field(default_factory=dict)
    upstream_failures: Mapping[tuple[str, str], int] = field(default_factory=dict)
    queue_length: int = 0
    min_deadline_remaining_ms: float | None = None

    @staticmethod
    def parse(raw: bytes) -> FastPathStats:
        """The snapshot ``GET /stats`` answers (see ``native/fastpath/README.md``)."""
        body = orjson.loads(raw)
        proxied = {
            model: ModelFigures(int(figures["rows"]), tuple(int(n) for n in figures["duration"]["buckets"]),
                                float(figures["duration"]["sum"]))
            for model, figures in body["proxied"].items()
        }
        failures = {(model, reason): int(n) for model, reasons in body["upstream_failures"].items()
                    for reason, n in reasons.items()}
        remaining = body["min_deadline_remaining_ms"]
        return FastPathStats(proxied, {reason: int(n) for reason, n in body["errors"].items()}, failures,
                             int(body["queue_length"]), None if remaining is None else float(remaining))


def stats_delta(before: FastPathStats, after: FastPathStats) -> FastPathStats:
    """What happened between two snapshots (counters only; the gauges are ``after``'s)."""
    empty = ModelFigures()
    proxied = {}
    for model, now in after.proxied.items():
        was = before.proxied.get(model, empty)
        was_buckets = was.buckets or (0,) * len(now.buckets)
        proxied[model] = ModelFigures(now.rows - was.rows,
                                      tuple(n - m for n, m in zip(now.buckets, was_buckets, strict=True)),
                                      now.seconds - was.seconds)
    errors = {reason: n - before.errors.get(reason, 0) for reason, n in after.errors.items()}
    failures = {key: n - before.upstream_failures.get(key, 0) for key, n in after.upstream_failures.items()}
    return FastPathStats(proxied, errors, failures, after.queue_length, after.min_deadline_remaining_ms)


class FastPathFront:
    """The ``paretoserve-fastpath`` process on the data port, its control socket and its last snapshot."""

    def __init__(self, binary: Path, *, host: str, port: int, fallback_url: str, threads: int = 1) -> None:
        self._binary = binary
        self._listen = f"{host}:{port}"
        self._host = host
        self._fallback_url = fallback_url
        self._threads = threads
        self._dir = Path(tempfile.mkdtemp(prefix="paretoserve-fastpath-"))  # 0700: only this user reaches it
        self.control_path = self._dir / "control.sock"
        self._process: asyncio.subprocess.Process | None = None
        self._client: httpx.AsyncClient | None = None
        self._seen = FastPathStats()
        self.port: int | None = None
        """The data port it listens on (the OS's choice when started with port 0)."""

    @property
    def url(self) -> str:
        if self.port is None:
            raise FastPathError("the fast path is not started")
        return f"http://{self._host}:{self.port}"

    @property
    def latest(self) -> FastPathStats:
        """The last snapshot pulled (its gauges feed the router's)."""
        return self._seen

    async def start(self, timeout_s: float = 10.0) -> None:
        """Start the binary and wait until its control socket answers."""
        self._process = await asyncio.create_subprocess_exec(
            str(self._binary), "--listen", self._listen, "--fallback", self._fallback_url,
            "--control", str(self.control_path), "--threads", str(self._threads))
        self._client = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(self.control_path)),
                                         base_url="http://fastpath", timeout=5.0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            if self._process.returncode is not None:
                raise FastPathError(f"{self._binary} exited with status {self._process.returncode} at start")
            with contextlib.suppress(httpx.TransportError):
                health = (await self._client.get("/health")).json()
                self.port = int(str(health["listen"]).rpartition(":")[2])
                return
            if loop.time() > deadline:
                await self.stop()
                raise FastPathError(f"{self._binary} did not answer on {self.control_path} within {timeout_s:g} s")
            await asyncio.sleep(0.02)

    def _control(self) -> httpx.AsyncClient:
        if self._client is None:
            raise FastPathError("the fast path is not started")
        return self._client

    async def publish(self, config: RouterConfig, limits: RequestLimits) -> None:
        """Give the fast path the table of ``config``; :class:`FastPathError` when it refuses or is gone."""
        try:
            answer = await self._control().put("/table", content=orjson.dumps(fastpath_table(config, limits)))
        except httpx.TransportError as exc:
            raise FastPathError(f"the fast path is not reachable: {exc}") from exc
        if answer.status_code != 204:
            raise FastPathError(f"the fast path refused the table: {answer.status_code} {answer.text[:300]}")

    async def pull(self) -> FastPathStats:
        """What changed since the last pull (counters) and the current gauges; the new snapshot is kept."""
        try:
            answer = await self._control().get("/stats")
        except httpx.TransportError as exc:
            raise FastPathError(f"the fast path is not reachable: {exc}") from exc
        snapshot = FastPathStats.parse(answer.content)
        delta, self._seen = stats_delta(self._seen, snapshot), snapshot
        return delta

    async def drain(self) -> None:
        """From now on every answer of the fast path closes its connection (the router's SIGTERM drain)."""
        try:
            answer = await self._control().post("/drain")
        except httpx.TransportError as exc:
            raise FastPathError(f"the fast path is not reachable: {exc}") from exc
        if answer.status_code != 204:
            raise FastPathError(f"the fast path refused to drain: {answer.status_code} {answer.text[:300]}")

    async def stop(self) -> None:
        """Stop the binary (SIGTERM: it finishes in-flight requests) and remove the socket's directory."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout=10.0)
            except TimeoutError:
                process.kill()
                await process.wait()
        shutil.rmtree(self._dir, ignore_errors=True)


def min_remaining(*values: float | None) -> float | None:
    """The smallest of the known remaining deadlines (``None`` when none is known)."""
    known = [value for value in values if value is not None and not math.isnan(value)]
    return min(known) if known else None
