"""The pure half of the router's token generation (:mod:`paretoserve.workers.router.generate`), and the streaming
endpoints in process against ``httpx.MockTransport`` upstreams (our own boundary): SSE framing split anywhere,
body checks naming the input, event merging, the OpenAI translation, and failures after the answer started
ending the stream with an explicit error event."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry

from paretoserve.workers.router.app import build_router
from paretoserve.workers.router.config import parse_config
from paretoserve.workers.router.errors import BadRequest, UpstreamError
from paretoserve.workers.router.generate import (
    Completion,
    InputSpec,
    SSEParser,
    check_generate_body,
    decode_event,
    error_message,
    merge_events,
    model_inputs,
    parse_completion_request,
    token_text,
    upstream_body,
)

INPUTS = (InputSpec("PROMPT", "TYPE_STRING"), InputSpec("MAX_TOKENS", "TYPE_INT32", optional=True))


def test_sse_parser_yields_events_however_the_bytes_are_split() -> None:
    stream = b'data: {"a":1}\n\ndata: {"b":2}\r\n\r\n: comment\nevent: x\ndata: {"c":\ndata: 3}\n\n'
    for size in (1, 2, 5, len(stream)):
        parser = SSEParser()
        events = [e for i in range(0, len(stream), size) for e in parser.feed(stream[i : i + size])]
        assert events == [b'{"a":1}', b'{"b":2}', b'{"c":\n3}']
        assert list(parser.close()) == []
    parser = SSEParser()
    assert list(parser.feed(b'data: {"end":1}')) == []
    assert list(parser.close()) == [b'{"end":1}']


def test_sse_parser_refuses_an_endless_event() -> None:
    parser = SSEParser(max_event_bytes=16)
    with pytest.raises(ValueError, match="16 bytes"):
        list(parser.feed(b"data: " + b"x" * 32))


def test_events_tokens_and_errors() -> None:
    assert decode_event(b'{"TOKEN":"7"}', "m") == {"TOKEN": "7"}
    with pytest.raises(UpstreamError, match="not JSON"):
        decode_event(b"{", "m")
    with pytest.raises(UpstreamError, match="JSON object"):
        decode_event(b"[1]", "m")
    assert token_text({"TOKEN": "7", "TOKEN_ID": 10}) == "7"
    assert token_text({"text_output": ["ab"]}) == "ab"
    assert token_text({"GENERATED": 3}) is None
    assert error_message(b'data: {"error":"bad"}\n\n') == b'{"error":"bad"}'
    assert error_message(b'{"error":"x"}') == b'{"error":"x"}'


def test_check_generate_body_names_the_input() -> None:
    config = {"input": [{"name": "PROMPT", "data_type": "TYPE_STRING"},
                        {"name": "MAX_TOKENS", "data_type": "TYPE_INT32", "optional": True}, {"bad": 1}]}
    assert model_inputs(config) == INPUTS
    assert check_generate_body(b'{"PROMPT":"1+1=","EXTRA":1}', "m", INPUTS)["PROMPT"] == "1+1="
    for body, named in [(b'{"MAX_TOKENS":3}', "PROMPT: missing"), (b'{"PROMPT":1}', "PROMPT: must be a string"),
                        (b'{"PROMPT":"a","MAX_TOKENS":"x"}', "MAX_TOKENS: must be an integer"),
                        (b'{"PROMPT":"a","MAX_TOKENS":true}', "MAX_TOKENS"), (b'{"PROMPT":[]}', "PROMPT"),
                        (b"[1]", "request body"), (b"{", "request body")]:
        with pytest.raises(BadRequest, match=named):
            check_generate_body(body, "m", INPUTS)
    assert check_generate_body(b'{"PROMPT":["a"],"MAX_TOKENS":[2]}', "m", INPUTS)


def test_merge_events() -> None:
    one = {"model_name": "m", "model_version": "1", "OUT": 3}
    assert merge_events([one]) == one
    events = [{"TOKEN": "7", "TOKEN_ID": 10, "model_name": "m"}, {"TOKEN": "0", "TOKEN_ID": 3, "model_name": "m"},
              {"TOKEN": "2", "TOKEN_ID": 5, "model_name": "m"}, {"GENERATED": 3, "model_name": "m"}]
    assert merge_events(events) == {"TOKEN": ["7", "0", "2"], "TOKEN_ID": [10, 3, 5], "GENERATED": 3,
                                    "model_name": "m"}


def test_completion_request_and_translation() -> None:
    request = parse_completion_request(b'{"model":"m","prompt":"1+1=","max_tokens":2,"stream":true,"temperature":0}')
    assert (request.model, request.prompt, request.max_tokens, request.stream) == ("m", "1+1=", 2, True)
    assert orjson.loads(upstream_body(request, INPUTS)) == {"PROMPT": "1+1=", "MAX_TOKENS": 2}
    assert orjson.loads(upstream_body(parse_completion_request(b'{"model":"m","prompt":"x"}'),
                                      (InputSpec("text_input", "TYPE_STRING"),))) == {"text_input": "x"}
    for body, named in [(b'{"prompt":"x"}', "model: missing"), (b'{"model":"m"}', "prompt: missing"),
                        (b'{"model":"m","prompt":["x"]}', "prompt: must be a string"),
                        (b'{"model":"m","prompt":"x","max_tokens":0}', "max_tokens"),
                        (b'{"model":"m","prompt":"x","max_tokens":1.5}', "max_tokens"),
                        (b'{"model":"m","prompt":"x","stream":"yes"}', "stream"),
                        (b'{"model":"m","prompt":"x","n":2}', "n: only 1"), (b'{"model":3,"prompt":"x"}', "model")]:
        with pytest.raises(BadRequest, match=named):
            parse_completion_request(body)
    with pytest.raises(BadRequest, match="max_tokens: model"):
        upstream_body(request, (InputSpec("PROMPT", "TYPE_STRING"),))
    with pytest.raises(BadRequest, match="no text prompt"):
        upstream_body(request, (InputSpec("IMAGE", "TYPE_FP32"),))


def test_completion_chunks_and_answer() -> None:
    completion = Completion("cmpl-1", "m", 7, max_tokens=2)
    assert completion.note({"TOKEN": "4"}) == "4"
    chunk = orjson.loads(completion.chunk("4")[len(b"data: "):])
    assert chunk["choices"][0]["text"] == "4" and chunk["choices"][0]["finish_reason"] is None
    assert completion.note({"GENERATED": 1, "PROMPT_TOKENS": 5}) is None
    answer = completion.answer()
    assert answer["choices"][0] == {"text": "4", "index": 0, "logprobs": None, "finish_reason": "stop"}
    assert answer["usage"] == {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
    completion.note({"TOKEN": "6"})
    last = completion.last_chunk()
    assert last.endswith(b"\n\ndata: [DONE]\n\n")
    assert orjson.loads(last.split(b"\n\n")[0][len(b"data: "):])["choices"][0]["finish_reason"] == "length"


# --- the endpoints against mock upstreams -----------------------------------------------------------

CONFIG = {"input": [{"name": "PROMPT", "data_type": "TYPE_STRING"},
                    {"name": "MAX_TOKENS", "data_type": "TYPE_INT32", "optional": True}]}


class _Chunks(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes], fail: bool) -> None:
        self._chunks, self._fail = chunks, fail

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk
        if self._fail:
            raise httpx.ReadError("connection reset by 10.0.0.1:8000")


def _upstream(chunks: list[bytes], *, fail: bool = False, status: int = 200):  # type: ignore[no-untyped-def]
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/config"):
            return httpx.Response(200, json=CONFIG)
        assert request.url.path == "/v2/models/lm/generate_stream"
        return httpx.Response(status, stream=_Chunks(chunks, fail), headers={"content-type": "text/event-stream"})

    return httpx.MockTransport(handler)


async def _post(transport: httpx.MockTransport, path: str, body: object) -> tuple[httpx.Response, CollectorRegistry]:
    config = parse_config({"pipeline": "p", "stages": [{"name": "s", "variants": {"lm": 1.0}}],
                           "upstreams": {"lm": ["http://replica:8000"]}})
    registry = CollectorRegistry()
    apps = build_router(config, transport=transport, registry=registry)
    async with apps.running(), httpx.AsyncClient(transport=httpx.ASGITransport(app=apps.data),
                                                 base_url="http://router") as client:
        answer = await client.post(path, json=body)
        await answer.aread()
    return answer, registry


TOKENS = [b'data: {"TOKEN":"4","TOKEN_ID":7}\n\nda', b'ta: {"TOKEN":"6","TOKEN_ID":9}\n\n',
          b'data: {"GENERATED":2}\n\n']


async def test_generate_stream_relays_the_events_and_counts_tokens() -> None:
    answer, registry = await _post(_upstream(TOKENS), "/v2/models/lm/generate_stream", {"PROMPT": "12+34="})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
    assert answer.content == b"".join(TOKENS)
    labels = {"pipeline": "p", "model": "lm"}
    assert registry.get_sample_value("paretoserve_router_ttft_seconds_count", labels) == 1
    assert registry.get_sample_value("paretoserve_router_inter_token_seconds_count", labels) == 1


async def test_a_failure_after_the_answer_started_ends_the_stream_with_an_error_event() -> None:
    answer, registry = await _post(_upstream(TOKENS[:1], fail=True), "/v2/models/lm/generate_stream",
                                   {"PROMPT": "1"})
    events = answer.content.split(b"\n\n")
    last = orjson.loads(events[-2][len(b"data: "):])
    assert last["reason"] == "upstream_unavailable" and last["model"] == "lm" and "10.0.0.1" not in last["error"]
    labels = {"pipeline": "p", "stage": "proxy", "reason": "upstream_unavailable"}
    assert registry.get_sample_value("paretoserve_router_errors_total", labels) == 1
    failing = [b'data: {"TOKEN":"4"}\n\n', b'data: {"error":"boom"}\n\n']
    answer, _ = await _post(_upstream(failing), "/v1/completions", {"model": "lm", "prompt": "1", "stream": True})
    assert b"[DONE]" not in answer.content and b"boom" in answer.content
    answer, _ = await _post(_upstream(failing), "/v2/models/lm/generate", {"PROMPT": "1"})
    assert answer.status_code == 502 and "boom" in answer.json()["error"]


async def test_refusals_are_json_errors() -> None:
    refused = [b'data: {"error":"lm: ValueError: bad prompt"}\n\n']
    answer, _ = await _post(_upstream(refused, status=400), "/v2/models/lm/generate_stream", {"PROMPT": "x"})
    assert answer.status_code == 400 and answer.json()["reason"] == "upstream_rejected"
    assert "bad prompt" in answer.json()["error"]
    answer, _ = await _post(_upstream(TOKENS), "/v2/models/lm/generate", {"MAX_TOKENS": 1})
    assert answer.status_code == 400 and answer.json()["error"].startswith("PROMPT: missing")
    answer, _ = await _post(_upstream(TOKENS), "/v1/completions", {"model": "lm", "prompt": "1", "max_tokens": -1})
    assert answer.status_code == 400 and answer.json()["error"].startswith("max_tokens")
    answer, _ = await _post(_upstream(TOKENS), "/v2/models/nope/generate", {"PROMPT": "1"})
    assert answer.status_code == 404 and "nope" in answer.json()["error"]


async def test_completion_whole_answer() -> None:
    answer, registry = await _post(_upstream(TOKENS), "/v1/completions", {"model": "lm", "prompt": "12+34="})
    body = answer.json()
    assert body["choices"][0]["text"] == "46" and body["usage"]["completion_tokens"] == 2
    assert registry.get_sample_value("paretoserve_router_ttft_seconds_count", {"pipeline": "p", "model": "lm"}) in (
        None, 0.0)
