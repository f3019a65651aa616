"""Token generation through the router, the pure half: SSE framing, input checks, the OpenAI completions subset.

Triton serves a decoupled model (one response per token) over HTTP with the KServe *generate* extension:
``POST /v2/models/{model}/generate_stream`` takes a flat JSON object whose keys are input names
(``{"PROMPT": "483+219=", "MAX_TOKENS": 5}``) and answers Server-Sent Events, one ``data: {json}`` per
response (a token's outputs, flat, plus ``model_name``/``model_version``); an error is one
``data: {"error": "..."}`` event (under a 400 head when the model refused the request). Triton's own
``/generate`` refuses a model that answers more than once, so the router builds its ``/generate`` on the
upstream stream too, merging the events (:func:`merge_events`).

This module knows no HTTP client and no Starlette: it frames and parses events (:class:`SSEParser`,
:func:`sse_event`), checks a generate body against the model's Triton config (:func:`check_generate_body`:
a missing required input, a value of the wrong JSON type, outside the range of the input's type, or of the wrong
count for the input's fixed ``dims`` -- an ``IMAGE`` of 63 values for ``[64]`` -- is a 400 naming the input, so
that it never reaches a model that would answer with a Python traceback, or Triton with a 500 the proxy would
retry), turns a checked value into a KServe v2 ``infer`` tensor (:func:`infer_tensor`: how a multimodal request's
``IMAGE`` reaches the pipeline's scorer), and translates the OpenAI ``/v1/completions`` subset
(:func:`parse_completion_request`, :func:`upstream_body`, :class:`Completion`; text only: a model that needs
another input, such as an ``IMAGE``, is a 400 naming it). A *token event* is one carrying a text output
(:data:`TEXT_OUTPUTS`: ParetoServe's ``TOKEN``, or ``text_output`` as Triton's LLM backends name it); other events
(the final summary) are not tokens.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from paretoserve.workers.router.errors import BadRequest, UpstreamError
from paretoserve.workers.router.protocol import Message, decode_object

TEXT_OUTPUTS = ("TOKEN", "text_output")
"""Output names whose value is a token's text, in order of preference."""
PROMPT_INPUTS = ("PROMPT", "text_input")
"""Input names a completion's ``prompt`` goes to (the first the model has)."""
MAX_TOKENS_INPUTS = ("MAX_TOKENS", "max_tokens")
"""Input names a completion's ``max_tokens`` goes to (the first the model has)."""
PROMPT_TOKENS_OUTPUT = "PROMPT_TOKENS"
"""An output a model may report its prompt's length in (``usage.prompt_tokens``; else ``null``)."""
SSE_DONE = b"data: [DONE]\n\n"
MAX_EVENT_BYTES = 1024 * 1024
"""An upstream event longer than this (no blank line in sight) is a broken upstream, not a token."""
_BOOKKEEPING = frozenset({"model_name", "model_version", "id"})


def sse_event(payload: object) -> bytes:
    """One Server-Sent Event carrying ``payload`` as JSON."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


class SSEParser:
    """Incremental SSE reader: :meth:`feed` raw bytes as they arrive, get each complete event's ``data``.

    Lines are ``\\n`` or ``\\r\\n`` terminated; ``data:`` lines of one event are joined by ``\\n`` (the SSE rule);
    comments and other fields (``event:``, ``id:``, ``retry:``) are ignored.
    """

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._buffer = b""
        self._data: list[bytes] = []
        self._max = max_event_bytes

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        self._buffer += chunk
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                break
            line, self._buffer = self._buffer[:end].rstrip(b"\r"), self._buffer[end + 1 :]
            if not line:
                if self._data:
                    yield b"\n".join(self._data)
                    self._data = []
                continue
            if line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
        if len(self._buffer) + sum(map(len, self._data)) > self._max:
            raise ValueError(f"an event of more than {self._max} bytes")

    def close(self) -> Iterator[bytes]:
        """The last event when the stream ended without its blank line."""
        if self._buffer.strip().startswith(b"data:"):
            yield from self.feed(b"\n\n")
        elif self._data:
            yield b"\n".join(self._data)
        self._buffer, self._data = b"", []


def decode_event(data: bytes, model: str) -> Message:
    """An upstream event's JSON object, or :class:`UpstreamError` (502) when it is not one."""
    try:
        decoded = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamError(f"model {model!r} streamed an event that is not JSON", model=model) from None
    if not isinstance(decoded, dict):
        raise UpstreamError(f"model {model!r} streamed an event that is not a JSON object", model=model)
    return decoded


