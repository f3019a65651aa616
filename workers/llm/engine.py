"""The token-generating models' forward pass in numpy alone, with a per-sequence KV cache.

Triton's Python backend and the worker image have no torch, so a served generation stage runs this engine
on the exported ``weights.npz`` (:func:`~paretoserve.workers.llm.model.export_npz`). It offers the building
blocks of iteration-level (continuous) batching: :meth:`NumpyLM.prefill` of one prompt, creating its
:class:`KVCache`, and :meth:`NumpyLM.decode_step`, ONE step over several running sequences of different
lengths (each with its own cache): the projections and MLPs run batched, attention runs per sequence over
its own cache. A scheduler may add sequences to, or drop them from, the batch between any two steps.
Its logits match the torch model's to float32 rounding and its greedy outputs are the same. The prefill also
takes a prefix of embeddings ahead of the prompt's tokens: the multimodal family's visual tokens
(:mod:`.mm_engine`), so that family reuses this forward pass whole.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from paretoserve.workers.llm.config import CONFIG_KEY, LAYER_NORM_EPS, ModelConfig
from paretoserve.workers.llm.decoding import greedy_decode

Floats = npt.NDArray[np.float32]
_GELU_C = math.sqrt(2.0 / math.pi)


class KVCache:
    """One sequence's keys and values: per layer ``[heads, capacity, head_dim]`` float32 arrays, of which the
    first :attr:`length` positions are filled. Preallocated to the model's ``max_len``."""

    def __init__(self, config: ModelConfig) -> None:
        shape = (config.heads, config.max_len, config.head_dim)
        self.keys: list[Floats] = [np.zeros(shape, dtype=np.float32) for _ in range(config.layers)]
        self.values: list[Floats] = [np.zeros(shape, dtype=np.float32) for _ in range(config.layers)]
        self.length = 0
        self.bytes_per_token = config.kv_bytes_per_token()

    @property
    def capacity(self) -> int:
        return int(self.keys[0].shape[1])

    @property
    def bytes_used(self) -> int:
        """KV memory the filled positions need (what a paged cache would hold for this sequence)."""
        return self.length * self.bytes_per_token


