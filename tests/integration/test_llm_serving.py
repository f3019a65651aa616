"""A token-generating model served by the real Triton (issue 15, part 2): decoupled streaming and continuous batching.

Covers: streamed answers through Triton's gRPC streaming API equal the numpy engine's offline greedy answers,
one token per response, then one final response (flagged final, carrying the request's timings); ``MAX_TOKENS``
cuts the answer; a prompt outside the vocabulary fails alone; prompts sent together share decode steps (the
``BATCH`` of some token > 1) and never more than ``max_sequences`` of them; a request sent while another is
being decoded joins its batch between decode steps. The batching checks use a paced copy of the model (a pause
after each scheduler iteration) so that "sent together" and "sent while running" do not depend on this machine's
speed. ``test_measure_latency`` measures TTFT and inter-token latency with 1 and 8 concurrent streams (``-s``
prints them). The scheduler itself is also checked without Triton.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from paretoserve.workers.llm.cache import LLMCatalog, ensure_llms
from paretoserve.workers.llm.engine import NumpyLM
from paretoserve.workers.llm.serving import (
    INPUT_MAX_TOKENS,
    INPUT_PROMPT,
    ContinuousBatcher,
    SequenceSummary,
    TokenEvent,
    prompt_request,
    render_llm_config,
    spec_from_cached_llm,
    write_llm_model,
)
from paretoserve.workers.llm.tasks import make_splits
from paretoserve.workers.llm.tokenizer import decode, encode_prompt
from paretoserve.workers.triton.repository import to_pbtxt
from paretoserve.workers.triton.server import TritonInstallation, TritonNotFoundError, TritonServer, TritonServerConfig

pytestmark = [pytest.mark.triton, pytest.mark.slow]

MODEL = "arith-small"
PACED = "arith-small-paced"
PACED_CAPACITY = 4
PACED_STEP_US = 50_000
TIMEOUT_S = 60.0
MAX_NEW = 5
"""The models' default token limit (answer of at most 4 characters, then EOS): checked against the metadata."""


@pytest.fixture(scope="module")
def catalog() -> LLMCatalog:
    return ensure_llms()


@pytest.fixture(scope="module")
def engine(catalog: LLMCatalog) -> NumpyLM:
    assert catalog.metadata[MODEL]["max_new_tokens"] == MAX_NEW
    return catalog.engine(MODEL)


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    return [problem.prompt for problem in make_splits().test[:16]]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, catalog: LLMCatalog) -> Iterator[TritonServer]:
    try:
        installation = TritonInstallation.locate()
    except TritonNotFoundError as error:
        pytest.fail(f"the real Triton server is required for these tests: {error}", pytrace=False)
    work = tmp_path_factory.mktemp("triton-llm")
    repository = work / "repository"
    model_dir = catalog.model_dir(MODEL)
    write_llm_model(repository, spec_from_cached_llm(model_dir, max_sequences=8))
    write_llm_model(repository, spec_from_cached_llm(model_dir, name=PACED, max_sequences=PACED_CAPACITY,
                                                     step_delay_us=PACED_STEP_US))
    config = TritonServerConfig(model_repository=repository, models=(MODEL, PACED), work_dir=work,
                                backend_cache_dir=work / "backends")
    with TritonServer(config, installation) as running:
        yield running


def offline(engine: NumpyLM, prompt: str, max_tokens: int) -> list[int]:
    return engine.generate([encode_prompt(prompt)], max_tokens)[0]


@dataclass
class Streamed:
    """What one request's stream delivered, in arrival order."""

    sent_at: float = 0.0
    tokens: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    batches: list[int] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    final: dict[str, int] | None = None
    final_flagged: bool = False
    after_final: int = 0
    malformed: int = 0
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)
    first_token: threading.Event = field(default_factory=threading.Event)


