"""Load for a token-generating pipeline: streamed requests of held-out problems, as a client sends them.

`paretoserve up --replay` and `paretoserve load` drive a pipeline whose one stage generates tokens the way a
client of it would, naming the pipeline so that the router chooses the model (its prompt cascade asks the
scorer) and relays the tokens as they come:

- a text pipeline (arithmetic prompts): ``POST /v1/completions`` with ``"model": <the pipeline>`` and
  ``"stream": true`` (`CompletionRequests`), complete at ``[DONE]``;
- a multimodal pipeline (its models read an ``IMAGE``; `generation_slo`'s ``imageValues``): ``POST
  /v2/models/<the pipeline>/generate_stream`` with the question and the digits image (`GenerateRequests`; OpenAI
  completions carry text only), complete at the model's last event (the one with ``GENERATED``).

Problems are drawn, seeded, from the held-out test split of the task the models were trained on (`draw`), so
every answer served can be checked against the problem's answer: the summary reports the exact match of the
answers actually served, by the model that served them (the router's ``x-paretoserve-variant`` header).

Timing is the client's: TTFT from the request's scheduled send time to the first token's event, each later gap
between two token events as they arrive (tokens read together share a time, so a gap can be 0), latency to the
stream's end. A request is served only if its status is 200 and its stream completes; an error event, a broken or
truncated stream, or an unreadable event is an error of that kind, never an answer.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import numpy as np
import numpy.typing as npt

from paretoserve.planner.spec import ServingPipeline, Stage
from paretoserve.workers.llm.tasks import DEFAULT_TASK, Problem, TaskSpec, make_splits
from paretoserve.workers.runtime.loadgen import LoadSettings, Outcome
from paretoserve.workers.runtime.served import GenerationModel, ServedSpec

if TYPE_CHECKING:  # torch: the multimodal task loads only for a multimodal replay
    from paretoserve.workers.llm.multimodal import VisualProblem

P = TypeVar("P")

VARIANT_HEADER = "x-paretoserve-variant"
"""The model that served a request, as the router names it (the runtime talks to the router over HTTP only, so
the name is repeated here rather than imported from ``workers/router/streaming.py``)."""
DONE = "[DONE]"
TOKEN_OUTPUT, GENERATED_OUTPUT = "TOKEN", "GENERATED"
"""A generate event's token text, and the count in the model's last event (``workers/llm/serving.py``'s wire
format, repeated for the same reason)."""


def generation_stage(pipeline: ServingPipeline) -> Stage | None:
    """The stage that generates tokens, when the pipeline has one."""
    return next((stage for stage in pipeline.spec.stages if stage.generation is not None), None)


def generation_slo(pipeline: ServingPipeline, specs: Mapping[str, ServedSpec]) -> dict[str, Any] | None:
    """What a replay of a generation pipeline served by ``specs`` sends and checks beyond the end-to-end SLO: the
    stage's ``ttftMs`` and ``itlMs`` (None where unset) and ``imageValues``, the pixels of the image its models
    read (0: text prompts only); None for a pipeline without generation."""
    stage = generation_stage(pipeline)
    if stage is None or stage.generation is None:
        return None
    images = {spec.spec.image_values for spec in specs.values() if isinstance(spec, GenerationModel)}
    return {"stage": stage.name, "ttftMs": stage.generation.ttft_ms, "itlMs": stage.generation.itl_ms,
            "imageValues": max(images, default=0)}


def draw(split: Sequence[P], count: int, seed: int) -> list[P]:
    """``count`` items of ``split`` in a seeded order: a permutation of it, repeated (each once before any
    twice)."""
    if count < 0:
        raise ValueError(f"count: must be >= 0, got {count}")
    rng = np.random.default_rng(seed)
    order: list[int] = []
    while len(order) < count:
        order += [int(i) for i in rng.permutation(len(split))]
    return [split[i] for i in order[:count]]


def draw_problems(count: int, seed: int, task: TaskSpec = DEFAULT_TASK) -> list[Problem]:
    """``count`` problems of the held-out test split of the arithmetic task in a seeded order (`draw`)."""
    return draw(make_splits(task).test, count, seed)


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


class _StreamedRequests:
    """Streamed requests naming the pipeline, one held-out problem each (`loadgen.Requests`); a kind says where it
    posts, what its body is and how it reads one event (`event`: the token text, an error kind, whether the
    stream is complete)."""

    path = ""

    def __init__(self, pipeline: str, problems: Sequence[Problem] | Sequence[VisualProblem]) -> None:
        if not problems:
            raise ValueError("problems: need at least one")
        self._pipeline = pipeline
        self._problems: list[Problem | VisualProblem] = list(problems)

    def url(self, settings: LoadSettings) -> str:
        return settings.url.rstrip("/") + self.path.format(pipeline=self._pipeline)

    def label(self, i: int) -> str:
        return self._problems[i % len(self._problems)].answer

    def prompt(self, i: int) -> str:
        return self._problems[i % len(self._problems)].prompt

    def body(self, i: int) -> dict[str, Any]:
        raise NotImplementedError

    def event(self, data: str) -> tuple[str | None, str | None, bool]:
        raise NotImplementedError

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
                    text, error, done = self.event(line[5:].strip())
                    if error is not None:
                        return Outcome(error, variant=variant)
                    if text:
                        texts.append(text)
                        times.append(clock())
                    if done:
                        break
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


class CompletionRequests(_StreamedRequests):
    """Streamed ``/v1/completions`` naming the pipeline, one held-out arithmetic problem each; complete at
    ``[DONE]``."""

    path = "/v1/completions"

    def __init__(self, pipeline: str, problems: Sequence[Problem], *, max_tokens: int | None = None) -> None:
        super().__init__(pipeline, problems)
        self._max_tokens = max_tokens
        """None: the model's own limit (its longest answer and ``EOS``)."""

    def body(self, i: int) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self._pipeline, "prompt": self.prompt(i), "stream": True}
        if self._max_tokens is not None:
            body["max_tokens"] = self._max_tokens
        return body

    def event(self, data: str) -> tuple[str | None, str | None, bool]:
        if data == DONE:
            return None, None, True
        text, error = chunk_text(data)
        return text, error, False


