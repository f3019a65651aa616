"""The multimodal models served by the real Triton (issue 15): an image and a question in, tokens streamed out.

The same decoupled Python-backend model and continuous batcher as the text family (:mod:`.test_llm_serving`),
here with the numpy multimodal engine: inputs ``IMAGE`` (FP32 [64]) and ``PROMPT`` (the question). Covers: the
served config declares ``IMAGE``; streamed answers of both variants (``mm-low`` from a self-contained exported
entry, ``mm-high`` from the cache) equal the engine's offline greedy ones, one token per response then a final
one; an ``IMAGE`` of the wrong shape, a non-finite ``IMAGE``, a missing ``IMAGE`` and a question outside the
vocabulary are each a clear error naming the problem, and the model keeps serving; with a KV budget of two
``mm-high`` requests (visual tokens counted) a paced copy never decodes more than two sequences at once although
it may hold eight, and the requests beyond wait.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as grpcclient

from paretoserve.workers.llm.mm_engine import INPUT_IMAGE, MultimodalEngine
from paretoserve.workers.llm.multimodal import (
    MultimodalCatalog,
    VisualProblem,
    ensure_multimodal,
    make_multimodal_splits,
)
from paretoserve.workers.llm.serving import (
    INPUT_MAX_TOKENS,
    INPUT_PROMPT,
    export_llm_model,
    render_llm_config,
    spec_from_cached_llm,
    write_llm_model,
)
from paretoserve.workers.llm.tokenizer import decode, encode_prompt
from paretoserve.workers.triton.repository import to_pbtxt
from paretoserve.workers.triton.server import TritonInstallation, TritonServer, TritonServerConfig
from tests.integration.test_llm_serving import StreamClient, Streamed

pytestmark = [pytest.mark.triton, pytest.mark.slow]

LOW, HIGH = "mm-low", "mm-high"
BUDGETED = "mm-high-budgeted"
MAX_NEW = 4
"""The multimodal models' default token limit (answers of at most 3 characters, then EOS)."""
HIGH_RESERVATION = 25
"""KV tokens one mm-high request may hold: 16 visual + BOS and a 4-character question + 4 tokens (max_len 25)."""
BUDGET = 2 * HIGH_RESERVATION
PACED_STEP_US = 30_000


@pytest.fixture(scope="module")
def mm_catalog() -> MultimodalCatalog:
    return ensure_multimodal()


@pytest.fixture(scope="module")
def problems() -> list[VisualProblem]:
    return list(make_multimodal_splits().test[:12])


@pytest.fixture(scope="module")
def pixels(problems: list[VisualProblem]) -> list[npt.NDArray[np.float32]]:
    return list(make_multimodal_splits().pixels(problems))


@pytest.fixture(scope="module")
def engines(mm_catalog: MultimodalCatalog) -> dict[str, MultimodalEngine]:
    assert all(mm_catalog.metadata[model]["max_new_tokens"] == MAX_NEW for model in (LOW, HIGH))
    return {model: mm_catalog.engine(model) for model in (LOW, HIGH)}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, triton_installation: TritonInstallation,
           mm_catalog: MultimodalCatalog) -> Iterator[TritonServer]:
    work = tmp_path_factory.mktemp("triton-mm")
    repository = work / "repository"
    export_llm_model(repository, spec_from_cached_llm(mm_catalog.model_dir(LOW)), mm_catalog.model_dir(LOW))
    write_llm_model(repository, spec_from_cached_llm(mm_catalog.model_dir(HIGH)))
    write_llm_model(repository, spec_from_cached_llm(mm_catalog.model_dir(HIGH), name=BUDGETED, max_sequences=8,
                                                     max_kv_tokens=BUDGET, step_delay_us=PACED_STEP_US))
    config = TritonServerConfig(model_repository=repository, models=(LOW, HIGH, BUDGETED), work_dir=work,
                                backend_cache_dir=work / "backends")
    with TritonServer(config, triton_installation) as running:
        yield running


class ImageStreamClient(StreamClient):
    """:class:`StreamClient` sending an image and a question (``image`` None: no ``IMAGE`` input)."""

    def send_image(self, model: str, image: npt.ArrayLike | None, question: str,
                   max_tokens: int | None = None) -> Streamed:
        inputs = [grpcclient.InferInput(INPUT_PROMPT, [1], "BYTES")]
        inputs[0].set_data_from_numpy(np.array([question.encode()], dtype=np.object_))
        if image is not None:
            values = np.asarray(image, dtype=np.float32).reshape(-1)
            inputs.append(grpcclient.InferInput(INPUT_IMAGE, list(values.shape), "FP32"))
            inputs[-1].set_data_from_numpy(values)
        if max_tokens is not None:
            inputs.append(grpcclient.InferInput(INPUT_MAX_TOKENS, [1], "INT32"))
            inputs[-1].set_data_from_numpy(np.array([max_tokens], dtype=np.int32))
        request_id = str(self._next)
        self._next += 1
        streamed = self.requests[request_id] = Streamed()
        self.client.async_stream_infer(model, inputs, request_id=request_id, enable_empty_final_response=True)
        return streamed


