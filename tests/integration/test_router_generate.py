"""Token generation through the router in front of the REAL Triton serving the decoupled ``arith-small``.

Covers: ``/v2/models/{m}/generate`` answers what the offline greedy ``NumpyLM.generate`` says; ``generate_stream``
and ``/v1/completions`` with ``stream: true`` deliver one event per token, in order, ending properly (the model's
final summary event; ``[DONE]`` for OpenAI); ``stream: false`` answers the whole text; the TTFT and inter-token
histograms count the streamed requests and tokens; errors are JSON with their status (unknown model 404, a
prompt the model refuses 400, a missing input or field 400 naming it). The router runs in process
(``httpx.ASGITransport``) with its real upstream transport. ``test_measure_streaming_overhead`` measures TTFT and
inter-token latency through the router and directly against Triton (``-s`` prints them).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry

from paretoserve.workers.llm.cache import LLMCatalog
from paretoserve.workers.llm.engine import NumpyLM
from paretoserve.workers.llm.tasks import make_splits
from paretoserve.workers.llm.tokenizer import decode, encode_prompt
from paretoserve.workers.router.app import build_router
from paretoserve.workers.router.config import RouterConfig, parse_config
from paretoserve.workers.router.serve import ServerThread

pytestmark = [pytest.mark.triton, pytest.mark.slow]

MODEL = "arith-small"
MAX_NEW = 5


@pytest.fixture(scope="module")
def engine(llm_catalog: LLMCatalog) -> NumpyLM:
    return llm_catalog.engine(MODEL)


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    return [problem.prompt for problem in make_splits().test[:8]]


@pytest.fixture(scope="module")
def triton_url(llm_triton_url: str) -> str:
    """The session's LLM Triton (``tests/integration/conftest.py``); these tests use its ``arith-small``."""
    return llm_triton_url


def config_for(url: str) -> RouterConfig:
    return parse_config({"pipeline": "arith", "stages": [{"name": "answer", "variants": {MODEL: 1.0}}],
                         "upstreams": {MODEL: [url]}})


@asynccontextmanager
async def routed(url: str) -> AsyncIterator[tuple[httpx.AsyncClient, CollectorRegistry]]:
    config = config_for(url)
    registry = CollectorRegistry()
    apps = build_router(config, registry=registry)
    async with apps.running(), httpx.AsyncClient(transport=httpx.ASGITransport(app=apps.data),
                                                 base_url="http://router", timeout=60.0) as client:
        yield client, registry


def offline(engine: NumpyLM, prompt: str, max_tokens: int = MAX_NEW) -> list[int]:
    return engine.generate([encode_prompt(prompt)], max_tokens)[0]


async def sse(client: httpx.AsyncClient, path: str, body: object) -> tuple[int, str, list[bytes]]:
    """Status, content type and the ``data`` of each event, as they arrived."""
    async with client.stream("POST", path, json=body) as response:
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    events = [block[len(b"data: "):] for block in raw.split(b"\n\n") if block.startswith(b"data: ")]
    assert raw.endswith(b"\n\n") and len(events) == raw.count(b"\n\n"), raw
    return response.status_code, response.headers.get("content-type", ""), events


def sample(registry: CollectorRegistry, name: str, suffix: str) -> float:
    return registry.get_sample_value(f"{name}_{suffix}", {"pipeline": "arith", "model": MODEL}) or 0.0


async def test_generate_answers_the_offline_greedy_tokens(triton_url: str, engine: NumpyLM,
                                                          prompts: list[str]) -> None:
    async with routed(triton_url) as (client, _):
        for prompt in prompts:
            answer = await client.post(f"/v2/models/{MODEL}/generate", json={"PROMPT": prompt})
            assert answer.status_code == 200, answer.text
            body = answer.json()
            ids = offline(engine, prompt)
            tokens = body["TOKEN"] if isinstance(body["TOKEN"], list) else [body["TOKEN"]]
            token_ids = body["TOKEN_ID"] if isinstance(body["TOKEN_ID"], list) else [body["TOKEN_ID"]]
            assert "".join(tokens) == decode(ids)
            assert token_ids == [t for t in ids if t != 2]  # EOS ends the answer without being sent
            assert body["GENERATED"] == len(tokens) and body["model_name"] == MODEL
        short = (await client.post(f"/v2/models/{MODEL}/generate", json={"PROMPT": prompts[0], "MAX_TOKENS": 2}))
        assert "".join(short.json()["TOKEN"]) == decode(offline(engine, prompts[0], 2))


