"""The router sidecar's two ASGI apps: the data plane (KServe v2) and the admin API, one error boundary.

Anyone who can reach a pipeline may send it inference requests; only the operator (and the local
runtime) may change how the router routes or what its Triton runs. So the router serves two apps on
two listeners (:mod:`.serve`), and a path of one app does not exist on the other:

- **data** (``--host/--port``): ``POST /v2/pipelines/{pipeline}/infer`` (the pipeline,
  :mod:`.pipeline`), ``POST /v2/models/{model}/infer`` (transparent proxy to the model's replicas,
  same EDF queue and deadline, buffered over the fast transport and streamed over httpx's; the upstream's
  answer is passed on whatever its status),
  ``GET /v2/health/ready`` (200 once the clients are open, the knobs file, if any, was applied once, and the
  models its pod's own Triton serves report ready there; 503 ``draining`` after SIGTERM) and
  ``GET /v2/health/live``; and the rest of KServe v2 that Triton's clients call (server and model metadata,
  config, readiness, statistics, versioned paths, the pipeline addressed as a model: :mod:`.kserve`), with
  binary tensor data and compressed bodies (:mod:`.wire`);
  token generation, streamed: ``POST /v2/models/{model}/generate[_stream]`` and the OpenAI subset
  ``POST /v1/completions`` (:mod:`.streaming`);
- **admin** (``--admin-host/--admin-port``): ``GET``/``POST /admin/config``, ``POST /admin/worker``
  (bearer token, :mod:`.admin`) and ``GET /metrics``.

``build_router(config)`` returns both (:class:`RouterApps`) around one :class:`RouterService`, whose
upstream clients live while :meth:`RouterService.running` is entered (the data app's lifespan). Tests
pass ``transport=`` (e.g. an ``httpx.MockTransport``) and ``registry=`` (a fresh ``CollectorRegistry``)
and drive the apps with ``httpx.ASGITransport`` inside ``apps.running()``.

Request bodies are read within the limits of :mod:`.limits`; a request's deadline is registered (and
so shows in the deadline gauge the operator plans with) only once its body has been read and parsed.
Every :class:`~.errors.RouterError`, and every unknown path or method, becomes its HTTP status and JSON
body in one boundary, which also counts data-plane errors; anything else is a bug, answered 500 and
logged with its traceback. Upstream addresses are logged, never sent to a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import httpx
import orjson
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from paretoserve.workers.router.admin import build_admin_app
from paretoserve.workers.router.config import RouterConfig, apply_update, local_models, origin, origins
from paretoserve.workers.router.decisions import Route as RowRoute
from paretoserve.workers.router.edf import ActiveDeadlines, Clock, EdfAdmission
from paretoserve.workers.router.errors import (
    BadRequest,
    MethodNotAllowed,
    NotFound,
    RouterError,
    UpstreamError,
)
from paretoserve.workers.router.fastpath import FastPathError, FastPathFront, min_remaining
from paretoserve.workers.router.kserve import KServeEndpoints
from paretoserve.workers.router.limits import RequestLimits, parse_deadline_ms, read_body
from paretoserve.workers.router.metrics import PROXY_STAGE, RouterMetrics
from paretoserve.workers.router.pipeline import PipelineRunner
from paretoserve.workers.router.protocol import JSON, InferRequest, Message, json_response, parse_infer_request
from paretoserve.workers.router.streaming import GenerationEndpoints
from paretoserve.workers.router.upstream import PROXY_REQUEST_HEADERS, UpstreamPool
from paretoserve.workers.router.wire import (
    HEADER_LENGTH,
    OutputWishes,
    binary_request_to_json,
    binary_response,
    compress,
    decompress,
    take_output_wishes,
)
from paretoserve.workers.router.worker_knobs import KnobsApplier, TritonTarget, watch_knobs_file

logger = logging.getLogger(__name__)

OCTETS = "application/octet-stream"
MIN_COMPRESSED_BYTES = 1024
"""Smaller answers go uncompressed whatever ``Accept-Encoding`` allows (identity is always acceptable): most
HTTP clients accept gzip by default, and compressing a 300-byte answer costs more than it saves."""
_PROXY_RESPONSE_HEADERS = ("content-type", "content-length", "content-encoding", "inference-header-content-length")


class _RelayResponse(StreamingResponse):
    """A streamed proxy answer whose ``cleanup`` runs however sending ends (done, failed, client gone)."""

    def __init__(self, content: AsyncIterator[bytes], *, status_code: int, headers: dict[str, str],
                 cleanup: Callable[[], Awaitable[None]]) -> None:
        super().__init__(content, status_code=status_code, headers=headers)
        self._cleanup = cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._cleanup()


class State(TypedDict):
    """Lifespan state handed to requests."""

    service: RouterService


class RouterService:
    """The router's state and data endpoints; its upstream clients live while :meth:`running` is entered."""

    def __init__(
        self,
        config: RouterConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        registry: CollectorRegistry | None = None,
        clock: Clock = time.monotonic,
        knobs_file: Path | None = None,
        knobs_poll_s: float = 5.0,
        limits: RequestLimits | None = None,
        triton: TritonTarget | None = None,
    ) -> None:
        self._config = config
        self.limits = limits or RequestLimits()
        self.triton = triton or TritonTarget()
        self._transport = transport
        self._knobs_file = knobs_file
        self._knobs_poll_s = knobs_poll_s
        self.knobs_pending = knobs_file is not None
        """Readiness waits for the knobs file's first application (the sidecar adopts its Triton's models)."""
        self._clock = clock
        self.allowed_origins = origins(config) | {origin(self.triton.url)}
        """Where live updates may point upstreams: the config file's origins and the pod's Triton."""
        self.knobs = KnobsApplier(self.triton, lambda: local_models(self._config, self.triton.url),
                                  transport=transport)
        self.registry = registry if registry is not None else CollectorRegistry()
        self.admission = EdfAdmission(
            concurrency=config.queue.concurrency, max_size=config.queue.max_size, clock=clock
        )
        self.active = ActiveDeadlines(clock)
        self.metrics = RouterMetrics(config.pipeline, self.registry, self._queue_probe)
        self._initialise_series(config)
        self._pool: UpstreamPool | None = None
        self._runner: PipelineRunner | None = None
        self._ids = itertools.count()
        self.draining = False
        """Set on SIGTERM (:mod:`.serve`): readiness answers 503 while the data plane still serves."""
        self.kserve = KServeEndpoints(self)
        """Metadata, config, readiness and statistics (:mod:`.kserve`), and the pipeline's figures."""
        self.generation = GenerationEndpoints(self)
        """Token generation: KServe generate[_stream] and OpenAI completions (:mod:`.streaming`)."""
        self.fastpath: FastPathFront | None = None
        """The compiled front on the data port, when the router runs with one (:mod:`.fastpath`); set before
        the data app's lifespan starts, which starts and stops it."""

    @property
    def config(self) -> RouterConfig:
        return self._config

    @property
    def clock(self) -> Clock:
        return self._clock

    def _queue_probe(self) -> tuple[int, float | None]:
        if self.fastpath is None:
            return self.admission.queue_length, self.active.min_remaining_ms()
        front = self.fastpath.latest
        return (self.admission.queue_length + front.queue_length,
                min_remaining(self.active.min_remaining_ms(), front.min_deadline_remaining_ms))

    async def refresh_fastpath_figures(self) -> None:
        """Fold what the fast path served since the last scrape into the router's metrics (:mod:`.fastpath`)."""
        if self.fastpath is None or self._pool is None:
            return
        try:
            delta = await self.fastpath.pull()
        except FastPathError as exc:
            logger.error("fast path figures unavailable: %s", exc)
            return
        for model, figures in delta.proxied.items():
            self.metrics.rows(PROXY_STAGE, model, RowRoute.DIRECT, figures.rows)
            self.metrics.add_observations(PROXY_STAGE, model, figures.buckets, figures.seconds)
        for reason, count in delta.errors.items():
            self.metrics.error(PROXY_STAGE, reason, count)
        for (model, reason), count in delta.upstream_failures.items():
            self.metrics.upstream_failure(model, reason, count)

    def _initialise_series(self, config: RouterConfig) -> None:
        for stage in config.stages:
            self.metrics.deferred(stage.name, 0)
            self.metrics.fell_back(stage.name, 0)
            if stage.cascade is not None:
                self.metrics.rows(stage.name, stage.cascade.light, RowRoute.LIGHT, 0)
                self.metrics.rows(stage.name, stage.cascade.heavy, RowRoute.HEAVY, 0)
            for model, _ in stage.variants if stage.cascade is None else ():
                self.metrics.rows(stage.name, model, RowRoute.DIRECT, 0)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Open the upstream clients for the block (the data app's lifespan enters this)."""
        config = self._config
        pool = UpstreamPool(
            config.upstreams, timeouts=config.timeouts, limits=config.limits, transport_kind=config.transport,
            transport=self._transport, max_response_bytes=self.limits.max_upstream_bytes,
            on_failure=lambda model, _url, error: self.metrics.upstream_failure(model, error.reason),
        )
        async with pool:
            self._pool = pool
            self._runner = PipelineRunner(pool=pool, admission=self.admission, metrics=self.metrics, clock=self._clock,
                                          on_call=self.kserve.stats.call)
            watch = None
            await self.knobs.open()
            try:
                if self.fastpath is not None:
                    await self.fastpath.start()
                    await self.fastpath.publish(config, self.limits)
                if self._knobs_file is not None:
                    watch = asyncio.create_task(watch_knobs_file(self._knobs_file, self.knobs.apply,
                                                                 self._knobs_poll_s, self._knobs_settled))
                yield
            finally:
                if watch is not None:
                    watch.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await watch
                if self.fastpath is not None:
                    await self.fastpath.stop()
                await self.knobs.aclose()
                self._pool = self._runner = None

    def _knobs_settled(self) -> None:
        self.knobs_pending = False

    def _budget_ms(self, request: Request, config: RouterConfig) -> float | None:
        """The request's time budget: its deadline header (strict, clamped), else the config's default."""
        values = request.headers.getlist(config.deadline_header)
        if not values:
            return config.timeouts.default_deadline_ms
        if len(values) > 1:
            raise BadRequest(f"header {config.deadline_header}: given {len(values)} times")
        return parse_deadline_ms(values[0], config.deadline_header, config.slo_ms or self.limits.max_deadline_ms)

    async def _body(self, request: Request) -> bytes:
        return await read_body(request, self.limits.max_body_bytes)

    budget_ms = _budget_ms
    read_body = _body

    def require_running(self) -> tuple[UpstreamPool, PipelineRunner]:
        if self._pool is None or self._runner is None:
            raise RouterError("the router is not started", status=503)
        return self._pool, self._runner

    async def update_config(self, patch: object) -> RouterConfig:
        """Apply a live update (validated as a whole, upstreams only to known origins) and swap it in; with a
        fast path in front, it gets the new table first (a refusal changes nothing on either side)."""
        pool, _ = self.require_running()
        updated = apply_update(self._config, patch, allowed_origins=self.allowed_origins)
        if self.fastpath is not None:
            try:
                await self.fastpath.publish(updated, self.limits)
            except FastPathError as exc:
                raise RouterError(f"the fast path did not take the update: {exc}", status=503) from exc
        pool.update(updated.upstreams)
        self._config = updated  # one assignment, no await since validation: requests see old or new
        self._initialise_series(updated)
        return updated

    # --- inference ---------------------------------------------------------------------------

    async def pipeline_infer(self, request: Request) -> Response:
        """The pipeline on a KServe v2 request: JSON or binary tensor data, compressed or not, answered in the
        form the client asked for (:mod:`.wire`)."""
        started = self._clock()
        self.metrics.request_started()
        token: int | None = None
        rows = 0
        try:
            config = self._config
            _, runner = self.require_running()
            name = request.path_params.get("pipeline", request.path_params.get("model"))
            if name != config.pipeline:
                raise NotFound(f"no pipeline {name!r} here (this is {config.pipeline!r})")
            budget_ms = self._budget_ms(request, config)
            infer, wishes = self._infer_request(request, await self._body(request))
            deadline = math.inf if budget_ms is None else started + budget_ms / 1000.0
            token = self.active.add(deadline)  # only now: a client still sending cannot move the gauge
            request_id = infer.request_id() or request.headers.get("x-request-id") or f"auto-{next(self._ids)}"
            answer = await runner.run(config, infer, request_id=request_id, deadline=deadline)
            rows = infer.batch
            return _encoded_answer(answer, wishes, request.headers.get("accept-encoding"))
        finally:
            if token is not None:
                self.active.remove(token)
            elapsed = self._clock() - started
            self.metrics.request_finished(elapsed)
            self.kserve.stats.record(rows > 0, elapsed, rows)

    def _infer_request(self, request: Request, body: bytes) -> tuple[InferRequest, OutputWishes]:
        """The JSON request the pipeline runs, and how the client wants its outputs."""
        body = decompress(body, request.headers.get("content-encoding"), self.limits.max_body_bytes)
        header_length = request.headers.get(HEADER_LENGTH)
        if header_length is not None:
            body = binary_request_to_json(body, header_length)
        infer = parse_infer_request(body)
        wishes = take_output_wishes(infer.message)
        if wishes is None:
            return infer, OutputWishes()
        infer.raw = orjson.dumps(infer.message)  # forwarded without the wishes: models answer the router JSON
        return infer, wishes

    async def model_infer(self, request: Request) -> Response:
        """A proxied model's inference (versioned or not), or the pipeline addressed as a model."""
        if self.kserve.is_pipeline(request.path_params["model"]):
            self.kserve.check_version(request)
            return await self.pipeline_infer(request)
        started = self._clock()
        model = request.path_params["model"]
        config = self._config
        try:
            pool, _ = self.require_running()
            if model not in config.upstreams:
                raise NotFound(f"no upstream serves model {model!r}")
            budget_ms = self._budget_ms(request, config)
            body = await self._body(request)
        except RouterError as exc:
            raise exc.at_stage(PROXY_STAGE) from None
        deadline = math.inf if budget_ms is None else started + budget_ms / 1000.0
        token = self.active.add(deadline)
        headers = {name: request.headers[name] for name in PROXY_REQUEST_HEADERS if name in request.headers}
        done = False

        async def finish(upstream: httpx.Response | None = None) -> None:
            nonlocal done
            if done:
                return
            done = True
            if upstream is not None:
                await upstream.aclose()
            self.admission.release()
            self.active.remove(token)
            self.metrics.call(PROXY_STAGE, model, self._clock() - started)

        try:
            await self.admission.acquire(deadline)
        except RouterError as exc:
            self.active.remove(token)
            raise exc.at_stage(PROXY_STAGE) from None
        path = request.url.path if request.path_params.get("version") is not None else None
        if pool.forwards_fast(model):  # buffered: no httpx objects, no streaming relay (the answer is capped)
            try:
                status, raw, content = await pool.forward(model, body, headers, path=path)
            except RouterError as exc:
                raise exc.at_stage(PROXY_STAGE) from None
            finally:
                await finish()
            self.metrics.rows(PROXY_STAGE, model, RowRoute.DIRECT)
            return Response(content, status_code=status, headers=_raw_passed_headers(raw))
        try:
            upstream = await pool.open_stream(model, body, headers, path=path)
        except BaseException as exc:
            await finish()
            if isinstance(exc, RouterError):
                exc.at_stage(PROXY_STAGE)
            raise
        self.metrics.rows(PROXY_STAGE, model, RowRoute.DIRECT)
        return _RelayResponse(self._relay(upstream, model, pool.max_response_bytes),
                              status_code=upstream.status_code, headers=_passed_headers(upstream),
                              cleanup=lambda: finish(upstream))

    @staticmethod
    async def _relay(upstream: httpx.Response, model: str, limit: int) -> AsyncIterator[bytes]:
        if upstream.is_stream_consumed:  # e.g. a mock transport's ready-made response
            yield upstream.content
            return
        sent = 0
        async for chunk in upstream.aiter_raw():
            sent += len(chunk)
            if sent > limit:  # headers are out: the connection is cut, the client sees a short answer
                raise UpstreamError(f"model {model!r} answered more than the router relays", model=model)
            yield chunk

    # --- health ------------------------------------------------------------------------------

    async def ready(self, _: Request) -> Response:
        """Ready once the clients are open and every model this pod's own Triton serves reports ready there:
        a worker pod takes traffic only when its models are loaded (the kubelet's readiness probe)."""
        pool, config = self._pool, self._config
        if self.draining:
            return json_response({"ready": False, "pipeline": config.pipeline, "draining": True}, 503)
        if pool is None:
            return json_response({"ready": False, "pipeline": config.pipeline}, 503)
        if self.knobs_pending:  # the pod's Triton is not on its knobs yet (`worker_knobs.watch_knobs_file`)
            return json_response({"ready": False, "pipeline": config.pipeline, "workerKnobs": "pending"}, 503)
        own = origin(self.triton.url)
        local = sorted((model, url) for model, urls in config.upstreams.items() for url in urls if origin(url) == own)
        answers = await asyncio.gather(*(pool.model_ready(url, model) for model, url in local))
        unready = sorted({model for (model, _), ok in zip(local, answers, strict=True) if not ok})
        if unready:
            return json_response({"ready": False, "pipeline": config.pipeline, "unreadyModels": unready}, 503)
        return json_response({"ready": True, "pipeline": config.pipeline}, 200)

    async def live(self, _: Request) -> Response:
        return json_response({"live": True})

    # --- the one error boundary --------------------------------------------------------------

    async def on_router_error(self, request: Request, exc: Exception) -> Response:
        error = exc if isinstance(exc, RouterError) else RouterError(f"internal error: {type(exc).__name__}")
        if request.url.path.startswith(("/v2/", "/v1/")):
            self.metrics.error(error.stage, error.reason)
        where = f" [{error.url}: {error.detail}]" if isinstance(error, UpstreamError) and error.url else ""
        level = logging.WARNING if error.status >= 500 else logging.INFO
        logger.log(level, "%s %s -> %d %s: %s%s", request.method, request.url.path, error.status, error.reason,
                   error, where)
        return json_response(error.body(), error.status, error.headers or None)

    async def on_http_error(self, request: Request, exc: Exception) -> Response:
        """Starlette's own refusals (no such path, wrong method) in the router's JSON."""
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        if status == 405:
            error: RouterError = MethodNotAllowed(f"{request.method} is not served on this path")
        elif status == 404:
            error = NotFound("no such endpoint on this listener")
        else:
            error = RouterError(f"HTTP {status}", status=status)
        headers = dict(getattr(exc, "headers", None) or {})
        return json_response(error.body(), error.status, {**headers, **error.headers} or None)

    async def on_internal_error(self, request: Request, exc: Exception) -> Response:
        logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return await self.on_router_error(request, exc)

    def exception_handlers(self) -> dict[Any, Callable[[Request, Exception], Awaitable[Response]]]:
        """The boundary for both apps."""
        return {RouterError: self.on_router_error, HTTPException: self.on_http_error,
                Exception: self.on_internal_error}


def _encoded_answer(answer: Message, wishes: OutputWishes, accept_encoding: str | None) -> Response:
    """The pipeline's answer with the outputs the client wants binary, compressed if it accepts that."""
    body, header_length = binary_response(answer, wishes)
    headers = {} if header_length is None else {HEADER_LENGTH: str(header_length)}
    if len(body) >= MIN_COMPRESSED_BYTES:
        body, encoding = compress(body, accept_encoding)
        if encoding is not None:
            headers["content-encoding"] = encoding
    return Response(body, media_type=JSON if header_length is None else OCTETS, headers=headers)


_PASSED_RAW = frozenset(name.encode() for name in _PROXY_RESPONSE_HEADERS) - {b"content-length"}


def _raw_passed_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The proxied answer's headers a client gets (as `_passed_headers`; the length is the body's own)."""
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in raw
            if name.lower() in _PASSED_RAW}


def _passed_headers(upstream: httpx.Response) -> dict[str, str]:
    passed = {name: upstream.headers[name] for name in _PROXY_RESPONSE_HEADERS if name in upstream.headers}
    if upstream.is_stream_consumed:  # .content is decoded already
        passed.pop("content-encoding", None)
        passed["content-length"] = str(len(upstream.content))
    return passed


@dataclass(frozen=True)
class RouterApps:
    """The data-plane app, the admin app and the service behind both."""

    data: Starlette
    admin: Starlette
    service: RouterService

    def running(self) -> contextlib.AbstractAsyncContextManager[None]:
        """The service's upstream clients, for driving the apps in process (uvicorn runs the data lifespan)."""
        return self.service.running()


