"""The token-generating models (issue 15, part 1): task, tokenizer, KV-cached decoding, numpy engine, cache.

Covers: the arithmetic task is deterministic from its seed, its answers are right and its splits disjoint; the
tokenizer round-trips; in torch, decoding with the KV cache (prefill, then decode steps batched over sequences
of different lengths) gives the logits and greedy answers of full recomputation; the torch-free numpy engine
matches torch (logits within 1e-4, identical greedy answers, a batched decode step equal to each sequence
alone) and runs in a fresh interpreter without importing torch; the catalog is cached by its fingerprint (a
second ``ensure_llms`` trains nothing) and training is deterministic; ``arith-large`` is more accurate than
``arith-small`` on the held-out test split, as measured here with the served engine, and the difficulty
buckets differ. The models come from the default cache (``$PARETOSERVE_CACHE`` or ``~/.cache/paretoserve``),
trained there once (minutes) if absent.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from paretoserve.workers.llm import cache as llm_cache
from paretoserve.workers.llm.cache import MANIFEST_FILE, METADATA_FILE, WEIGHTS_FILE, LLMCatalog, ensure_llms
from paretoserve.workers.llm.config import ModelConfig
from paretoserve.workers.llm.model import generate_full
from paretoserve.workers.llm.tasks import DEFAULT_TASK, OPERATOR_NAMES, TaskSpec, TaskSplits, make_splits, split_of
from paretoserve.workers.llm.tokenizer import (
    BOS,
    EOS,
    PAD,
    answer_span,
    decode,
    encode,
    encode_example,
    encode_prompt,
    pad_batch,
)
from paretoserve.workers.llm.training import MAX_NEW_TOKENS, RECIPES, LMRecipe

pytestmark = pytest.mark.slow

SMALL, LARGE = "arith-small", "arith-large"
CHECKED = 300
"""Test prompts on which cached and full, numpy and torch greedy answers are compared."""


@pytest.fixture(scope="module")
def catalog() -> LLMCatalog:
    """The default catalog: read from the cache, or trained there once with the real recipes."""
    return ensure_llms()


@pytest.fixture(scope="module")
def splits() -> TaskSplits:
    return make_splits()


def varied_prompts(splits: TaskSplits, count: int) -> list[list[int]]:
    """``count`` test prompts, the first of each prompt length first (shortest to longest)."""
    firsts: dict[int, str] = {}
    for problem in splits.test:
        firsts.setdefault(len(problem.prompt), problem.prompt)
    prompts = [prompt for _, prompt in sorted(firsts.items())]
    prompts += [problem.prompt for problem in splits.test if problem.prompt not in prompts]
    return [encode_prompt(prompt) for prompt in prompts[:count]]


def test_the_task_is_deterministic_right_and_its_splits_disjoint(splits: TaskSplits) -> None:
    assert make_splits() == splits
    other = make_splits(TaskSpec(seed=1, train_size=500, validation_size=100, test_size=100))
    assert other.test != splits.test[:100]
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (48_000, 2_000, 2_000)
    train, validation, test = ({p.prompt for p in part} for part in (splits.train, splits.validation, splits.test))
    assert not train & validation and not train & test and not validation & test
    assert len(test) == len(splits.test) and len(validation) == len(splits.validation)  # held out: unique
    assert all(split_of(problem, DEFAULT_TASK) == "test" for problem in splits.test)
    assert all(split_of(problem, DEFAULT_TASK) == "train" for problem in splits.train[:1000])
    apply = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
    for problem in (*splits.test, *splits.train[:5000]):
        left, right = problem.prompt[:-1].split(problem.operator, 1)
        assert problem.prompt.endswith("=") and int(problem.answer) == apply[problem.operator](int(left), int(right))
        widest = 2 if problem.operator == "*" else 3
        assert len(left) <= widest and len(right) <= widest
    assert {problem.operator for problem in splits.test} == set(OPERATOR_NAMES)
    assert any(problem.answer.startswith("-") for problem in splits.test)
    assert {len(problem.answer) for problem in splits.test} == {1, 2, 3, 4}
    assert {problem.bucket for problem in splits.test} >= {"add-3d", "sub-3d", "mul-2d", "add-2d", "sub-2d"}


def test_the_tokenizer_round_trips(splits: TaskSplits) -> None:
    for problem in (*splits.test, *splits.validation):
        text = problem.prompt + problem.answer
        assert decode(encode(text)) == text
        sequence = encode_example(problem.prompt, problem.answer)
        assert sequence[0] == BOS and sequence[-1] == EOS and decode(sequence) == text
        start, end = answer_span(problem.prompt, problem.answer)
        assert decode(sequence[start:end]) == problem.answer and sequence[end - 1] == EOS
    assert decode([BOS, *encode("12"), PAD, EOS, *encode("3")]) == "12"
    assert pad_batch([[1, 2], [3]]) == [[1, 2], [3, PAD]]
    with pytest.raises(ValueError, match="not in the vocabulary"):
        encode("1/2=")


@pytest.mark.parametrize("name", [SMALL, LARGE])
def test_kv_cached_decoding_equals_full_recomputation(catalog: LLMCatalog, splits: TaskSplits, name: str) -> None:
    model = catalog.torch_model(name)
    prompts = varied_prompts(splits, 8)
    assert len({len(prompt) for prompt in prompts}) >= 5
    with torch.inference_mode():
        prefilled = [model.prefill(prompt) for prompt in prompts]
        for prompt, (logits, cache) in zip(prompts, prefilled, strict=True):
            assert cache.length == len(prompt)
            torch.testing.assert_close(logits, model(torch.tensor([prompt]))[0, -1], atol=1e-4, rtol=0)
        sequences = [list(prompt) for prompt in prompts]
        caches = [cache for _, cache in prefilled]
        tokens = [int(logits.argmax()) for logits, _ in prefilled]
        for _ in range(3):  # three decode steps, batched over the eight sequences of different lengths
            logits, caches = model.decode_step(tokens, caches)
            for row, sequence in enumerate(sequences):
                sequence.append(tokens[row])
                assert caches[row].length == len(sequence)
                full = model(torch.tensor([sequence]))[0, -1]
                torch.testing.assert_close(logits[row], full, atol=1e-4, rtol=0)
            tokens = [int(row.argmax()) for row in logits]
    checked = [encode_prompt(problem.prompt) for problem in splits.test[:CHECKED]]
    assert model.generate(checked, MAX_NEW_TOKENS) == generate_full(model, checked, MAX_NEW_TOKENS)


@pytest.mark.parametrize("name", [SMALL, LARGE])
def test_the_numpy_engine_matches_torch(catalog: LLMCatalog, splits: TaskSplits, name: str) -> None:
    model, engine = catalog.torch_model(name), catalog.engine(name)
    config = catalog.config(name)
    assert engine.config == model.config == config
    assert catalog.metadata[name]["kv_bytes_per_token"] == 2 * config.layers * config.d_model * 4
    prompts = varied_prompts(splits, 8)
    with torch.inference_mode():
        torch_prefilled = [model.prefill(prompt) for prompt in prompts]
        numpy_prefilled = [engine.prefill(prompt) for prompt in prompts]
        for (torch_logits, _), (numpy_logits, cache) in zip(torch_prefilled, numpy_prefilled, strict=True):
            np.testing.assert_allclose(numpy_logits, torch_logits.numpy(), atol=1e-4, rtol=0)
            assert cache.bytes_used == cache.length * config.kv_bytes_per_token()
        tokens = [int(logits.argmax()) for logits, _ in torch_prefilled]
        torch_caches = [cache for _, cache in torch_prefilled]
        numpy_caches = [cache for _, cache in numpy_prefilled]
        alone = [engine.prefill(prompt)[1] for prompt in prompts]  # the same sequences, each stepped on its own
        for _ in range(3):
            torch_logits, torch_caches = model.decode_step(tokens, torch_caches)
            numpy_logits, _ = engine.decode_step(tokens, numpy_caches)
            np.testing.assert_allclose(numpy_logits, torch_logits.numpy(), atol=1e-4, rtol=0)
            for row, cache in enumerate(alone):
                single, _ = engine.decode_step([tokens[row]], [cache])
                np.testing.assert_allclose(numpy_logits[row], single[0], atol=1e-4, rtol=0)
            assert [c.length for c in numpy_caches] == [c.length for c in torch_caches] == [c.length for c in alone]
            for layer in range(config.layers):
                for ours, theirs in zip(numpy_caches, torch_caches, strict=True):
                    np.testing.assert_allclose(ours.keys[layer][:, : ours.length], theirs.keys[layer].numpy(),
                                               atol=1e-4, rtol=0)
            tokens = [int(row.argmax()) for row in torch_logits]
    checked = [encode_prompt(problem.prompt) for problem in splits.test[:CHECKED]]
    assert engine.generate(checked, MAX_NEW_TOKENS) == model.generate(checked, MAX_NEW_TOKENS)
    assert catalog.metadata[name]["engine_agreement"] == 1.0


def test_the_engine_runs_without_torch(catalog: LLMCatalog) -> None:
    """What a Triton Python backend would do, in a fresh interpreter: load, generate, and never import torch."""
    weights = catalog.model_dir(LARGE) / WEIGHTS_FILE
    code = "\n".join([
        "import sys",
        "from pathlib import Path",
        "from paretoserve.workers.llm import NumpyLM, decode, encode_prompt",
        f"engine = NumpyLM.load(Path({str(weights)!r}))",
        "print(decode(engine.generate([encode_prompt('483+219=')], 5)[0]))",
        "assert 'torch' not in sys.modules, 'the engine imported torch'",
    ])
    result = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    expected = catalog.torch_model(LARGE).generate([encode_prompt("483+219=")], MAX_NEW_TOKENS)[0]
    assert result.stdout.strip() == decode(expected)


def test_the_catalog_is_cached_by_its_fingerprint(catalog: LLMCatalog, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("retrained although the fingerprint is cached")

    monkeypatch.setattr(llm_cache, "train_model", refuse)
    again = ensure_llms()
    assert not again.trained and again.fingerprint == catalog.fingerprint == llm_cache.fingerprint()
    assert again.metadata == catalog.metadata and again.models == (SMALL, LARGE)
    assert again.directory.name == catalog.fingerprint and again.directory.parent.name == "llm"
    assert (again.directory / MANIFEST_FILE).is_file()
    for name in again.models:
        assert {path.name for path in again.model_dir(name).iterdir()} == {WEIGHTS_FILE, METADATA_FILE}
        metadata = again.metadata[name]
        assert metadata["version"] == catalog.fingerprint and metadata["params"] > 0
        assert metadata["training_seconds"] > 0 and set(metadata["engine_timings_ms"]) >= {"decode_ms_b8"}
    changed = (RECIPES[0], LMRecipe(RECIPES[1].config, epochs=RECIPES[1].epochs + 1))
    assert llm_cache.fingerprint(changed) != catalog.fingerprint


def test_training_is_deterministic(tmp_path: Path) -> None:
    recipe = LMRecipe(ModelConfig("arith-tiny", layers=1, d_model=32, heads=2), epochs=1)
    task = TaskSpec(train_size=2_000, validation_size=100, test_size=100)
    first = ensure_llms(tmp_path / "a", recipes=(recipe,), task=task)
    second = ensure_llms(tmp_path / "b", recipes=(recipe,), task=task)
    assert first.trained and second.trained and first.fingerprint == second.fingerprint
    for key in ("weights_sha256", "heldout_correct", "heldout_by_difficulty", "final_train_loss"):
        assert first.metadata["arith-tiny"][key] == second.metadata["arith-tiny"][key]
    assert sorted(path.name for path in (tmp_path / "a" / "llm").iterdir()) == [first.fingerprint]  # no leftovers


def test_large_is_more_accurate_than_small_and_prompts_differ_in_difficulty(catalog: LLMCatalog,
                                                                          splits: TaskSplits) -> None:
    prompts = [encode_prompt(problem.prompt) for problem in splits.test]
    measured: dict[str, float] = {}
    for name in (SMALL, LARGE):
        generated = catalog.engine(name).generate(prompts, MAX_NEW_TOKENS)
        correct = [decode(tokens) == problem.answer for tokens, problem in zip(generated, splits.test, strict=True)]
        measured[name] = sum(correct) / len(correct)
        assert measured[name] == pytest.approx(catalog.exact_match(name), abs=2e-3)  # the recorded figure
        buckets = catalog.metadata[name]["heldout_by_difficulty"]["bucket"]
        sizes = catalog.metadata[name]["heldout_bucket_sizes"]["bucket"]
        sized = {bucket: accuracy for bucket, accuracy in buckets.items() if sizes[bucket] >= 100}
        assert max(sized.values()) - min(sized.values()) >= 0.15, sized
        by_carries = catalog.metadata[name]["heldout_by_difficulty"]["carries"]
        assert by_carries["carries-0"] > by_carries["carries-2"], by_carries
    small, large = measured[SMALL], measured[LARGE]
    standard_error = math.sqrt((small * (1 - small) + large * (1 - large)) / len(prompts))
    assert large - small > 3 * standard_error, measured
    assert catalog.config(LARGE).kv_bytes_per_token() > catalog.config(SMALL).kv_bytes_per_token()
