"""Token generation through the router: the KServe generate extension and OpenAI completions, streamed.

Data-plane endpoints for a model the router proxies (``upstreams``), all built on the replica's
``POST /v2/models/{model}/generate_stream`` (Server-Sent Events, one per model response; :mod:`.generate`):

- ``POST /v2/models/{model}/generate_stream``: the replica's events relayed one by one as they arrive
  (never buffered whole), ``text/event-stream``;
- ``POST /v2/models/{model}/generate``: the same stream read to its end and merged into one JSON object
  (:func:`~.generate.merge_events`; Triton's own ``/generate`` refuses decoupled models);
- ``POST /v1/completions``: the OpenAI subset (``model``, ``prompt``, ``max_tokens``, ``stream``): one answer,
  or SSE chunks with ``choices[0].text`` per token, a last chunk with ``finish_reason`` and ``usage``, then
  ``data: [DONE]``.

They follow the model proxy's conventions (:meth:`~.app.RouterService.model_infer`): body limits, the deadline
header (the EDF queue admits the request by its deadline and it holds its queue slot until its stream ends),
the replicas' round-robin with retries before the answer starts, and every failure an explicit JSON error from
the app's one boundary. The body is checked against the model's Triton config first (fetched once per model
and replica set): a missing input or a value of the wrong type is a 400 naming it. Once the answer has started
(status 200 sent), a failure -- the replica's own error event, a dropped connection, a read timeout, the
deadline passing -- ends the stream with one last error event (``{"error", "reason", "status", "model"}``;
OpenAI streams get no ``[DONE]`` then) and counts in ``paretoserve_router_errors_total``: never a silent cut.

A request may name the pipeline instead of a model (``/v2/models/{pipeline}/...``, or a completion whose
``model`` is the pipeline): :mod:`.prompt_router` chooses the model (the stage's split, or its prompt cascade: the
scorer's score against the live ``preRouteThreshold``), and the request is relayed exactly as if it had named that
model. A multimodal request carries its image in the generate body (``{"PROMPT": "+37=", "IMAGE": [64 floats]}``):
the scorer gets it too when its config has an ``IMAGE`` input (:func:`~.prompt_router.scorer_tensors`), and the
chosen model gets the whole body; ``/v1/completions`` carries text only (a model or scorer that needs an ``IMAGE``
answers it 400 naming it). Every answer says which model served it in the ``x-paretoserve-variant`` header, and how
it was chosen in ``x-paretoserve-route`` (``direct``, ``light``, ``prerouted``, ``fallback``: the scorer failed);
the generate events keep the model's own ``model_name`` and a completion keeps the ``model`` the client sent
(OpenAI's semantics). A pipeline request counts in the pipeline's request and duration metrics (the planner's
load signal) and its routing in ``paretoserve_router_requests_total`` under its stage.

Per streamed request the router observes TTFT (request received -> first token sent to the client) and each
inter-token gap (between two tokens sent) in ``paretoserve_router_ttft_seconds`` and
``paretoserve_router_inter_token_seconds`` (:mod:`.metrics`, by model); a token counts as sent once the
ASGI server took its bytes (the generator resumes after ``send``). Non-streamed answers are not observed there
(their time is the proxy's ``paretoserve_router_request_duration_seconds``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from paretoserve.workers.router.config import RouterConfig, StageConfig
from paretoserve.workers.router.dataflow import queue_key
from paretoserve.workers.router.decisions import Route as RowRoute
from paretoserve.workers.router.errors import DeadlineExceeded, NotFound, RouterError, UpstreamError
from paretoserve.workers.router.generate import (
    Completion,
    InputSpec,
    SSEParser,
    check_generate_body,
    decode_event,
    error_message,
    generate_prompt,
    merge_events,
    model_inputs,
    parse_completion_request,
    sse_event,
    token_text,
    upstream_body,
)
from paretoserve.workers.router.kserve import _fetch_json
from paretoserve.workers.router.metrics import PROXY_STAGE
from paretoserve.workers.router.pipeline import Due
from paretoserve.workers.router.prompt_router import (
    Choice,
    Scorer,
    choose,
    pipeline_stage,
    read_score,
    scorer_body,
    scorer_tensors,
)
from paretoserve.workers.router.protocol import Message, decode_object, json_response
from paretoserve.workers.router.upstream import map_transport_errors, read_capped, scrub, status_error

if TYPE_CHECKING:
    from paretoserve.workers.router.app import RouterService
    from paretoserve.workers.router.pipeline import PipelineRunner
    from paretoserve.workers.router.upstream import UpstreamPool

logger = logging.getLogger(__name__)

EVENT_STREAM = "text/event-stream"
_STREAM_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
_UPSTREAM_HEADERS = {"content-type": "application/json", "accept": EVENT_STREAM}
VARIANT_HEADER = "x-paretoserve-variant"
"""The model that served a generation request (the pipeline's choice, or the model the request named)."""
ROUTE_HEADER = "x-paretoserve-route"
"""How that model was chosen: ``direct``, ``light``, ``prerouted`` or ``fallback`` (:class:`~.decisions.Route`)."""
Payload = Callable[[str, tuple[InputSpec, ...], bytes], bytes]
"""Turns the client's body into the generate body for a model (given its inputs)."""
Scored = Callable[[bytes], tuple[str, Message | None]]
"""Reads what a prompt scorer may score in the client's body: its prompt, and its generate inputs by name (None for a
completion, which carries the prompt only)."""


class _EventStreamResponse(StreamingResponse):
    """An SSE answer whose ``cleanup`` runs however sending ends (done, failed, client gone)."""

    def __init__(self, content: AsyncIterator[bytes], cleanup: Callable[[], Awaitable[None]],
                 headers: dict[str, str]) -> None:
        super().__init__(content, media_type=EVENT_STREAM, headers={**_STREAM_HEADERS, **headers})
        self._cleanup = cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._cleanup()


@dataclass
class _Event:
    data: bytes
    """The event's ``data`` as the replica sent it."""
    message: Message


class _Generation:
    """One admitted request's upstream stream: its events in order, then :meth:`finish` (idempotent)."""

    def __init__(self, service: RouterService, choice: Choice, started: float, deadline: float, token: int,
                 *, pipeline: bool) -> None:
        self._service = service
        self.choice = choice
        self.model = choice.model
        self.stage = choice.stage
        self.started = started
        self.deadline = deadline
        self._token = token
        self._pipeline = pipeline
        self._upstream: httpx.Response | None = None
        self._done = False
        self.failed = False

    @property
    def headers(self) -> dict[str, str]:
        """Which model served the request and how it was chosen (see the module notes)."""
        return {VARIANT_HEADER: self.model, ROUTE_HEADER: self.choice.route.value}

    def _remaining(self) -> float | None:
        return None if math.isinf(self.deadline) else self.deadline - self._service.clock()

    async def open(self, pool: UpstreamPool, body: bytes) -> None:
        """Start the replica's stream (retrying replicas); a refusal is raised as the replica's error."""
        path = f"/v2/models/{self.model}/generate_stream"
        try:
            async with asyncio.timeout(self._remaining()):
                upstream = await pool.open_stream(self.model, body, _UPSTREAM_HEADERS, path=path, live=True)
        except TimeoutError:
            raise DeadlineExceeded("the deadline passed before the model started answering") from None
        self._upstream = upstream
        if upstream.status_code >= 300:
            url = str(upstream.request.url)
            with map_transport_errors(self.model, url):
                content = await read_capped(upstream, 64 * 1024, upstream.request)
            raise status_error(self.model, url, upstream.status_code, error_message(content))

    async def events(self) -> AsyncIterator[_Event]:
        """The replica's events as they arrive; an ``error`` event, a broken stream or the deadline passing
        raises :class:`RouterError` (and marks the request failed)."""
        try:
            async with contextlib.aclosing(self._events()) as events:
                async for event in events:
                    yield event
        except RouterError:
            self.failed = True
            raise

    async def _events(self) -> AsyncGenerator[_Event, None]:
        upstream = self._upstream
        assert upstream is not None
        url = str(upstream.request.url)
        parser = SSEParser()
        chunks = upstream.aiter_raw()
        while True:
            try:
                with map_transport_errors(self.model, url):
                    async with asyncio.timeout(self._remaining()):
                        chunk = await anext(chunks, None)
            except TimeoutError:
                raise DeadlineExceeded("the deadline passed while the model was generating") from None
            try:
                datas = list(parser.feed(chunk) if chunk is not None else parser.close())
            except ValueError as exc:
                raise UpstreamError(f"model {self.model!r} streamed {exc}", model=self.model, url=url) from None
            for data in datas:
                message = decode_event(data, self.model)
                if "error" in message:
                    detail = str(message["error"])[:300]
                    raise UpstreamError(f"model {self.model!r} failed while generating: {scrub(detail)}",
                                        model=self.model, url=url, detail=detail)
                yield _Event(data, message)
            if chunk is None:
                return

    async def finish(self) -> None:
        if self._done:
            return
        self._done = True
        service = self._service
        try:
            if self._upstream is not None:
                await self._upstream.aclose()
        finally:
            service.admission.release()
            service.active.remove(self._token)
            elapsed = service.clock() - self.started
            service.metrics.call(self.stage, self.model, elapsed)
            if self._pipeline:
                _pipeline_finished(service, elapsed, ok=not self.failed)


def _pipeline_finished(service: RouterService, elapsed: float, *, ok: bool) -> None:
    """A generation request addressed to the pipeline is over: its pipeline request metrics and statistics."""
    service.metrics.request_finished(elapsed)
    service.kserve.stats.record(ok, elapsed, 1 if ok else 0)


class GenerationEndpoints:
    """``/v2/models/{model}/generate[_stream]`` and ``/v1/completions`` of one router (see the module notes)."""

    def __init__(self, service: RouterService) -> None:
        self._service = service
        self._configs: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {}
        self._ids = itertools.count()

    async def _model_config(self, pool: UpstreamPool, model: str) -> dict[str, Any]:
        """The model's Triton config (cached per model and replica set)."""
        replicas = pool.replicas(model)
        cached = self._configs.get(model)
        if cached is not None and cached[0] == replicas:
            return cached[1]
        config = await _fetch_json(pool, model, f"/v2/models/{model}/config")
        self._configs[model] = (replicas, config)
        return config

    async def _model_inputs(self, pool: UpstreamPool, model: str) -> tuple[InputSpec, ...]:
        return model_inputs(await self._model_config(pool, model))

    def _scorer(self, pool: UpstreamPool, runner: PipelineRunner, due: Due, stage: str,
                body: Message | None) -> Scorer:
        """Asks a prompt scorer (:mod:`.prompt_router`) through the EDF queue, within the request's deadline; the
        inputs it reads besides the prompt come from the request's ``body`` (:func:`~.prompt_router.scorer_tensors`)."""

        async def score(scorer: str, prompt: str) -> float:
            config = await self._model_config(pool, scorer)
            batched = int(config.get("max_batch_size") or 0) > 0
            extra = scorer_tensors(body, scorer, model_inputs(config), batched=batched)
            answer = await runner.call(stage, scorer, scorer_body(prompt, batched=batched, extra=extra), 1, due)
            return read_score(answer, scorer)

        return score

    def _pipeline_stage(self, config: RouterConfig, name: str) -> StageConfig | None:
        """The stage a request naming ``name`` runs on when ``name`` is the pipeline (counted as a pipeline
        request), None for a model the router proxies; 404 for anything else."""
        if name in config.upstreams:
            return None
        if name != config.pipeline:
            raise NotFound(f"no upstream serves model {name!r} (and the pipeline is {config.pipeline!r})")
        stage = pipeline_stage(config)
        self._service.metrics.request_started()
        return stage

    async def _start(self, request: Request, name: str | None, payload: Payload, scored: Scored) -> _Generation:
        """Read and check the request, choose the model (the named one, or the pipeline's choice), wait for the
        request's queue slot, open the model's stream. ``name`` None: taken from the completion body.
        ``payload`` turns the client's body into the model's generate body; ``scored`` reads what a scorer scores."""
        service = self._service
        started = service.clock()
        config = service.config  # one config for the whole decision: a live update applies to the next request
        stage: StageConfig | None = None
        token: int | None = None
        try:
            pool, runner = service.require_running()
            if name is not None:
                stage = self._pipeline_stage(config, name)
            budget_ms = service.budget_ms(request, config)
            raw = await service.read_body(request)
            if name is None:
                name = parse_completion_request(raw).model
                stage = self._pipeline_stage(config, name)
            deadline = math.inf if budget_ms is None else started + budget_ms / 1000.0
            token = service.active.add(deadline)  # only now: a client still sending cannot move the gauge
            if stage is None:
                choice = Choice(PROXY_STAGE, name, RowRoute.DIRECT)
            else:
                prompt, inputs = scored(raw) if stage.cascade is not None else ("", None)
                due = Due(deadline, queue_key(config, stage.name, deadline, started))
                choice = await choose(stage, prompt, self._scorer(pool, runner, due, stage.name, inputs),
                                      f"generate-{next(self._ids)}")
            body = payload(choice.model, await self._model_inputs(pool, choice.model), raw)
            await service.admission.acquire(deadline)
        except BaseException as exc:
            if token is not None:
                service.active.remove(token)
            if stage is not None:
                _pipeline_finished(service, service.clock() - started, ok=False)
            if isinstance(exc, RouterError):
                raise exc.at_stage(PROXY_STAGE if stage is None else stage.name) from None
            raise
        generation = _Generation(service, choice, started, deadline, token, pipeline=stage is not None)
        try:
            await generation.open(pool, body)
        except BaseException as exc:
            generation.failed = True
            await generation.finish()
            if isinstance(exc, RouterError):
                exc.at_stage(choice.stage)
            raise
        service.metrics.rows(choice.stage, choice.model, choice.route)  # counted once the model answers
        if choice.route is RowRoute.FALLBACK:
            service.metrics.fell_back(choice.stage, 1)
        return generation

    @staticmethod
    def _generate_body(model: str, inputs: tuple[InputSpec, ...], raw: bytes) -> bytes:
        check_generate_body(raw, model, inputs)
        return raw

    @staticmethod
    def _generate_scored(raw: bytes) -> tuple[str, Message]:
        """A generate body's prompt and its inputs (a multimodal request's ``IMAGE`` among them)."""
        return generate_prompt(raw), decode_object(raw, "the request body")

    def _failed(self, generation: _Generation, exc: RouterError) -> None:
        """A failure after the answer started: counted and logged as the boundary would."""
        exc.at_stage(generation.stage)
        self._service.metrics.error(exc.stage, exc.reason)
        where = f" [{exc.url}: {exc.detail}]" if isinstance(exc, UpstreamError) and exc.url else ""
        logger.warning("stream of model %r ended by %d %s: %s%s", generation.model, exc.status, exc.reason, exc,
                       where)

    async def _relay(self, generation: _Generation,
                     render: Callable[[_Event], tuple[bytes | None, bool]],
                     end: Callable[[], bytes], fail: Callable[[RouterError], bytes]) -> AsyncIterator[bytes]:
        """The client's SSE bytes: ``render(event)`` gives (bytes to send or None, is a token) per upstream event,
        ``end()`` the closing bytes, ``fail(error)`` the last event after a failure; TTFT and gaps observed."""
        clock = self._service.clock
        ttft, gap = self._service.metrics.token_histograms(generation.model)
        last: float | None = None
        try:
            async for event in generation.events():
                chunk, is_token = render(event)
                if chunk is None:
                    continue
                yield chunk
                if is_token:
                    now = clock()
                    if last is None:
                        ttft.observe(now - generation.started)
                    else:
                        gap.observe(now - last)
                    last = now
        except RouterError as exc:
            self._failed(generation, exc)
            yield fail(exc)
            return
        closing = end()
        if closing:
            yield closing

    # --- the endpoints -------------------------------------------------------------------------

    async def generate_stream(self, request: Request) -> Response:
        generation = await self._start(request, request.path_params["model"], self._generate_body,
                                       self._generate_scored)

        def render(event: _Event) -> tuple[bytes, bool]:
            return b"data: " + event.data + b"\n\n", token_text(event.message) is not None

        def fail(exc: RouterError) -> bytes:
            body = exc.body()
            body.setdefault("model", generation.model)
            return sse_event(body)

        return _EventStreamResponse(self._relay(generation, render, lambda: b"", fail), generation.finish,
                                    generation.headers)

    async def generate(self, request: Request) -> Response:
        generation = await self._start(request, request.path_params["model"], self._generate_body,
                                       self._generate_scored)
        try:
            events = [event.message async for event in generation.events()]
        finally:
            await generation.finish()
        return json_response(merge_events(events), headers=generation.headers)

    async def completions(self, request: Request) -> Response:
        parsed = None

        def payload(model: str, inputs: tuple[InputSpec, ...], raw: bytes) -> bytes:
            nonlocal parsed
            parsed = parse_completion_request(raw)
            return upstream_body(dataclasses.replace(parsed, model=model), inputs)

        generation = await self._start(request, None, payload, lambda raw: (parse_completion_request(raw).prompt, None))
        assert parsed is not None
        # the model the client named (OpenAI's semantics; the pipeline's choice is in the headers)
        completion = Completion(f"cmpl-{next(self._ids)}-{time.time_ns():x}", parsed.model, int(time.time()),
                                parsed.max_tokens)
        if not parsed.stream:
            try:
                async for event in generation.events():
                    completion.note(event.message)
            finally:
                await generation.finish()
            return json_response(completion.answer(), headers=generation.headers)

        def render(event: _Event) -> tuple[bytes | None, bool]:
            text = completion.note(event.message)
            return (None, False) if text is None else (completion.chunk(text), True)

        def fail(exc: RouterError) -> bytes:
            return sse_event({"error": {"message": exc.message, "type": exc.reason, "code": exc.status}})

        return _EventStreamResponse(self._relay(generation, render, completion.last_chunk, fail), generation.finish,
                                    generation.headers)

