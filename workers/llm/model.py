"""The token-generating model in torch: a small decoder-only transformer with an explicit KV-cache API.

Training needs the whole-sequence forward pass (teacher forcing); generation needs the two steps a serving
engine schedules separately, prefill (a prompt in one pass, keeping each layer's keys and values) and decode
(one new token per sequence against its cached keys and values). :class:`ArithLM` offers all three, so the
tests can check that cached decoding equals full recomputation, and :func:`export_npz` writes the weights the
torch-free numpy engine (:mod:`paretoserve.workers.llm.engine`) serves. Pre-LN blocks, learned positions,
GELU (tanh form, which numpy computes exactly), untied output head.

The multimodal family's model (:class:`~paretoserve.workers.llm.vision.MultimodalLM`) is an :class:`ArithLM`
with visual tokens ahead of the text, so the reference decoding by full recomputation (:func:`greedy_full`, given
the family's forward pass) and the ``weights.npz`` round trip (:func:`export_npz`, :func:`load_npz`, the config
entry named by the model class) are written once here for both families.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Self, TypeVar

import numpy as np
import torch
from torch import nn

from paretoserve.workers.llm.config import CONFIG_KEY, LAYER_NORM_EPS, ModelConfig
from paretoserve.workers.llm.decoding import greedy_decode
from paretoserve.workers.llm.tokenizer import EOS


@dataclass(frozen=True)
class TorchKVCache:
    """One sequence's cached keys and values: per layer a ``[heads, length, head_dim]`` tensor each."""

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]

    @property
    def length(self) -> int:
        return int(self.keys[0].shape[1])