async def test_generate_stream_relays_one_event_per_token(triton_url: str, engine: NumpyLM,
                                                          prompts: list[str]) -> None:
    async with routed(triton_url) as (client, registry):
        tokens_sent = 0
        for prompt in prompts:
            status, kind, events = await sse(client, f"/v2/models/{MODEL}/generate_stream", {"PROMPT": prompt})
            assert status == 200 and kind.startswith("text/event-stream")
            messages = [orjson.loads(event) for event in events]
            *token_events, final = messages
            ids = [t for t in offline(engine, prompt) if t != 2]
            assert [m["TOKEN_ID"] for m in token_events] == ids
            assert "".join(m["TOKEN"] for m in token_events) == decode(ids)
            assert "TOKEN" not in final and final["GENERATED"] == len(ids)
            tokens_sent += len(ids)
        assert sample(registry, "paretoserve_router_ttft_seconds", "count") == len(prompts)
        assert sample(registry, "paretoserve_router_inter_token_seconds", "count") == tokens_sent - len(prompts)
        assert sample(registry, "paretoserve_router_ttft_seconds", "sum") > 0


async def test_completions_stream_and_whole(triton_url: str, engine: NumpyLM, prompts: list[str]) -> None:
    async with routed(triton_url) as (client, registry):
        prompt = prompts[1]
        text = decode(offline(engine, prompt))
        status, kind, events = await sse(client, "/v1/completions",
                                         {"model": MODEL, "prompt": prompt, "stream": True})
        assert status == 200 and kind.startswith("text/event-stream")
        assert events[-1] == b"[DONE]"
        chunks = [orjson.loads(event) for event in events[:-1]]
        *token_chunks, last = chunks
        assert [c["choices"][0]["text"] for c in token_chunks] == list(text)
        assert all(c["object"] == "text_completion" and c["model"] == MODEL for c in chunks)
        assert len({c["id"] for c in chunks}) == 1
        assert last["choices"][0]["finish_reason"] == "stop" and last["usage"]["completion_tokens"] == len(text)
        assert sample(registry, "paretoserve_router_ttft_seconds", "count") == 1
        assert sample(registry, "paretoserve_router_inter_token_seconds", "count") == len(text) - 1

        whole = await client.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "stream": False})
        assert whole.status_code == 200, whole.text
        body = whole.json()
        assert set(body) == {"id", "object", "created", "model", "choices", "usage"}
        assert body["object"] == "text_completion" and body["choices"][0]["text"] == text
        assert body["choices"][0]["index"] == 0 and body["choices"][0]["finish_reason"] == "stop"
        cut = (await client.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 1})).json()
        assert cut["choices"][0] == {**cut["choices"][0], "text": text[0], "finish_reason": "length"}


