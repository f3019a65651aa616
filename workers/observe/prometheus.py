"""`PrometheusSource`: the one reader of the control loop's observations from a Prometheus server.

Why one: the operator (per pipeline, on a cluster) and ``paretoserve up --prometheus URL`` (locally) both
feed `paretoserve.planner.control.ControlLoop` from Prometheus; with one reader they send the same PromQL
and apply the same NaN rule (`paretoserve.workers.observe.queries`). This module is only the I/O edge:
three HTTP GETs per observation against the Prometheus HTTP API (``/api/v1/query_range`` for the load,
``/api/v1/query`` for the queue delay and the deadline), with any transport, HTTP or JSON failure turned
into `MetricsUnavailable` naming the server (credentials in the URL are never shown) and the cause.

The HTTP client is injected for tests (``transport=httpx.MockTransport(...)``) or shared (``client=``: the
operator can use one client for all its pipelines; a shared client is not closed here). Use the source as
a context manager, or call `PrometheusSource.close`, to close a client it created.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import httpx

from paretoserve.planner.control import Observed
from paretoserve.workers.observe.queries import (
    BatchingDelay,
    MetricsUnavailable,
    Selector,
    deadline_query,
    load_query,
    observation,
    queue_delay_query,
    range_params,
)

QUERY_PATH = "/api/v1/query"
RANGE_PATH = "/api/v1/query_range"


class PrometheusSource:
    """A `paretoserve.planner.control.MetricsSource` for one pipeline, reading a Prometheus server.

    ``url`` is the server's base URL (a path prefix is kept; user info becomes basic auth). ``namespace``
    is set on Kubernetes and left out locally (see `paretoserve.workers.observe.contract`).
    ``stage_models`` maps each stage to its variants' Triton model names. ``window_s`` is the load history
    the predictor wants (per-second samples), read every ``step_s`` seconds of ``rate()`` over
    ``rate_window_s``. ``verify`` is TLS verification: a bool, or the path of a CA bundle.
    ``batching_delay_ms`` (model -> ms) is subtracted from each model's queue delay; None subtracts nothing.
    With a shared ``client``, its own timeout and TLS settings apply (``timeout_s`` and ``verify`` are unused).
    """

    def __init__(self, url: str, pipeline: str, *, namespace: str | None = None,
                 stage_models: Mapping[str, Sequence[str]], window_s: int, step_s: int = 5, rate_window_s: int = 30,
                 timeout_s: float = 5.0, verify: bool | str = True, batching_delay_ms: BatchingDelay | None = None,
                 transport: httpx.BaseTransport | None = None, client: httpx.Client | None = None) -> None:
        if min(window_s, step_s, rate_window_s) < 1 or timeout_s <= 0:
            raise ValueError("window_s, step_s and rate_window_s must be >= 1 and timeout_s > 0")
        if client is not None and transport is not None:
            raise ValueError("pass either a shared client or a transport, not both")
        parsed = httpx.URL(url)
        self._base = url.rstrip("/")
        self._secret = parsed.password or ""
        self.url = str(parsed.copy_with(username=None, password=None)).rstrip("/")
        """The server's URL without user info: safe to log."""
        self.selector = Selector(pipeline, namespace)
        self.stage_models = {stage: tuple(models) for stage, models in stage_models.items()}
        self.window_s = window_s
        self.step_s = step_s
        self.rate_window_s = rate_window_s
        self._batching_delay_ms = batching_delay_ms
        self._owns_client = client is None
        if client is None:
            tls = ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
            client = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 2.0)), verify=tls,
                                  transport=transport)
        self._client = client

    def __enter__(self) -> PrometheusSource:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP client if this source created it (a shared client stays open)."""
        if self._owns_client:
            self._client.close()

    def observe(self, now: float) -> Observed:
        """The pipeline's load history, queue delay per stage and tightest deadline at ``now`` (unix seconds).

        Raises `MetricsUnavailable` (or its `NoLoadSamples`) when Prometheus cannot say.
        """
        load = self._get(RANGE_PATH, {"query": load_query(self.selector, self.rate_window_s),
                                      **range_params(now, window_s=self.window_s, step_s=self.step_s)})
        at = f"{now:.3f}"
        queue = self._get(QUERY_PATH, {"query": queue_delay_query(self.selector, self.rate_window_s), "time": at})
        deadline = self._get(QUERY_PATH, {"query": deadline_query(self.selector), "time": at})
        try:
            return observation(load, queue, deadline, selector=self.selector, stage_models=self.stage_models,
                               step_s=self.step_s, window_s=self.window_s, batching_delay_ms=self._batching_delay_ms)
        except MetricsUnavailable as exc:
            raise type(exc)(f"Prometheus at {self.url}: {exc}") from exc

    def _get(self, path: str, params: Mapping[str, str]) -> Any:
        """The decoded JSON answer; Prometheus's own error answers keep their message."""
        try:
            response = self._client.get(f"{self._base}{path}", params=dict(params))
            if response.is_success:
                return response.json()
            try:
                body: Any = response.json()
            except ValueError:
                body = None
            detail = f": {body.get('errorType', '')}: {body.get('error', '')}" if isinstance(body, dict) else ""
            cause = f"HTTP {response.status_code}{detail}"
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, ValueError) as exc:
            raise MetricsUnavailable(self._redact(f"Prometheus at {self.url}{path}: {type(exc).__name__}: {exc}")) \
                from exc
        raise MetricsUnavailable(self._redact(f"Prometheus at {self.url}{path}: {cause}"))

    def _redact(self, message: str) -> str:
        return message.replace(self._secret, "***") if self._secret else message