class StreamClient:
    """One gRPC client with one bidirectional stream; requests are told apart by their ids."""

    def __init__(self, url: str) -> None:
        self.client = grpcclient.InferenceServerClient(url)
        self.requests: dict[str, Streamed] = {}
        self.client.start_stream(callback=self._on_response)
        self._next = 0

    def _on_response(self, result: Any, error: Any) -> None:
        now = time.perf_counter()
        if error is not None:
            # an error response names no request: it is the oldest one still open (the tests send one bad at a time)
            for streamed in self.requests.values():
                if not streamed.done.is_set():
                    streamed.error = str(error)
                    streamed.done.set()
                    break
            return
        response = result.get_response()
        streamed = self.requests[response.id]
        final = response.parameters["triton_final_response"].bool_param
        if streamed.done.is_set():
            streamed.after_final += 1
            return
        token = result.as_numpy("TOKEN")
        if token is not None:
            token_id, batch = result.as_numpy("TOKEN_ID"), result.as_numpy("BATCH")
            if token.shape != (1,) or token_id is None or batch is None or final:
                streamed.malformed += 1
            streamed.texts.append(token[0].decode())
            streamed.tokens.append(int(token_id[0]))
            streamed.batches.append(int(batch[0]))
            streamed.arrivals.append(now)
            streamed.first_token.set()
        if final:
            names = ("GENERATED", "TTFT_US", "PREFILL_US", "QUEUE_US", "MAX_BATCH")
            values = {name: result.as_numpy(name) for name in names}
            streamed.final = {name: int(value[0]) for name, value in values.items() if value is not None}
            streamed.final_flagged = True
            streamed.done.set()

    def send(self, model: str, prompt: str, max_tokens: int | None = None) -> Streamed:
        request_id = str(self._next)
        self._next += 1
        inputs = [grpcclient.InferInput(INPUT_PROMPT, [1], "BYTES")]
        inputs[0].set_data_from_numpy(np.array([prompt.encode()], dtype=np.object_))
        if max_tokens is not None:
            inputs.append(grpcclient.InferInput(INPUT_MAX_TOKENS, [1], "INT32"))
            inputs[1].set_data_from_numpy(np.array([max_tokens], dtype=np.int32))
        streamed = self.requests[request_id] = Streamed(sent_at=time.perf_counter())
        self.client.async_stream_infer(model, inputs, request_id=request_id, enable_empty_final_response=True)
        return streamed

    def wait(self, streamed: Sequence[Streamed]) -> None:
        for one in streamed:
            assert one.done.wait(TIMEOUT_S), "a stream did not finish"

    def close(self) -> None:
        self.client.stop_stream()
        self.client.close()


@pytest.fixture()
def stream(server: TritonServer) -> Iterator[StreamClient]:
    client = StreamClient(server.grpc_url)
    yield client
    client.close()


def assert_well_formed(streamed: Streamed, expected: list[int]) -> None:
    assert streamed.error is None
    assert streamed.tokens == expected
    assert "".join(streamed.texts) == decode(expected)
    assert streamed.malformed == 0 and streamed.after_final == 0
    assert streamed.final_flagged and streamed.final is not None
    assert streamed.final["GENERATED"] == len(expected)
    assert streamed.final["TTFT_US"] >= streamed.final["PREFILL_US"] > 0


def test_config_is_decoupled_without_triton_batching(catalog: LLMCatalog) -> None:
    text = to_pbtxt(render_llm_config(spec_from_cached_llm(catalog.model_dir(MODEL))))

    assert "model_transaction_policy {\n  decoupled: true\n}" in text
    assert "max_batch_size: 0" in text and "backend: \"python\"" in text


def test_scheduler_alone_matches_offline_greedy_and_batches(engine: NumpyLM, prompts: list[str]) -> None:
    batcher = ContinuousBatcher(engine, max_sequences=3, max_new_tokens=MAX_NEW)
    tokens: dict[int, list[TokenEvent]] = {index: [] for index in range(len(prompts))}
    finished: dict[int, SequenceSummary] = {}
    done = threading.Event()

    def on_finish(index: int) -> Any:
        def finish(summary: SequenceSummary) -> None:
            finished[index] = summary
            if len(finished) == len(prompts):
                done.set()
        return finish

    for index, prompt in enumerate(prompts):  # all queued before the thread starts: deterministic admission
        batcher.submit(prompt_request(prompt, MAX_NEW, tokens[index].append, on_finish(index)))
    batcher.start()
    assert done.wait(TIMEOUT_S)
    batcher.stop()

    for index, prompt in enumerate(prompts):
        assert [event.token_id for event in tokens[index]] == offline(engine, prompt, MAX_NEW)
        assert finished[index].error is None
    assert max(step.decode_batch for step in batcher.steps) == 3
    # sequences joined a running batch: some iteration admitted a prompt AND decoded others
    assert any(step.admitted and step.decode_batch > step.admitted for step in batcher.steps)


def test_scheduler_stop_ends_queued_requests_with_an_error(engine: NumpyLM, prompts: list[str]) -> None:
    batcher = ContinuousBatcher(engine, max_sequences=2)
    finished: list[SequenceSummary] = []
    for prompt in prompts[:3]:
        batcher.submit(prompt_request(prompt, MAX_NEW, lambda event: None, finished.append))
    with pytest.raises(ValueError, match="vocabulary"):
        batcher.submit(prompt_request("1?2=", MAX_NEW, lambda event: None, finished.append))

    batcher.stop()

    assert [summary.error for summary in finished] == ["the model is shutting down"] * 3
    with pytest.raises(RuntimeError):
        batcher.submit(prompt_request(prompts[0], MAX_NEW, lambda event: None, finished.append))