def token_text(event: Mapping[str, Any]) -> str | None:
    """The token text an event carries (a one-element list is unwrapped), or ``None`` for a non-token event."""
    for name in TEXT_OUTPUTS:
        if name in event:
            value = event[name]
            if isinstance(value, list) and len(value) == 1:
                value = value[0]
            return value if isinstance(value, str) else str(value)
    return None


def error_message(body: bytes) -> bytes:
    """An upstream refusal's body as JSON (an SSE ``data:`` event is unwrapped), for :func:`~.upstream.status_error`."""
    text = body.lstrip()
    if text.startswith(b"data:"):
        events = list(SSEParser().feed(text + b"\n\n"))
        return events[0] if events else body
    return body


# --- the generate body ---------------------------------------------------------------------------


@dataclass(frozen=True)
class InputSpec:
    """One input of a model's Triton config."""

    name: str
    data_type: str
    """Triton's ``TYPE_STRING``, ``TYPE_INT32``, ``TYPE_FP32``, ``TYPE_BOOL``, ..."""
    optional: bool = False
    dims: tuple[int, ...] = ()
    """The config's ``dims`` (without the batch dimension); ``()`` when it gives none."""

    @property
    def values(self) -> int | None:
        """How many values one request's input holds when every dim is fixed (``[64]``: 64), else None."""
        if not self.dims or any(d < 1 for d in self.dims):
            return None
        return math.prod(self.dims)


def _dims(raw: object) -> tuple[int, ...]:
    if isinstance(raw, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in raw):
        return tuple(raw)
    if isinstance(raw, list) and all(isinstance(d, str) and d.lstrip("-").isdigit() for d in raw):
        return tuple(int(d) for d in raw)  # protobuf JSON writes int64 as strings
    return ()


def model_inputs(config: Mapping[str, Any]) -> tuple[InputSpec, ...]:
    """The inputs of a model's ``/v2/models/{model}/config`` answer (entries without a name are skipped)."""
    specs = []
    for raw in config.get("input") or ():
        if isinstance(raw, dict) and isinstance(raw.get("name"), str):
            specs.append(InputSpec(raw["name"], str(raw.get("data_type", "")), bool(raw.get("optional", False)),
                                   _dims(raw.get("dims"))))
    return tuple(specs)


_FLOAT_MAX = {"TYPE_FP16": 65504.0, "TYPE_FP32": 3.4028234663852886e38, "TYPE_BF16": 3.3895313892515355e38}
"""The largest finite value of each narrow float type: a larger one would reach the model as infinity."""


def _fits(value: object, data_type: str) -> bool:
    if data_type in ("TYPE_STRING", "BYTES"):
        return isinstance(value, str)
    if data_type == "TYPE_BOOL":
        return isinstance(value, bool)
    if data_type.startswith(("TYPE_INT", "TYPE_UINT")):
        return isinstance(value, int) and not isinstance(value, bool) and (
            value >= 0 or data_type.startswith("TYPE_INT"))
    if data_type.startswith(("TYPE_FP", "TYPE_BF")):
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and (
            abs(value) <= _FLOAT_MAX.get(data_type, math.inf))
    return True  # a type the router does not know: Triton judges


_KIND = {"TYPE_STRING": "a string", "TYPE_BOOL": "a boolean"}