def _layer_norm(x: Floats, weight: Floats, bias: Floats) -> Floats:
    mean = x.mean(axis=-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    normed: Floats = (x - mean) / np.sqrt(variance + np.float32(LAYER_NORM_EPS)) * weight + bias
    return normed


def _gelu(x: Floats) -> Floats:
    out: Floats = 0.5 * x * (1.0 + np.tanh(np.float32(_GELU_C) * (x + np.float32(0.044715) * x**3)))
    return out


def _softmax(scores: Floats) -> Floats:
    shifted = np.exp(scores - scores.max(axis=-1, keepdims=True))
    out: Floats = shifted / shifted.sum(axis=-1, keepdims=True)
    return out


class NumpyLM:
    """The decoder of :class:`~paretoserve.workers.llm.model.ArithLM` in numpy (weights as its ``state_dict``)."""

    def __init__(self, config: ModelConfig, weights: Mapping[str, npt.NDArray[Any]]) -> None:
        self.config = config

        def get(name: str, transpose: bool = False) -> Floats:
            array = np.asarray(weights[name], dtype=np.float32)
            return np.ascontiguousarray(array.T if transpose else array)

        self.tok, self.pos = get("tok.weight"), get("pos.weight")
        self.blocks: list[dict[str, Floats]] = []
        for layer in range(config.layers):
            prefix = f"blocks.{layer}."
            block = {f"{part}.{kind}": get(prefix + f"{part}.{kind}", transpose=kind == "weight")
                     for part in ("qkv", "proj", "fc", "out") for kind in ("weight", "bias")}
            block.update({f"{part}.{kind}": get(prefix + f"{part}.{kind}")
                          for part in ("ln1", "ln2") for kind in ("weight", "bias")})
            self.blocks.append(block)
        self.ln_f = (get("ln_f.weight"), get("ln_f.bias"))
        self.head_w, self.head_b = get("head.weight", transpose=True), get("head.bias")
        self.scale = np.float32(1.0 / math.sqrt(config.head_dim))

    @classmethod
    def load(cls, path: Path) -> NumpyLM:
        """The engine of an exported ``weights.npz`` (no pickle)."""
        with np.load(path, allow_pickle=False) as archive:
            config = ModelConfig.from_json(str(archive[CONFIG_KEY]))
            weights = {name: archive[name] for name in archive.files if name != CONFIG_KEY}
        return cls(config, weights)

    def _mlp(self, x: Floats, block: Mapping[str, Floats]) -> Floats:
        hidden = _gelu(_layer_norm(x, block["ln2.weight"], block["ln2.bias"]) @ block["fc.weight"] + block["fc.bias"])
        out: Floats = x + hidden @ block["out.weight"] + block["out.bias"]
        return out

    def _logits(self, x: Floats) -> Floats:
        logits: Floats = _layer_norm(x, *self.ln_f) @ self.head_w + self.head_b
        return logits

    def prefill(self, prompt_ids: Sequence[int], prefix: Floats | None = None) -> tuple[Floats, KVCache]:
        """One prompt in one pass: the logits ``[V]`` of its last position and its new cache. ``prefix``
        ``[P, d_model]``: embeddings placed ahead of the prompt's tokens, at positions ``0..P-1`` (a multimodal
        request's visual tokens, :mod:`.mm_engine`); the cache holds them like tokens."""
        embedded: Floats = self.tok[np.asarray(prompt_ids, dtype=np.int64)]
        if prefix is not None:
            if prefix.ndim != 2 or prefix.shape[1] != self.config.d_model:
                raise ValueError(f"a prefix must be [positions, {self.config.d_model}], got {list(prefix.shape)}")
            embedded = np.concatenate((np.asarray(prefix, dtype=np.float32), embedded))
        steps, heads, head_dim = len(embedded), self.config.heads, self.config.head_dim
        if not 0 < steps <= self.config.max_len:
            raise ValueError(f"a prompt of {steps} tokens does not fit max_len {self.config.max_len}")
        cache = KVCache(self.config)
        x: Floats = embedded + self.pos[:steps]
        future = np.triu(np.ones((steps, steps), dtype=bool), k=1)
        for layer, block in enumerate(self.blocks):
            qkv = _layer_norm(x, block["ln1.weight"], block["ln1.bias"]) @ block["qkv.weight"] + block["qkv.bias"]
            q, k, v = (part.reshape(steps, heads, head_dim).transpose(1, 0, 2) for part in np.split(qkv, 3, axis=1))
            cache.keys[layer][:, :steps] = k
            cache.values[layer][:, :steps] = v
            scores = np.where(future, np.float32(-np.inf), q @ k.transpose(0, 2, 1) * self.scale)
            attended = (_softmax(scores) @ v).transpose(1, 0, 2).reshape(steps, heads * head_dim)
            x = x + attended @ block["proj.weight"] + block["proj.bias"]
            x = self._mlp(x, block)
        cache.length = steps
        return self._logits(x[-1]), cache

    def decode_step(self, last_ids: Sequence[int], caches: Sequence[KVCache]) -> tuple[Floats, Sequence[KVCache]]:
        """One token for each of several sequences (any lengths, each with its own cache): the logits ``[B, V]``.
        Each cache is extended in place by its sequence's new token, and the same caches are returned."""
        if len(last_ids) != len(caches) or not caches:
            raise ValueError(f"{len(last_ids)} tokens for {len(caches)} caches")
        lengths = [cache.length for cache in caches]
        if max(lengths) >= self.config.max_len:
            raise ValueError(f"a sequence is already at the model's max_len {self.config.max_len}")
        batch, heads, head_dim = len(caches), self.config.heads, self.config.head_dim
        x: Floats = self.tok[np.asarray(last_ids)] + self.pos[np.asarray(lengths)]
        attended = np.empty((batch, heads, head_dim), dtype=np.float32)
        for layer, block in enumerate(self.blocks):
            qkv = _layer_norm(x, block["ln1.weight"], block["ln1.bias"]) @ block["qkv.weight"] + block["qkv.bias"]
            q, k, v = (part.reshape(batch, heads, head_dim) for part in np.split(qkv, 3, axis=1))
            for row, (cache, length) in enumerate(zip(caches, lengths, strict=True)):
                keys, values = cache.keys[layer], cache.values[layer]
                keys[:, length], values[:, length] = k[row], v[row]
                scores = np.einsum("hd,htd->ht", q[row], keys[:, : length + 1]) * self.scale
                attended[row] = np.einsum("ht,htd->hd", _softmax(scores), values[:, : length + 1])
            x = x + attended.reshape(batch, heads * head_dim) @ block["proj.weight"] + block["proj.bias"]
            x = self._mlp(x, block)
        for cache in caches:
            cache.length += 1
        return self._logits(x), caches

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                 prefixes: Sequence[Floats | None] | None = None) -> list[list[int]]:
        """Greedy decoding: each prompt prefilled (after its ``prefixes`` entry, see :meth:`prefill`), then decode
        steps batched over the sequences still running (:func:`~.decoding.greedy_decode`'s stop rule). Returned
        without ``EOS``."""
        if prefixes is not None and len(prefixes) != len(prompts):
            raise ValueError(f"{len(prefixes)} prefixes for {len(prompts)} prompts")
        ahead: Sequence[Floats | None] = [None] * len(prompts) if prefixes is None else prefixes
        prefilled = [self.prefill(prompt, prefix) for prompt, prefix in zip(prompts, ahead, strict=True)]
        caches = [cache for _, cache in prefilled]

        def step(running: list[int], last: list[int]) -> list[int]:
            logits, _ = self.decode_step(last, [caches[i] for i in running])
            return [int(token) for token in logits.argmax(axis=-1)]

        return greedy_decode([int(np.argmax(logits)) for logits, _ in prefilled], step, lambda i: caches[i].length,
                             max_new_tokens=max_new_tokens, max_len=self.config.max_len)


def measure_timings(engine: NumpyLM, prompts: Sequence[Sequence[int]], batch_sizes: Sequence[int] = (1, 8),
                    repeats: int = 20) -> dict[str, float]:
    """Median wall milliseconds of the engine's steps on this machine's current thread: ``prefill_ms_b<N>``
    (prefilling ``N`` prompts one after another) and ``decode_ms_b<N>`` (one batched decode step of those ``N``
    sequences, of different lengths when the prompts differ; each repeat prefills afresh)."""
    timings: dict[str, float] = {}
    for size in batch_sizes:
        chosen = [prompts[index % len(prompts)] for index in range(size)]
        prefill_runs, decode_runs = [], []
        for _ in range(repeats):
            started = time.perf_counter()
            prefilled = [engine.prefill(prompt) for prompt in chosen]
            prefill_runs.append(time.perf_counter() - started)
            tokens = [int(np.argmax(logits)) for logits, _ in prefilled]
            started = time.perf_counter()
            engine.decode_step(tokens, [cache for _, cache in prefilled])
            decode_runs.append(time.perf_counter() - started)
        timings[f"prefill_ms_b{size}"] = round(1000 * float(np.median(prefill_runs)), 4)
        timings[f"decode_ms_b{size}"] = round(1000 * float(np.median(decode_runs)), 4)
    return timings
