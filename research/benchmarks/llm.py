"""`paretoserve bench llm`: the token-level profile of each generation model, what a plan in tokens needs.

For every model of the arithmetic family (`paretoserve.workers.llm`, trained here and cached) on this machine,
the numpy engine a worker serves, on one BLAS thread:

- **prefill** time against prompt tokens (each prompt length the task has, median of repeats, the lengths
  measured in turn so that other work on the machine skews no single point) and its linear fit ``a + b·tokens``;
- **decode step** time against the number of sequences in the batch (1 to 32, sequences of mixed lengths) and
  its fit ``c + d·batch``: what iteration-level batching buys;
- **KV cache**: bytes per token (2 × layers × d_model × 4), per sequence at the model's ``max_len``, and the
  sequences one replica holds in a given memory budget (``KV_BUDGET_MIB``, the planner's capacity per replica);
- the held-out exact-match accuracy, overall and per operator × operand digits;
- the **query-aware split** (`paretoserve.workers.llm.routing`): a difficulty score on the prompt's text fitted
  on training prompts, its f(t) rows on the test split (share sent to the large model, exact match of the mixed
  answers) and each row's engine cost relative to all-large: the rows a `router: prompt` cascade declares.

Numbers are wall milliseconds of a shared 2-core machine: the fits, not single points, are what a profile
keeps. The multimodal family's benchmark (`paretoserve bench mm`, :mod:`.mm`) reuses the measuring and the split's
summary here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from paretoserve.workers.llm import DEFAULT_TASK, KVCache, NumpyLM, encode_prompt, make_splits
from paretoserve.workers.llm.cache import LLMCatalog, ensure_llms, ensure_scorer
from paretoserve.workers.llm.routing import (
    FEATURES,
    SCORER_TRAIN_PROMPTS,
    SplitRow,
    correct_answers,
    fit_scorer,
    split_rows,
)

BATCHES = (1, 2, 4, 8, 16, 32)
KV_BUDGET_MIB = 64.0
"""The KV-cache memory of one replica in the capacity column (a CPU replica's share; a GPU's would be GiB)."""
COST_BATCH = 8
"""Sequences per replica at which a request's engine cost is taken (:func:`request_cost_ms`)."""

Prefill = Callable[[], tuple[Any, KVCache]]
"""One request's prefill on an engine: its last logits and its new KV cache."""