def check_input(spec: InputSpec, value: object, model: str) -> list[Any]:
    """The values of one input (a scalar is one value), or :class:`BadRequest` naming the input when they are not
    scalars of its type, or not as many as its fixed ``dims`` hold."""
    values = value if isinstance(value, list) else [value]
    if not values or not all(_fits(v, spec.data_type) for v in values):
        kind = _KIND.get(spec.data_type, f"a finite {kserve_datatype(spec.data_type)} number"
                         if spec.data_type.startswith(("TYPE_FP", "TYPE_BF")) else "a non-negative integer"
                         if spec.data_type.startswith("TYPE_UINT") else "an integer")
        raise BadRequest(f"{spec.name}: must be {kind} (or a list of them) for model {model!r}, "
                         f"got {orjson.dumps(value).decode()[:80]}")
    expected = spec.values
    if expected is not None and len(values) != expected:
        raise BadRequest(f"{spec.name}: must hold {expected} values for model {model!r} (its dims "
                         f"{list(spec.dims)}, flat), got {len(values)}")
    return values


def check_generate_body(body: bytes, model: str, inputs: Sequence[InputSpec]) -> Message:
    """The decoded generate body, or :class:`BadRequest` naming the input that is missing, of the wrong type or
    of the wrong count (:func:`check_input`).

    A value is a scalar or a flat list of scalars of the input's type (Triton's generate mapping); keys that are
    no input of the model are left to Triton (it ignores them).
    """
    message = decode_object(body, "the request body")
    for spec in inputs:
        if spec.name not in message:
            if not spec.optional:
                required = ", ".join(s.name for s in inputs if not s.optional)
                raise BadRequest(f"{spec.name}: missing (model {model!r} requires {required})")
            continue
        check_input(spec, message[spec.name], model)
    return message


def kserve_datatype(data_type: str) -> str:
    """The KServe v2 datatype of a Triton config's ``data_type`` (``TYPE_FP32`` -> ``FP32``, strings ``BYTES``)."""
    return "BYTES" if data_type in ("TYPE_STRING", "BYTES") else data_type.removeprefix("TYPE_")


def infer_tensor(spec: InputSpec, values: Sequence[Any], *, batched: bool) -> Message:
    """One request's checked ``values`` (:func:`check_input`) as a KServe v2 ``infer`` input tensor of ``spec``:
    shape its ``dims`` (or ``[len(values)]``), with a batch dimension of 1 first for a batching model."""
    shape = list(spec.dims) if spec.values is not None else [len(values)]
    return {"name": spec.name, "datatype": kserve_datatype(spec.data_type), "shape": [1, *shape] if batched else shape,
            "data": list(values)}


def generate_prompt(body: bytes) -> str:
    """The prompt text of a generate body (its first :data:`PROMPT_INPUTS` input: a string, or a list of one), what
    the pipeline's prompt scorer reads; :class:`BadRequest` naming the input when there is none."""
    message = decode_object(body, "the request body")
    for name in PROMPT_INPUTS:
        value = message.get(name)
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if isinstance(value, str):
            return value
        if name in message:
            raise BadRequest(f"{name}: must be one string (the pipeline scores the prompt to choose a model), "
                             f"got {orjson.dumps(value).decode()[:80]}")
    raise BadRequest(f"{PROMPT_INPUTS[0]}: missing (the pipeline scores the prompt to choose a model)")


def merge_events(events: Sequence[Message]) -> Message:
    """One answer for a whole stream (the router's ``/generate``): a key sent once keeps its value, a key sent
    by several events gets the list of their values in order, ``model_name``/``model_version`` once. One event
    merges to itself, so a model that answers once gets Triton's own ``/generate`` answer."""
    merged: dict[str, Any] = {}
    counts: dict[str, int] = {}
    for event in events:
        for key, value in event.items():
            if key in _BOOKKEEPING:
                merged.setdefault(key, value)
                continue
            counts[key] = counts.get(key, 0) + 1
            if counts[key] == 1:
                merged[key] = value
            elif counts[key] == 2:
                merged[key] = [merged[key], value]
            else:
                merged[key].append(value)
    return merged


# --- OpenAI completions --------------------------------------------------------------------------


@dataclass(frozen=True)
class CompletionRequest:
    """The OpenAI ``/v1/completions`` fields the router serves."""

    model: str
    prompt: str
    max_tokens: int | None = None
    stream: bool = False