async def test_errors_are_json_with_their_status(triton_url: str) -> None:
    async with routed(triton_url) as (client, _):
        cases = [
            ("/v2/models/nope/generate_stream", {"PROMPT": "1+1="}, 404, "nope"),
            ("/v2/models/nope/generate", {"PROMPT": "1+1="}, 404, "nope"),
            ("/v1/completions", {"model": "nope", "prompt": "1+1="}, 404, "nope"),
            (f"/v2/models/{MODEL}/generate_stream", {"PROMPT": "hello"}, 400, "vocabulary"),
            (f"/v2/models/{MODEL}/generate", {"PROMPT": "hello"}, 400, "vocabulary"),
            ("/v1/completions", {"model": MODEL, "prompt": "hello", "stream": True}, 400, "vocabulary"),
            (f"/v2/models/{MODEL}/generate_stream", {"MAX_TOKENS": 3}, 400, "PROMPT"),
            (f"/v2/models/{MODEL}/generate", {"PROMPT": "1+1=", "MAX_TOKENS": "x"}, 400, "MAX_TOKENS"),
            ("/v1/completions", {"model": MODEL}, 400, "prompt"),
            ("/v1/completions", {"prompt": "1+1="}, 400, "model"),
            ("/v1/completions", {"model": MODEL, "prompt": ["1+1="]}, 400, "prompt"),
            ("/v1/completions", {"model": MODEL, "prompt": "1+1=", "max_tokens": 0}, 400, "max_tokens"),
        ]
        for path, body, status, named in cases:
            answer = await client.post(path, json=body)
            assert answer.status_code == status, (path, body, answer.text)
            assert answer.headers["content-type"].startswith("application/json"), (path, body)
            assert named in answer.json()["error"], (path, body, answer.json())
        bad_json = await client.post(f"/v2/models/{MODEL}/generate", content=b"{not json")
        assert bad_json.status_code == 400 and "request body" in bad_json.json()["error"]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def _timed_stream(client: httpx.AsyncClient, url: str, body: dict[str, object]) -> tuple[float, list[float]]:
    """(TTFT, inter-token gaps) seen by a client reading ``url``'s token events."""
    started = time.perf_counter()
    stamps: list[float] = []
    buffer = b""
    async with client.stream("POST", url, json=body) as response:
        assert response.status_code == 200
        async for chunk in response.aiter_raw():
            buffer += chunk
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                if b'"TOKEN"' in event:
                    stamps.append(time.perf_counter())
    return stamps[0] - started, [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


async def _measure(client: httpx.AsyncClient, url: str, prompts: list[str], concurrency: int,
                   rounds: int) -> tuple[list[float], list[float]]:
    ttfts: list[float] = []
    gaps: list[float] = []
    for r in range(rounds):
        batch = [prompts[(r * concurrency + i) % len(prompts)] for i in range(concurrency)]
        results = await asyncio.gather(*(_timed_stream(client, url, {"PROMPT": p}) for p in batch))
        for ttft, between in results:
            ttfts.append(ttft)
            gaps.extend(between)
    return ttfts, gaps


async def test_measure_streaming_overhead(triton_url: str, prompts: list[str]) -> None:
    """TTFT and inter-token p50/p99 seen by a client with 1 and 8 concurrent streams: through the router (real
    uvicorn on a port, in a thread of this process: it shares the GIL with the client) and directly against
    Triton's generate_stream. The router's gaps are checked non-zero: it relays events, it does not buffer."""
    path = f"/v2/models/{MODEL}/generate_stream"
    lines = []
    apps = build_router(config_for(triton_url), registry=CollectorRegistry())
    with ServerThread(apps) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=60.0) as router, \
                httpx.AsyncClient(base_url=triton_url, timeout=60.0) as direct:
            for concurrency, rounds in ((1, 60), (8, 15)):
                for name, client in (("direct", direct), ("router", router)):
                    await _measure(client, path, prompts, concurrency, 2)  # warm-up
                    ttfts, gaps = await _measure(client, path, prompts, concurrency, rounds)
                    if name == "router":
                        assert max(gaps) > 0
                    lines.append(
                        f"{name:6s} c={concurrency}: TTFT p50 {statistics.median(ttfts) * 1e3:.2f} ms "
                        f"p99 {_percentile(ttfts, 0.99) * 1e3:.2f} ms; inter-token p50 "
                        f"{statistics.median(gaps) * 1e3:.3f} ms p99 {_percentile(gaps, 0.99) * 1e3:.2f} ms "
                        f"({len(ttfts)} streams, {len(gaps)} gaps)")
    print("\n" + "\n".join(lines))
