"""Token-generating stages (issue 15): small transformers trained here on arithmetic written as text.

No model can be downloaded, so :mod:`.training` trains a family of decoder-only transformers (``arith-small``,
``arith-large``) on :mod:`.tasks` (``483+219=`` -> ``702``; exact match measured per difficulty bucket) and
:mod:`.cache` caches them (``ensure_llms``). :mod:`.model` is the torch model with an explicit KV-cache API;
:mod:`.engine` is the same forward pass in numpy with a per-sequence KV cache and a batched decode step, the
building block of iteration-level batching that a Triton backend serves. :mod:`.routing` is the query-aware split's
difficulty score on the prompt's text, and :mod:`.scorer` serves it to the router as a Triton model
(``arith-scorer``; fitted and cached by ``ensure_scorer``).

This package's top level imports no torch (the worker image has none): the engine, tokenizer, task and
config are here; import the trainer and the cache from their modules
(``from paretoserve.workers.llm.cache import ensure_llms``).
"""

from paretoserve.workers.llm.config import ARITH_LARGE, ARITH_SMALL, CONFIGS, ModelConfig
from paretoserve.workers.llm.engine import KVCache, NumpyLM, measure_timings
from paretoserve.workers.llm.tasks import DEFAULT_TASK, Problem, TaskSpec, TaskSplits, make_splits
from paretoserve.workers.llm.tokenizer import BOS, EOS, PAD, VOCAB, decode, encode, encode_prompt

__all__ = [
    "ARITH_LARGE",
    "ARITH_SMALL",
    "BOS",
    "CONFIGS",
    "DEFAULT_TASK",
    "EOS",
    "PAD",
    "VOCAB",
    "KVCache",
    "ModelConfig",
    "NumpyLM",
    "Problem",
    "TaskSpec",
    "TaskSplits",
    "decode",
    "encode",
    "encode_prompt",
    "make_splits",
    "measure_timings",
]