def parse_completion_request(body: bytes) -> CompletionRequest:
    """``model`` (string), ``prompt`` (one string), ``max_tokens`` (integer >= 1), ``stream`` (boolean); other
    OpenAI fields are ignored except ``n``/``best_of`` other than 1 (one answer only). 400 naming the field."""
    message = decode_object(body, "the request body")
    for name in ("model", "prompt"):
        if name not in message:
            raise BadRequest(f"{name}: missing (a completion needs 'model' and 'prompt')")
    model, prompt = message["model"], message["prompt"]
    if not isinstance(model, str) or not model:
        raise BadRequest("model: must be a non-empty string")
    if not isinstance(prompt, str):
        raise BadRequest("prompt: must be a string (lists of prompts and token arrays are not served)")
    max_tokens = message.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
        raise BadRequest(f"max_tokens: must be an integer >= 1, got {orjson.dumps(max_tokens).decode()[:40]}")
    stream = message.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("stream: must be a boolean")
    for name in ("n", "best_of"):
        if message.get(name, 1) != 1:
            raise BadRequest(f"{name}: only 1 is served")
    return CompletionRequest(model, prompt, max_tokens, stream)


def upstream_body(request: CompletionRequest, inputs: Sequence[InputSpec]) -> bytes:
    """The generate body for a completion: ``prompt`` and ``max_tokens`` under the model's own input names; a model
    that requires another input (a multimodal model's ``IMAGE``) is a 400 naming it (completions are text only)."""
    names = {spec.name for spec in inputs}
    prompt_name = next((name for name in PROMPT_INPUTS if name in names), None)
    if prompt_name is None:
        raise BadRequest(f"model: {request.model!r} takes no text prompt (no input named "
                         f"{' or '.join(PROMPT_INPUTS)})")
    message: dict[str, Any] = {prompt_name: request.prompt}
    if request.max_tokens is not None:
        limit_name = next((name for name in MAX_TOKENS_INPUTS if name in names), None)
        if limit_name is None:
            raise BadRequest(f"max_tokens: model {request.model!r} takes no token limit")
        message[limit_name] = request.max_tokens
    missing = [spec.name for spec in inputs if not spec.optional and spec.name not in message]
    if missing:
        raise BadRequest(f"{missing[0]}: missing (model {request.model!r} requires {', '.join(missing)} besides the "
                         f"prompt, and /v1/completions carries a text prompt only: send "
                         f"{' and '.join(missing)} with {prompt_name} to /v2/models/{{model or pipeline}}/generate or "
                         "generate_stream)")
    return orjson.dumps(message)


@dataclass
class Completion:
    """What a completion's stream delivered so far."""

    id: str
    model: str
    created: int
    max_tokens: int | None = None
    texts: list[str] = field(default_factory=list)
    prompt_tokens: int | None = None

    def finish_reason(self) -> str:
        """``length`` when the answer used every token the request allowed, else ``stop``."""
        return "length" if self.max_tokens is not None and len(self.texts) >= self.max_tokens else "stop"

    def note(self, event: Mapping[str, Any]) -> str | None:
        """Record an upstream event; its token text if it is a token event."""
        prompt_tokens = event.get(PROMPT_TOKENS_OUTPUT)
        if isinstance(prompt_tokens, int) and not isinstance(prompt_tokens, bool):
            self.prompt_tokens = prompt_tokens
        text = token_text(event)
        if text is not None:
            self.texts.append(text)
        return text

    def usage(self) -> dict[str, int | None]:
        completion = len(self.texts)
        total = None if self.prompt_tokens is None else self.prompt_tokens + completion
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion, "total_tokens": total}

    def _head(self) -> dict[str, Any]:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model}

    def chunk(self, text: str) -> bytes:
        """A streamed chunk with one token's text."""
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": None}
        return sse_event({**self._head(), "choices": [choice]})

    def last_chunk(self) -> bytes:
        """The chunk that ends a stream (no text, the finish reason and the usage), then ``[DONE]``."""
        choice = {"text": "", "index": 0, "logprobs": None, "finish_reason": self.finish_reason()}
        return sse_event({**self._head(), "choices": [choice], "usage": self.usage()}) + SSE_DONE

    def answer(self) -> dict[str, Any]:
        """The whole (non-streamed) completion."""
        choice = {"text": "".join(self.texts), "index": 0, "logprobs": None, "finish_reason": self.finish_reason()}
        return {**self._head(), "choices": [choice], "usage": self.usage()}
