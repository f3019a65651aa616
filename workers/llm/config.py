"""The shape of a token-generating model, shared by the torch trainer and the numpy engine (no torch here).

The served engine must run without torch (the worker image has none), yet it has to rebuild exactly the
network the trainer trained. :class:`ModelConfig` is that contract: it travels inside ``weights.npz`` as JSON
and in ``metadata.json``, and it says what a cached token of the model costs in KV-cache memory.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from paretoserve.workers.llm.tasks import MAX_ANSWER_CHARS, MAX_PROMPT_CHARS
from paretoserve.workers.llm.tokenizer import VOCAB_SIZE

MAX_SEQUENCE = 1 + MAX_PROMPT_CHARS + MAX_ANSWER_CHARS + 1
"""``BOS prompt answer EOS`` at its longest (14 tokens)."""
FLOAT32_BYTES = 4
LAYER_NORM_EPS = 1e-5
CONFIG_KEY = "__config__"
"""The ``weights.npz`` entry holding the :class:`ModelConfig` as JSON."""


@dataclass(frozen=True)
class ModelConfig:
    """A decoder-only transformer: pre-LN blocks (causal self-attention, GELU MLP), learned positions."""

    name: str
    layers: int
    d_model: int
    heads: int
    mlp_ratio: int = 4
    vocab_size: int = VOCAB_SIZE
    max_len: int = 16

    def __post_init__(self) -> None:
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} is not a multiple of heads {self.heads}")
        if self.max_len < MAX_SEQUENCE:
            raise ValueError(f"max_len {self.max_len} is shorter than the task's longest sequence {MAX_SEQUENCE}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads

    def kv_bytes_per_token(self, dtype_bytes: int = FLOAT32_BYTES) -> int:
        """KV-cache memory of one cached token: a key and a value of ``d_model`` per layer."""
        return 2 * self.layers * self.d_model * dtype_bytes

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls(**json.loads(text))


ARITH_SMALL = ModelConfig("arith-small", layers=2, d_model=64, heads=4)
ARITH_LARGE = ModelConfig("arith-large", layers=3, d_model=96, heads=4)
"""Sized to train in minutes on one CPU thread (see :data:`~paretoserve.workers.llm.training.RECIPES`)."""
CONFIGS: tuple[ModelConfig, ...] = (ARITH_SMALL, ARITH_LARGE)


@dataclass(frozen=True)
class CachedModels:
    """The cached models of one family and fingerprint: where they are and what they measured (each family's
    catalog adds how to load them)."""

    directory: Path
    fingerprint: str
    metadata: Mapping[str, Mapping[str, Any]]
    trained: bool
    """Whether this call trained them (False: read from the cache)."""

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(self.metadata)

    def model_dir(self, model: str) -> Path:
        if model not in self.metadata:
            raise KeyError(f"model {model!r} not in {self.directory}; has {sorted(self.metadata)}")
        return self.directory / model

    def exact_match(self, model: str) -> float:
        """Held-out (test split) exact match of the whole greedy answer."""
        return float(self.metadata[model]["heldout_exact_match"])
