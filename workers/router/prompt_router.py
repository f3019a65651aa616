"""Which model answers a token-generation request addressed to the pipeline: the plan's query-aware split.

A client may name the pipeline where it would name a model (``/v2/models/{pipeline}/generate[_stream]``, or a
completion whose ``model`` is the pipeline); the router then chooses the model as the live config says, and relays
the chosen model's stream exactly as for a direct request (:mod:`.streaming`). Generation through the pipeline
runs on a pipeline of ONE stage (:func:`pipeline_stage`; feeding generated text into further stages is not
served, so a multi-stage pipeline answers 400):

- a stage without a cascade: the weighted split of its variants (:func:`~.decisions.choose_variant`);
- a ``prompt`` cascade with a ``scorer`` (a generation stage's query-aware split): the scorer model -- KServe v2
  ``infer``, input ``PROMPT`` (BYTES, one row), output ``SCORE`` (FP32, P(the light model answers wrongly)) --
  scores the request's prompt, and the request goes to ``heavy`` when the score is at least the live
  ``preRouteThreshold`` (:func:`~.decisions.preroute`, the rule the planner's rows were measured with), else to
  ``light``: it never visits both models. At threshold 0 every prompt goes to ``heavy`` without asking the scorer
  (every probability is at least 0). A live update of the threshold applies from the next request;
- any other cascade: 400 (the confidence, discriminator and hybrid routers judge the light model's answer rows,
  which a token stream does not have).

A scorer may read more than the prompt: a multimodal family's (``mm-scorer``: ``IMAGE`` FP32 ``[64]`` and
``PROMPT``) takes the request's image too. Every input of the scorer's Triton config other than ``PROMPT`` is taken
from the request's generate body under the same name and checked against that config as the model's inputs are
(:func:`scorer_tensors`: missing, of the wrong type or count, a 400 naming it -- the client's error, never a
fallback); a completion carries text only, so a scorer that needs more refuses it with a 400 naming the input.

A scorer that fails -- an error answer, an unreachable or timed-out replica, a malformed ``SCORE`` or one outside
[0, 1] -- sends the request to ``heavy``: never a silently worse answer, never a 5xx because of the scorer alone.
The failure is logged and the request counted as a fallback (``route="fallback"`` on the heavy model in
``paretoserve_router_requests_total``, and ``paretoserve_router_fallbacks_total``). Only the request's own errors
end it: its deadline passing (504), a full queue (429), an input the scorer reads that the body does not carry
right (400). The scorer call waits for a slot of the EDF queue like every upstream call
(:meth:`~.pipeline.PipelineRunner.call`), bounded by the request's deadline and the upstream read timeout
(``timeouts.readMs``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import orjson

from paretoserve.planner.spec import RouterKind
from paretoserve.workers.router.config import CascadeConfig, RouterConfig, StageConfig
from paretoserve.workers.router.decisions import Route, choose_variant, preroute
from paretoserve.workers.router.errors import BadRequest, DeadlineExceeded, QueueFull, RouterError, UpstreamError
from paretoserve.workers.router.generate import InputSpec, check_input, infer_tensor
from paretoserve.workers.router.protocol import Message, column

logger = logging.getLogger(__name__)

SCORER_INPUT = "PROMPT"
SCORER_OUTPUT = "SCORE"
REQUEST_ERRORS = (DeadlineExceeded, QueueFull, BadRequest)
"""Errors of the request itself, not of the scorer: they end the request as they would any call (a scorer's own
refusal is an :class:`UpstreamError`, a fallback)."""

Scorer = Callable[[str, str], Awaitable[float]]
"""``score(scorer model, prompt)``: the prompt's score, or a :class:`RouterError`."""


@dataclass(frozen=True, slots=True)
class Choice:
    """The model that answers a generation request, and why."""

    stage: str
    """The stage (or ``proxy`` for a request that named a model) the request's metrics count under."""
    model: str
    route: Route
    score: float | None = None
    """The scorer's answer (None: no scorer asked, or it failed)."""


