"""`paretoserve bench generation`: TTFT and inter-token latency against load through the real Triton, per variant,
and what the router's streaming path adds to them.

One real ``tritonserver`` serves ``arith-small`` and ``arith-large`` (decoupled Python backend, continuous
batching, 8 sequences at once, one instance each) and the router runs as ``paretoserve router``, pinned to the
last CPU as in ``bench router``. A client in this process (pinned to the other CPUs) sends held-out test prompts to
``/v2/models/{model}/generate_stream`` open loop (Poisson arrivals at a fixed rate, whatever the earlier requests
did) and reads the Server-Sent Events as they arrive. Per request: TTFT = first token event received − request
sent; every later gap between two token events is one inter-token latency (events that arrive in one read share a
time, so a gap can be 0).

1. ``curves``: for each variant and rate, straight to Triton: TTFT and ITL p50/p99, requests, errors.
2. ``router``: at each rate, one-second windows alternate between Triton's endpoint and the router's relay of the
   same model (the router's deadline header set, so its EDF path runs), so both see the same background load;
   ``added_*`` is router minus direct.
3. ``served_cost``: per variant of both families (the multimodal ones with their ``IMAGE``), the CPU seconds
   Triton's processes (server and Python-backend stubs) spent per request at a moderate rate, against the
   engine's own time for the same requests one at a time (prefill and steps at batch 1, measured in this process
   on one BLAS thread): the difference is the ``requestOverheadMs`` a manifest's ``profile.tokens`` declares
   (the front end, one response per token, the stub's IPC).

The client is httpx on asyncio: it costs both arms the same, and its own delays count in both.
"""

from __future__ import annotations

import asyncio
import functools
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from paretoserve.research.benchmarks.router import (
    DEADLINE_HEADER,
    _placement,
    free_port,
    group_members,
    router_command,
    run_process,
    wait_ready,
)
from paretoserve.workers.llm import DEFAULT_TASK, encode_prompt, make_splits
from paretoserve.workers.llm.cache import ensure_llms
from paretoserve.workers.llm.multimodal import MAX_NEW_TOKENS, ensure_multimodal, make_multimodal_splits
from paretoserve.workers.llm.serving import spec_from_cached_llm, write_llm_model
from paretoserve.workers.router.generate import SSEParser, token_text
from paretoserve.workers.solver_banner import silence_solver_banner
from paretoserve.workers.triton.server import TritonServer, TritonServerConfig

MODELS = ("arith-small", "arith-large")
MM_MODELS = ("mm-low", "mm-high")
RATES = {"arith-small": (50.0, 100.0, 200.0, 400.0), "arith-large": (25.0, 50.0, 100.0, 200.0)}
ROUTER_RATES = (20.0, 100.0)
MAX_SEQUENCES = 8
SERVED_COST_RATE = 50.0
"""Requests/s while Triton's CPU per request is read: low enough that sequences rarely share a step."""
WINDOW_S = 1.0


