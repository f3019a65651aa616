"""`paretoserve bench llm`: the token-level profile of each generation model, what a plan in tokens needs.

For every model of the arithmetic family (`paretoserve.workers.llm`, trained here and cached) on this machine,
the numpy engine a worker serves, on one BLAS thread:

- **prefill** time against prompt tokens (each prompt length the task has, median of repeats) and its linear
  fit ``a + b·tokens``;
- **decode step** time against the number of sequences in the batch (1 to 32, sequences of mixed lengths) and
  its fit ``c + d·batch``: what iteration-level batching buys;
- **KV cache**: bytes per token (2 × layers × d_model × 4), per sequence at the model's ``max_len``, and the
  sequences one replica holds in a given memory budget (``KV_BUDGET_MIB``, the planner's capacity per replica);
- the held-out exact-match accuracy, overall and per operator × operand digits;
- the **query-aware split** (`paretoserve.workers.llm.routing`): a difficulty score on the prompt's text fitted
  on training prompts, its f(t) rows on the test split (share sent to the large model, exact match of the mixed
  answers) and each row's engine cost relative to all-large: the rows a `router: prompt` cascade declares.

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
from paretoserve.workers.llm.cache import LLMCatalog, ensure_llms
from paretoserve.workers.llm.routing import FEATURES, SplitRow, correct_answers, fit_difficulty, split_rows

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


def query_aware_split(catalog: LLMCatalog, costs: dict[str, float], quick: bool) -> dict[str, Any]:
    """The difficulty router's f(t) rows (fitted on training prompts, measured on the test split) and the
    quality and engine cost of each against all-small and all-large."""
    splits = make_splits(DEFAULT_TASK)
    small, large = (catalog.engine(m) for m in ("arith-small", "arith-large"))
    max_new = int(catalog.metadata["arith-small"]["max_new_tokens"])
    train = list(splits.train[: 1000 if quick else 4000])
    score = fit_difficulty([p.prompt for p in train], [not c for c in correct_answers(small, train, max_new)])
    test = list(splits.test)
    small_ok, large_ok = correct_answers(small, test, max_new), correct_answers(large, test, max_new)
    scores = [score(p.prompt) for p in test]
    thresholds = sorted({0.0, 1.0, *(round(float(q), 4) for q in np.quantile(scores, np.linspace(0, 1, 21)))})
    rows = split_rows(scores, small_ok, large_ok, thresholds)
    c_small, c_large = costs["arith-small"], costs["arith-large"]

    def cost(row: SplitRow) -> float:
        return round(((1 - row.heavy_fraction) * c_small + row.heavy_fraction * c_large) / c_large, 4)

    all_large = float(np.mean(large_ok))
    within = [r for r in rows if r.exact_match >= all_large - 0.01]
    cheapest = min(within, key=cost) if within else None
    return {
        "features": list(FEATURES), "weights": [round(w, 4) for w in score.weights],
        "fittedOn": f"{len(train)} training prompts (the small model's greedy answers)",
        "measuredOn": f"{len(test)} test prompts",
        "allSmall": {"exactMatch": round(float(np.mean(small_ok)), 4), "relativeCost": round(c_small / c_large, 4)},
        "allLarge": {"exactMatch": round(all_large, 4), "relativeCost": 1.0},
        "rows": [{"threshold": r.threshold, "heavyFraction": r.heavy_fraction, "exactMatch": r.exact_match,
                  "relativeCost": cost(r)} for r in rows],
        "cheapestWithin1Point": None if cheapest is None else {
            "threshold": cheapest.threshold, "heavyFraction": cheapest.heavy_fraction,
            "exactMatch": cheapest.exact_match, "relativeCost": cost(cheapest)},
        "costModel": "engine ms per request at 8 sequences per replica: prefill(prompt) + output x step(8) / 8",
    }


def bench_llm(quick: bool = False) -> dict[str, Any]:
    """Profile every model of the cached family (trained first if absent)."""
    catalog = ensure_llms()
    splits = make_splits(DEFAULT_TASK)
    prompts = [encode_prompt(problem.prompt) for problem in splits.test[:64]]
    repeats = 10 if quick else 50
    report: dict[str, Any] = {"kvBudgetMiB": KV_BUDGET_MIB, "repeats": repeats, "threads": 1, "models": {}}
    costs: dict[str, float] = {}
    with threadpool_limits(limits=1):  # one thread, as the worker's backend runs it
        for model in catalog.models:
            metadata = catalog.metadata[model]
            report["models"][model] = {"exactMatch": catalog.exact_match(model), "parameters": metadata["params"],
                                       "exactMatchByBucket": metadata["heldout_by_difficulty"]["bucket"],
                                       **profile_model(catalog.engine(model), prompts, repeats)}
            fits = report["models"][model]
            prompt_tokens = float(np.mean([len(p) for p in prompts]))
            output_tokens = float(np.mean([len(problem.answer) + 1 for problem in splits.test]))
            costs[model] = (fits["prefillFit"]["interceptMs"] + fits["prefillFit"]["slopeMs"] * prompt_tokens
                            + output_tokens * (fits["decodeFit"]["interceptMs"] + 8 * fits["decodeFit"]["slopeMs"]) / 8)
        report["split"] = query_aware_split(catalog, costs, quick)
    return report
