"""The multimodal token-generating model in torch: a patch vision encoder whose visual tokens prefix a decoder.

A multimodal prompt is a digits image (8x8, values in 0..1) and a short text question about it (``+37=``).
:class:`VisionEncoder` cuts the image into ``patch`` x ``patch`` patches and embeds each (a small per-patch MLP)
as one visual token of the decoder's width: 4x4 patches give 4 visual tokens, 2x2 patches give 16 (the
higher-resolution variant). :class:`MultimodalLM` is the text family's decoder (:class:`ArithLM`, same blocks,
vocabulary and KV-cache API) with those visual tokens at positions ``0..V-1`` before ``BOS question``: prefill
runs the visual and text tokens in one pass, so each request's KV cache holds its visual tokens too, and the
decode steps are :meth:`ArithLM.decode_step` unchanged (positions are cache lengths, visual tokens included).
:func:`export_multimodal` writes the weights that the torch-free engine
(:class:`~paretoserve.workers.llm.mm_engine.MultimodalEngine`, which also holds :class:`MultimodalConfig`) serves.
Full-recompute decoding and the ``weights.npz`` round trip are the text family's
(:func:`~paretoserve.workers.llm.model.greedy_full`, :func:`~paretoserve.workers.llm.model.export_npz`,
:func:`~paretoserve.workers.llm.model.load_npz`), given the visual prefix and :data:`MM_CONFIG_KEY`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Self

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from paretoserve.workers.llm.mm_engine import MM_CONFIG_KEY, MultimodalConfig
from paretoserve.workers.llm.model import ArithLM, TorchKVCache, export_npz, greedy_full, load_npz

__all__ = ["MM_CONFIG_KEY", "MultimodalConfig", "MultimodalLM", "VisionEncoder", "export_multimodal",
           "generate_full_multimodal", "load_multimodal"]


class VisionEncoder(nn.Module):
    """Non-overlapping ``patch`` x ``patch`` patches, row-major, each embedded by ``Linear-GELU-Linear``."""

    def __init__(self, config: MultimodalConfig) -> None:
        super().__init__()
        self.patch = config.patch
        self.image_size = config.image_size
        width = config.decoder.d_model
        self.embed = nn.Linear(config.patch * config.patch, width)
        self.mix = nn.Linear(width, width)

    def patches(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, S, S]`` -> ``[B, V, patch*patch]``."""
        batch, grid = images.shape[0], self.image_size // self.patch
        cut = images.reshape(batch, grid, self.patch, grid, self.patch).permute(0, 1, 3, 2, 4)
        return cut.reshape(batch, grid * grid, self.patch * self.patch)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, S, S]`` -> visual tokens ``[B, V, d_model]``."""
        result: torch.Tensor = self.mix(nn.functional.gelu(self.embed(self.patches(images)), approximate="tanh"))
        return result


class MultimodalLM(ArithLM):
    """:class:`ArithLM` whose sequences start with the :class:`VisionEncoder`'s visual tokens."""

    config_key: ClassVar[str] = MM_CONFIG_KEY

    def __init__(self, config: MultimodalConfig) -> None:
        if config.decoder.max_len < config.visual_tokens + 1:
            raise ValueError(f"max_len {config.decoder.max_len} leaves no room after {config.visual_tokens} "
                             "visual tokens")
        super().__init__(config.decoder)
        self.mm_config = config
        self.vision = VisionEncoder(config)
        for linear in (self.vision.embed, self.vision.mix):
            nn.init.normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)

    def config_json(self) -> str:
        return self.mm_config.to_json()

    @classmethod
    def from_config_json(cls, text: str) -> Self:
        return cls(MultimodalConfig.from_json(text))

    def _embed(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        x: torch.Tensor = torch.cat((self.vision(images), self.tok(ids)), dim=1)
        positions: torch.Tensor = self.pos(torch.arange(x.shape[1]))
        return x + positions

    def forward_multimodal(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Full recomputation: images ``[B, S, S]`` and text ids ``[B, T]`` -> logits ``[B, V + T, vocab]``
        (position ``V + t`` predicts text token ``t + 1``)."""
        logits, _ = self._layers(self._embed(images, ids))
        return logits

    def prefill_image(self, image: npt.NDArray[np.float32] | torch.Tensor,
                      prompt_ids: Sequence[int]) -> tuple[torch.Tensor, TorchKVCache]:
        """One image and its prompt in one pass: the logits ``[vocab]`` of the last position and the KV cache
        of all ``V + len(prompt_ids)`` positions."""
        pixels = torch.as_tensor(np.asarray(image, dtype=np.float32))[None]
        ids = torch.tensor([list(prompt_ids)], dtype=torch.long)
        logits, kept = self._layers(self._embed(pixels, ids))
        cache = TorchKVCache(keys=tuple(k[0] for k, _ in kept), values=tuple(v[0] for _, v in kept))
        return logits[0, -1], cache

    def generate_multimodal(self, images: Sequence[npt.NDArray[np.float32]], prompts: Sequence[Sequence[int]],
                            max_new_tokens: int) -> tuple[list[list[int]], list[int]]:
        """Greedy decoding with the KV cache: each request prefilled (visual tokens and prompt), then decode steps
        batched over the requests still running. Returns the tokens (without ``EOS``) and each request's final
        KV-cache length in tokens (visual tokens included)."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
        with torch.inference_mode():
            outputs, caches = self.decode_prefilled(
                [self.prefill_image(image, prompt) for image, prompt in zip(images, prompts, strict=True)],
                max_new_tokens)
        return outputs, [cache.length for cache in caches]


def generate_full_multimodal(model: MultimodalLM, images: npt.NDArray[np.float32], prompts: Sequence[Sequence[int]],
                             max_new_tokens: int) -> list[list[int]]:
    """Greedy decoding by full recomputation (:func:`~paretoserve.workers.llm.model.greedy_full`, the visual
    tokens ahead of each group's text): the reference the cached path must equal, and the fast way to score a
    split. ``images`` ``[N, S, S]``."""

    def forward(members: list[int], ids: torch.Tensor) -> torch.Tensor:
        return model.forward_multimodal(torch.from_numpy(np.asarray(images[members], dtype=np.float32)), ids)

    return greedy_full(forward, prompts, max_new_tokens, max_len=model.config.max_len,
                       prefix=model.mm_config.visual_tokens)


def export_multimodal(model: MultimodalLM, path: Path) -> Path:
    """:func:`~paretoserve.workers.llm.model.export_npz`: the weights and the :class:`MultimodalConfig` (under
    :data:`MM_CONFIG_KEY`)."""
    return export_npz(model, path)


def load_multimodal(weights: Path) -> MultimodalLM:
    """The torch model of an exported ``weights.npz``, in eval mode."""
    return load_npz(MultimodalLM, weights)
