"""`paretoserve bench llm`: the token-level profile of each generation model, what a plan in tokens needs.

For every model of the arithmetic family (`paretoserve.workers.llm`, trained here and cached) on this machine,
the numpy engine a worker serves, on one BLAS thread:

- **prefill** time against prompt tokens (each prompt length the task has, median of repeats) and its linear
  fit ``a + b·tokens``;
- **decode step** time against the number of sequences in the batch (1 to 32, sequences of mixed lengths) and
  its fit ``c + d·batch``: what iteration-level batching buys;
- **KV cache**: bytes per token (2 × layers × d_model × 4), per sequence at the model's ``max_len``, and the
  sequences one replica holds in a given memory budget (``KV_BUDGET_MIB``, the planner's capacity per replica);
- the held-out exact-match accuracy, overall and per operator × operand digits.

Numbers are wall milliseconds of a shared 2-core machine: the fits, not single points, are what a profile
keeps.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from paretoserve.workers.llm import DEFAULT_TASK, NumpyLM, encode_prompt, make_splits
from paretoserve.workers.llm.cache import ensure_llms

BATCHES = (1, 2, 4, 8, 16, 32)
KV_BUDGET_MIB = 64.0
"""The KV-cache memory of one replica in the capacity column (a CPU replica's share; a GPU's would be GiB)."""


def _prefill_ms(engine: NumpyLM, prompt: Sequence[int], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        engine.prefill(prompt)
        samples.append(time.perf_counter() - started)
    return round(1000.0 * float(np.median(samples)), 4)


def _decode_ms(engine: NumpyLM, prompts: Sequence[Sequence[int]], repeats: int) -> float:
    """One batched decode step over ``prompts`` just prefilled (each repeat prefills afresh, untimed)."""
    samples = []
    for _ in range(repeats):
        prefilled = [engine.prefill(prompt) for prompt in prompts]
        tokens = [int(np.argmax(logits)) for logits, _ in prefilled]
        started = time.perf_counter()
        engine.decode_step(tokens, [cache for _, cache in prefilled])
        samples.append(time.perf_counter() - started)
    return round(1000.0 * float(np.median(samples)), 4)


def _fit(xs: Sequence[float], ys: Sequence[float]) -> dict[str, float]:
    slope, intercept = np.polyfit(np.asarray(xs, dtype=float), np.asarray(ys, dtype=float), 1)
    return {"interceptMs": round(float(intercept), 4), "slopeMs": round(float(slope), 5)}


def profile_model(engine: NumpyLM, prompts: Sequence[Sequence[int]], repeats: int) -> dict[str, Any]:
    """Prefill by prompt length, decode step by batch size, and the KV-cache sizes of one model."""
    by_length: dict[int, Sequence[int]] = {}
    for prompt in prompts:
        by_length.setdefault(len(prompt), prompt)
    prefill = {length: _prefill_ms(engine, prompt, repeats) for length, prompt in sorted(by_length.items())}
    decode = {batch: _decode_ms(engine, [prompts[i % len(prompts)] for i in range(batch)], repeats)
              for batch in BATCHES}
    config = engine.config
    per_token = config.kv_bytes_per_token()
    per_sequence = per_token * config.max_len
    return {
        "layers": config.layers, "dModel": config.d_model, "maxLen": config.max_len,
        "prefillMsByPromptTokens": {str(k): v for k, v in prefill.items()},
        "prefillFit": _fit(list(prefill), list(prefill.values())),
        "decodeStepMsByBatch": {str(k): v for k, v in decode.items()},
        "decodeFit": _fit(list(decode), list(decode.values())),
        "decodeTokensPerSecondAtBatch": {str(b): round(1000.0 * b / ms, 1) for b, ms in decode.items() if ms > 0},
        "kvBytesPerToken": per_token,
        "kvBytesPerSequence": per_sequence,
        "sequencesPerReplica": int(KV_BUDGET_MIB * 2**20 // per_sequence),
    }


def bench_llm(quick: bool = False) -> dict[str, Any]:
    """Profile every model of the cached family (trained first if absent)."""
    catalog = ensure_llms()
    splits = make_splits(DEFAULT_TASK)
    prompts = [encode_prompt(problem.prompt) for problem in splits.test[:64]]
    repeats = 10 if quick else 50
    report: dict[str, Any] = {"kvBudgetMiB": KV_BUDGET_MIB, "repeats": repeats, "threads": 1, "models": {}}
    with threadpool_limits(limits=1):  # one thread, as the worker's backend runs it
        for model in catalog.models:
            metadata = catalog.metadata[model]
            report["models"][model] = {"exactMatch": catalog.exact_match(model), "parameters": metadata["params"],
                                       "exactMatchByBucket": metadata["heldout_by_difficulty"]["bucket"],
                                       **profile_model(catalog.engine(model), prompts, repeats)}
    return report
