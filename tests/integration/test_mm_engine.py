"""The multimodal family's torch-free engine against the torch models it serves (issue 15, multimodal serving).

Covers, for ``mm-low`` and ``mm-high`` from the cached catalog: the numpy engine's greedy answers equal the torch
model's on every held-out problem (1,350, batched decode steps over requests of different lengths), so its
held-out exact match is the recorded one; its prefill and decode-step logits match torch's to float32 rounding;
its KV cache holds the visual tokens; the cache records the engine's agreement (checked when it was written).
``paretoserve bench mm`` (quick) reports both profiles with the visual tokens counted and split rows from all-high
to all-low that route better than chance (its timings are printed, never asserted).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from paretoserve.research.benchmarks import run_bench
from paretoserve.workers.llm.mm_engine import MultimodalEngine
from paretoserve.workers.llm.multimodal import (
    MultimodalCatalog,
    MultimodalSplits,
    answers,
    engine_answers,
    ensure_multimodal,
    make_multimodal_splits,
)
from paretoserve.workers.llm.tokenizer import encode_prompt

pytestmark = pytest.mark.slow

MODELS = ("mm-low", "mm-high")


@pytest.fixture(scope="module")
def catalog() -> MultimodalCatalog:
    return ensure_multimodal()


@pytest.fixture(scope="module")
def splits() -> MultimodalSplits:
    return make_multimodal_splits()


@pytest.mark.parametrize("model", MODELS)
def test_numpy_answers_equal_torch_on_the_held_out_split(catalog: MultimodalCatalog, splits: MultimodalSplits,
                                                         model: str) -> None:
    problems = splits.test
    assert len(problems) >= 200
    engine = catalog.engine(model)
    ours = engine_answers(engine, splits, problems)

    assert ours == answers(catalog.torch_model(model), splits, problems)
    exact = round(sum(a == p.answer for a, p in zip(ours, problems, strict=True)) / len(problems), 4)
    assert exact == catalog.exact_match(model) == catalog.metadata[model]["heldout_exact_match"]
    assert catalog.metadata[model]["numpy_engine"] is True
    assert catalog.metadata[model]["numpy_agreement"] == 1.0
    assert catalog.metadata[model]["numpy_checked"] == len(problems)


@pytest.mark.parametrize("model", MODELS)
def test_logits_match_torch_with_visual_tokens_in_the_cache(catalog: MultimodalCatalog, splits: MultimodalSplits,
                                                            model: str) -> None:
    engine, torch_model = catalog.engine(model), catalog.torch_model(model)
    assert isinstance(engine, MultimodalEngine)
    picked = [splits.test[0], next(p for p in splits.test if len(p.prompt) != len(splits.test[0].prompt))]
    images = splits.pixels(picked)
    prompts = [encode_prompt(problem.prompt) for problem in picked]
    with torch.inference_mode():
        np.testing.assert_allclose(engine.encode_image(images[0]),
                                   torch_model.vision(torch.from_numpy(images[:1]))[0].numpy(), rtol=1e-4, atol=1e-5)
        theirs = [torch_model.prefill_image(image, prompt) for image, prompt in zip(images, prompts, strict=True)]
        ours = [engine.prefill_image(image, prompt) for image, prompt in zip(images, prompts, strict=True)]
        for prompt, (their_logits, their_cache), (our_logits, our_cache) in zip(prompts, theirs, ours, strict=True):
            np.testing.assert_allclose(our_logits, their_logits.numpy(), rtol=1e-4, atol=1e-5)
            assert our_cache.length == their_cache.length == engine.visual_tokens + len(prompt)
            for layer, keys in enumerate(their_cache.keys):
                np.testing.assert_allclose(our_cache.keys[layer][:, : our_cache.length], keys.numpy(), rtol=1e-4,
                                           atol=1e-5)
        nxt = [int(np.argmax(logits)) for logits, _ in ours]
        their_step, _ = torch_model.decode_step(nxt, [cache for _, cache in theirs])
        our_step, _ = engine.decode_step(nxt, [cache for _, cache in ours])
    np.testing.assert_allclose(our_step, their_step.numpy(), rtol=1e-4, atol=1e-5)


def test_bench_mm_reports_profiles_and_split_rows() -> None:
    report = run_bench("mm", quick=True)

    low, high = report["models"]["mm-low"], report["models"]["mm-high"]
    for profile, visual, kv in ((low, 4, 512), (high, 16, 1024)):
        assert profile["exactMatch"] == profile["recordedExactMatch"]
        assert profile["visualTokens"] == visual and profile["kvBytesPerToken"] == kv
        assert min(int(tokens) for tokens in profile["prefillMsByPromptTokens"]) == visual + 1  # visual counted
        assert set(profile["decodeStepMsByBatch"]) == {"1", "2", "4", "8", "16", "32"}
        fit, rebased = profile["prefillFit"], profile["prefillFitTextTokens"]
        assert rebased["interceptMs"] == pytest.approx(fit["interceptMs"] + visual * fit["slopeMs"], abs=1e-3)
        text, output = profile["meanTextPromptTokens"], profile["meanOutputTokens"]
        assert profile["kvBytesPerTextToken"] * (text + output) == pytest.approx(
            kv * (visual + text + output), rel=1e-3)
    split = report["split"]
    rows = split["rows"]
    assert (rows[0]["heavyFraction"], rows[0]["exactMatch"]) == (1.0, high["exactMatch"])
    assert (rows[-1]["heavyFraction"], rows[-1]["exactMatch"]) == (0.0, low["exactMatch"])
    assert [row["heavyFraction"] for row in rows] == sorted((row["heavyFraction"] for row in rows), reverse=True)
    assert 0.5 < split["rocAuc"] <= 1.0 and len(split["weights"]) == len(split["features"])
    # the score routes better than chance: at half the requests on mm-high, above the random split's mix
    half = min(rows, key=lambda row: abs(row["heavyFraction"] - 0.5))
    chance = half["heavyFraction"] * high["exactMatch"] + (1 - half["heavyFraction"]) * low["exactMatch"]
    assert half["exactMatch"] > chance