class Block(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        width = config.d_model
        self.heads = config.heads
        self.ln1 = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.fc = nn.Linear(width, config.mlp_ratio * width)
        self.out = nn.Linear(config.mlp_ratio * width, width)

    def forward(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x`` ``[B, T, d]``; ``past`` keys and values ``[B, H, P, dh]`` placed before ``x``'s own, attended
        under the boolean ``mask`` ``[B, 1, T, P + T]`` (without ``past``: causal). Returns the block's output
        and the keys and values of all ``P + T`` positions."""
        batch, steps, width = x.shape
        q, k, v = (part.view(batch, steps, self.heads, width // self.heads).transpose(1, 2)
                   for part in self.qkv(self.ln1(x)).split(width, dim=2))
        if past is not None:
            k, v = torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2)
        if mask is None:
            attended = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            attended = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, steps, width))
        x = x + self.out(nn.functional.gelu(self.fc(self.ln2(x)), approximate="tanh"))
        return x, k, v


class ArithLM(nn.Module):
    """Token and learned position embeddings, ``layers`` pre-LN blocks, a final LayerNorm, the output head."""

    config_key: ClassVar[str] = CONFIG_KEY
    """The ``weights.npz`` entry holding :meth:`config_json` (:func:`export_npz`, :func:`load_npz`)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok = nn.Embedding(config.vocab_size, config.d_model)
        self.pos = nn.Embedding(config.max_len, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.ln_f = nn.LayerNorm(config.d_model, eps=LAYER_NORM_EPS)
        self.head = nn.Linear(config.d_model, config.vocab_size)
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, Block):  # residual projections scaled down with depth (GPT-2)
                for projection in (module.proj, module.out):
                    nn.init.normal_(projection.weight, std=0.02 / math.sqrt(2 * config.layers))

    def config_json(self) -> str:
        """The config that rebuilds this network (:meth:`from_config_json`), as ``weights.npz`` carries it."""
        return self.config.to_json()

    @classmethod
    def from_config_json(cls, text: str) -> Self:
        """A freshly initialised model of the config :meth:`config_json` wrote."""
        return cls(ModelConfig.from_json(text))

    def _layers(self, x: torch.Tensor) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        kept: list[tuple[torch.Tensor, torch.Tensor]] = []
        for block in self.blocks:
            x, k, v = block(x)
            kept.append((k, v))
        return self.head(self.ln_f(x)), kept

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Full recomputation: ``ids`` ``[B, T]`` (every row starting at position 0) -> logits ``[B, T, V]``."""
        steps = ids.shape[1]
        logits, _ = self._layers(self.tok(ids) + self.pos(torch.arange(steps)))
        return logits

    def prefill(self, prompt_ids: Sequence[int]) -> tuple[torch.Tensor, TorchKVCache]:
        """One prompt in one pass: the logits ``[V]`` of its last position and its KV cache."""
        ids = torch.tensor([list(prompt_ids)], dtype=torch.long)
        logits, kept = self._layers(self.tok(ids) + self.pos(torch.arange(ids.shape[1])))
        cache = TorchKVCache(keys=tuple(k[0] for k, _ in kept), values=tuple(v[0] for _, v in kept))
        return logits[0, -1], cache

    def decode_step(self, last_ids: Sequence[int],
                    caches: Sequence[TorchKVCache]) -> tuple[torch.Tensor, list[TorchKVCache]]:
        """One token per sequence, batched over sequences of different lengths (each with its own cache, padded
        and masked here): the logits ``[B, V]`` and the caches extended by the new token (inputs untouched)."""
        if len(last_ids) != len(caches) or not caches:
            raise ValueError(f"{len(last_ids)} tokens for {len(caches)} caches")
        lengths = [cache.length for cache in caches]
        if max(lengths) >= self.config.max_len:
            raise ValueError(f"a sequence is already at the model's max_len {self.config.max_len}")
        longest = max(lengths)
        ids = torch.tensor(list(last_ids), dtype=torch.long)
        x = (self.tok(ids) + self.pos(torch.tensor(lengths, dtype=torch.long)))[:, None, :]
        mask = torch.zeros((len(caches), 1, 1, longest + 1), dtype=torch.bool)
        for row, length in enumerate(lengths):
            mask[row, 0, 0, :length] = True
        mask[:, 0, 0, longest] = True  # each sequence's own new token, placed after the padding
        keys: list[list[torch.Tensor]] = [[] for _ in caches]
        values: list[list[torch.Tensor]] = [[] for _ in caches]
        for layer, block in enumerate(self.blocks):
            past_k = torch.zeros((len(caches), self.config.heads, longest, self.config.head_dim))
            past_v = torch.zeros_like(past_k)
            for row, cache in enumerate(caches):
                past_k[row, :, : cache.length] = cache.keys[layer]
                past_v[row, :, : cache.length] = cache.values[layer]
            x, k, v = block(x, (past_k, past_v), mask)
            for row, cache in enumerate(caches):
                keys[row].append(torch.cat((cache.keys[layer], k[row, :, longest:]), dim=1))
                values[row].append(torch.cat((cache.values[layer], v[row, :, longest:]), dim=1))
        logits = self.head(self.ln_f(x))[:, 0]
        return logits, [TorchKVCache(tuple(k), tuple(v)) for k, v in zip(keys, values, strict=True)]

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedy decoding with the KV cache: each prompt prefilled, then decode steps batched over the sequences
        still running. At most ``max_new_tokens`` tokens per sequence, ``EOS`` included; returned without it."""
        with torch.inference_mode():
            return self.decode_prefilled([self.prefill(prompt) for prompt in prompts], max_new_tokens)[0]

    def decode_prefilled(self, prefilled: Sequence[tuple[torch.Tensor, TorchKVCache]],
                         max_new_tokens: int) -> tuple[list[list[int]], list[TorchKVCache]]:
        """Greedy decoding from prefilled sequences (each its last logits and KV cache), decode steps batched over
        the sequences still running: the tokens (without ``EOS``) and each sequence's final cache. Call it under
        ``torch.inference_mode()``."""
        caches = [cache for _, cache in prefilled]

        def step(running: list[int], last: list[int]) -> list[int]:
            logits, stepped = self.decode_step(last, [caches[i] for i in running])
            for index, cache in zip(running, stepped, strict=True):
                caches[index] = cache
            return [int(token) for token in logits.argmax(dim=-1).tolist()]

        outputs = greedy_decode([int(logits.argmax()) for logits, _ in prefilled], step, lambda i: caches[i].length,
                                max_new_tokens=max_new_tokens, max_len=self.config.max_len)
        return outputs, caches


FullForward = Callable[[list[int], torch.Tensor], torch.Tensor]
"""A full forward pass over one group of prompts: their indices and their ids so far ``[B, T]`` -> the logits
``[B, prefix + T, V]`` (``prefix`` positions ahead of the text, such as visual tokens)."""


def greedy_full(forward: FullForward, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, max_len: int,
                prefix: int = 0) -> list[list[int]]:
    """Greedy decoding by full recomputation (no cache): prompts grouped by length, each group extended one token
    at a time by ``forward`` within ``max_len`` positions, the first ``prefix`` of them ahead of the text. The
    reference the cached paths must equal, and the fast way to score a whole split."""
    outputs: list[list[int]] = [[] for _ in prompts]
    groups: dict[int, list[int]] = {}
    for index, prompt in enumerate(prompts):
        groups.setdefault(len(prompt), []).append(index)
    with torch.inference_mode():
        for length, members in sorted(groups.items()):
            ids = torch.tensor([list(prompts[i]) for i in members], dtype=torch.long)
            done = torch.zeros(len(members), dtype=torch.bool)
            for _ in range(min(max_new_tokens, max_len - prefix - length + 1)):
                chosen = forward(members, ids)[:, -1].argmax(dim=-1)
                done |= chosen == EOS
                ids = torch.cat((ids, chosen[:, None]), dim=1)
                if bool(done.all()) or prefix + ids.shape[1] > max_len:
                    break
            for row, index in enumerate(members):
                for token in ids[row, length:].tolist():
                    if token == EOS or len(outputs[index]) >= max_new_tokens:
                        break
                    outputs[index].append(token)
    return outputs


def generate_full(model: ArithLM, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
    """:func:`greedy_full` of a text model: each group's ids through ``model`` itself."""
    return greedy_full(lambda _, ids: model(ids), prompts, max_new_tokens, max_len=model.config.max_len)


def export_npz(model: ArithLM, path: Path) -> Path:
    """The weights as float32 arrays named as in ``state_dict()`` plus the config as JSON (under the model class's
    :attr:`~ArithLM.config_key`: :data:`CONFIG_KEY` for a text model), written to a temporary name and renamed:
    what the numpy engines load (no pickle)."""
    arrays = {name: tensor.detach().cpu().numpy().astype(np.float32) for name, tensor in model.state_dict().items()}
    arrays[model.config_key] = np.array(model.config_json())
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("wb") as handle:
        np.savez(handle, **arrays)
    partial.replace(path)
    return path


LM = TypeVar("LM", bound=ArithLM)


def load_npz(kind: type[LM], weights: Path) -> LM:
    """The ``kind`` model of a ``weights.npz`` that :func:`export_npz` wrote, in eval mode."""
    with np.load(weights, allow_pickle=False) as archive:
        model = kind.from_config_json(str(archive[kind.config_key]))
        state = {name: torch.from_numpy(archive[name].copy()) for name in archive.files if name != kind.config_key}
    model.load_state_dict(state)
    return model.eval()


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())