@dataclass
class Arm:
    """What one URL's requests measured."""

    ttft_s: list[float] = field(default_factory=list)
    gaps_s: list[float] = field(default_factory=list)
    sent: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)

    def fail(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1

    def summary(self, seconds: float) -> dict[str, Any]:
        def pct(values: Sequence[float], q: float) -> float | None:
            return round(float(np.percentile(values, q)) * 1000.0, 3) if values else None

        return {"requests": self.sent, "errors": self.errors, "error_kinds": self.error_kinds,
                "achieved_rps": round(len(self.ttft_s) / seconds, 1) if seconds > 0 else None,
                "ttft_p50_ms": pct(self.ttft_s, 50), "ttft_p99_ms": pct(self.ttft_s, 99),
                "itl_p50_ms": pct(self.gaps_s, 50), "itl_p99_ms": pct(self.gaps_s, 99)}


async def _stream(client: httpx.AsyncClient, url: str, body: bytes, arm: Arm) -> None:
    arm.sent += 1
    sent = time.perf_counter()
    first = last = None
    gaps: list[float] = []
    try:
        async with client.stream("POST", url, content=body, headers={
                "content-type": "application/json", DEADLINE_HEADER: "10000"}) as response:
            if response.status_code != 200:
                await response.aread()
                arm.fail(f"status {response.status_code}")
                return
            parser = SSEParser()
            async for chunk in response.aiter_bytes():
                now = time.perf_counter()
                for data in parser.feed(chunk):
                    event = orjson.loads(data)
                    if "error" in event:
                        arm.fail("error event")
                        return
                    if token_text(event) is None:
                        continue
                    if first is None:
                        first = now
                    else:
                        gaps.append(now - (last or now))
                    last = now
    except httpx.HTTPError as exc:
        arm.fail(type(exc).__name__)
        return
    if first is None:
        arm.fail("no token")
        return
    arm.ttft_s.append(first - sent)
    arm.gaps_s.extend(gaps)


async def _open_loop(urls: Sequence[str], rate: float, seconds: float, bodies: Sequence[bytes],
                     seed: int) -> list[Arm]:
    """Poisson arrivals at ``rate`` for ``seconds``; request i goes to ``urls[window(i) % len(urls)]``."""
    rng = np.random.default_rng(seed)
    offsets = np.cumsum(rng.exponential(1.0 / rate, size=int(rate * seconds * 1.5) + 10))
    offsets = offsets[offsets < seconds]
    arms = [Arm() for _ in urls]
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0), limits=limits) as client:
        tasks = []
        start = time.perf_counter()
        for i, offset in enumerate(offsets.tolist()):
            delay = start + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            which = int(offset // WINDOW_S) % len(urls)
            tasks.append(asyncio.create_task(_stream(client, urls[which], bodies[i % len(bodies)], arms[which])))
        await asyncio.gather(*tasks)
    return arms


def _measure(urls: Sequence[str], rate: float, seconds: float, bodies: Sequence[bytes], seed: int = 0) -> list[Any]:
    arms = asyncio.run(_open_loop(urls, rate, seconds, bodies, seed))
    return [arm.summary(seconds / len(urls)) for arm in arms]


def _added(direct: dict[str, Any], routed: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key in ("ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms"):
        a, b = direct.get(key), routed.get(key)
        out[f"added_{key}"] = round(b - a, 3) if a is not None and b is not None else None
    return out


def _group_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of every process in ``pid``'s process group (the server and its stubs)."""
    total = 0.0
    for entry in group_members(pid):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _engine_ms(run_one: Callable[[int], object], count: int) -> float:
    """Mean wall milliseconds of ``run_one(i)``, the engine's own work for request ``i`` alone, on one BLAS thread."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        for i in range(min(20, count)):  # warm
            run_one(i)
        started = time.perf_counter()
        for i in range(count):
            run_one(i)
        return 1000.0 * (time.perf_counter() - started) / count


def _text_engine_ms(model: str, prompts: Sequence[str]) -> float:
    catalog = ensure_llms()
    engine = catalog.engine(model)
    max_new = int(catalog.metadata[model]["max_new_tokens"])
    encoded = [encode_prompt(p) for p in prompts]
    return _engine_ms(lambda i: engine.generate([encoded[i]], max_new), len(encoded))


def _mm_engine_ms(model: str, requests: MMRequests) -> float:
    engine = ensure_multimodal().engine(model)
    encoded = [encode_prompt(q) for q in requests.questions]
    return _engine_ms(lambda i: engine.generate_multimodal([requests.images[i]], [encoded[i]], MAX_NEW_TOKENS),
                      len(encoded))


@dataclass(frozen=True)
class MMRequests:
    """Held-out multimodal requests: each image's 64 pixels and its question, and their generate bodies."""

    images: list[list[float]]
    questions: list[str]

    @classmethod
    def test_split(cls, count: int) -> MMRequests:
        splits = make_multimodal_splits()
        problems = list(splits.test[:count])
        pixels = splits.pixels(problems).reshape(len(problems), -1)
        return cls([[round(float(v), 4) for v in row] for row in pixels], [p.prompt for p in problems])

    def bodies(self) -> list[bytes]:
        return [orjson.dumps({"PROMPT": q, "IMAGE": image}) for image, q in zip(self.images, self.questions,
                                                                               strict=True)]


def _served_cost(triton_pid: int, url: str, bodies: Sequence[bytes], engine_ms: Callable[[], float],
                 seconds: float) -> dict[str, Any]:
    before = _group_cpu_s(triton_pid)
    arm = asyncio.run(_open_loop([url], SERVED_COST_RATE, seconds, bodies, seed=7))[0]
    cpu = _group_cpu_s(triton_pid) - before
    served = 1000.0 * cpu / max(1, arm.sent)
    engine = engine_ms()
    return {"rate_rps": SERVED_COST_RATE, "requests": arm.sent, "errors": arm.errors,
            "triton_cpu_ms_per_request": round(served, 3), "engine_ms_per_request": round(engine, 3),
            "request_overhead_ms": round(max(0.0, served - engine), 3)}


@contextmanager
def _pinned(cpus: set[int] | None) -> Iterator[None]:
    """This thread on ``cpus`` while it measures, and its own CPUs back after: whoever called the benchmark (a test
    session, say) keeps them, and so do the processes it starts later."""
    if cpus is None or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _run(report: dict[str, Any], direct: str, routed: str, triton_pid: int, rates: Mapping[str, Sequence[float]],
         seconds: float, bodies: Sequence[bytes], prompts: Sequence[str]) -> None:
    url = "{}/v2/models/{}/generate_stream"
    _measure([url.format(direct, MODELS[0]), url.format(routed, MODELS[0])], 20.0, 2.0, bodies)  # warm-up
    for model in MODELS:
        report["curves"][model] = {
            f"{rate:g}": _measure([url.format(direct, model)], rate, seconds, bodies, seed=int(rate))[0]
            for rate in rates[model]}
    for rate in ROUTER_RATES:
        d, r = _measure([url.format(direct, MODELS[0]), url.format(routed, MODELS[0])], rate, 2 * seconds, bodies,
                        seed=int(rate) + 1)
        report["router"][f"{rate:g}"] = {"model": MODELS[0], "direct": d, "router": r, **_added(d, r)}
    report["served_cost"] = {
        model: _served_cost(triton_pid, url.format(direct, model), bodies,
                            functools.partial(_text_engine_ms, model, prompts[:200]), seconds)
        for model in MODELS}
    mm = MMRequests.test_split(200)
    report["served_cost"].update({
        model: _served_cost(triton_pid, url.format(direct, model), mm.bodies(),
                            functools.partial(_mm_engine_ms, model, mm), seconds)
        for model in MM_MODELS})


def bench_generation(quick: bool = False) -> dict[str, Any]:
    """Run the benchmark (``quick``: two rates per model and 3 s per point instead of 15) and return the report."""
    silence_solver_banner()
    seconds = 3.0 if quick else 15.0
    rates = {model: (values[0], values[2]) for model, values in RATES.items()} if quick else RATES
    catalog = ensure_llms()
    prompts = [p.prompt for p in make_splits(DEFAULT_TASK).test[:500]]
    bodies = [orjson.dumps({"PROMPT": p}) for p in prompts]
    router_cpus, client_cpus = _placement()
    report: dict[str, Any] = {"max_sequences": MAX_SEQUENCES, "seconds_per_point": seconds,
                              "prompts": "held-out test prompts of the arithmetic task", "curves": {}, "router": {}}
    with tempfile.TemporaryDirectory(prefix="paretoserve-bench-generation-") as tmp:
        work = Path(tmp)
        repository = work / "repository"
        multimodal = ensure_multimodal()
        for model in MODELS:
            write_llm_model(repository, spec_from_cached_llm(catalog.model_dir(model), max_sequences=MAX_SEQUENCES))
        for model in MM_MODELS:
            write_llm_model(repository, spec_from_cached_llm(multimodal.model_dir(model), max_sequences=MAX_SEQUENCES))
        config = TritonServerConfig(model_repository=repository, models=(*MODELS, *MM_MODELS), work_dir=work / "triton",
                                    backend_cache_dir=work / "backends")
        with TritonServer(config) as triton:
            direct = f"http://{triton.http_url}"
            port = free_port()
            router_config = {"pipeline": "bench", "stages": [{"name": "answer", "variants": {MODELS[0]: 1}}],
                             "upstreams": {model: [direct] for model in MODELS}}
            log = work / "router.log"
            with run_process(router_command(router_config, work, port), router_cpus, None, log) as router_pid:
                routed = f"http://127.0.0.1:{port}"
                wait_ready(f"{routed}/v2/health/ready", router_pid, log)
                with _pinned(client_cpus):
                    assert triton.pid is not None
                    _run(report, direct, routed, triton.pid, rates, seconds, bodies, prompts)
    report["placement"] = {"router_cpus": sorted(router_cpus) if router_cpus else None,
                           "client_cpus": sorted(client_cpus) if client_cpus else None,
                           "triton": "unpinned"}
    return report