def _seconds(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def median_ms(run: Callable[[], object], repeats: int) -> float:
    """Median wall milliseconds of ``run()`` over ``repeats`` calls."""
    return round(1000.0 * float(np.median([_seconds(run) for _ in range(repeats)])), 4)


def _decode_seconds(engine: NumpyLM, prefills: Sequence[Prefill]) -> float:
    """One batched decode step over the requests of ``prefills`` just prefilled (the prefills untimed)."""
    prefilled = [prefill() for prefill in prefills]
    tokens = [int(np.argmax(logits)) for logits, _ in prefilled]
    return _seconds(lambda: engine.decode_step(tokens, [cache for _, cache in prefilled]))


def _interleaved_ms(timers: Mapping[int, Callable[[], float]], repeats: int) -> dict[int, float]:
    """The median milliseconds of each timer (a call returns the seconds of what it timed), the timers taking
    turns for ``repeats`` rounds: a burst of other work on a shared machine spreads over every point instead of
    skewing the one measured during it."""
    samples: dict[int, list[float]] = {key: [] for key in timers}
    for _ in range(repeats):
        for key, timer in timers.items():
            samples[key].append(timer())
    return {key: round(1000.0 * float(np.median(values)), 4) for key, values in sorted(samples.items())}


def _fit(xs: Sequence[float], ys: Sequence[float]) -> dict[str, float]:
    slope, intercept = np.polyfit(np.asarray(xs, dtype=float), np.asarray(ys, dtype=float), 1)
    return {"interceptMs": round(float(intercept), 4), "slopeMs": round(float(slope), 5)}


def profile_model(engine: NumpyLM, prompts: Sequence[Sequence[int]], repeats: int) -> dict[str, Any]:
    """Prefill by prompt length, decode step by batch size, and the KV-cache sizes of one model."""
    by_length: dict[int, Sequence[int]] = {}
    for prompt in prompts:
        by_length.setdefault(len(prompt), prompt)

    def prefill_of(prompt: Sequence[int]) -> Prefill:
        return lambda: engine.prefill(prompt)

    return profile_steps(engine, {length: prefill_of(prompt) for length, prompt in by_length.items()},
                         [prefill_of(prompt) for prompt in prompts], repeats)


def profile_steps(engine: NumpyLM, prefill_by_tokens: Mapping[int, Prefill], requests: Sequence[Prefill],
                  repeats: int) -> dict[str, Any]:
    """Prefill time by prompt tokens (``prefill_by_tokens``: a request filling that many KV positions each),
    decode step time by batch size (the batch drawn from ``requests`` in turn), their linear fits, and the KV-cache
    sizes of one model."""
    def prefill_timer(run: Prefill) -> Callable[[], float]:
        return lambda: _seconds(run)

    def decode_timer(batch: int) -> Callable[[], float]:
        return lambda: _decode_seconds(engine, [requests[i % len(requests)] for i in range(batch)])

    prefill = _interleaved_ms({tokens: prefill_timer(run) for tokens, run in prefill_by_tokens.items()}, repeats)
    decode = _interleaved_ms({batch: decode_timer(batch) for batch in BATCHES}, repeats)
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


def request_cost_ms(fits: Mapping[str, Any], prompt_tokens: float, output_tokens: float,
                    batch: int = COST_BATCH) -> float:
    """Engine milliseconds one request costs on a replica running ``batch`` sequences: its prefill plus its share
    of the decode steps (from a :func:`profile_steps` report's fits)."""
    prefill, step = fits["prefillFit"], fits["decodeFit"]
    return float(prefill["interceptMs"] + prefill["slopeMs"] * prompt_tokens
                 + output_tokens * (step["interceptMs"] + batch * step["slopeMs"]) / batch)


def split_summary(rows: Sequence[SplitRow], light_correct: Sequence[bool], heavy_correct: Sequence[bool],
                  light_cost: float, heavy_cost: float) -> dict[str, Any]:
    """All-light, all-heavy, the rows with each one's engine cost relative to all-heavy, and the cheapest row
    within 1 point of all-heavy's exact match."""

    def cost(row: SplitRow) -> float:
        return round(((1 - row.heavy_fraction) * light_cost + row.heavy_fraction * heavy_cost) / heavy_cost, 4)

    all_heavy = float(np.mean(heavy_correct))
    within = [r for r in rows if r.exact_match >= all_heavy - 0.01]
    cheapest = min(within, key=cost) if within else None
    return {
        "allSmall": {"exactMatch": round(float(np.mean(light_correct)), 4),
                     "relativeCost": round(light_cost / heavy_cost, 4)},
        "allLarge": {"exactMatch": round(all_heavy, 4), "relativeCost": 1.0},
        "rows": [{"threshold": r.threshold, "heavyFraction": r.heavy_fraction, "exactMatch": r.exact_match,
                  "relativeCost": cost(r)} for r in rows],
        "cheapestWithin1Point": None if cheapest is None else {
            "threshold": cheapest.threshold, "heavyFraction": cheapest.heavy_fraction,
            "exactMatch": cheapest.exact_match, "relativeCost": cost(cheapest)},
        "costModel": f"engine ms per request at {COST_BATCH} sequences per replica: prefill(prompt) + output x "
                     f"step({COST_BATCH}) / {COST_BATCH}",
    }


def quantile_thresholds(scores: Sequence[float], points: int = 21) -> list[float]:
    """0, 1 and the scores' quantiles at ``points`` even steps: the thresholds whose rows a benchmark prints."""
    return sorted({0.0, 1.0, *(round(float(q), 4) for q in np.quantile(scores, np.linspace(0, 1, points)))})


def query_aware_split(catalog: LLMCatalog, costs: dict[str, float], quick: bool) -> dict[str, Any]:
    """The difficulty router's f(t) rows (fitted on training prompts, measured on the test split) and the
    quality and engine cost of each against all-small and all-large."""
    splits = make_splits(DEFAULT_TASK)
    small, large = (catalog.engine(m) for m in ("arith-small", "arith-large"))
    max_new = int(catalog.metadata["arith-small"]["max_new_tokens"])
    # the served scorer (what the router asks: fitted on 4,000 training prompts, cached); quick runs fit on 1,000
    fitted_on = 1000 if quick else SCORER_TRAIN_PROMPTS
    score = fit_scorer(small, list(splits.train[:fitted_on]), max_new) if quick else ensure_scorer().score()
    test = list(splits.test)
    small_ok, large_ok = correct_answers(small, test, max_new), correct_answers(large, test, max_new)
    scores = [score(p.prompt) for p in test]
    rows = split_rows(scores, small_ok, large_ok, quantile_thresholds(scores))
    return {
        "features": list(FEATURES), "weights": [round(w, 4) for w in score.weights],
        "fittedOn": f"{fitted_on} training prompts (the small model's greedy answers)",
        "measuredOn": f"{len(test)} test prompts",
        **split_summary(rows, small_ok, large_ok, costs["arith-small"], costs["arith-large"]),
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
            prompt_tokens = float(np.mean([len(p) for p in prompts]))
            output_tokens = float(np.mean([len(problem.answer) + 1 for problem in splits.test]))
            costs[model] = request_cost_ms(report["models"][model], prompt_tokens, output_tokens)
        report["split"] = query_aware_split(catalog, costs, quick)
    return report