def pipeline_stage(config: RouterConfig) -> StageConfig:
    """The stage a generation request addressed to the pipeline runs on, or :class:`BadRequest` saying why none."""
    if len(config.stages) != 1:
        raise BadRequest(f"pipeline {config.pipeline!r} has {len(config.stages)} stages: token generation through "
                         "a pipeline needs exactly one stage; name a model instead")
    stage = config.stages[0]
    cascade = stage.cascade
    if cascade is not None and (cascade.router is not RouterKind.PROMPT or cascade.scorer is None):
        raise BadRequest(f"stage {stage.name!r} of pipeline {config.pipeline!r} is a {cascade.router.value} "
                         "cascade without a prompt scorer: token generation through the pipeline needs a prompt "
                         "router with a scorer (or no cascade); name a model instead")
    return stage


def model_for_score(cascade: CascadeConfig, score: float | None) -> tuple[str, Route]:
    """The model for a prompt scored ``score`` (None: the scorer failed, so the heavy model)."""
    if score is None:
        return cascade.heavy, Route.FALLBACK
    threshold = cascade.pre_route_threshold
    if threshold is None:  # refused by the config for the prompt router
        raise ValueError("a prompt cascade without a preRouteThreshold")
    hard = preroute([score], threshold)[0]
    return (cascade.heavy, Route.PREROUTED) if hard else (cascade.light, Route.LIGHT)


def scorer_body(prompt: str, *, batched: bool, extra: Sequence[Message] = ()) -> bytes:
    """The scorer's KServe v2 request for one prompt (shape ``[1, 1]`` for a batching model, ``[1]`` otherwise), and
    the ``extra`` input tensors a scorer reading more than the prompt takes (:func:`scorer_tensors`)."""
    tensor = {"name": SCORER_INPUT, "datatype": "BYTES", "shape": [1, 1] if batched else [1], "data": [prompt]}
    return orjson.dumps({"inputs": [tensor, *extra], "outputs": [{"name": SCORER_OUTPUT}]})


def scorer_tensors(body: Message | None, scorer: str, inputs: Sequence[InputSpec], *,
                   batched: bool) -> list[Message]:
    """The scorer's inputs other than ``PROMPT`` (its config's ``inputs``), taken from the request's generate
    ``body`` by name and checked against them; ``body`` None: a completion, which carries the prompt only.
    :class:`BadRequest` naming a required input that is missing, or a value that does not fit the input."""
    tensors = []
    for spec in inputs:
        if spec.name == SCORER_INPUT:
            continue
        if body is None or spec.name not in body:
            if spec.optional:
                continue
            why = ("and /v1/completions carries a text prompt only: send it to /v2/models/{pipeline}/generate or "
                   "generate_stream" if body is None else "with the prompt, to choose the model")
            raise BadRequest(f"{spec.name}: missing (the pipeline's prompt scorer {scorer!r} reads it, {why})")
        tensors.append(infer_tensor(spec, check_input(spec, body[spec.name], scorer), batched=batched))
    return tensors


def read_score(answer: Message, scorer: str) -> float:
    """The ``SCORE`` of a checked one-row answer: a probability (:class:`UpstreamError` when missing, not numeric
    or not in [0, 1])."""
    score = column(answer, SCORER_OUTPUT, 0, scorer)[0]
    if not 0.0 <= score <= 1.0:  # NaN fails too
        raise UpstreamError(f"model {scorer!r} answered a {SCORER_OUTPUT} that is not a probability in [0, 1]",
                            model=scorer)
    return score


async def choose(stage: StageConfig, prompt: str, score: Scorer, request_id: str) -> Choice:
    """The model for a generation request on ``stage`` (from :func:`pipeline_stage`) with ``prompt``."""
    cascade = stage.cascade
    if cascade is None:
        return Choice(stage.name, choose_variant(stage.variants, request_id), Route.DIRECT)
    scorer = cascade.scorer
    if scorer is None:  # refused by pipeline_stage
        raise ValueError(f"stage {stage.name!r} has no prompt scorer")
    if cascade.pre_route_threshold == 0.0:  # every score in [0, 1] is at least 0: the answer is known unasked
        return Choice(stage.name, cascade.heavy, Route.PREROUTED)
    try:
        value: float | None = await score(scorer, prompt)
    except REQUEST_ERRORS:
        raise
    except RouterError as exc:
        where = f" [{exc.url}: {exc.detail}]" if isinstance(exc, UpstreamError) and exc.url else ""
        logger.warning("prompt scorer %r failed (%d %s: %s)%s; stage %r sends the prompt to %r", scorer, exc.status,
                       exc.reason, exc, where, stage.name, cascade.heavy)
        value = None
    model, route = model_for_score(cascade, value)
    return Choice(stage.name, model, route, value)
