"""Running one request through a pipeline: stages in DAG order, variant splits, cascades, fallbacks.

This is where the pure decisions of :mod:`.decisions` meet the upstream calls. Every stage of
these single-input classification pipelines runs on the request's own input, one after another in
topological order; the pipeline answers with the last stage's response (a KServe v2 response)
plus ``parameters`` saying which model(s) answered each row and whether rows were deferred,
pre-routed or fell back. Each upstream call waits for an EDF slot (:mod:`.edf`) and is bounded by
the request's deadline; its duration is recorded per stage and model. Every answer is checked against
the rows it was sent (:func:`~.protocol.parse_infer_response`) before anything reads or stitches it,
and the response is built from the checked outputs and the router's own ``parameters`` only.

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

from paretoserve.workers.router.config import CascadeConfig, RouterConfig, StageConfig
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
        outcomes: dict[str, StageOutcome] = {}
        for name in config.order:
            stage = config.stage(name)
            try:
                if stage.cascade is None:
                    outcomes[name] = await self._direct(config, stage, request, request_id, deadline)
                else:
                    outcomes[name] = await self._cascade(config, stage, stage.cascade, request, deadline)
            except RouterError as exc:
                exc.at_stage(name)
                raise
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
            parameters["stages"] = ",".join(f"{name}={'+'.join(o.models)}" for name, o in outcomes.items())
        response: Message = {"model_name": config.pipeline, "outputs": outputs, "parameters": parameters}
        client_id = request.request_id()
        if client_id is not None:
            response["id"] = client_id
        return response

    async def _call(self, stage: str, model: str, body: bytes, rows: int, deadline: float) -> Message:
        """One upstream call for ``rows`` rows: an EDF slot, the replicas, bounded by the request's deadline."""
        started = self._clock()
        try:
            await self._admission.acquire(deadline)
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
        self, config: RouterConfig, stage: StageConfig, request: InferRequest, request_id: str, deadline: float
    ) -> StageOutcome:
        model = choose_variant(stage.variants, request_id)
        route = Route.DIRECT
        try:
            response = await self._call(stage.name, model, request.raw, request.batch, deadline)
        except RouterError as exc:
            if not (is_backend_failure(exc) and config.fallback.other_variants):
                raise
            error = exc
            for other in fallback_variants(stage.variants, model):
                try:
                    response = await self._call(stage.name, other, request.raw, request.batch, deadline)
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
        self, config: RouterConfig, stage: StageConfig, cascade: CascadeConfig, request: InferRequest, deadline: float
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
            calls["pre"] = self._call(name, heavy, select_rows(request, pre), len(pre), deadline)
        if rest:
            rest_body = select_rows(request, rest)
            calls["light"] = self._call(name, light, rest_body, len(rest), deadline)
            if cascade.discriminator is not None:
                calls["judge"] = self._call(name, cascade.discriminator, rest_body, len(rest), deadline)
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
                answer = await self._call(name, model, select_rows(request, late_rows), len(late_rows), deadline)
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