def test_streamed_answers_equal_offline_greedy(stream: StreamClient, engine: NumpyLM, prompts: list[str]) -> None:
    sent = [stream.send(MODEL, prompt) for prompt in prompts[:8]]  # all sent before any answer is read
    stream.wait(sent)

    for prompt, streamed in zip(prompts[:8], sent, strict=True):
        assert_well_formed(streamed, offline(engine, prompt, MAX_NEW))


def test_max_tokens_cuts_the_answer(stream: StreamClient, engine: NumpyLM, prompts: list[str]) -> None:
    prompt = max(prompts, key=lambda text: len(offline(engine, text, MAX_NEW)))
    streamed = stream.send(MODEL, prompt, max_tokens=2)
    stream.wait([streamed])

    assert_well_formed(streamed, offline(engine, prompt, MAX_NEW)[:2])


def test_bad_prompt_fails_alone(stream: StreamClient, engine: NumpyLM, prompts: list[str]) -> None:
    bad = stream.send(MODEL, "12&3=")
    good = stream.send(MODEL, prompts[0])
    stream.wait([bad, good])

    assert bad.error is not None and "vocabulary" in bad.error
    assert_well_formed(good, offline(engine, prompts[0], MAX_NEW))


def test_prompts_sent_together_share_decode_steps_within_capacity(
    stream: StreamClient, engine: NumpyLM, prompts: list[str]
) -> None:
    sent = [stream.send(PACED, prompt) for prompt in prompts[:8]]
    stream.wait(sent)

    for prompt, streamed in zip(prompts[:8], sent, strict=True):
        assert_well_formed(streamed, offline(engine, prompt, MAX_NEW))
    batches = [batch for streamed in sent for batch in streamed.batches]
    assert max(batches) > 1
    assert max(batches) <= PACED_CAPACITY
    # 8 prompts, room for 4: the last ones waited for a cache to free up
    assert max(streamed.final["QUEUE_US"] for streamed in sent if streamed.final) > 0


def test_request_sent_while_another_decodes_joins_its_batch(
    stream: StreamClient, engine: NumpyLM, prompts: list[str]
) -> None:
    long_prompt = max(prompts, key=lambda text: len(offline(engine, text, MAX_NEW)))
    assert len(offline(engine, long_prompt, MAX_NEW)) >= 3
    first = stream.send(PACED, long_prompt)
    assert first.first_token.wait(TIMEOUT_S)
    assert not first.done.is_set()  # still decoding (one step per PACED_STEP_US)
    second = stream.send(PACED, prompts[0])
    stream.wait([first, second])

    assert_well_formed(first, offline(engine, long_prompt, MAX_NEW))
    assert_well_formed(second, offline(engine, prompts[0], MAX_NEW))
    assert first.batches[0] == 0 and first.batches[1] == 1  # alone at first
    assert max(first.batches) == 2 and first.final is not None and first.final["MAX_BATCH"] == 2


def _percentiles(values: Sequence[float]) -> tuple[float, float]:
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def _run_streams(url: str, prompts: Sequence[str], concurrency: int,
                 per_stream: int) -> tuple[list[float], list[float]]:
    """Each of ``concurrency`` threads has its own client and sends its prompts one after another."""
    ttft: list[float] = []
    itl: list[float] = []
    lock = threading.Lock()
    failures: list[str] = []

    def worker(offset: int) -> None:
        client = StreamClient(url)
        try:
            for index in range(per_stream):
                streamed = client.send(MODEL, prompts[(offset + index) % len(prompts)])
                client.wait([streamed])
                if streamed.error is not None or not streamed.arrivals:
                    failures.append(str(streamed.error))
                    continue
                with lock:
                    ttft.append(streamed.arrivals[0] - streamed.sent_at)
                    itl.extend(np.diff(streamed.arrivals).tolist())
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(stream_index * 3,)) for stream_index in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT_S * 2)
    assert failures == []
    return ttft, itl


def test_measure_latency(server: TritonServer, prompts: list[str]) -> None:
    _run_streams(server.grpc_url, prompts, 1, 5)  # warm-up
    report: dict[int, dict[str, float]] = {}
    for concurrency, per_stream in ((1, 60), (8, 15)):
        ttft, itl = _run_streams(server.grpc_url, prompts, concurrency, per_stream)
        (ttft_p50, ttft_p99), (itl_p50, itl_p99) = _percentiles(ttft), _percentiles(itl)
        report[concurrency] = {"ttft_p50_ms": 1e3 * ttft_p50, "ttft_p99_ms": 1e3 * ttft_p99,
                               "itl_p50_ms": 1e3 * itl_p50, "itl_p99_ms": 1e3 * itl_p99,
                               "requests": len(ttft), "tokens": len(ttft) + len(itl)}
        assert len(ttft) == concurrency * per_stream and 0 < ttft_p50 <= ttft_p99
    for concurrency, figures in report.items():
        print(f"\n{MODEL} through Triton, {concurrency} concurrent stream(s): "
              + ", ".join(f"{name} {value:.3f}" for name, value in figures.items()))
