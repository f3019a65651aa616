"""The multimodal token-generating models (issue 15, part 1, second family): digits image + text question.

Covers: the task is deterministic from its seed, its answers are right, and its splits keep the digits test
images in the test split only; the vision encoders emit the declared visual tokens (4 for ``mm-low``, 16 for
``mm-high``), which the KV cache holds; decoding with the KV cache gives the logits and greedy answers of full
recomputation; the catalog is cached by its fingerprint (a second ``ensure_multimodal`` trains nothing, even
with training made to fail); ``mm-high`` is more accurate than ``mm-low`` on the held-out test split, as
measured here from the cached weights. The models come from the default cache (``$PARETOSERVE_CACHE`` or
``~/.cache/paretoserve``), trained there once (minutes) if absent.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from paretoserve.workers.llm import multimodal
from paretoserve.workers.llm.multimodal import (
    MANIFEST_FILE,
    MAX_ANSWER_CHARS,
    MAX_QUESTION_CHARS,
    METADATA_FILE,
    MM_HIGH,
    MM_LOW,
    RECIPES,
    TEXT_SEQUENCE,
    WEIGHTS_FILE,
    MultimodalCatalog,
    MultimodalRecipe,
    MultimodalSplits,
    answers,
    cached_answers,
    ensure_multimodal,
    make_multimodal_splits,
)
from paretoserve.workers.llm.tokenizer import encode_prompt
from paretoserve.workers.models.training import load_split

pytestmark = pytest.mark.slow

LOW, HIGH = "mm-low", "mm-high"
CHECKED = 300
"""Test problems on which cached and full greedy answers are compared."""


@pytest.fixture(scope="module")
def catalog() -> MultimodalCatalog:
    """The default catalog: read from the cache, or trained there once with the real recipes."""
    return ensure_multimodal()


@pytest.fixture(scope="module")
def splits() -> MultimodalSplits:
    return make_multimodal_splits()


def test_splits_are_deterministic_and_keep_test_images_held_out(splits: MultimodalSplits) -> None:
    again = make_multimodal_splits()
    assert (again.train, again.validation, again.test) == (splits.train, splits.validation, splits.test)
    digits = load_split()
    assert len(splits.test) == 3 * len(digits.y_test)  # every test image, once per operator
    assert {problem.source for problem in splits.test} == {"test"}
    assert {problem.source for problem in (*splits.train, *splits.validation)} == {"train"}
    train_images = {problem.image for problem in splits.train}
    validation_images = {problem.image for problem in splits.validation}
    assert not train_images & validation_images
    assert len(train_images) + len(validation_images) == len(digits.y_train)
    for problem in (*splits.train[:2000], *splits.validation, *splits.test):
        source = digits.y_test if problem.source == "test" else digits.y_train
        assert problem.label == int(source[problem.image])
        assert len(problem.prompt) <= MAX_QUESTION_CHARS and len(problem.answer) <= MAX_ANSWER_CHARS
        assert int(problem.answer) == eval(f"{problem.label}{problem.operator}{problem.operand}")  # noqa: S307
    assert {problem.operator for problem in splits.train} == {"+", "-", "*"}
    assert np.array_equal(splits.pixels(splits.test[:3])[0], digits.x_test[0])
    other = make_multimodal_splits(dataclasses.replace(splits.spec, seed=1))
    assert other.train != splits.train


def test_visual_token_counts_as_declared(catalog: MultimodalCatalog) -> None:
    assert (MM_LOW.visual_tokens, MM_HIGH.visual_tokens) == (4, 16)
    for name, config in ((LOW, MM_LOW), (HIGH, MM_HIGH)):
        model = catalog.torch_model(name)
        assert catalog.config(name) == config
        assert catalog.metadata[name]["visual_tokens"] == config.visual_tokens
        with torch.inference_mode():
            tokens = model.vision(torch.zeros((2, 8, 8)))
            _, cache = model.prefill_image(np.zeros((8, 8), dtype=np.float32), encode_prompt("+37="))
        assert tuple(tokens.shape) == (2, config.visual_tokens, config.decoder.d_model)
        assert cache.length == config.visual_tokens + 1 + 4  # the visual tokens are in the KV cache
        kv = catalog.metadata[name]["kv_bytes_per_token"]
        assert kv == 2 * config.decoder.layers * config.decoder.d_model * 4
        assert catalog.metadata[name]["kv_bytes_per_request_max"] == (config.visual_tokens + TEXT_SEQUENCE - 1) * kv


def test_cached_decoding_equals_full_recomputation(catalog: MultimodalCatalog, splits: MultimodalSplits) -> None:
    problems = splits.test[:CHECKED]
    for name in (LOW, HIGH):
        model = catalog.torch_model(name)
        visual = model.mm_config.visual_tokens
        cached, lengths = cached_answers(model, splits, problems)
        assert cached == answers(model, splits, problems)
        for problem, text, length in zip(problems, cached, lengths, strict=True):
            fed = min(len(text), MAX_ANSWER_CHARS)  # the answer tokens fed back (EOS never is)
            assert length == visual + 1 + len(problem.prompt) + fed
        # logits: prefill then a batched decode step (prompts of different lengths) equal the full forward pass
        picked = [problems[0], next(p for p in problems if len(p.prompt) != len(problems[0].prompt))]
        images = splits.pixels(picked)
        with torch.inference_mode():
            prefilled = [model.prefill_image(image, encode_prompt(p.prompt)) for image, p in zip(images, picked,
                                                                                                 strict=True)]
            nxt = [int(logits.argmax()) for logits, _ in prefilled]
            stepped, _ = model.decode_step(nxt, [cache for _, cache in prefilled])
            for row, problem in enumerate(picked):
                ids = torch.tensor([[*encode_prompt(problem.prompt), nxt[row]]])
                full = model.forward_multimodal(torch.from_numpy(images[row : row + 1]), ids)[0]
                torch.testing.assert_close(prefilled[row][0], full[-2], atol=1e-5, rtol=1e-4)
                torch.testing.assert_close(stepped[row], full[-1], atol=1e-5, rtol=1e-4)


def test_catalog_is_cached_and_reused(catalog: MultimodalCatalog, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("trained again instead of reading the cache")

    monkeypatch.setattr(multimodal, "train_multimodal", refuse)
    again = ensure_multimodal()
    assert not again.trained
    assert again.fingerprint == catalog.fingerprint == multimodal.fingerprint()
    assert again.metadata == catalog.metadata
    for name in (LOW, HIGH):
        folder = again.model_dir(name)
        assert (folder / WEIGHTS_FILE).is_file() and (folder / METADATA_FILE).is_file()
    assert (again.directory / MANIFEST_FILE).is_file()


def test_tiny_catalog_trains_once_then_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    task = dataclasses.replace(multimodal.DEFAULT_MM_TASK, train_size=1_000)
    recipes = tuple(dataclasses.replace(recipe, epochs=1) for recipe in RECIPES)
    first = ensure_multimodal(tmp_path, recipes=recipes, task=task)
    assert first.trained and first.models == (LOW, HIGH)
    assert first.directory.parent == tmp_path / "llm-multimodal"
    calls: list[MultimodalRecipe] = []

    def refuse(recipe: MultimodalRecipe, *_: object) -> None:
        calls.append(recipe)
        raise AssertionError("trained again")

    monkeypatch.setattr(multimodal, "train_multimodal", refuse)
    second = ensure_multimodal(tmp_path, recipes=recipes, task=task)
    assert not second.trained and not calls and second.metadata == first.metadata
    assert [p.name for p in (tmp_path / "llm-multimodal").iterdir()] == [first.fingerprint]  # no staging left
    assert multimodal.fingerprint(RECIPES, task) != first.fingerprint


def test_high_resolution_variant_is_more_accurate(catalog: MultimodalCatalog, splits: MultimodalSplits) -> None:
    measured: dict[str, float] = {}
    for name in (LOW, HIGH):
        meta = catalog.metadata[name]
        given = answers(catalog.torch_model(name), splits, splits.test)
        correct = [text == problem.answer for text, problem in zip(given, splits.test, strict=True)]
        measured[name] = round(sum(correct) / len(correct), 4)
        assert measured[name] == meta["heldout_exact_match"]
        assert meta["heldout_size"] == len(splits.test)
        assert set(meta["heldout_by_operator"]) == {"add", "sub", "mul"}
        assert meta["cached_decoding_agreement"] == 1.0
        assert meta["training_seconds"] > 0 and meta["params"] > meta["vision_params"] > 0
    assert measured[HIGH] > measured[LOW], measured
    assert catalog.metadata[HIGH]["params"] > catalog.metadata[LOW]["params"]
