"""The torch side of both generation families, shared by them, without trained models: tiny seeded networks.

Covers: :func:`~paretoserve.workers.llm.model.greedy_full` (full recomputation, the reference every cached path
must equal) gives the KV-cached greedy answers of a text model and, given the visual tokens as its prefix, of a
multimodal one, up to ``max_len``; :func:`~paretoserve.workers.llm.model.export_npz` writes each family's config
under its own entry and :func:`~paretoserve.workers.llm.model.load_npz` reads back the same class with the same
weights bit for bit (the cached models' integrity checks rest on both), and the numpy engines load the export.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import pytest
import torch

from paretoserve.workers.llm.config import CONFIG_KEY, ModelConfig
from paretoserve.workers.llm.mm_engine import MM_CONFIG_KEY, MultimodalConfig, MultimodalEngine, load_engine
from paretoserve.workers.llm.model import ArithLM, export_npz, generate_full, load_npz
from paretoserve.workers.llm.tokenizer import encode_prompt
from paretoserve.workers.llm.vision import (
    MultimodalLM,
    export_multimodal,
    generate_full_multimodal,
    load_multimodal,
)

TEXT = ModelConfig("tiny-text", layers=2, d_model=16, heads=2, max_len=14)
MULTIMODAL = MultimodalConfig(ModelConfig("tiny-mm", layers=2, d_model=16, heads=2, max_len=16), patch=4)
"""4 visual tokens; max_len 16 leaves 12 positions for text, so long prompts reach the limit."""
PROMPTS = ("+37=", "12-5=", "7*6=", "483+219=", "9=", "5+6+7+8=", "99*99=")
MAX_NEW = 8
Model = TypeVar("Model", bound=ArithLM)


def seeded(model: Model, seed: int = 0) -> Model:
    """``model`` with seeded weights large enough that greedy choices are not near ties, in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def images(count: int, seed: int = 1) -> npt.NDArray[np.float32]:
    return np.random.default_rng(seed).random((count, 8, 8), dtype=np.float32)


def same_weights(ours: ArithLM, theirs: ArithLM) -> None:
    mine, other = ours.state_dict(), theirs.state_dict()
    assert list(mine) == list(other)
    for name, tensor in mine.items():
        assert tensor.dtype == other[name].dtype == torch.float32
        assert torch.equal(tensor.view(torch.int32), other[name].view(torch.int32)), name


def test_full_recomputation_equals_cached_decoding_in_both_families() -> None:
    prompts = [encode_prompt(prompt) for prompt in PROMPTS]
    text = seeded(ArithLM(TEXT))
    full = generate_full(text, prompts, MAX_NEW)
    assert full == text.generate(prompts, MAX_NEW)
    assert all(len(tokens) <= min(MAX_NEW, TEXT.max_len - len(prompt) + 1)
               for prompt, tokens in zip(prompts, full, strict=True))
    assert any(len(tokens) == TEXT.max_len - len(prompt) + 1 for prompt, tokens in zip(prompts, full, strict=True))

    multimodal = seeded(MultimodalLM(MULTIMODAL))
    pixels = images(len(prompts))
    visual = MULTIMODAL.visual_tokens
    full = generate_full_multimodal(multimodal, pixels, prompts, MAX_NEW)
    cached, lengths = multimodal.generate_multimodal(list(pixels), prompts, MAX_NEW)
    assert full == cached
    assert all(length <= MULTIMODAL.decoder.max_len for length in lengths)
    assert any(len(tokens) == MULTIMODAL.decoder.max_len - visual - len(prompt) + 1
               for prompt, tokens in zip(prompts, full, strict=True))
    # the images matter: other images give other answers to the same prompts
    assert generate_full_multimodal(multimodal, images(len(prompts), seed=2), prompts, MAX_NEW) != full


@pytest.mark.parametrize("family", ["text", "multimodal"])
def test_export_then_load_gives_the_same_model_bit_for_bit(tmp_path: Path, family: str) -> None:
    model: ArithLM = seeded(ArithLM(TEXT) if family == "text" else MultimodalLM(MULTIMODAL))
    path = export_npz(model, tmp_path / "weights.npz")
    assert not list(tmp_path.glob(".*partial"))
    own, other = (CONFIG_KEY, MM_CONFIG_KEY) if family == "text" else (MM_CONFIG_KEY, CONFIG_KEY)
    config = TEXT if family == "text" else MULTIMODAL
    with np.load(path, allow_pickle=False) as archive:
        assert archive.files == [*model.state_dict(), own] and other not in archive.files
        assert json.loads(str(archive[own])) == json.loads(config.to_json())
        for name, tensor in model.state_dict().items():
            assert archive[name].dtype == np.float32 and archive[name].tobytes() == tensor.numpy().tobytes()

    loaded = load_npz(type(model), path)
    assert type(loaded) is type(model) and not loaded.training and loaded.config == model.config
    same_weights(loaded, model)
    engine = load_engine(path)
    assert isinstance(engine, MultimodalEngine) == (family == "multimodal")
    prompts = [encode_prompt(prompt) for prompt in PROMPTS[:3]]
    if isinstance(model, MultimodalLM):
        again = load_multimodal(export_multimodal(model, tmp_path / "again.npz"))
        assert again.mm_config == MULTIMODAL
        same_weights(again, model)
        assert isinstance(engine, MultimodalEngine)
        pixels = images(len(prompts))
        expected = generate_full_multimodal(model, pixels, prompts, MAX_NEW)
        assert engine.generate_multimodal(list(pixels), prompts, MAX_NEW) == expected
    else:
        assert engine.generate(prompts, MAX_NEW) == generate_full(model, prompts, MAX_NEW)
    with pytest.raises(KeyError):
        load_npz(ArithLM if family == "multimodal" else MultimodalLM, path)
