"""The router sidecar's ASGI app: KServe v2 endpoints, admin config, metrics, one error boundary.

``build_router(config)`` returns a Starlette app whose lifespan owns the upstream clients (one
``httpx.AsyncClient`` per replica, see :mod:`.upstream`); tests pass ``transport=`` (e.g. an
``httpx.MockTransport``) and ``registry=`` (a fresh ``CollectorRegistry``) and drive the app with
``httpx.ASGITransport`` inside ``app.router.lifespan_context(app)``. Endpoints:

- ``POST /v2/pipelines/{pipeline}/infer``: the pipeline (:mod:`.pipeline`);
- ``POST /v2/models/{model}/infer``: transparent, streamed proxy to the model's replicas (same EDF
  queue and deadline; the upstream's answer is passed on whatever its status);
- ``GET /v2/health/ready`` (200 once the clients are open), ``GET /v2/health/live``;
- ``GET /metrics``: Prometheus text of the injected registry (:mod:`.metrics`);
- ``GET /admin/config``: the live config; ``POST /admin/config``: a partial update of thresholds,
  weights, upstreams or fallback flags, validated as a whole and swapped in atomically (one
  assignment, no ``await`` between validation and swap), answering the new config, or 400 naming
  the field;
- ``POST /admin/worker``: the plan's Triton knobs (instance count, dynamic batching) for this pod's
  own Triton, applied through the repository load API (:mod:`.worker_knobs`). With ``knobs_file``
  the same body is also read from a file (the pod's ConfigMap) at start and whenever it changes.

Every :class:`~.errors.RouterError` becomes its HTTP status and JSON body in one handler, which
also counts it; anything else is a bug, answered 500 and logged with its traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypedDict

import httpx
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from paretoserve.workers.router.config import RouterConfig, apply_update, config_to_json
from paretoserve.workers.router.decisions import Route as RowRoute
from paretoserve.workers.router.edf import ActiveDeadlines, Clock, EdfAdmission
from paretoserve.workers.router.errors import BadRequest, ConfigError, NotFound, QueueFull, RouterError
from paretoserve.workers.router.metrics import PROXY_STAGE, RouterMetrics
from paretoserve.workers.router.pipeline import PipelineRunner
from paretoserve.workers.router.protocol import decode_object, parse_infer_request
from paretoserve.workers.router.upstream import PROXY_REQUEST_HEADERS, UpstreamPool
from paretoserve.workers.router.worker_knobs import apply_knobs, grpc_loader, parse_knobs, watch_knobs_file

logger = logging.getLogger(__name__)

_JSON = "application/json"
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


def _json(payload: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type=_JSON, headers=headers)


DEFAULT_TRITON_URL = "http://127.0.0.1:8000"
"""The pod's own Triton (the sidecar shares the pod's network namespace)."""
DEFAULT_TRITON_GRPC = "127.0.0.1:8001"


class RouterService:
    """The router's state and endpoints; its upstream clients live while :meth:`running` is entered."""

    def __init__(
        self,
        config: RouterConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        registry: CollectorRegistry | None = None,
        clock: Clock = time.monotonic,
        knobs_file: Path | None = None,
        knobs_poll_s: float = 5.0,
    ) -> None:
        self._config = config
        self._transport = transport
        self._knobs_file = knobs_file
        self._knobs_poll_s = knobs_poll_s
        self._knobs_lock = asyncio.Lock()
        self._clock = clock
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

    @property
    def config(self) -> RouterConfig:
        return self._config

    def _queue_probe(self) -> tuple[int, float | None]:
        return self.admission.queue_length, self.active.min_remaining_ms()

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
        """Open the upstream clients for the block (the app's lifespan enters this)."""
        config = self._config
        pool = UpstreamPool(
            config.upstreams, timeouts=config.timeouts, limits=config.limits, transport_kind=config.transport,
            transport=self._transport,
            on_failure=lambda model, _url, error: self.metrics.upstream_failure(model, error.reason),
        )
        async with pool:
            self._pool = pool
            self._runner = PipelineRunner(pool=pool, admission=self.admission, metrics=self.metrics, clock=self._clock)
            watch = None
            if self._knobs_file is not None:
                watch = asyncio.create_task(watch_knobs_file(self._knobs_file, self.apply_worker, self._knobs_poll_s))
            try:
                yield
            finally:
                if watch is not None:
                    watch.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await watch
                self._pool = self._runner = None

    def _deadline(self, request: Request, config: RouterConfig, now: float) -> float:
        raw = request.headers.get(config.deadline_header)
        if raw is None:
            default = config.timeouts.default_deadline_ms
            return now + default / 1000.0 if default is not None else math.inf
        try:
            budget_ms = float(raw)
        except ValueError:
            budget_ms = math.nan
        if not math.isfinite(budget_ms):
            raise BadRequest(f"header {config.deadline_header}: must be a number of milliseconds, got {raw!r}")
        return now + budget_ms / 1000.0

    def _require_running(self) -> tuple[UpstreamPool, PipelineRunner]:
        if self._pool is None or self._runner is None:
            raise RouterError("the router is not started", status=503)
        return self._pool, self._runner

    # --- inference ---------------------------------------------------------------------------

    async def pipeline_infer(self, request: Request) -> Response:
        started = self._clock()
        self.metrics.request_started()
        token: int | None = None
        try:
            config = self._config
            _, runner = self._require_running()
            if request.path_params["pipeline"] != config.pipeline:
                raise NotFound(f"no pipeline {request.path_params['pipeline']!r} here (this is {config.pipeline!r})")
            deadline = self._deadline(request, config, started)
            token = self.active.add(deadline)
            infer = parse_infer_request(await request.body())
            request_id = infer.request_id() or request.headers.get("x-request-id") or f"auto-{next(self._ids)}"
            answer = await runner.run(config, infer, request_id=request_id, deadline=deadline)
            return Response(orjson.dumps(answer), media_type=_JSON)
        finally:
            if token is not None:
                self.active.remove(token)
            self.metrics.request_finished(self._clock() - started)

    async def model_infer(self, request: Request) -> Response:
        started = self._clock()
        model = request.path_params["model"]
        config = self._config
        try:
            pool, _ = self._require_running()
            if model not in config.upstreams:
                raise NotFound(f"no upstream serves model {model!r}")
            deadline = self._deadline(request, config, started)
            body = await request.body()
        except RouterError as exc:
            raise exc.at_stage(PROXY_STAGE) from None
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
        try:
            upstream = await pool.open_stream(model, body, headers)
        except BaseException as exc:
            await finish()
            if isinstance(exc, RouterError):
                exc.at_stage(PROXY_STAGE)
            raise
        self.metrics.rows(PROXY_STAGE, model, RowRoute.DIRECT)

        consumed = upstream.is_stream_consumed  # e.g. a mock transport's ready-made response

        async def relay() -> AsyncIterator[bytes]:
            if consumed:
                yield upstream.content
            else:
                async for chunk in upstream.aiter_raw():
                    yield chunk

        passed = {name: upstream.headers[name] for name in _PROXY_RESPONSE_HEADERS if name in upstream.headers}
        if consumed:  # .content is decoded already
            passed.pop("content-encoding", None)
            passed["content-length"] = str(len(upstream.content))
        return _RelayResponse(relay(), status_code=upstream.status_code, headers=passed,
                              cleanup=lambda: finish(upstream))

    # --- health, metrics, admin --------------------------------------------------------------

    async def ready(self, _: Request) -> Response:
        running = self._pool is not None
        return _json({"ready": running, "pipeline": self._config.pipeline}, 200 if running else 503)

    async def live(self, _: Request) -> Response:
        return _json({"live": True})

    async def metrics_text(self, _: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    async def get_config(self, _: Request) -> Response:
        return _json(config_to_json(self._config))

    async def post_config(self, request: Request) -> Response:
        patch = decode_object(await request.body(), "the config update")
        pool, _ = self._require_running()
        updated = apply_update(self._config, patch)
        pool.update(updated.upstreams)
        self._config = updated
        self._initialise_series(updated)
        logger.info("router config updated: %s", sorted(patch))
        return _json(config_to_json(updated))

    async def post_worker(self, request: Request) -> Response:
        """Apply the plan's Triton knobs (instances, batching) to this pod's own Triton."""
        return _json(await self.apply_worker(decode_object(await request.body(), "the worker update")))

    async def apply_worker(self, raw: Mapping[str, Any]) -> dict[str, list[str]]:
        """Apply a ``/admin/worker`` body; one change at a time (operator pushes and the knobs file)."""
        knobs = parse_knobs(raw)
        triton_url = str(raw.get("tritonUrl") or DEFAULT_TRITON_URL).rstrip("/")
        protocol = raw.get("loadProtocol", "grpc")
        if protocol not in ("grpc", "http"):
            raise ConfigError("loadProtocol", f"must be grpc or http, got {protocol!r}")
        applied: list[str] = []
        unchanged: list[str] = []
        # A rare call: one short-lived client, with the load API's own (long) timeout.
        async with self._knobs_lock, httpx.AsyncClient(transport=self._transport,
                                                       timeout=httpx.Timeout(120.0, connect=2.0)) as client:
            load = grpc_loader(str(raw.get("tritonGrpcUrl") or DEFAULT_TRITON_GRPC)) if protocol == "grpc" else None
            for model, wanted in knobs.items():
                changed = await apply_knobs(client, triton_url, model, wanted, load)
                (applied if changed else unchanged).append(model)
        logger.info("worker knobs applied to %s, unchanged %s", applied, unchanged)
        return {"applied": applied, "unchanged": unchanged}

    # --- the one error boundary --------------------------------------------------------------

    async def on_router_error(self, request: Request, exc: Exception) -> Response:
        error = exc if isinstance(exc, RouterError) else RouterError(f"internal error: {type(exc).__name__}: {exc}")
        if request.url.path.startswith("/v2/"):
            self.metrics.error(error.stage, error.reason)
        if error.status >= 500:
            logger.warning("%s %s -> %d %s: %s", request.method, request.url.path, error.status, error.reason, error)
        else:
            logger.info("%s %s -> %d %s: %s", request.method, request.url.path, error.status, error.reason, error)
        headers = {"retry-after": "1"} if isinstance(error, QueueFull) else None
        return _json(error.body(), error.status, headers)

    async def on_internal_error(self, request: Request, exc: Exception) -> Response:
        logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return await self.on_router_error(request, exc)


def build_router(
    config: RouterConfig,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    registry: CollectorRegistry | None = None,
    clock: Clock = time.monotonic,
    knobs_file: Path | None = None,
    knobs_poll_s: float = 5.0,
) -> Starlette:
    """The router app for ``config``; ``transport`` replaces the upstream transport (tests);
    ``knobs_file`` is applied to the pod's Triton at start and on every change (``/admin/worker``'s body)."""
    service = RouterService(config, transport=transport, registry=registry, clock=clock, knobs_file=knobs_file,
                            knobs_poll_s=knobs_poll_s)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[State]:
        async with service.running():
            yield {"service": service}

    app = Starlette(
        routes=[
            Route("/v2/pipelines/{pipeline}/infer", service.pipeline_infer, methods=["POST"]),
            Route("/v2/models/{model}/infer", service.model_infer, methods=["POST"]),
            Route("/v2/health/ready", service.ready, methods=["GET"]),
            Route("/v2/health/live", service.live, methods=["GET"]),
            Route("/metrics", service.metrics_text, methods=["GET"]),
            Route("/admin/config", service.get_config, methods=["GET"]),
            Route("/admin/config", service.post_config, methods=["POST"]),
            Route("/admin/worker", service.post_worker, methods=["POST"]),
        ],
        exception_handlers={RouterError: service.on_router_error, Exception: service.on_internal_error},
        lifespan=lifespan,
    )
    app.state.service = service
    return app


def router_service(app: Starlette) -> RouterService:
    """The :class:`RouterService` behind an app made by :func:`build_router`."""
    service = app.state.service
    if not isinstance(service, RouterService):
        raise TypeError("not an app made by build_router")
    return service