@pytest.fixture()
def stream(server: TritonServer) -> Iterator[ImageStreamClient]:
    client = ImageStreamClient(server.grpc_url)
    yield client
    client.close()


def offline(engine: MultimodalEngine, image: npt.ArrayLike, question: str, max_tokens: int = MAX_NEW) -> list[int]:
    return engine.generate_multimodal([image], [encode_prompt(question)], max_tokens)[0]


def assert_streamed(streamed: Streamed, expected: list[int]) -> None:
    assert streamed.error is None
    assert streamed.tokens == expected and "".join(streamed.texts) == decode(expected)
    assert streamed.malformed == 0 and streamed.after_final == 0
    assert streamed.final_flagged and streamed.final is not None
    assert streamed.final["GENERATED"] == len(expected)
    assert streamed.final["TTFT_US"] >= streamed.final["PREFILL_US"] > 0


def test_config_declares_the_image(mm_catalog: MultimodalCatalog, tmp_path: Path) -> None:
    text = to_pbtxt(render_llm_config(spec_from_cached_llm(mm_catalog.model_dir(HIGH))))

    assert 'name: "IMAGE"\n    data_type: TYPE_FP32\n    dims: [ 64 ]' in text
    assert "decoupled: true" in text
    entry = export_llm_model(tmp_path, spec_from_cached_llm(mm_catalog.model_dir(LOW)), mm_catalog.model_dir(LOW))
    assert (entry / "1" / "weights.npz").is_file() and (entry / "1" / "model.py").is_file()


@pytest.mark.parametrize("model", [LOW, HIGH])
def test_streamed_answers_equal_offline_greedy(stream: ImageStreamClient, engines: dict[str, MultimodalEngine],
                                               problems: list[VisualProblem], pixels: list[npt.NDArray[np.float32]],
                                               model: str) -> None:
    sent = [stream.send_image(model, image, problem.prompt) for problem, image in zip(problems, pixels, strict=True)]
    stream.wait(sent)

    for problem, image, streamed in zip(problems, pixels, sent, strict=True):
        assert_streamed(streamed, offline(engines[model], image, problem.prompt))
    answers = ["".join(streamed.texts) for streamed in sent]
    right = sum(answer == problem.answer for answer, problem in zip(answers, problems, strict=True))
    assert right > 0  # real answers, not noise


def test_max_tokens_cuts_the_answer(stream: ImageStreamClient, engines: dict[str, MultimodalEngine],
                                    problems: list[VisualProblem], pixels: list[npt.NDArray[np.float32]]) -> None:
    streamed = stream.send_image(HIGH, pixels[0], problems[0].prompt, max_tokens=1)
    stream.wait([streamed])

    assert_streamed(streamed, offline(engines[HIGH], pixels[0], problems[0].prompt)[:1])


@pytest.mark.parametrize(("image", "question", "message"), [
    (np.zeros(63, dtype=np.float32), "+37=", "IMAGE"),  # Triton checks the declared shape [64]
    (np.full(64, np.nan, dtype=np.float32), "+37=", "IMAGE holds non-finite values"),
    (None, "+37=", "IMAGE"),
    (np.zeros(64, dtype=np.float32), "+3?=", "vocabulary"),
], ids=["wrong-shape", "non-finite", "missing", "bad-question"])
def test_a_bad_request_is_a_clear_error_and_the_model_keeps_serving(
    stream: ImageStreamClient, engines: dict[str, MultimodalEngine], problems: list[VisualProblem],
    pixels: list[npt.NDArray[np.float32]], image: npt.NDArray[np.float32] | None, question: str, message: str
) -> None:
    bad = stream.send_image(LOW, image, question)
    stream.wait([bad])
    good = stream.send_image(LOW, pixels[1], problems[1].prompt)
    stream.wait([good])

    assert bad.error is not None and message in bad.error, bad.error
    assert not bad.tokens
    assert_streamed(good, offline(engines[LOW], pixels[1], problems[1].prompt))


def test_kv_budget_counts_visual_tokens(stream: ImageStreamClient, engines: dict[str, MultimodalEngine],
                                        problems: list[VisualProblem], pixels: list[npt.NDArray[np.float32]]) -> None:
    chosen = list(zip(problems[:6], pixels[:6], strict=True))
    sent = [stream.send_image(BUDGETED, image, problem.prompt, max_tokens=MAX_NEW) for problem, image in chosen]
    stream.wait(sent)

    for (problem, image), streamed in zip(chosen, sent, strict=True):
        assert_streamed(streamed, offline(engines[HIGH], image, problem.prompt))
    batches = [batch for streamed in sent for batch in streamed.batches]
    # 8 sequences would be allowed, but two mm-high requests (16 visual tokens each) fill the KV budget
    assert max(batches) == 2
    assert max(streamed.final["QUEUE_US"] for streamed in sent if streamed.final) > 0