def generate_event(data: str) -> tuple[str | None, str | None, bool]:
    """(the token text, an error kind, complete) of one ``generate_stream`` event: a token event carries
    ``TOKEN`` (its text, or a list of one); the model's last event carries ``GENERATED`` (the tokens it sent) and
    completes the answer; ``{"error": ...}`` is the router's error event."""
    try:
        event = json.loads(data)
    except ValueError:
        return None, "bad_chunk", False
    if not isinstance(event, dict):
        return None, "bad_chunk", False
    if "error" in event:
        return None, "stream_error", False
    token = event.get(TOKEN_OUTPUT)
    if isinstance(token, list) and len(token) == 1:
        token = token[0]
    if token is not None and not isinstance(token, str):
        return None, "bad_chunk", False
    return token, None, GENERATED_OUTPUT in event


class GenerateRequests(_StreamedRequests):
    """Streamed ``POST /v2/models/{pipeline}/generate_stream`` of held-out multimodal problems: each body the
    question and its digits image (``{"PROMPT": "+37=", "IMAGE": [64 pixels]}``), which the router's prompt cascade
    scores (text and image) before it relays the body to the chosen model; complete at the model's last event."""

    path = "/v2/models/{pipeline}/generate_stream"

    def __init__(self, pipeline: str, problems: Sequence[VisualProblem],
                 images: npt.NDArray[np.float32]) -> None:
        super().__init__(pipeline, problems)
        if len(images) != len(problems):
            raise ValueError(f"images: {len(images)} for {len(problems)} problems")
        self._images = [[float(v) for v in image.ravel()] for image in images]

    def body(self, i: int) -> dict[str, Any]:
        return {"PROMPT": self.prompt(i), "IMAGE": self._images[i % len(self._images)]}

    def event(self, data: str) -> tuple[str | None, str | None, bool]:
        return generate_event(data)


def multimodal_requests(pipeline: str, count: int, seed: int) -> GenerateRequests:
    """``count`` held-out multimodal problems (test split: digits test images and seeded questions) in a seeded
    order, as `draw_problems` draws the text ones."""
    from paretoserve.workers.llm.multimodal import make_multimodal_splits  # torch: only for a multimodal replay

    splits = make_multimodal_splits()
    problems = draw(splits.test, count, seed)
    return GenerateRequests(pipeline, problems, splits.pixels(problems))
