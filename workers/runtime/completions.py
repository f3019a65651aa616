"""Load for a token-generating pipeline: streamed OpenAI completions of held-out arithmetic prompts.

`paretoserve up --replay` and `paretoserve load` drive a pipeline whose one stage generates tokens the way a
client of it would: each request is ``POST /v1/completions`` with ``"model": <the pipeline>`` and
``"stream": true``, so the router chooses the model (its prompt cascade asks the scorer) and relays the tokens
as they come. Prompts are drawn, seeded, from the held-out test split of the arithmetic task the models were
trained on (`draw_problems`), so every answer served can be checked against the problem's answer: the summary
reports the exact match of the answers actually served, by the model that served them (the router's
``x-paretoserve-variant`` header).

Timing is the client's: TTFT from the request's scheduled send time to the first token's chunk, each later gap
between two token chunks as they arrive (tokens read together share a time, so a gap can be 0), latency to the
stream's ``[DONE]``. A request is served only if its status is 200 and its stream ends with ``[DONE]``; an error
event, a broken or truncated stream, or an unreadable chunk is an error of that kind, never an answer.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import numpy as np

from paretoserve.planner.spec import ServingPipeline, Stage
from paretoserve.workers.llm.tasks import DEFAULT_TASK, Problem, TaskSpec, make_splits
from paretoserve.workers.runtime.loadgen import LoadSettings, Outcome

VARIANT_HEADER = "x-paretoserve-variant"
"""The model that served a request, as the router names it (the runtime talks to the router over HTTP only, so
the name is repeated here rather than imported from ``workers/router/streaming.py``)."""
DONE = "[DONE]"


def generation_stage(pipeline: ServingPipeline) -> Stage | None:
    """The stage that generates tokens, when the pipeline has one."""
    return next((stage for stage in pipeline.spec.stages if stage.generation is not None), None)


def generation_slo(pipeline: ServingPipeline) -> dict[str, Any] | None:
    """What a replay of a generation pipeline checks beyond the end-to-end SLO: the stage's ``ttftMs`` and
    ``itlMs`` (None where unset); None for a pipeline without generation."""
    stage = generation_stage(pipeline)
    if stage is None or stage.generation is None:
        return None
    return {"stage": stage.name, "ttftMs": stage.generation.ttft_ms, "itlMs": stage.generation.itl_ms}


def draw_problems(count: int, seed: int, task: TaskSpec = DEFAULT_TASK) -> list[Problem]:
    """``count`` problems of the held-out test split in a seeded order: a permutation of the split, repeated
    (each prompt once before any twice)."""
    if count < 0:
        raise ValueError(f"count: must be >= 0, got {count}")
    test = make_splits(task).test
    rng = np.random.default_rng(seed)
    order: list[int] = []
    while len(order) < count:
        order += [int(i) for i in rng.permutation(len(test))]
    return [test[i] for i in order[:count]]


def chunk_text(data: str) -> tuple[str | None, str | None]:
    """(the token text, an error kind) of one streamed chunk's ``data``: an OpenAI completion chunk has its text
    in ``choices[0].text`` (empty in the last chunk); ``{"error": ...}`` is the router's error event."""
    try:
        event = json.loads(data)
    except ValueError:
        return None, "bad_chunk"
    if not isinstance(event, dict):
        return None, "bad_chunk"
    if "error" in event:
        return None, "stream_error"
    choices = event.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None, "bad_chunk"
    text = choices[0].get("text")
    if not isinstance(text, str):
        return None, "bad_chunk"
    return text, None


class CompletionRequests:
    """Streamed ``/v1/completions`` naming the pipeline, one held-out problem each (`loadgen.Requests`)."""

    def __init__(self, pipeline: str, problems: Sequence[Problem], *, max_tokens: int | None = None) -> None:
        if not problems:
            raise ValueError("problems: need at least one")
        self._pipeline = pipeline
        self._problems = list(problems)
        self._max_tokens = max_tokens
        """None: the model's own limit (its longest answer and ``EOS``)."""

    def url(self, settings: LoadSettings) -> str:
        return f"{settings.url.rstrip('/')}/v1/completions"

    def _problem(self, i: int) -> Problem:
        return self._problems[i % len(self._problems)]

    def label(self, i: int) -> str:
        return self._problem(i).answer

    def prompt(self, i: int) -> str:
        return self._problem(i).prompt

    def body(self, i: int) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self._pipeline, "prompt": self.prompt(i), "stream": True}
        if self._max_tokens is not None:
            body["max_tokens"] = self._max_tokens
        return body

    async def send(self, client: httpx.AsyncClient, url: str, i: int, headers: Mapping[str, str],
                   started: float) -> Outcome:
        clock = asyncio.get_running_loop().time
        async with client.stream("POST", url, json=self.body(i), headers=dict(headers)) as response:
            variant = response.headers.get(VARIANT_HEADER)
            if response.status_code != 200:
                await response.aread()
                return Outcome(f"http_{response.status_code}", variant=variant)
            texts: list[str] = []
            times: list[float] = []
            try:
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == DONE:
                        break
                    text, error = chunk_text(data)
                    if error is not None:
                        return Outcome(error, variant=variant)
                    if text:
                        texts.append(text)
                        times.append(clock())
                else:
                    return Outcome("truncated", variant=variant)
            except httpx.TimeoutException:
                return Outcome("timeout", variant=variant)
            except httpx.HTTPError:
                return Outcome("stream_broken", variant=variant)
        ended = clock()
        ttft = ((times[0] if times else ended) - started) * 1e3
        gaps = tuple(round((later - earlier) * 1e3, 3) for earlier, later in zip(times, times[1:], strict=False))
        return Outcome(None, "".join(texts), variant=variant, ttft_ms=round(ttft, 3), gaps_ms=gaps)

