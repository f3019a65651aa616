"""Running one request through a pipeline: a DAG of stages, variant splits, cascades, fallbacks.

This is where the pure decisions of :mod:`.decisions` meet the upstream calls. The stages run as a data
flow: a stage starts when all its parents have answered, reads what its ``inputs`` declare
(:func:`~.dataflow.stage_request`: the request's input, its parents' outputs), and stages whose parents
have answered run concurrently, so independent branches of an agent workflow overlap (a chain runs one
stage after the other without tasks). The pipeline answers with the last stage's response (a KServe v2
response) plus ``parameters`` saying which model(s) answered each row and whether rows were deferred,
pre-routed or fell back, and, for several stages, when each stage ran (``nodes``: a JSON object of stage
-> [start, end] in ms since the request arrived) and ``end_to_end_ms``. Each upstream call waits for a slot
in the queue's order (:mod:`.edf`, :func:`~.dataflow.queue_key`) and is bounded by the request's deadline;
its duration is recorded per stage and model. Every answer is checked against the rows it was sent
(:func:`~.protocol.parse_infer_response`) before anything reads or stitches it, and the response is built
from the checked outputs and the router's own ``parameters`` only. When a stage fails, the stages still
running are cancelled and the request's error names the stage that failed.

A cascade stage handles each row of a batched request on its own: rows the pre-router predicts
hard go straight to the heavy model, concurrently with the light model (and the discriminator) on
the other rows; rows whose score falls below the threshold are then sent to the heavy model as one
sub-batch; the answers are stitched back in row order. On a backend failure (after the replicas
were tried) the configured fallback serves the rows: heavy -> light keeps (or fetches) the light
answer, light -> heavy sends the rows to the heavy model, a failed discriminator degrades to the
confidence check, and a non-cascade stage tries its other variants. Anything else -- an expired
deadline, a full queue, a rejected input, or a failed fallback -- propagates as the request's
explicit error.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from paretoserve.workers.router.config import CascadeConfig, RouterConfig, StageConfig
from paretoserve.workers.router.dataflow import queue_key, stage_request
from paretoserve.workers.router.decisions import (
    Route,
    choose_variant,
    defer_by_confidence,
    defer_by_discriminator,
    fallback_variants,
    hardness,
    preroute,
)
from paretoserve.workers.router.edf import Clock, EdfAdmission
from paretoserve.workers.router.errors import DeadlineExceeded, RouterError, is_backend_failure
from paretoserve.workers.router.metrics import RouterMetrics
from paretoserve.workers.router.protocol import (
    InferRequest,
    Message,
    assemble,
    column,
    confidence,
    image_rows,
    keep_outputs,
    parse_infer_response,
    select_rows,
)
from paretoserve.workers.router.upstream import UpstreamPool
from paretoserve.workers.triton.repository import OUTPUT_PROBS

Part = tuple[Message, Sequence[int], str]


@dataclass(frozen=True, slots=True)
class Due:
    """When a stage's upstream calls must be done (the request's deadline) and their queue order key (None:
    FIFO, the time each call queues)."""

    deadline: float
    key: float | None


def _is_chain(config: RouterConfig) -> bool:
    """Whether the stages form one path (each depends on the one before): then they run without tasks."""
    return all(config.stage(name).depends_on == (config.order[i - 1],) if i else not config.stage(name).depends_on
               for i, name in enumerate(config.order))
"""A model's response, the request rows it answers (in its row order), and the model's name."""


@dataclass(slots=True)
class StageOutcome:
    """What one stage answered, row by row."""

    response: Message
    models: list[str]
    routes: list[Route]
    deferred: int = 0
    prerouted: int = 0
    fallbacks: int = 0
    notes: list[str] = field(default_factory=list)


class PipelineRunner:
    """Executes requests against the current config; stateless apart from its collaborators."""

    def __init__(self, *, pool: UpstreamPool, admission: EdfAdmission, metrics: RouterMetrics, clock: Clock,
                 on_call: Callable[[float, float], None] | None = None) -> None:
        self._pool = pool
        self._admission = admission
        self._metrics = metrics
        self._clock = clock
        self._on_call = on_call
        """Told (seconds waiting for an EDF slot, seconds of the upstream call) of every call that got a slot."""

    async def run(self, config: RouterConfig, request: InferRequest, *, request_id: str, deadline: float) -> Message:
        """The pipeline's response to ``request`` (raises a :class:`RouterError` naming the stage)."""
        started = self._clock()
        outcomes: dict[str, StageOutcome] = {}
        spans: dict[str, tuple[float, float]] = {}
        if _is_chain(config):
            for name in config.order:
                await self._stage(config, name, request, request_id, deadline, started, outcomes, spans)
        else:
            await self._flow(config, request, request_id, deadline, started, outcomes, spans)
        final = outcomes[config.order[-1]]
        outputs = keep_outputs(final.response, request.requested_outputs)["outputs"]
        parameters: dict[str, Any] = {
            "pipeline": config.pipeline,
            "stage": config.order[-1],
            "models": ",".join(final.models),
            "routes": ",".join(final.routes),
            "deferred": final.deferred,
            "prerouted": final.prerouted,
            "fallback": final.fallbacks > 0,
        }
        if final.notes:
            parameters["notes"] = "; ".join(final.notes)
        if len(outcomes) > 1:
            parameters["stages"] = ",".join(f"{name}={'+'.join(outcomes[name].models)}" for name in config.order)
            parameters["nodes"] = orjson.dumps({name: [round(spans[name][0] * 1000.0, 3),
                                                       round(spans[name][1] * 1000.0, 3)]
                                                for name in config.order}).decode()
            parameters["end_to_end_ms"] = round((self._clock() - started) * 1000.0, 3)
        response: Message = {"model_name": config.pipeline, "outputs": outputs, "parameters": parameters}
        client_id = request.request_id()
        if client_id is not None:
            response["id"] = client_id
        return response

    async def _flow(self, config: RouterConfig, request: InferRequest, request_id: str, deadline: float,
                    started: float, outcomes: dict[str, StageOutcome], spans: dict[str, tuple[float, float]]) -> None:
        """Every stage as a task that starts once its parents have answered; the first failure cancels the rest."""
        tasks: dict[str, asyncio.Task[None]] = {}

        async def node(name: str) -> None:
            parents = [tasks[parent] for parent in config.stage(name).depends_on]
            if parents:
                await asyncio.gather(*parents)
            await self._stage(config, name, request, request_id, deadline, started, outcomes, spans)

        for name in config.order:  # parents first: each task finds its parents' tasks
            tasks[name] = asyncio.create_task(node(name))
        try:
            done, _ = await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_EXCEPTION)
            # the stage that failed first in the DAG's order (its children only re-raise its error)
            errors = [task.exception() for task in tasks.values() if task in done and not task.cancelled()]
            error = next((e for e in errors if e is not None), None)
            if error is not None:
                raise error
        finally:
            pending = [task for task in tasks.values() if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    async def _stage(self, config: RouterConfig, name: str, request: InferRequest, request_id: str, deadline: float,
                     started: float, outcomes: dict[str, StageOutcome], spans: dict[str, tuple[float, float]]) -> None:
        """Run stage ``name`` on what its inputs read; record its outcome and its span since ``started``."""
        stage = config.stage(name)
        begin = self._clock()
        due = Due(deadline, queue_key(config, name, deadline, started))
        try:
            answers = {parent: outcomes[parent].response for parent in stage.depends_on}
            models = {parent: "+".join(outcomes[parent].models) for parent in stage.depends_on}
            stage_input = stage_request(stage, request, answers, models)
            if stage.cascade is None:
                outcome = await self._direct(config, stage, stage_input, request_id, due)
            else:
                outcome = await self._cascade(config, stage, stage.cascade, stage_input, due)
        except RouterError as exc:
            exc.at_stage(name)
            raise
        outcomes[name] = outcome
        spans[name] = (begin - started, self._clock() - started)

    async def call(self, stage: str, model: str, body: bytes, rows: int, due: Due) -> Message:
        """One upstream call for ``rows`` rows: a slot in the queue's order, the replicas, bounded by the request's
        deadline; its answer checked. The stages' calls, and the prompt scorer's (:mod:`.prompt_router`)."""
        deadline = due.deadline
        started = self._clock()
        try:
            await self._admission.acquire(deadline, started if due.key is None else due.key)
            admitted = self._clock()
            try:
                if math.isinf(deadline):
                    content = await self._pool.infer(model, body)
                else:
                    try:
                        async with asyncio.timeout(deadline - self._clock()):
                            content = await self._pool.infer(model, body)
                    except TimeoutError:
                        raise DeadlineExceeded(f"the deadline passed while {model!r} was answering") from None
            finally:
                self._admission.release()
                if self._on_call is not None:
                    self._on_call(admitted - started, self._clock() - admitted)
        finally:
            self._metrics.call(stage, model, self._clock() - started)
        return parse_infer_response(content, model, rows)

    async def _settle(self, calls: dict[str, Coroutine[Any, Any, Message]]) -> dict[str, Message | RouterError]:
        """Run ``calls`` concurrently; each result is its response or its :class:`RouterError`."""
        if len(calls) == 1:
            (key, call), = calls.items()
            try:
                return {key: await call}
            except RouterError as exc:
                return {key: exc}
        results = await asyncio.gather(*calls.values(), return_exceptions=True)
        settled: dict[str, Message | RouterError] = {}
        for key, result in zip(calls, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, RouterError):
                raise result
            settled[key] = result
        return settled

    def _count(self, stage: str, models: Sequence[str], routes: Sequence[Route]) -> None:
        for (model, route), count in Counter(zip(models, routes, strict=True)).items():
            self._metrics.rows(stage, model, route, count)

    async def _direct(
        self, config: RouterConfig, stage: StageConfig, request: InferRequest, request_id: str, due: Due
    ) -> StageOutcome:
        model = choose_variant(stage.variants, request_id)
        route = Route.DIRECT
        try:
            response = await self.call(stage.name, model, request.raw, request.batch, due)
        except RouterError as exc:
            if not (is_backend_failure(exc) and config.fallback.other_variants):
                raise
            error = exc
            for other in fallback_variants(stage.variants, model):
                try:
                    response = await self.call(stage.name, other, request.raw, request.batch, due)
                except RouterError as again:
                    if not is_backend_failure(again):
                        raise
                    error = again
                    continue
                model, route = other, Route.FALLBACK
                break
            else:
                raise error from None
        self._metrics.rows(stage.name, model, route, request.batch)
        outcome = StageOutcome(response, [model], [route] * request.batch)
        if route is Route.FALLBACK:
            outcome.fallbacks = request.batch
            self._metrics.fell_back(stage.name, request.batch)
        return outcome

    async def _cascade(
        self, config: RouterConfig, stage: StageConfig, cascade: CascadeConfig, request: InferRequest, due: Due
    ) -> StageOutcome:
        name, light, heavy = stage.name, cascade.light, cascade.heavy
        rows = list(range(request.batch))
        if cascade.pre_route_threshold is not None:
            hard = preroute([hardness(image) for image in image_rows(request)], cascade.pre_route_threshold)
        else:
            hard = [False] * request.batch
        pre = [row for row in rows if hard[row]]
        rest = [row for row in rows if not hard[row]]
        models: list[str] = [light] * request.batch
        routes: list[Route] = [Route.LIGHT] * request.batch
        notes: list[str] = []
        calls: dict[str, Coroutine[Any, Any, Message]] = {}
        if pre:
            calls["pre"] = self.call(name, heavy, select_rows(request, pre), len(pre), due)
        if rest:
            rest_body = select_rows(request, rest)
            calls["light"] = self.call(name, light, rest_body, len(rest), due)
            if cascade.discriminator is not None:
                calls["judge"] = self.call(name, cascade.discriminator, rest_body, len(rest), due)
        settled = await self._settle(calls)
        parts: list[Part] = []
        deferred: list[int] = []
        late: list[tuple[str, list[int], Route, str | None]] = []  # (model, rows, route, fallback model)

        light_answer = settled.get("light")
        if isinstance(light_answer, RouterError):
            if not (is_backend_failure(light_answer) and config.fallback.light_to_heavy):
                raise light_answer
            notes.append(f"light model failed: {light_answer.message}")
            late.append((heavy, rest, Route.FALLBACK, None))
        elif light_answer is not None:
            parts.append((light_answer, rest, light))
            judge = settled.get("judge")
            if isinstance(judge, RouterError):
                if not is_backend_failure(judge):
                    raise judge
                notes.append(f"discriminator failed, used the confidence check: {judge.message}")
                judge = None
            if judge is not None and cascade.discriminator is not None:
                p_wrong = column(judge, OUTPUT_PROBS, 1, cascade.discriminator)
                defer = defer_by_discriminator(p_wrong, cascade.threshold)
            else:
                defer = defer_by_confidence(confidence(light_answer, light), cascade.threshold)
            deferred = [row for row, flag in zip(rest, defer, strict=True) if flag]
            if deferred:
                late.append((heavy, deferred, Route.HEAVY, light if config.fallback.heavy_to_light else None))

        pre_answer = settled.get("pre")
        if isinstance(pre_answer, RouterError):
            if not (is_backend_failure(pre_answer) and config.fallback.heavy_to_light):
                raise pre_answer
            notes.append(f"heavy model failed: {pre_answer.message}")
            late.append((light, pre, Route.FALLBACK, None))
        elif pre_answer is not None:
            parts.append((pre_answer, pre, heavy))
            for row in pre:
                models[row], routes[row] = heavy, Route.PREROUTED

        for model, late_rows, route, backup in late:
            try:
                answer = await self.call(name, model, select_rows(request, late_rows), len(late_rows), due)
            except RouterError as exc:
                if backup is None or not is_backend_failure(exc):
                    raise
                notes.append(f"heavy model failed: {exc.message}")
                model, route = backup, Route.FALLBACK  # the light answer already in ``parts`` stands
            else:
                parts.append((answer, late_rows, model))
            for row in late_rows:
                models[row], routes[row] = model, route

        fallbacks = routes.count(Route.FALLBACK)
        self._count(name, models, routes)
        if deferred:
            self._metrics.deferred(name, len(deferred))
        if fallbacks:
            self._metrics.fell_back(name, fallbacks)
        return StageOutcome(
            response=assemble(request.batch, parts),
            models=list(dict.fromkeys(models)),
            routes=routes,
            deferred=len(deferred),
            prerouted=len(pre) if not isinstance(pre_answer, RouterError) else 0,
            fallbacks=fallbacks,
            notes=notes,
        )