def build_router(
    config: RouterConfig,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    registry: CollectorRegistry | None = None,
    clock: Clock = time.monotonic,
    knobs_file: Path | None = None,
    knobs_poll_s: float = 5.0,
    admin_token: str | None = None,
    limits: RequestLimits | None = None,
    triton: TritonTarget | None = None,
) -> RouterApps:
    """The router's apps for ``config``; ``transport`` replaces the upstream transport (tests); ``knobs_file``
    is applied to the pod's Triton (``triton``) at start and on every change; without ``admin_token`` the
    admin API answers 403."""
    service = RouterService(config, transport=transport, registry=registry, clock=clock, knobs_file=knobs_file,
                            knobs_poll_s=knobs_poll_s, limits=limits, triton=triton)
    kserve = service.kserve

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[State]:
        async with service.running():
            yield {"service": service}

    data = Starlette(
        routes=[
            Route("/v2/pipelines/{pipeline}/infer", service.pipeline_infer, methods=["POST"]),
            Route("/v2/models/{model}/infer", service.model_infer, methods=["POST"]),
            Route("/v2/models/{model}/versions/{version}/infer", service.model_infer, methods=["POST"]),
            Route("/v2/models/{model}/generate", service.generation.generate, methods=["POST"]),
            Route("/v2/models/{model}/generate_stream", service.generation.generate_stream, methods=["POST"]),
            Route("/v1/completions", service.generation.completions, methods=["POST"]),
            Route("/v2/health/ready", service.ready, methods=["GET"]),
            Route("/v2/health/live", service.live, methods=["GET"]),
            Route("/v2", kserve.server_metadata, methods=["GET"]),
            Route("/v2/models/stats", kserve.all_stats, methods=["GET"]),
            *(Route(f"/v2/models/{{model}}{version}{suffix}", handler, methods=["GET"])
              for version in ("", "/versions/{version}")
              for suffix, handler in (("", kserve.metadata), ("/ready", kserve.ready), ("/config", kserve.config),
                                      ("/stats", kserve.model_stats))),
        ],
        exception_handlers=service.exception_handlers(),
        lifespan=lifespan,
    )
    return RouterApps(data=data, admin=build_admin_app(service, admin_token), service=service)
