"""The multimodal numpy engine, its scheduling and its routing score without trained models or Triton.

Covers: the engine's visual tokens sit in the KV cache (prefilling image + prompt then decoding the next token
gives the logits of prefilling it all at once); the engine loads only multimodal weights and ``load_engine`` tells
the families apart; ``IMAGE`` values are checked with errors naming it; the continuous batcher serves multimodal
requests with the offline greedy answers, refuses a request without its image (and a text model one with an
image), counts visual tokens in the prompt that must fit ``max_len`` and in its KV token budget; the served
config declares ``IMAGE`` only for a multimodal model; the routing features read the question and the image, the
logistic fit ranks hard requests first, and the ROC AUC is right on known cases. A tiny engine with seeded random
weights stands in for the trained ones.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from paretoserve.workers.llm.config import CONFIG_KEY, ModelConfig
from paretoserve.workers.llm.engine import NumpyLM
from paretoserve.workers.llm.mm_engine import (
    MM_CONFIG_KEY,
    MultimodalConfig,
    MultimodalEngine,
    image_pixels,
    load_engine,
)
from paretoserve.workers.llm.mm_routing import (
    FEATURES,
    QUESTION_FEATURES,
    fit_mm_difficulty,
    image_features,
    question_features,
    request_features,
    roc_auc,
)
from paretoserve.workers.llm.serving import (
    ContinuousBatcher,
    LLMServingSpec,
    SequenceSummary,
    prompt_request,
    render_llm_config,
)
from paretoserve.workers.llm.tokenizer import EOS, encode_prompt
from paretoserve.workers.router.decisions import hardness
from paretoserve.workers.triton.repository import to_pbtxt

TINY = MultimodalConfig(ModelConfig("tiny-mm", layers=2, d_model=16, heads=2, max_len=18), patch=4)
"""4 visual tokens; max_len 18 leaves 13 positions for text."""
QUESTIONS = ("+37=", "-5=", "*6=", "+9=", "+99=", "-0=")


def random_weights(config: MultimodalConfig, seed: int = 0) -> dict[str, npt.NDArray[np.float32]]:
    """A ``state_dict``-named weight set for ``config`` (what :func:`export_multimodal` writes), seeded."""
    rng = np.random.default_rng(seed)
    decoder, width = config.decoder, config.decoder.d_model

    def normal(*shape: int, scale: float = 0.3) -> npt.NDArray[np.float32]:
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    weights = {"tok.weight": normal(decoder.vocab_size, width), "pos.weight": normal(decoder.max_len, width),
               "ln_f.weight": 1 + normal(width, scale=0.1), "ln_f.bias": normal(width, scale=0.1),
               "head.weight": normal(decoder.vocab_size, width), "head.bias": normal(decoder.vocab_size),
               "vision.embed.weight": normal(width, config.patch**2), "vision.embed.bias": normal(width),
               "vision.mix.weight": normal(width, width), "vision.mix.bias": normal(width)}
    hidden = decoder.mlp_ratio * width
    for layer in range(decoder.layers):
        shapes = {"qkv": (3 * width, width), "proj": (width, width), "fc": (hidden, width), "out": (width, hidden)}
        for part, (rows, cols) in shapes.items():
            weights[f"blocks.{layer}.{part}.weight"] = normal(rows, cols)
            weights[f"blocks.{layer}.{part}.bias"] = normal(rows, scale=0.1)
        for norm in ("ln1", "ln2"):
            weights[f"blocks.{layer}.{norm}.weight"] = 1 + normal(width, scale=0.1)
            weights[f"blocks.{layer}.{norm}.bias"] = normal(width, scale=0.1)
    weights["head.bias"][EOS] = -10.0  # every answer runs to its token limit: batches are predictable
    return weights


@pytest.fixture(scope="module")
def engine() -> MultimodalEngine:
    return MultimodalEngine(TINY, random_weights(TINY))


def images(count: int, seed: int = 1) -> list[npt.NDArray[np.float32]]:
    rng = np.random.default_rng(seed)
    return [rng.random((8, 8), dtype=np.float32) for _ in range(count)]


def test_visual_tokens_are_held_in_the_kv_cache(engine: MultimodalEngine) -> None:
    image, prompt = images(1)[0], encode_prompt("+37=")
    whole, cache = engine.prefill_image(image, prompt)
    assert cache.length == TINY.visual_tokens + len(prompt)
    assert engine.encode_image(image).shape == (TINY.visual_tokens, TINY.decoder.d_model)

    head, head_cache = engine.prefill_image(image, prompt[:-1])
    stepped, _ = engine.decode_step([prompt[-1]], [head_cache])
    np.testing.assert_allclose(stepped[0], whole, rtol=1e-4, atol=1e-5)
    # without the image the same text gives other logits: the visual tokens are attended to
    text_only, _ = engine.prefill(prompt)
    assert not np.allclose(text_only, whole)


def test_patches_are_row_major_blocks(engine: MultimodalEngine) -> None:
    image = np.arange(64, dtype=np.float32).reshape(8, 8)
    patches = engine.patches(image)
    assert patches.shape == (4, 16)
    np.testing.assert_array_equal(patches[1], image[:4, 4:].reshape(-1))  # top-right block second
    np.testing.assert_array_equal(patches[2], image[4:, :4].reshape(-1))


def test_weights_files_are_told_apart(tmp_path: Path, engine: MultimodalEngine) -> None:
    mm_file, text_file = tmp_path / "mm.npz", tmp_path / "text.npz"
    weights = random_weights(TINY)
    np.savez(mm_file, **weights, **{MM_CONFIG_KEY: np.array(TINY.to_json())})
    decoder_only = {name: value for name, value in weights.items() if not name.startswith("vision.")}
    np.savez(text_file, **decoder_only, **{CONFIG_KEY: np.array(TINY.decoder.to_json())})

    loaded = load_engine(mm_file)
    assert isinstance(loaded, MultimodalEngine) and loaded.mm_config == TINY
    assert type(load_engine(text_file)) is NumpyLM
    with pytest.raises(ValueError, match="not a multimodal model"):
        MultimodalEngine.load(text_file)
    np.savez(tmp_path / "other.npz", x=np.zeros(1))
    with pytest.raises(ValueError, match="not an exported generation model"):
        load_engine(tmp_path / "other.npz")
    image = images(1)[0]
    np.testing.assert_array_equal(loaded.prefill_image(image, [1, 3])[0], engine.prefill_image(image, [1, 3])[0])


def test_image_values_are_checked_naming_the_input() -> None:
    assert image_pixels(np.zeros(64)).shape == (8, 8)
    assert image_pixels(np.zeros((1, 8, 8))).dtype == np.float32
    with pytest.raises(ValueError, match=r"IMAGE must hold 64 values .* got shape \[63\]"):
        image_pixels(np.zeros(63))
    with pytest.raises(ValueError, match="IMAGE holds non-finite values"):
        image_pixels(np.full(64, np.nan))


def run_batcher(batcher: ContinuousBatcher, requests: list[tuple[str, Any]],
                max_tokens: int = 4) -> tuple[dict[int, list[int]], dict[int, SequenceSummary]]:
    """Queue every request before the thread starts (deterministic admission) and wait for all to finish."""
    tokens: dict[int, list[int]] = {index: [] for index in range(len(requests))}
    finished: dict[int, SequenceSummary] = {}
    done = threading.Event()

    def on_token(index: int) -> Any:
        return lambda event: tokens[index].append(event.token_id)

    def on_finish(index: int) -> Any:
        def finish(summary: SequenceSummary) -> None:
            finished[index] = summary
            if len(finished) == len(requests):
                done.set()
        return finish

    for index, (question, image) in enumerate(requests):
        batcher.submit(prompt_request(question, max_tokens, on_token(index), on_finish(index), image=image))
    batcher.start()
    assert done.wait(30)
    batcher.stop()
    return tokens, finished


def test_batcher_serves_images_with_the_offline_greedy_answers(engine: MultimodalEngine) -> None:
    pictures = images(len(QUESTIONS))
    batcher = ContinuousBatcher(engine, max_sequences=3, max_new_tokens=4)
    tokens, finished = run_batcher(batcher, list(zip(QUESTIONS, pictures, strict=True)))

    offline = engine.generate_multimodal(pictures, [encode_prompt(q) for q in QUESTIONS], 4)
    assert [tokens[index] for index in range(len(QUESTIONS))] == offline
    assert all(summary.error is None for summary in finished.values())
    assert max(step.decode_batch for step in batcher.steps) == 3


def test_kv_budget_counts_visual_tokens(engine: MultimodalEngine) -> None:
    # each request reserves 4 visual + 5 text (BOS +37=) + 4 answer tokens = 13: a budget of 26 holds two
    batcher = ContinuousBatcher(engine, max_sequences=8, max_new_tokens=4, max_kv_tokens=26)
    request = prompt_request("+37=", 4, lambda event: None, lambda summary: None, image=images(1)[0])
    assert batcher.prompt_positions(request) == 9 and batcher.kv_reservation(request) == 13
    _, finished = run_batcher(batcher, [("+37=", image) for image in images(6)])

    assert all(summary.error is None for summary in finished.values())
    assert max(step.decode_batch for step in batcher.steps) == 2
    with pytest.raises(ValueError, match="13 KV tokens exceeds the budget of 12"):
        ContinuousBatcher(engine, max_kv_tokens=12).submit(request)


def test_batcher_refuses_requests_the_model_cannot_take(engine: MultimodalEngine) -> None:
    batcher = ContinuousBatcher(engine)

    def ignore(_: object) -> None:
        return None

    with pytest.raises(ValueError, match="model tiny-mm needs an IMAGE"):
        batcher.submit(prompt_request("+37=", 4, ignore, ignore))
    with pytest.raises(ValueError, match=r"a prompt of 18 tokens \(4 of them visual\) leaves no room in max_len 18"):
        batcher.submit(prompt_request("+" + "1" * 12, 4, ignore, ignore, image=images(1)[0]))
    text = NumpyLM(TINY.decoder, random_weights(TINY))
    with pytest.raises(ValueError, match="takes no IMAGE"):
        ContinuousBatcher(text).submit(prompt_request("+37=", 4, ignore, ignore, image=images(1)[0]))
    with pytest.raises(ValueError, match="max_kv_tokens must be >= 1"):
        ContinuousBatcher(engine, max_kv_tokens=0)


def test_served_config_declares_the_image_for_multimodal_models_only() -> None:
    text = to_pbtxt(render_llm_config(LLMServingSpec(name="arith-small", model="arith-small", weights="w.npz")))
    assert "IMAGE" not in text and "max_kv_tokens" not in text
    spec = LLMServingSpec(name="mm-high", model="mm-high", weights="w.npz", image_values=64, max_kv_tokens=250)
    config = render_llm_config(spec)
    image = config["input"][0]
    assert (image["name"], str(image["data_type"]), image["dims"]) == ("IMAGE", "TYPE_FP32", [64])
    assert "optional" not in image
    assert config["parameters"]["max_kv_tokens"] == {"string_value": "250"}
    with pytest.raises(ValueError, match="invalid limits"):
        LLMServingSpec(name="x", model="x", weights="w.npz", image_values=-1)


def test_routing_features_read_the_question_and_the_image() -> None:
    assert list(question_features("+37=")) == [1.0, 0.0, 0.0, 1.0, 7 / 9]
    assert list(question_features("-5=")) == [1.0, 1.0, 0.0, 0.0, 5 / 9]
    assert list(question_features("*0")) == [1.0, 0.0, 1.0, 0.0, 0.0]
    for bad in ("37=", "+=", "+3a=", "/4="):
        with pytest.raises(ValueError, match="not a question about the image"):
            question_features(bad)
    image = np.zeros((8, 8), dtype=np.float32)
    image[2:6, 3] = 1.0  # a thin vertical stroke
    features = image_features(image)
    assert features[0] == pytest.approx(hardness(image.reshape(-1).tolist()))
    assert features[1:].tolist() == pytest.approx([4 / 64, 4 / 64])
    assert len(request_features(image, "+37=")) == len(FEATURES)
    with pytest.raises(ValueError, match="IMAGE must hold 64 values"):
        image_features(np.zeros(10))


def test_the_fit_ranks_the_requests_the_light_model_fails_first() -> None:
    rng = np.random.default_rng(0)
    questions = [f"{op}{int(n)}=" for op, n in zip(rng.choice(list("+-*"), 600), rng.integers(0, 100, 600),
                                                     strict=True)]
    pictures = [rng.random((8, 8), dtype=np.float32) * rng.uniform(0.2, 1.0) for _ in questions]
    # a light model that fails on additions and on faint images
    wrong = [q[0] == "+" or float(p.mean()) < 0.25 for q, p in zip(questions, pictures, strict=True)]
    score = fit_mm_difficulty(pictures, questions, wrong)
    text_only = fit_mm_difficulty(pictures, questions, wrong, use_image=False)
    assert score.features == FEATURES and text_only.features == QUESTION_FEATURES
    both, question_only = roc_auc(score.scores(pictures, questions), wrong), roc_auc(
        text_only.scores(pictures, questions), wrong)
    assert both > question_only and both > 0.9
    assert 0.0 < score(pictures[0], questions[0]) < 1.0


def test_roc_auc_of_known_cases() -> None:
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert roc_auc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    assert roc_auc([0.5, 0.5, 0.5, 0.5], [False, True, False, True]) == 0.5
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75
    with pytest.raises(ValueError, match="both positive and negative"):
        roc_auc([0.1, 0.2], [True, True])

